//! Helm-like merging: maps merge key by key, anything else replaces, `null` removes the key.
//! `--set a.b[0].c=value` addresses one value; its text is typed like Helm's (bool, int, null,
//! string), and decimal numbers too, since the typed values have fractional fields (thresholds).

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

/// One parsed `--set` argument.
#[derive(Debug, Clone, PartialEq)]
pub struct SetArg {
    pub segments: Vec<Segment>,
    /// The path as errors show it (`a.b[0].c`), as serde_path_to_error writes it.
    pub display: String,
    /// The value as typed by `typed_scalar` (a list of them for `{a,b}`).
    pub value: Value,
    /// The value's text as given (escapes resolved), so a number or boolean can go back to being a
    /// string where the values expect one (`image.tag=1.2`, `image.tag=0.10`).
    pub raw: String,
    /// For a `{a,b}` list, each item's text as given, in order (empty otherwise).
    pub item_raws: Vec<String>,
}

/// Cut one `--set` argument into its assignments, as Helm does: `a=1,b.c=x` is two. A comma
/// escaped by a backslash (`a=x\,y`) or inside a `{..}` list value (`hosts={a,b}`) belongs to
/// the value. Helm users write several assignments in one `--set`; taking `1,b.c=x` as the text
/// of `a` would be a silent surprise.
pub fn split_assignments(arg: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut start, mut in_key, mut in_list, mut escaped) = (0, true, false, false);
    let mut chars = arg.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '=' if in_key => {
                in_key = false;
                in_list = matches!(chars.peek(), Some((_, '{')));
            }
            '}' if in_list => in_list = false,
            ',' if in_key => {
                return Err(format!("key {:?} has no value: expected PATH=VALUE before each `,`", &arg[start..i]));
            }
            ',' if !in_list => {
                parts.push(&arg[start..i]);
                (start, in_key) = (i + 1, true);
            }
            _ => {}
        }
    }
    if in_list {
        return Err("a list value `{..` has no closing `}`".to_owned());
    }
    if start == arg.len() && !parts.is_empty() {
        return Err("the argument ends with `,`: expected another PATH=VALUE after it".to_owned());
    }
    if in_key && !parts.is_empty() {
        return Err(format!("key {:?} has no value: expected PATH=VALUE after each `,`", &arg[start..]));
    }
    parts.push(&arg[start..]);
    Ok(parts)
}

/// Parse one assignment `a.b[0].c=value` (see `split_assignments`) into the path segments, the
/// display path and the typed value. Errors do not repeat the argument: the caller labels them
/// with it. As in Helm, a backslash makes the next character literal, in a key
/// (`nginx\.ingress\.kubernetes\.io/limit-rpm` is one key: annotation and label keys have dots)
/// and in a value (`a=x\,y` is `x,y`).
pub fn parse_set(arg: &str) -> Result<SetArg, String> {
    let (path, raw) = find_unescaped(arg, '=')
        .map(|i| (&arg[..i], &arg[i + 1..]))
        .ok_or_else(|| "expected PATH=VALUE, e.g. a.b[0].c=1".to_owned())?;
    let mut segments = Vec::new();
    let mut display = String::new();
    for part in split_unescaped(path, '.') {
        let (name, mut rest) = part.split_at(find_unescaped(part, '[').unwrap_or(part.len()));
        let name = unescape(name).ok_or_else(|| "a `\\` ends the path, escaping nothing".to_owned())?;
        if name.is_empty() && (segments.is_empty() || rest.is_empty()) {
            return Err(format!("empty key in path {path:?}"));
        }
        if !name.is_empty() {
            display = join_key(&display, &name);
            segments.push(Segment::Key(name));
        }
        while let Some(open) = rest.strip_prefix('[') {
            let (index, after) = open.split_once(']').ok_or_else(|| "missing `]`".to_owned())?;
            let index: usize = index.parse().map_err(|_| format!("list index {index:?} is not a number"))?;
            // Refused here already, with a plain message: no values list comes near it.
            if index > MAX_LIST_INDEX {
                return Err(format!("list index {index} is too large (at most {MAX_LIST_INDEX})"));
            }
            display = join_index(&display, index);
            segments.push(Segment::Index(index));
            rest = after;
        }
        if !rest.is_empty() {
            return Err(format!("unexpected {rest:?} after a list index"));
        }
    }
    let unescape_value = |s: &str| unescape(s).ok_or_else(|| "a `\\` ends the value, escaping nothing".to_owned());
    // `{a,b}` is a list of values, as in Helm (`ingress.tls[0].hosts={a.example.com,b.example.com}`).
    if let Some(items) = raw.strip_prefix('{').and_then(|r| r.strip_suffix('}')).filter(|_| !raw.ends_with("\\}")) {
        let item_raws = match items {
            "" => vec![],
            items => split_unescaped(items, ',').into_iter().map(unescape_value).collect::<Result<Vec<_>, _>>()?,
        };
        let value = Value::Sequence(item_raws.iter().map(|r| typed_scalar(r)).collect());
        return Ok(SetArg { segments, display, value, raw: raw.to_owned(), item_raws });
    }
    let raw = unescape_value(raw)?;
    Ok(SetArg { segments, display, value: typed_scalar(&raw), raw, item_raws: vec![] })
}

