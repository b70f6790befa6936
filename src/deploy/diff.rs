//! `audctl diff`: each rendered object server-side dry-run applied (what the API server would store,
//! defaults and admission included) against the live object, as a unified diff per object, with
//! managed fields and Secret values masked. Objects a deploy would prune show as removed.
//! Exit 0: nothing would change; 1: something would. `-o json|yaml`: the same diffs, one entry
//! per object with its change (`create`, `update`, `prune`).

use std::fmt::Write as _;

use comfy_table::Table;
use serde::Serialize;
use serde_json::Value;
use similar::TextDiff;

use super::apply::ApplyError;
use super::plan::{self, ObjectRef};
use super::{live_inventory, release, render, resolve_all, settings};
use crate::cli::{DiffArgs, GlobalArgs, OutputFormat};
use crate::error::CheckFailed;
use crate::output::{self, Report};

/// What a deploy would change, for `-o json|yaml` (the text form is the unified diffs alone).
#[derive(Debug, Serialize)]
struct DiffReport {
    changed: usize,
    objects: Vec<ObjectDiff>,
}

#[derive(Debug, Serialize)]
struct ObjectDiff {
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    name: String,
    change: &'static str,
    /// Unified diff of the live object (Secret values masked) against what the deploy would store.
    diff: String,
}

impl ObjectDiff {
    fn new(id: &ObjectRef, change: &'static str, diff: String) -> Self {
        ObjectDiff { kind: id.kind.clone(), namespace: id.namespace.clone(), name: id.name.clone(), change, diff }
    }
}

impl Report for DiffReport {
    fn table(&self) -> Table {
        let mut t = output::new_table(["object", "change"]);
        for o in &self.objects {
            t.add_row([format!("{}/{}", o.kind, o.name), o.change.to_owned()]);
        }
        t
    }
}

pub async fn diff(global: &GlobalArgs, args: &DiffArgs) -> anyhow::Result<()> {
    let rendered = render(&args.values, &global.render_sets(&args.set), args.templates.as_deref())?;
    let settings = settings(global)?;
    let client = settings.api_client().await?;
    let (values, manifests) = (&rendered.values, &rendered.manifests);
    let revs = release::list(&client, &values.namespace.name, &values.name).await.unwrap_or_default();
    let previous = live_inventory(&revs);
    let resources = resolve_all(&client, manifests, &previous).await?;

    let mut objects = Vec::new();
    for m in manifests {
        let live = resources.get(&client, &m.id).await?;
        // force: a diff shows what the deploy would store; conflicts are the deploy's to refuse.
        let mut after = match resources.apply(&client, m, true, true).await {
            Ok(v) => v,
            Err(ApplyError::NoNamespace) => m.body.clone(),
            Err(ApplyError::Conflict(c)) => anyhow::bail!("{}", super::apply::describe_conflict(&m.id, &c)),
            Err(ApplyError::Other(e)) => return Err(e.context(format!("dry run of {}", m.id))),
        };
        let mut before = live;
        if let Some(b) = before.as_mut() {
            plan::normalize(b);
        }
        plan::normalize(&mut after);
        plan::mask_secret(before.as_mut(), &mut after);
        let text = unified(&m.id, before.as_ref(), Some(&after))?;
        if !text.is_empty() {
            objects.push(ObjectDiff::new(&m.id, if before.is_none() { "create" } else { "update" }, text));
        }
    }
    for r in plan::to_prune(&previous, &plan::inventory(manifests)) {
        if let Some(mut live) = resources.get(&client, &r).await.ok().flatten() {
            if !plan::ours(&live, &values.name) {
                continue;
            }
            plan::normalize(&mut live);
            mask_alone(&mut live);
            objects.push(ObjectDiff::new(&r, "prune", unified(&r, Some(&live), None)?));
        }
    }
    let changed = objects.len();
    match global.output {
        // The unified diffs as `git diff` prints them, for people and patch tools.
        OutputFormat::Table => {
            let text: String = objects.iter().map(|o| o.diff.as_str()).collect();
            output::print(text.as_bytes())?;
        }
        format => output::emit(format, &DiffReport { changed, objects })?,
    }
    if changed == 0 {
        eprintln!("no changes: the cluster matches the render");
        Ok(())
    } else {
        eprintln!("{changed} object(s) would change");
        Err(CheckFailed(format!("{changed} object(s) would change")).into())
    }
}

/// A Secret with nothing to compare against: every value masked.
fn mask_alone(v: &mut Value) {
    let mut empty = None;
    plan::mask_secret(empty.as_mut(), v);
}

fn yaml(v: Option<&Value>) -> anyhow::Result<String> {
    Ok(match v {
        Some(v) => serde_yaml::to_string(v)?,
        None => String::new(),
    })
}

/// `--- live/<Kind>/<ns>/<name>` / `+++ rendered/...` unified diff; empty when equal.
fn unified(id: &ObjectRef, before: Option<&Value>, after: Option<&Value>) -> anyhow::Result<String> {
    let (a, b) = (yaml(before)?, yaml(after)?);
    if a == b {
        return Ok(String::new());
    }
    let path = format!("{}/{}/{}", id.kind, id.namespace.as_deref().unwrap_or("_"), id.name);
    let old = if before.is_some() { format!("live/{path}") } else { "/dev/null".into() };
    let new = if after.is_some() { format!("rendered/{path}") } else { "/dev/null".into() };
    let diff = TextDiff::from_lines(&a, &b);
    let mut s = String::new();
    let _ = write!(s, "{}", diff.unified_diff().context_radius(3).header(&old, &new));
    if !s.ends_with('\n') {
        s.push('\n');
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unified_diff_per_object() {
        let id = ObjectRef {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "c".into(),
            namespace: Some("n".into()),
        };
        let a = json!({"data": {"x": "1", "y": "2"}});
        let b = json!({"data": {"x": "1", "y": "3"}});
        let d = unified(&id, Some(&a), Some(&b)).expect("diff");
        assert!(d.starts_with("--- live/ConfigMap/n/c\n+++ rendered/ConfigMap/n/c\n"), "{d}");
        assert!(d.contains("-  y: '2'") || d.contains("-  y: \"2\""), "{d}");
        assert!(unified(&id, Some(&a), Some(&a)).expect("diff").is_empty());
    }
}
