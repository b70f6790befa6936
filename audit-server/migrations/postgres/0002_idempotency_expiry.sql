-- Idempotency records expire after the configured retention; the purge deletes by age.
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
