//! Storage: one implementation per database, same behaviour. Appends take the tenant's chain-head
//! row lock inside the database, so any number of server processes share one consistent chain.

pub mod postgres;
pub mod sqlite;

use std::collections::HashMap;

use audit_api::checkpoint::SignedCheckpoint;
use audit_api::{BrokenLink, EventReceipt, NewEvent, StoredEvent, VerifyReport};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::chain;

/// A storage failure. Bad input never gets here: handlers validate first.
#[derive(Debug)]
pub enum StoreError {
    /// The database cannot be reached or timed out (503, the client may retry).
    Unavailable(String),
    /// The connection failed during COMMIT: the transaction may or may not have committed (500;
    /// a retry with the same Idempotency-Key is safe, one without may store the events twice).
    CommitUnknown(String),
    /// Anything else (500: a bug or a broken database).
    Internal(String),
}

impl std::error::Error for StoreError {}

impl StoreError {
    /// The same error for another waiter (sqlx errors are not Clone, so only the text is kept).
    pub fn duplicate(&self) -> StoreError {
        match self {
            StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
            StoreError::CommitUnknown(m) => StoreError::CommitUnknown(m.clone()),
            StoreError::Internal(m) => StoreError::Internal(m.clone()),
        }
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Unavailable(m) => write!(f, "database unavailable: {m}"),
            StoreError::CommitUnknown(m) => write!(f, "commit outcome unknown: {m}"),
            StoreError::Internal(m) => write!(f, "database error: {m}"),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => {
                StoreError::Unavailable(e.to_string())
            }
            sqlx::Error::Database(db) => {
                // SQLite busy/locked and PostgreSQL admin shutdown, crash recovery, too many
                // connections, serialization or deadlock, lock or statement timeout, a read-only
                // database (a replica, a failover in progress): transient, worth a retry, and the
                // transaction rolled back.
                let code = db.code().map(|c| c.to_string()).unwrap_or_default();
                let transient = matches!(
                    code.as_str(),
                    "5" | "6"
                        | "517"
                        | "57P01"
                        | "57P02"
                        | "57P03"
                        | "53300"
                        | "40001"
                        | "40P01"
                        | "55P03"
                        | "57014"
                        | "25006"
                ) || code.starts_with("08");
                if transient { StoreError::Unavailable(e.to_string()) } else { StoreError::Internal(e.to_string()) }
            }
            _ => StoreError::Internal(e.to_string()),
        }
    }
}

/// The retry protection of one request: its key and a fingerprint of what was asked.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key: String,
    pub fingerprint: String,
}

/// One request's events, appended together (a single POST is a job of one).
#[derive(Debug)]
pub struct AppendJob {
    pub events: Vec<NewEvent>,
    pub idempotency: Option<Idempotency>,
}

/// What happened to a job.
#[derive(Debug, Clone)]
pub enum JobOutcome {
    Stored(Vec<EventReceipt>),
    /// Same key and same request seen before: the original receipts.
    Replayed(Vec<EventReceipt>),
    /// Same key, different request.
    KeyConflict,
}

/// A row to insert, computed while the chain head is locked.
pub(crate) struct NewRow {
    pub id: Uuid,
    pub sequence: i64,
    pub ts: DateTime<Utc>,
    pub actor_id: String,
    pub resource_id: String,
    pub action_type: String,
    pub body: String,
    pub hash: String,
    pub previous_hash: String,
}

/// A new idempotency record to insert with the rows.
pub(crate) struct NewKey {
    pub key: String,
    pub fingerprint: String,
    pub receipts: String,
}

/// The database-independent part of an append: given the locked head and the keys already stored,
/// chain the jobs' events and decide every job's outcome.
pub(crate) struct Plan {
    pub rows: Vec<NewRow>,
    pub keys: Vec<NewKey>,
    pub outcomes: Vec<JobOutcome>,
    pub head_sequence: i64,
    pub head_hash: String,
}

