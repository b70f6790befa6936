//! Tamper evidence anchored outside the database: signed checkpoints published to a directory
//! detect what the chain alone cannot (a tail cut with the chain head moved back, a restore of an
//! old backup), and the export re-verifies offline, the signature checked by openssl and the
//! chain by the independent Python verifier.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use common::{ADMIN_KEY, Api, Backend, Db, event};
use serde_json::{Value, json};

on_both!(
    tail_cut_with_head_rewrite_detected,
    one_diverged_tenant_leaves_the_others_signed,
    restore_of_old_backup_detected,
    export_verifies_offline,
    client_checkpoint_detects_truncation_and_rewrite,
    incremental_and_streamed_walks,
    background_verifier_reports_tampered_rows,
    signed_receipts_verify_independently,
    occurred_at_is_stored_and_hashed,
);

/// A key made by openssl (the format operators will use), else by the server's own generator.
pub fn signing_key(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("signing-key.pem");
    let made = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&path)
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        std::fs::write(&path, audit_server::checkpoint::Signer::generate_pem()?)?;
    }
    Ok(path)
}

async fn server(db: &Db) -> Result<(audit_server::RunningServer, Api, PathBuf)> {
    server_with(db, |_| {}).await
}

async fn server_with(
    db: &Db,
    adjust: impl FnOnce(&mut audit_server::Config),
) -> Result<(audit_server::RunningServer, Api, PathBuf)> {
    let mut config = db.config();
    let published = db.dir.path().join("published");
    config.signing_key_file = Some(signing_key(db.dir.path())?);
    config.checkpoint_dir = Some(published.clone());
    config.checkpoint_interval = None;
    adjust(&mut config);
    let server = audit_server::spawn(config).await?;
    let api = Api::of(&server);
    Ok((server, api, published))
}

async fn append(api: &Api, tenant: &str, n: usize, tag: &str) -> Result<()> {
    let batch = json!({"events": (0..n).map(|i| event(tenant, &format!("{tag}{i}"), "WRITE")).collect::<Vec<_>>()});
    let (s, b) = api.post(ADMIN_KEY, "/api/v1/events/batch", &batch).await?;
    ensure!(s == 201, "{b}");
    Ok(())
}

async fn checkpoint(api: &Api, tenant: &str) -> Result<(u16, Value)> {
    api.get(ADMIN_KEY, &format!("/api/v1/integrity/checkpoints?tenantId={tenant}")).await
}

async fn tail_cut_with_head_rewrite_detected(backend: Backend) -> Result<()> {
    let db = Db::new(backend, "tail_cut").await?;
    let (server, api, published) = server(&db).await?;
    for tenant in ["cut", "cut-unanchored"] {
        append(&api, tenant, 10, "u").await?;
    }
    let (s, cp) = checkpoint(&api, "cut").await?;
    ensure!(s == 200 && cp["checkpoints"][0]["sequence"] == 10, "{s} {cp}");
    ensure!(published.join("t_cut/latest.json").exists(), "the checkpoint was not published");
    let report = api.verify("cut").await?;
    ensure!(report["verified"] == true && report["checkpoint"]["sequence"] == 10, "{report}");

    // Remove the last three events and move the chain head back to match: consistent inside the
    // database.
    for tenant in ["cut", "cut-unanchored"] {
        db.exec(&format!(
            "DELETE FROM events WHERE tenant_id = '{tenant}' AND sequence > 7;
             UPDATE chain_heads SET last_sequence = 7,
               last_hash = (SELECT hash FROM events WHERE tenant_id = '{tenant}' AND sequence = 7)
             WHERE tenant_id = '{tenant}';"
        ))
        .await?;
    }
    // Without a checkpoint the cut is invisible (what the chain alone can prove)...
    let blind = api.verify("cut-unanchored").await?;
    ensure!(blind["verified"] == true && blind["checked"] == 7, "{blind}");
    // ...with one it is reported.
    let report = api.verify("cut").await?;
    ensure!(report["verified"] == false, "tail cut not detected: {report}");
    ensure!(report["firstBrokenAt"]["sequence"] == 8, "{report}");
    ensure!(report["firstBrokenAt"]["reason"].as_str().is_some_and(|r| r.contains("checkpoint")), "{report}");
    // And the server refuses to sign over it.
    let (s, b) = checkpoint(&api, "cut").await?;
    ensure!(s == 409 && b["error"] == "chain_diverged", "{s} {b}");
    server.shutdown().await
}

