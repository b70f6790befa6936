//! Elasticsearch / OpenSearch probes: health, nodes, snapshots, index settings, watermarks.

use super::Probe;

pub fn probes() -> Vec<Box<dyn Probe>> {
    Vec::new()
}
