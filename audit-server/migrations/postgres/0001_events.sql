-- One row per tenant: the end of its hash chain. Appends lock it (FOR UPDATE via ON CONFLICT DO
-- UPDATE) so concurrent writers, in any number of server processes, extend the chain one at a time.
CREATE TABLE chain_heads (
    tenant_id     TEXT PRIMARY KEY,
    last_sequence BIGINT NOT NULL,
    last_hash     TEXT NOT NULL
);

-- Append-only. `body` is the canonical JSON that was hashed (TEXT, not JSONB: JSONB would reorder
-- keys and lose the exact bytes). The other columns are copies for filtering; verify checks them.
CREATE TABLE events (
    tenant_id     TEXT NOT NULL,
    sequence      BIGINT NOT NULL,
    id            UUID NOT NULL UNIQUE,
    ts            TIMESTAMPTZ NOT NULL,
    actor_id      TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    action_type   TEXT NOT NULL,
    body          TEXT NOT NULL,
    hash          TEXT NOT NULL,
    previous_hash TEXT NOT NULL,
    PRIMARY KEY (tenant_id, sequence)
);

-- The filters of GET /events, each ending in sequence for keyset pagination.
CREATE INDEX events_actor ON events (tenant_id, actor_id, sequence);
CREATE INDEX events_resource ON events (tenant_id, resource_id, sequence);
CREATE INDEX events_action ON events (tenant_id, action_type, sequence);
CREATE INDEX events_ts ON events (tenant_id, ts);

-- Idempotency-Key records: the request fingerprint and the receipts it got.
CREATE TABLE idempotency_keys (
    tenant_id   TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    receipts    TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);
