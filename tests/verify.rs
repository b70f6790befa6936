//! `audctl verify` against what the real audit-server exports: a clean export with its signed
//! checkpoint verifies (exit 0); an edited event, a truncated export, a checkpoint whose signature
//! does not match and a wrong public key fail (exit 1); unreadable inputs are usage errors (exit 2).

use std::path::Path;
use std::process::Output;

use serde_json::{Value, json};

const KEY: &str = "verify-test-key";

fn audctl(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_audctl")).args(args).output().expect("running audctl")
}

fn event(i: usize) -> Value {
    event_of("acme", i)
}

fn event_of(tenant: &str, i: usize) -> Value {
    json!({
        "actor": {"id": format!("u{i}"), "type": "USER", "attributes": {"score": 80e-27 * i as f64, "\u{1f600}": i}},
        "action": {"type": "LOGIN"},
        "resource": {"id": "app", "type": "APPLICATION", "after": {"ratio": 1e21 / (i as f64 + 1.0)}},
        "metadata": {"source": "tests", "tenantId": tenant, "tags": {"env": "test"}}
    })
}

/// Export, checkpoint and public key of a real server (SQLite, generated signing key) in `dir`.
async fn fetch(dir: &Path) -> anyhow::Result<()> {
    let mut config = audit_server::Config::local(dir.join("data"));
    config.listen = "127.0.0.1:0".parse()?;
    config.api_keys = vec![audit_server::ApiKeyConfig::plain(KEY, &["*"])];
    config.checkpoint_dir = Some(dir.join("published"));
    let server = audit_server::spawn(config).await?;
    let base = server.base_url();
    let http = reqwest::Client::new();
    let batch = json!({"events": (0..49).map(event).collect::<Vec<_>>()});
    let r = http.post(format!("{base}/api/v1/events/batch")).header("x-api-key", KEY).json(&batch).send().await?;
    anyhow::ensure!(r.status() == 201, "{}", r.text().await?);
    // The 50th event alone, and one of another tenant: their receipts carry a signed checkpoint.
    for (tenant, i, file) in [("acme", 49, "receipt.json"), ("globex", 0, "receipt-globex.json")] {
        let r = http
            .post(format!("{base}/api/v1/events?signed=true"))
            .header("x-api-key", KEY)
            .json(&event_of(tenant, i))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 201, "{}", r.text().await?);
        std::fs::write(dir.join(file), r.text().await?)?;
    }
    let get = |path: &str| http.get(format!("{base}{path}")).header("x-api-key", KEY).send();
    std::fs::write(dir.join("export.ndjson"), get("/api/v1/events/export?tenantId=acme").await?.text().await?)?;
    std::fs::write(
        dir.join("checkpoint.json"),
        get("/api/v1/integrity/checkpoints?tenantId=acme").await?.text().await?,
    )?;
    std::fs::write(dir.join("key.json"), get("/api/v1/integrity/public-key").await?.text().await?)?;
    let key: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("key.json"))?)?;
    std::fs::write(dir.join("key.pem"), key["pem"].as_str().unwrap_or_default())?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifies_exports_and_checkpoints() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    fetch(dir).await?;
    let p = |name: &str| dir.join(name).display().to_string();
    let (export, checkpoint, key_pem, key_json) =
        (p("export.ndjson"), p("checkpoint.json"), p("key.pem"), p("key.json"));

    // Clean: exit 0, every link checked, the checkpoint's head found.
    for key in [&key_pem, &key_json] {
        let out = audctl(&["verify", &export, "--checkpoint", &checkpoint, "--public-key", key, "-o", "json"]);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        let report: Value = serde_json::from_slice(&out.stdout)?;
        assert_eq!(report["verified"], true, "{report}");
        assert_eq!(report["checked"], 50);
        assert_eq!(report["checkpointMatched"], true);
        assert_eq!(report["tenantId"], "acme");
    }
    assert_eq!(audctl(&["verify", &export]).status.code(), Some(0), "the chain alone");

    let lines: Vec<String> = std::fs::read_to_string(&export)?.lines().map(str::to_owned).collect();
    // An edited event: broken at its sequence.
    let mut edited = lines.clone();
    edited[2] = edited[2].replacen("\"u2\"", "\"mallory\"", 1);
    std::fs::write(dir.join("edited.ndjson"), edited.join("\n"))?;
    let out = audctl(&["verify", &p("edited.ndjson"), "-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!((report["verified"].clone(), report["brokenAt"].clone()), (json!(false), json!(3)), "{report}");

    // Truncated: the chain alone looks fine, the checkpoint says events were removed.
    std::fs::write(dir.join("cut.ndjson"), lines[..40].join("\n"))?;
    assert_eq!(audctl(&["verify", &p("cut.ndjson")]).status.code(), Some(0));
    let out =
        audctl(&["verify", &p("cut.ndjson"), "--checkpoint", &checkpoint, "--public-key", &key_pem, "-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout)?;
    assert!(report["reason"].as_str().is_some_and(|r| r.contains("removed")), "{report}");

    // A checkpoint altered after signing, and a key that did not sign it.
    let mut forged: Value = serde_json::from_str(&std::fs::read_to_string(&checkpoint)?)?;
    forged["checkpoints"][0]["sequence"] = json!(40);
    forged["checkpoints"][0]["hash"] = json!(serde_json::from_str::<Value>(&lines[39])?["hash"]);
    std::fs::write(dir.join("forged.json"), forged.to_string())?;
    let out = audctl(&[
        "verify",
        &p("cut.ndjson"),
        "--checkpoint",
        &p("forged.json"),
        "--public-key",
        &key_pem,
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "a forged checkpoint was accepted");
    let report: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(report["checkpoint"]["signatureValid"], false, "{report}");
    assert!(report["reason"].as_str().is_some_and(|r| r.contains("signature")), "{report}");
    let other = audit_server::checkpoint::Signer::generate_pem()?;
    std::fs::write(dir.join("other.pem"), &other)?;
    let signer = audit_server::checkpoint::Signer::from_pem_file(&dir.join("other.pem"), None)?;
    std::fs::write(dir.join("other-key.pem"), signer.public_key().pem)?;
    let out = audctl(&["verify", &export, "--checkpoint", &checkpoint, "--public-key", &p("other-key.pem")]);
    assert_eq!(out.status.code(), Some(1), "verified with a key that did not sign");

    // Usage errors: a missing file, a checkpoint without a key.
    assert_eq!(audctl(&["verify", &p("nope.ndjson")]).status.code(), Some(2));
    assert_eq!(audctl(&["verify", &export, "--checkpoint", &checkpoint]).status.code(), Some(2));

    // An empty export proves nothing: an input error alone, a failed verification with a checkpoint.
    std::fs::write(dir.join("empty.ndjson"), "")?;
    let out = audctl(&["verify", &p("empty.ndjson")]);
    assert_eq!(out.status.code(), Some(2), "an empty export verified");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no events"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = audctl(&["verify", &p("empty.ndjson"), "--checkpoint", &checkpoint, "--public-key", &key_pem]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    // A directory, and a line that is not JSON: input errors naming the file (and line).
    let out = audctl(&["verify", dir.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("directory"), "{}", String::from_utf8_lossy(&out.stderr));
    let mut garbled = lines.clone();
    garbled[4] = "<html>502 Bad Gateway</html>".into();
    std::fs::write(dir.join("garbled.ndjson"), garbled.join("\n"))?;
    let out = audctl(&["verify", &p("garbled.ndjson")]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:5: not JSON", p("garbled.ndjson"))), "{err}");

    // A key repeated in a line (valid JSON, kept last by a plain parser): the hash covers only the
    // real actor, a reader keeping the first sees another. Broken at that event, even with a valid
    // checkpoint.
    let mut doubled = lines.clone();
    doubled[2] = doubled[2].replacen('{', r#"{"actor":{"id":"EVIL","type":"USER"},"#, 1);
    assert!(doubled[2].matches("\"actor\"").count() == 2, "{}", doubled[2]);
    std::fs::write(dir.join("doubled.ndjson"), doubled.join("\n"))?;
    let out =
        audctl(&["verify", &p("doubled.ndjson"), "--checkpoint", &checkpoint, "--public-key", &key_pem, "-o", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let report: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(report["brokenAt"], 3, "{report}");
    assert!(report["reason"].as_str().is_some_and(|r| r.contains("line 3") && r.contains("twice")), "{report}");

    // A line that is JSON but no event (`null`): an input error naming the line, not a broken chain.
    let mut nulled = lines.clone();
    nulled[1] = "null".into();
    std::fs::write(dir.join("nulled.ndjson"), nulled.join("\n"))?;
    let out = audctl(&["verify", &p("nulled.ndjson")]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:2: not an event", p("nulled.ndjson"))), "{err}");

    // A checkpoint of another tenant: said so, not blamed on the events.
    let out = audctl(&["verify", &export, "--checkpoint", &p("receipt-globex.json"), "--public-key", &key_pem]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(r#"the signed checkpoint is tenant "globex"'s"#), "{table}");
    // An append's receipt is a checkpoint too (its `checkpoint` member), here of the last event.
    let out = audctl(&["verify", &export, "--checkpoint", &p("receipt.json"), "--public-key", &key_pem, "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        (report["checkpointMatched"].clone(), report["checkpoint"]["sequence"].clone()),
        (json!(true), json!(50))
    );
    // A receipt of an append without `?signed=true` holds no checkpoint: said so (exit 2).
    let mut unsigned: Value = serde_json::from_str(&std::fs::read_to_string(p("receipt.json"))?)?;
    unsigned.as_object_mut().map(|o| o.remove("checkpoint"));
    std::fs::write(dir.join("unsigned.json"), unsigned.to_string())?;
    let out = audctl(&["verify", &export, "--checkpoint", &p("unsigned.json"), "--public-key", &key_pem]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("?signed=true"), "{}", String::from_utf8_lossy(&out.stderr));
    // A byte order mark before the first line, as an editor may save it: the same export.
    std::fs::write(dir.join("bom.ndjson"), format!("\u{feff}{}", lines.join("\n")))?;
    let out = audctl(&["verify", &p("bom.ndjson"), "--checkpoint", &checkpoint, "--public-key", &key_pem]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));

    // A broken link is located by sequence and by line (a blank line makes them differ).
    let mut spaced = edited.clone();
    spaced.insert(1, String::new());
    std::fs::write(dir.join("spaced.ndjson"), spaced.join("\n"))?;
    let out = audctl(&["verify", &p("spaced.ndjson"), "-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!((report["brokenAt"].clone(), report["brokenAtLine"].clone()), (json!(3), json!(4)), "{report}");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let out = audctl(&["verify", &p("spaced.ndjson"), "-v"]);
    let err = err + &String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("at sequence 3 ({}:4)", p("spaced.ndjson"))), "{err}");

    // A missing event: the reason gives the sequence found, in words.
    let mut gap = lines.clone();
    gap.remove(2);
    std::fs::write(dir.join("gap.ndjson"), gap.join("\n"))?;
    let out = audctl(&["verify", &p("gap.ndjson"), "-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(report["reason"], "expected sequence 3, found 4 (events missing or out of order)", "{report}");
    Ok(())
}
