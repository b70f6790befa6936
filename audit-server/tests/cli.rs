//! The binary's command line: help and version print and exit, anything else is refused; none of
//! them starts a server or creates the data directory.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Run audit-server with `args` and a private HOME; killed (and the test failed) if it keeps
/// running, as a server would.
fn run(args: &[&str], home: &std::path::Path) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_audit-server"))
        .args(args)
        .env_clear()
        .env("HOME", home)
        .env("AUDIT_LISTEN_ADDR", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("audit-server starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!("audit-server {args:?} kept running (it served): {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn help_version_and_unknown_arguments_start_nothing() {
    let home = tempfile::tempdir().expect("temp dir");
    for flag in ["--help", "-h"] {
        let out = run(&[flag], home.path());
        assert_eq!(out.status.code(), Some(0), "{flag}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage: audit-server") && text.contains("AUDIT_LISTEN_ADDR"), "{flag}: {text}");
    }
    let out = run(&["--version"], home.path());
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("audit-server {}", env!("CARGO_PKG_VERSION")));
    for args in [vec!["--port", "9000"], vec!["serve"], vec!["--help", "extra"]] {
        let out = run(&args, home.path());
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--help"), "{args:?}");
    }
    assert!(!home.path().join(".local/share/audit-server").exists(), "a data directory was created");
}

/// `search-reindex` refuses bad arguments and a configuration without a search cluster (exit 2)
/// before it opens any database.
#[test]
fn search_reindex_refuses_bad_arguments_and_no_cluster() {
    let home = tempfile::tempdir().expect("temp dir");
    let out = run(&["search-reindex", "--help"], home.path());
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--since TIME"));
    for (args, says) in [
        (vec!["search-reindex", "--since", "yesterday"], "expected an RFC 3339 time"),
        (vec!["search-reindex", "--batch", "0"], "expected 1 to 10000"),
        (vec!["search-reindex", "--tenant"], "expected a value"),
        (vec!["search-reindex", "--all"], "unknown argument \"--all\""),
        (vec!["search-reindex"], "set AUDIT_SEARCH_URL"),
    ] {
        let out = run(&args, home.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert!(!home.path().join(".local/share/audit-server").exists(), "a data directory was created");
}
