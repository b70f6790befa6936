-- Consumers delete the rows they handled by position: see
-- migrations/postgres/0008_outbox_purge_by_position.sql.
DROP INDEX IF EXISTS outbox_consumer_tenant_sequence;
