//! A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler, and kwok faking the kubelets of N nodes spread over three zones. Deployments,
//! ReplicaSets and pods really progress (scheduled by the real scheduler, marked Ready by kwok), and
//! the CRDs the rendered manifests use are loaded, so schema validation is the real one.
//!
//! Built by `cargo xtask deps install` (see [`layout`]). Readiness is checked with curl and the
//! kubectl built alongside, so this crate needs no Kubernetes client of its own.

pub mod layout;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::process::{Process, free_port, wait_until};

/// Zones the nodes are spread over, round robin (`topology.kubernetes.io/zone`).
pub const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];
/// Name of the kubeconfig's context (and cluster).
pub const CONTEXT: &str = "testbed";

pub struct KubeOptions {
    /// Number of kwok nodes (default 3); node `i` is `kwok-node-<i>` in `ZONES[i % 3]`.
    pub nodes: usize,
    /// Load the CRDs of [`layout::CRD_SETS`] (default true; ~0.5 GiB more apiserver memory).
    pub crds: bool,
}

impl Default for KubeOptions {
    fn default() -> Self {
        Self { nodes: 3, crds: true }
    }
}

/// A running cluster. Dropping it stops every process and deletes its directory.
pub struct Kube {
    /// In start order; [`Drop`] stops them in reverse (clients before the apiserver before etcd).
    processes: Vec<Process>,
    kubeconfig: PathBuf,
    server: String,
    kubectl: PathBuf,
    nodes: Vec<String>,
    log_dir: PathBuf,
    // Last: removed after the processes using it are gone.
    _dir: TempDir,
}

/// A cluster with 3 nodes in 3 zones and the CRDs loaded.
pub async fn kube() -> anyhow::Result<Kube> {
    kube_with(KubeOptions::default()).await
}

pub async fn kube_with(opts: KubeOptions) -> anyhow::Result<Kube> {
    let bins = Binaries::find(&crate::cache_dir(), opts.crds)?;
    // A port picked by free_port() can be taken by a parallel test before the component binds it.
    let mut attempt = 1;
    loop {
        match start(&bins, &opts).await {
            Err(e) if attempt < 3 && crate::process::is_port_clash(&e) => {
                eprintln!("testbed kube: port clash, retrying: {e:#}");
                attempt += 1;
            }
            result => return result,
        }
    }
}

impl Kube {
    /// A kubeconfig (context [`CONTEXT`], namespace default) for kube-rs and kubectl. Admin token;
    /// TLS verified against the apiserver's own serving certificate.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The connection settings an operator would give audctl for this cluster.
    pub fn target(&self) -> audctl_targets::KubeTarget {
        audctl_targets::KubeTarget { kubeconfig: Some(self.kubeconfig.clone()), context: Some(CONTEXT.to_owned()) }
    }

    /// The testbed's kubectl (same version as the server) with `--kubeconfig` already set.
    pub fn kubectl(&self) -> Command {
        kubectl(&self.kubectl, &self.kubeconfig)
    }