/// Byte offset of the first `ch` not escaped by a backslash.
fn find_unescaped(s: &str, ch: char) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            c if c == ch => return Some(i),
            _ => {}
        }
    }
    None
}

/// `s` cut at every `sep` not escaped by a backslash (escapes kept, for `unescape`).
fn split_unescaped(mut s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    while let Some(i) = find_unescaped(s, sep) {
        parts.push(&s[..i]);
        s = &s[i + sep.len_utf8()..];
    }
    parts.push(s);
    parts
}

/// Drop each escaping backslash; None when the last character is a lone backslash.
fn unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' { chars.next()? } else { c });
    }
    Some(out)
}

/// Helm's typing of `--set` values: true/false, null, integers; and decimals (`0.05`, `-1.5e3`),
/// which Helm leaves as strings for its untyped templates but the typed values need as numbers.
/// Everything else is a string; where a string is expected, `load` turns a number or boolean back
/// into its text as given.
fn typed_scalar(raw: &str) -> Value {
    match raw {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        "null" => Value::Null,
        _ => match raw.parse::<i64>() {
            Ok(n) if !(raw.len() > 1 && raw.starts_with(['0', '+'])) => Value::Number(n.into()),
            _ if is_decimal(raw) => match raw.parse::<f64>() {
                Ok(x) if x.is_finite() => Value::Number(x.into()),
                _ => Value::String(raw.to_owned()),
            },
            _ => Value::String(raw.to_owned()),
        },
    }
}

/// `-?DIGITS.DIGITS([eE][+-]?DIGITS)?`, without a leading zero before another digit (like integers,
/// `01.5` stays a string). No `inf`/`nan`/`.5`/`1.`: those stay strings, as in Helm.
fn is_decimal(raw: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let unsigned = raw.strip_prefix('-').unwrap_or(raw);
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e.strip_prefix(['+', '-']).unwrap_or(e))),
        None => (unsigned, None),
    };
    let Some((int, frac)) = mantissa.split_once('.') else { return false };
    digits(int) && !(int.len() > 1 && int.starts_with('0')) && digits(frac) && exponent.is_none_or(digits)
}

/// Build the overlay a `--set` stands for, to merge like a file. A list index may name an item or
/// the one just past the end (append); further out is an error, where Helm pads the list with
/// nulls: those would render as empty, nameless items (`env[3].value=x` on an empty `env`).
pub fn set_overlay(segments: &[Segment], value: Value, base: &Value) -> Result<Value, String> {
    set_overlay_at(segments, value, base, "")
}

