-- Transactional outbox (src/outbox/): one row per stored event that some consumer (the Kafka
-- relay; later the search indexer) has not handled yet, inserted by the append transaction itself,
-- so an event is in the outbox if and only if it committed. Rows are purged once every registered
-- consumer has passed them. `position` orders the relay's reads (oldest first, fair across
-- tenants); it is NOT a cursor: concurrent transactions take positions in one order and commit in
-- another, so "everything below position P" is never a safe claim. Cursors are per tenant instead.
CREATE TABLE outbox (
    position  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    sequence  BIGINT NOT NULL
);

-- Consumers of the outbox. A row is purged when every consumer listed here has passed it. The
-- lease columns elect one active relay per consumer across replicas (see src/outbox/mod.rs);
-- `stream_id` is random per database and travels in every Kafka message's headers, so a relay
-- never mistakes another database's messages on a shared topic for its own.
CREATE TABLE outbox_consumers (
    consumer         TEXT PRIMARY KEY,
    stream_id        TEXT NOT NULL,
    lease_holder     TEXT,
    lease_expires_at TIMESTAMPTZ
);

-- Per consumer and tenant: every sequence up to `sequence` has been handled. A tenant's sequences
-- commit in order (its chain head is locked by each append), so this position has no gaps.
CREATE TABLE outbox_cursors (
    consumer  TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    sequence  BIGINT NOT NULL,
    PRIMARY KEY (consumer, tenant_id)
);

-- Kafka relay: per partition, every message below `next_offset` is reflected in the cursors. A
-- relay taking over reads each partition from here to its end to learn what a predecessor
-- published but did not record (a crash between publish and commit), and skips it.
CREATE TABLE outbox_kafka_offsets (
    topic       TEXT NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset BIGINT NOT NULL,
    PRIMARY KEY (topic, partition)
);
