//! The transactional outbox: every append transaction also inserts `outbox` rows for its events,
//! one per registered consumer (PostgreSQL: a CTE of the append statement, one row listing all the
//! transaction's events; SQLite: `sqlite_insert`, one row per event), so a row exists if and only
//! if its events committed. A row is read whole and deleted once every event it lists was handled
//! (`Rows::complete`); an event its consumer's cursor already passed is not read again. Consumers
//! read the outbox, not the request path: the Kafka relay ([`kafka`]) and the search indexer.
//! Each consumer keeps a cursor per tenant (the last sequence it handled) and a lease, reads only
//! its own rows (from past a floor of rows already handled, [`floor`]), and purges them once its
//! cursors have passed them. Rows are per consumer, not shared, so that a consumer never reads
//! past rows it already handled that a slower consumer still holds (the bench measured that
//! costing as much as the appends), and a stopped consumer costs the others nothing. On
//! PostgreSQL the read selects the rows alone and takes their events from this process's memory
//! when it committed them ([`handoff`]).
//!
//! Why cursors per tenant and not one global position: positions are taken when a transaction
//! inserts and become visible when it commits, and concurrent transactions (several lanes, several
//! replicas) commit out of position order, so a reader that saw position 11 cannot conclude that 10
//! will never appear. A tenant's sequences, in contrast, commit strictly in order (its chain head
//! row is locked by each append until commit): when sequence N+1 is visible, N is too. The global
//! `position` only orders reads, oldest first, so that no tenant starves while the relay catches up.
//!
//! One active relay per consumer, across any number of replicas: a lease row in
//! `outbox_consumers` (holder, expiry). On PostgreSQL the expiry is computed and compared with the
//! database's clock, so replicas' clocks do not matter; SQLite is local (one host, one clock).
//! Every write of a consumer's progress renews and checks the lease in the same transaction, so a
//! relay that lost its lease cannot move cursors. How the Kafka relay bounds what a former holder
//! may still have in flight is explained in [`kafka`].

pub mod floor;
pub mod handoff;
pub mod kafka;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{QueryBuilder, Row};

use self::floor::Floor;
use crate::chain;
use crate::metrics::Metrics;
use crate::store::{NewRow, Store, StoreError, StoredRow};

/// The Kafka relay's consumer name (cursors, lease, purge).
pub const KAFKA: &str = "kafka";

/// Outbox rows per INSERT or DELETE statement on SQLite (at most 2 parameters each, far below
/// its variable limit).
const ROWS_PER_INSERT: usize = 2000;

/// Dispatch one body over both stores: `$pool` is the store's read/write pool. The body is
/// compiled once per database, so the SQL must be valid for both (numbered `$N` parameters are).
macro_rules! on_store {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            Store::Postgres(s) => {
                let $pool = s.pool();
                $body
            }
            Store::Sqlite(s) => {
                let $pool = s.pool();
                $body
            }
        }
    };
}

/// SQLite's part of the append transaction: the outbox rows of a tenant's new events, one per
/// registered consumer.
pub(crate) async fn sqlite_insert(
    tx: &mut sqlx::SqliteConnection,
    tenant_id: &str,
    rows: &[NewRow],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut b: QueryBuilder<sqlx::Sqlite> = QueryBuilder::new(
            "INSERT INTO outbox (consumer, tenant_id, sequence) SELECT c.consumer, v.column1, v.column2 \
             FROM (",
        );
        b.push_values(chunk, |mut v, r| {
            v.push_bind(tenant_id).push_bind(r.sequence);
        });
        // Row order (events in sequence order, per consumer) is the read order.
        b.push(") AS v CROSS JOIN outbox_consumers AS c ORDER BY c.consumer, v.column2");
        b.build().execute(&mut *tx).await?;
    }
    Ok(())
}

/// An event of an outbox row, as a consumer reads it.
pub(crate) struct Pending {
    /// Its row's (PostgreSQL: shared by the events of one transaction).
    pub position: i64,
    /// The consumer's cursor for this tenant when the row was read (every sequence up to it was
    /// handled): the row must be `after + 1`, or follow another pending row. None: the consumer
    /// never handled this tenant (its stream starts at its oldest outbox row: events stored
    /// while the consumer was not configured have no rows).
    pub after: Option<i64>,
    pub row: StoredRow,
}

