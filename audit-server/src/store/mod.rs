//! Storage: one implementation per database, same behaviour. Appends take the tenant's chain-head
//! row lock inside the database, so any number of server processes share one consistent chain.

pub mod postgres;
pub mod sqlite;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use audit_api::checkpoint::{CheckpointMatch, SignedCheckpoint};
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
#[derive(Clone)]
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
                checkpoint: None,
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
    /// The event as the API returns it. The body is read straight into its typed members, not
    /// through a `serde_json::Value` tree (a map allocation per object, then a second walk to the
    /// struct): GET, list, and with the outbox the relay and the indexer, once each per event.
    /// The bench showed no rate change beyond its noise. Same semantics as the tree path
    /// (`into_event_via_value`, compared by a property test): unknown members ignored.
    pub fn into_event(self) -> Result<StoredEvent, StoreError> {
        Ok(self.body()?.with_hashes(self.hash, self.previous_hash))
    }

    /// [`StoredRow::into_event`] of a borrowed row (the relay keeps its rows until they are
    /// recorded): the hashes are copied, not the whole row with its body.
    pub fn to_event(&self) -> Result<StoredEvent, StoreError> {
        Ok(self.body()?.with_hashes(self.hash.clone(), self.previous_hash.clone()))
    }

    fn body(&self) -> Result<Body, StoreError> {
        serde_json::from_str(&self.body)
            .map_err(|e| StoreError::Internal(format!("event {} has an unreadable body: {e}", self.id)))
    }

    /// The reference for [`StoredRow::into_event`]: the body parsed to a `Value`, the two hashes
    /// added, then read as a [`StoredEvent`] (the implementation before the typed one).
    #[cfg(test)]
    pub fn into_event_via_value(self) -> Result<StoredEvent, StoreError> {
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

/// A stored body: every member of [`StoredEvent`] but the two hashes, which are columns.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    id: String,
    sequence: i64,
    timestamp: String,
    #[serde(default)]
    occurred_at: Option<String>,
    actor: audit_api::Actor,
    action: audit_api::Action,
    resource: audit_api::Resource,
    metadata: audit_api::Metadata,
}

impl Body {
    fn with_hashes(self, hash: String, previous_hash: String) -> StoredEvent {
        StoredEvent {
            id: self.id,
            sequence: self.sequence,
            timestamp: self.timestamp,
            occurred_at: self.occurred_at,
            actor: self.actor,
            action: self.action,
            resource: self.resource,
            metadata: self.metadata,
            hash,
            previous_hash,
        }
    }
}

/// Where an incremental walk starts: a position verified before (the event at `sequence` had
/// `hash`, and every link up to it was intact).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub sequence: i64,
    pub hash: String,
}

/// Walks a chain in sequence order and remembers the first broken link.
pub(crate) struct Verifier {
    tenant_id: String,
    checkpoint: Option<SignedCheckpoint>,
    /// Incremental walk: the first row must be this verified position, unchanged.
    start: Option<Start>,
    expected_sequence: i64,
    previous_hash: String,
    checked: u64,
    broken: Option<BrokenLink>,
    /// The walk stopped at a broken link (rather than at the end of the chain).
    stopped: bool,
    checkpoint_match: Option<CheckpointMatch>,
    verified_from: Option<i64>,
}

impl Verifier {
    /// `checkpoint`: a signed checkpoint of this tenant (signature already checked) that the chain
    /// must contain. `start`: walk only what follows a position verified before; the store then
    /// passes rows from `start.sequence` on (the anchor first).
    pub fn new(tenant_id: &str, checkpoint: Option<SignedCheckpoint>, start: Option<Start>) -> Self {
        let start = start.filter(|s| s.sequence > 0);
        let checkpoint_match = match &checkpoint {
            Some(cp) if cp.sequence <= 0 => {
                Some(if cp.hash == chain::genesis() { CheckpointMatch::Matched } else { CheckpointMatch::Rewritten })
            }
            _ => None,
        };
        Verifier {
            tenant_id: tenant_id.to_owned(),
            checkpoint,
            expected_sequence: start.as_ref().map_or(1, |s| s.sequence),
            verified_from: start.as_ref().map(|s| s.sequence),
            previous_hash: chain::genesis().to_owned(),
            start,
            checked: 0,
            broken: None,
            stopped: false,
            checkpoint_match,
        }
    }

    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// Sequence after which the store reads rows: the anchor of an incremental walk is read again.
    pub fn read_after(&self) -> i64 {
        self.start.as_ref().map_or(0, |s| s.sequence - 1)
    }

