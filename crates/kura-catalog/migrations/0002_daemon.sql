-- kura catalog v2: what daemons share. API tokens (only a hash of each secret is stored),
-- and scheduled-run claims (one row per job and due time: whichever daemon inserts it runs
-- that occurrence, so several daemons on one catalog fire each run exactly once; a claim
-- whose daemon stops renewing its lease is recorded expired).
CREATE TABLE api_tokens (
    id {{ID}},
    name TEXT NOT NULL UNIQUE,
    hash TEXT NOT NULL UNIQUE,
    created BIGINT NOT NULL,
    expires BIGINT,
    last_used BIGINT
);
CREATE TABLE schedule_claims (
    job BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    due BIGINT NOT NULL,
    daemon TEXT NOT NULL,
    claimed BIGINT NOT NULL,
    lease_until BIGINT NOT NULL,
    state TEXT NOT NULL DEFAULT 'started',
    reason TEXT,
    PRIMARY KEY (job, due)
);