pub(crate) fn plan(
    mut head_sequence: i64,
    mut head_hash: String,
    jobs: &[AppendJob],
    mut known: HashMap<String, (String, Vec<EventReceipt>)>,
) -> Plan {
    let ts = chain::now();
    let timestamp = chain::format_timestamp(ts);
    let mut rows = Vec::new();
    let mut keys = Vec::new();
    let mut outcomes = Vec::with_capacity(jobs.len());
    for job in jobs {
        if let Some(idem) = &job.idempotency
            && let Some((fingerprint, receipts)) = known.get(&idem.key)
        {
            outcomes.push(if *fingerprint == idem.fingerprint {
                JobOutcome::Replayed(receipts.clone())
            } else {
                JobOutcome::KeyConflict
            });
            continue;
        }
        let mut receipts = Vec::with_capacity(job.events.len());
        for event in &job.events {
            head_sequence += 1;
            let id = Uuid::now_v7();
            let id_text = id.to_string();
            let body = chain::canonical_body(&id_text, head_sequence, &timestamp, event);
            let hash = chain::link_hash(&body, &head_hash);
            receipts.push(EventReceipt {
                id: id_text,
                sequence: head_sequence,
                timestamp: timestamp.clone(),
                hash: hash.clone(),
                previous_hash: head_hash.clone(),
                status: "STORED".into(),
            });
            rows.push(NewRow {
                id,
                sequence: head_sequence,
                ts,
                actor_id: event.actor.id.clone(),
                resource_id: event.resource.id.clone(),
                action_type: event.action.kind.clone(),
                body,
                previous_hash: std::mem::replace(&mut head_hash, hash.clone()),
                hash,
            });
        }
        if let Some(idem) = &job.idempotency {
            keys.push(NewKey {
                key: idem.key.clone(),
                fingerprint: idem.fingerprint.clone(),
                receipts: serde_json::to_string(&receipts).unwrap_or_default(),
            });
            known.insert(idem.key.clone(), (idem.fingerprint.clone(), receipts.clone()));
        }
        outcomes.push(JobOutcome::Stored(receipts));
    }
    Plan { rows, keys, outcomes, head_sequence, head_hash }
}

/// Filters of `GET /events`, already validated.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub tenant_id: String,
    pub actor_id: Option<String>,
    pub resource_id: Option<String>,
    pub action_type: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub limit: u32,
    /// Keyset position: the sequence of the last event of the previous page.
    pub after_sequence: Option<i64>,
    pub descending: bool,
}

/// An event row as stored, for reading and verifying.
#[derive(Clone)]
pub(crate) struct StoredRow {
    pub id: String,
    pub tenant_id: String,
    pub sequence: i64,
    /// The `ts` column, formatted like event timestamps.
    pub timestamp: String,
    pub actor_id: String,
    pub resource_id: String,
    pub action_type: String,
    pub body: String,
    pub hash: String,
    pub previous_hash: String,
}

impl StoredRow {
    pub fn into_event(self) -> Result<StoredEvent, StoreError> {
        let mut value: serde_json::Value = serde_json::from_str(&self.body)
            .map_err(|e| StoreError::Internal(format!("event {} has an unreadable body: {e}", self.id)))?;
        if let Some(map) = value.as_object_mut() {
            map.insert("hash".into(), self.hash.into());
            map.insert("previousHash".into(), self.previous_hash.into());
        }
        serde_json::from_value(value)
            .map_err(|e| StoreError::Internal(format!("event {} has an unexpected body: {e}", self.id)))
    }
}

/// Walks a chain in sequence order and remembers the first broken link.
pub(crate) struct Verifier {
    tenant_id: String,
    checkpoint: Option<SignedCheckpoint>,
    expected_sequence: i64,
    previous_hash: String,
    checked: u64,
    broken: Option<BrokenLink>,
}

impl Verifier {
    /// `checkpoint`: a signed checkpoint of this tenant (signature already checked) that the chain
    /// must contain.
    pub fn new(tenant_id: &str, checkpoint: Option<SignedCheckpoint>) -> Self {
        Verifier {
            tenant_id: tenant_id.to_owned(),
            checkpoint,
            expected_sequence: 1,
            previous_hash: chain::genesis().to_owned(),
            checked: 0,
            broken: None,
        }
    }

    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// Check the next row (rows must come in ascending sequence order).
    pub fn check(&mut self, row: &StoredRow) {
        if self.broken.is_some() {
            return;
        }
        let at = self.expected_sequence;
        let fail = |reason: String, event_id: Option<String>| BrokenLink { sequence: at, event_id, reason };
        let id = Some(row.id.clone());
        if row.sequence > at {
            self.broken = Some(fail(format!("event {at} is missing (next stored event is {})", row.sequence), None));
            return;
        }
        if row.sequence < at {
            self.broken = Some(fail(format!("sequence {} appears out of order", row.sequence), id));
            return;
        }
        if row.previous_hash != self.previous_hash {
            self.broken = Some(fail("previousHash does not match the hash of the preceding event".into(), id));
            return;
        }
        if chain::link_hash(&row.body, &self.previous_hash) != row.hash {
            self.broken = Some(fail("hash does not match the event's content".into(), id));
            return;
        }
        if let Some(reason) = columns_disagree(row) {
            self.broken = Some(fail(reason, id));
            return;
        }
        if let Some(cp) = &self.checkpoint
            && cp.sequence == at
            && cp.hash != row.hash
        {
            let reason = format!(
                "event {at} differs from the signed checkpoint of {}: the chain was rewritten, or restored from \
                 another history (an old backup, a lagging replica)",
                cp.issued_at
            );
            self.broken = Some(fail(reason, id));
            return;
        }
        self.previous_hash = row.hash.clone();
        self.expected_sequence += 1;
        self.checked += 1;
    }

