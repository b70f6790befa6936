//! Kubernetes for the testbed: kube-apiserver, kube-controller-manager, kube-scheduler and kubectl
//! built from k8s.io/kubernetes, etcd from go.etcd.io/etcd/server/v3, kwok, kwok's stages, and the
//! CRDs the rendered manifests use (Go modules, plus Strimzi's from Maven Central).
//!
//! No release downloads are reachable from CI, only the Go module proxy and Maven Central, so
//! everything is built from source with the Go modules committed under xtask/go/ (go.sum pins
//! every dependency). Results are cached under `<cache>/bin/<component>-<version>/` and
//! `<cache>/kube/`; each one is written to a temporary sibling and renamed into place when complete,
//! so an interrupted install is redone rather than half-used.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

use crate::util::{capture, project_root, step};

// Shared with the testbed crate, which starts what this installs. Not every item is used here.
#[allow(dead_code)]
#[path = "../../../testbed/src/kube/layout.rs"]
mod layout;

use layout::{CRD_SETS, CrdOrigin, CrdSet, KUBERNETES_BINARIES, KUBERNETES_VERSION, KWOK_VERSION};

/// Everything built with Go or taken from Go modules (the caller holds the install lock and has
/// run [`ensure_go`]). CRDs from Maven Central are [`install_maven_crds`], run beside this.
pub fn install(ctx: &super::Ctx) -> anyhow::Result<()> {
    let start = Instant::now();
    install_kubernetes(&ctx.cache)?;
    install_etcd(&ctx.cache)?;
    install_kwok(&ctx.cache)?;
    for set in CRD_SETS.iter().filter(|s| matches!(s.origin, CrdOrigin::GoModule { .. })) {
        install_crds(&ctx.cache, set)?;
    }
    eprintln!("kube: done in {:.1}s", start.elapsed().as_secs_f64());
    Ok(())
}

/// The CRD sets that come from Maven Central (in the Maven thread: one Maven at a time).
pub fn install_maven_crds(ctx: &super::Ctx) -> anyhow::Result<()> {
    for set in CRD_SETS.iter().filter(|s| matches!(s.origin, CrdOrigin::MavenJar { .. })) {
        install_crds(&ctx.cache, set)?;
    }
    Ok(())
}

pub fn status(ctx: &super::Ctx) -> anyhow::Result<()> {
    let cache = &ctx.cache;
    let k8s = layout::kubernetes_bin_dir(cache);
    let mut rows: Vec<(String, PathBuf)> =
        KUBERNETES_BINARIES.iter().map(|b| (format!("{b} {KUBERNETES_VERSION}"), k8s.join(b))).collect();
    rows.push((format!("etcd {}", layout::ETCD_VERSION), layout::etcd_bin(cache)));
    rows.push((format!("kwok {KWOK_VERSION}"), layout::kwok_bin(cache)));
    rows.push(("kwok stages".into(), layout::kwok_data_dir(cache).join("stages.yaml")));
    for set in CRD_SETS {
        rows.push((format!("CRDs {} {}", set.name, set.version), layout::crd_dir(cache, set)));
    }
    for (what, path) in rows {
        let state = if path.exists() { "ok" } else { "MISSING" };
        println!("kube    {what:<34} {state:<8} {}", path.display());
    }
    Ok(())
}

/// The oldest Go that builds xtask/go/ (their go.mod files say `go 1.25.0`).
const GO_MIN: (u32, u32) = (1, 25);
/// Installed when no Go of at least [`GO_MIN`] is on PATH: the official toolchain as the Go module
/// proxy serves it (module golang.org/toolchain, what `go` itself fetches for GOTOOLCHAIN), checked
/// against this SHA-256 of the linux-amd64 zip.
const GO_TOOLCHAIN: &str = "1.25.5";
const GO_TOOLCHAIN_SHA256: &str = "8cea6783dab64d68b38f5b81ecd38d45155a3c06638991acc6af19e0fca80edb";

/// The `go` binary every build uses (set by [`ensure_go`]).
static GO: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

fn go_bin() -> PathBuf {
    GO.get().cloned().unwrap_or_else(|| PathBuf::from("go"))
}

/// Go from PATH when it is recent enough, else the pinned toolchain under `<cache>/go/`.
pub fn ensure_go(ctx: &super::Ctx) -> anyhow::Result<()> {
    let on_path = capture(Command::new("go").arg("version")).ok();
    if let Some(version) = on_path.as_deref().filter(|v| go_version(v).is_some_and(|v| v >= GO_MIN)) {
        eprintln!("kube: {}", version.trim());
        let _ = GO.set(PathBuf::from("go"));
        return Ok(());
    }
    let dir = ctx.cache.join("go").join(format!("go{GO_TOOLCHAIN}"));
    let bin = dir.join("bin").join("go");
    if !bin.is_file() {
        eprintln!(
            "kube: {}; installing Go {GO_TOOLCHAIN} into {}",
            on_path.map_or("no `go` on PATH".to_owned(), |v| format!("{} is older than {GO_MIN:?}", v.trim())),
            dir.display()
        );
        install_go_toolchain(&dir)?;
    }
    let version = capture(Command::new(&bin).arg("version"))?;
    eprintln!("kube: {}", version.trim());
    let _ = GO.set(bin);
    Ok(())
}