async fn one_diverged_tenant_leaves_the_others_signed(backend: Backend) -> Result<()> {
    let db = Db::new(backend, "one_diverged").await?;
    let (server, api, published) = server(&db).await?;
    append(&api, "div", 5, "a").await?;
    append(&api, "fine", 3, "a").await?;
    let (s, all) = api.get(ADMIN_KEY, "/api/v1/integrity/checkpoints").await?;
    ensure!(s == 200 && all["checkpoints"].as_array().map(Vec::len) == Some(2), "{s} {all}");
    ensure!(all.get("diverged").is_none(), "nothing diverged yet: {all}");
    // Events 4 and 5 of `div` (5: its checkpoint's) removed, then appended to: the head is past
    // the checkpoint, and the checkpoint's event is gone.
    db.exec("DELETE FROM events WHERE tenant_id = 'div' AND sequence IN (4, 5)").await?;
    append(&api, "div", 2, "b").await?;
    append(&api, "fine", 1, "b").await?;
    let (s, all) = api.get(ADMIN_KEY, "/api/v1/integrity/checkpoints").await?;
    ensure!(s == 200, "one diverged tenant refused the whole request: {s} {all}");
    let signed: Vec<(&str, i64)> = all["checkpoints"]
        .as_array()
        .context("checkpoints")?
        .iter()
        .filter_map(|c| Some((c["tenantId"].as_str()?, c["sequence"].as_i64()?)))
        .collect();
    ensure!(signed == [("fine", 4)], "{all}");
    ensure!(all["diverged"][0]["tenantId"] == "div", "{all}");
    let problem = all["diverged"][0]["problem"].as_str().unwrap_or_default();
    ensure!(problem.contains("event 5 of the published checkpoint") && problem.contains("missing"), "{all}");
    // Asked for alone, the diverged tenant is a 409 saying the same.
    let (s, b) = checkpoint(&api, "div").await?;
    ensure!(
        s == 409 && b["error"] == "chain_diverged" && b["message"].as_str().unwrap_or_default().contains("missing"),
        "{s} {b}"
    );
    // A tenant without events gets a checkpoint of the empty chain, and nothing is published for it.
    let (s, b) = checkpoint(&api, "nobody").await?;
    ensure!(s == 200 && b["checkpoints"][0]["sequence"] == 0, "{s} {b}");
    ensure!(!published.join("t_nobody").exists(), "a directory was created for a tenant without events");
    ensure!(published.join("t_fine/latest.json").exists(), "{}", published.display());
    server.shutdown().await
}

async fn restore_of_old_backup_detected(backend: Backend) -> Result<()> {
    let db = Db::new(backend, "old_backup").await?;
    let (server, api, _) = server(&db).await?;
    append(&api, "rb", 5, "before").await?;
    db.exec(
        "CREATE TABLE backup_events AS SELECT * FROM events WHERE tenant_id = 'rb';
         CREATE TABLE backup_heads AS SELECT * FROM chain_heads WHERE tenant_id = 'rb';",
    )
    .await?;
    append(&api, "rb", 5, "lost").await?;
    let (s, cp) = checkpoint(&api, "rb").await?;
    ensure!(s == 200 && cp["checkpoints"][0]["sequence"] == 10, "{cp}");
    // Restore the old backup, then keep writing: sequences 6..12 are reused with other events.
    db.exec(
        "DELETE FROM events WHERE tenant_id = 'rb'; DELETE FROM chain_heads WHERE tenant_id = 'rb';
         INSERT INTO events SELECT * FROM backup_events; INSERT INTO chain_heads SELECT * FROM backup_heads;",
    )
    .await?;
    append(&api, "rb", 7, "after").await?;
    let report = api.verify("rb").await?;
    ensure!(report["verified"] == false, "restore of an old backup not detected: {report}");
    ensure!(report["firstBrokenAt"]["sequence"] == 10 && report["checked"] == 9, "{report}");
    server.shutdown().await
}

