//! PostgreSQL probes against the testbed's real servers, in good states and in bad states made for
//! real: a replica lagging (replay paused) and stopped, archiving failing (archive dir not writable),
//! tuning off, connections exhausted, wrong password, nothing listening, chain heads tampered with.
//!
//! Each test owns its server and walks its scenarios in order (each one restored or last).

mod probes_common;

use std::os::unix::fs::PermissionsExt;

use audctl::probes::{ErrorCause, Status};
use audctl_targets::{PostgresTarget, Secret, Targets};
use probes_common::{all_error, assert_status, context, row, run, values, values_yaml, wait_for};
use sqlx::Connection;
use testbed::{PgOptions, postgres_with};

fn targets(pg: PostgresTarget) -> Targets {
    Targets { postgres: Some(pg), ..Default::default() }
}

async fn sql_on(url: &str, sql: &str) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut conn).await?;
    conn.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_and_archiving() -> anyhow::Result<()> {
    let pg = postgres_with(PgOptions { replica: true, archive: true, ..Default::default() }).await?;
    let t = targets(pg.target());
    let one_replica = values(&["postgresql.readReplicas.replicaCount=1"]);

    // Good: one replica streaming, no lag.
    let f = wait_for(&t, &one_replica, "postgres.replication", 60, |f| f.status == Status::Pass).await;
    assert_eq!(row(&f, "streaming replicas").actual, "1", "{f:#?}");
    // A user without pg_monitor cannot see replication: ERROR forbidden, never a false count.
    pg.sql("CREATE ROLE plain_user LOGIN PASSWORD 'plain-pw-1'").await?;
    let mut plain = pg.target();
    plain.url = plain.url.replace("audctl@", "plain_user@");
    plain.password = Some(Secret::Inline("plain-pw-1".into()));
    let f = run(&context(targets(plain), one_replica.clone()), "postgres.replication").await;
    assert_eq!((f.status, f.cause), (Status::Error, Some(ErrorCause::Forbidden)), "{f:#?}");
    // Values asking for two: FAIL naming both numbers.
    let f = run(&context(t.clone(), values(&["postgresql.readReplicas.replicaCount=2"])), "postgres.replication").await;
    assert_status(&f, Status::Fail);
    assert!(f.message.contains("streaming replicas = 1 (expected >= 2"), "{}", f.message);

    // Archiving: nothing archived yet on a fresh server is a FAIL; after a WAL switch, PASS.
    let f = run(&context(t.clone(), one_replica.clone()), "postgres.archiving").await;
    assert_eq!(row(&f, "archive_mode").actual, "on");
    pg.sql("CREATE TABLE warmup AS SELECT 1 AS x; SELECT pg_switch_wal()").await?;
    let f = wait_for(&t, &one_replica, "postgres.archiving", 60, |f| f.status == Status::Pass).await;
    assert!(row(&f, "last archived segment").actual.contains("s old"), "{f:#?}");
    // The archive directory is visible here: the reported segment must be in it.
    let archive = pg.wal_archive_dir().expect("archive dir").to_owned();
    let segment = f.comparisons.iter().find(|c| c.name.contains(" in ")).expect("a segment row").name.clone();
    let file = archive.join(segment.split(' ').next().expect("segment name"));
    assert!(file.is_file(), "{} missing", file.display());
    let kept = std::fs::read(&file)?;
    std::fs::remove_file(&file)?;
    let f = run(&context(t.clone(), one_replica.clone()), "postgres.archiving").await;
    assert_status(&f, Status::Fail);
    assert!(f.message.contains(&format!("{segment} = absent (expected present)")), "{}", f.message);
    std::fs::write(&file, kept)?;

    // Lagging replica: replay paused on the replica while the primary writes ~40 MB of WAL.
    let replica_url = pg.replica_url().expect("replica");
    sql_on(&replica_url, "SELECT pg_wal_replay_pause()").await?;
    pg.sql("CREATE TABLE big AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 150000) g").await?;
    let f = wait_for(&t, &one_replica, "postgres.replication", 60, |f| f.status == Status::Fail).await;
    let lag = f.comparisons.iter().find(|c| c.name.ends_with("replay lag")).expect("a replay lag row");
    assert!(!lag.ok && lag.expected == "<= 16 MB" && lag.actual.ends_with(" MB"), "{lag:?}");
    assert!(f.message.contains("replay lag ="), "{}", f.message);
    sql_on(&replica_url, "SELECT pg_wal_replay_resume()").await?;
    wait_for(&t, &one_replica, "postgres.replication", 120, |f| f.status == Status::Pass).await;

    // Archiving failing: the archive directory stops being writable.
    std::fs::set_permissions(&archive, std::fs::Permissions::from_mode(0o500))?;
    pg.sql("INSERT INTO warmup VALUES (2); SELECT pg_switch_wal()").await?;
    let f = wait_for(&t, &one_replica, "postgres.archiving", 90, |f| f.status == Status::Fail).await;
    let now = row(&f, "archiving now");
    assert!(!now.ok && now.expected == "succeeding" && now.actual.starts_with("failing ("), "{now:?}");
    assert!(f.hint.is_some());
    std::fs::set_permissions(&archive, std::fs::Permissions::from_mode(0o700))?;
    wait_for(&t, &one_replica, "postgres.archiving", 120, |f| f.status == Status::Pass).await;

    // Replica stopped (fast shutdown of its postmaster): no streaming replica left.
    let postmaster = *pg.replica_pids().first().expect("replica running");
    let out = std::process::Command::new("kill").args(["-INT", &postmaster.to_string()]).output()?;
    assert!(out.status.success(), "kill -INT {postmaster}: {out:?}");
    let f = wait_for(&t, &one_replica, "postgres.replication", 60, |f| f.status == Status::Fail).await;
    assert_eq!(row(&f, "streaming replicas").actual, "0", "{f:#?}");
    assert!(f.message.contains("streaming replicas = 0 (expected >= 1"), "{}", f.message);
    Ok(())
}

