-- kura catalog v4: the volume engine's host-free backup policies (seed 004's configuration
-- table) and their runs (its backup information table). Numbered 4: 3 is taken by another
-- change. The policy table is replaced whole by `kura policy apply` / PUT /api/v1/policies
-- in one transaction; an entry is identified by its volume and target, so re-applying a
-- table keeps the run history of the entries it keeps. A run row is also the claim of its
-- occurrence (the primary key admits one daemon), exactly like schedule_claims.
CREATE TABLE volume_policies (
    id {{ID}},
    position BIGINT NOT NULL,
    volume TEXT NOT NULL,
    target TEXT NOT NULL,
    target_url TEXT NOT NULL,
    schedule TEXT NOT NULL,
    route TEXT,
    freeze_mode TEXT NOT NULL,
    applied BIGINT NOT NULL,
    UNIQUE (volume, target)
);
CREATE TABLE policy_runs (
    policy BIGINT NOT NULL REFERENCES volume_policies (id) ON DELETE CASCADE,
    due BIGINT NOT NULL,
    daemon TEXT NOT NULL,
    claimed BIGINT NOT NULL,
    lease_until BIGINT NOT NULL,
    state TEXT NOT NULL DEFAULT 'started',
    reason TEXT,
    task TEXT,
    snapshot TEXT,
    finished BIGINT,
    PRIMARY KEY (policy, due)
);