    /// Links checked so far.
    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// An incremental walk does not read the checkpoint's event when it lies before the start:
    /// the store looks its hash up (same snapshot) and passes it to [`Verifier::checkpoint_hash`].
    pub fn checkpoint_before_start(&self) -> Option<i64> {
        match (&self.checkpoint, &self.start) {
            (Some(cp), Some(start)) if cp.sequence > 0 && cp.sequence < start.sequence => Some(cp.sequence),
            _ => None,
        }
    }

    /// The stored hash at the checkpoint's sequence (see [`Verifier::checkpoint_before_start`]).
    pub fn checkpoint_hash(&mut self, hash: Option<String>) {
        let Some(cp) = &self.checkpoint else { return };
        if hash.as_deref() == Some(cp.hash.as_str()) {
            self.checkpoint_match = Some(CheckpointMatch::Matched);
            return;
        }
        let (kind, what) = match hash {
            Some(_) => (CheckpointMatch::Rewritten, "differs from"),
            None => (CheckpointMatch::Truncated, "is missing, although covered by"),
        };
        self.checkpoint_match = Some(kind);
        self.stopped = true;
        self.broken = Some(BrokenLink {
            sequence: cp.sequence,
            event_id: None,
            reason: format!(
                "event {} {what} the signed checkpoint of {}: the chain was rewritten, or restored from \
                 another history (an old backup, a lagging replica)",
                cp.sequence, cp.issued_at
            ),
        });
    }

    /// Check the next row (rows must come in ascending sequence order).
    pub fn check(&mut self, row: &StoredRow) {
        if self.broken.is_some() {
            return;
        }
        let at = self.expected_sequence;
        let id = Some(row.id.clone());
        if let Some(start) = self.start.take() {
            // The anchor: the event verified before must still be there, unchanged. Its own link
            // was checked then; its content must still match its hash.
            let reason = if row.sequence != start.sequence {
                Some(format!("event {} verified before is missing", start.sequence))
            } else if row.hash != start.hash {
                Some(format!("event {} no longer carries the hash it had when verified", start.sequence))
            } else if chain::link_hash(&row.body, &row.previous_hash) != row.hash {
                Some("hash does not match the event's content".to_owned())
            } else {
                columns_disagree(row)
            };
            if let Some(reason) = reason {
                return self.fail(at, reason, (row.sequence == start.sequence).then_some(row.id.clone()));
            }
            self.compare_checkpoint(at, &row.hash);
            if self.broken.is_none() {
                self.previous_hash = row.hash.clone();
                self.expected_sequence += 1;
            }
            return;
        }
        if row.sequence > at {
            return self.fail(at, format!("event {at} is missing (next stored event is {})", row.sequence), None);
        }
        if row.sequence < at {
            return self.fail(at, format!("sequence {} appears out of order", row.sequence), id);
        }
        if row.previous_hash != self.previous_hash {
            return self.fail(at, "previousHash does not match the hash of the preceding event".into(), id);
        }
        if chain::link_hash(&row.body, &self.previous_hash) != row.hash {
            return self.fail(at, "hash does not match the event's content".into(), id);
        }
        if let Some(reason) = columns_disagree(row) {
            return self.fail(at, reason, id);
        }
        self.compare_checkpoint(at, &row.hash);
        if self.broken.is_some() {
            return;
        }
        self.previous_hash = row.hash.clone();
        self.expected_sequence += 1;
        self.checked += 1;
    }

    fn fail(&mut self, at: i64, reason: String, event_id: Option<String>) {
        self.stopped = true;
        self.broken = Some(BrokenLink { sequence: at, event_id, reason });
    }

    fn compare_checkpoint(&mut self, at: i64, hash: &str) {
        let Some(cp) = &self.checkpoint else { return };
        if cp.sequence != at {
            return;
        }
        if cp.hash == hash {
            self.checkpoint_match = Some(CheckpointMatch::Matched);
            return;
        }
        let reason = format!(
            "event {at} differs from the signed checkpoint of {}: the chain was rewritten, or restored from \
             another history (an old backup, a lagging replica)",
            cp.issued_at
        );
        self.checkpoint_match = Some(CheckpointMatch::Rewritten);
        self.fail(at, reason, None);
    }

