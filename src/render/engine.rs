//! The minijinja environment: embedded templates (or `--templates DIR`), strict undefined values,
//! and the filters templates use (yaml, indent (built in), sha256, b64).

use std::path::Path;

use anyhow::Context;
use base64::Engine as _;
use minijinja::{Environment, UndefinedBehavior, Value};
use sha2::{Digest, Sha256};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/templates.rs"));
}

/// Template name and source.
pub type Template = (String, String);

/// The embedded templates, or those of `dir` (every `*.j2` file) when given.
pub fn templates(dir: Option<&Path>) -> anyhow::Result<Vec<Template>> {
    let Some(dir) = dir else {
        return Ok(embedded::TEMPLATES.iter().map(|(n, s)| ((*n).to_owned(), (*s).to_owned())).collect());
    };
    let entries = std::fs::read_dir(dir)
        .map_err(|e| crate::error::usage(format!("--templates {}: cannot read the directory: {e}", dir.display())))?;
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.with_context(|| format!("listing {}", dir.display()))?.path();
        if path.extension().is_some_and(|x| x == "j2") {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            out.push((name, text));
        }
    }
    if out.is_empty() {
        return Err(crate::error::usage(format!("--templates {}: no *.j2 templates in it", dir.display())));
    }
    out.sort();
    Ok(out)
}

pub fn environment(templates: &[Template]) -> anyhow::Result<Environment<'_>> {
    let mut env = Environment::new();
    // A misspelt value name is an error, not an empty string in a manifest.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // minijinja would JSON-escape every `{{ }}` of a *.yaml.j2 file; YAML quoting is explicit here
    // (`| tojson` where a value needs quotes).
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(true);
    env.add_filter("yaml", yaml);
    env.add_filter("sha256", sha256);
    env.add_filter("b64", b64);
    for (name, source) in templates {
        env.add_template(name, source)
            .map_err(|e| crate::error::usage(format!("template {name}: {}", describe(&e))))?;
    }
    Ok(env)
}

/// A value as block YAML without the trailing newline, to place under a key with `| indent(n)`.
fn yaml(value: Value) -> Result<String, minijinja::Error> {
    let text = serde_yaml::to_string(&value)
        .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string()))?;
    Ok(text.trim_end().to_owned())
}

/// Hex SHA-256 of a string (or of a value's JSON).
fn sha256(value: Value) -> String {
    let text = match value.as_str() {
        Some(s) => s.to_owned(),
        None => serde_json::to_string(&value).unwrap_or_default(),
    };
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn b64(value: Value) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(value.as_str().map(str::to_owned).unwrap_or_else(|| value.to_string()))
}

/// A rendering error with the offending template line quoted.
pub fn describe_in(e: &minijinja::Error, templates: &[Template]) -> String {
    let mut text = describe(e);
    let source = e.name().and_then(|n| templates.iter().find(|(name, _)| name == n)).map(|(_, s)| s);
    if let (Some(source), Some(line)) = (source, e.line())
        && let Some(code) = source.lines().nth(line.saturating_sub(1))
    {
        text.push_str(&format!("\n    {line} | {}", code.trim_end()));
    }
    text
}

/// minijinja's error with its template position and the cause.
pub fn describe(e: &minijinja::Error) -> String {
    let mut text = match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    };
    if let (Some(name), Some(line)) = (e.name(), e.line()) {
        text = format!("{name}:{line}: {text}");
    }
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
