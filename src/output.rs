//! Output plumbing shared by every verb: result formats, colour policy and progress bars.
//!
//! Results go to stdout (table for people, json/yaml/junit for machines); logs, progress and errors
//! go to stderr so a pipe always receives one clean document.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::cli::OutputFormat;
use crate::error::usage;

/// Why `-o junit` is refused: checked up front by the dispatch, and again when a report is written.
pub const JUNIT_UNSUPPORTED: &str = "-o junit is only available for check, smoke and load; use table, json or yaml";

static COLOR: AtomicBool = AtomicBool::new(false);

/// Colour only on a terminal, never when asked not to (`--no-color` or NO_COLOR).
pub fn init_color(no_color: bool) {
    COLOR.store(!no_color && std::io::stderr().is_terminal(), Ordering::Relaxed);
}

pub fn color_enabled() -> bool {
    COLOR.load(Ordering::Relaxed)
}

pub fn paint_error(s: &str) -> String {
    if color_enabled() { format!("\x1b[1;31m{s}\x1b[0m") } else { s.to_owned() }
}

/// A verb's result: serialisable for machines, with a table for people.
pub trait Report: Serialize {
    fn table(&self) -> Table;
    /// JUnit XML for verbs whose results are pass/fail test cases; `None` where it makes no sense.
    fn junit(&self) -> Option<String> {
        None
    }
}

/// A table with the house style: condensed borders, wrapping to the terminal width.
pub fn new_table<I, S>(header: I) -> Table
where
    I: IntoIterator<Item = S>,
    S: Into<comfy_table::Cell>,
{
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic).set_header(header);
    if !color_enabled() {
        table.force_no_tty();
    }
    // A terminal that reports no size (a pty nobody sized: `docker exec -t`, some CI runners say
    // 0 columns) would wrap every column to one character. Then COLUMNS if it is set, else no
    // wrapping at all.
    if table.width().is_some_and(|w| w < MIN_TABLE_WIDTH) {
        match std::env::var("COLUMNS").ok().and_then(|c| c.trim().parse::<u16>().ok()) {
            Some(columns) if columns >= MIN_TABLE_WIDTH => {
                table.set_width(columns);
            }
            _ => {
                table.set_content_arrangement(ContentArrangement::Disabled);
            }
        }
    }
    table
}

/// Below this many columns a terminal's reported width is taken for no width at all.
const MIN_TABLE_WIDTH: u16 = 20;

/// Write `report` to stdout in `format`.
pub fn emit<R: Report>(format: OutputFormat, report: &R) -> anyhow::Result<()> {
    // Formatted whole first: a format error (junit where there is none) stays an error, and the
    // only write to stdout is the one `print` knows how to judge.
    let mut buf = Vec::new();
    write_report(&mut buf, format, report)?;
    print(&buf)
}

/// Write to stdout. A closed pipe (`audctl check -o json | head -c 10`) is not an error: the reader
/// took what it wanted, so nothing is said and the verb's own exit code stands (as ripgrep does).
pub fn print(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        // Not exit 1: for `verify` or `check` that says "the system failed", and it did not; the
        // output could not be delivered (a full disk, a closed file), which is the caller's to fix.
        Err(e) => Err(crate::error::usage(format!("writing to stdout: {e}"))),
        Ok(()) => Ok(()),
    }
}

pub fn write_report<R: Report>(out: &mut impl Write, format: OutputFormat, report: &R) -> anyhow::Result<()> {
    match format {
        OutputFormat::Table => writeln!(out, "{}", report.table())?,
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, report)?;
            writeln!(out)?;
        }
        OutputFormat::Yaml => out.write_all(serde_yaml::to_string(report)?.as_bytes())?,
        OutputFormat::Junit => match report.junit() {
            Some(xml) => out.write_all(xml.as_bytes())?,
            None => return Err(usage(JUNIT_UNSUPPORTED)),
        },
    }
    Ok(())
}

/// A progress bar on stderr, hidden when stderr is not a terminal (CI logs stay clean).
pub fn progress(len: u64, message: impl Into<String>) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), draw_target());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(message.into());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// A spinner for work of unknown length (waiting for a rollout, a snapshot...).
pub fn spinner(message: impl Into<String>) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, draw_target());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(message.into());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn draw_target() -> ProgressDrawTarget {
    if std::io::stderr().is_terminal() { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Rows {
        rows: Vec<(String, u32)>,
    }

    impl Report for Rows {
        fn table(&self) -> Table {
            let mut t = new_table(["name", "count"]);
            for (n, c) in &self.rows {
                t.add_row(vec![n.clone(), c.to_string()]);
            }
            t
        }
    }

    fn render(format: OutputFormat) -> anyhow::Result<String> {
        let mut buf = Vec::new();
        let r = Rows { rows: vec![("pods".into(), 3)] };
        write_report(&mut buf, format, &r)?;
        Ok(String::from_utf8(buf)?)
    }

    #[test]
    fn formats_render_the_same_data() -> anyhow::Result<()> {
        let json: serde_json::Value = serde_json::from_str(&render(OutputFormat::Json)?)?;
        assert_eq!(json["rows"][0][1], 3);
        let yaml: serde_json::Value = serde_yaml::from_str(&render(OutputFormat::Yaml)?)?;
        assert_eq!(yaml, json);
        let table = render(OutputFormat::Table)?;
        assert!(table.contains("pods") && table.contains('3'), "{table}");
        Ok(())
    }

    #[test]
    fn junit_unsupported_is_a_usage_error() {
        let err = render(OutputFormat::Junit).unwrap_err();
        assert_eq!(crate::error::Failure::classify(&err), crate::error::Failure::Usage);
    }
}
