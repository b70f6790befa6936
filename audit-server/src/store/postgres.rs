//! PostgreSQL store. An append transaction locks the chain head row of each of its tenants, in
//! tenant order, until commit; the events of a tenant's run go in with one multi-row INSERT (UNNEST
//! of arrays) that also moves the head.

use std::collections::HashMap;
use std::time::Duration;

use audit_api::{StoredEvent, VerifyReport};
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, QueryBuilder, Row};
use uuid::Uuid;

use super::{AppendJob, JobOutcome, ListQuery, Run, StoreError, StoredRow, TxError, Verifier, parse_receipts, plan};
use crate::chain;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

pub struct PgStore {
    /// Reads, verifies, health checks.
    pool: PgPool,
    /// Append transactions only (one connection per lane), so reads cannot starve appends; its
    /// sessions carry lock_timeout and statement_timeout, so a locked chain head fails fast.
    appends: PgPool,
    max: u32,
    /// Write an outbox row with every event (a consumer such as Kafka is configured).
    pub(crate) outbox: bool,
}

pub(crate) const COLUMNS: &str =
    "id::text AS id, tenant_id, sequence, ts, actor_id, resource_id, action_type, body, hash, previous_hash";

impl PgStore {
    /// Connect and apply the embedded migrations (sqlx takes an advisory lock, so replicas starting
    /// together migrate once).
    pub async fn connect(
        url: &str,
        max_connections: u32,
        append_connections: u32,
        append_timeout: Duration,
        allow_async_commit: bool,
    ) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e| StoreError::Internal(format!("DATABASE_URL is not a valid PostgreSQL URL: {e}")))?;
        let options = options.application_name("audit-server");
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&pool).await.map_err(|e| StoreError::Unavailable(format!("migrations: {e}")))?;
        // With synchronous_commit off, COMMIT returns before the WAL is flushed: a 201 could be
        // lost in a crash. The setting applies to this server's sessions (database, role or server
        // default), so check what a session of ours gets.
        let sync: String = sqlx::query_scalar("SHOW synchronous_commit").fetch_one(&pool).await?;
        if sync == "off" {
            if !allow_async_commit {
                return Err(StoreError::Internal(
                    "PostgreSQL synchronous_commit is off for this server's sessions: an acknowledged event could be \
                     lost in a crash. Turn it on (ALTER DATABASE .. SET synchronous_commit = on, or for the role), \
                     or set AUDIT_ALLOW_ASYNC_COMMIT=true to accept that risk"
                        .into(),
                ));
            }
            tracing::warn!(
                "PostgreSQL synchronous_commit is off (AUDIT_ALLOW_ASYNC_COMMIT=true): acknowledged events can be \
                 lost in a database crash"
            );
        }
        // Session settings sent at connection start: no extra round trip per transaction.
        let ms = append_timeout.as_millis().max(1).to_string();
        let append_options = options.options([("lock_timeout", ms.as_str()), ("statement_timeout", ms.as_str())]);
        let appends = PgPoolOptions::new()
            .max_connections(append_connections.max(1))
            .acquire_timeout(append_timeout.max(Duration::from_secs(1)))
            .connect_lazy_with(append_options);
        Ok(PgStore { pool, appends, max: max_connections + append_connections.max(1), outbox: false })
    }

    /// Delete idempotency records created before `before`; how many.
    pub async fn purge_idempotency(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let done =
            sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1").bind(before).execute(&self.pool).await?;
        Ok(done.rows_affected())
    }

    /// A connection of the append pool answers and the database takes writes.
    pub async fn writable(&self) -> Result<(), StoreError> {
        let row = sqlx::query("SELECT pg_is_in_recovery(), current_setting('transaction_read_only')")
            .fetch_one(&self.appends)
            .await?;
        let (recovery, read_only): (bool, String) = (row.try_get(0)?, row.try_get(1)?);
        if recovery || read_only == "on" {
            return Err(StoreError::Unavailable("the database is read-only (a replica or read-only mode)".into()));
        }
        Ok(())
    }

    /// All runs in one transaction; the caller sorts them by tenant (the lock order).
    pub(crate) async fn append(&self, runs: &[Run]) -> Result<Vec<Vec<JobOutcome>>, TxError> {
        let mut tx = self.appends.begin().await.map_err(|e| TxError::BeforeCommit(e.into()))?;
        let mut outcomes = Vec::with_capacity(runs.len());
        for run in runs {
            outcomes.push(
                append_run(&mut tx, &run.tenant_id, &run.jobs, self.outbox).await.map_err(TxError::BeforeCommit)?,
            );
        }
        tx.commit().await.map_err(|e| TxError::AtCommit(e.into()))?;
        Ok(outcomes)
    }

    pub async fn get(&self, id: Uuid) -> Result<Option<StoredEvent>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM events WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&self.pool).await?;
        row.map(|r| to_row(&r)?.into_event()).transpose()
    }

    pub async fn list(&self, q: &ListQuery) -> Result<(Vec<StoredEvent>, bool), StoreError> {
        let mut b = QueryBuilder::new(format!("SELECT {COLUMNS} FROM events WHERE tenant_id = "));
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
            b.push(" AND ts >= ").push_bind(v);
        }
        if let Some(v) = q.to {
            b.push(" AND ts < ").push_bind(v);
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

    /// Walk the chain in a REPEATABLE READ snapshot so concurrent appends are not mistaken for
    /// tampering (rows and head come from the same instant).
    pub async fn verify(
        &self,
        tenant_id: &str,
        checkpoint: Option<audit_api::checkpoint::SignedCheckpoint>,
    ) -> Result<VerifyReport, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
        let head = sqlx::query("SELECT last_sequence, last_hash FROM chain_heads WHERE tenant_id = $1")
            .bind(tenant_id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| Ok::<_, sqlx::Error>((r.try_get(0)?, r.try_get(1)?)))
            .transpose()?;
        let mut verifier = Verifier::new(tenant_id, checkpoint);
        let mut after = 0i64;
        let sql =
            format!("SELECT {COLUMNS} FROM events WHERE tenant_id = $1 AND sequence > $2 ORDER BY sequence LIMIT 1000");
        loop {
            let rows =
                sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(tenant_id).bind(after).fetch_all(&mut *tx).await?;
            let Some(last) = rows.last() else { break };
            after = last.try_get("sequence")?;
            for r in &rows {
                verifier.check(&to_row(r)?);
            }
            if verifier.is_broken() {
                break;
            }
        }
        tx.rollback().await?;
        Ok(verifier.finish(head))
    }

    pub(crate) fn pool(&self) -> &sqlx::Pool<sqlx::Postgres> {
        &self.pool
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub fn pool_usage(&self) -> (u64, u64) {
        let in_use = |p: &PgPool| p.size().saturating_sub(p.num_idle() as u32);
        (u64::from(in_use(&self.pool) + in_use(&self.appends)), u64::from(self.max))
    }

    pub async fn close(&self) {
        self.appends.close().await;
        self.pool.close().await;
    }
}

