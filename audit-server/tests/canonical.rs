//! The canonical form survives a round trip: every accepted event, fetched back over the API,
//! re-hashes to its stored hash with an implementation that shares no code with the server (the
//! README's Python recipe, tests/support/verify_export.py, run with python3), and every number comes
//! back as the double that was sent. Random floats over 1e-30..1e30 and beyond, nested values with
//! keys outside the Basic Multilingual Plane, control characters in strings.

#[macro_use]
mod common;

use std::path::Path;

use anyhow::{Context, Result, ensure};
use common::{ADMIN_KEY, Api, Backend, Db, event};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as PropConfig, RngSeed, TestRunner};
use serde_json::{Value, json};

on_both!(round_trip_rehashes_independently);

const EVENTS: usize = 240;

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => (1.0f64..10.0, -30i32..=30, any::<bool>())
            .prop_map(|(m, e, neg)| if neg { -m * 10f64.powi(e) } else { m * 10f64.powi(e) }),
        2 => any::<f64>().prop_filter("finite", |f| f.is_finite()),
        1 => prop::sample::select(vec![0.0, -0.0, 1e21, 1e-7, 1e16, 5e-324, f64::MAX, 0.1, 9007199254740992.0]),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-(1i64 << 53)..=(1i64 << 53)).prop_map(Value::from),
        float().prop_map(|f| json!(f)),
        "\\PC{0,12}".prop_map(Value::String),
        "[\\x00-\\x1f\"\\\\/\u{7f}\u{2028}\u{e000}-\u{e010}\u{10000}-\u{10010}]{1,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("[a-z\u{e000}\u{fb33}\u{1f600}\u{10000}\u{80}\r]{0,4}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

async fn round_trip_rehashes_independently(backend: Backend) -> Result<()> {
    let db = Db::new(backend, "canonical").await?;
    let server = audit_server::spawn(db.config()).await?;
    let api = Api::of(&server);
    let tenant = "canon";

    // Literal texts first: exponents and digits that a float parser may round differently.
    let literals = ["80e-27", "1E30", "0.1000000000000000055511151231257827", "4.35", "1e-7", "-0.0", "12e1"];
    let mut sent: Vec<(String, Value)> = Vec::new();
    for lit in literals {
        let mut e = event(tenant, "lit", "FLOAT").to_string();
        e = e.replacen("\"actor\":{", &format!("\"actor\":{{\"attributes\":{{\"f\":{lit}}},"), 1);
        let r = api
            .http
            .post(api.url("/api/v1/events"))
            .header("x-api-key", ADMIN_KEY)
            .header("content-type", "application/json")
            .body(e)
            .send()
            .await?;
        let status = r.status().as_u16();
        let body: Value = r.json().await?;
        ensure!(status == 201, "{lit}: {status} {body}");
        let id = body["id"].as_str().unwrap_or_default().to_owned();
        sent.push((id, json!({"f": lit.parse::<f64>()?})));
    }

    let mut runner = TestRunner::new(PropConfig { rng_seed: RngSeed::Random, ..PropConfig::default() });
    let strategy = (float(), json_value(), float());
    let mut batch = Vec::new();
    let mut attrs = Vec::new();
    for i in 0..EVENTS {
        let (f, nested, g) = strategy.new_tree(&mut runner).map_err(|e| anyhow::anyhow!("{e}"))?.current();
        let a = json!({"f": f, "nested": nested});
        let mut e = event(tenant, &format!("u{i}"), "FLOAT");
        e["actor"]["attributes"] = a.clone();
        e["resource"]["after"] = json!({"g": g});
        batch.push(e);
        attrs.push(a);
        if batch.len() == 20 || i + 1 == EVENTS {
            let (s, r) = api.post(ADMIN_KEY, "/api/v1/events/batch", &json!({"events": batch})).await?;
            ensure!(s == 201, "batch answered {s}: {r}");
            let ids = r["results"].as_array().into_iter().flatten().filter_map(|x| x["id"].as_str());
            sent.extend(ids.map(str::to_owned).zip(attrs.drain(..)));
            batch.clear();
        }
    }

    // What comes back is what was sent: the same doubles (-0 reads back as 0, RFC 8785).
    for (id, attributes) in &sent {
        let (s, got) = api.get(ADMIN_KEY, &format!("/api/v1/events/{id}")).await?;
        ensure!(s == 200, "GET {id}: {s} {got}");
        ensure!(
            same_numbers(&got["actor"]["attributes"], attributes),
            "event {id} came back altered:\n sent {attributes}\n  got {}",
            got["actor"]["attributes"]
        );
    }

    // A third party re-hashes the whole chain from the API's answers alone.
    let events = api.all_events(tenant).await?;
    ensure!(events.len() == sent.len(), "{} events listed, {} sent", events.len(), sent.len());
    let export = db.dir.path().join("export.ndjson");
    std::fs::write(&export, events.iter().map(|e| format!("{e}\n")).collect::<String>())?;
    let out = python_verify(&export)?;
    ensure!(out == format!("verified {}", sent.len()), "independent verifier: {out}");
    ensure!(api.verify(tenant).await?["verified"] == true);
    server.shutdown().await
}

/// Equal as JSON, numbers compared as doubles (so `-0.0` equals `0` and `1.0` equals `1`).
fn same_numbers(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_numbers(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_numbers(v, w)))
        }
        _ => a == b,
    }
}

/// Run the README's Python recipe over an NDJSON export; its one line of output.
pub fn python_verify(export: &Path) -> Result<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/verify_export.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(export)
        .output()
        .context("running python3 (the independent verifier)")?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok(text.trim().to_owned())
}
