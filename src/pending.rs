//! Verbs that are declared but not built yet say so and exit 2, rather than pretend to work.

use crate::error::usage;

pub fn run(verb: &str) -> anyhow::Result<()> {
    Err(usage(format!(
        "`audctl {verb}` is not built yet in this version; see the README's verb table for what works today"
    )))
}
