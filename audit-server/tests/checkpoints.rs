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

on_both!(tail_cut_with_head_rewrite_detected, restore_of_old_backup_detected, export_verifies_offline);

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
    let mut config = db.config();
    let published = db.dir.path().join("published");
    config.signing_key_file = Some(signing_key(db.dir.path())?);
    config.checkpoint_dir = Some(published.clone());
    config.checkpoint_interval = None;
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