async fn export_verifies_offline(backend: Backend) -> Result<()> {
    let db = Db::new(backend, "offline").await?;
    let (server, api, _) = server(&db).await?;
    append(&api, "off", 700, "e").await?; // more than one export page
    append(&api, "off", 500, "f").await?;
    append(&api, "other", 3, "o").await?;
    let (s, cp) = checkpoint(&api, "off").await?;
    ensure!(s == 200, "{cp}");
    let r = api.http.get(api.url("/api/v1/integrity/public-key")).send().await?;
    ensure!(r.status() == 200, "{}", r.status());
    let key: Value = r.json().await?;
    let r = api.http.get(api.url("/api/v1/events/export?tenantId=off")).header("x-api-key", ADMIN_KEY).send().await?;
    ensure!(r.status() == 200, "{}", r.status());
    ensure!(
        r.headers().get("content-type").and_then(|v| v.to_str().ok()) == Some("application/x-ndjson"),
        "{:?}",
        r.headers()
    );
    let export = r.text().await?;
    ensure!(export.lines().count() == 1200, "{} lines", export.lines().count());

    let dir = db.dir.path();
    std::fs::write(dir.join("export.ndjson"), &export)?;
    std::fs::write(dir.join("checkpoint.json"), cp["checkpoints"][0].to_string())?;
    std::fs::write(dir.join("public.pem"), key["pem"].as_str().unwrap_or_default())?;
    let out = python(&[dir.join("export.ndjson"), dir.join("checkpoint.json")])?;
    ensure!(out == "verified 1200", "independent verifier: {out}");
    // The signature, checked by openssl over the bytes the Python verifier canonicalized.
    let sig = base64_decode(cp["checkpoints"][0]["signature"].as_str().unwrap_or_default())?;
    std::fs::write(dir.join("checkpoint.sig"), sig)?;
    let openssl = |message: &str| {
        std::process::Command::new("openssl")
            .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
            .arg(dir.join("public.pem"))
            .arg("-in")
            .arg(dir.join(message))
            .arg("-sigfile")
            .arg(dir.join("checkpoint.sig"))
            .output()
    };
    if let Ok(ok) = openssl("checkpoint.json.signed") {
        ensure!(ok.status.success(), "openssl rejects the signature: {}", String::from_utf8_lossy(&ok.stdout));
        std::fs::write(dir.join("forged"), "{\"sequence\":1}")?;
        ensure!(!openssl("forged").context("openssl")?.status.success(), "openssl accepts anything");
    }
    // A truncated export does not contain the checkpoint.
    let cut: String = export.lines().take(1000).map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join("cut.ndjson"), cut)?;
    let out = python(&[dir.join("cut.ndjson"), dir.join("checkpoint.json")])?;
    ensure!(out.contains("not matched"), "{out}");
    server.shutdown().await
}

fn python(args: &[PathBuf]) -> Result<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/verify_export.py");
    let out = std::process::Command::new("python3").arg(script).args(args).output().context("running python3")?;
    Ok(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)).trim().to_owned())
}

fn base64_decode(s: &str) -> Result<Vec<u8>> {
    use base64::Engine;
    Ok(base64::engine::general_purpose::STANDARD.decode(s)?)
}

