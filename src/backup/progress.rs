//! Progress on stderr when it is a terminal (bytes written and rate, or items counted), and a
//! summary line either way.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Bytes {
    bar: ProgressBar,
    started: Instant,
    label: String,
    quiet: bool,
    /// What is counted when it is not bytes (`records`, `keys`).
    noun: Option<&'static str>,
}

impl Bytes {
    /// A bar counting bytes of `label` (its total, when known, gives an ETA).
    pub fn new(label: impl Into<String>, total: Option<u64>) -> Bytes {
        let template = if total.is_some() {
            "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {eta}"
        } else {
            "{spinner} {msg} {bytes} {binary_bytes_per_sec} {elapsed}"
        };
        Bytes::shown(label.into(), total, template, None)
    }

    /// A bar counting items (`noun`: "records", "keys") rather than bytes.
    pub fn count(label: impl Into<String>, total: Option<u64>, noun: &'static str) -> Bytes {
        let template = if total.is_some() {
            format!("{{spinner}} {{msg}} [{{bar:30}}] {{human_pos}}/{{human_len}} {noun} {{per_sec}} {{eta}}")
        } else {
            format!("{{spinner}} {{msg}} {{human_pos}} {noun} {{per_sec}} {{elapsed}}")
        };
        Bytes::shown(label.into(), total, &template, Some(noun))
    }

    /// A bar drawn with `template` on stderr when it is a terminal.
    fn shown(label: String, total: Option<u64>, template: &str, noun: Option<&'static str>) -> Bytes {
        let target =
            if std::io::stderr().is_terminal() { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        let bar = ProgressBar::with_draw_target(total, target);
        bar.set_style(
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(label.clone());
        bar.enable_steady_tick(Duration::from_millis(200));
        Bytes { bar, started: Instant::now(), label, quiet: false, noun }
    }

    /// Counts without showing or summarising anything.
    pub fn hidden() -> Bytes {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
        Bytes { bar, started: Instant::now(), label: String::new(), quiet: true, noun: None }
    }

    pub fn add(&self, n: u64) {
        self.bar.inc(n);
    }

    pub fn set(&self, n: u64) {
        self.bar.set_position(n);
    }

    pub fn bytes(&self) -> u64 {
        self.bar.position()
    }

    /// Clear the bar and print `label: N MiB in S s (R MiB/s)` (or `N records in S s (R/s)`) on stderr.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
        if !self.quiet {
            let secs = self.started.elapsed().as_secs_f64();
            if let Some(noun) = self.noun {
                let n = self.bytes();
                eprintln!("{}: {n} {noun} in {secs:.1} s ({:.0}/s)", self.label, n as f64 / secs.max(0.001));
                return;
            }
            let mib = self.bytes() as f64 / (1024.0 * 1024.0);
            eprintln!("{}: {mib:.1} MiB in {secs:.1} s ({:.1} MiB/s)", self.label, mib / secs.max(0.001));
        }
    }
}

impl Drop for Bytes {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
