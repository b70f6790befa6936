//! `audctl render`: values files to checked Kubernetes manifests.
//!
//! values (load, merge, check) -> minijinja templates -> one object per document, each parsed into
//! its Kubernetes or custom resource type -> apply order -> stdout or one file per object.

pub(crate) mod context;
pub mod crds;
mod engine;
pub mod objects;

use std::path::{Path, PathBuf};

use anyhow::Context;

pub use objects::Object;

use crate::cli::RenderArgs;
use crate::values::{self, Values};

pub fn run(args: &RenderArgs) -> anyhow::Result<()> {
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
        None => print(&to_stream(&objects))?,
    }
    Ok(())
}

/// Write to stdout; a closed pipe (`audctl render | head`) is not an error.
fn print(text: &str) -> anyhow::Result<()> {
    crate::output::print(text.as_bytes())
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

/// File name of each object: apply-order position, kind and name.
pub fn file_names(objects: &[Object]) -> Vec<String> {
    objects.iter().enumerate().map(|(i, o)| format!("{i:02}-{}-{}.yaml", o.kind.to_lowercase(), o.name)).collect()
}

/// Write one file per object. Each file is written to a temporary name then renamed, so no file is
/// ever half-written; files of an earlier render that are no longer produced are removed.
pub fn write_dir(objects: &[Object], dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let names = file_names(objects);
    let mut staged = Vec::new();
    for (name, o) in names.iter().zip(objects) {
        let tmp = dir.join(format!(".{name}.tmp"));
        let text = format!("# Source: {}\n{}\n", o.template, o.text);
        if let Err(e) = std::fs::write(&tmp, text) {
            for (t, _) in &staged {
                let _ = std::fs::remove_file(t);
            }
            let _ = std::fs::remove_file(&tmp);
            return Err(anyhow::Error::new(e).context(format!("writing {}", tmp.display())));
        }
        staged.push((tmp, dir.join(name)));
    }
    let mut written = Vec::new();
    for (tmp, path) in staged {
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        written.push(path);
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = name.len() > 3 && name.as_bytes()[..2].iter().all(u8::is_ascii_digit) && name[2..].starts_with('-');
        if ours && name.ends_with(".yaml") && !names.contains(&name) {
            std::fs::remove_file(entry.path()).with_context(|| format!("removing stale {name}"))?;
        }
    }
    Ok(written)
}