/// `GET /integrity/verify?checkpoint=` with the URL-encoded JSON of a checkpoint.
async fn verify_with(api: &Api, tenant: &str, checkpoint: &Value) -> Result<(u16, Value)> {
    let r = api
        .http
        .get(api.url("/api/v1/integrity/verify"))
        .query(&[("tenantId", tenant), ("checkpoint", &checkpoint.to_string())])
        .header("x-api-key", ADMIN_KEY)
        .send()
        .await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.unwrap_or(Value::Null)))
}

/// The client keeps its own copy of a checkpoint: whoever rewrites the database and the published
/// directory together is still caught.
async fn client_checkpoint_detects_truncation_and_rewrite(backend: Backend) -> Result<()> {
    let db = Db::new(backend, "client_cp").await?;
    let (server, api, published) = server(&db).await?;
    append(&api, "kept", 10, "a").await?;
    let (s, list) = checkpoint(&api, "kept").await?;
    ensure!(s == 200, "{list}");
    let cp = list["checkpoints"][0].clone();
    append(&api, "kept", 5, "b").await?;
    let (s, r) = verify_with(&api, "kept", &cp).await?;
    ensure!(s == 200 && r["verified"] == true && r["checkpointMatch"] == "matched", "{s} {r}");
    ensure!(r["checkpoint"] == cp && r["checked"] == 15, "{r}");

    // Refused: not JSON, another tenant's checkpoint, an altered one, one signed by another key.
    let (s, r) = api.get(ADMIN_KEY, "/api/v1/integrity/verify?tenantId=kept&checkpoint=nope").await?;
    ensure!(s == 400 && r["details"][0]["field"] == "checkpoint", "{s} {r}");
    append(&api, "other", 1, "o").await?;
    let (_, other) = checkpoint(&api, "other").await?;
    let (s, r) = verify_with(&api, "kept", &other["checkpoints"][0]).await?;
    ensure!(s == 400 && r["details"][0]["message"].as_str().is_some_and(|m| m.contains("tenant")), "{s} {r}");
    let mut altered = cp.clone();
    altered["sequence"] = json!(3);
    let (s, r) = verify_with(&api, "kept", &altered).await?;
    ensure!(s == 400 && r["details"][0]["message"].as_str().is_some_and(|m| m.contains("verify")), "{s} {r}");
    let foreign_key = db.dir.path().join("foreign.pem");
    std::fs::write(&foreign_key, audit_server::checkpoint::Signer::generate_pem()?)?;
    let foreign = audit_server::checkpoint::Signer::from_pem_file(&foreign_key, None)?;
    let forged = serde_json::to_value(foreign.sign("kept", 10, cp["hash"].as_str().unwrap_or_default()))?;
    let (s, r) = verify_with(&api, "kept", &forged).await?;
    ensure!(s == 400, "a checkpoint signed by another key was accepted: {s} {r}");

    // Tail cut with the head moved back, and the published directory wiped with it.
    db.exec(
        "DELETE FROM events WHERE tenant_id = 'kept' AND sequence > 7;
         UPDATE chain_heads SET last_sequence = 7,
           last_hash = (SELECT hash FROM events WHERE tenant_id = 'kept' AND sequence = 7)
         WHERE tenant_id = 'kept';",
    )
    .await?;
    std::fs::remove_dir_all(&published)?;
    let blind = api.verify("kept").await?;
    ensure!(blind["verified"] == true && blind.get("checkpoint").is_none(), "{blind}");
    let (s, r) = verify_with(&api, "kept", &cp).await?;
    ensure!(s == 200 && r["verified"] == false && r["checkpointMatch"] == "truncated", "{s} {r}");
    ensure!(r["firstBrokenAt"]["sequence"] == 8, "{r}");

    // Rewritten: the tenant's history replaced by another one of the same length and more.
    db.exec("DELETE FROM events WHERE tenant_id = 'kept'; DELETE FROM chain_heads WHERE tenant_id = 'kept';").await?;
    append(&api, "kept", 12, "z").await?;
    ensure!(api.verify("kept").await?["verified"] == true, "the rewritten chain is consistent in itself");
    let (s, r) = verify_with(&api, "kept", &cp).await?;
    ensure!(s == 200 && r["verified"] == false && r["checkpointMatch"] == "rewritten", "{s} {r}");
    ensure!(r["firstBrokenAt"]["sequence"] == 10 && r["checked"] == 9, "{r}");
    server.shutdown().await
}

