//! Cluster probes (kube-rs): nodes and zones, ingress, cert-manager, storage, monitoring, security objects.

use super::Probe;

pub fn probes() -> Vec<Box<dyn Probe>> {
    Vec::new()
}