/// (major, minor) of `go version` output such as "go version go1.26.8 linux/amd64".
fn go_version(output: &str) -> Option<(u32, u32)> {
    let v = output.split_whitespace().nth(2)?.strip_prefix("go")?;
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn install_go_toolchain(dir: &Path) -> anyhow::Result<()> {
    if std::env::consts::ARCH != "x86_64" || std::env::consts::OS != "linux" {
        bail!("no pinned Go toolchain for this platform: install Go {}.{} or newer", GO_MIN.0, GO_MIN.1);
    }
    // The first proxy of GOPROXY (a mirror in a closed network), else the public one.
    let proxy = std::env::var("GOPROXY")
        .ok()
        .and_then(|p| p.split([',', '|']).next().map(str::to_owned))
        .filter(|p| p.starts_with("http"))
        .unwrap_or_else(|| "https://proxy.golang.org".to_owned());
    let module = format!("v0.0.1-go{GO_TOOLCHAIN}.linux-amd64");
    let tmp = staging(dir)?;
    let zip = tmp.join("toolchain.zip");
    step(
        &format!("download Go {GO_TOOLCHAIN} from {proxy}"),
        Command::new("curl")
            .args(["--silent", "--show-error", "--fail", "--location", "--output"])
            .arg(&zip)
            .arg(format!("{}/golang.org/toolchain/@v/{module}.zip", proxy.trim_end_matches('/'))),
    )?;
    crate::util::check_digest(&zip, "sha256", GO_TOOLCHAIN_SHA256)?;
    step("unpack the Go toolchain", Command::new("unzip").arg("-q").arg(&zip).arg("-d").arg(&tmp))?;
    let root = tmp.join(format!("golang.org/toolchain@{module}"));
    if !root.join("bin/go").is_file() {
        bail!("{} did not contain golang.org/toolchain@{module}/bin/go", zip.display());
    }
    publish(&root, dir)?;
    std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))
}

/// `go` with the settings every build here shares: static binaries (no libc coupling with the
/// machine that runs the tests) and no VCS stamping (xtask/go/ sits inside this git clone).
fn go(dir: &Path) -> Command {
    let mut cmd = Command::new(go_bin());
    cmd.current_dir(dir).env("CGO_ENABLED", "0").env("GOFLAGS", "-buildvcs=false -mod=readonly");
    cmd
}

fn install_kubernetes(cache: &Path) -> anyhow::Result<()> {
    let dir = layout::kubernetes_bin_dir(cache);
    let module = project_root().join("xtask/go/kubernetes");
    let stamp = crate::util::Stamp::of(&[module.join("go.mod"), module.join("go.sum")])?;
    if KUBERNETES_BINARIES.iter().all(|b| dir.join(b).is_file()) && stamp.matches(&dir)? {
        eprintln!("kube: kubernetes {KUBERNETES_VERSION} cached in {}", dir.display());
        return Ok(());
    }
    let tmp = staging(&dir)?;
    // Without the version stamps the server reports v0.0.0-master and clients warn about skew.
    let (major, minor) = major_minor(KUBERNETES_VERSION)?;
    let mut ldflags = String::from("-s -w");
    for pkg in ["k8s.io/component-base/version", "k8s.io/client-go/pkg/version"] {
        ldflags.push_str(&format!(
            " -X {pkg}.gitVersion={KUBERNETES_VERSION} -X {pkg}.gitMajor={major} -X {pkg}.gitMinor={minor} \
             -X {pkg}.gitTreeState=clean"
        ));
    }
    step(
        &format!("build kubernetes {KUBERNETES_VERSION} (cold: ~7 min on 2 cores, 1.9 GB RAM)"),
        go(&module)
            .args(["build", "-trimpath", "-ldflags", &ldflags, "-o"])
            .arg(format!("{}/", tmp.display()))
            .args(KUBERNETES_BINARIES.iter().map(|b| format!("k8s.io/kubernetes/cmd/{b}"))),
    )?;
    stamp.write(&tmp)?;
    publish(&tmp, &dir)
}

