//! PostgreSQL store. A group commit carries the runs of many tenants in a constant number of round
//! trips: the per-tenant cost is rows in arrays (UNNEST), not statements. Runs on chain heads this
//! process wrote last take ONE statement, its own transaction (`APPEND`: lock the heads in tenant
//! order, check they did not move, insert, move them); the others a transaction of four round
//! trips (BEGIN, lock every head, the same statement, COMMIT).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use audit_api::{EventReceipt, StoredEvent, VerifyReport};
use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::{
    JobOutcome, ListQuery, Phases, Plan, Run, Start, StoreError, StoredRow, TxError, Verifier, parse_receipts, plan,
};
use crate::chain;
use crate::outbox::handoff::HandOff;

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
    /// Chain heads (last sequence, last hash) this process committed last, per tenant: appends on
    /// them take one statement (see [`PgStore::append_on_known_heads`]). Only a hint: the statement
    /// checks each head, and an entry is dropped whenever its outcome is not known.
    heads: Mutex<HashMap<String, (i64, String)>>,
    max: u32,
    /// When an append transaction last committed: proof that appends commit, so readiness need
    /// not queue for an append connection behind busy lanes (see [`PgStore::writable`]).
    last_commit: Mutex<Option<Instant>>,
    /// Write an outbox row with every event (a consumer such as Kafka is configured).
    pub(crate) outbox: bool,
    /// With the outbox: the events this process committed, for its own consumers.
    pub(crate) handoff: Option<Box<HandOff>>,
}

/// Remembered chain heads at most (beyond it the map starts over: memory stays bounded with any
/// number of tenants, and a forgotten head only costs one shared transaction).
const KNOWN_HEADS_MAX: usize = 100_000;

fn remember(heads: &mut HashMap<String, (i64, String)>, tenant: &str, seq: i64, hash: String) {
    if heads.len() >= KNOWN_HEADS_MAX && !heads.contains_key(tenant) {
        heads.clear();
    }
    heads.insert(tenant.to_owned(), (seq, hash));
}

/// How recent a commit must be to stand for a readiness check.
const COMMIT_PROVES_WRITABLE: Duration = Duration::from_secs(2);

