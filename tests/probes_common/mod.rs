//! Shared by the probe test binaries (tests/probes_*.rs): a probe `Context` built the way the check
//! engine builds it, and a runner that applies the probe's own timeout as the engine does.
#![allow(dead_code)]

use audctl::probes::{Context, ErrorCause, Finding, Status, conns::Connections, registry};
use audctl_targets::Targets;

/// Defaults plus `sets` (`key=value`, as `--set`).
pub fn values(sets: &[&str]) -> audctl::values::Values {
    let sets: Vec<String> = sets.iter().map(|s| (*s).to_owned()).collect();
    audctl::values::load(&[], &sets).expect("values")
}

/// Defaults plus one values file given as text.
pub fn values_yaml(yaml: &str) -> audctl::values::Values {
    audctl::values::load_texts(&[(std::path::PathBuf::from("test-values.yaml"), yaml.to_owned())], &[])
        .unwrap_or_else(|e| panic!("values: {e}"))
}

/// A fresh context: new connections, so nothing is cached from an earlier state.
pub fn context(targets: Targets, values: audctl::values::Values) -> Context {
    Context {
        namespace: "audit-trail".into(),
        kube: None,
        kube_url: None,
        targets,
        values,
        objects: Vec::new(),
        conns: Connections::default(),
        now: chrono::Utc::now(),
    }
}

/// Run probe `id` from the registry under its own timeout (an overrun is an ERROR, as in the engine).
pub async fn run(ctx: &Context, id: &str) -> Finding {
    let reg = registry();
    let probe = reg.get(id).unwrap_or_else(|| panic!("no probe {id} in the registry: {:?}", reg.ids()));
    match tokio::time::timeout(probe.timeout(), probe.run(ctx)).await {
        Ok(f) => f,
        Err(_) => Finding::error(ErrorCause::Timeout, format!("{id} overran its {:?} timeout", probe.timeout())),
    }
}

/// Run `id` against a fresh context until `done` holds for its finding, or panic after `secs`.
pub async fn wait_for(
    targets: &Targets,
    values: &audctl::values::Values,
    id: &str,
    secs: u64,
    done: impl Fn(&Finding) -> bool,
) -> Finding {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let ctx = context(targets.clone(), values.clone());
        let f = run(&ctx, id).await;
        if done(&f) {
            return f;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id}: condition not reached within {secs}s; last finding: {f:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// The comparison row named `name` (panics with the finding when absent).
pub fn row<'a>(f: &'a Finding, name: &str) -> &'a audctl::probes::Comparison {
    f.comparisons.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no row {name:?} in {f:#?}"))
}

pub fn assert_status(f: &Finding, status: Status) {
    assert_eq!(f.status, status, "{f:#?}");
}

/// Every probe of `prefix` ends in ERROR with `cause`, and no message shows `secret`.
pub async fn all_error(ctx: &Context, prefix: &str, cause: ErrorCause, secret: Option<&str>) {
    let reg = registry();
    let ids: Vec<&str> = reg.ids().into_iter().filter(|i| i.starts_with(prefix)).collect();
    assert!(!ids.is_empty(), "no probe starts with {prefix}");
    for id in ids {
        let f = run(ctx, id).await;
        assert_eq!((f.status, f.cause), (Status::Error, Some(cause)), "{id}: {f:#?}");
        if let Some(s) = secret {
            let shown = serde_json::to_string(&f).expect("finding as JSON");
            assert!(!shown.contains(s), "{id} shows the secret: {shown}");
        }
    }
}

/// A port that accepts TCP connections (the kernel completes the handshake) and never answers:
/// a hung server or a black-holed route. Keep the listener alive for the test.
pub fn silent_port() -> (std::net::TcpListener, u16) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("local addr").port();
    (listener, port)
}
