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
    // A script is no JSON: -o json is refused rather than ignored (and -o table is the default).
    let refused: [(&[&str], &str); 2] =
        [(&["completions", "bash", "-o", "json"], "a shell script"), (&["man", "-o", "yaml"], "a man page")];
    for (args, what) in refused {
        let out = audctl(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains(what) && err.contains("does not apply") && out.stdout.is_empty(), "{err}");
    }
    assert_eq!(audctl(&["completions", "zsh", "-o", "table"]).status.code(), Some(0));
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

/// Output that cannot be delivered is exit 2 naming stdout, never 1 (for `verify`, "broken") and
/// never a panic (clap_complete panics on a failed write); a closed pipe is not an error.
#[test]
fn undeliverable_output_is_exit_2_and_a_closed_pipe_is_fine() {
    use std::process::Stdio;
    let bin = env!("CARGO_BIN_EXE_audctl");
    for args in [vec!["completions", "bash"], vec!["render", "-f", "../values/values-prod.yaml"]] {
        let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else { panic!("/dev/full") };
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests");
        let out = Command::new(bin).args(&args).current_dir(dir).stdout(full).output().expect("audctl runs");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("writing to stdout: No space left on device"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    // A reader that stops at once: the pipe closes under the writer.
    let mut child = Command::new(bin)
        .args(["completions", "bash"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("audctl runs");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("audctl ends");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}

/// With nothing naming a cluster, the cluster verbs say what to give (exit 2), not kube's inference
/// error (`failed to infer config: in-cluster: (failed to read an incluster environment variable`).
#[test]
fn no_cluster_configured_says_what_to_give() {
    let home = tempfile::tempdir().expect("temp dir");
    for args in [vec!["history"], vec!["rollback"], vec!["diff"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_audctl"))
            .args(&args)
            .env_remove("KUBECONFIG")
            .env_remove("AUDCTL_TARGETS")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("HOME", home.path())
            .output()
            .expect("audctl runs");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("no cluster configured: give --kubeconfig FILE"), "{args:?}: {err}");
        assert!(err.contains(&home.path().join(".kube/config").display().to_string()), "{args:?}: {err}");
        assert!(!err.contains("failed to infer config"), "{args:?}: {err}");
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

/// Passwords in URLs never reach stdout or stderr, whatever is wrong with the URL or the server
/// (port 1 on loopback: nothing listens, so each run ends at "unreachable").
#[test]
fn passwords_in_urls_are_never_printed() {
    const PW: &str = "S3cretPW";
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = dir.path().join("repo");
    // A search backup as `backup search` writes it (no files: the snapshot lives in the cluster).
    let id = "search-20261201T000000Z";
    std::fs::create_dir_all(repo.join("search").join(id)).expect("backup dir");
    std::fs::write(
        repo.join("search").join(id).join("manifest.json"),
        format!(
            r#"{{"format":1,"id":"{id}","component":"search","started":"2026-12-01T00:00:00Z",
            "finished":"2026-12-01T00:00:01Z","size":0,"files":[],"serverVersion":"8","source":"http://127.0.0.1:9200",
            "consistency":{{"repository":"r","snapshot":"s","uuid":"u","state":"SUCCESS","indices":{{}},
            "shardsTotal":1,"shardsFailed":0}},"audctlVersion":"0.1.0"}}"#
        ),
    )
    .expect("manifest");
    let targets = |name: &str, url: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("search:\n  url: {url}\n  snapshotRepository: r\n")).expect("targets");
        path.to_str().expect("utf-8").to_owned()
    };
    let down = targets("down.yaml", &format!("http://elastic:{PW}@127.0.0.1:1"));
    let bad_port = targets("port.yaml", &format!("http://elastic:{PW}@127.0.0.1:99999"));
    let r = repo.to_str().expect("utf-8");
    let key_file = dir.path().join("key").to_str().expect("utf-8").to_owned();
    std::fs::write(&key_file, "k").expect("key file");
    let cases: Vec<(Vec<String>, i32)> = vec![
        (vec!["--targets".into(), down, "backup".into(), "--repo".into(), r.into(), "search".into()], 3),
        (vec!["--targets".into(), bad_port, "backup".into(), "--repo".into(), r.into(), "search".into()], 2),
        (
            ["restore", "--repo", r, "search", id, "--yes", "--target", &format!("http://elastic:{PW}@127.0.0.1:1")]
                .map(String::from)
                .to_vec(),
            3,
        ),
        (
            // A key, so that the run gets as far as connecting (without one it is exit 2 first).
            [
                "load",
                "--url",
                &format!("http://u:{PW}@127.0.0.1:1"),
                "--rate",
                "5",
                "--duration",
                "1s",
                "--api-key-file",
                &key_file,
            ]
            .map(String::from)
            .to_vec(),
            3,
        ),
        (
            [
                "restore",
                "--repo",
                r,
                "postgres",
                "latest",
                "--yes",
                "--target",
                &format!("audit:{PW}@db.example/audit"),
            ]
            .map(String::from)
            .to_vec(),
            2,
        ),
        (
            [
                "restore",
                "--repo",
                r,
                "postgres",
                "latest",
                "--yes",
                "--target",
                &format!("postgres://audit:{PW}@db.example:99999/audit"),
            ]
            .map(String::from)
            .to_vec(),
            2,
        ),
    ];
    for (args, code) in cases {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = audctl(&refs);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(code), "{args:?}:\n{stdout}\n{stderr}");
        assert!(!stdout.contains(PW) && !stderr.contains(PW), "{args:?} printed the password:\n{stdout}\n{stderr}");
    }
}

/// `backup all` (the CronJobs' entry point): a targets file naming no datastore is exit 2, not a
/// success that backed up nothing; every configured target unreachable is exit 3.
#[test]
fn backup_all_exit_codes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = dir.path().join("repo");
    let write = |name: &str, yaml: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, yaml).expect("targets");
        path.to_str().expect("utf-8").to_owned()
    };
    let none = write("none.yaml", &format!("backup:\n  repo: {}\n", repo.display()));
    let out = audctl(&["--targets", &none, "backup", "all"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("no component"), "{}", text(&out.stderr));

    let down = write(
        "down.yaml",
        &format!(
            "postgres:\n  url: postgres://audit@127.0.0.1:1/audit\nredis:\n  url: redis://127.0.0.1:1\nbackup:\n  repo: {}\n",
            repo.display()
        ),
    );
    let out = audctl(&["--targets", &down, "-o", "json", "backup", "all"]);
    assert_eq!(out.status.code(), Some(3), "{}\n{}", text(&out.stdout), text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON summary");
    assert_eq!(report["backups"].as_array().map(Vec::len), Some(2), "{report}");
}

/// A kubeconfig pointing at an HTTP server that is not a Kubernetes API (a wrong port) is exit 3
/// naming the URL, for history (an HTML page was quoted as an API error, exit 1) and diff ("22
/// resource types are missing from the cluster", exit 2).
#[test]
fn a_server_that_is_not_kubernetes_is_said_to_be_unreachable() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let body = "<html><body><h1>404 Not Found</h1></body></html>";
            let _ = write!(
                stream,
                "HTTP/1.1 404 Not Found\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    let url = format!("http://127.0.0.1:{port}");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"{url}\"}}}}]\n\
             users: [{{name: u, user: {{token: t0ps3cret}}}}]\n\
             contexts: [{{name: x, context: {{cluster: c, user: u}}}}]\ncurrent-context: x\n"
        ),
    )
    .expect("kubeconfig");
    let kc = kubeconfig.to_str().expect("utf-8");
    for args in
        [vec!["history", "-n", "audit-trail"], vec!["diff", "-f", "values/values-prod.yaml"], vec!["attest", "--list"]]
    {
        let mut args = args.clone();
        args.extend(["--kubeconfig", kc]);
        let out = audctl(&args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
        assert!(err.contains(&url) && err.contains("does not answer as one"), "{args:?}: {err}");
        assert!(!err.contains("<html>") && !err.contains("t0ps3cret"), "{args:?}: {err}");
    }
    // The evidence record after a smoke run (the service is a closed port: exit 3 for that) says
    // why it was not written, as the verbs above do.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_url = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let out = audctl(&["smoke", "--url", &closed_url, "--kubeconfig", kc]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("evidence record not written") && err.contains("does not answer as one"), "{err}");
}