/// A row its consumer's cursor reached. As an EXISTS, PostgreSQL runs it as one hash semi-join
/// over the outbox; the scalar subquery it replaced (`sequence <= COALESCE((SELECT c.sequence
/// ...), 0)`) ran once per row: on 60,000 rows 17 ms against 320 ms, and the outbox holds millions
/// after a long outage, when the periodic purge and the lag samples matter most.
const PASSED_BY_CURSOR: &str = "EXISTS (SELECT 1 FROM outbox_cursors c WHERE c.consumer = outbox.consumer \
     AND c.tenant_id = outbox.tenant_id AND outbox.sequence <= c.sequence)";

/// PostgreSQL: a row every event of which its consumer's cursors reached (a row lists a
/// transaction's events). One hash join of all rows' events with the cursors, grouped by row,
/// not a subquery per row; an event of a tenant without a cursor is not passed.
const PG_PASSED_BY_CURSORS: &str = "(consumer, position) IN (SELECT o.consumer, o.position FROM outbox o \
     CROSS JOIN LATERAL unnest(o.tenants, o.sequences) AS k (tenant_id, sequence) \
     LEFT JOIN outbox_cursors c ON c.consumer = o.consumer AND c.tenant_id = k.tenant_id \
     GROUP BY o.consumer, o.position HAVING bool_and(COALESCE(k.sequence <= c.sequence, false)))";

/// PostgreSQL: some event of row `o` is still pending for consumer `$1` (the resync's purge;
/// rare, so a cursor lookup per row is fine there).
const PG_ROW_PENDING: &str = "EXISTS (SELECT 1 FROM unnest(o.tenants, o.sequences) AS k (tenant_id, sequence) \
     LEFT JOIN outbox_cursors c ON c.consumer = $1 AND c.tenant_id = k.tenant_id \
     WHERE k.sequence > COALESCE(c.sequence, 0))";

/// PostgreSQL: [`Store::outbox_lag`]'s statement over rows that list several events: the events
/// not passed, counted through one hash join with the cursors, and the first one's timestamp.
const PG_LAG: &str = "WITH p AS MATERIALIZED (SELECT o.position, k.i, k.tenant_id, k.sequence FROM outbox o \
     CROSS JOIN LATERAL unnest(o.tenants, o.sequences) WITH ORDINALITY AS k (tenant_id, sequence, i) \
     LEFT JOIN outbox_cursors c ON c.consumer = o.consumer AND c.tenant_id = k.tenant_id \
     WHERE o.consumer = $1 AND k.sequence > COALESCE(c.sequence, 0)), \
     f AS (SELECT tenant_id, sequence FROM p ORDER BY position, i LIMIT 1) \
     SELECT (SELECT count(*) FROM p) AS pending, e.ts FROM (SELECT 1) AS one LEFT JOIN f ON true \
     LEFT JOIN events e ON e.tenant_id = f.tenant_id AND e.sequence = f.sequence";

/// A row whose consumer was unregistered (one hashed subquery, not one per row).
const UNREGISTERED: &str = "outbox.consumer NOT IN (SELECT r.consumer FROM outbox_consumers r)";

/// The statements of [`Store::outbox_advance`] after the lease check, for either database
/// (`$greatest`: the two-argument maximum, GREATEST or max).
macro_rules! advance_body {
    ($tx:ident, $p:expr, $greatest:literal) => {{
        if !$p.handled.is_empty() {
            let mut b = QueryBuilder::new("INSERT INTO outbox_cursors (consumer, tenant_id, sequence) ");
            b.push_values($p.handled.iter(), |mut v, (tenant, sequence)| {
                v.push_bind($p.consumer).push_bind(tenant.as_str()).push_bind(*sequence);
            });
            b.push(concat!(
                " ON CONFLICT (consumer, tenant_id) DO UPDATE SET sequence = ",
                $greatest,
                "(outbox_cursors.sequence, excluded.sequence)"
            ));
            b.build().execute(&mut *$tx).await?;
        }
        if let Some((topic, offsets)) = $p.offsets
            && !offsets.is_empty()
        {
            let mut b = QueryBuilder::new("INSERT INTO outbox_kafka_offsets (topic, partition, next_offset) ");
            b.push_values(offsets.iter(), |mut v, (partition, next)| {
                v.push_bind(topic).push_bind(*partition).push_bind(*next);
            });
            b.push(" ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset");
            b.build().execute(&mut *$tx).await?;
        }
    }};
}

