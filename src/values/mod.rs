//! Values: load, merge (defaults, each `-f` in order, then `--set`), type and check, with every error
//! pointing at file:line:column and the key path, all reported at once.

mod check;
pub mod merge;
pub mod model;
pub mod quantity;
pub mod source;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde_yaml::Value;

pub use model::Values;
use source::{Origin, Positions, Sources};

/// The defaults, embedded so the binary works anywhere.
pub const DEFAULTS: &str = include_str!("../../values/defaults.yaml");
const DEFAULTS_NAME: &str = "values/defaults.yaml";

/// One problem in the values: where, which key, what is expected.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueError {
    pub origin: Option<Origin>,
    pub path: String,
    pub message: String,
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Without an origin the key path alone says where (no layer mentions it).
        if let Some(origin) = &self.origin {
            write!(f, "{origin}: ")?;
        }
        if self.path.is_empty() { write!(f, "{}", self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

/// All the problems found, shown one per line.
#[derive(Debug)]
pub struct ValueErrors(pub Vec<ValueError>);

impl fmt::Display for ValueErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "invalid values ({n} error{}):", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// Merge defaults, `files` and `sets`, then type and check the result.
pub fn load(files: &[PathBuf], sets: &[String]) -> anyhow::Result<Values> {
    let mut texts = Vec::with_capacity(files.len());
    for file in files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| crate::error::usage(format!("cannot read values file {}: {e}", file.display())))?;
        texts.push((file.clone(), text));
    }
    load_texts(&texts, sets).map_err(|errors| crate::error::usage(errors.to_string()))
}

/// `load` on texts already read, for tests and benchmarks: `(name shown in errors, content)`.
pub fn load_texts(files: &[(PathBuf, String)], sets: &[String]) -> Result<Values, ValueErrors> {
    let mut errors = Vec::new();
    let mut sources = Sources::default();
    let defaults = parse_layer(Path::new(DEFAULTS_NAME), DEFAULTS, &mut sources, &mut errors);
    let mut merged = defaults.clone();
    for (path, text) in files {
        let layer = parse_layer(path, text, &mut sources, &mut errors);
        match layer {
            // An empty or comment-only file parses to null: as with Helm it changes nothing (merging
            // it would replace the whole tree, defaults included, with null).
            Value::Null => {}
            Value::Mapping(_) => merge::merge(&mut merged, layer),
            other => {
                let root = sources.layers.last().and_then(|p| p.root.clone());
                errors.push(ValueError {
                    origin: Some(root.unwrap_or(Origin::File { path: path.clone(), line: 1, column: 1 })),
                    path: String::new(),
                    message: format!(
                        "found {} at the top level: expected a mapping of values (key: value)",
                        kind_of(&other)
                    ),
                });
            }
        }
    }
    // --set values typed as a number or boolean, by display path: their text, in case the values
    // expect a string there.
    let mut set_texts = HashMap::new();
    for arg in sets {
        let set_error = |path: String, message: String| ValueError {
            origin: Some(Origin::Set { arg: arg.clone() }),
            path,
            message,
        };
        let assignments = match merge::split_assignments(arg) {
            Ok(assignments) => assignments,
            Err(message) => {
                errors.push(set_error(String::new(), message));
                continue;
            }
        };
        for assignment in assignments {
            let merge::SetArg { segments, display, value, raw, item_raws } = match merge::parse_set(assignment) {
                Ok(set) => set,
                Err(message) => {
                    errors.push(set_error(String::new(), message));
                    continue;
                }
            };
            // This assignment replaces whatever an earlier one set at or below its path.
            let below = |path: &String| {
                path == &display || path.strip_prefix(display.as_str()).is_some_and(|r| r.starts_with(['.', '[']))
            };
            set_texts.retain(|path, _| !below(path));
            if matches!(value, Value::Number(_) | Value::Bool(_)) {
                set_texts.insert(display.clone(), (segments.clone(), raw));
            }
            for (i, (item, item_raw)) in value.as_sequence().into_iter().flatten().zip(item_raws).enumerate() {
                if matches!(item, Value::Number(_) | Value::Bool(_)) {
                    let mut item_segments = segments.clone();
                    item_segments.push(merge::Segment::Index(i));
                    set_texts.insert(source::join_index(&display, i), (item_segments, item_raw));
                }
            }
            let items = value.as_sequence().map_or(0, Vec::len);
            match merge::set_overlay(&segments, value, &merged) {
                Ok(overlay) => merge::merge(&mut merged, overlay),
                Err(message) => {
                    errors.push(set_error(display, message));
                    continue;
                }
            }
            // The path and each of its parents, from the segments: a key may contain dots.
            let mut paths = vec![];
            let mut p = String::new();
            for segment in &segments {
                p = match segment {
                    merge::Segment::Key(k) => source::join_key(&p, k),
                    merge::Segment::Index(i) => source::join_index(&p, *i),
                };
                paths.push(p.clone());
            }
            // A list's items came from here too, not from the file's items at the same indices.
            paths.extend((0..items).map(|i| source::join_index(&p, i)));
            sources.layers.push(Positions::of_set(arg, paths));
        }
    }
    if !errors.is_empty() {
        return Err(ValueErrors(errors));
    }
    let typed = deserialize_all(merged, &defaults, &set_texts, &sources, &mut errors);
    if let Some((values, tree)) = &typed {
        unknown_nested_keys(tree, values, &sources, &mut errors);
        // The type errors' paths hold defaults now (see deserialize_all).
        let repaired: Vec<String> = errors.iter().map(|e| e.path.clone()).collect();
        check::semantic(values, &sources, &repaired, &mut errors);
    }
    match typed {
        Some((values, _)) if errors.is_empty() => Ok(values),
        _ => {
            // In file order, then line and column; --set arguments last.
            errors.sort_by_key(|e| match &e.origin {
                Some(Origin::File { path, line, column }) => (0, layer_index(files, path), *line, *column),
                Some(Origin::Set { .. }) => (1, 0, 0, 0),
                None => (2, 0, 0, 0),
            });
            Err(ValueErrors(errors))
        }
    }
}

