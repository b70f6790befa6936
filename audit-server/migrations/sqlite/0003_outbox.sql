-- Same schema as PostgreSQL (see migrations/postgres/0003_outbox.sql for the reasoning). The
-- lease expiry is fixed-width RFC 3339 text, which sorts chronologically.
CREATE TABLE outbox (
    position  INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id TEXT NOT NULL,
    sequence  INTEGER NOT NULL
);

CREATE TABLE outbox_consumers (
    consumer         TEXT PRIMARY KEY,
    stream_id        TEXT NOT NULL,
    lease_holder     TEXT,
    lease_expires_at TEXT
);

CREATE TABLE outbox_cursors (
    consumer  TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    sequence  INTEGER NOT NULL,
    PRIMARY KEY (consumer, tenant_id)
) WITHOUT ROWID;

CREATE TABLE outbox_kafka_offsets (
    topic       TEXT NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;