fn install_etcd(cache: &Path) -> anyhow::Result<()> {
    let bin = layout::etcd_bin(cache);
    let dir = parent(&bin)?;
    let module = project_root().join("xtask/go/etcd");
    let stamp = crate::util::Stamp::of(&[module.join("go.mod"), module.join("go.sum")])?;
    if bin.is_file() && stamp.matches(dir)? {
        eprintln!("kube: etcd {} cached in {}", layout::ETCD_VERSION, bin.display());
        return Ok(());
    }
    let tmp = staging(dir)?;
    step(
        &format!("build etcd {} (~1 min)", layout::ETCD_VERSION),
        go(&module)
            .args(["build", "-trimpath", "-ldflags", "-s -w", "-o"])
            .arg(tmp.join("etcd"))
            .arg("go.etcd.io/etcd/server/v3"),
    )?;
    stamp.write(&tmp)?;
    publish(&tmp, dir)
}

/// kwok is installed with `go install module@version`, which builds with kwok's own go.mod/go.sum,
/// then its stage YAMLs are taken from the same module (the binary embeds none).
fn install_kwok(cache: &Path) -> anyhow::Result<()> {
    let bin = layout::kwok_bin(cache);
    if bin.is_file() {
        eprintln!("kube: kwok {KWOK_VERSION} cached in {}", bin.display());
    } else {
        let dir = parent(&bin)?;
        let tmp = staging(dir)?;
        step(
            &format!("build kwok {KWOK_VERSION} (~3 min)"),
            go(&std::env::temp_dir())
                .env("GOBIN", &tmp)
                // `go install pkg@version` ignores the main module; -mod is rejected in that mode.
                .env("GOFLAGS", "-buildvcs=false")
                .args(["install", "-trimpath", "-ldflags", "-s -w"])
                .arg(format!("sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}")),
        )?;
        publish(&tmp, dir)?;
    }

    let data = layout::kwok_data_dir(cache);
    if ["stages.yaml", "storage-class.yaml", layout::KWOK_LOGS_CRD_FILE].iter().all(|f| data.join(f).is_file()) {
        eprintln!("kube: kwok stages cached in {}", data.display());
        return Ok(());
    }
    let module = go_module_dir("sigs.k8s.io/kwok", KWOK_VERSION)?;
    timed("gather kwok stages", || {
        let tmp = staging(&data)?;
        let stage_dir = module.join("kustomize/stage");
        let mut stages = String::new();
        for stage in layout::KWOK_STAGES {
            let path = stage_dir.join(stage);
            let text =
                std::fs::read_to_string(&path).with_context(|| format!("reading kwok stage {}", path.display()))?;
            stages.push_str("---\n");
            stages.push_str(&text);
        }
        std::fs::write(tmp.join("stages.yaml"), stages)?;
        let class = stage_dir.join(layout::KWOK_STORAGE_CLASS);
        std::fs::copy(&class, tmp.join("storage-class.yaml"))
            .with_context(|| format!("copying {}", class.display()))?;
        let crd = module.join(layout::KWOK_LOGS_CRD);
        std::fs::copy(&crd, tmp.join(layout::KWOK_LOGS_CRD_FILE))
            .with_context(|| format!("copying {}", crd.display()))?;
        publish(&tmp, &data)
    })
}

fn install_crds(cache: &Path, set: &CrdSet) -> anyhow::Result<()> {
    let dir = layout::crd_dir(cache, set);
    if dir.is_dir() {
        eprintln!("kube: CRDs {} {} cached", set.name, set.version);
        return Ok(());
    }
    let tmp = staging(&dir)?;
    match &set.origin {
        CrdOrigin::GoModule { module, paths } => {
            let root = go_module_dir(module, set.version)?;
            timed(&format!("gather CRDs {} {}", set.name, set.version), || {
                for path in *paths {
                    copy_yaml(&root.join(path), &tmp)?;
                }
                Ok(())
            })?;
        }
        CrdOrigin::MavenJar { artifact, folder, sha512 } => {
            step(
                &format!("fetch {artifact} from Maven Central"),
                Command::new("mvn")
                    .current_dir(&tmp)
                    .args(["-B", "-q", "--strict-checksums", "dependency:copy"])
                    .arg(format!("-Dartifact={artifact}"))
                    .arg(format!("-DoutputDirectory={}", tmp.display())),
            )?;
            let jar = single_file(&tmp, ".jar")?;
            crate::util::check_digest(&jar, "sha512", sha512)?;
            step(
                &format!("extract {folder}/ from {}", jar.display()),
                Command::new("unzip")
                    .args(["-q", "-j", "-o"])
                    .arg(&jar)
                    .arg(format!("{folder}/*.yaml"))
                    .arg("-d")
                    .arg(&tmp),
            )?;
            std::fs::remove_file(&jar)?;
        }
    }
    let count = std::fs::read_dir(&tmp)?.count();
    if count == 0 {
        bail!("no CRD YAML found for {} {} (expected under {:?})", set.name, set.version, describe(&set.origin));
    }
    eprintln!("kube: CRDs {} {}: {count} files", set.name, set.version);
    publish(&tmp, &dir)
}