/// Edit the stored body of one event (its hash no longer matches).
async fn tamper(db: &Db, tenant: &str, sequence: i64) -> Result<()> {
    db.exec(&format!(
        "UPDATE events SET body = replace(body, 'SECURITY', 'HARMLESS') WHERE tenant_id = '{tenant}' AND sequence = \
         {sequence}"
    ))
    .await
}

async fn incremental_and_streamed_walks(backend: Backend) -> Result<()> {
    let db = Db::new(backend, "incremental").await?;
    let (server, api, _) = server(&db).await?;
    let incremental = |api: &Api| {
        let api = api.clone();
        async move { api.get(ADMIN_KEY, "/api/v1/integrity/verify?tenantId=inc&incremental=true").await }
    };
    append(&api, "inc", 1000, "a").await?;
    append(&api, "inc", 500, "b").await?;
    // No verified position yet: the incremental walk is a full one, and records the head.
    let (s, r) = incremental(&api).await?;
    ensure!(s == 200 && r["verified"] == true && r["checked"] == 1500 && r.get("verifiedFrom").is_none(), "{r}");
    append(&api, "inc", 20, "c").await?;
    let (_, r) = incremental(&api).await?;
    ensure!(r["verified"] == true && r["verifiedFrom"] == 1500 && r["checked"] == 20, "{r}");

    // Streamed: a progress line per page, then the report; a full walk.
    let resp = api
        .http
        .get(api.url("/api/v1/integrity/verify?tenantId=inc"))
        .header("x-api-key", ADMIN_KEY)
        .header("accept", "application/x-ndjson")
        .send()
        .await?;
    ensure!(resp.headers().get("content-type").is_some_and(|v| v == "application/x-ndjson"), "{:?}", resp.headers());
    let text = resp.text().await?;
    let lines: Vec<Value> = text.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    ensure!(lines.len() == 3 && lines[0]["checked"] == 1000 && lines[1]["checked"] == 1520, "{text}");
    ensure!(lines[2]["verified"] == true && lines[2]["checked"] == 1520, "{text}");

    // An event after the verified position is edited: the incremental walk finds it.
    append(&api, "inc", 10, "d").await?;
    tamper(&db, "inc", 1525).await?;
    let (_, r) = incremental(&api).await?;
    ensure!(r["verified"] == false && r["firstBrokenAt"]["sequence"] == 1525 && r["verifiedFrom"] == 1520, "{r}");
    // An event before it: only a full walk finds it (the documented limit of incremental walks).
    db.exec("UPDATE events SET body = replace(body, 'HARMLESS', 'SECURITY') WHERE tenant_id = 'inc'").await?;
    tamper(&db, "inc", 5).await?;
    let (_, r) = incremental(&api).await?;
    ensure!(r["verified"] == true && r["verifiedFrom"] == 1520, "{r}");
    let r = api.verify("inc").await?;
    ensure!(r["verified"] == false && r["firstBrokenAt"]["sequence"] == 5, "{r}");
    db.exec("UPDATE events SET body = replace(body, 'HARMLESS', 'SECURITY') WHERE tenant_id = 'inc'").await?;

    // That incremental walk recorded 1530. Moved forward without the key, the position is
    // ignored: the walk is full again.
    append(&api, "inc", 10, "e").await?;
    db.exec(
        "UPDATE verified_positions SET sequence = 1540,
           checkpoint = replace(checkpoint, '\"sequence\":1530', '\"sequence\":1540') WHERE tenant_id = 'inc'",
    )
    .await?;
    let (_, r) = incremental(&api).await?;
    ensure!(r["verified"] == true && r.get("verifiedFrom").is_none() && r["checked"] == 1540, "{r}");
    // A rollback below the verified position is reported even without a published checkpoint.
    db.exec(
        "DELETE FROM events WHERE tenant_id = 'inc' AND sequence > 1000;
         UPDATE chain_heads SET last_sequence = 1000,
           last_hash = (SELECT hash FROM events WHERE tenant_id = 'inc' AND sequence = 1000)
         WHERE tenant_id = 'inc';",
    )
    .await?;
    let (_, r) = incremental(&api).await?;
    ensure!(r["verified"] == false && r["firstBrokenAt"]["sequence"] == 1540, "{r}");
    server.shutdown().await
}