/// How long a kept append connection is used without the pool's liveness check.
const WARM_FOR: Duration = Duration::from_secs(1);

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
        // JIT off: every statement here is short OLTP. The planner's estimates for the outbox (a
        // queue, its statistics often stale) crossed jit_above_cost, and EXPLAIN showed the purge
        // JIT-compiled ("JIT: Functions: 16"): compile time spent again on every execution.
        let options = options.application_name("audit-server").options([("jit", "off")]);
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
        Ok(PgStore {
            pool,
            appends,
            warm: Mutex::new(Vec::new()),
            heads: Mutex::new(HashMap::new()),
            max: max_connections + append_connections.max(1),
            last_commit: Mutex::new(None),
            outbox: false,
            handoff: None,
        })
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
        // Under load every append connection is busy and the check would wait behind the queue
        // (and fail readiness, taking a pod that serves well out of the Service). A commit a
        // moment ago proves what the query would: the database answers and takes writes.
        if lock(&self.last_commit).is_some_and(|at| at.elapsed() < COMMIT_PROVES_WRITABLE) {
            return Ok(());
        }
        let mut conn = self.append_connection().await?;
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

    /// Runs in one transaction, whatever their number, in four round trips: BEGIN, one statement
    /// locking every touched chain head (in tenant order), the [`APPEND`] statement writing every
    /// event, idempotency record and head, COMMIT (plus one reading idempotency keys when a job
    /// has one). The caller sorts the runs by tenant.
    pub(crate) async fn append(&self, runs: &[&Run], phases: &mut Phases) -> Result<Vec<Vec<JobOutcome>>, TxError> {
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
        let mut olds = Vec::with_capacity(runs.len());
        for run in runs {
            let (seq, hash) = heads.remove(run.tenant_id.as_str()).ok_or_else(|| {
                TxError::BeforeCommit(StoreError::Internal(format!("no chain head came back for {}", run.tenant_id)))
            })?;
            olds.push((seq, hash.clone()));
            plans.push(plan(seq, hash, &run.jobs, known.remove(run.tenant_id.as_str()).unwrap_or_default()));
        }
        let t = Phases::lap(&mut phases.hash, t);
        // Heads locked by this transaction cannot have moved: every run is written.
        let written = write(&mut tx, self.outbox, runs, &olds, &plans).await.map_err(before)?;
        if written.len() != plans.iter().filter(|p| !p.rows.is_empty()).count() {
            let e = StoreError::Internal("a locked chain head moved during its transaction".into());
            return Err(TxError::BeforeCommit(e));
        }
        let t = Phases::lap(&mut phases.write, t);
        self.forget_heads(runs.iter().map(|r| r.tenant_id.as_str()));
        tx.commit().await.map_err(|e| TxError::AtCommit(e.into()))?;
        Phases::lap(&mut phases.commit, t);
        self.committed();
        self.keep(conn);
        self.remember_heads(runs.iter().zip(&plans).map(|(r, p)| (r.tenant_id.as_str(), p)));
        Ok(runs.iter().zip(plans).map(|(r, p)| self.hand_off(&r.tenant_id, p)).collect())
    }

    /// Runs whose chain head this process wrote last and whose jobs carry no idempotency key, in
    /// ONE statement that is its own transaction (one round trip, commit included): the events are
    /// chained on the remembered heads, and [`APPEND`] writes a tenant's run only if its head is
    /// still what was remembered, so a head moved by another process writes nothing. Per run:
    /// `Some(outcome)` when decided (stored, or failed with nothing stored or an unknown outcome),
    /// `None` when it must go through the shared transaction (head not known or moved, or a
    /// database error that may be one run's fault).
    pub(crate) async fn append_on_known_heads(
        &self,
        runs: &[Run],
        phases: &mut Phases,
    ) -> Vec<Option<Result<Vec<JobOutcome>, StoreError>>> {
        let mut results: Vec<Option<Result<Vec<JobOutcome>, StoreError>>> = runs.iter().map(|_| None).collect();
        let (mut fast, mut olds, mut plans, mut at) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let t = Instant::now();
        {
            let heads = lock(&self.heads);
            for (i, run) in runs.iter().enumerate() {
                if run.jobs.iter().any(|j| j.idempotency.is_some()) {
                    continue; // stored keys must be read with the head locked: the shared path
                }
                if let Some((seq, hash)) = heads.get(&run.tenant_id) {
                    fast.push(run);
                    olds.push((*seq, hash.clone()));
                    at.push(i);
                }
            }
        }
        if fast.is_empty() {
            return results;
        }
        for (run, (seq, hash)) in fast.iter().zip(&olds) {
            plans.push(plan(*seq, hash.clone(), &run.jobs, HashMap::new()));
        }
        let t = Phases::lap(&mut phases.hash, t);
        let mut conn = match self.append_connection().await {
            Ok(c) => c,
            Err(e) => {
                let e = StoreError::from(e);
                for &i in &at {
                    results[i] = Some(Err(e.duplicate()));
                }
                return results;
            }
        };
        let t = Phases::lap(&mut phases.begin, t);
        let outcome = write(&mut conn, self.outbox, &fast, &olds, &plans).await;
        Phases::lap(&mut phases.write, t);
        let tenants = fast.iter().map(|r| r.tenant_id.as_str());
        match outcome {
            Ok(written) => {
                self.committed();
                self.keep(conn);
                self.forget_heads(tenants);
                let mut stored = Vec::new();
                for ((&i, run), plan) in at.iter().zip(&fast).zip(plans) {
                    if written.contains(&run.tenant_id) {
                        stored.push((run.tenant_id.as_str(), plan.head_sequence, plan.head_hash.clone()));
                        results[i] = Some(Ok(self.hand_off(&run.tenant_id, plan)));
                    }
                }
                let mut heads = lock(&self.heads);
                for (tenant, seq, hash) in stored {
                    remember(&mut heads, tenant, seq, hash);
                }
            }
            // The server refused the statement: it rolled back, nothing was written.
            Err(sqlx::Error::Database(db)) => {
                self.forget_heads(tenants);
                match StoreError::from(sqlx::Error::Database(db)) {
                    e @ StoreError::Unavailable(_) => {
                        for &i in &at {
                            results[i] = Some(Err(e.duplicate()));
                        }
                    }
                    e => tracing::warn!(runs = fast.len(), error = %e, "append on known heads failed, retrying"),
                }
            }
            // The connection failed with the statement (and its commit) sent: unknown.
            Err(e) => {
                self.forget_heads(tenants);
                let e = StoreError::CommitUnknown(e.to_string());
                for &i in &at {
                    results[i] = Some(Err(e.duplicate()));
                }
            }
        }
        results
    }

    /// A committed plan's outcomes; its rows go to this process's consumers.
    fn hand_off(&self, tenant: &str, plan: Plan) -> Vec<JobOutcome> {
        if let Some(h) = &self.handoff {
            h.put(tenant, plan.rows);
        }
        plan.outcomes
    }

    fn forget_heads<'a>(&self, tenants: impl Iterator<Item = &'a str>) {
        let mut heads = lock(&self.heads);
        for t in tenants {
            heads.remove(t);
        }
    }

    fn remember_heads<'a>(&self, plans: impl Iterator<Item = (&'a str, &'a Plan)>) {
        let mut heads = lock(&self.heads);
        for (tenant, plan) in plans {
            remember(&mut heads, tenant, plan.head_sequence, plan.head_hash.clone());
        }
    }

    /// The most recently kept append connection if it is fresh, else one from the pool (which
    /// checks it). Stale kept ones go back to the pool first (it checks them too): they hold its
    /// slots, and the pool has no more than one per lane.
    async fn append_connection(&self) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        let (fresh, stale) = {
            let mut warm = lock(&self.warm);
            // Kept in the order they were put back: the stale ones come first.
            let cut = warm.partition_point(|(_, since)| since.elapsed() >= WARM_FOR);
            let stale: Vec<_> = warm.drain(..cut).collect();
            (warm.pop(), stale)
        };
        drop(stale);
        match fresh {
            Some((conn, _)) => Ok(conn),
            None => self.appends.acquire().await,
        }
    }

    fn committed(&self) {
        *lock(&self.last_commit) = Some(Instant::now());
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
        start: Option<Start>,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(VerifyReport, Start), StoreError> {
        let mut tx = self.pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
        let head = sqlx::query("SELECT last_sequence, last_hash FROM chain_heads WHERE tenant_id = $1")
            .bind(tenant_id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| Ok::<_, sqlx::Error>((r.try_get(0)?, r.try_get(1)?)))
            .transpose()?;
        let mut verifier = Verifier::new(tenant_id, checkpoint, start);
        if let Some(at) = verifier.checkpoint_before_start() {
            let hash = sqlx::query_scalar("SELECT hash FROM events WHERE tenant_id = $1 AND sequence = $2")
                .bind(tenant_id)
                .bind(at)
                .fetch_optional(&mut *tx)
                .await?;
            verifier.checkpoint_hash(hash);
        }
        let mut after = verifier.read_after();
        let sql =
            format!("SELECT {COLUMNS} FROM events WHERE tenant_id = $1 AND sequence > $2 ORDER BY sequence LIMIT 1000");
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
async fn lock_heads(tx: &mut PgConnection, runs: &[&Run]) -> Result<HashMap<String, (i64, String)>, sqlx::Error> {
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
async fn known_keys(tx: &mut PgConnection, runs: &[&Run]) -> Result<HashMap<String, Known>, StoreError> {
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
        known
            .entry(row.try_get(0)?)
            .or_default()
            .insert(row.try_get(1)?, (row.try_get(2)?, parse_receipts(&receipts)?));
    }
    Ok(known)
}

/// The one statement that writes appends, in both paths: for each tenant of `u` whose chain head
/// is still (old_sequence, old_hash), locked in tenant byte order, its events, its idempotency
/// records and its new head; returns the tenants written. A tenant whose head moved writes nothing.
/// The outbox rows (`o`) come from the same event arrays, filtered the same way.
const APPEND: &str = "WITH u AS (
        SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::text[])
            AS u (tenant_id, old_sequence, old_hash, new_sequence, new_hash)
    ), l AS MATERIALIZED (
        SELECT h.tenant_id FROM chain_heads AS h JOIN u ON h.tenant_id = u.tenant_id
        WHERE h.last_sequence = u.old_sequence AND h.last_hash = u.old_hash
        ORDER BY h.tenant_id COLLATE \"C\" FOR UPDATE OF h
    ), e AS (
        INSERT INTO events (tenant_id, id, sequence, ts, actor_id, resource_id, action_type, body, hash, previous_hash)
        SELECT r.* FROM UNNEST($6::text[], $7::uuid[], $8::bigint[], $9::timestamptz[], $10::text[], $11::text[],
                               $12::text[], $13::text[], $14::text[], $15::text[])
            AS r (tenant_id, id, sequence, ts, actor_id, resource_id, action_type, body, hash, previous_hash)
        WHERE r.tenant_id IN (SELECT tenant_id FROM l)
    ), k AS (
        INSERT INTO idempotency_keys (tenant_id, key, fingerprint, receipts)
        SELECT x.* FROM UNNEST($16::text[], $17::text[], $18::text[], $19::text[]) AS x (tenant_id, key, fingerprint, receipts)
        WHERE x.tenant_id IN (SELECT tenant_id FROM l)
    ), o AS (
        -- The transactional outbox (src/outbox): the events' keys, committed with them, in one
        -- row per registered consumer (none when no event is written), when a consumer is
        -- configured ($20), in the order written. The transaction takes its id before it draws
        -- positions (the WHERE runs before the position default): the consumers' read floor
        -- depends on it (src/outbox/floor.rs).
        INSERT INTO outbox (consumer, tenants, sequences)
        SELECT c.consumer, array_agg(r.tenant_id ORDER BY r.i), array_agg(r.sequence ORDER BY r.i)
        FROM UNNEST($6::text[], $8::bigint[]) WITH ORDINALITY AS r (tenant_id, sequence, i)
        CROSS JOIN outbox_consumers AS c
        WHERE $20 AND r.tenant_id IN (SELECT tenant_id FROM l) AND pg_current_xact_id() IS NOT NULL
        GROUP BY c.consumer
    )
    UPDATE chain_heads AS h SET last_sequence = u.new_sequence, last_hash = u.new_hash
    FROM u WHERE h.tenant_id = u.tenant_id AND h.tenant_id IN (SELECT tenant_id FROM l)
    RETURNING h.tenant_id";

