//! PostgreSQL probes: replication, WAL archiving, tuning, connections, migrations.

use super::Probe;

pub fn probes() -> Vec<Box<dyn Probe>> {
    Vec::new()
}
