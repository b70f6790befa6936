//! `DATABASE_URL` with `sslmode=verify-full`: the server talks TLS to the testbed PostgreSQL (TLS
//! turned on at run time with a CA and a server certificate made by openssl), checks the
//! certificate against `sslrootcert` and the host name against the certificate, and refuses a
//! certificate of another CA or for another name.

#[macro_use]
mod common;

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use common::{ADMIN_KEY, Api, Backend, Db, event};

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl").args(args).current_dir(dir).output().context("running openssl")?;
    ensure!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// A CA (`<name>-ca.pem`) and, signed by it, a certificate for `localhost` only.
fn make_ca_and_server_cert(dir: &Path, name: &str) -> Result<()> {
    let ca_key = format!("{name}-ca.key");
    let ca = format!("{name}-ca.pem");
    openssl(dir, &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", &ca_key])?;
    openssl(
        dir,
        &["req", "-x509", "-new", "-key", &ca_key, "-subj", &format!("/CN={name} test CA"), "-days", "2", "-out", &ca],
    )?;
    openssl(dir, &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "server.key"])?;
    openssl(dir, &["req", "-new", "-key", "server.key", "-subj", "/CN=localhost", "-out", "server.csr"])?;
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.crt",
        ],
    )
}

/// The same URL with another host and query.
fn with(url: &str, host: &str, query: &str) -> String {
    let url = url.replacen("@127.0.0.1:", &format!("@{host}:"), 1);
    format!("{url}?{query}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_checks_the_certificate_and_the_host_name() -> Result<()> {
    let db = Db::new(Backend::Postgres, "tls").await?;
    let pg = db.pg.as_ref().context("PostgreSQL")?;
    let dir = db.dir.path();
    make_ca_and_server_cert(dir, "good")?;
    make_ca_and_server_cert(
        &{
            let other = dir.join("other");
            std::fs::create_dir_all(&other)?;
            other
        },
        "other",
    )?;
    // Into the data directory, owned by the server's user, key readable by it only.
    let data = pg.data_dir();
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(data)?);
    let group = std::os::unix::fs::MetadataExt::gid(&std::fs::metadata(data)?);
    for f in ["server.crt", "server.key"] {
        let to = data.join(f);
        std::fs::copy(dir.join(f), &to)?;
        std::os::unix::fs::chown(&to, Some(owner), Some(group))?;
        std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    }
    pg.sql("ALTER SYSTEM SET ssl = on").await?;
    pg.sql("SELECT pg_reload_conf()").await?;
    let url = db.url.clone().context("database URL")?;
    let good_ca = dir.join("good-ca.pem");
    let other_ca = dir.join("other/other-ca.pem");

    // The name in the certificate, the right CA: served over TLS.
    let mut config = db.config();
    config.database_url =
        Some(with(&url, "localhost", &format!("sslmode=verify-full&sslrootcert={}", good_ca.display())));
    let server = audit_server::spawn(config).await.context("verify-full with the right CA and name")?;
    let api = Api::of(&server);
    let (s, b) = api.post(ADMIN_KEY, "/api/v1/events", &event("tls", "u1", "LOGIN")).await?;
    ensure!(s == 201, "{s} {b}");
    let plain = pg
        .sql(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'audit-server'",
        )
        .await?;
    let (tls, not_tls) = plain.split_once('|').context("count|count")?;
    ensure!(tls.parse::<u32>()? > 0 && not_tls == "0", "audit-server sessions with TLS|without: {plain}");
    server.shutdown().await?;

    // Another CA, or an address the certificate does not name: refused at start, password unsaid.
    for (what, bad) in [
        (
            "a certificate of another CA",
            with(&url, "localhost", &format!("sslmode=verify-full&sslrootcert={}", other_ca.display())),
        ),
        (
            "a host name not in the certificate",
            with(&url, "127.0.0.1", &format!("sslmode=verify-full&sslrootcert={}", good_ca.display())),
        ),
    ] {
        let mut config = db.config();
        config.database_url = Some(bad);
        let err = match audit_server::spawn(config).await {
            Ok(s) => {
                s.shutdown().await?;
                anyhow::bail!("verify-full accepted {what}");
            }
            Err(e) => format!("{e:#}"),
        };
        ensure!(!err.contains(pg.password()), "the error shows the password: {err}");
        ensure!(err.contains("***"), "{what}: {err}");
        eprintln!("{what}: refused: {err}");
    }
    // verify-ca checks the CA but not the name: the address is accepted.
    let mut config = db.config();
    config.database_url =
        Some(with(&url, "127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={}", good_ca.display())));
    audit_server::spawn(config).await.context("verify-ca by address")?.shutdown().await
}
