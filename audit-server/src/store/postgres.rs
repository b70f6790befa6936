//! PostgreSQL store. An append transaction carries the runs of many tenants in a constant number
//! of round trips: one statement locks every touched chain head row (in tenant order, held until
//! commit), one writes every event, idempotency record and head (INSERT .. SELECT FROM UNNEST of
//! arrays): the per-tenant cost is rows in arrays, not statements.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use audit_api::{EventReceipt, StoredEvent, VerifyReport};
use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::{JobOutcome, ListQuery, Phases, Plan, Run, StoreError, StoredRow, TxError, Verifier, parse_receipts, plan};
use crate::chain;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

pub struct PgStore {
    /// Reads, verifies, health checks.
    pool: PgPool,
    /// Append transactions only (one connection per lane), so reads cannot starve appends; its
    /// sessions carry lock_timeout and statement_timeout, so a locked chain head fails fast.
    appends: PgPool,
    /// Append connections kept between transactions, each with when it was put back (most recent
    /// last). The pool pings a connection when it hands it out and again when it takes it back:
    /// two round trips per transaction on the busiest path, where a connection that committed a
    /// moment ago needs neither. One kept longer than [`WARM_FOR`] goes back to the pool instead.
    warm: Mutex<Vec<(PoolConnection<Postgres>, Instant)>>,
    max: u32,
}

/// How long a kept append connection is used without the pool's liveness check.
const WARM_FOR: Duration = Duration::from_secs(1);

const COLUMNS: &str =
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
        Ok(PgStore { pool, appends, warm: Mutex::new(Vec::new()), max: max_connections + append_connections.max(1) })
    }

    /// Delete idempotency records created before `before`; how many.
    pub async fn purge_idempotency(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let done =
            sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1").bind(before).execute(&self.pool).await?;
        Ok(done.rows_affected())
    }

    /// A connection of the append pool answers and the database takes writes (a kept one if
    /// there is one: when every lane's connection is kept, the pool has none to hand out).
    pub async fn writable(&self) -> Result<(), StoreError> {
        let kept = lock(&self.warm).pop();
        let mut conn = match kept {
            Some((conn, _)) => conn,
            None => self.appends.acquire().await?,
        };
        let row = sqlx::query("SELECT pg_is_in_recovery(), current_setting('transaction_read_only')")
            .fetch_one(&mut *conn)
            .await?;
        self.keep(conn);
        let (recovery, read_only): (bool, String) = (row.try_get(0)?, row.try_get(1)?);
        if recovery || read_only == "on" {
            return Err(StoreError::Unavailable("the database is read-only (a replica or read-only mode)".into()));
        }
        Ok(())
    }

    /// All runs in one transaction, whatever their number, in four round trips: BEGIN, one
    /// statement locking every touched chain head (in tenant order), one writing every event,
    /// idempotency record and head, COMMIT (plus one reading idempotency keys when a job has one).
    /// The caller sorts the runs by tenant.
    pub(crate) async fn append(&self, runs: &[Run], phases: &mut Phases) -> Result<Vec<Vec<JobOutcome>>, TxError> {
        let before = |e: sqlx::Error| TxError::BeforeCommit(e.into());
        let t = Instant::now();
        let mut conn = self.append_connection().await.map_err(before)?;
        // On any error the connection is dropped, not kept: the pool rolls back and checks it.
        let mut tx = conn.begin().await.map_err(before)?;
        let t = Phases::lap(&mut phases.begin, t);
        let mut heads = lock_heads(&mut tx, runs).await.map_err(before)?;
        let mut known = known_keys(&mut tx, runs).await.map_err(TxError::BeforeCommit)?;
        let t = Phases::lap(&mut phases.lock, t);
        let mut plans = Vec::with_capacity(runs.len());
        for run in runs {
            let (seq, hash) = heads.remove(run.tenant_id.as_str()).ok_or_else(|| {
                TxError::BeforeCommit(StoreError::Internal(format!("no chain head came back for {}", run.tenant_id)))
            })?;
            plans.push(plan(seq, hash, &run.jobs, known.remove(run.tenant_id.as_str()).unwrap_or_default()));
        }
        let t = Phases::lap(&mut phases.hash, t);
        write(&mut tx, runs, &plans).await.map_err(before)?;
        let t = Phases::lap(&mut phases.write, t);
        tx.commit().await.map_err(|e| TxError::AtCommit(e.into()))?;
        Phases::lap(&mut phases.commit, t);
        self.keep(conn);
        Ok(plans.into_iter().map(|p| p.outcomes).collect())
    }

    /// The most recently kept append connection if it is fresh, else one from the pool (which
    /// checks it). A stale kept one is dropped: back to the pool, which checks it too.
    async fn append_connection(&self) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        let kept = lock(&self.warm).pop();
        match kept {
            Some((conn, since)) if since.elapsed() < WARM_FOR => Ok(conn),
            _ => self.appends.acquire().await,
        }
    }

    /// Keep a connection that just completed a statement (it is alive and idle) for the next
    /// append.
    fn keep(&self, conn: PoolConnection<Postgres>) {
        lock(&self.warm).push((conn, Instant::now()));
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
        let kept = lock(&self.warm).len() as u32;
        (u64::from(in_use(&self.pool) + in_use(&self.appends).saturating_sub(kept)), u64::from(self.max))
    }

    pub async fn close(&self) {
        // Closing waits for every connection to be back in the pool.
        let kept: Vec<_> = lock(&self.warm).drain(..).collect();
        drop(kept);
        self.appends.close().await;
        self.pool.close().await;
    }
}