/// The YAML kind of `value`, for messages.
fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn layer_index(files: &[(PathBuf, String)], path: &Path) -> usize {
    files.iter().position(|(p, _)| p == path).map_or(0, |i| i + 1)
}

fn parse_layer(path: &Path, text: &str, sources: &mut Sources, errors: &mut Vec<ValueError>) -> Value {
    match Positions::of_file(path, text) {
        Ok(positions) => sources.layers.push(positions),
        Err((origin, message)) => {
            errors.push(ValueError { origin: Some(origin), path: String::new(), message });
            return Value::Null;
        }
    }
    match serde_yaml::from_str::<Value>(text) {
        Ok(value) => value,
        Err(e) => {
            // Without a location, still name the file.
            let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            let origin = Some(Origin::File { path: path.to_owned(), line, column });
            errors.push(ValueError { origin, path: String::new(), message: format!("not valid YAML: {e}") });
            Value::Null
        }
    }
}

/// Deserialize into `Values`; on an error, note it, put the default back at that path (or drop the
/// key) and try again, so that one run reports every typing problem. Returns the typed values and
/// the repaired tree they came from.
///
/// A `--set` number or boolean where a string is expected is no error: like a string field in a
/// values file written `"1.2"`, it becomes the text given (`set_texts`), so `image.tag=0.10` is
/// "0.10", not 0.1.
fn deserialize_all(
    mut tree: Value,
    defaults: &Value,
    set_texts: &HashMap<String, (Vec<merge::Segment>, String)>,
    sources: &Sources,
    errors: &mut Vec<ValueError>,
) -> Option<(Values, Value)> {
    let mut seen = HashSet::new();
    for _ in 0..200 {
        match serde_path_to_error::deserialize::<_, Values>(tree.clone()) {
            Ok(values) => return Some((values, tree)),
            Err(err) => {
                let path = err.path().to_string();
                let path = if path == "." { String::new() } else { path };
                let inner = err.inner().to_string();
                if inner.starts_with("invalid type: ")
                    && inner.ends_with("expected a string")
                    && let Some((segments, raw)) = set_texts.get(&path)
                    && seen.insert(format!("{path} as a string"))
                {
                    replace_segments(&mut tree, segments, Some(Value::String(raw.clone())));
                    continue;
                }
                let (message, is_key) = explain(&inner);
                let origin = match missing_key(&inner) {
                    // The key is gone because a layer set it (or a parent) to null: point at that
                    // layer, the last that mentions the key, rather than at the parent.
                    Some(key) => sources.key_origin(&source::join_key(&path, key)),
                    None if is_key => sources.key_origin(&path),
                    None => sources.value_origin(&path),
                };
                errors.push(ValueError { origin: origin.cloned(), path: path.clone(), message });
                if !seen.insert(path.clone()) || path.is_empty() {
                    return None;
                }
                match lookup(defaults, &path) {
                    Some(default) if !inner.starts_with("unknown field") => replace(&mut tree, &path, Some(default)),
                    _ => replace(&mut tree, &path, None),
                }
            }
        }
    }
    None
}

/// Reword serde's messages: unknown keys get a did-you-mean; returns whether the key (not the value)
/// is at fault.
fn explain(inner: &str) -> (String, bool) {
    if let Some(rest) = inner.strip_prefix("unknown field `") {
        let (key, rest) = rest.split_once('`').unwrap_or((rest, ""));
        let candidates: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
        return (unknown_key_message(key, &candidates), true);
    }
    if let Some(key) = missing_key(inner) {
        return (
            format!("missing key `{key}`: removed by a null here, but required (it has no default to fall back to)"),
            false,
        );
    }
    (inner.replace("invalid type: ", "wrong type: found "), false)
}