impl Store {
    /// Write outbox rows with every append from now on (call before serving); `consumers`: how
    /// many this process runs, which take the events it commits from memory ([`handoff`],
    /// PostgreSQL).
    pub fn enable_outbox(&mut self, consumers: u8) {
        match self {
            Store::Postgres(s) => {
                s.outbox = true;
                s.handoff = Some(Box::new(handoff::HandOff::new(consumers, handoff::KEPT, handoff::KEPT_BYTES)));
            }
            Store::Sqlite(s) => s.outbox = true,
        }
    }

    /// Register a consumer (appends then write outbox rows for it); returns the stream id of this
    /// database, created at the first registration.
    pub async fn outbox_register(&self, consumer: &str) -> Result<String, StoreError> {
        let fresh = uuid::Uuid::new_v4().to_string();
        on_store!(self, pool => {
            sqlx::query("INSERT INTO outbox_consumers (consumer, stream_id) VALUES ($1, $2) ON CONFLICT (consumer) DO NOTHING")
                .bind(consumer)
                .bind(&fresh)
                .execute(pool)
                .await?;
            Ok(sqlx::query_scalar("SELECT stream_id FROM outbox_consumers WHERE consumer = $1")
                .bind(consumer)
                .fetch_one(pool)
                .await?)
        })
    }

    /// Take or renew the consumer's lease for `ttl`; false when another holder's lease is valid.
    pub async fn outbox_lease(&self, consumer: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let taken = match self {
            Store::Postgres(s) => sqlx::query(
                "UPDATE outbox_consumers SET lease_holder = $2, lease_expires_at = clock_timestamp() + make_interval(secs => $3)
                 WHERE consumer = $1 AND (lease_holder = $2 OR lease_expires_at IS NULL OR lease_expires_at < clock_timestamp())",
            )
            .bind(consumer)
            .bind(holder)
            .bind(ttl.as_secs_f64())
            .execute(s.pool())
            .await?
            .rows_affected(),
            Store::Sqlite(s) => {
                let now = chain::now();
                sqlx::query(
                    "UPDATE outbox_consumers SET lease_holder = $2, lease_expires_at = $3
                     WHERE consumer = $1 AND (lease_holder = $2 OR lease_expires_at IS NULL OR lease_expires_at < $4)",
                )
                .bind(consumer)
                .bind(holder)
                .bind(expiry(now, ttl))
                .bind(chain::format_timestamp(now))
                .execute(s.pool())
                .await?
                .rows_affected()
            }
        };
        Ok(taken == 1)
    }

    /// Give the lease up (graceful shutdown: another replica takes over at once).
    pub async fn outbox_release(&self, consumer: &str, holder: &str) -> Result<(), StoreError> {
        on_store!(self, pool => {
            sqlx::query("UPDATE outbox_consumers SET lease_expires_at = NULL WHERE consumer = $1 AND lease_holder = $2")
                .bind(consumer)
                .bind(holder)
                .execute(pool)
                .await?;
            Ok(())
        })
    }

