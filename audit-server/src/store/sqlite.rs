//! SQLite store (the default with no DATABASE_URL): one file in the data directory, WAL mode,
//! `synchronous=FULL` so a 201 survives a crash. `BEGIN IMMEDIATE` takes the database write lock
//! before reading the chain head, which serializes appends across processes sharing the file.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use audit_api::{StoredEvent, VerifyReport};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool};
use uuid::Uuid;

use super::{
    AppendJob, JobOutcome, ListQuery, Phases, Run, Start, StoreError, StoredRow, TxError, Verifier, parse_receipts,
    plan,
};
use crate::chain;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

pub(crate) const COLUMNS: &str =
    "id, tenant_id, sequence, ts, actor_id, resource_id, action_type, body, hash, previous_hash";
/// Rows per INSERT statement: 10 parameters each stays far below SQLite's 32766 variables.
const ROWS_PER_INSERT: usize = 500;

pub struct SqliteStore {
    pool: SqlitePool,
    max: u32,
    /// Write an outbox row with every event (a consumer such as Kafka is configured).
    pub(crate) outbox: bool,
}

impl SqliteStore {
    /// `busy_timeout`: how long an append waits for the database write lock (then 503).
    pub async fn open(path: &Path, max_connections: u32, busy_timeout: Duration) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|e| StoreError::Internal(e.to_string()))?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(busy_timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await.map_err(|e| StoreError::Unavailable(format!("migrations: {e}")))?;
        Ok(SqliteStore { pool, max: max_connections, outbox: false })
    }

    /// All runs in one transaction (BEGIN IMMEDIATE holds the database write lock throughout).
    pub(crate) async fn append(&self, runs: &[&Run], phases: &mut Phases) -> Result<Vec<Vec<JobOutcome>>, TxError> {
        let t = std::time::Instant::now();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(|e| TxError::BeforeCommit(e.into()))?;
        let mut t = Phases::lap(&mut phases.begin, t);
        let mut outcomes = Vec::with_capacity(runs.len());
        for run in runs {
            let (o, next) = append_run(&mut tx, &run.tenant_id, &run.jobs, self.outbox, phases, t)
                .await
                .map_err(TxError::BeforeCommit)?;
            outcomes.push(o);
            t = next;
        }
        tx.commit().await.map_err(|e| TxError::AtCommit(e.into()))?;
        Phases::lap(&mut phases.commit, t);
        Ok(outcomes)
    }

    pub async fn get(&self, id: Uuid) -> Result<Option<StoredEvent>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM events WHERE id = ?");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id.to_string()).fetch_optional(&self.pool).await?;
        row.map(|r| to_row(&r)?.into_event()).transpose()
    }

    pub async fn list(&self, q: &ListQuery) -> Result<(Vec<StoredEvent>, bool), StoreError> {
        let mut b: QueryBuilder<Sqlite> = QueryBuilder::new(format!("SELECT {COLUMNS} FROM events WHERE tenant_id = "));
        b.push_bind(&q.tenant_id);
        if let Some(v) = &q.actor_id {
            b.push(" AND actor_id = ").push_bind(v);
        }
        if let Some(v) = &q.resource_id {
            b.push(" AND resource_id = ").push_bind(v);
        }
        if let Some(v) = &q.action_type {
            b.push(" AND action_type = ").push_bind(v);
        }
        if let Some(v) = q.from {
            b.push(" AND ts >= ").push_bind(chain::format_timestamp(v));
        }
        if let Some(v) = q.to {
            b.push(" AND ts < ").push_bind(chain::format_timestamp(v));
        }
        if let Some(after) = q.after_sequence {
            b.push(if q.descending { " AND sequence < " } else { " AND sequence > " }).push_bind(after);
        }
        b.push(if q.descending { " ORDER BY sequence DESC LIMIT " } else { " ORDER BY sequence LIMIT " });
        b.push_bind(i64::from(q.limit) + 1);
        let rows = b.build().fetch_all(&self.pool).await?;
        let more = rows.len() > q.limit as usize;
        let events =
            rows.iter().take(q.limit as usize).map(|r| to_row(r)?.into_event()).collect::<Result<Vec<_>, _>>()?;
        Ok((events, more))
    }

    /// Walk the chain inside one read transaction (a WAL snapshot: head and rows agree).
    pub async fn verify(
        &self,
        tenant_id: &str,
        checkpoint: Option<audit_api::checkpoint::SignedCheckpoint>,
        start: Option<Start>,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(VerifyReport, Start), StoreError> {
        let mut tx = self.pool.begin().await?;
        let head = sqlx::query("SELECT last_sequence, last_hash FROM chain_heads WHERE tenant_id = ?")
            .bind(tenant_id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| Ok::<_, sqlx::Error>((r.try_get(0)?, r.try_get(1)?)))
            .transpose()?;
        let mut verifier = Verifier::new(tenant_id, checkpoint, start);
        if let Some(at) = verifier.checkpoint_before_start() {
            let hash = sqlx::query_scalar("SELECT hash FROM events WHERE tenant_id = ? AND sequence = ?")
                .bind(tenant_id)
                .bind(at)
                .fetch_optional(&mut *tx)
                .await?;
            verifier.checkpoint_hash(hash);
        }
        let mut after = verifier.read_after();
        let sql =
            format!("SELECT {COLUMNS} FROM events WHERE tenant_id = ? AND sequence > ? ORDER BY sequence LIMIT 1000");
        while !verifier.is_broken() {
            let rows =
                sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(tenant_id).bind(after).fetch_all(&mut *tx).await?;
            let Some(last) = rows.last() else { break };
            after = last.try_get("sequence")?;
            for r in &rows {
                verifier.check(&to_row(r)?);
            }
            progress(verifier.checked());
            if verifier.is_broken() {
                break;
            }
        }
        tx.rollback().await?;
        Ok(verifier.finish(head))
    }

    /// Delete idempotency records created before `before`; how many.
    pub async fn purge_idempotency(&self, before: chrono::DateTime<chrono::Utc>) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < ?")
            .bind(chain::format_timestamp(before))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    pub(crate) fn pool(&self) -> &sqlx::Pool<sqlx::Sqlite> {
        &self.pool
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub fn pool_usage(&self) -> (u64, u64) {
        let in_use = self.pool.size().saturating_sub(self.pool.num_idle() as u32);
        (u64::from(in_use), u64::from(self.max))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// One tenant's run inside the shared transaction (SQLite runs in process: a statement per
/// tenant costs no network round trip). Its time goes to `phases` from `t`; returns when it ended.
async fn append_run(
    tx: &mut SqliteConnection,
    tenant_id: &str,
    jobs: &[AppendJob],
    outbox: bool,
    phases: &mut Phases,
    t: std::time::Instant,
) -> Result<(Vec<JobOutcome>, std::time::Instant), StoreError> {
    let head = sqlx::query("SELECT last_sequence, last_hash FROM chain_heads WHERE tenant_id = ?")
        .bind(tenant_id)
        .fetch_optional(&mut *tx)
        .await?;
    let (seq, hash): (i64, String) = match head {
        Some(r) => (r.try_get(0)?, r.try_get(1)?),
        None => (0, chain::genesis().to_owned()),
    };
    let mut known = HashMap::new();
    for key in jobs.iter().filter_map(|j| j.idempotency.as_ref().map(|i| &i.key)) {
        let row = sqlx::query("SELECT fingerprint, receipts FROM idempotency_keys WHERE tenant_id = ? AND key = ?")
            .bind(tenant_id)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(row) = row {
            let receipts: String = row.try_get(1)?;
            known.insert(key.clone(), (row.try_get(0)?, parse_receipts(&receipts)?));
        }
    }
    let t = Phases::lap(&mut phases.lock, t);
    let plan = plan(seq, hash, jobs, known);
    let t = Phases::lap(&mut phases.hash, t);
    for chunk in plan.rows.chunks(ROWS_PER_INSERT) {
        let mut b: QueryBuilder<Sqlite> = QueryBuilder::new(format!("INSERT INTO events ({COLUMNS}) "));
        b.push_values(chunk, |mut v, r| {
            v.push_bind(r.id.to_string())
                .push_bind(tenant_id)
                .push_bind(r.sequence)
                .push_bind(chain::format_timestamp(r.ts))
                .push_bind(&r.actor_id)
                .push_bind(&r.resource_id)
                .push_bind(&r.action_type)
                .push_bind(&r.body)
                .push_bind(&r.hash)
                .push_bind(&r.previous_hash);
        });
        b.build().execute(&mut *tx).await?;
    }
    if outbox {
        crate::outbox::sqlite_insert(&mut *tx, tenant_id, &plan.rows).await?;
    }
    let now = chain::format_timestamp(chain::now());
    for k in &plan.keys {
        sqlx::query(
            "INSERT INTO idempotency_keys (tenant_id, key, fingerprint, receipts, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(tenant_id)
        .bind(&k.key)
        .bind(&k.fingerprint)
        .bind(&k.receipts)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
    }
    if !plan.rows.is_empty() {
        sqlx::query(
            "INSERT INTO chain_heads (tenant_id, last_sequence, last_hash) VALUES (?, ?, ?)
             ON CONFLICT (tenant_id) DO UPDATE SET last_sequence = excluded.last_sequence, last_hash = excluded.last_hash",
        )
        .bind(tenant_id)
        .bind(plan.head_sequence)
        .bind(&plan.head_hash)
        .execute(&mut *tx)
        .await?;
    }
    Ok((plan.outcomes, Phases::lap(&mut phases.write, t)))
}

pub(crate) fn to_row(r: &sqlx::sqlite::SqliteRow) -> Result<StoredRow, StoreError> {
    Ok(StoredRow {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        sequence: r.try_get("sequence")?,
        timestamp: r.try_get("ts")?,
        actor_id: r.try_get("actor_id")?,
        resource_id: r.try_get("resource_id")?,
        action_type: r.try_get("action_type")?,
        body: r.try_get("body")?,
        hash: r.try_get("hash")?,
        previous_hash: r.try_get("previous_hash")?,
    })
}
