//! Helm-like merging: maps merge key by key, anything else replaces, `null` removes the key.
//! `--set a.b[0].c=value` addresses one value; its text is typed like Helm's (bool, int, null, string).

use serde_yaml::{Mapping, Value};

use super::source::{join_index, join_key};

/// Merge `overlay` into `base`.
pub fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Mapping(base), Value::Mapping(overlay)) => {
            for (key, value) in overlay {
                if value.is_null() {
                    base.remove(&key);
                    continue;
                }
                match base.get_mut(&key) {
                    Some(existing) if existing.is_mapping() && value.is_mapping() => merge(existing, value),
                    _ => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, overlay) => *base = overlay,
    }
}

/// One segment of a `--set` path.
#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// Largest list index `--set` accepts (no values list comes near it).
pub const MAX_LIST_INDEX: usize = 9999;

/// Parse `a.b[0].c=value` into the path segments, the display path and the typed value.
pub fn parse_set(arg: &str) -> Result<(Vec<Segment>, String, Value), String> {
    let (path, raw) =
        arg.split_once('=').ok_or_else(|| format!("--set {arg:?}: expected PATH=VALUE, e.g. a.b[0].c=1"))?;
    let mut segments = Vec::new();
    let mut display = String::new();
    for part in path.split('.') {
        let (name, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if name.is_empty() && (segments.is_empty() || rest.is_empty()) {
            return Err(format!("--set {arg:?}: empty key in path {path:?}"));
        }
        if !name.is_empty() {
            display = join_key(&display, name);
            segments.push(Segment::Key(name.to_owned()));
        }
        while let Some(open) = rest.strip_prefix('[') {
            let (index, after) = open.split_once(']').ok_or_else(|| format!("--set {arg:?}: missing `]`"))?;
            let index: usize =
                index.parse().map_err(|_| format!("--set {arg:?}: list index {index:?} is not a number"))?;
            // A list is filled with nulls up to the index: a huge one would overflow or exhaust memory.
            if index > MAX_LIST_INDEX {
                return Err(format!("--set {arg:?}: list index {index} is too large (at most {MAX_LIST_INDEX})"));
            }
            display = join_index(&display, index);
            segments.push(Segment::Index(index));
            rest = after;
        }
        if !rest.is_empty() {
            return Err(format!("--set {arg:?}: unexpected {rest:?} after a list index"));
        }
    }
    Ok((segments, display, typed_scalar(raw)))
}

/// Helm's typing of `--set` values: true/false, null, integers; everything else is a string.
fn typed_scalar(raw: &str) -> Value {
    match raw {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        "null" => Value::Null,
        _ => match raw.parse::<i64>() {
            Ok(n) if !(raw.len() > 1 && raw.starts_with(['0', '+'])) => Value::Number(n.into()),
            _ => Value::String(raw.to_owned()),
        },
    }
}

/// Build the overlay a `--set` stands for, to merge like a file.
pub fn set_overlay(segments: &[Segment], value: Value, base: &Value) -> Value {
    let Some((first, rest)) = segments.split_first() else { return value };
    match first {
        Segment::Key(key) => {
            let below = base.get(key.as_str()).cloned().unwrap_or(Value::Null);
            let mut map = Mapping::new();
            // A null leaf must still reach merge() to delete the key.
            map.insert(Value::String(key.clone()), set_overlay(rest, value, &below));
            Value::Mapping(map)
        }
        Segment::Index(index) => {
            // Lists replace as a whole, so start from the current list and change one item.
            let mut list = base.as_sequence().cloned().unwrap_or_default();
            if list.len() <= *index {
                list.resize(index + 1, Value::Null);
            }
            let below = list[*index].clone();
            let item = set_overlay(rest, value, &below);
            match (&mut list[*index], item) {
                (current @ Value::Mapping(_), item @ Value::Mapping(_)) => merge(current, item),
                (current, item) => *current = item,
            }
            Value::Sequence(list)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> Value {
        serde_yaml::from_str(s).unwrap()
    }

    #[test]
    fn maps_merge_lists_replace_null_deletes() {
        let mut base = yaml("a: {b: 1, c: 2}\nl: [1, 2]\nd: 4");
        merge(&mut base, yaml("a: {c: 3}\nl: [9]\nd: null"));
        assert_eq!(base, yaml("a: {b: 1, c: 3}\nl: [9]"));
    }

    #[test]
    fn set_paths_and_types() {
        let (segments, display, value) = parse_set("env[1].value=007").unwrap();
        assert_eq!(display, "env[1].value");
        assert_eq!(value, Value::String("007".into()));
        let mut base = yaml("env: [{name: A, value: x}]\nn: 1");
        let overlay = set_overlay(&segments, value, &base);
        merge(&mut base, overlay);
        assert_eq!(base, yaml("env: [{name: A, value: x}, {value: '007'}]\nn: 1"));
        assert_eq!(parse_set("a.b=3").unwrap().2, Value::Number(3.into()));
        assert_eq!(parse_set("a=true").unwrap().2, Value::Bool(true));
        assert!(parse_set("a.b").is_err());
        assert!(parse_set("a[x]=1").is_err());
        let huge = parse_set("env[18446744073709551615]=x").unwrap_err();
        assert!(huge.contains("list index 18446744073709551615 is too large"), "{huge}");
        assert!(parse_set("env[10000]=x").is_err() && parse_set("env[9999]=x").is_ok());
    }
}
