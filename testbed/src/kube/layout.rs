//! Versions and on-disk layout of the Kubernetes testbed: what `cargo xtask deps install` builds and
//! gathers, and where `testbed::kube()` finds it. One file for both sides so they cannot drift; xtask
//! includes it with `#[path]` (it must not depend on the testbed crate), hence std only.

use std::path::{Path, PathBuf};

/// k8s.io/kubernetes module version (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl).
/// xtask/go/kubernetes/go.mod pins the same version; change both together.
pub const KUBERNETES_VERSION: &str = "v1.35.4";
/// go.etcd.io/etcd/server/v3 (xtask/go/etcd/go.mod). Debian's etcd 3.4 lacks RequestWatchProgress.
pub const ETCD_VERSION: &str = "v3.6.8";
/// sigs.k8s.io/kwok: fakes the kubelets of the nodes.
pub const KWOK_VERSION: &str = "v0.8.0";

pub const KUBERNETES_BINARIES: [&str; 4] = ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"];

/// kwok stages that make nodes Ready, keep their leases fresh, run pods to Ready and provision volumes,
/// relative to the kwok module's kustomize/stage/ folder.
pub const KWOK_STAGES: &[&str] = &[
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
    "volume/fast/pvc-provision.yaml",
    "volume/fast/pv-bind.yaml",
    "volume/fast/pvc-delete.yaml",
    "volume/fast/pv-delete.yaml",
];
/// The default StorageClass whose PVCs kwok's volume stages bind.
pub const KWOK_STORAGE_CLASS: &str = "volume/fast/storage-class.yaml";
/// kwok's `Logs` CRD, inside the kwok module: per-pod container logs served from a file, which is how
/// a test plays the container runtime of a pod (see `Kube::serve_logs`).
pub const KWOK_LOGS_CRD: &str = "kustomize/crd/bases/kwok.x-k8s.io_logs.yaml";
/// Its name in the kwok data directory.
pub const KWOK_LOGS_CRD_FILE: &str = "logs-crd.yaml";

/// Where a set of CRDs comes from.
pub enum CrdOrigin {
    /// A Go module (fetched with `go mod download`) and the YAML files or folders inside it.
    GoModule { module: &'static str, paths: &'static [&'static str] },
    /// A Maven artifact (`mvn dependency:copy`), the folder inside the jar holding the YAML files,
    /// and the jar's SHA-512 (as Maven Central publishes it in `<jar>.sha512`).
    MavenJar { artifact: &'static str, folder: &'static str, sha512: &'static str },
}

/// One project's CRDs, installed into `kube/crds/<name>-<version>/`.
pub struct CrdSet {
    pub name: &'static str,
    pub version: &'static str,
    pub origin: CrdOrigin,
}

/// The CRDs the rendered manifests use. Exact versions: `@latest` and newer prometheus-operator
/// releases (v0.86+) are refused by this machine's Go proxy access.
pub const CRD_SETS: &[CrdSet] = &[
    CrdSet {
        name: "prometheus-operator",
        version: "v0.85.0",
        origin: CrdOrigin::GoModule {
            module: "github.com/prometheus-operator/prometheus-operator",
            paths: &["example/prometheus-operator-crd"],
        },
    },
    CrdSet {
        name: "cert-manager",
        version: "v1.21.2",
        origin: CrdOrigin::GoModule { module: "github.com/cert-manager/cert-manager", paths: &["deploy/crds"] },
    },
    CrdSet {
        name: "cloudnative-pg",
        version: "v1.28.0",
        origin: CrdOrigin::GoModule {
            module: "github.com/cloudnative-pg/cloudnative-pg",
            paths: &["config/crd/bases"],
        },
    },
    CrdSet {
        name: "eck",
        version: "v3.5.0",
        origin: CrdOrigin::GoModule {
            module: "github.com/elastic/cloud-on-k8s/v3",
            paths: &["config/crds/v1/all-crds.yaml"],
        },
    },
    CrdSet {
        name: "external-secrets",
        version: "v1.3.2",
        origin: CrdOrigin::GoModule {
            module: "github.com/external-secrets/external-secrets",
            paths: &["deploy/crds/bundle.yaml"],
        },
    },
    CrdSet {
        name: "strimzi",
        version: "0.49.0",
        // Only the `tests` classifier jar carries the CRDs. crds/v1beta2/ is what 0.49 installs: it
        // serves both kafka.strimzi.io/v1beta2 (storage) and v1 (crds/v1/ would drop v1beta2).
        origin: CrdOrigin::MavenJar {
            artifact: "io.strimzi:api:0.49.0:jar:tests",
            folder: "crds/v1beta2",
            sha512: "0fedc12cc5066f03c6ef6d74ec7ee54d70ac9af52243ca857c07cffd1194dacee98f2395e2b437c7644f37661b8d6438c8d5f98dad340e0f2ec26c5db60b056a",
        },
    },
];

/// Directory holding kube-apiserver, kube-controller-manager, kube-scheduler and kubectl.
pub fn kubernetes_bin_dir(cache: &Path) -> PathBuf {
    cache.join("bin").join(format!("kubernetes-{KUBERNETES_VERSION}"))
}

pub fn etcd_bin(cache: &Path) -> PathBuf {
    cache.join("bin").join(format!("etcd-{ETCD_VERSION}")).join("etcd")
}

pub fn kwok_bin(cache: &Path) -> PathBuf {
    cache.join("bin").join(format!("kwok-{KWOK_VERSION}")).join("kwok")
}

/// kwok's data: `stages.yaml` (its `--config`) and `storage-class.yaml`.
pub fn kwok_data_dir(cache: &Path) -> PathBuf {
    cache.join("kube").join(format!("kwok-{KWOK_VERSION}"))
}

pub fn crd_dir(cache: &Path, set: &CrdSet) -> PathBuf {
    cache.join("kube").join("crds").join(format!("{}-{}", set.name, set.version))
}