/// The key of serde's "missing field `key`".
fn missing_key(inner: &str) -> Option<&str> {
    inner.strip_prefix("missing field `").and_then(|rest| rest.split('`').next())
}

fn unknown_key_message(key: &str, candidates: &[&str]) -> String {
    let best = candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(key, c), *c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((_, name)) => format!("unknown key `{key}`; did you mean `{name}`?"),
        None if candidates.is_empty() => format!("unknown key `{key}`"),
        None => format!("unknown key `{key}`; expected one of: {}", candidates.join(", ")),
    }
}

/// Keys inside the Kubernetes-typed values (probes, affinity, env, ...) that the types ignored:
/// found by comparing the input with the typed values written back out.
fn unknown_nested_keys(input: &Value, values: &Values, sources: &Sources, errors: &mut Vec<ValueError>) {
    let Ok(typed) = serde_yaml::to_value(values) else { return };
    fn walk(input: &Value, typed: &Value, path: &str, sources: &Sources, errors: &mut Vec<ValueError>) {
        match (input, typed) {
            (Value::Mapping(a), Value::Mapping(b)) => {
                for (key, value) in a {
                    let name = key.as_str().map(str::to_owned).unwrap_or_else(|| format!("{key:?}"));
                    let child = source::join_key(path, &name);
                    match b.get(key) {
                        Some(other) => walk(value, other, &child, sources, errors),
                        None if value.is_null() => {}
                        None => {
                            let candidates: Vec<&str> = b.keys().filter_map(Value::as_str).collect();
                            errors.push(ValueError {
                                origin: sources.key_origin(&child).cloned(),
                                path: child.clone(),
                                message: unknown_key_message(&name, &candidates),
                            });
                        }
                    }
                }
            }
            (Value::Sequence(a), Value::Sequence(b)) => {
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    walk(x, y, &source::join_index(path, i), sources, errors);
                }
            }
            _ => {}
        }
    }
    walk(input, &typed, "", sources, errors);
}

/// Parse a display path (`a.b[0].c`) back into segments.
fn segments(path: &str) -> Vec<merge::Segment> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (name, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if !name.is_empty() {
            out.push(merge::Segment::Key(name.to_owned()));
        }
        while let Some(open) = rest.strip_prefix('[') {
            let Some((index, after)) = open.split_once(']') else { break };
            if let Ok(i) = index.parse() {
                out.push(merge::Segment::Index(i));
            }
            rest = after;
        }
    }
    out
}

fn lookup(tree: &Value, path: &str) -> Option<Value> {
    let mut node = tree;
    for seg in segments(path) {
        node = match seg {
            merge::Segment::Key(k) => node.get(k.as_str())?,
            merge::Segment::Index(i) => node.get(i)?,
        };
    }
    Some(node.clone())
}

/// Replace the value at `path` (None: remove the key or item).
fn replace(tree: &mut Value, path: &str, value: Option<Value>) {
    replace_segments(tree, &segments(path), value);
}

fn replace_segments(tree: &mut Value, segs: &[merge::Segment], value: Option<Value>) {
    let Some((last, parents)) = segs.split_last() else { return };
    let mut node = tree;
    for seg in parents {
        let next = match seg {
            merge::Segment::Key(k) => node.get_mut(k.as_str()),
            merge::Segment::Index(i) => node.get_mut(*i),
        };
        match next {
            Some(n) => node = n,
            None => return,
        }
    }
    match (last, node, value) {
        (merge::Segment::Key(k), Value::Mapping(m), Some(v)) => {
            m.insert(Value::String(k.clone()), v);
        }
        (merge::Segment::Key(k), Value::Mapping(m), None) => {
            m.remove(k.as_str());
        }
        (merge::Segment::Index(i), Value::Sequence(s), v) if *i < s.len() => match v {
            Some(v) => s[*i] = v,
            None => {
                s.remove(*i);
            }
        },
        _ => {}
    }
}