    /// Where etcd.log, kube-apiserver.log, ... are written (inside the cluster's temporary directory).
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// Node names, `kwok-node-0` ...
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Serve the logs of container `container` of pod `namespace/pod` from `file` (CRI log format,
    /// `<RFC 3339 time> stdout F <line>`, as a container runtime writes it), followed like a running
    /// container's: `kubectl logs -f` and the API's pods/log then read it through the apiserver and
    /// kwok, which is how a test plays the runtime of a pod whose command it runs itself.
    pub fn serve_logs(&self, namespace: &str, pod: &str, container: &str, file: &Path) -> anyhow::Result<()> {
        let manifest = format!(
            "apiVersion: kwok.x-k8s.io/v1alpha1\nkind: Logs\nmetadata:\n  name: {pod}\n  namespace: {namespace}\n\
             spec:\n  logs:\n  - containers: [{container}]\n    logsFile: {}\n    follow: true\n",
            file.display()
        );
        let mut cmd = self.kubectl();
        cmd.args(["apply", "-f", "-"]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null());
        let mut child = cmd.spawn().context("starting kubectl")?;
        use std::io::Write as _;
        child.stdin.take().context("kubectl stdin")?.write_all(manifest.as_bytes())?;
        let status = child.wait()?;
        if !status.success() {
            bail!("kubectl apply of the Logs of {namespace}/{pod} failed ({status})");
        }
        Ok(())
    }

    /// Process ids (each the leader of its own process group) of etcd, the control plane and kwok.
    pub fn pids(&self) -> Vec<u32> {
        self.processes.iter().map(Process::pid).collect()
    }
}

impl Drop for Kube {
    fn drop(&mut self) {
        while let Some(mut process) = self.processes.pop() {
            process.stop();
        }
    }
}

/// Everything `cargo xtask deps install` provides, checked up front so a missing piece fails with the
/// install hint instead of an obscure start-up error.
struct Binaries {
    apiserver: PathBuf,
    controller_manager: PathBuf,
    scheduler: PathBuf,
    kubectl: PathBuf,
    etcd: PathBuf,
    kwok: PathBuf,
    kwok_stages: PathBuf,
    storage_class: PathBuf,
    kwok_logs_crd: PathBuf,
    crd_dirs: Vec<PathBuf>,
}

impl Binaries {
    fn find(cache: &Path, crds: bool) -> anyhow::Result<Self> {
        let k8s = layout::kubernetes_bin_dir(cache);
        let kwok_data = layout::kwok_data_dir(cache);
        let mut crd_dirs = Vec::new();
        if crds {
            for set in layout::CRD_SETS {
                crd_dirs.push(crate::require(&format!("{} CRDs", set.name), &layout::crd_dir(cache, set))?);
            }
        }
        Ok(Self {
            apiserver: crate::require("kube-apiserver", &k8s.join("kube-apiserver"))?,
            controller_manager: crate::require("kube-controller-manager", &k8s.join("kube-controller-manager"))?,
            scheduler: crate::require("kube-scheduler", &k8s.join("kube-scheduler"))?,
            kubectl: crate::require("kubectl", &k8s.join("kubectl"))?,
            etcd: crate::require("etcd", &layout::etcd_bin(cache))?,
            kwok: crate::require("kwok", &layout::kwok_bin(cache))?,
            kwok_stages: crate::require("kwok stages", &kwok_data.join("stages.yaml"))?,
            storage_class: crate::require("kwok storage class", &kwok_data.join("storage-class.yaml"))?,
            kwok_logs_crd: crate::require("kwok Logs CRD", &kwok_data.join(layout::KWOK_LOGS_CRD_FILE))?,
            crd_dirs,
        })
    }
}

fn kubectl(bin: &Path, kubeconfig: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--kubeconfig").arg(kubeconfig);
    cmd
}

/// Files of one cluster, all inside its temporary directory.
struct Layout {
    root: PathBuf,
    logs: PathBuf,
    kubeconfig: PathBuf,
    /// The apiserver writes a self-signed CA and serving certificate (SAN 127.0.0.1) into its
    /// --cert-dir; clients trust exactly that.
    serving_cert: PathBuf,
    sa_key: PathBuf,
    sa_pub: PathBuf,
}

async fn start(bins: &Binaries, opts: &KubeOptions) -> anyhow::Result<Kube> {
    let started = Instant::now();
    let dir = crate::scratch::instance_dir_on_disk("audctl-kube-")?;
    let root = dir.path().to_owned();
    let files = Layout {
        logs: root.join("logs"),
        kubeconfig: root.join("kubeconfig"),
        serving_cert: root.join("certs/apiserver.crt"),
        sa_key: root.join("sa.key"),
        sa_pub: root.join("sa.pub"),
        root,
    };
    std::fs::create_dir_all(&files.logs)?;
    // Pushed in start order; on an error they are dropped (stopped) with this vector.
    let mut processes = Vec::new();

    let etcd_port = free_port()?;
    processes.push(spawn_etcd(bins, &files, etcd_port)?);
    // While etcd starts: the service-account signing key and the admin token.
    // ECDSA P-256 (ES256 tokens): generated instantly, unlike RSA on a loaded machine.
    run(Command::new("openssl")
        .args(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out"])
        .arg(&files.sa_key))
    .await?;
    run(Command::new("openssl").args(["ec", "-pubout", "-in"]).arg(&files.sa_key).arg("-out").arg(&files.sa_pub))
        .await?;
    let token = random_hex(24)?;
    let api_port = free_port()?;
    let server = format!("https://127.0.0.1:{api_port}");
    std::fs::write(&files.kubeconfig, kubeconfig_yaml(&server, &files.serving_cert, &token))?;
    wait_until(&mut processes[0], Duration::from_secs(20), || etcd_healthy(etcd_port)).await?;
    let etcd_up = started.elapsed();

    processes.push(spawn_apiserver(bins, &files, etcd_port, api_port, &token)?);
    let (ready_url, cert) = (format!("{server}/readyz"), files.serving_cert.clone());
    wait_until(&mut processes[1], Duration::from_secs(60), || apiserver_ready(ready_url.clone(), cert.clone())).await?;
    let apiserver_up = started.elapsed();

    let scheduler_port = free_port()?;
    processes.push(spawn_client(bins, &files, "kube-controller-manager", free_port()?)?);
    processes.push(spawn_client(bins, &files, "kube-scheduler", scheduler_port)?);
    processes.push(spawn_kwok(bins, &files)?);

    let nodes: Vec<String> = (0..opts.nodes).map(|i| format!("kwok-node-{i}")).collect();
    load_objects(bins, &files, &nodes).await?;
    let loaded = started.elapsed();
    wait_ready(bins, &files, &mut processes, nodes.len(), scheduler_port).await?;

    eprintln!(
        "testbed kube: {server} up in {:.1}s (etcd {:.1}s, apiserver {:.1}s, nodes+CRDs {:.1}s; {} nodes, {} CRD sets; \
         logs in {})",
        started.elapsed().as_secs_f64(),
        etcd_up.as_secs_f64(),
        apiserver_up.as_secs_f64(),
        loaded.as_secs_f64(),
        nodes.len(),
        bins.crd_dirs.len(),
        files.logs.display()
    );
    Ok(Kube {
        processes,
        kubeconfig: files.kubeconfig,
        server,
        kubectl: bins.kubectl.clone(),
        nodes,
        log_dir: files.logs,
        _dir: dir,
    })
}

fn spawn_etcd(bins: &Binaries, files: &Layout, port: u16) -> anyhow::Result<Process> {
    let client_url = format!("http://127.0.0.1:{port}");
    let peer_url = format!("http://127.0.0.1:{}", free_port()?);
    let mut cmd = Command::new(&bins.etcd);
    cmd.arg("--name=testbed")
        .arg(format!("--data-dir={}", files.root.join("etcd").display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=testbed={peer_url}"))
        // Test data is disposable; fsync dominates etcd latency on a shared disk.
        .args(["--unsafe-no-fsync", "--log-level=warn"])
        .current_dir(&files.root);
    Ok(Process::spawn("etcd", cmd, files.logs.join("etcd.log"))?.with_grace(Duration::from_secs(5)))
}

fn spawn_apiserver(bins: &Binaries, files: &Layout, etcd_port: u16, port: u16, token: &str) -> anyhow::Result<Process> {
    let token_file = files.root.join("tokens.csv");
    std::fs::write(&token_file, format!("{token},testbed-admin,testbed-admin,\"system:masters\"\n"))?;
    let cert_dir = files.serving_cert.parent().context("serving certificate path without a folder")?;
    let mut cmd = Command::new(&bins.apiserver);
    cmd.arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
        .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
        .arg(format!("--secure-port={port}"))
        .arg(format!("--cert-dir={}", cert_dir.display()))
        .arg(format!("--token-auth-file={}", token_file.display()))
        .arg("--authorization-mode=RBAC")
        .arg(format!("--service-account-key-file={}", files.sa_pub.display()))
        .arg(format!("--service-account-signing-key-file={}", files.sa_key.display()))
        .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
        .arg("--service-cluster-ip-range=10.96.0.0/16")
        // The default reconciler rejects a loopback address for the `kubernetes` Service endpoints.
        .arg("--endpoint-reconciler-type=none")
        .args(["--allow-privileged=true", "--profiling=false"])
        // kwok's nodes also report their name as a Hostname address, which resolves nowhere: logs
        // and exec are proxied to the kubelet (kwok) at the InternalIP, 127.0.0.1.
        .arg("--kubelet-preferred-address-types=InternalIP")
        .current_dir(&files.root);
    Ok(Process::spawn("kube-apiserver", cmd, files.logs.join("kube-apiserver.log"))?.with_grace(Duration::from_secs(5)))
}

/// kube-controller-manager or kube-scheduler, with the admin kubeconfig (a throw-away cluster).
fn spawn_client(bins: &Binaries, files: &Layout, name: &str, port: u16) -> anyhow::Result<Process> {
    let kubeconfig = files.kubeconfig.display();
    let bin = if name == "kube-scheduler" { &bins.scheduler } else { &bins.controller_manager };
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--kubeconfig={kubeconfig}"))
        .arg(format!("--authentication-kubeconfig={kubeconfig}"))
        .arg(format!("--authorization-kubeconfig={kubeconfig}"))
        .args(["--authentication-skip-lookup=true", "--leader-elect=false", "--bind-address=127.0.0.1"])
        .arg(format!("--secure-port={port}"))
        .arg(format!("--cert-dir={}", files.root.join(name).display()))
        .current_dir(&files.root);
    if name == "kube-controller-manager" {
        cmd.arg(format!("--service-account-private-key-file={}", files.sa_key.display()))
            .arg(format!("--root-ca-file={}", files.serving_cert.display()));
    }
    Process::spawn(name, cmd, files.logs.join(format!("{name}.log")))
}

fn spawn_kwok(bins: &Binaries, files: &Layout) -> anyhow::Result<Process> {
    let upstream = std::fs::read_to_string(&bins.kwok_stages)
        .with_context(|| format!("reading {}", bins.kwok_stages.display()))?;
    let config = files.root.join("kwok-stages.yaml");
    std::fs::write(&config, kwok_config(&upstream)?)?;
    // kwok's kubelet API (pod logs) at the nodes' port, over TLS as the apiserver expects of a
    // kubelet. The apiserver's own serving certificate (SAN 127.0.0.1) will do: the apiserver does
    // not verify kubelets without --kubelet-certificate-authority.
    let port = free_port()?;
    let key = files.serving_cert.with_extension("key");
    let mut cmd = Command::new(&bins.kwok);
    cmd.arg(format!("--kubeconfig={}", files.kubeconfig.display()))
        .arg(format!("--config={}", config.display()))
        .args(["--manage-all-nodes=true", "--node-ip=127.0.0.1", "--cidr=10.244.0.1/16"])
        .arg(format!("--server-address=127.0.0.1:{port}"))
        .arg(format!("--node-port={port}"))
        .arg(format!("--tls-cert-file={}", files.serving_cert.display()))
        .arg(format!("--tls-private-key-file={}", key.display()))
        .arg("--enable-crds=Logs")
        .arg("--node-lease-duration-seconds=40")
        .current_dir(&files.root);
    Process::spawn("kwok", cmd, files.logs.join("kwok.log"))
}

/// Stages of pods that never become ready: image tag `:never-ready` (Running, Ready=False) and
/// `:crashloop` (CrashLoopBackOff), so a failing rollout is real to the controller-manager.
pub const FAILING_POD_STAGES: &str = include_str!("kube/failing-pods.yaml");

/// kwok's `--config`: the upstream stages, with pod-ready skipping the failing images, plus
/// [`FAILING_POD_STAGES`].
fn kwok_config(upstream: &str) -> anyhow::Result<String> {
    const ANCHOR: &str = "  selector:\n    matchExpressions:\n";
    const SKIP: &str = "    - cel:\n        expression: >-\n          \
        !self.spec.containers.exists(c, c.image.endsWith(':never-ready') || c.image.endsWith(':crashloop'))\n";
    let mut docs: Vec<String> = upstream.split("\n---\n").map(str::to_owned).collect();
    let ready = docs
        .iter_mut()
        .find(|d| d.contains("\n  name: pod-ready\n"))
        .context("kwok stages: no pod-ready stage (re-run `cargo xtask deps install`)")?;
    let at = ready.find(ANCHOR).context("kwok pod-ready stage: no selector.matchExpressions to extend")?;
    ready.insert_str(at + ANCHOR.len(), SKIP);
    Ok(format!("{}\n---\n{FAILING_POD_STAGES}", docs.join("\n---\n")))
}

/// The Node objects, the default StorageClass and the CRDs.
async fn load_objects(bins: &Binaries, files: &Layout, nodes: &[String]) -> anyhow::Result<()> {
    let nodes_file = files.root.join("nodes.yaml");
    std::fs::write(&nodes_file, nodes_yaml(nodes))?;
    // `create`, not apply: apply would drop the status (capacity) we set.
    run(kubectl(&bins.kubectl, &files.kubeconfig).arg("create").arg("-f").arg(&nodes_file)).await?;
    let mut apply = kubectl(&bins.kubectl, &files.kubeconfig);
    // Server-side: some CRDs are too large for client-side apply's last-applied annotation.
    apply.args(["apply", "--server-side", "-f"]).arg(&bins.storage_class).arg("-f").arg(&bins.kwok_logs_crd);
    for crd_dir in &bins.crd_dirs {
        apply.arg("-f").arg(crd_dir);
    }
    run(&mut apply).await?;
    // `kubectl wait` fails at once on a CRD that has no status yet, so retry until the deadline.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut wait = kubectl(&bins.kubectl, &files.kubeconfig);
        wait.args(["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"]);
        match run(&mut wait).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e.context("CRDs not Established after 90s")),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Nodes Ready (kwok), the default ServiceAccount (controller-manager), the scheduler healthy.
async fn wait_ready(
    bins: &Binaries,
    files: &Layout,
    processes: &mut [Process],
    nodes: usize,
    scheduler_port: u16,
) -> anyhow::Result<()> {
    let (bin, config) = (&bins.kubectl, &files.kubeconfig);
    let ready = "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}";
    wait_until(&mut processes[4], Duration::from_secs(30), || {
        let mut cmd = kubectl(bin, config);
        cmd.args(["get", "nodes", "-o", ready]);
        async move { Ok(output(&mut cmd).await?.lines().filter(|s| *s == "True").count() == nodes) }
    })
    .await?;
    // Pods are refused until the controller-manager has created the namespace's default ServiceAccount.
    wait_until(&mut processes[2], Duration::from_secs(30), || {
        let mut cmd = kubectl(bin, config);
        cmd.args(["get", "serviceaccount", "default", "--namespace=default", "-o", "name"]);
        async move { Ok(output(&mut cmd).await.is_ok()) }
    })
    .await?;
    wait_until(&mut processes[3], Duration::from_secs(30), || component_healthy(scheduler_port)).await
}

fn kubeconfig_yaml(server: &str, ca: &Path, token: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {CONTEXT}
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: testbed-admin
  user:
    token: {token}
contexts:
- name: {CONTEXT}
  context:
    cluster: {CONTEXT}
    user: testbed-admin
    namespace: default
current-context: {CONTEXT}
",
        ca = ca.display()
    )
}

/// Nodes for kwok to manage. No kwok taint, so ordinary manifests schedule on them.
fn nodes_yaml(names: &[String]) -> String {
    let mut out = String::new();
    for (i, name) in names.iter().enumerate() {
        let zone = ZONES[i % ZONES.len()];
        let _ = write!(
            out,
            "---
apiVersion: v1
kind: Node
metadata:
  name: {name}
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: \"0\"
  labels:
    kubernetes.io/hostname: {name}
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
    topology.kubernetes.io/region: testbed
    topology.kubernetes.io/zone: {zone}
status:
  allocatable: {{cpu: \"32\", memory: 128Gi, pods: \"110\", ephemeral-storage: 500Gi}}
  capacity: {{cpu: \"32\", memory: 128Gi, pods: \"110\", ephemeral-storage: 500Gi}}
"
        );
    }
    out
}

/// etcd's /health over plain HTTP/1.0 (no client library needed), within 5 s like the other probes.
async fn etcd_healthy(port: u16) -> anyhow::Result<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        conn.write_all(b"GET /health HTTP/1.0\r\n\r\n").await?;
        let mut response = String::new();
        conn.read_to_string(&mut response).await?;
        anyhow::Ok(response.contains("\"health\":\"true\""))
    };
    tokio::time::timeout(Duration::from_secs(5), probe).await.context("etcd /health: no answer within 5 s")?
}

/// /readyz, anonymous (allowed by the default RBAC), verifying the serving certificate.
async fn apiserver_ready(url: String, cert: PathBuf) -> anyhow::Result<bool> {
    if !cert.exists() {
        return Ok(false);
    }
    let mut cmd = Command::new("curl");
    cmd.args(["--silent", "--show-error", "--fail", "--max-time", "5", "--cacert"]).arg(&cert).arg(&url);
    Ok(output(&mut cmd).await?.trim() == "ok")
}

/// A component's own /healthz (self-signed certificate nobody else uses, so not verified).
async fn component_healthy(port: u16) -> anyhow::Result<bool> {
    let mut cmd = Command::new("curl");
    cmd.args(["--silent", "--show-error", "--fail", "--insecure", "--max-time", "5"])
        .arg(format!("https://127.0.0.1:{port}/healthz"));
    Ok(output(&mut cmd).await?.trim() == "ok")
}

/// Run to completion; fail with the command and its stderr.
async fn run(cmd: &mut Command) -> anyhow::Result<()> {
    output(cmd).await.map(drop)
}

async fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let description = format!("{cmd:?}");
    let out = tokio::process::Command::from(std::mem::replace(cmd, Command::new("true")))
        .output()
        .await
        .with_context(|| format!("running {description}"))?;
    if !out.status.success() {
        bail!("{description} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_install_says_how_to_get_it() {
        let empty = tempfile::tempdir().expect("tempdir");
        let Err(err) = Binaries::find(empty.path(), true) else { panic!("found binaries in an empty cache") };
        assert!(format!("{err:#}").contains("run `cargo xtask deps install`"), "{err:#}");
    }

    #[test]
    fn pod_ready_stage_skips_failing_images() {
        let upstream = "---\nkind: Stage\nmetadata:\n  name: node-init\nspec: {}\n---\nkind: Stage\nmetadata:\n  \
                        name: pod-ready\nspec:\n  selector:\n    matchExpressions:\n    - key: '.status.podIP'\n";
        let config = kwok_config(upstream).expect("config");
        let skip = config.find("!self.spec.containers.exists").expect("pod-ready got the CEL exclusion");
        assert!(skip > config.find("name: pod-ready").expect("pod-ready"));
        assert!(config.contains("name: testbed-pod-never-ready") && config.contains("name: testbed-pod-crashloop"));
        assert!(kwok_config("kind: Stage\n").is_err());
    }

    #[test]
    fn nodes_round_robin_over_zones() {
        let names: Vec<String> = (0..4).map(|i| format!("kwok-node-{i}")).collect();
        let yaml = nodes_yaml(&names);
        assert_eq!(yaml.matches("topology.kubernetes.io/zone: zone-a").count(), 2);
        assert_eq!(yaml.matches("topology.kubernetes.io/zone: zone-c").count(), 1);
    }
}