/// The value of an unlabelled series in a Prometheus scrape.
async fn metric(api: &Api, name: &str) -> Result<f64> {
    let text = api.http.get(api.url("/actuator/prometheus")).send().await?.text().await?;
    let line = text.lines().find(|l| l.split(' ').next() == Some(name)).with_context(|| format!("no {name}"))?;
    Ok(line.rsplit(' ').next().unwrap_or_default().parse()?)
}

async fn wait_for_metric(api: &Api, what: &str, ok: impl Fn(&dyn Fn(&str) -> f64) -> bool) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let mut values = std::collections::HashMap::new();
        for name in
            ["audit_integrity_tenants_failed", "audit_integrity_tenants_verified", "audit_integrity_passes_total"]
        {
            values.insert(name, metric(api, name).await?);
        }
        if ok(&|n: &str| values.get(n).copied().unwrap_or(f64::NAN)) {
            return Ok(());
        }
        ensure!(std::time::Instant::now() < deadline, "{what}: metrics still {values:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn background_verifier_reports_tampered_rows(backend: Backend) -> Result<()> {
    let db = Db::new(backend, "background").await?;
    let (server, api, _) = server_with(&db, |c| {
        c.verify_interval = Some(std::time::Duration::from_millis(200));
    })
    .await?;
    ensure!(metric(&api, "audit_integrity_tenants_failed").await? == 0.0, "failed before any pass");
    append(&api, "bg", 10, "a").await?;
    append(&api, "bg-ok", 10, "a").await?;
    wait_for_metric(&api, "both tenants verified", |m| {
        m("audit_integrity_tenants_verified") == 2.0 && m("audit_integrity_tenants_failed") == 0.0
    })
    .await?;
    ensure!(metric(&api, "audit_integrity_last_pass_timestamp_seconds").await? > 1.7e9, "no pass time");
    // Passes after the first are incremental (full every 24 h). The newest event is edited: a
    // pass sees it whether it runs before (the walk after position 10) or after the position moved
    // to 15 (the position's own event is re-hashed).
    append(&api, "bg", 5, "b").await?;
    tamper(&db, "bg", 15).await?;
    wait_for_metric(&api, "the tampered tenant", |m| {
        m("audit_integrity_tenants_failed") == 1.0 && m("audit_integrity_tenants_verified") == 1.0
    })
    .await?;
    // It stays reported on later passes (walked in full while broken), and clears once repaired.
    let passes = metric(&api, "audit_integrity_passes_total").await?;
    wait_for_metric(&api, "later passes", |m| m("audit_integrity_passes_total") >= passes + 2.0).await?;
    ensure!(metric(&api, "audit_integrity_tenants_failed").await? == 1.0, "the broken tenant was forgotten");
    db.exec("UPDATE events SET body = replace(body, 'HARMLESS', 'SECURITY') WHERE tenant_id = 'bg'").await?;
    wait_for_metric(&api, "repaired", |m| m("audit_integrity_tenants_failed") == 0.0).await?;
    server.shutdown().await?;

    // Full passes (every pass here) find an edit of an event verified long ago.
    let (server, api, _) = server_with(&db, |c| {
        c.verify_interval = Some(std::time::Duration::from_millis(200));
        c.verify_full_interval = std::time::Duration::ZERO;
    })
    .await?;
    wait_for_metric(&api, "verified again", |m| m("audit_integrity_tenants_verified") == 2.0).await?;
    tamper(&db, "bg-ok", 2).await?;
    wait_for_metric(&api, "old row", |m| m("audit_integrity_tenants_failed") == 1.0).await?;
    server.shutdown().await
}

