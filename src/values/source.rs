//! Where each value came from: a file position per key path, so every error can say file:line:column.
//!
//! serde_yaml's `Value` forgets positions, so each values file is walked once more with an event parser
//! (saphyr-parser) that records the position of every key and value under its path (`a.b[0].c`).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use saphyr_parser::{Event, Parser, Span};

/// A place in the input: a line and column of a values file, or one `--set` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File { path: PathBuf, line: usize, column: usize },
    Set { arg: String },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line, column } => write!(f, "{}:{line}:{column}", path.display()),
            Origin::Set { arg } => write!(f, "--set {}", redacted(arg)),
        }
    }
}

/// A `--set` argument as errors show it, the value of any secret-like key replaced by `***`:
/// errors land in CI logs, and a values file's secret is shown by position only, never by value.
/// Cut into assignments as `--set` parses them (escaped commas and `{a,b}` lists stay in their
/// value); an argument that does not parse is shown without its values when it names a secret.
fn redacted(arg: &str) -> String {
    let secret = |key: &str| {
        let key = key.to_ascii_lowercase();
        ["password", "secret", "token", "apikey", "api_key", "credential", "privatekey"].iter().any(|w| key.contains(w))
    };
    let shown = |part: &str| match part.split_once('=') {
        Some((key, _)) if secret(key) => format!("{key}=***"),
        _ => part.to_owned(),
    };
    match super::merge::split_assignments(arg) {
        Ok(parts) => parts.into_iter().map(shown).collect::<Vec<_>>().join(","),
        Err(_) if secret(arg) => "<an argument naming a secret, not shown>".to_owned(),
        Err(_) => arg.to_owned(),
    }
}

/// Positions of one layer (a file or a `--set`): key path -> (position of the key, position of the value).
#[derive(Debug, Default)]
pub struct Positions {
    entries: HashMap<String, (Origin, Origin)>,
    /// Where the top-level node of a file starts (after any leading comments), for errors about the
    /// document as a whole.
    pub root: Option<Origin>,
}

impl Positions {
    /// Walk `text` (the content of `path`) and record every key and sequence item.
    pub fn of_file(path: &Path, text: &str) -> Result<Self, (Origin, String)> {
        let mut walker = Walker { parser: Parser::new_from_str(text), file: path, out: Positions::default() };
        let mut documents = 0;
        loop {
            match walker.next()? {
                None | Some((Event::StreamEnd, _)) => break,
                // serde_yaml refuses a second document without saying where it starts.
                Some((Event::DocumentStart(..), span)) => {
                    documents += 1;
                    if documents > 1 {
                        let message = "a second YAML document (`---`): expected one document per values file; \
                                       use one -f per file to layer values";
                        return Err((walker.origin(span), message.into()));
                    }
                }
                Some((event @ (Event::MappingStart(..) | Event::SequenceStart(..) | Event::Scalar(..)), span)) => {
                    if walker.out.root.is_none() {
                        walker.out.root = Some(walker.origin(span));
                    }
                    walker.node(event, "")?;
                }
                Some(_) => {}
            }
        }
        Ok(walker.out)
    }

    /// Every path of a `--set` argument points at the argument itself.
    pub fn of_set(arg: &str, paths: impl IntoIterator<Item = String>) -> Self {
        let origin = Origin::Set { arg: arg.to_owned() };
        let entries = paths.into_iter().map(|p| (p, (origin.clone(), origin.clone()))).collect();
        Positions { entries, root: None }
    }

    pub fn key(&self, path: &str) -> Option<&Origin> {
        self.entries.get(path).map(|(k, _)| k)
    }

    pub fn value(&self, path: &str) -> Option<&Origin> {
        self.entries.get(path).map(|(_, v)| v)
    }
}

/// All layers in merge order; the last layer that mentions a path is where its value came from.
#[derive(Debug, Default)]
pub struct Sources {
    pub layers: Vec<Positions>,
}

impl Sources {
    /// Position of the value at `path`, else of the nearest ancestor any layer mentions.
    pub fn value_origin(&self, path: &str) -> Option<&Origin> {
        self.find(path, Positions::value)
    }

    /// Position of the key at `path` (for unknown keys), else of the nearest ancestor.
    pub fn key_origin(&self, path: &str) -> Option<&Origin> {
        self.find(path, Positions::key)
    }

