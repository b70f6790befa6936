//! Wire types of the Audit Trail events API (JSON, camelCase, under /api/v1).
//!
//! Filled in by the audit server work; audctl's smoke and load verbs use the same types.