    /// The oldest rows the consumer has not passed yet above its floor, with their events, in
    /// position order (within a row, in the order written), and the rows' sizes, which decide
    /// what a progress may delete ([`Rows::complete`]); rows found below the floor (a full read)
    /// are counted and logged.
    pub(crate) async fn outbox_read(
        &self,
        consumer: &str,
        limit: usize,
        floor: &mut Floor,
        metrics: &Metrics,
    ) -> Result<(Vec<Pending>, Rows), StoreError> {
        let from = floor.start();
        let read = self.outbox_pending(consumer, limit, from).await?;
        let positions = read.sizes.keys().copied().collect();
        let below = floor.below();
        let (gauge, sources) = match consumer {
            KAFKA => (&metrics.kafka.read_floor, &metrics.kafka.events_from),
            _ => (&metrics.search.read_floor, &metrics.search.events_from),
        };
        gauge.store(u64::try_from(below).unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
        sources[0].fetch_add(read.from_memory as u64, std::sync::atomic::Ordering::Relaxed);
        sources[1].fetch_add(read.from_database as u64, std::sync::atomic::Ordering::Relaxed);
        let missed = floor.read(from, positions, read.xmin, read.cut);
        if missed > 0 {
            metrics.outbox_floor_misses.fetch_add(missed as u64, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(
                consumer,
                missed,
                floor = below,
                "outbox: a full read found rows below the read floor (a bug); reading from 0 again"
            );
        }
        Ok((read.rows, Rows { sizes: read.sizes, cut: read.cut }))
    }

    /// The oldest rows the consumer has not passed yet with positions above `after`, with their
    /// events, in position order, and the xmin of the read's snapshot (PostgreSQL).
    async fn outbox_pending(&self, consumer: &str, limit: usize, after: i64) -> Result<PendingRead, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        match self {
            Store::Postgres(s) => pg_pending(s, consumer, limit, after).await,
            Store::Sqlite(s) => {
                // The outbox rows first (LIMIT inside a materialized CTE), then their events by
                // primary key, in one query.
                let sql = "WITH p AS MATERIALIZED (
                         SELECT o.position, o.tenant_id, o.sequence, c.sequence AS after
                         FROM outbox o
                         LEFT JOIN outbox_cursors c ON c.consumer = $1 AND c.tenant_id = o.tenant_id
                         WHERE o.consumer = $1 AND o.position > $3 AND o.sequence > COALESCE(c.sequence, 0)
                         ORDER BY o.position LIMIT $2)
                     SELECT e.id, e.tenant_id, e.sequence, e.ts, e.actor_id, e.resource_id, e.action_type, e.body, \
                     e.hash, e.previous_hash, p.position, p.after
                     FROM p JOIN events e ON e.tenant_id = p.tenant_id AND e.sequence = p.sequence
                     ORDER BY p.position";
                let rows = sqlx::query(sql).bind(consumer).bind(limit).bind(after).fetch_all(s.pool()).await?;
                let mut out = PendingRead { rows: Vec::with_capacity(rows.len()), ..PendingRead::default() };
                for r in &rows {
                    let position = r.try_get("position")?;
                    out.sizes.insert(position, 1);
                    out.rows.push(Pending {
                        position,
                        after: r.try_get("after")?,
                        row: crate::store::sqlite::to_row(r)?,
                    });
                }
                out.from_database = out.rows.len();
                out.cut = i64::try_from(out.rows.len()).unwrap_or(i64::MAX) >= limit;
                Ok(out)
            }
        }
    }