    /// Compare the end of the walk with the chain head (catches deleted or added trailing events).
    /// Also the position the walk reached (the chain head when verified).
    pub fn finish(mut self, head: Option<(i64, String)>) -> (VerifyReport, Start) {
        let verified_from = self.verified_from;
        let last = self.expected_sequence - 1;
        if self.broken.is_none() && self.start.is_some() {
            // Not even the anchor was read: the chain is shorter than what was verified before.
            let s = self.start.take().map_or(0, |s| s.sequence);
            self.fail(s, format!("event {s} verified before is missing"), None);
        }
        if self.broken.is_none() {
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
        if self.checkpoint.is_some() && self.checkpoint_match.is_none() {
            // The walk never reached the checkpoint's sequence: it stopped at a broken link before
            // it, or the chain ends before it.
            self.checkpoint_match =
                Some(if self.stopped { CheckpointMatch::Unreached } else { CheckpointMatch::Truncated });
        }
        let end = Start { sequence: last, hash: self.previous_hash };
        let report = VerifyReport {
            tenant_id: self.tenant_id,
            verified: self.broken.is_none(),
            checked: self.checked,
            first_broken_at: self.broken,
            checkpoint: self.checkpoint,
            checkpoint_match: self.checkpoint_match,
            verified_from,
        };
        (report, end)
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

/// Where the time of append transactions went (`audit_append_phase_seconds_total`, and the
/// benchmark's per-phase breakdown). Retries of a failed shared transaction add to it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Phases {
    /// BEGIN, including the wait for an append connection.
    pub begin: Duration,
    /// Locking the chain heads (waiting for other writers of the same tenants) and reading the
    /// idempotency keys asked for.
    pub lock: Duration,
    /// Chaining and hashing the events, in this process, while the heads are locked.
    pub hash: Duration,
    /// Writing the events, idempotency records and chain heads.
    pub write: Duration,
    /// COMMIT: the WAL flush (fsync) that makes the events durable.
    pub commit: Duration,
}

impl Phases {
    /// Add the time since `since` to one phase; returns now, the start of the next phase.
    pub(crate) fn lap(phase: &mut Duration, since: Instant) -> Instant {
        let now = Instant::now();
        *phase += now - since;
        now
    }
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
    /// runs must be sorted by tenant, each tenant once. On PostgreSQL, runs on heads this process
    /// wrote last go first in one statement of their own (see `PgStore::append_on_known_heads`);
    /// the rest share a transaction. If the shared transaction fails before
    /// COMMIT (one run's error rolls back everyone's), each run is retried in a transaction of its
    /// own so that one tenant's failure does not fail the others.
    pub async fn append_runs(&self, runs: &[Run]) -> (Vec<Result<Vec<JobOutcome>, StoreError>>, Phases) {
        let mut phases = Phases::default();
        let results = self.append_runs_timed(runs, &mut phases).await;
        (results, phases)
    }

    async fn append_runs_timed(&self, runs: &[Run], phases: &mut Phases) -> Vec<Result<Vec<JobOutcome>, StoreError>> {
        if !runs.windows(2).all(|w| w[0].tenant_id < w[1].tenant_id) {
            let e = "append runs are not sorted by distinct tenant (lock order)";
            return runs.iter().map(|_| Err(StoreError::Internal(e.into()))).collect();
        }
        // PostgreSQL first tries the runs whose chain heads this process knows in one statement
        // (its own transaction); what that does not decide goes through the shared transaction.
        let mut results = match self {
            Store::Postgres(s) => s.append_on_known_heads(runs, phases).await,
            Store::Sqlite(_) => runs.iter().map(|_| None).collect(),
        };
        let rest: Vec<&Run> = runs.iter().zip(&results).filter(|(_, r)| r.is_none()).map(|(run, _)| run).collect();
        if !rest.is_empty() {
            let mut decided = self.append_shared(&rest, phases).await.into_iter();
            for slot in results.iter_mut().filter(|r| r.is_none()) {
                *slot = decided.next();
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StoreError::Internal("a run came back without a result".into()))))
            .collect()
    }

    async fn append_shared(&self, runs: &[&Run], phases: &mut Phases) -> Vec<Result<Vec<JobOutcome>, StoreError>> {
        match self.append_tx(runs, phases).await {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            // Only a database error (a constraint, a bug) may be one run's fault; unavailability
            // is everyone's, and retrying each run against a down database would only stall.
            Err(TxError::BeforeCommit(e @ StoreError::Internal(_))) if runs.len() > 1 => {
                tracing::warn!(runs = runs.len(), error = %e, "shared append failed, retrying each tenant alone");
                let mut results = Vec::with_capacity(runs.len());
                for run in runs {
                    results.push(match self.append_tx(std::slice::from_ref(run), phases).await {
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

    /// Whether appends can commit now: an append committed in the last 2 s, or else a connection
    /// of the append pool answers within the caller's timeout and the database takes writes (not a
    /// replica, not read-only).
    pub async fn writable(&self) -> Result<(), StoreError> {
        match self {
            Store::Postgres(s) => s.writable().await,
            Store::Sqlite(s) => s.ping().await,
        }
    }

    async fn append_tx(&self, runs: &[&Run], phases: &mut Phases) -> Result<Vec<Vec<JobOutcome>>, TxError> {
        match self {
            Store::Postgres(s) => s.append(runs, phases).await,
            Store::Sqlite(s) => s.append(runs, phases).await,
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

    /// Walk a tenant's chain in one snapshot, from `start` (a position verified before) or from the
    /// first event; `progress` is called with the links checked so far after each page.
    pub async fn verify(
        &self,
        tenant_id: &str,
        checkpoint: Option<SignedCheckpoint>,
        start: Option<Start>,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(VerifyReport, Start), StoreError> {
        match self {
            Store::Postgres(s) => s.verify(tenant_id, checkpoint, start, progress).await,
            Store::Sqlite(s) => s.verify(tenant_id, checkpoint, start, progress).await,
        }
    }

    /// The signed last verified position of a tenant (JSON of a checkpoint), if any.
    pub async fn verified_position(&self, tenant_id: &str) -> Result<Option<String>, StoreError> {
        Ok(match self {
            Store::Postgres(s) => {
                sqlx::query_scalar("SELECT checkpoint FROM verified_positions WHERE tenant_id = $1")
                    .bind(tenant_id)
                    .fetch_optional(s.pool())
                    .await?
            }
            Store::Sqlite(s) => {
                sqlx::query_scalar("SELECT checkpoint FROM verified_positions WHERE tenant_id = ?")
                    .bind(tenant_id)
                    .fetch_optional(s.pool())
                    .await?
            }
        })
    }

    /// Record a verified position; never moves a tenant's position back (replicas verify too).
    pub async fn save_verified_position(&self, cp: &SignedCheckpoint) -> Result<(), StoreError> {
        let text = serde_json::to_string(cp).map_err(|e| StoreError::Internal(e.to_string()))?;
        let upsert = |p: [&str; 3]| {
            format!(
                "INSERT INTO verified_positions (tenant_id, sequence, checkpoint) VALUES ({}, {}, {})
                 ON CONFLICT (tenant_id) DO UPDATE SET sequence = excluded.sequence, checkpoint = excluded.checkpoint
                 WHERE verified_positions.sequence <= excluded.sequence",
                p[0], p[1], p[2]
            )
        };
        match self {
            Store::Postgres(s) => {
                sqlx::query(sqlx::AssertSqlSafe(upsert(["$1", "$2", "$3"])))
                    .bind(&cp.tenant_id)
                    .bind(cp.sequence)
                    .bind(&text)
                    .execute(s.pool())
                    .await?;
            }
            Store::Sqlite(s) => {
                sqlx::query(sqlx::AssertSqlSafe(upsert(["?", "?", "?"])))
                    .bind(&cp.tenant_id)
                    .bind(cp.sequence)
                    .bind(&text)
                    .execute(s.pool())
                    .await?;
            }
        }
        Ok(())
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

    /// The durability settings in force for this server's sessions, as (name, value): SQLite's
    /// `journal_mode` and `synchronous` (0 off, 1 normal, 2 full, 3 extra) on a pooled connection;
    /// PostgreSQL's `fsync`, `synchronous_commit` and `full_page_writes`.
    pub async fn durability(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut out = Vec::new();
        match self {
            Store::Postgres(s) => {
                for name in ["fsync", "synchronous_commit", "full_page_writes"] {
                    let v: String =
                        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {name}"))).fetch_one(s.pool()).await?;
                    out.push((name.to_owned(), v));
                }
            }
            Store::Sqlite(s) => {
                // One connection for both: `synchronous` is a per-connection setting.
                let mut conn = s.pool().acquire().await?;
                let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut *conn).await?;
                let sync: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(&mut *conn).await?;
                out.push(("journal_mode".to_owned(), mode));
                out.push(("synchronous".to_owned(), sync.to_string()));
            }
        }
        Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A chain of `n` rows of tenant `t`, as a store would return them.
    fn chain_rows(n: i64) -> Vec<StoredRow> {
        let mut previous = chain::genesis().to_owned();
        (1..=n)
            .map(|sequence| {
                let id = format!("00000000-0000-7000-8000-{sequence:012}");
                let body = chain::canonical_json(&serde_json::json!({
                    "id": id, "sequence": sequence, "timestamp": "2026-01-01T00:00:00.000000Z",
                    "actor": {"id": "a", "type": "U"}, "action": {"type": "X"},
                    "resource": {"id": "r", "type": "D"}, "metadata": {"source": "s", "tenantId": "t"}
                }));
                let hash = chain::link_hash(&body, &previous);
                StoredRow {
                    id,
                    tenant_id: "t".into(),
                    sequence,
                    timestamp: "2026-01-01T00:00:00.000000Z".into(),
                    actor_id: "a".into(),
                    resource_id: "r".into(),
                    action_type: "X".into(),
                    body,
                    hash: hash.clone(),
                    previous_hash: std::mem::replace(&mut previous, hash),
                }
            })
            .collect()
    }

    fn checkpoint(sequence: i64, hash: &str) -> SignedCheckpoint {
        SignedCheckpoint {
            tenant_id: "t".into(),
            sequence,
            hash: hash.into(),
            issued_at: "2026-01-01T00:00:00.000000Z".into(),
            key_id: "k".into(),
            signature: String::new(),
        }
    }

    /// Walk `rows` (from `start`, as a store does: the anchor row first) with `cp`.
    fn walk(rows: &[StoredRow], cp: Option<SignedCheckpoint>, start: Option<Start>) -> VerifyReport {
        let head = rows.last().map(|r| (r.sequence, r.hash.clone()));
        let mut v = Verifier::new("t", cp, start);
        if let Some(at) = v.checkpoint_before_start() {
            v.checkpoint_hash(rows.iter().find(|r| r.sequence == at).map(|r| r.hash.clone()));
        }
        let after = v.read_after();
        for r in rows.iter().filter(|r| r.sequence > after) {
            v.check(r);
        }
        v.finish(head).0
    }

    #[test]
    fn checkpoint_match_full_and_incremental() {
        let rows = chain_rows(6);
        let at = |s: i64| rows[(s - 1) as usize].hash.clone();
        let start = Some(Start { sequence: 4, hash: at(4) });
        for s in [None, start.clone()] {
            let r = walk(&rows, Some(checkpoint(2, &at(2))), s.clone());
            assert!(r.verified && r.checkpoint_match == Some(CheckpointMatch::Matched), "{s:?} {r:?}");
            let r = walk(&rows, Some(checkpoint(2, &at(3))), s.clone());
            assert_eq!((r.verified, r.checkpoint_match), (false, Some(CheckpointMatch::Rewritten)), "{s:?}");
            assert_eq!(r.first_broken_at.map(|b| b.sequence), Some(2));
            let r = walk(&rows, Some(checkpoint(9, &at(3))), s.clone());
            assert_eq!((r.verified, r.checkpoint_match), (false, Some(CheckpointMatch::Truncated)), "{s:?}");
            assert_eq!(r.first_broken_at.map(|b| b.sequence), Some(7));
        }
        // Incremental: only the links after the anchor are counted; the anchor itself is the
        // checkpoint's position.
        let r = walk(&rows, Some(checkpoint(4, &at(4))), start.clone());
        assert!(r.verified && r.checked == 2 && r.verified_from == Some(4), "{r:?}");
        // An anchor whose hash changed since it was verified, and one that is gone.
        let r = walk(&rows, None, Some(Start { sequence: 4, hash: at(3) }));
        assert_eq!(r.first_broken_at.map(|b| b.sequence), Some(4));
        let r = walk(&rows[..3], None, start);
        assert!(!r.verified && r.first_broken_at.as_ref().is_some_and(|b| b.reason.contains("verified before")));
        // A walk stopped by a broken link before the checkpoint did not reach it.
        let mut broken = chain_rows(6);
        broken[1].body = broken[1].body.replace("\"X\"", "\"Y\"");
        let r = walk(&broken, Some(checkpoint(5, &at(5))), None);
        assert_eq!(r.checkpoint_match, Some(CheckpointMatch::Unreached));
        assert_eq!(r.first_broken_at.map(|b| b.sequence), Some(2));
    }
}
