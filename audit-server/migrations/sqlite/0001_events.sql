-- Same schema as PostgreSQL (see migrations/postgres). Timestamps are fixed-width RFC 3339 text,
-- which sorts chronologically; ids are UUID text. Appends run in BEGIN IMMEDIATE transactions.
CREATE TABLE chain_heads (
    tenant_id     TEXT PRIMARY KEY,
    last_sequence INTEGER NOT NULL,
    last_hash     TEXT NOT NULL
);

CREATE TABLE events (
    tenant_id     TEXT NOT NULL,
    sequence      INTEGER NOT NULL,
    id            TEXT NOT NULL UNIQUE,
    ts            TEXT NOT NULL,
    actor_id      TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    action_type   TEXT NOT NULL,
    body          TEXT NOT NULL,
    hash          TEXT NOT NULL,
    previous_hash TEXT NOT NULL,
    PRIMARY KEY (tenant_id, sequence)
) WITHOUT ROWID;

CREATE INDEX events_actor ON events (tenant_id, actor_id, sequence);
CREATE INDEX events_resource ON events (tenant_id, resource_id, sequence);
CREATE INDEX events_action ON events (tenant_id, action_type, sequence);
CREATE INDEX events_ts ON events (tenant_id, ts);

CREATE TABLE idempotency_keys (
    tenant_id   TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    receipts    TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