/// The bytes a receipt's signature covers, written out here (RFC 8785 of five members: keys in
/// order, no whitespace), not by the server's canonical form.
fn receipt_signed_text(tenant: &str, r: &Value) -> String {
    format!(
        r#"{{"hash":"{}","issuedAt":"{}","keyId":"{}","sequence":{},"tenantId":"{tenant}"}}"#,
        r["hash"].as_str().unwrap_or_default(),
        r["timestamp"].as_str().unwrap_or_default(),
        r["checkpoint"]["keyId"].as_str().unwrap_or_default(),
        r["sequence"]
    )
}

/// `openssl pkeyutl -verify` of a signature over `message`.
fn openssl_verifies(dir: &Path, public_pem: &str, message: &str, signature_b64: &str) -> Result<bool> {
    std::fs::write(dir.join("receipt.pub.pem"), public_pem)?;
    std::fs::write(dir.join("receipt.msg"), message)?;
    std::fs::write(dir.join("receipt.sig"), base64_decode(signature_b64)?)?;
    let out = std::process::Command::new("openssl")
        .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
        .arg(dir.join("receipt.pub.pem"))
        .arg("-in")
        .arg(dir.join("receipt.msg"))
        .arg("-sigfile")
        .arg(dir.join("receipt.sig"))
        .output()
        .context("running openssl (needed for this test)")?;
    Ok(out.status.success())
}

async fn signed_receipts_verify_independently(backend: Backend) -> Result<()> {
    let db = Db::new(backend, "receipts").await?;
    let (server, api, _) = server(&db).await?;
    let (s, key) = api.get(ADMIN_KEY, "/api/v1/integrity/public-key").await?;
    ensure!(s == 200, "{key}");
    let pem = key["pem"].as_str().unwrap_or_default().to_owned();
    let dir = db.dir.path();

    let (s, plain) = api.post(ADMIN_KEY, "/api/v1/events", &event("rcpt", "u0", "LOGIN")).await?;
    ensure!(s == 201 && plain.get("checkpoint").is_none(), "unsigned by default: {plain}");
    let (s, one) = api.post(ADMIN_KEY, "/api/v1/events?signed=true", &event("rcpt", "u1", "LOGIN")).await?;
    ensure!(s == 201, "{one}");
    let batch = json!({"events": (2..5).map(|i| event("rcpt", &format!("u{i}"), "WRITE")).collect::<Vec<_>>()});
    let r = api
        .http
        .post(api.url("/api/v1/events/batch?signed=true"))
        .header("x-api-key", ADMIN_KEY)
        .header("idempotency-key", "signed-batch")
        .json(&batch)
        .send()
        .await?;
    ensure!(r.status() == 201, "{}", r.status());
    let batch_answer: Value = r.json().await?;
    let mut receipts = vec![one.clone()];
    receipts.extend(batch_answer["results"].as_array().cloned().unwrap_or_default());
    ensure!(receipts.len() == 4, "{batch_answer}");
    for r in &receipts {
        let cp = &r["checkpoint"];
        ensure!(cp["tenantId"] == "rcpt" && cp["sequence"] == r["sequence"] && cp["hash"] == r["hash"], "{r}");
        ensure!(cp["keyId"] == key["keyId"] && cp["issuedAt"] == r["timestamp"], "{r}");
        let text = receipt_signed_text("rcpt", r);
        let signature = cp["signature"].as_str().unwrap_or_default();
        ensure!(openssl_verifies(dir, &pem, &text, signature)?, "openssl rejects the receipt's signature: {r}");
        let forged = text.replace(r["hash"].as_str().unwrap_or_default(), &"0".repeat(64));
        ensure!(!openssl_verifies(dir, &pem, &forged, signature)?, "openssl accepts a forged link");
    }
    // A replay answers the same signed receipts; a receipt serves as a checkpoint.
    let r = api
        .http
        .post(api.url("/api/v1/events/batch?signed=true"))
        .header("x-api-key", ADMIN_KEY)
        .header("idempotency-key", "signed-batch")
        .json(&batch)
        .send()
        .await?;
    ensure!(r.status() == 201, "{}", r.status());
    ensure!(r.json::<Value>().await? == batch_answer, "the replay differs");
    let (s, report) = verify_with(&api, "rcpt", &receipts[3]["checkpoint"]).await?;
    ensure!(s == 200 && report["checkpointMatch"] == "matched", "{s} {report}");
    let (s, b) = api.post(ADMIN_KEY, "/api/v1/events?signed=maybe", &event("rcpt", "u9", "LOGIN")).await?;
    ensure!(s == 400, "{s} {b}");
    server.shutdown().await?;

    if backend == Backend::Postgres {
        // Without a signing key (PostgreSQL), a signed receipt is refused before anything is stored.
        let server = audit_server::spawn(db.config()).await?;
        let api = Api::of(&server);
        let (s, b) = api.post(ADMIN_KEY, "/api/v1/events?signed=true", &event("rcpt", "u9", "LOGIN")).await?;
        ensure!(s == 400 && b["details"][0]["field"] == "signed", "{s} {b}");
        ensure!(api.all_events("rcpt").await?.len() == 5, "an event was stored");
        server.shutdown().await?;
    }
    Ok(())
}