/// Every row of one [`APPEND`], column by column across all its tenants: the arrays it binds.
#[derive(Default)]
struct Columns<'a> {
    head_tenant: Vec<&'a str>,
    old_sequence: Vec<i64>,
    old_hash: Vec<&'a str>,
    head_sequence: Vec<i64>,
    head_hash: Vec<&'a str>,
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
}

/// Run [`APPEND`] for the runs (planned on the heads `olds`); the tenants written. Runs with
/// nothing to write (only replays) are left out.
async fn write(
    conn: &mut PgConnection,
    outbox: bool,
    runs: &[&Run],
    olds: &[(i64, String)],
    plans: &[Plan],
) -> Result<HashSet<String>, sqlx::Error> {
    let mut c = Columns::default();
    for ((run, (old_sequence, old_hash)), plan) in runs.iter().zip(olds).zip(plans) {
        if plan.rows.is_empty() {
            continue;
        }
        let tenant = run.tenant_id.as_str();
        c.head_tenant.push(tenant);
        c.old_sequence.push(*old_sequence);
        c.old_hash.push(old_hash);
        c.head_sequence.push(plan.head_sequence);
        c.head_hash.push(&plan.head_hash);
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
    }
    if c.head_tenant.is_empty() {
        return Ok(HashSet::new());
    }
    let rows = sqlx::query(APPEND)
        .bind(&c.head_tenant)
        .bind(&c.old_sequence)
        .bind(&c.old_hash)
        .bind(&c.head_sequence)
        .bind(&c.head_hash)
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
        .bind(outbox)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(|r| r.try_get(0)).collect()
}

/// Poisoning only follows a panic while holding the lock; a list of connections stays usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
