-- One outbox row per event AND consumer: see migrations/postgres/0006_outbox_per_consumer.sql.
CREATE TABLE outbox_next (
    position  INTEGER PRIMARY KEY AUTOINCREMENT,
    consumer  TEXT    NOT NULL,
    tenant_id TEXT    NOT NULL,
    sequence  INTEGER NOT NULL
);
INSERT INTO outbox_next (position, consumer, tenant_id, sequence)
SELECT o.position * (SELECT count(*) FROM outbox_consumers) + r.n, r.consumer, o.tenant_id, o.sequence
FROM outbox o
CROSS JOIN (SELECT consumer, row_number() OVER (ORDER BY consumer) - 1 AS n FROM outbox_consumers) r
WHERE o.sequence > COALESCE((SELECT c.sequence FROM outbox_cursors c
                             WHERE c.consumer = r.consumer AND c.tenant_id = o.tenant_id), 0);
DROP TABLE outbox;
ALTER TABLE outbox_next RENAME TO outbox;
-- A consumer's reads (oldest first) and its purge.
CREATE INDEX outbox_consumer_position ON outbox (consumer, position);
CREATE INDEX outbox_consumer_tenant_sequence ON outbox (consumer, tenant_id, sequence);
