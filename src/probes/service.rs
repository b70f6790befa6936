//! Audit Trail service probes: health, metrics the alert rules use, API key, OpenAPI.

use super::Probe;

pub fn probes() -> Vec<Box<dyn Probe>> {
    Vec::new()
}