    /// Events held in the outbox: one per event and registered consumer that has not passed it
    /// yet (PostgreSQL lists a transaction's events in one row per consumer; SQLite has a row
    /// per event).
    pub async fn outbox_rows(&self) -> Result<u64, StoreError> {
        let n: i64 = match self {
            Store::Postgres(s) => {
                sqlx::query_scalar("SELECT COALESCE(sum(cardinality(sequences)), 0)::bigint FROM outbox")
                    .fetch_one(s.pool())
                    .await?
            }
            Store::Sqlite(s) => sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(s.pool()).await?,
        };
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The consumers registered in this database (whether or not a replica runs them).
    pub async fn outbox_consumers(&self) -> Result<Vec<String>, StoreError> {
        on_store!(self, pool => {
            Ok(sqlx::query_scalar("SELECT consumer FROM outbox_consumers ORDER BY consumer").fetch_all(pool).await?)
        })
    }

    /// Delete every passed row, whatever its tenant or consumer. The consumers' own purges look
    /// only at their rows of the tenants they just handled; this catches the rows of a consumer
    /// that was unregistered, and rows passed by a consumer no replica runs any more.
    /// Two statements: joined by OR, neither condition could run as a join.
    pub async fn outbox_purge_passed(&self) -> Result<u64, StoreError> {
        let mut purged = 0;
        let passed = match self {
            Store::Postgres(_) => PG_PASSED_BY_CURSORS,
            Store::Sqlite(_) => PASSED_BY_CURSOR,
        };
        for condition in [passed, UNREGISTERED] {
            let sql = format!("DELETE FROM outbox WHERE {condition}");
            purged += on_store!(self, pool => {
                sqlx::query(sqlx::AssertSqlSafe(sql)).execute(pool).await?.rows_affected()
            });
        }
        Ok(purged)
    }

    /// Kafka: the recorded next offset of each partition of `topic`.
    pub async fn outbox_kafka_offsets(&self, topic: &str) -> Result<BTreeMap<i32, i64>, StoreError> {
        on_store!(self, pool => {
            let rows: Vec<(i32, i64)> =
                sqlx::query_as("SELECT partition, next_offset FROM outbox_kafka_offsets WHERE topic = $1")
                    .bind(topic)
                    .fetch_all(pool)
                    .await?;
            Ok(rows.into_iter().collect())
        })
    }

    /// Record a consumer's progress in one transaction: renew its lease (false, and nothing
    /// written, if `holder` no longer holds it), move its cursors forward to `handled` (tenant ->
    /// last sequence), delete the rows `purge` names, and set the Kafka offsets below which every
    /// message is reflected in the cursors.
    pub async fn outbox_advance(&self, progress: &Progress<'_>) -> Result<Advanced, StoreError> {
        match self {
            Store::Postgres(s) => {
                let mut tx = s.pool().begin().await?;
                // The transaction's id (assigned by this update) is after every read before it:
                // what the consumer's read floor needs (see [`floor`]).
                let renewed: Option<i64> = sqlx::query_scalar(
                    "UPDATE outbox_consumers SET lease_expires_at = clock_timestamp() + make_interval(secs => $3)
                     WHERE consumer = $1 AND lease_holder = $2 RETURNING pg_current_xact_id()::text::bigint",
                )
                .bind(progress.consumer)
                .bind(progress.holder)
                .bind(progress.ttl.as_secs_f64())
                .fetch_optional(&mut *tx)
                .await?;
                let Some(xid) = renewed else { return Ok(Advanced::LeaseLost) };
                advance_body!(tx, progress, "GREATEST");
                pg_purge(&mut tx, progress).await?;
                tx.commit().await?;
                Ok(Advanced::Recorded { xid: Some(xid) })
            }
            Store::Sqlite(s) => {
                let mut tx = s.pool().begin_with("BEGIN IMMEDIATE").await?;
                let renewed = sqlx::query(
                    "UPDATE outbox_consumers SET lease_expires_at = $3 WHERE consumer = $1 AND lease_holder = $2",
                )
                .bind(progress.consumer)
                .bind(progress.holder)
                .bind(expiry(chain::now(), progress.ttl))
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if renewed != 1 {
                    return Ok(Advanced::LeaseLost);
                }
                advance_body!(tx, progress, "max");
                sqlite_purge(&mut tx, progress).await?;
                tx.commit().await?;
                Ok(Advanced::Recorded { xid: None })
            }
        }
    }

    /// The consumer's lag: rows not passed yet, the age of the oldest one's event, and how long the
    /// statement took once it had a connection (the sampler's pace: the database's cost of
    /// counting, not the wait for a pooled connection while ingest holds them).
    pub async fn outbox_lag(&self, consumer: &str) -> Result<(u64, Duration, Duration), StoreError> {
        // One statement, one snapshot: the rows not passed counted through a join (a hash join
        // on PostgreSQL; the scalar subquery per row it replaced took 288 ms against 8 for 60,000
        // rows, and 2.4 s against 74 ms for 600,000), and the oldest one's event looked up by
        // key. The oldest had its own statement, an index scan in position order that stepped
        // over every deleted row still in the index (the bench saw 63 ms per sample).
        let sql = "WITH n AS (SELECT count(*) AS pending, min(o.position) AS first FROM outbox o \
                   LEFT JOIN outbox_cursors c ON c.consumer = o.consumer AND c.tenant_id = o.tenant_id \
                   WHERE o.consumer = $1 AND o.sequence > COALESCE(c.sequence, 0)) \
                   SELECT n.pending, e.ts FROM n LEFT JOIN outbox o ON o.consumer = $1 AND o.position = n.first \
                   LEFT JOIN events e ON e.tenant_id = o.tenant_id AND e.sequence = o.sequence";
        let (count, oldest, took): (i64, Option<DateTime<Utc>>, Duration) = match self {
            Store::Postgres(s) => {
                let mut conn = s.pool().acquire().await?;
                let started = std::time::Instant::now();
                let (count, ts) = sqlx::query_as(PG_LAG).bind(consumer).fetch_one(&mut *conn).await?;
                (count, ts, started.elapsed())
            }
            Store::Sqlite(s) => {
                let mut conn = s.pool().acquire().await?;
                let started = std::time::Instant::now();
                let (count, ts): (i64, Option<String>) =
                    sqlx::query_as(sql).bind(consumer).fetch_one(&mut *conn).await?;
                let ts = ts.and_then(|t| DateTime::parse_from_rfc3339(&t).ok()).map(|t| t.with_timezone(&Utc));
                (count, ts, started.elapsed())
            }
        };
        let age = oldest.and_then(|t| (chain::now() - t).to_std().ok()).unwrap_or_default();
        Ok((u64::try_from(count).unwrap_or(0), age, took))
    }
}

/// PostgreSQL: the outbox rows alone (position, key, cursor), then their events: from this
/// process's hand-off when it committed them ([`handoff`]), the others by primary key in one more
/// statement. The rows are what a joined read returned (the same statement decides which); an
/// event is committed with its row, so the second statement, under a later snapshot, finds it.
/// A row whose event is not found is left out, as the join left it out.
async fn pg_pending(
    s: &crate::store::postgres::PgStore,
    consumer: &str,
    limit: i64,
    after: i64,
) -> Result<PendingRead, StoreError> {
    // Whole rows, oldest first, as long as the events before a row number fewer than `limit`
    // (the first row always comes; `before` counts every event of the rows before it), and one
    // more row (position NULL) with the consumer's cursors of the tenants they list, the
    // snapshot's xmin and whether rows were left for the next read (`cut`). One statement, one
    // snapshot. The events the cursors passed are dropped here, not in SQL: unnesting the rows
    // and joining each event to its cursor made the read half as costly again as the per-event
    // rows' read it replaced (pgbench, 240 events in 40 rows: 0.49 ms against 0.33); reading the
    // rows as they are and the cursors once costs what it did (0.34 ms). A row all of whose
    // events were passed (a resync passes events by tenant, not by row) brings no event and is
    // not deleted by the consumer; the periodic purge takes it.
    let sql = "WITH w AS MATERIALIZED (
             SELECT o.position, o.tenants, o.sequences,
                    sum(cardinality(o.sequences)) OVER (ORDER BY o.position ROWS UNBOUNDED PRECEDING)
                      - cardinality(o.sequences) AS before
             FROM outbox o WHERE o.consumer = $1 AND o.position > $3
             ORDER BY o.position LIMIT $2),
         r AS (SELECT position, tenants, sequences FROM w WHERE before < $2)
         SELECT position, tenants, sequences, NULL::text[] AS cursor_tenants, NULL::bigint[] AS cursor_sequences,
                NULL::bigint AS snapshot_xmin, NULL::boolean AS cut FROM r
         UNION ALL
         SELECT NULL, NULL, NULL, array_agg(c.tenant_id), array_agg(c.sequence),
                pg_snapshot_xmin(pg_current_snapshot())::text::bigint,
                (SELECT count(*) >= $2 OR COALESCE(bool_or(before >= $2), false) FROM w)
         FROM outbox_cursors c WHERE c.consumer = $1 AND c.tenant_id IN (SELECT unnest(tenants) FROM r)";
    type Line = (
        Option<i64>,
        Option<Vec<String>>,
        Option<Vec<i64>>,
        Option<Vec<String>>,
        Option<Vec<i64>>,
        Option<i64>,
        Option<bool>,
    );
    let lines: Vec<Line> = sqlx::query_as(sql).bind(consumer).bind(limit).bind(after).fetch_all(s.pool()).await?;
    let mut out = PendingRead::default();
    let mut rows = Vec::new();
    let mut cursors: HashMap<String, i64> = HashMap::new();
    for (position, tenants, sequences, cursor_tenants, cursor_sequences, xmin, cut) in lines {
        match (position, tenants, sequences) {
            (Some(p), Some(t), Some(q)) if t.len() == q.len() => rows.push((p, t, q)),
            (Some(p), ..) => return Err(StoreError::Internal(format!("outbox row {p} lists unpaired events"))),
            (None, ..) => {
                cursors
                    .extend(cursor_tenants.unwrap_or_default().into_iter().zip(cursor_sequences.unwrap_or_default()));
                out.cut = cut.unwrap_or(false);
                out.xmin = xmin;
            }
        }
    }
    if rows.is_empty() {
        out.xmin = None;
    }
    rows.sort_by_key(|r| r.0);
    // (position, tenant, sequence, cursor) of every event not passed, in read order.
    let mut keys: Vec<(i64, String, i64, Option<i64>)> = Vec::new();
    for (position, tenants, sequences) in rows {
        for (tenant, sequence) in tenants.into_iter().zip(sequences) {
            let cursor = cursors.get(&tenant).copied();
            if sequence > cursor.unwrap_or(0) {
                *out.sizes.entry(position).or_default() += 1;
                keys.push((position, tenant, sequence, cursor));
            }
        }
    }
    let wanted: Vec<(&str, i64)> = keys.iter().map(|k| (k.1.as_str(), k.2)).collect();
    let mut found = match &s.handoff {
        Some(h) => h.take(&wanted),
        None => wanted.iter().map(|_| None).collect(),
    };
    out.from_memory = found.iter().filter(|r| r.is_some()).count();
    let (tenants, sequences): (Vec<&str>, Vec<i64>) =
        wanted.iter().zip(&found).filter(|(_, r)| r.is_none()).map(|(k, _)| *k).unzip();
    if !tenants.is_empty() {
        // One primary-key lookup per key, whatever the planner guesses of the arrays (a hash join
        // could scan the whole events table): LIMIT 1 keeps the LATERAL subquery from being
        // flattened into a plain join.
        let sql = format!(
            "SELECT e.* FROM unnest($1::text[], $2::bigint[]) AS k(t, s) \
             CROSS JOIN LATERAL (SELECT {} FROM events WHERE tenant_id = k.t AND sequence = k.s LIMIT 1) AS e",
            crate::store::postgres::COLUMNS
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&tenants).bind(&sequences).fetch_all(s.pool()).await?;
        let mut read: BTreeMap<(String, i64), StoredRow> = BTreeMap::new();
        for r in &rows {
            let row = crate::store::postgres::to_row(r)?;
            read.insert((row.tenant_id.clone(), row.sequence), row);
        }
        out.from_database = read.len();
        for ((tenant, sequence), slot) in wanted.iter().zip(found.iter_mut()) {
            if slot.is_none() {
                *slot = read.remove(&((*tenant).to_owned(), *sequence));
            }
        }
    }
    for ((position, _, _, after), row) in keys.into_iter().zip(found) {
        if let Some(row) = row {
            out.rows.push(Pending { position, after, row });
        }
    }
    Ok(out)
}