/// A client's `occurredAt` is stored normalised, returned, and covered by the hash: the README's
/// Python recipe re-verifies the export, and editing it breaks the chain.
async fn occurred_at_is_stored_and_hashed(backend: Backend) -> Result<()> {
    let db = Db::new(backend, "occurred").await?;
    let (server, api, _) = server(&db).await?;
    let mut e = event("occ", "u1", "LOGIN");
    e["occurredAt"] = json!("2026-01-31T14:00:00.25+02:00");
    let (s, receipt) = api.post(ADMIN_KEY, "/api/v1/events", &e).await?;
    ensure!(s == 201, "{receipt}");
    let (s, stored) =
        api.get(ADMIN_KEY, &format!("/api/v1/events/{}", receipt["id"].as_str().unwrap_or_default())).await?;
    ensure!(s == 200 && stored["occurredAt"] == "2026-01-31T12:00:00.250000Z", "{stored}");
    append(&api, "occ", 3, "x").await?; // events without it keep their form
    e["occurredAt"] = json!("2026-01-31T12:00:00.0000001Z");
    let (s, b) = api.post(ADMIN_KEY, "/api/v1/events", &e).await?;
    ensure!(s == 400 && b["details"][0]["field"] == "occurredAt", "sub-microsecond accepted: {s} {b}");

    let r = api.http.get(api.url("/api/v1/events/export?tenantId=occ")).header("x-api-key", ADMIN_KEY).send().await?;
    let export = r.text().await?;
    ensure!(
        export.lines().next().is_some_and(|l| l.contains("\"occurredAt\":\"2026-01-31T12:00:00.250000Z\"")),
        "{export}"
    );
    let path = db.dir.path().join("occ.ndjson");
    std::fs::write(&path, &export)?;
    let out = python(&[path])?;
    ensure!(out == "verified 4", "independent verifier: {out}");
    // Covered by the hash: another instant in the stored body breaks the first link.
    db.exec("UPDATE events SET body = replace(body, '2026-01-31T12:00:00.250000Z', '2026-01-30T12:00:00.250000Z')")
        .await?;
    let report = api.verify("occ").await?;
    ensure!(report["verified"] == false && report["firstBrokenAt"]["sequence"] == 1, "{report}");
    server.shutdown().await
}
