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

pub fn install(ctx: &super::Ctx) -> anyhow::Result<()> {
    let start = Instant::now();
    // Concurrent installs (two clones, CI next to a developer) would race on the same folders.
    std::fs::create_dir_all(&ctx.cache)?;
    let lock_path = ctx.cache.join(".kube-install.lock");
    let lock = std::fs::File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        eprintln!("kube: waiting for another install holding {}", lock_path.display());
        lock.lock().with_context(|| format!("locking {}", lock_path.display()))?;
    }
    check_go()?;
    install_kubernetes(&ctx.cache)?;
    install_etcd(&ctx.cache)?;
    install_kwok(&ctx.cache)?;
    for set in CRD_SETS {
        install_crds(&ctx.cache, set)?;
    }
    eprintln!("kube: done in {:.1}s", start.elapsed().as_secs_f64());
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

fn check_go() -> anyhow::Result<()> {
    let version = capture(Command::new("go").arg("version"))
        .context("the Kubernetes testbed is built from Go modules: install Go 1.25 or newer")?;
    eprintln!("kube: {}", version.trim());
    Ok(())
}

/// `go` with the settings every build here shares: static binaries (no libc coupling with the
/// machine that runs the tests) and no VCS stamping (xtask/go/ sits inside this git clone).
fn go(dir: &Path) -> Command {
    let mut cmd = Command::new("go");
    cmd.current_dir(dir).env("CGO_ENABLED", "0").env("GOFLAGS", "-buildvcs=false -mod=readonly");
    cmd
}

fn install_kubernetes(cache: &Path) -> anyhow::Result<()> {
    let dir = layout::kubernetes_bin_dir(cache);
    if KUBERNETES_BINARIES.iter().all(|b| dir.join(b).is_file()) {
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
    let module = project_root().join("xtask/go/kubernetes");
    step(
        &format!("build kubernetes {KUBERNETES_VERSION} (cold: ~10 min, 1.9 GB RAM)"),
        go(&module)
            .args(["build", "-trimpath", "-ldflags", &ldflags, "-o"])
            .arg(format!("{}/", tmp.display()))
            .args(KUBERNETES_BINARIES.iter().map(|b| format!("k8s.io/kubernetes/cmd/{b}"))),
    )?;
    publish(&tmp, &dir)
}

fn install_etcd(cache: &Path) -> anyhow::Result<()> {
    let bin = layout::etcd_bin(cache);
    if bin.is_file() {
        eprintln!("kube: etcd {} cached in {}", layout::ETCD_VERSION, bin.display());
        return Ok(());
    }
    let dir = parent(&bin)?;
    let tmp = staging(dir)?;
    step(
        &format!("build etcd {} (~1 min)", layout::ETCD_VERSION),
        go(&project_root().join("xtask/go/etcd"))
            .args(["build", "-trimpath", "-ldflags", "-s -w", "-o"])
            .arg(tmp.join("etcd"))
            .arg("go.etcd.io/etcd/server/v3"),
    )?;
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
    if data.join("stages.yaml").is_file() && data.join("storage-class.yaml").is_file() {
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
        CrdOrigin::MavenJar { artifact, folder } => {
            step(
                &format!("fetch {artifact} from Maven Central"),
                Command::new("mvn")
                    .current_dir(&tmp)
                    .args(["-B", "-q", "dependency:copy"])
                    .arg(format!("-Dartifact={artifact}"))
                    .arg(format!("-DoutputDirectory={}", tmp.display())),
            )?;
            let jar = single_file(&tmp, ".jar")?;
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
        CrdOrigin::MavenJar { artifact, folder } => format!("{artifact}: {folder}/"),
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
        Command::new("go")
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
