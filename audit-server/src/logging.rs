//! Log output: JSON lines by default (`AUDIT_LOG_FORMAT=text` for people), filtered by
//! `AUDIT_LOG`, with the fixed fields of `AUDIT_LOG_FIELDS` on every line.
//!
//! The fixed fields are the guide's `customFields {"app":"audit-trail","env":"production"}`: a
//! log pipeline shared by several services and environments selects on them, and a line without
//! them is lost to its dashboards.

use std::fmt;
use std::io::IsTerminal;

use anyhow::{Context, bail};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Install the global subscriber from the environment (`env` looks a variable up).
pub fn init(env: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    let settings = settings(&env)?;
    if settings.text {
        // Colours only on a terminal: `text` piped to a file or a collector must stay plain.
        tracing_subscriber::fmt().with_env_filter(settings.filter).with_ansi(std::io::stdout().is_terminal()).init();
        return Ok(());
    }
    let json = tracing_subscriber::fmt::format().json().flatten_event(true).with_current_span(false);
    tracing_subscriber::fmt()
        .fmt_fields(JsonFields::new())
        .event_format(WithFields { inner: json, prefix: settings.fields })
        .with_env_filter(settings.filter)
        .init();
    Ok(())
}

/// What `AUDIT_LOG`, `AUDIT_LOG_FORMAT` and `AUDIT_LOG_FIELDS` ask for.
struct Settings {
    filter: EnvFilter,
    text: bool,
    fields: String,
}

fn ends_in_level(directive: &str) -> bool {
    let level = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
    ["trace", "debug", "info", "warn", "error", "off"].contains(&level.to_ascii_lowercase().as_str())
}

/// A mistyped variable is refused at startup, naming it: falling back (to info, to JSON) would
/// leave the operator reading logs that are not the ones asked for, with nothing saying why.
fn settings(env: &impl Fn(&str) -> Option<String>) -> anyhow::Result<Settings> {
    let filter = match env("AUDIT_LOG").filter(|f| !f.trim().is_empty()) {
        None => EnvFilter::new("info"),
        // Spaces around the commas are how people write lists; tracing refuses them.
        Some(f) => {
            let directives: Vec<&str> = f.split(',').map(str::trim).filter(|d| !d.is_empty()).collect();
            // tracing reads a bare word that is not a level as a target enabled at every level:
            // `infoo` would log nothing of this server and say nothing. As `audctl render`'s check
            // of server.logLevel: each directive ends in a level (span filters `x[...]` aside).
            if let Some(d) = directives.iter().find(|d| !d.contains('[') && !ends_in_level(d)) {
                bail!(
                    "AUDIT_LOG={f:?}: {d:?} is neither a level nor target=level (levels: trace, debug, info, warn, \
                     error, off; e.g. info or warn,audit_server=debug)"
                );
            }
            EnvFilter::try_new(directives.join(",")).with_context(|| {
                format!("AUDIT_LOG={f:?}: expected a log filter such as info, warn or audit_server=debug,info")
            })?
        }
    };
    let text = match env("AUDIT_LOG_FORMAT").as_deref().map(str::trim) {
        None | Some("" | "json") => false,
        Some("text") => true,
        Some(other) => bail!("AUDIT_LOG_FORMAT={other:?}: expected json (the default) or text"),
    };
    Ok(Settings { filter, text, fields: fixed_fields(env("AUDIT_LOG_FIELDS").as_deref())? })
}

/// `AUDIT_LOG_FIELDS` (a JSON object of strings) as the text that goes after each line's `{`:
/// `"app":"audit-trail","env":"production",`; empty when unset.
pub fn fixed_fields(value: Option<&str>) -> anyhow::Result<String> {
    let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
        return Ok(String::new());
    };
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(value).context(
        r#"AUDIT_LOG_FIELDS: expected a JSON object of strings, e.g. {"app":"audit-trail","env":"production"}"#,
    )?;
    let mut prefix = String::new();
    for (key, v) in &map {
        let Some(text) = v.as_str() else {
            bail!("AUDIT_LOG_FIELDS: {key:?} is {v}, expected a string");
        };
        // Keys the formatter writes itself would appear twice in one object.
        if ["timestamp", "level", "target", "message", "fields", "span", "spans"].contains(&key.as_str()) {
            bail!("AUDIT_LOG_FIELDS: {key:?} is a field every log line has already; choose another name");
        }
        prefix.push_str(&serde_json::to_string(key)?);
        prefix.push(':');
        prefix.push_str(&serde_json::to_string(text)?);
        prefix.push(',');
    }
    Ok(prefix)
}

/// The JSON format, with the fixed fields spliced in first. The inner formatter writes one
/// object per event; the splice goes right after its opening brace.
struct WithFields {
    inner: Format<Json>,
    prefix: String,
}

impl<S, N> FormatEvent<S, N> for WithFields
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            return self.inner.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(writer, "{{{}{rest}", self.prefix),
            None => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixed_fields;

    #[test]
    fn mistyped_settings_are_refused() {
        let with = |name: &'static str, value: &'static str| move |n: &str| (n == name).then(|| value.to_owned());
        let err = |name, value| super::settings(&with(name, value)).err().expect("accepted").to_string();
        assert_eq!(err("AUDIT_LOG_FORMAT", "xml"), r#"AUDIT_LOG_FORMAT="xml": expected json (the default) or text"#);
        assert!(
            err("AUDIT_LOG", "audit_server=loud")
                .starts_with(r#"AUDIT_LOG="audit_server=loud": "audit_server=loud" is neither"#)
        );
        // What tracing itself refuses (a span filter left open).
        assert!(err("AUDIT_LOG", "h2[conn=off").starts_with(r#"AUDIT_LOG="h2[conn=off": expected a log filter"#));
        assert_eq!(
            err("AUDIT_LOG", "warn, infoo"),
            "AUDIT_LOG=\"warn, infoo\": \"infoo\" is neither a level nor target=level (levels: trace, debug, info, \
             warn, error, off; e.g. info or warn,audit_server=debug)"
        );
        assert!(super::settings(&with("AUDIT_LOG_FORMAT", "text")).unwrap().text);
        assert!(!super::settings(&with("AUDIT_LOG_FORMAT", "json")).unwrap().text);
        assert!(!super::settings(&|_: &str| None).unwrap().text);
        assert!(super::settings(&with("AUDIT_LOG", "warn,audit_server=debug")).is_ok());
        assert!(super::settings(&with("AUDIT_LOG", "WARN, audit_server=debug ,h2[conn]=off")).is_ok());
    }

    #[test]
    fn fixed_fields_are_json_members() {
        assert_eq!(fixed_fields(None).unwrap(), "");
        assert_eq!(fixed_fields(Some(" ")).unwrap(), "");
        assert_eq!(
            fixed_fields(Some(r#"{"app":"audit-trail","env":"prod \"1\""}"#)).unwrap(),
            r#""app":"audit-trail","env":"prod \"1\"","#
        );
        let err = fixed_fields(Some(r#"{"env":3}"#)).unwrap_err().to_string();
        assert!(err.contains("\"env\" is 3, expected a string"), "{err}");
        let err = fixed_fields(Some("app=audit-trail")).unwrap_err().to_string();
        assert!(err.contains("expected a JSON object of strings"), "{err}");
        let err = fixed_fields(Some(r#"{"level":"x"}"#)).unwrap_err().to_string();
        assert!(err.contains("already"), "{err}");
    }
}
