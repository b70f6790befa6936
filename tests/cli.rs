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

/// `-o junit` where a verb has no JUnit report is refused before any work: a deploy or rollback
/// would otherwise touch the cluster first (here: none configured, which would be exit 3).
#[test]
fn junit_is_refused_up_front_where_unsupported() {
    let dir = std::env::temp_dir().join(format!("audctl-junit-{}", std::process::id()));
    let verify_input = dir.join("x.ndjson");
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(&verify_input, "").expect("write");
    let repo = dir.join("repo");
    let (repo, input) = (repo.to_str().expect("utf-8"), verify_input.to_str().expect("utf-8"));
    for args in [
        vec!["deploy", "--kubeconfig", "/nonexistent/kubeconfig"],
        vec!["rollback", "--kubeconfig", "/nonexistent/kubeconfig"],
        vec!["history", "--kubeconfig", "/nonexistent/kubeconfig"],
        vec!["attest", "--list", "--kubeconfig", "/nonexistent/kubeconfig"],
        vec!["check", "--list-probes"],
        vec!["verify", input],
        vec!["backup", "--repo", repo, "list"],
        vec!["restore", "--repo", repo, "redis", "latest", "--yes"],
    ] {
        let mut all = vec!["-o", "junit"];
        all.extend(&args);
        let out = audctl(&all);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("-o junit is only available for check, smoke and load"), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}: printed {}", text(&out.stdout));
    }
    assert!(!dir.join("repo").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