/// PostgreSQL: delete the rows the consumer just handled, by primary key; after a resync, every
/// row of the handled tenants its cursors passed (a scan of the consumer's rows: rare).
async fn pg_purge(tx: &mut sqlx::PgConnection, p: &Progress<'_>) -> Result<(), StoreError> {
    match p.purge {
        Purge::Rows([]) => {}
        Purge::Rows(positions) => {
            sqlx::query("DELETE FROM outbox WHERE consumer = $1 AND position = ANY($2::bigint[])")
                .bind(p.consumer)
                .bind(positions)
                .execute(&mut *tx)
                .await?;
        }
        Purge::Passed if p.handled.is_empty() => {}
        Purge::Passed => {
            let tenants: Vec<&str> = p.handled.keys().map(String::as_str).collect();
            let sql = format!(
                "DELETE FROM outbox o WHERE o.consumer = $1 AND o.tenants && $2::text[] AND NOT {PG_ROW_PENDING}"
            );
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(p.consumer).bind(&tenants).execute(&mut *tx).await?;
        }
    }
    Ok(())
}

/// SQLite: the same purges (a single-host store; its outbox stays small).
async fn sqlite_purge(tx: &mut sqlx::SqliteConnection, p: &Progress<'_>) -> Result<(), StoreError> {
    match p.purge {
        Purge::Rows(positions) => {
            for chunk in positions.chunks(ROWS_PER_INSERT) {
                let mut purge = QueryBuilder::new("DELETE FROM outbox WHERE consumer = ");
                purge.push_bind(p.consumer).push(" AND position IN (");
                let mut list = purge.separated(", ");
                for position in chunk {
                    list.push_bind(*position);
                }
                purge.push(")");
                purge.build().execute(&mut *tx).await?;
            }
        }
        Purge::Passed if p.handled.is_empty() => {}
        Purge::Passed => {
            let mut purge = QueryBuilder::new("DELETE FROM outbox WHERE consumer = ");
            purge.push_bind(p.consumer).push(" AND tenant_id IN (");
            let mut tenants = purge.separated(", ");
            for tenant in p.handled.keys() {
                tenants.push_bind(tenant.as_str());
            }
            purge.push(") AND ").push(PASSED_BY_CURSOR);
            purge.build().execute(&mut *tx).await?;
        }
    }
    Ok(())
}

