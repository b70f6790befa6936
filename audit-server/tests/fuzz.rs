//! Property-based fuzz against the served OpenAPI document: every operation it declares, with
//! random path and query values, headers and bodies (arbitrary JSON, valid events with one field
//! replaced or removed, raw bytes), must never answer 5xx, and every error must be a JSON
//! `{error, message}`. Runs on SQLite and on PostgreSQL (whose text type rejects NUL bytes and
//! whose indexes cap entry sizes: the inputs most likely to turn into a 500).

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::{ADMIN_KEY, Api, Backend, Db, KEY_A, event};
use proptest::prelude::*;
use proptest::test_runner::{
    Config as PropConfig, FileFailurePersistence, RngAlgorithm, TestCaseError, TestRng, TestRunner,
};
use serde_json::Value;

const CASES: u32 = 400;

/// Failing cases are saved here (one seed per line, proptest's format) and replayed first on every
/// later run until the bug is fixed; commit the file with the fix.
const REGRESSIONS_SQLITE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz-sqlite.proptest-regressions");
const REGRESSIONS_POSTGRES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz-postgres.proptest-regressions");

#[test]
fn no_5xx_sqlite() -> Result<()> {
    fuzz(Backend::Sqlite, REGRESSIONS_SQLITE)
}

#[test]
fn no_5xx_postgres() -> Result<()> {
    fuzz(Backend::Postgres, REGRESSIONS_POSTGRES)
}

/// The run's seed: `FUZZ_SEED` (64 hex digits, printed by an earlier run) replays that run's cases
/// in order; otherwise a fresh random one.
fn run_seed() -> Result<[u8; 32]> {
    let mut seed = [0u8; 32];
    match std::env::var("FUZZ_SEED") {
        Ok(hex_seed) => {
            let bytes = hex::decode(hex_seed.trim()).ok().filter(|b| b.len() == 32);
            seed.copy_from_slice(&bytes.context("FUZZ_SEED: expected 64 hex digits")?);
        }
        Err(_) => {
            seed[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
            seed[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        }
    }
    Ok(seed)
}

/// One operation of the document: method, path template, declared query parameters.
#[derive(Debug, Clone)]
struct Operation {
    method: String,
    path: String,
    query: Vec<String>,
    /// Query parameters the document declares boolean (`signed`, `incremental`).
    booleans: Vec<String>,
}

fn operations(doc: &Value) -> Vec<Operation> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (method, op) in item.as_object().into_iter().flatten() {
            let params: Vec<&Value> =
                op["parameters"].as_array().into_iter().flatten().filter(|p| p["in"] == "query").collect();
            let name = |p: &&Value| p["name"].as_str().map(str::to_owned);
            let query = params.iter().filter_map(name).collect();
            let booleans = params.iter().filter(|p| p["schema"]["type"] == "boolean").filter_map(name).collect();
            ops.push(Operation { method: method.to_uppercase(), path: path.clone(), query, booleans });
        }
    }
    ops
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        ".{0,40}".prop_map(Value::String),
        "[\\x00-\\x1f]{1,4}".prop_map(Value::String),
        (0usize..6000).prop_map(|n| Value::String("x".repeat(n))),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every JSON pointer of a value (objects only), to mutate one field of a valid event.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    if let Value::Object(map) = v {
        for (k, child) in map {
            let p = format!("{at}/{k}");
            out.push(p.clone());
            pointers(child, p, out);
        }
    }
}

#[derive(Debug, Clone)]
enum Body {
    None,
    Json(Value),
    Raw(Vec<u8>),
}

