-- The last position of each chain that a walk verified intact, so that the next walk (the
-- background verifier, or GET /integrity/verify?incremental=true) starts after it. `checkpoint`
-- is a checkpoint signed by the server's key over (tenant, sequence, hash, time): whoever can write
-- this table cannot move the position forward over unverified events without the key.
CREATE TABLE verified_positions (
    tenant_id  TEXT PRIMARY KEY,
    sequence   BIGINT NOT NULL,
    checkpoint TEXT NOT NULL
);
