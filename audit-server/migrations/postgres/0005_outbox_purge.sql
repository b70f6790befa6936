-- A consumer's progress can only make the rows of the tenants it just handled purgeable, so the
-- purge looks up those tenants' rows (this index) instead of testing every row in the outbox.
CREATE INDEX outbox_tenant_sequence ON outbox (tenant_id, sequence);
-- The outbox is a queue: every row is deleted soon after its insert. Vacuum it after a fixed
-- number of dead rows rather than a fraction of a table that is always near empty, so scans of
-- it do not wade through dead tuples.
ALTER TABLE outbox SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
                        autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 5000);
