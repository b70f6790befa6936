-- A consumer now deletes the rows it handled by primary key (consumer, position): it read them, so
-- it knows their positions (src/outbox/mod.rs, `Purge::Rows`). The range index its purge used
-- cost every append two more index entries per event (one per consumer), each removed again by
-- vacuum; the rare purge after a Kafka resync scans the consumer's rows instead.
DROP INDEX IF EXISTS outbox_consumer_tenant_sequence;
