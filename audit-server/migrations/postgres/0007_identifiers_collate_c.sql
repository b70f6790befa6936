-- Identifiers compare byte by byte (COLLATE "C"), whatever the database's locale. Under a
-- linguistic collation (en_US.UTF-8, the default of many managed databases; C.UTF-8 on PostgreSQL
-- 15 goes the same way) every comparison in these columns' indexes copies both strings and calls
-- strcoll: the bench (outbox comparison, 2 cores) ingested 20-30 % more events per core of the
-- server and PostgreSQL with a C database than with a C.UTF-8 one. Byte order is also the order
-- SQLite keeps (BINARY), the one Elasticsearch sorts keywords in, and the one the appends lock
-- chain heads in; no query sorts these columns for display.
--
-- A collation change does not rewrite the tables, but rebuilds the indexes on these columns,
-- holding an exclusive lock on each table meanwhile: on a large events table, plan for it.
ALTER TABLE chain_heads ALTER COLUMN tenant_id TYPE TEXT COLLATE "C";
ALTER TABLE events
    ALTER COLUMN tenant_id TYPE TEXT COLLATE "C",
    ALTER COLUMN actor_id TYPE TEXT COLLATE "C",
    ALTER COLUMN resource_id TYPE TEXT COLLATE "C",
    ALTER COLUMN action_type TYPE TEXT COLLATE "C";
ALTER TABLE idempotency_keys
    ALTER COLUMN tenant_id TYPE TEXT COLLATE "C",
    ALTER COLUMN key TYPE TEXT COLLATE "C";
ALTER TABLE verified_positions ALTER COLUMN tenant_id TYPE TEXT COLLATE "C";
ALTER TABLE outbox
    ALTER COLUMN consumer TYPE TEXT COLLATE "C",
    ALTER COLUMN tenant_id TYPE TEXT COLLATE "C";
ALTER TABLE outbox_consumers ALTER COLUMN consumer TYPE TEXT COLLATE "C";
ALTER TABLE outbox_cursors
    ALTER COLUMN consumer TYPE TEXT COLLATE "C",
    ALTER COLUMN tenant_id TYPE TEXT COLLATE "C";
ALTER TABLE outbox_kafka_offsets ALTER COLUMN topic TYPE TEXT COLLATE "C";