/// `--context` naming no context of the kubeconfig lists the ones it has (kube said only "failed
/// to load current context: nosuch").
#[test]
fn an_unknown_context_lists_the_known_ones() {
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"http://127.0.0.1:1\"}}]\n\
         users: [{name: u, user: {}}]\n\
         contexts: [{name: prod, context: {cluster: c, user: u}}, {name: staging, context: {cluster: c, user: u}}]\n\
         current-context: prod\n",
    )
    .expect("kubeconfig");
    let out = audctl(&["history", "--kubeconfig", kubeconfig.to_str().expect("utf-8"), "--context", "nosuch"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(r#"has no context "nosuch"; it has: prod, staging"#), "{err}");
}

/// Run audctl with stdin, stdout and stderr on a fresh pseudo-terminal, whose size is 0x0 until
/// someone sets it (as under `docker exec -t` or a CI runner's pty). Returns what it wrote.
fn on_unsized_pty(args: &[&str], columns: Option<&str>) -> String {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut leader, mut follower) = (0, 0);
    // SAFETY: openpty(3) writes two new descriptors; the name, termios and winsize are optional.
    let rc =
        unsafe { libc::openpty(&mut leader, &mut follower, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
    assert_eq!(rc, 0, "openpty");
    // SAFETY: both descriptors were just opened and are owned here alone.
    let (leader, follower) = unsafe { (OwnedFd::from_raw_fd(leader), OwnedFd::from_raw_fd(follower)) };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_audctl"));
    cmd.args(args).env_remove("COLUMNS").env_remove("NO_COLOR");
    if let Some(c) = columns {
        cmd.env("COLUMNS", c);
    }
    let mut child = cmd
        .stdin(follower.try_clone().expect("dup"))
        .stdout(follower.try_clone().expect("dup"))
        .stderr(follower)
        .spawn()
        .expect("run audctl");
    // The command holds the follower's descriptors: until they close, the leader never ends.
    drop(cmd);
    let mut out = Vec::new();
    // Reading the leader fails with EIO once the child has exited and closed the follower.
    let _ = std::fs::File::from(leader).read_to_end(&mut out);
    assert!(child.wait().expect("wait").success(), "{}", String::from_utf8_lossy(&out));
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn a_terminal_of_no_width_gets_a_readable_table() {
    let out = on_unsized_pty(&["check", "--list-probes"], None);
    assert!(out.contains("PROBE") && out.contains("cluster.ha"), "a column wrapped to one character:\n{out:.600}");
    let out = on_unsized_pty(&["check", "--list-probes"], Some("100"));
    assert!(out.contains("PROBE"), "{out:.600}");
    assert!(out.lines().all(|l| l.chars().count() <= 100), "wider than COLUMNS=100:\n{out}");
}

#[test]
fn an_empty_backup_repository_says_so() {
    let repo = tempfile::tempdir().expect("temp dir");
    let path = repo.path().to_str().expect("UTF-8 temp path");
    let out = audctl(&["backup", "list", "--repo", path]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("no backups in {path}")), "{stderr}");
    let out = audctl(&["backup", "list", "--repo", path, "--component", "redis", "-o", "json"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no backups of redis in"), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(json["backups"], serde_json::json!([]), "{json}");
}

#[test]
fn smoke_refuses_a_zero_timeout() {
    // Every step would time out at once and read as a failing service (exit 1).
    let out = audctl(&["smoke", "--url", "http://127.0.0.1:9", "--timeout", "0s"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--timeout must be above zero"), "{}", text(&out.stderr));
}

/// audctl with an API key in the environment and no kubeconfig (no evidence record).
fn audctl_with_key(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_audctl"))
        .args(args)
        .env("AUDIT_API_KEY", "k")
        .env_remove("KUBECONFIG")
        .output()
        .expect("run audctl")
}

/// The URL of a port that accepts every connection and never answers (a hung process, a
/// black-holing proxy), for as long as the test runs.
fn silent_service() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().flatten().collect();
        drop(held);
    });
    url
}

#[test]
fn smoke_against_a_silent_service_is_unreachable() {
    let url = silent_service();
    let out = audctl(&["smoke", "--url", &url, "--timeout", "1s", "-o", "json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["unreachable"], true, "{report}");
}

#[test]
fn load_against_a_stalled_service_ends_near_its_planned_end() {
    // 2 connections, 20/s for 2 s, 1 s timeout, against a port that never answers: before, the 40
    // arrivals were worked off one timeout per connection at a time (about 20 s).
    let url = silent_service();
    let out = audctl_with_key(&[
        "load",
        "--url",
        &url,
        "--rate",
        "20",
        "--duration",
        "2s",
        "--connections",
        "2",
        "--timeout",
        "1s",
        "-o",
        "json",
    ]);
    // Nothing answered: unreachable, as smoke says (it was exit 1, a threshold verdict).
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("none of 40 requests was answered"), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let elapsed = report["elapsedSeconds"].as_f64().unwrap_or(f64::MAX);
    assert!(elapsed < 5.0, "ran {elapsed} s for a planned 2 s with a 1 s timeout: {report}");
    assert_eq!(report["requests"], 40, "every planned arrival is counted: {report}");
    assert!(report["errorsByClass"]["not sent: a --timeout behind schedule"].as_u64() > Some(0), "{report}");
}

#[test]
fn smoke_says_which_status_a_health_endpoint_reported() {
    // Every path answers 200 `{"status":"DOWN"}` (a health endpoint reporting itself down).
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 8192];
            let n = stream.read(&mut buf).unwrap_or(0);
            // A write is "accepted" with a receipt that is not STORED.
            let (status, body) = if buf[..n].starts_with(b"POST") {
                (
                    "201 Created",
                    r#"{"id":"e1","sequence":1,"timestamp":"2026-12-07T00:00:00Z","hash":"h","previousHash":"p","status":"QUEUED"}"#,
                )
            } else {
                ("200 OK", r#"{"status":"DOWN"}"#)
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let out = audctl_with_key(&["smoke", "--url", &url, "--timeout", "2s", "-o", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let detail = |name: &str| {
        report["steps"].as_array().into_iter().flatten().find(|s| s["name"] == name).map(|s| s["detail"].to_string())
    };
    for step in ["liveness", "readiness"] {
        let d = detail(step).unwrap_or_default();
        assert!(d.contains(r#"status \"DOWN\" (expected UP)"#), "{step}: {d}\n{report}");
    }
    let d = detail("write event").unwrap_or_default();
    assert!(d.contains(r#"receipt status \"QUEUED\" (expected STORED)"#), "{d}\n{report}");
}

#[test]
fn load_workers_in_the_cluster_need_an_image_and_a_count() {
    let base = ["load", "--url", "http://127.0.0.1:9", "--rate", "1", "--duration", "1s"];
    let without_image = audctl_with_key(&[&base[..], &["--workers", "2"]].concat());
    assert_eq!(without_image.status.code(), Some(2), "{}", text(&without_image.stderr));
    assert!(text(&without_image.stderr).contains("--worker-image"), "{}", text(&without_image.stderr));
    let zero = audctl_with_key(&[&base[..], &["--workers", "0", "--worker-image", "x/audctl:1"]].concat());
    assert_eq!(zero.status.code(), Some(2), "{}", text(&zero.stderr));
    assert!(text(&zero.stderr).contains("--workers must be at least 1"), "{}", text(&zero.stderr));
    let both =
        audctl_with_key(&[&base[..], &["--workers", "2", "--worker-image", "x", "--workers-local", "2"]].concat());
    assert_eq!(both.status.code(), Some(2), "{}", text(&both.stderr));
    assert!(text(&both.stderr).contains("cannot be used with"), "{}", text(&both.stderr));
}

#[test]
fn load_workers_dry_run_prints_the_job_without_the_key_or_the_cluster() {
    let out = Command::new(env!("CARGO_BIN_EXE_audctl"))
        .args(["-n", "perf", "load", "--url", "https://audit.example.com", "--rate", "90", "--duration", "2m"])
        .args(["--workers", "3", "--worker-image", "reg.example/audctl:0.1", "--dry-run"])
        .args(["--worker-overrides", r#"{"spec":{"template":{"spec":{"nodeSelector":{"pool":"load"}}}}}"#])
        .env("AUDIT_API_KEY", "dry-run-secret-key")
        // No cluster anywhere: a dry run does not contact one.
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .output()
        .expect("run audctl");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!stdout.contains("dry-run-secret-key") && !text(&out.stderr).contains("dry-run-secret-key"));
    let job: serde_yaml::Value = serde_yaml::from_str(&stdout).expect("YAML");
    assert_eq!(job["kind"].as_str(), Some("Job"));
    assert_eq!(job["spec"]["completions"].as_u64(), Some(3));
    // 2 minutes, plus the 5-minute start-up allowance and one more.
    assert_eq!(job["spec"]["activeDeadlineSeconds"].as_u64(), Some(120 + 300 + 60));
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["nodeSelector"]["pool"].as_str(), Some("load"));
    assert_eq!(pod["containers"][0]["image"].as_str(), Some("reg.example/audctl:0.1"));
    let args: Vec<&str> =
        pod["containers"][0]["args"].as_sequence().expect("args").iter().filter_map(|a| a.as_str()).collect();
    assert!(args.windows(2).any(|w| w == ["--worker", "$(JOB_COMPLETION_INDEX)/3"]), "{args:?}");
    assert!(stdout.starts_with("# Job perf/audctl-load-"), "{stdout}");

    let bad = audctl_with_key(&[
        "load",
        "--url",
        "https://a",
        "--workers",
        "2",
        "--worker-image",
        "i",
        "--worker-overrides",
        "{\"spec\":",
        "--dry-run",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("--worker-overrides: not JSON"), "{}", text(&bad.stderr));
}
