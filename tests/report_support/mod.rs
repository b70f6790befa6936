//! Shared by the test binaries that read `audctl check -o json` reports: the items of every
//! section, and one item by id.
#![allow(dead_code)]

use serde_json::Value;

/// Every item of the report, section after section.
pub fn items(report: &Value) -> Vec<&Value> {
    report["sections"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["items"].as_array().into_iter().flatten())
        .collect()
}

/// The item `id`; panics, showing the report, when there is none.
pub fn item<'a>(report: &'a Value, id: &str) -> &'a Value {
    items(report).into_iter().find(|i| i["id"] == id).unwrap_or_else(|| panic!("no item {id} in {report:#}"))
}