/// A consumer's read: its events, its snapshot's xmin (PostgreSQL, when it found rows), whether
/// it stopped at its limit, how many events each row it read holds, and where they came from.
#[derive(Default)]
struct PendingRead {
    rows: Vec<Pending>,
    xmin: Option<i64>,
    cut: bool,
    sizes: BTreeMap<i64, usize>,
    from_memory: usize,
    from_database: usize,
}

/// The rows a read returned: how many pending events each listed (rows are read whole), and
/// whether the read stopped at its limit.
pub(crate) struct Rows {
    sizes: BTreeMap<i64, usize>,
    cut: bool,
}

impl Rows {
    /// The read stopped at its limit: more rows are waiting, read again at once.
    pub fn cut(&self) -> bool {
        self.cut
    }

    /// The positions of the rows every read event of which is among `handled` (the position of
    /// each event handled): the rows a progress may delete, ascending. A row with an event
    /// still to handle (a failed item, an event held back after a gap) stays.
    pub fn complete(&self, handled: impl IntoIterator<Item = i64>) -> Vec<i64> {
        let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
        for position in handled {
            *counts.entry(position).or_default() += 1;
        }
        counts.into_iter().filter(|(p, n)| self.sizes.get(p) == Some(n)).map(|(p, _)| p).collect()
    }
}

