//! Static probes of the rendered manifests (no cluster needed).

use super::Probe;

pub fn probes() -> Vec<Box<dyn Probe>> {
    Vec::new()
}