fn body(tenant_pointers: Vec<String>) -> impl Strategy<Value = Body> {
    // Mostly valid: one field set to arbitrary Unicode text (stored when it passes validation).
    let ptrs = tenant_pointers.clone();
    let texts = (0..ptrs.len(), "\\PC{0,60}").prop_map(move |(i, text)| {
        let mut e = event("tenant-a", "fuzz", "TEXT");
        if let Some(slot) = e.pointer_mut(&ptrs[i]) {
            *slot = Value::String(text);
        }
        Body::Json(e)
    });
    let mutated =
        (0..tenant_pointers.len(), any_json(), any::<bool>(), any::<bool>()).prop_map(move |(i, v, delete, batch)| {
            let mut e = event("tenant-a", "fuzz", "FUZZ");
            let ptr = &tenant_pointers[i];
            let (parent, key) = ptr.rsplit_once('/').unwrap_or(("", ptr));
            if let Some(Value::Object(m)) = e.pointer_mut(parent) {
                if delete {
                    m.remove(key);
                } else {
                    m.insert(key.to_owned(), v);
                }
            }
            Body::Json(if batch { serde_json::json!({"events": [e]}) } else { e })
        });
    prop_oneof![
        1 => Just(Body::None),
        2 => any_json().prop_map(Body::Json),
        4 => mutated,
        4 => texts,
        1 => Just(Body::Json(event("tenant-a", "fuzz", "VALID"))),
        1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(Body::Raw),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    op: usize,
    path_value: String,
    query: Vec<(usize, String)>,
    key: usize,
    content_type: usize,
    idempotency: Option<String>,
    body: Body,
}

fn fuzz(backend: Backend, regressions: &'static str) -> Result<()> {
    let seed = run_seed()?;
    let replay = format!("FUZZ_SEED={} cargo test -p audit-server --test fuzz", hex::encode(seed));
    eprintln!("{backend:?}: fuzz seed {} (replay the run: {replay})", hex::encode(seed));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let db = rt.block_on(Db::new(backend, "fuzz"))?;
    // With a signing key on both stores (SQLite generates one): the integrity routes and the
    // `signed` option are fuzzed past their 404 / 400 for a missing key.
    let mut config = db.config();
    let key = db.dir.path().join("fuzz-signing-key.pem");
    std::fs::write(&key, audit_server::checkpoint::Signer::generate_pem()?)?;
    config.signing_key_file = Some(key);
    config.checkpoint_dir = Some(db.dir.path().join("checkpoints"));
    let server = rt.block_on(audit_server::spawn(config))?;
    let api = Api::of(&server);
    let doc: Value = rt.block_on(async { api.http.get(api.url("/api/v1/openapi.json")).send().await?.json().await })?;
    let ops = operations(&doc);
    anyhow::ensure!(ops.len() >= 5, "the OpenAPI document declares too few operations: {ops:?}");
    let mut ptrs = Vec::new();
    pointers(&event("tenant-a", "x", "y"), String::new(), &mut ptrs);

    let query_value = prop_oneof![
        Just("tenant-a".to_owned()),
        Just("tenant-b".to_owned()),
        "[0-9]{1,25}".prop_map(|s| s),
        "-?[0-9]{1,4}".prop_map(|s| s),
        Just("+262143-01-01T00:00:00Z".to_owned()),
        Just("2026-01-01T00:00:00Z".to_owned()),
        ".{0,30}",
        (0usize..5000).prop_map(|n| "q".repeat(n)),
    ];
    let n_ops = ops.len();
    // Half the cases target the append route, where input reaches the database.
    let append = ops.iter().position(|o| o.method == "POST" && o.path == "/api/v1/events").unwrap_or(0);
    let strategy = (
        prop_oneof![0..n_ops, Just(append)],
        prop_oneof![Just(uuid::Uuid::new_v4().to_string()), ".{0,40}"],
        prop::collection::vec((0usize..16, query_value), 0..5),
        0usize..4,
        0usize..4,
        prop::option::of("[ -~]{0,300}"),
        body(ptrs),
    )
        .prop_map(|(op, path_value, query, key, content_type, idempotency, body)| Case {
            op,
            path_value,
            query,
            key,
            content_type,
            idempotency,
            body,
        });

    let tally = std::sync::Mutex::new(std::collections::BTreeMap::<u16, u32>::new());
    let config = PropConfig {
        cases: CASES,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(regressions))),
        ..PropConfig::default()
    };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
    let result = runner.run(&strategy, |case| {
        let (status, text) = rt.block_on(send(&api, &ops, &case)).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
        *tally.lock().unwrap_or_else(|p| p.into_inner()).entry(status).or_default() += 1;
        prop_assert!(status < 500, "{case:?} answered {status}: {text}");
        if status >= 400 {
            let v: Value = serde_json::from_str(&text)
                .map_err(|_| TestCaseError::fail(format!("{case:?}: non-JSON error {status}: {text}")))?;
            prop_assert!(v["error"].is_string() && v["message"].is_string(), "{case:?}: {text}");
        }
        Ok(())
    });
    // The chain stayed intact through whatever the fuzz managed to store.
    let report = rt.block_on(api.verify("tenant-a"))?;
    rt.block_on(server.shutdown())?;
    result.map_err(|e| anyhow::anyhow!("{e}\n(case saved to {regressions}; replay the run: {replay})"))?;
    anyhow::ensure!(report["verified"] == true, "{report}");
    // The fuzz must get past authentication and validation often enough to mean something.
    let tally = tally.into_inner().unwrap_or_else(|p| p.into_inner());
    eprintln!("{backend:?}: statuses {tally:?}");
    let count = |range: std::ops::RangeInclusive<u16>| tally.range(range).map(|(_, n)| n).sum::<u32>();
    anyhow::ensure!(
        count(200..=299) >= 10 && count(400..=400) >= 50,
        "too few accepted or validated requests: {tally:?}"
    );
    Ok(())
}

async fn send(api: &Api, ops: &[Operation], case: &Case) -> Result<(u16, String)> {
    let op = &ops[case.op];
    let encoded: String = case.path_value.bytes().map(|b| format!("%{b:02X}")).collect();
    let path = op.path.replace("{id}", &encoded);
    let mut url = reqwest::Url::parse(&api.url(&path)).context("fuzz URL")?;
    if !op.query.is_empty() {
        let mut pairs = url.query_pairs_mut();
        for (i, v) in &case.query {
            let name = &op.query[i % op.query.len()];
            // A boolean parameter mostly gets a valid value (an option such as `signed` on the
            // append route must not make nearly every case a 400), sometimes the random text.
            let v = match v.len() % 4 {
                _ if !op.booleans.contains(name) => v.as_str(),
                0 => v.as_str(),
                1 | 3 => "false",
                _ => "true",
            };
            pairs.append_pair(name, v);
        }
    }
    let method = reqwest::Method::from_bytes(op.method.as_bytes())?;
    let mut req = api.http.request(method, url).timeout(Duration::from_secs(30));
    match case.key {
        0 | 1 => req = req.header("x-api-key", ADMIN_KEY),
        2 => req = req.header("x-api-key", KEY_A),
        _ => {}
    }
    match case.content_type {
        0 | 1 => req = req.header("content-type", "application/json"),
        2 => req = req.header("content-type", "text/plain"),
        _ => {}
    }
    if let Some(k) = &case.idempotency {
        req = req.header("idempotency-key", k);
    }
    req = match &case.body {
        Body::None => req,
        Body::Json(v) => req.body(serde_json::to_vec(v)?),
        Body::Raw(b) => req.body(b.clone()),
    };
    let r = req.send().await?;
    let status = r.status().as_u16();
    Ok((status, r.text().await?))
}
