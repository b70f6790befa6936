//! The command line as a user meets it: help, usage errors and exit codes.

use std::process::{Command, Output};

fn audctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_audctl"))
        .args(args)
        .env_remove("NO_COLOR")
        .env_remove("KUBECONFIG")
        .env_remove("AUDCTL_TARGETS")
        .output()
        .expect("audctl runs")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

const VERBS: &[&str] = &[
    "render",
    "check",
    "attest",
    "deploy",
    "diff",
    "history",
    "rollback",
    "smoke",
    "load",
    "backup",
    "restore",
    "rehearse",
    "verify",
    "completions",
];

#[test]
fn help_lists_every_verb_with_a_purpose() {
    let out = audctl(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for verb in VERBS {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{verb} ")))
            .unwrap_or_else(|| panic!("`{verb}` missing from --help:\n{help}"));
        assert!(line.split_whitespace().count() > 2, "`{verb}` has no one-line purpose: {line:?}");
    }
    assert!(!help.contains("\n  man "), "the hidden man command must not be listed");
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let out = audctl(&["--frobnicate", "check"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("unexpected argument '--frobnicate'"), "{err}");
    assert!(err.contains("Usage:"), "{err}");
}

#[test]
fn bad_output_value_names_the_choices() {
    let out = audctl(&["-o", "xml", "check"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("invalid value 'xml'"), "{err}");
    assert!(err.contains("table") && err.contains("json") && err.contains("yaml"), "{err}");
}

#[test]
fn unknown_verb_suggests_the_closest() {
    let out = audctl(&["rendr"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("'render'"), "{}", text(&out.stderr));
}

#[test]
fn completions_are_generated() {
    let out = audctl(&["completions", "bash"]);
    assert_eq!(out.status.code(), Some(0));
    let script = text(&out.stdout);
    assert!(script.contains("_audctl") && script.contains("rollback"), "{script}");
}

#[test]
fn man_page_is_roff() {
    let out = audctl(&["man"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).starts_with(".ie"), "not roff");
}

#[test]
fn verbs_not_built_yet_say_so_and_exit_2() {
    let out = audctl(&["rehearse"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("not built yet"), "{err}");
}

/// NO_COLOR=1 is the convention (no-color.org); it must not be refused as an invalid bool.
#[test]
fn no_color_env_accepts_any_value() {
    for value in ["1", "true", "yes"] {
        let out = Command::new(env!("CARGO_BIN_EXE_audctl"))
            .args(["render", "--schema"])
            .env("NO_COLOR", value)
            .output()
            .expect("audctl runs");
        assert!(out.status.success(), "NO_COLOR={value}: {}", text(&out.stderr));
    }
}