/// The guide's tuning on the live server where it can change without a restart; the two it cannot
/// (shared memory, connection slots) expected at the testbed's own values.
const RELOADABLE_GUIDE: &str = "ALTER SYSTEM SET effective_cache_size = '12GB'; ALTER SYSTEM SET maintenance_work_mem = '1GB'; \
    ALTER SYSTEM SET checkpoint_completion_target = 0.9; ALTER SYSTEM SET default_statistics_target = 100; \
    ALTER SYSTEM SET random_page_cost = 1.1; ALTER SYSTEM SET effective_io_concurrency = 200; \
    ALTER SYSTEM SET work_mem = '20MB'; ALTER SYSTEM SET min_wal_size = '1GB'; ALTER SYSTEM SET max_wal_size = '4GB'; \
    ALTER SYSTEM SET max_parallel_workers_per_gather = 4; ALTER SYSTEM SET max_parallel_workers = 8; \
    ALTER SYSTEM SET max_parallel_maintenance_workers = 4; SELECT pg_reload_conf()";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tuning_connections_and_credentials() -> anyhow::Result<()> {
    let mut pg = postgres_with(PgOptions::default()).await?;
    let t = targets(pg.target());

    // The guide's tuning against an untuned server: every difference named, units normalised.
    let f = run(&context(t.clone(), values(&[])), "postgres.tuning").await;
    assert_status(&f, Status::Fail);
    // Reference: the server's own rendering of the setting.
    assert_eq!(pg.sql("SHOW shared_buffers").await?, "32MB");
    let sb = row(&f, "shared_buffers");
    assert_eq!((sb.expected.as_str(), sb.actual.as_str()), ("4096 MB (4GB)", "32 MB (4096 x 8kB)"));
    assert!(f.message.contains("shared_buffers = 32 MB (4096 x 8kB) (expected 4096 MB (4GB))"), "{}", f.message);

    // Tuned: PASS.
    pg.sql(RELOADABLE_GUIDE).await?;
    let tuned = values_yaml(
        "postgresql:\n  parameters:\n    shared_buffers: 32MB\n    max_connections: \"100\"\n    wal_buffers: 1MB\n",
    );
    let f = wait_for(&t, &tuned, "postgres.tuning", 30, |f| f.status == Status::Pass).await;
    assert_eq!(f.comparisons.len(), 16, "{f:#?}");

    // One parameter off: FAIL on that one only.
    pg.sql("ALTER SYSTEM SET work_mem = '4MB'; SELECT pg_reload_conf()").await?;
    let f = wait_for(&t, &tuned, "postgres.tuning", 30, |f| f.status == Status::Fail).await;
    let bad: Vec<&str> = f.comparisons.iter().filter(|c| !c.ok).map(|c| c.name.as_str()).collect();
    assert_eq!(bad, ["work_mem"], "{f:#?}");
    assert!(f.message.contains("work_mem = 4 MB (4096kB) (expected 20 MB (20MB))"), "{}", f.message);

    // Headroom: the defaults' 2 pods x (20 + 4) fit in 97 usable slots; prod-like scale does not (WARN).
    let f = run(&context(t.clone(), values(&[])), "postgres.connections").await;
    assert_status(&f, Status::Pass);
    // The values claim a max_connections the live database does not have: the render accepts
    // them, the probe (which reads the live setting) warns.
    let big = values_yaml(
        "replicaCount: 10\nserver:\n  dbMaxConnections: 40\npostgresql:\n  parameters:\n    max_connections: \"1000\"\n",
    );
    let f = run(&context(t.clone(), big), "postgres.connections").await;
    assert_status(&f, Status::Warn);
    assert_eq!(
        row(&f, "server pools at full scale").actual,
        "440 (10 pods x (server.dbMaxConnections 40 + 4 append lanes))"
    );
    // Connections exhausted for real: max_connections 20 (restart), then 16 of 17 slots taken.
    pg.sql("ALTER SYSTEM SET max_connections = 20").await?;
    pg.restart_primary().await?;
    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(sqlx::PgConnection::connect(&pg.url()).await?);
    }
    let f = run(&context(t.clone(), values(&[])), "postgres.connections").await;
    assert_status(&f, Status::Fail);
    let used = row(&f, "connections in use");
    assert!(used.expected.contains("of 17 (max_connections 20 - 3 reserved)"), "{used:?}");
    assert!(used.actual.starts_with("17 (") || used.actual.starts_with("16 ("), "{used:?}");
    drop(held);

    // Wrong password: every PostgreSQL probe is an ERROR (forbidden), the password never shown.
    let mut wrong = pg.target();
    wrong.password = Some(Secret::Inline("not-the-password-42".into()));
    let ctx = context(targets(wrong), values(&[]));
    all_error(&ctx, "postgres.", ErrorCause::Forbidden, Some("not-the-password-42")).await;
    let f = run(&ctx, "postgres.reachable").await;
    assert!(f.message.contains("authentication failed"), "{}", f.message);
    let f = run(&context(t.clone(), values(&[])), "postgres.reachable").await;
    assert_status(&f, Status::Pass);
    assert!(!serde_json::to_string(&f)?.contains(pg.password()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_not_configured() -> anyhow::Result<()> {
    // Nothing listens on a freshly freed port: ERROR unreachable, quickly (refused).
    let port = testbed::free_port()?;
    let t = targets(PostgresTarget {
        url: format!("postgres://audit@127.0.0.1:{port}/audit"),
        password: Some(Secret::Inline("s3cret-xyz".into())),
        replicas: vec![],
        wal_archive: None,
    });
    let ctx = context(t, values(&[]));
    all_error(&ctx, "postgres.", ErrorCause::Unreachable, Some("s3cret-xyz")).await;
    let f = run(&ctx, "postgres.replication").await;
    assert!(f.message.contains(&format!("127.0.0.1:{port}")), "{}", f.message);
    // A server that accepts and never answers: ERROR unreachable within the connect timeout.
    let (_silent, port) = probes_common::silent_port();
    let t = targets(PostgresTarget {
        url: format!("postgres://audit@127.0.0.1:{port}/audit"),
        password: None,
        replicas: vec![],
        wal_archive: None,
    });
    let ctx = context(t, values(&[]));
    all_error(&ctx, "postgres.", ErrorCause::Unreachable, None).await;
    assert!(run(&ctx, "postgres.reachable").await.message.contains("no answer within 5s"));
    // No postgres entry in the targets file.
    all_error(&context(Targets::default(), values(&[])), "postgres.", ErrorCause::NotConfigured, None).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_and_chain_heads_of_a_real_audit_server() -> anyhow::Result<()> {
    let pg = postgres_with(PgOptions::default()).await?;
    // The postgres database has no audit tables: migrations FAIL, chain heads FAIL.
    let plain = targets(pg.target());
    let f = run(&context(plain.clone(), values(&[])), "postgres.migrations").await;
    assert_status(&f, Status::Fail);
    assert!(f.message.contains("_sqlx_migrations is absent"), "{}", f.message);

    // The audit server migrates its database at start; events for two tenants.
    let url = pg.create_database("audit").await?;
    let dir = tempfile::tempdir()?;
    let mut config = audit_server::Config::local(dir.path());
    config.listen = "127.0.0.1:0".parse()?;
    config.database_url = Some(url.clone());
    config.api_keys = vec![audit_server::ApiKeyConfig::plain("probe-test-key", &["*"])];
    let server = audit_server::spawn(config).await?;
    let client = reqwest::Client::new();
    for (tenant, n) in [("tenant-a", 3), ("tenant-b", 2)] {
        for i in 0..n {
            let event = serde_json::json!({
                "actor": {"id": "u1", "type": "USER"}, "action": {"type": "LOGIN"},
                "resource": {"id": format!("r{i}"), "type": "SESSION"},
                "metadata": {"source": "test", "tenantId": tenant},
            });
            let r = client
                .post(format!("{}/api/v1/events", server.base_url()))
                .header("x-api-key", "probe-test-key")
                .json(&event)
                .send()
                .await?;
            assert_eq!(r.status().as_u16(), 201, "{}", r.text().await?);
        }
    }
    server.shutdown().await?;

    let mut target = pg.target();
    target.url = target.url.replace("/postgres", "/audit");
    let t = targets(target);
    let f = run(&context(t.clone(), values(&[])), "postgres.migrations").await;
    assert_status(&f, Status::Pass);
    let f = run(&context(t.clone(), values(&[])), "postgres.chain-heads").await;
    assert_status(&f, Status::Pass);
    assert_eq!(f.comparisons.len(), 2, "{f:#?}");
    assert!(row(&f, "tenant tenant-a").actual.starts_with("head #3 "), "{f:#?}");

    // A stale head (one event behind): FAIL naming the tenant and both positions.
    sql_on(&url, "UPDATE chain_heads SET last_sequence = last_sequence - 1 WHERE tenant_id = 'tenant-b'").await?;
    let f = run(&context(t.clone(), values(&[])), "postgres.chain-heads").await;
    assert_status(&f, Status::Fail);
    let b = row(&f, "tenant tenant-b");
    assert!(b.expected.starts_with("head = last event #2 ") && b.actual.starts_with("head #1 "), "{b:?}");
    assert!(row(&f, "tenant tenant-a").ok);

    // A migration record tampered with (checksum) and one missing.
    sql_on(&url, "UPDATE _sqlx_migrations SET checksum = '\\x00'").await?;
    let f = run(&context(t.clone(), values(&[])), "postgres.migrations").await;
    assert_status(&f, Status::Fail);
    assert!(f.message.contains("checksum 00 (expected applied, checksum"), "{}", f.message);
    sql_on(&url, "DELETE FROM _sqlx_migrations").await?;
    let f = run(&context(t, values(&[])), "postgres.migrations").await;
    assert_status(&f, Status::Fail);
    assert!(f.comparisons.iter().all(|c| c.actual == "missing"), "{f:#?}");
    Ok(())
}