/// Lock the chain head of every run's tenant, creating it on first use, in one statement; returns
/// each head (last sequence, last hash). Held until commit: this is what serializes a tenant across
/// replicas. `ON CONFLICT DO UPDATE` locks the row whether it existed or not; rows are inserted
/// (so locked) in the order of the SELECT, sorted by tenant in byte order (`COLLATE "C"`, the order
/// of Rust's `str`), the same in every process and every version of this server: two transactions
/// holding several heads cannot wait on each other in a cycle.
async fn lock_heads(tx: &mut PgConnection, runs: &[Run]) -> Result<HashMap<String, (i64, String)>, sqlx::Error> {
    let tenants: Vec<&str> = runs.iter().map(|r| r.tenant_id.as_str()).collect();
    let rows = sqlx::query(
        "INSERT INTO chain_heads (tenant_id, last_sequence, last_hash)
         SELECT t, 0, $2 FROM UNNEST($1::text[]) AS t ORDER BY t COLLATE \"C\"
         ON CONFLICT (tenant_id) DO UPDATE SET last_sequence = chain_heads.last_sequence
         RETURNING tenant_id, last_sequence, last_hash",
    )
    .bind(&tenants)
    .bind(chain::genesis())
    .fetch_all(&mut *tx)
    .await?;
    rows.iter().map(|r| Ok((r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?)))).collect()
}

/// Stored idempotency records of one tenant: key -> (fingerprint, receipts).
type Known = HashMap<String, (String, Vec<EventReceipt>)>;

/// Idempotency records of the keys the jobs carry, per tenant: read after the heads are locked (a
/// new statement, a new snapshot), so a retry committed by another replica meanwhile is seen.
async fn known_keys(tx: &mut PgConnection, runs: &[Run]) -> Result<HashMap<String, Known>, StoreError> {
    let (mut tenants, mut keys) = (Vec::new(), Vec::new());
    for run in runs {
        for idem in run.jobs.iter().filter_map(|j| j.idempotency.as_ref()) {
            tenants.push(run.tenant_id.as_str());
            keys.push(idem.key.as_str());
        }
    }
    let mut known: HashMap<String, Known> = HashMap::new();
    if keys.is_empty() {
        return Ok(known);
    }
    let rows = sqlx::query(
        "SELECT i.tenant_id, i.key, i.fingerprint, i.receipts
         FROM idempotency_keys AS i JOIN UNNEST($1::text[], $2::text[]) AS w (tenant_id, key)
           ON i.tenant_id = w.tenant_id AND i.key = w.key",
    )
    .bind(&tenants)
    .bind(&keys)
    .fetch_all(&mut *tx)
    .await?;
    for row in rows {
        let receipts: String = row.try_get(3)?;
        known.entry(row.try_get(0)?).or_default().insert(row.try_get(1)?, (row.try_get(2)?, parse_receipts(&receipts)?));
    }
    Ok(known)
}

