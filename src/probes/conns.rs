//! Connections shared by the probes of one target during one run, opened lazily on first use, so
//! ten PostgreSQL probes cost one connection and a target nobody probes is never contacted.

/// Filled in by the datastore probes (one lazily initialised field per target).
#[derive(Default)]
pub struct Connections {}
