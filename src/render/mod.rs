//! `audctl render`: values files to checked Kubernetes manifests.
//!
//! values (load, merge, check) -> minijinja templates -> one object per document, each parsed into
//! its Kubernetes or custom resource type -> apply order -> stdout or one file per object.

pub(crate) mod context;
pub mod crds;
mod engine;
pub mod objects;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

pub use objects::Object;

use crate::cli::{OutputFormat, RenderArgs};
use crate::values::{self, Values};

/// `-o` decides the stdout form: YAML documents (the default, `-o table` and `-o yaml`) or one
/// Kubernetes `List` in JSON (`-o json`). JUnit has no meaning for manifests and is refused, as is
/// JSON with `--output-dir` (its files are YAML), before any values are read.
pub fn run(args: &RenderArgs, format: OutputFormat) -> anyhow::Result<()> {
    if format == OutputFormat::Junit {
        return Err(crate::error::usage(
            "render -o junit: render writes manifests, as YAML (default, -o yaml) or a JSON List (-o json); \
             JUnit is for check, smoke and load",
        ));
    }
    if format == OutputFormat::Json && args.output_dir.is_some() {
        return Err(crate::error::usage(
            "render -o json with --output-dir: the files of --output-dir are YAML; drop one of the two",
        ));
    }
    if args.schema {
        return print(&format!("{}\n", values::schema()));
    }
    let values = values::load(&args.values, &args.set)?;
    let objects = render(&values, args.templates.as_deref())?;
    match &args.output_dir {
        Some(dir) => {
            let written = write_dir(&objects, dir)?;
            eprintln!("wrote {} objects to {}", written.len(), dir.display());
        }
        None if format == OutputFormat::Json => print(&to_json_list(&objects)?)?,
        None => print(&to_stream(&objects))?,
    }
    Ok(())
}

/// Write to stdout; a closed pipe (`audctl render | head`) is not an error.
fn print(text: &str) -> anyhow::Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}