    /// Compare the end of the walk with the chain head (catches deleted or added trailing events).
    pub fn finish(mut self, head: Option<(i64, String)>) -> VerifyReport {
        if self.broken.is_none() {
            let last = self.expected_sequence - 1;
            let (head_seq, head_hash) = head.unwrap_or((0, chain::genesis().to_owned()));
            if head_seq > last {
                self.broken = Some(BrokenLink {
                    sequence: last + 1,
                    event_id: None,
                    reason: format!("events {} to {head_seq} are missing (chain head is at {head_seq})", last + 1),
                });
            } else if head_seq < last {
                self.broken = Some(BrokenLink {
                    sequence: head_seq + 1,
                    event_id: None,
                    reason: format!("events after the chain head ({head_seq}) were added outside the service"),
                });
            } else if head_hash != self.previous_hash {
                self.broken = Some(BrokenLink {
                    sequence: last.max(1),
                    event_id: None,
                    reason: "the chain head's hash does not match the last event".into(),
                });
            } else if let Some(cp) = self.checkpoint.as_ref().filter(|cp| cp.sequence > last) {
                self.broken = Some(BrokenLink {
                    sequence: last + 1,
                    event_id: None,
                    reason: format!(
                        "the chain ends at {last} but the signed checkpoint of {} covers {} events: events were \
                         removed (tail cut with the head moved back, rollback, or restore of an old backup)",
                        cp.issued_at, cp.sequence
                    ),
                });
            }
        }
        VerifyReport {
            tenant_id: self.tenant_id,
            verified: self.broken.is_none(),
            checked: self.checked,
            first_broken_at: self.broken,
            checkpoint: self.checkpoint,
        }
    }
}