/// JSON Schema of the values (`audctl render --schema`).
pub fn schema() -> String {
    let schema = schemars::schema_for!(Values);
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str) -> (PathBuf, String) {
        let path = PathBuf::from(format!("{}/values/{name}", env!("CARGO_MANIFEST_DIR")));
        let text = std::fs::read_to_string(&path).unwrap();
        (PathBuf::from(format!("values/{name}")), text)
    }

    #[test]
    fn shipped_values_load() {
        let prod = load_texts(&[file("values-prod.yaml")], &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(prod.autoscaling.max_replicas, 20);
        load_texts(&[file("values-prod.yaml"), file("values-staging.yaml")], &[]).unwrap_or_else(|e| panic!("{e}"));
        load_texts(&[file("values-local.yaml")], &[]).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn all_errors_at_once_with_positions() {
        let text = "replicaCout: 3\nresources:\n  limits:\n    memory: 2Gb\nautoscaling:\n  enabled: true\n  minReplicas: 9\n  maxReplicas: 3\nimage:\n  tag: [1]\n";
        let errs =
            load_texts(&[(PathBuf::from("bad.yaml"), text.into())], &["kafka.replicaCount=x".into()]).unwrap_err();
        let all = errs.to_string();
        eprintln!("{all}");
        assert!(
            all.contains("bad.yaml:1:1: replicaCout: unknown key `replicaCout`; did you mean `replicaCount`?"),
            "{all}"
        );
        assert!(all.contains("bad.yaml:4:13: resources.limits.memory: \"2Gb\" is not a Kubernetes quantity"), "{all}");
        assert!(all.contains("bad.yaml:7:16: autoscaling.minReplicas: 9 is above"), "{all}");
        assert!(all.contains("bad.yaml:10:8: image.tag"), "{all}");
        assert!(all.contains("--set kafka.replicaCount=x: kafka.replicaCount"), "{all}");
    }

    /// Image references a registry or the kubelet would refuse fail at render, naming the key.
    #[test]
    fn image_references_are_checked() {
        let ok = ["image.tag=1.4.0-rc_1", "image.repository=registry.example.com:5000/audit-trail/audit-server"];
        load_texts(&[file("values-prod.yaml")], &ok.map(str::to_owned)).unwrap_or_else(|e| panic!("{e}"));
        let digest = format!("image.digest=sha256:{}", "a".repeat(64));
        load_texts(&[file("values-prod.yaml")], &[digest]).unwrap_or_else(|e| panic!("{e}"));
        for (arg, expected) in [
            ("image.pullPolicy=Sometimes", "image.pullPolicy: \"Sometimes\": expected Always, IfNotPresent or Never"),
            ("image.tag=a b", "image.tag: \"a b\": expected a tag"),
            ("image.tag=$(id)", "image.tag: \"$(id)\": expected a tag"),
            ("image.tag=1.0:evil", "image.tag: \"1.0:evil\""),
            ("image.tag=.hidden", "image.tag: \".hidden\""),
            ("image.digest=notadigest", "image.digest: \"notadigest\": expected sha256:"),
            ("image.repository=a b", "image.repository: \"a b\": expected an image name"),
            ("image.repository=registry.example.com/Team/x", "image.repository"),
            ("backups.image.pullPolicy=always", "backups.image.pullPolicy"),
        ] {
            let all = load_texts(&[file("values-prod.yaml")], &[arg.to_owned()]).unwrap_err().to_string();
            assert!(all.contains(expected), "{arg}: {all}");
        }
    }

    #[test]
    fn one_set_holds_several_assignments_and_lists_as_in_helm() {
        let sets = [
            r"replicaCount=4,image.tag=1.10,ingress.tls[0].secretName=t\,1".to_owned(),
            "ingress.hosts[0].host=a.example.com,ingress.tls[0].hosts={a.example.com}".to_owned(),
        ];
        let values = load_texts(&[file("values-prod.yaml")], &sets).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(values.replica_count, 4);
        assert_eq!(values.image.tag, "1.10", "a number where a string is expected keeps its text");
        assert_eq!(values.ingress.tls[0].secret_name.as_deref(), Some("t,1"), "an escaped comma is the value's");
        assert_eq!(values.ingress.hosts[0].host, "a.example.com");
        assert_eq!(values.ingress.hosts[0].paths.len(), 1, "setting one field of a list item keeps the others");
        assert_eq!(values.ingress.tls[0].hosts, ["a.example.com"]);

        for (arg, expected) in [
            ("replicaCount=4,", "--set replicaCount=4,: the argument ends with `,`"),
            ("replicaCount=4,image", "--set replicaCount=4,image: key \"image\" has no value"),
            ("ingress.tls[0].hosts={a,b", "has no closing `}`"),
            ("replicaCount=4,imag.tag=1", "--set replicaCount=4,imag.tag=1: imag"),
            // A list item is placed at the argument, and a number in a list of strings keeps its text.
            (
                "ingress.tls[0].hosts={2.50,audit-api.example.com}",
                "--set ingress.tls[0].hosts={2.50,audit-api.example.com}: ingress.tls[0].hosts[0]: \"2.50\" is not one of",
            ),
        ] {
            let all = load_texts(&[file("values-prod.yaml")], &[arg.to_owned()]).unwrap_err().to_string();
            assert!(all.contains(expected), "{arg}: {all}");
        }
    }
}