/// One tenant's run inside the shared transaction.
async fn append_run(
    tx: &mut PgConnection,
    tenant_id: &str,
    jobs: &[AppendJob],
    outbox: bool,
) -> Result<Vec<JobOutcome>, StoreError> {
    // Creates the head on first use and row-locks it either way (DO UPDATE locks the row), in
    // one round trip. Held until commit: this is what serializes a tenant across replicas.
    let head = sqlx::query(
        "INSERT INTO chain_heads (tenant_id, last_sequence, last_hash) VALUES ($1, 0, $2)
         ON CONFLICT (tenant_id) DO UPDATE SET last_sequence = chain_heads.last_sequence
         RETURNING last_sequence, last_hash",
    )
    .bind(tenant_id)
    .bind(chain::genesis())
    .fetch_one(&mut *tx)
    .await?;
    let (seq, hash): (i64, String) = (head.try_get(0)?, head.try_get(1)?);

    let wanted: Vec<String> = jobs.iter().filter_map(|j| j.idempotency.as_ref().map(|i| i.key.clone())).collect();
    let mut known = HashMap::new();
    if !wanted.is_empty() {
        let rows = sqlx::query(
            "SELECT key, fingerprint, receipts FROM idempotency_keys WHERE tenant_id = $1 AND key = ANY($2)",
        )
        .bind(tenant_id)
        .bind(&wanted)
        .fetch_all(&mut *tx)
        .await?;
        for row in rows {
            let receipts: String = row.try_get(2)?;
            known.insert(row.try_get(0)?, (row.try_get(1)?, parse_receipts(&receipts)?));
        }
    }

    let plan = plan(seq, hash, jobs, known);
    if !plan.rows.is_empty() || !plan.keys.is_empty() {
        let r = &plan.rows;
        let k = &plan.keys;
        sqlx::query(
            "WITH e AS (
                INSERT INTO events (tenant_id, id, sequence, ts, actor_id, resource_id, action_type, body, hash, previous_hash)
                SELECT $1, * FROM UNNEST($2::uuid[], $3::bigint[], $4::timestamptz[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[])
             ), k AS (
                INSERT INTO idempotency_keys (tenant_id, key, fingerprint, receipts)
                SELECT $1, * FROM UNNEST($11::text[], $12::text[], $13::text[])
             ), outbox_rows AS (
                -- The transactional outbox (src/outbox): the events' sequences, committed with them.
                INSERT INTO outbox (tenant_id, sequence) SELECT $1, s FROM UNNEST($3::bigint[]) AS s WHERE $16
             )
             UPDATE chain_heads SET last_sequence = $14, last_hash = $15 WHERE tenant_id = $1",
        )
        .bind(tenant_id)
        .bind(r.iter().map(|x| x.id).collect::<Vec<Uuid>>())
        .bind(r.iter().map(|x| x.sequence).collect::<Vec<i64>>())
        .bind(r.iter().map(|x| x.ts).collect::<Vec<DateTime<Utc>>>())
        .bind(r.iter().map(|x| x.actor_id.as_str()).collect::<Vec<&str>>())
        .bind(r.iter().map(|x| x.resource_id.as_str()).collect::<Vec<&str>>())
        .bind(r.iter().map(|x| x.action_type.as_str()).collect::<Vec<&str>>())
        .bind(r.iter().map(|x| x.body.as_str()).collect::<Vec<&str>>())
        .bind(r.iter().map(|x| x.hash.as_str()).collect::<Vec<&str>>())
        .bind(r.iter().map(|x| x.previous_hash.as_str()).collect::<Vec<&str>>())
        .bind(k.iter().map(|x| x.key.as_str()).collect::<Vec<&str>>())
        .bind(k.iter().map(|x| x.fingerprint.as_str()).collect::<Vec<&str>>())
        .bind(k.iter().map(|x| x.receipts.as_str()).collect::<Vec<&str>>())
        .bind(plan.head_sequence)
        .bind(&plan.head_hash)
        .bind(outbox)
        .execute(&mut *tx)
        .await?;
    }
    Ok(plan.outcomes)
}

pub(crate) fn to_row(r: &sqlx::postgres::PgRow) -> Result<StoredRow, StoreError> {
    let ts: DateTime<Utc> = r.try_get("ts")?;
    Ok(StoredRow {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        sequence: r.try_get("sequence")?,
        timestamp: chain::format_timestamp(ts),
        actor_id: r.try_get("actor_id")?,
        resource_id: r.try_get("resource_id")?,
        action_type: r.try_get("action_type")?,
        body: r.try_get("body")?,
        hash: r.try_get("hash")?,
        previous_hash: r.try_get("previous_hash")?,
    })
}
