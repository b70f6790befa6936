-- See migrations/postgres/0005_outbox_purge.sql: the purge looks up the handled tenants' rows.
CREATE INDEX outbox_tenant_sequence ON outbox (tenant_id, sequence);