/// Render every template with `values`; all template and object errors are reported together.
pub fn render(values: &Values, templates_dir: Option<&Path>) -> anyhow::Result<Vec<Object>> {
    let templates = engine::templates(templates_dir)?;
    let env = engine::environment(&templates)?;
    let ctx = minijinja::context! {
        values => minijinja::Value::from_serialize(values),
        release => minijinja::Value::from_serialize(context::release(values)),
    };
    let mut errors = Vec::new();
    let mut objects = Vec::new();
    for (name, _) in &templates {
        let output = env.get_template(name).and_then(|t| t.render(&ctx));
        match output {
            Ok(text) => objects.extend(objects::parse(name, &text, &mut errors)),
            Err(e) => errors.push(format!("template {name}: {}", engine::describe_in(&e, &templates))),
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for o in &objects {
        if !seen.insert((o.api_version.clone(), o.id())) {
            errors.push(format!("template {}: object {} is rendered twice", o.template, o.id()));
        }
    }
    if !errors.is_empty() {
        return Err(crate::error::usage(format!("rendering failed:\n  {}", errors.join("\n  "))));
    }
    objects::sort(&mut objects);
    Ok(objects)
}

/// Multi-document YAML in apply order, each object headed by the template it came from.
pub fn to_stream(objects: &[Object]) -> String {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n# Source: ");
        out.push_str(&o.template);
        out.push('\n');
        out.push_str(&o.text);
        out.push('\n');
    }
    out
}

/// The objects in apply order as one `v1` `List` in JSON (what `kubectl apply -f` and `kubectl get
/// -o json` use for several objects); the template comments of the YAML form have no place in it.
pub fn to_json_list(objects: &[Object]) -> anyhow::Result<String> {
    let items = objects
        .iter()
        .map(|o| serde_yaml::from_str::<serde_json::Value>(&o.text).with_context(|| format!("object {}", o.id())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let list = serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": items });
    Ok(format!("{}\n", serde_json::to_string_pretty(&list)?))
}

/// File name of each object: apply-order position, kind and name.
pub fn file_names(objects: &[Object]) -> Vec<String> {
    objects.iter().enumerate().map(|(i, o)| format!("{i:02}-{}-{}.yaml", o.kind.to_lowercase(), o.name)).collect()
}

/// First line of every file `--output-dir` writes: what tells a file audctl wrote (and may replace
/// or remove) from a user's file that happens to share the `NN-kind-name.yaml` naming. A YAML comment,
/// so each file stays one valid YAML document.
pub const OUTPUT_DIR_MARKER: &str =
    "# Generated by audctl render --output-dir: replaced or removed by the next render.";

/// Write one file per object, or change nothing in `dir`: every destination is checked before the
/// first file is replaced, each file is written to a temporary name then renamed (never
/// half-written), temporary files are removed on any error, and only files audctl wrote itself
/// (first line `OUTPUT_DIR_MARKER`) are replaced or, once no longer produced, removed.
pub fn write_dir(objects: &[Object], dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    // Every problem here is the user's directory, not a bug: exit 2 with the path.
    let fail = |what: String, e: std::io::Error| crate::error::usage(format!("--output-dir: {what}: {e}"));
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create {}", dir.display()), e))?;
    let names = file_names(objects);
    for name in &names {
        let path = dir.join(name);
        match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(format!("cannot inspect {}", path.display()), e)),
            Ok(meta) if !meta.file_type().is_file() => {
                return Err(crate::error::usage(format!(
                    "--output-dir: {} is in the way: it is not a regular file (a directory or a link); \
                     move it, nothing was written",
                    path.display()
                )));
            }
            Ok(_) if !written_by_audctl(&path) => {
                return Err(crate::error::usage(format!(
                    "--output-dir: {} was not written by audctl render (its first line is not {OUTPUT_DIR_MARKER:?}); \
                     move it or choose another directory, nothing was written",
                    path.display()
                )));
            }
            Ok(_) => {}
        }
    }
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
    let cleanup = |staged: &[(PathBuf, PathBuf)]| {
        for (tmp, _) in staged {
            let _ = std::fs::remove_file(tmp);
        }
    };
    for (name, o) in names.iter().zip(objects) {
        let tmp = dir.join(format!(".{name}.tmp"));
        let text = format!("{OUTPUT_DIR_MARKER}\n# Source: {}\n{}\n", o.template, o.text);
        if let Err(e) = std::fs::write(&tmp, text) {
            cleanup(&staged);
            let _ = std::fs::remove_file(&tmp);
            return Err(fail(format!("cannot write {}", tmp.display()), e));
        }
        staged.push((tmp, dir.join(name)));
    }
    let mut written = Vec::new();
    for (i, (tmp, path)) in staged.iter().enumerate() {
        // Only an I/O failure gets here (the destinations were checked): the earlier files are
        // already replaced, so say so; the remaining temporary files go.
        if let Err(e) = std::fs::rename(tmp, path) {
            cleanup(&staged[i..]);
            return Err(fail(
                format!(
                    "cannot rename {} to {} ({i} of {} files already replaced)",
                    tmp.display(),
                    path.display(),
                    staged.len()
                ),
                e,
            ));
        }
        written.push(path.clone());
    }
    let entries = std::fs::read_dir(dir).map_err(|e| fail(format!("cannot list {}", dir.display()), e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let numbered =
            name.len() > 3 && name.as_bytes()[..2].iter().all(u8::is_ascii_digit) && name[2..].starts_with('-');
        let path = entry.path();
        if numbered
            && name.ends_with(".yaml")
            && !names.contains(&name)
            && entry.file_type().is_ok_and(|t| t.is_file())
            && written_by_audctl(&path)
        {
            std::fs::remove_file(&path).map_err(|e| fail(format!("cannot remove stale {}", path.display()), e))?;
        }
    }
    Ok(written)
}

/// Whether the file at `path` was written by `--output-dir`: its first line is `OUTPUT_DIR_MARKER`,
/// or, for directories written before the marker existed, `# Source: NAME.yaml.j2` (an embedded
/// template's name: Helm's own `# Source:` lines name a chart path, never a `.j2`). Only the first
/// line is read: a user's file in the directory may be large.
fn written_by_audctl(path: &Path) -> bool {
    use std::io::Read;
    let mut head = Vec::new();
    let read = std::fs::File::open(path).and_then(|f| f.take(256).read_to_end(&mut head));
    if read.is_err() {
        return false;
    }
    let first = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let Ok(first) = std::str::from_utf8(first) else { return false };
    first == OUTPUT_DIR_MARKER
        || first.strip_prefix("# Source: ").is_some_and(|t| t.ends_with(".yaml.j2") && !t.contains(['/', ' ']))
}