    fn find<'a>(&'a self, path: &str, get: impl Fn(&'a Positions, &str) -> Option<&'a Origin>) -> Option<&'a Origin> {
        let mut candidate = path;
        loop {
            if let Some(found) = self.layers.iter().rev().find_map(|layer| get(layer, candidate)) {
                return Some(found);
            }
            candidate = parent(candidate)?;
        }
    }
}

/// `a.b[0].c` -> `a.b[0]` -> `a.b` -> `a` -> None.
pub fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(&path[..cut])
}

pub fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_owned() } else { format!("{parent}.{key}") }
}

pub fn join_index(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

struct Walker<'a> {
    parser: Parser<'a, saphyr_parser::StrInput<'a>>,
    file: &'a Path,
    out: Positions,
}

impl<'a> Walker<'a> {
    fn origin(&self, span: Span) -> Origin {
        Origin::File { path: self.file.to_owned(), line: span.start.line(), column: span.start.col() + 1 }
    }

    fn next(&mut self) -> Result<Option<(Event<'a>, Span)>, (Origin, String)> {
        match self.parser.next_event() {
            None => Ok(None),
            Some(Ok(ev)) => Ok(Some(ev)),
            Some(Err(e)) => {
                let m = e.marker();
                let at = Origin::File { path: self.file.to_owned(), line: m.line(), column: m.col() + 1 };
                Err((at, format!("not valid YAML: {}", e.info())))
            }
        }
    }

    /// Consume the rest of a node whose first event was `event`, recording what is inside.
    fn node(&mut self, event: Event<'a>, path: &str) -> Result<(), (Origin, String)> {
        match event {
            Event::MappingStart(..) => self.mapping(path),
            Event::SequenceStart(..) => self.sequence(path),
            _ => Ok(()),
        }
    }

    fn mapping(&mut self, path: &str) -> Result<(), (Origin, String)> {
        loop {
            let Some((key_event, key_span)) = self.next()? else { return Ok(()) };
            let key = match key_event {
                Event::MappingEnd => return Ok(()),
                Event::Scalar(text, ..) => Some(text.into_owned()),
                other => {
                    // A complex key: skip it, its value is not addressable by a path.
                    self.node(other, path)?;
                    None
                }
            };
            let Some((value_event, value_span)) = self.next()? else { return Ok(()) };
            match key {
                Some(key) => {
                    let child = join_key(path, &key);
                    let entry = (self.origin(key_span), self.origin(value_span));
                    self.out.entries.insert(child.clone(), entry);
                    self.node(value_event, &child)?;
                }
                None => self.node(value_event, path)?,
            }
        }
    }

    fn sequence(&mut self, path: &str) -> Result<(), (Origin, String)> {
        let mut index = 0;
        loop {
            let Some((event, span)) = self.next()? else { return Ok(()) };
            if matches!(event, Event::SequenceEnd) {
                return Ok(());
            }
            let child = join_index(path, index);
            let at = self.origin(span);
            self.out.entries.insert(child.clone(), (at.clone(), at));
            self.node(event, &child)?;
            index += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_of_a_set_are_never_shown() {
        let shown = super::Origin::Set {
            arg: r"image.tag=1.2,postgresql.auth.postgresPassword=Hunter2\,x,audit.apiKeys={k1,k2},replicaCount=3"
                .into(),
        }
        .to_string();
        assert_eq!(shown, "--set image.tag=1.2,postgresql.auth.postgresPassword=***,audit.apiKeys=***,replicaCount=3");
        let unclosed = super::Origin::Set { arg: "a.password={x,y".into() }.to_string();
        assert!(!unclosed.contains('x'), "{unclosed}");
    }

    use super::*;

    #[test]
    fn records_keys_and_items_with_one_based_positions() {
        let text = "a:\n  b:\n    - x\n    - c: 1\nd: 2\n";
        let p = Positions::of_file(Path::new("v.yaml"), text).unwrap();
        assert_eq!(p.key("a.b").unwrap().to_string(), "v.yaml:2:3");
        assert_eq!(p.key("a.b[1].c").unwrap().to_string(), "v.yaml:4:7");
        assert_eq!(p.value("a.b[1].c").unwrap().to_string(), "v.yaml:4:10");
        assert_eq!(p.key("d").unwrap().to_string(), "v.yaml:5:1");
    }

    #[test]
    fn parent_walks_up() {
        assert_eq!(parent("a.b[0].c"), Some("a.b[0]"));
        assert_eq!(parent("a.b[0]"), Some("a.b"));
        assert_eq!(parent("a"), Some(""));
        assert_eq!(parent(""), None);
    }
}
