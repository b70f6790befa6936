//! The PostgreSQL testbed is real and usable through sqlx, the crate audctl and the audit server use.

use std::time::{Duration, Instant};

use sqlx::Row;
use sqlx::postgres::PgPoolOptions;
use testbed::{PgOptions, postgres, postgres_with};

async fn pool(url: &str) -> anyhow::Result<sqlx::PgPool> {
    Ok(PgPoolOptions::new().max_connections(2).acquire_timeout(Duration::from_secs(10)).connect(url).await?)
}

#[tokio::test]
async fn primary_answers_sqlx_and_databases_are_isolated() -> anyhow::Result<()> {
    let start = Instant::now();
    let pg = postgres().await?;
    eprintln!("primary ready in {:?}", start.elapsed());

    let db = pool(&pg.url()).await?;
    let version: String = sqlx::query_scalar("SHOW server_version").fetch_one(&db).await?;
    assert!(version.starts_with(|c: char| c.is_ascii_digit()), "server_version {version:?}");
    let fsync: String = sqlx::query_scalar("SHOW fsync").fetch_one(&db).await?;
    assert_eq!(fsync, "on", "durability tests rely on fsync");

    let url = pg.create_database("tenant_a").await?;
    assert!(url.ends_with("/tenant_a"), "{url}");
    let a = pool(&url).await?;
    sqlx::query("CREATE TABLE t (id int PRIMARY KEY)").execute(&a).await?;
    sqlx::query("INSERT INTO t VALUES (1), (2)").execute(&a).await?;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t").fetch_one(&a).await?;
    assert_eq!(n, 2);
    // The table exists only in its own database.
    let elsewhere: Option<String> = sqlx::query_scalar("SELECT to_regclass('t')::text").fetch_one(&db).await?;
    assert_eq!(elsewhere, None);

    assert!(pg.create_database("bad name; drop").await.is_err());
    // The target carries the password separately and never inside the URL.
    let target = pg.target();
    assert!(!target.url.contains(pg.password()), "password leaked into target url");
    assert!(target.password.is_some());
    Ok(())
}

#[tokio::test]
async fn wrong_password_is_refused() -> anyhow::Result<()> {
    let pg = postgres().await?;
    let bad = pg.url().replace(pg.password(), "not-the-password");
    let err = PgPoolOptions::new().max_connections(1).connect(&bad).await.err().map(|e| e.to_string());
    assert!(err.as_deref().is_some_and(|e| e.contains("password")), "expected an auth failure, got {err:?}");
    Ok(())
}

#[tokio::test]
async fn replica_streams_and_wal_is_archived() -> anyhow::Result<()> {
    let start = Instant::now();
    let pg = postgres_with(PgOptions { replica: true, archive: true, ..Default::default() }).await?;
    eprintln!("primary + replica + archive ready in {:?}", start.elapsed());

    let primary = pool(&pg.url()).await?;
    let rows =
        sqlx::query("SELECT application_name, state, sync_state FROM pg_stat_replication").fetch_all(&primary).await?;
    assert_eq!(rows.len(), 1, "one replica expected in pg_stat_replication");
    let state: String = rows[0].try_get("state")?;
    assert_eq!(state, "streaming");

    // A write on the primary becomes visible on the hot standby.
    sqlx::query("CREATE TABLE replicated (v text)").execute(&primary).await?;
    sqlx::query("INSERT INTO replicated VALUES ('hello')").execute(&primary).await?;
    let replica_url = pg.replica_url().ok_or_else(|| anyhow::anyhow!("no replica url"))?;
    let replica = pool(&replica_url).await?;
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(&replica).await?;
    assert!(in_recovery, "replica should be a standby");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen: Option<String> =
            sqlx::query_scalar("SELECT v FROM replicated").fetch_optional(&replica).await.ok().flatten();
        if seen.as_deref() == Some("hello") {
            break;
        }
        assert!(Instant::now() < deadline, "row not replicated within 60s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Switching WAL segment makes the archiver copy the finished one.
    let segment: String = sqlx::query_scalar("SELECT pg_walfile_name(pg_switch_wal())").fetch_one(&primary).await?;
    let archive = pg.wal_archive_dir().ok_or_else(|| anyhow::anyhow!("no archive dir"))?.to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !archive.join(&segment).exists() {
        assert!(Instant::now() < deadline, "segment {segment} not archived in {} within 60s", archive.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pg.target().wal_archive.as_deref(), Some(archive.as_path()));
    assert_eq!(pg.target().replicas.len(), 1);
    Ok(())
}

#[tokio::test]
async fn committed_rows_survive_a_hard_kill() -> anyhow::Result<()> {
    let mut pg = postgres().await?;
    let db = pool(&pg.url()).await?;
    sqlx::query("CREATE TABLE audit (id int)").execute(&db).await?;
    sqlx::query("INSERT INTO audit SELECT generate_series(1, 100)").execute(&db).await?;
    db.close().await;

    let before = pg.primary_pids();
    pg.kill_primary_hard();
    let survivors: Vec<i32> = before.into_iter().filter(|&pid| testbed::scratch::alive(pid)).collect();
    assert!(survivors.is_empty(), "processes survived the hard kill: {survivors:?}");
    // A plain TCP connect: a pool would retry until its acquire timeout.
    assert!(std::net::TcpStream::connect(("127.0.0.1", pg.port())).is_err(), "primary still listening after SIGKILL");
    pg.restart_primary().await?;

    let db = pool(&pg.url()).await?;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audit").fetch_one(&db).await?;
    assert_eq!(n, 100, "committed rows lost in crash recovery");
    Ok(())
}

#[tokio::test]
async fn processes_and_files_are_gone_after_drop() -> anyhow::Result<()> {
    let pg = postgres_with(PgOptions { replica: true, archive: false, ..Default::default() }).await?;
    let data = pg.data_dir().to_owned();
    // Postmasters and their backends (checkpointer, walsender, walreceiver...).
    let pids: Vec<i32> = pg.primary_pids().into_iter().chain(pg.replica_pids()).collect();
    assert!(pids.len() > 6, "expected both postmasters and their helpers, got {pids:?}");
    let start = Instant::now();
    drop(pg);
    eprintln!("stopped in {:?}", start.elapsed());
    let survivors: Vec<i32> = pids.into_iter().filter(|&pid| testbed::scratch::alive(pid)).collect();
    assert!(survivors.is_empty(), "processes survived drop: {survivors:?}");
    assert!(!data.exists(), "{} not removed", data.display());
    Ok(())
}