/// The indexed columns must say what the hashed body says (else queries would return tampered rows).
fn columns_disagree(row: &StoredRow) -> Option<String> {
    let event = match serde_json::from_str::<serde_json::Value>(&row.body) {
        Ok(v) => v,
        Err(e) => return Some(format!("stored body is not JSON: {e}")),
    };
    let field = |path: &[&str]| -> Option<String> {
        let mut v = &event;
        for p in path {
            v = v.get(p)?;
        }
        match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    let checks: [(&str, Option<String>, &str); 7] = [
        ("id", field(&["id"]), &row.id),
        ("sequence", field(&["sequence"]), &row.sequence.to_string()),
        ("timestamp", field(&["timestamp"]), &row.timestamp),
        ("tenant", field(&["metadata", "tenantId"]), &row.tenant_id),
        ("actor id", field(&["actor", "id"]), &row.actor_id),
        ("resource id", field(&["resource", "id"]), &row.resource_id),
        ("action type", field(&["action", "type"]), &row.action_type),
    ];
    checks
        .iter()
        .find(|(_, body, column)| body.as_deref() != Some(*column))
        .map(|(name, _, _)| format!("the stored {name} column differs from the hashed event"))
}

/// The configured store.
pub enum Store {
    Postgres(postgres::PgStore),
    Sqlite(sqlite::SqliteStore),
}

/// One tenant's jobs, in arrival order.
pub struct Run {
    pub tenant_id: String,
    pub jobs: Vec<AppendJob>,
}

/// Where a multi-tenant transaction failed: before COMMIT nothing was written, so each run can be
/// retried alone; at COMMIT the outcome is unknown, so a retry could append the events twice.
pub(crate) enum TxError {
    BeforeCommit(StoreError),
    AtCommit(StoreError),
}

impl Store {
    /// Append several tenants' runs in one transaction (one commit for all), one result per run.
    /// The chain heads are locked in tenant order, so concurrent processes cannot deadlock: the
    /// runs must be sorted by tenant, each tenant once. If the shared transaction fails before
    /// COMMIT (one run's error rolls back everyone's), each run is retried in a transaction of its
    /// own so that one tenant's failure does not fail the others.
    pub async fn append_runs(&self, runs: &[Run]) -> Vec<Result<Vec<JobOutcome>, StoreError>> {
        if !runs.windows(2).all(|w| w[0].tenant_id < w[1].tenant_id) {
            let e = "append runs are not sorted by distinct tenant (lock order)";
            return runs.iter().map(|_| Err(StoreError::Internal(e.into()))).collect();
        }
        match self.append_tx(runs).await {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            // Only a database error (a constraint, a bug) may be one run's fault; unavailability
            // is everyone's, and retrying each run against a down database would only stall.
            Err(TxError::BeforeCommit(e @ StoreError::Internal(_))) if runs.len() > 1 => {
                tracing::warn!(runs = runs.len(), error = %e, "shared append failed, retrying each tenant alone");
                let mut results = Vec::with_capacity(runs.len());
                for run in runs {
                    results.push(match self.append_tx(std::slice::from_ref(run)).await {
                        Ok(mut outcomes) => outcomes
                            .pop()
                            .ok_or_else(|| StoreError::Internal("a run came back without outcomes".into())),
                        Err(TxError::BeforeCommit(e)) => Err(e),
                        Err(TxError::AtCommit(e)) => Err(StoreError::CommitUnknown(e.to_string())),
                    });
                }
                results
            }
            Err(TxError::BeforeCommit(e)) => runs.iter().map(|_| Err(e.duplicate())).collect(),
            Err(TxError::AtCommit(e)) => {
                let e = StoreError::CommitUnknown(e.to_string());
                runs.iter().map(|_| Err(e.duplicate())).collect()
            }
        }
    }

    /// Delete idempotency records created before `before` (their retention is over); how many.
    pub async fn purge_idempotency(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        match self {
            Store::Postgres(s) => s.purge_idempotency(before).await,
            Store::Sqlite(s) => s.purge_idempotency(before).await,
        }
    }

    /// Whether appends can commit now: a connection of the append pool answers within the
    /// caller's timeout and the database takes writes (not a replica, not read-only).
    pub async fn writable(&self) -> Result<(), StoreError> {
        match self {
            Store::Postgres(s) => s.writable().await,
            Store::Sqlite(s) => s.ping().await,
        }
    }

    async fn append_tx(&self, runs: &[Run]) -> Result<Vec<Vec<JobOutcome>>, TxError> {
        match self {
            Store::Postgres(s) => s.append(runs).await,
            Store::Sqlite(s) => s.append(runs).await,
        }
    }

    pub async fn get(&self, id: Uuid) -> Result<Option<StoredEvent>, StoreError> {
        match self {
            Store::Postgres(s) => s.get(id).await,
            Store::Sqlite(s) => s.get(id).await,
        }
    }

    /// One page plus whether more follow.
    pub async fn list(&self, q: &ListQuery) -> Result<(Vec<StoredEvent>, bool), StoreError> {
        match self {
            Store::Postgres(s) => s.list(q).await,
            Store::Sqlite(s) => s.list(q).await,
        }
    }

    pub async fn verify(
        &self,
        tenant_id: &str,
        checkpoint: Option<SignedCheckpoint>,
    ) -> Result<VerifyReport, StoreError> {
        match self {
            Store::Postgres(s) => s.verify(tenant_id, checkpoint).await,
            Store::Sqlite(s) => s.verify(tenant_id, checkpoint).await,
        }
    }

    /// Every chain head: (tenant, last sequence, last hash).
    pub async fn heads(&self) -> Result<Vec<(String, i64, String)>, StoreError> {
        let sql = "SELECT tenant_id, last_sequence, last_hash FROM chain_heads ORDER BY tenant_id";
        let rows: Vec<(String, i64, String)> = match self {
            Store::Postgres(s) => sqlx::query_as(sql).fetch_all(s.pool()).await?,
            Store::Sqlite(s) => sqlx::query_as(sql).fetch_all(s.pool()).await?,
        };
        Ok(rows)
    }

    /// The hash stored for a tenant's event at `sequence`.
    pub async fn hash_at(&self, tenant_id: &str, sequence: i64) -> Result<Option<String>, StoreError> {
        Ok(match self {
            Store::Postgres(s) => {
                sqlx::query_scalar("SELECT hash FROM events WHERE tenant_id = $1 AND sequence = $2")
                    .bind(tenant_id)
                    .bind(sequence)
                    .fetch_optional(s.pool())
                    .await?
            }
            Store::Sqlite(s) => {
                sqlx::query_scalar("SELECT hash FROM events WHERE tenant_id = ? AND sequence = ?")
                    .bind(tenant_id)
                    .bind(sequence)
                    .fetch_optional(s.pool())
                    .await?
            }
        })
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Postgres(s) => s.ping().await,
            Store::Sqlite(s) => s.ping().await,
        }
    }

    /// (connections in use, maximum) of the pool.
    pub fn pool_usage(&self) -> (u64, u64) {
        match self {
            Store::Postgres(s) => s.pool_usage(),
            Store::Sqlite(s) => s.pool_usage(),
        }
    }

    pub async fn close(&self) {
        match self {
            Store::Postgres(s) => s.close().await,
            Store::Sqlite(s) => s.close().await,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Store::Postgres(_) => "postgresql",
            Store::Sqlite(_) => "sqlite",
        }
    }
}

/// Stored receipts of an idempotency key (written by `plan`).
pub(crate) fn parse_receipts(text: &str) -> Result<Vec<EventReceipt>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Internal(format!("unreadable idempotency record: {e}")))
}