/// What [`Store::outbox_advance`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advanced {
    /// Another holder has the lease: nothing written.
    LeaseLost,
    /// Written; `xid`: the recording transaction's id (PostgreSQL), for the read floor.
    Recorded { xid: Option<i64> },
}

/// Which rows a consumer's progress deletes.
#[derive(Clone, Copy)]
pub enum Purge<'a> {
    /// The rows it read and handled whole, by position: exactly those its cursors now pass. By
    /// primary key, so the outbox needs no second index, which every append paid for twice per row.
    Rows(&'a [i64]),
    /// Every row of the handled tenants its cursors passed, read or not (a resync moves cursors
    /// past events it found on the topic, whose rows it never read).
    Passed,
}

/// What [`Store::outbox_advance`] records.
pub struct Progress<'a> {
    pub consumer: &'a str,
    pub holder: &'a str,
    pub ttl: Duration,
    /// Tenant -> last sequence handled (cursors only move forward).
    pub handled: &'a BTreeMap<String, i64>,
    /// The rows to delete with this progress.
    pub purge: Purge<'a>,
    /// Kafka: (topic, partition -> next offset).
    pub offsets: Option<(&'a str, &'a BTreeMap<i32, i64>)>,
}

/// SQLite lease expiry: fixed-width RFC 3339 text, comparable as text.
fn expiry(now: DateTime<Utc>, ttl: Duration) -> String {
    chain::format_timestamp(now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::days(365)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_complete_once_every_event_read_of_it_is_handled() {
        // Row 7 listed 3 pending events, row 9 one, row 12 two.
        let rows = Rows { sizes: BTreeMap::from([(7, 3), (9, 1), (12, 2)]), cut: false };
        assert_eq!(rows.complete([7, 9, 7, 12, 7]), vec![7, 9], "row 12 has an event left");
        assert_eq!(rows.complete([12, 12]), vec![12]);
        assert_eq!(rows.complete([7, 7]), Vec::<i64>::new(), "one of row 7's events is not handled");
        assert_eq!(rows.complete([5]), Vec::<i64>::new(), "a position the read did not return");
    }
}