fn set_overlay_at(segments: &[Segment], value: Value, base: &Value, path: &str) -> Result<Value, String> {
    let Some((first, rest)) = segments.split_first() else { return Ok(value) };
    match first {
        Segment::Key(key) => {
            let below = base.get(key.as_str()).cloned().unwrap_or(Value::Null);
            let mut map = Mapping::new();
            // A null leaf must still reach merge() to delete the key.
            map.insert(Value::String(key.clone()), set_overlay_at(rest, value, &below, &join_key(path, key))?);
            Ok(Value::Mapping(map))
        }
        Segment::Index(index) => {
            // Lists replace as a whole, so start from the current list and change one item.
            let mut list = base.as_sequence().cloned().unwrap_or_default();
            let len = list.len();
            if *index > len {
                let list_path = if path.is_empty() { "the top level" } else { path };
                return Err(format!(
                    "list index {index} is beyond the end of {list_path} ({len} item{}): expected an index from 0 \
                     to {len} ({len} appends an item)",
                    if len == 1 { "" } else { "s" }
                ));
            }
            if *index == len {
                list.push(Value::Null);
            }
            let below = list[*index].clone();
            let item = set_overlay_at(rest, value, &below, &join_index(path, *index))?;
            match (&mut list[*index], item) {
                (current @ Value::Mapping(_), item @ Value::Mapping(_)) => merge(current, item),
                (current, item) => *current = item,
            }
            Ok(Value::Sequence(list))
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
    fn decimals_are_numbers_other_look_alikes_strings() {
        for (raw, expected) in [("0.05", 0.05), ("-1.5", -1.5), ("0.10", 0.1), ("2.5e-3", 0.0025), ("1.0E2", 100.0)] {
            assert_eq!(typed_scalar(raw), Value::Number(expected.into()), "{raw}");
        }
        for raw in ["1.", ".5", "01.5", "1.2.3", "inf", "nan", "1e5", "1.5e", "v1.2", "+1.5", "1_0.5"] {
            assert_eq!(typed_scalar(raw), Value::String(raw.into()), "{raw}");
        }
        assert_eq!(parse_set("image.tag=0.10").unwrap().raw, "0.10");
    }

    #[test]
    fn set_paths_and_types() {
        let SetArg { segments, display, value, .. } = parse_set("env[1].value=007").unwrap();
        assert_eq!(display, "env[1].value");
        assert_eq!(value, Value::String("007".into()));
        let mut base = yaml("env: [{name: A, value: x}]\nn: 1");
        let overlay = set_overlay(&segments, value, &base).unwrap();
        merge(&mut base, overlay);
        assert_eq!(base, yaml("env: [{name: A, value: x}, {value: '007'}]\nn: 1"));
        assert_eq!(parse_set("a.b=3").unwrap().value, Value::Number(3.into()));
        assert_eq!(parse_set("a=true").unwrap().value, Value::Bool(true));
        assert_eq!(parse_set("a=null").unwrap().value, Value::Null);
        assert!(parse_set("a.b").is_err());
        assert!(parse_set("a[x]=1").is_err());
        let huge = parse_set("env[18446744073709551615]=x").unwrap_err();
        assert!(huge.contains("list index 18446744073709551615 is too large"), "{huge}");
        assert!(parse_set("env[10000]=x").is_err() && parse_set("env[9999]=x").is_ok());
        let beyond = parse_set("env[3].value=x").unwrap();
        let err = set_overlay(&beyond.segments, beyond.value, &base).unwrap_err();
        assert_eq!(
            err,
            "list index 3 is beyond the end of env (2 items): expected an index from 0 to 2 (2 appends an item)"
        );
    }

    #[test]
    fn backslash_escapes_dots_in_keys() {
        let set = parse_set(r"ingress.annotations.nginx\.ingress\.kubernetes\.io/limit-rpm=500").unwrap();
        let key = |k: &str| Segment::Key(k.to_owned());
        assert_eq!(set.segments, [key("ingress"), key("annotations"), key("nginx.ingress.kubernetes.io/limit-rpm")]);
        assert_eq!(set.raw, "500");
        // An escaped `=` and `[` belong to the key; a backslash before any character makes it literal.
        let set = parse_set(r"a.b\=c\[0\]\\=x=y").unwrap();
        assert_eq!(set.segments, [key("a"), key(r"b=c[0]\")]);
        assert_eq!(set.raw, "x=y");
        assert!(parse_set(r"a.b\").is_err(), "no `=`");
        assert!(parse_set(r"a.b\=1").is_err(), "the only `=` is escaped");
    }

    #[test]
    fn assignments_split_on_unescaped_commas_outside_lists() {
        assert_eq!(split_assignments("a=1,b.c=x").unwrap(), ["a=1", "b.c=x"]);
        assert_eq!(split_assignments(r"a=x\,y,b=2").unwrap(), [r"a=x\,y", "b=2"]);
        assert_eq!(split_assignments("h={a,b},c=1").unwrap(), ["h={a,b}", "c=1"]);
        assert_eq!(split_assignments(r"k\,ey=1").unwrap(), [r"k\,ey=1"], "an escaped comma in a key");
        assert_eq!(split_assignments("a=").unwrap(), ["a="]);
        assert!(split_assignments("a=1,b").unwrap_err().contains(r#"key "b" has no value"#));
        assert!(split_assignments("a,b=1").unwrap_err().contains(r#"key "a" has no value"#));
        assert!(split_assignments("a=1,").unwrap_err().contains("ends with `,`"));
        assert!(split_assignments("h={a,b").unwrap_err().contains("no closing `}`"));
    }

    #[test]
    fn lists_and_escapes_in_values() {
        let set = parse_set("h={a,1,true,x\\,y}").unwrap();
        let s = |v: &str| Value::String(v.to_owned());
        assert_eq!(set.value, Value::Sequence(vec![s("a"), Value::Number(1.into()), Value::Bool(true), s("x,y")]));
        assert_eq!(set.item_raws, ["a", "1", "true", "x,y"]);
        assert_eq!(parse_set("h={}").unwrap().value, Value::Sequence(vec![]));
        assert_eq!(parse_set(r"a=x\,y\\z").unwrap().value, s(r"x,y\z"));
        assert_eq!(parse_set(r"a=\{b}").unwrap().value, s("{b}"), "an escaped brace is no list");
        assert!(parse_set(r"a=x\").unwrap_err().contains("ends the value"));
    }
}