fn describe(origin: &CrdOrigin) -> String {
    match origin {
        CrdOrigin::GoModule { module, paths } => format!("{module}: {}", paths.join(", ")),
        CrdOrigin::MavenJar { artifact, folder, .. } => format!("{artifact}: {folder}/"),
    }
}

/// Copy `src` (a YAML file, or every *.yaml directly inside a folder) into `dest`.
fn copy_yaml(src: &Path, dest: &Path) -> anyhow::Result<()> {
    let files: Vec<PathBuf> = if src.is_dir() {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(src).with_context(|| format!("listing {}", src.display()))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
        files
    } else {
        vec![src.to_owned()]
    };
    for file in files {
        let name = file.file_name().context("file without a name")?;
        std::fs::copy(&file, dest.join(name)).with_context(|| format!("copying {}", file.display()))?;
    }
    Ok(())
}

/// Download `module@version` into the Go module cache (checksum-verified) and return its folder.
fn go_module_dir(module: &str, version: &str) -> anyhow::Result<PathBuf> {
    let start = Instant::now();
    // Outside any module, so xtask/go's go.mod files do not constrain the download.
    let json = capture(
        Command::new(go_bin())
            .current_dir(std::env::temp_dir())
            .args(["mod", "download", "-json"])
            .arg(format!("{module}@{version}")),
    )?;
    let dir = json_string(&json, "Dir")
        .with_context(|| format!("`go mod download {module}@{version}` gave no Dir:\n{json}"))?;
    eprintln!("kube: go mod download {module}@{version} in {:.1}s", start.elapsed().as_secs_f64());
    Ok(PathBuf::from(dir))
}

/// The string value of `"key": "..."` in `go mod download -json` output (no escapes in module paths).
fn json_string(json: &str, key: &str) -> Option<String> {
    let needle = format!("\"{key}\": \"");
    let rest = &json[json.find(&needle)? + needle.len()..];
    Some(rest[..rest.find('"')?].to_owned())
}

fn major_minor(version: &str) -> anyhow::Result<(&str, &str)> {
    let mut parts = version.trim_start_matches('v').split('.');
    match (parts.next(), parts.next()) {
        (Some(major), Some(minor)) => Ok((major, minor)),
        _ => bail!("version {version:?} is not vMAJOR.MINOR.PATCH"),
    }
}

fn parent(path: &Path) -> anyhow::Result<&Path> {
    path.parent().with_context(|| format!("{} has no parent folder", path.display()))
}

/// A fresh temporary sibling of `dir` to build into. Leftovers of interrupted runs are removed
/// (safe: the install lock is held).
fn staging(dir: &Path) -> anyhow::Result<PathBuf> {
    let name = dir.file_name().with_context(|| format!("{} has no name", dir.display()))?.to_string_lossy();
    let prefix = format!(".{name}.tmp-");
    let parent = parent(dir)?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    for entry in std::fs::read_dir(parent)? {
        let path = entry?.path();
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix)) {
            std::fs::remove_dir_all(&path).with_context(|| format!("removing stale {}", path.display()))?;
        }
    }
    let tmp = parent.join(format!("{prefix}{}", std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    Ok(tmp)
}

/// Move a completed staging folder into place (replacing an incomplete earlier result).
fn publish(tmp: &Path, dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing incomplete {}", dir.display()))?;
    }
    std::fs::rename(tmp, dir).with_context(|| format!("moving {} to {}", tmp.display(), dir.display()))
}

fn single_file(dir: &Path, suffix: &str) -> anyhow::Result<PathBuf> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.to_string_lossy().ends_with(suffix) {
            return Ok(path);
        }
    }
    bail!("no *{suffix} in {}", dir.display())
}

/// Like [`step`] for work done in-process.
fn timed<T>(name: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let start = Instant::now();
    eprintln!("==> {name}");
    let result = f();
    let state = if result.is_ok() { "ok" } else { "FAILED" };
    eprintln!("<== {name}: {state} in {:.1}s", start.elapsed().as_secs_f64());
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_versions_are_compared_by_major_and_minor() {
        assert_eq!(go_version("go version go1.26.8 linux/amd64"), Some((1, 26)));
        assert_eq!(go_version("go version go1.25rc1 linux/amd64"), Some((1, 25)));
        assert_eq!(go_version("go version devel +abc"), None);
        assert!(go_version("go version go1.24.9 linux/amd64").is_some_and(|v| v < GO_MIN));
    }
}
