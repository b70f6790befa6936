//! Durability with the data on a real disk, not tmpfs (the testbed's default, for speed): the
//! PostgreSQL cluster and the SQLite file live under /var/tmp (disk-backed by convention, and
//! traversable by the unprivileged user PostgreSQL runs as, unlike a target dir under /root), and the test
//! asserts that their filesystem is not a memory one, that the settings a 201 relies on are in force
//! for the server's own sessions (SQLite WAL + synchronous=FULL; PostgreSQL fsync,
//! synchronous_commit and full_page_writes on), and that events acknowledged before PostgreSQL is
//! killed with SIGKILL are all there after its crash recovery. One test in this binary: it points
//! the testbed at the disk through the environment before anything else runs.

mod common;

use std::path::Path;

use anyhow::{Context, Result, ensure};
use common::{ADMIN_KEY, Api, Backend, Db, event};

/// The filesystem type of the mount holding `path` (longest mount point prefix in mountinfo).
fn fs_type(path: &Path) -> Result<String> {
    let path = path.canonicalize()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut best: Option<(usize, String)> = None;
    for line in info.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS... - FSTYPE SOURCE SUPER
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(mount), Some(dash)) = (fields.get(4), fields.iter().position(|f| *f == "-")) else { continue };
        let mount = mount.replace("\\040", " ");
        if path.starts_with(&mount) && best.as_ref().is_none_or(|(len, _)| mount.len() > *len) {
            best = Some((mount.len(), fields.get(dash + 1).unwrap_or(&"").to_string()));
        }
    }
    best.map(|(_, t)| t).context("no mount found")
}

fn on_disk(path: &Path) -> Result<()> {
    let t = fs_type(path)?;
    ensure!(!["tmpfs", "ramfs"].contains(&t.as_str()), "{} is on {t}, not a disk", path.display());
    Ok(())
}

#[test]
fn durability_settings_on_a_real_disk() -> Result<()> {
    let base = Path::new("/var/tmp/audctl-durability");
    std::fs::create_dir_all(base)?;
    on_disk(base).context("this test needs /var/tmp on a disk")?;
    // SAFETY: the only test of this binary, before any thread of its own (runtime, testbed) starts.
    unsafe {
        std::env::set_var("AUDCTL_TESTBED_TMP", base);
        std::env::set_var("TMPDIR", base);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        // SQLite: the file on disk, WAL, synchronous=FULL (2) on the server's own connections.
        let db = Db::new(Backend::Sqlite, "durable").await?;
        let server = audit_server::spawn(db.config()).await?;
        let api = Api::of(&server);
        let (s, b) = api.post(ADMIN_KEY, "/api/v1/events", &event("durable", "u", "X")).await?;
        ensure!(s == 201, "{b}");
        on_disk(&db.dir.path().join("data/audit.db"))?;
        let settings = server.durability().await?;
        eprintln!("sqlite on {}: {settings:?}", fs_type(db.dir.path())?);
        ensure!(settings == [("journal_mode".into(), "wal".into()), ("synchronous".into(), "2".into())], "{settings:?}");
        server.shutdown().await?;

        // PostgreSQL: the cluster on disk, the durability settings on, a crash loses no 201.
        let mut db = Db::new(Backend::Postgres, "durable").await?;
        let server = audit_server::spawn(db.config()).await?;
        let api = Api::of(&server);
        let pg = db.pg.as_mut().context("PostgreSQL")?;
        on_disk(pg.data_dir())?;
        let settings = server.durability().await?;
        eprintln!("postgresql on {}: {settings:?}", fs_type(pg.data_dir())?);
        let on = |n: &str| settings.iter().any(|(k, v)| k == n && v == "on");
        ensure!(on("fsync") && on("synchronous_commit") && on("full_page_writes"), "{settings:?}");
        let mut acked = Vec::new();
        for i in 0..20 {
            let batch = serde_json::json!({"events": (0..50).map(|j| event("durable", &format!("u{i}-{j}"), "X")).collect::<Vec<_>>()});
            let (s, b) = api.post(ADMIN_KEY, "/api/v1/events/batch", &batch).await?;
            ensure!(s == 201, "{b}");
            acked.extend(b["results"].as_array().into_iter().flatten().filter_map(|r| r["id"].as_str().map(str::to_owned)));
        }
        pg.kill_primary_hard();
        pg.restart_primary().await?;
        let stored: std::collections::HashSet<String> =
            api.all_events("durable").await?.iter().filter_map(|e| e["id"].as_str().map(str::to_owned)).collect();
        let lost = acked.iter().filter(|id| !stored.contains(*id)).count();
        ensure!(lost == 0 && acked.len() == 1000, "{lost} of {} acknowledged events lost", acked.len());
        ensure!(api.verify("durable").await?["verified"] == true, "chain broken after the crash");
        server.shutdown().await
    })
}