/// Every row a transaction writes, column by column across all its tenants: the arrays bound to
/// the one statement that writes them. Another table's per-event rows (an outbox) can be inserted
/// from the same arrays.
#[derive(Default)]
struct Columns<'a> {
    tenant: Vec<&'a str>,
    id: Vec<Uuid>,
    sequence: Vec<i64>,
    ts: Vec<DateTime<Utc>>,
    actor: Vec<&'a str>,
    resource: Vec<&'a str>,
    action: Vec<&'a str>,
    body: Vec<&'a str>,
    hash: Vec<&'a str>,
    previous: Vec<&'a str>,
    key_tenant: Vec<&'a str>,
    key: Vec<&'a str>,
    fingerprint: Vec<&'a str>,
    receipts: Vec<&'a str>,
    head_tenant: Vec<&'a str>,
    head_sequence: Vec<i64>,
    head_hash: Vec<&'a str>,
}

/// The events, idempotency records and new chain heads of all runs, in one statement.
async fn write(tx: &mut PgConnection, runs: &[Run], plans: &[Plan]) -> Result<(), sqlx::Error> {
    let mut c = Columns::default();
    for (run, plan) in runs.iter().zip(plans) {
        if plan.rows.is_empty() {
            continue; // only replays: nothing to write, the head stays
        }
        let tenant = run.tenant_id.as_str();
        for r in &plan.rows {
            c.tenant.push(tenant);
            c.id.push(r.id);
            c.sequence.push(r.sequence);
            c.ts.push(r.ts);
            c.actor.push(&r.actor_id);
            c.resource.push(&r.resource_id);
            c.action.push(&r.action_type);
            c.body.push(&r.body);
            c.hash.push(&r.hash);
            c.previous.push(&r.previous_hash);
        }
        for k in &plan.keys {
            c.key_tenant.push(tenant);
            c.key.push(&k.key);
            c.fingerprint.push(&k.fingerprint);
            c.receipts.push(&k.receipts);
        }
        c.head_tenant.push(tenant);
        c.head_sequence.push(plan.head_sequence);
        c.head_hash.push(&plan.head_hash);
    }
    if c.head_tenant.is_empty() {
        return Ok(());
    }
    // The heads are already locked by this transaction (lock_heads): the UPDATE waits for nobody.
    // Per-event rows of another table go in as one more CTE, e.g.
    //   o AS (INSERT INTO outbox (tenant_id, event_id, sequence, ..) SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::bigint[], ..))
    sqlx::query(
        "WITH e AS (
            INSERT INTO events (tenant_id, id, sequence, ts, actor_id, resource_id, action_type, body, hash, previous_hash)
            SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::bigint[], $4::timestamptz[], $5::text[], $6::text[],
                                 $7::text[], $8::text[], $9::text[], $10::text[])
         ), k AS (
            INSERT INTO idempotency_keys (tenant_id, key, fingerprint, receipts)
            SELECT * FROM UNNEST($11::text[], $12::text[], $13::text[], $14::text[])
         )
         UPDATE chain_heads AS h SET last_sequence = u.last_sequence, last_hash = u.last_hash
         FROM UNNEST($15::text[], $16::bigint[], $17::text[]) AS u (tenant_id, last_sequence, last_hash)
         WHERE h.tenant_id = u.tenant_id",
    )
    .bind(&c.tenant)
    .bind(&c.id)
    .bind(&c.sequence)
    .bind(&c.ts)
    .bind(&c.actor)
    .bind(&c.resource)
    .bind(&c.action)
    .bind(&c.body)
    .bind(&c.hash)
    .bind(&c.previous)
    .bind(&c.key_tenant)
    .bind(&c.key)
    .bind(&c.fingerprint)
    .bind(&c.receipts)
    .bind(&c.head_tenant)
    .bind(&c.head_sequence)
    .bind(&c.head_hash)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Poisoning only follows a panic while holding the lock; a list of connections stays usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn to_row(r: &sqlx::postgres::PgRow) -> Result<StoredRow, StoreError> {
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
