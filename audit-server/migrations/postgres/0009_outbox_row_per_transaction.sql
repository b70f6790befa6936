-- One outbox row per append transaction AND consumer (was: one per event and consumer). The row
-- lists the transaction's events as two parallel arrays, `tenants[i]` and `sequences[i]`, in the
-- order the transaction wrote them (tenant by tenant, each tenant's sequences ascending). The
-- append writes one row per consumer instead of one per event, and a consumer deletes one row
-- per transaction it handled: on the outbox bench (single events, 64 clients, a few tens of
-- events per transaction) the per-event rows' inserts, deletes and vacuum were most of what the
-- outbox cost PostgreSQL. Positions keep their meaning (read order, drawn after the transaction
-- id, see src/outbox/floor.rs); cursors and offsets are unchanged.
ALTER TABLE outbox ADD COLUMN tenants TEXT[] COLLATE "C", ADD COLUMN sequences BIGINT[];
UPDATE outbox SET tenants = ARRAY[tenant_id], sequences = ARRAY[sequence];
ALTER TABLE outbox
    DROP COLUMN tenant_id,
    DROP COLUMN sequence,
    ALTER COLUMN tenants SET NOT NULL,
    ALTER COLUMN sequences SET NOT NULL,
    ADD CONSTRAINT outbox_events_paired CHECK (cardinality(tenants) = cardinality(sequences) AND cardinality(tenants) > 0);
-- Still a queue, now with one dead row per transaction rather than per event: vacuum sooner.
ALTER TABLE outbox SET (autovacuum_vacuum_threshold = 1000, autovacuum_analyze_threshold = 1000);
