-- kura catalog v1, for SQLite and PostgreSQL alike. The one dialect difference, the type of
-- generated id columns, is a placeholder (ID in double braces): Catalog::migrate puts
-- "INTEGER PRIMARY KEY AUTOINCREMENT" (SQLite) or "BIGSERIAL PRIMARY KEY" (PostgreSQL).
CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
INSERT INTO meta (k, v) VALUES ('alloc', '0');
CREATE TABLE resources (
    id {{ID}},
    kind TEXT NOT NULL CHECK (kind IN ('worker', 'target', 'medium', 'path', 'copy-engine')),
    name TEXT NOT NULL UNIQUE,
    config TEXT NOT NULL DEFAULT '{}',
    parent BIGINT REFERENCES resources (id) ON DELETE CASCADE,
    slots BIGINT NOT NULL DEFAULT 1,
    enabled BIGINT NOT NULL DEFAULT 1,
    healthy BIGINT NOT NULL DEFAULT 1,
    errors BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    since BIGINT NOT NULL
);
CREATE TABLE routes (
    worker BIGINT NOT NULL REFERENCES resources (id) ON DELETE CASCADE,
    path BIGINT NOT NULL REFERENCES resources (id) ON DELETE CASCADE,
    target BIGINT NOT NULL REFERENCES resources (id) ON DELETE CASCADE,
    PRIMARY KEY (worker, path, target)
);
CREATE TABLE allocations (
    resource BIGINT NOT NULL REFERENCES resources (id) ON DELETE CASCADE,
    process BIGINT NOT NULL,
    stream BIGINT NOT NULL,
    lease_until BIGINT NOT NULL,
    PRIMARY KEY (resource, process, stream)
);
CREATE INDEX allocations_process ON allocations (process);
CREATE TABLE events (
    id {{ID}},
    resource BIGINT NOT NULL,
    at BIGINT NOT NULL,
    what TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE jobs (
    id {{ID}},
    name TEXT NOT NULL UNIQUE,
    object TEXT NOT NULL,
    schedule TEXT,
    redundancy BIGINT NOT NULL DEFAULT 2,
    mode TEXT NOT NULL DEFAULT 'mirror' CHECK (mode IN ('mirror', 'failover')),
    config TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE job_runs (
    id {{ID}},
    job BIGINT REFERENCES jobs (id) ON DELETE SET NULL,
    started BIGINT NOT NULL,
    ended BIGINT,
    state TEXT NOT NULL,
    error TEXT
);
CREATE TABLE streams (
    run BIGINT NOT NULL REFERENCES job_runs (id) ON DELETE CASCADE,
    stream BIGINT NOT NULL,
    worker BIGINT NOT NULL,
    path BIGINT NOT NULL,
    target BIGINT NOT NULL,
    medium BIGINT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (run, stream)
);
CREATE TABLE backups (
    id {{ID}},
    run BIGINT REFERENCES job_runs (id) ON DELETE SET NULL,
    object TEXT NOT NULL,
    started BIGINT NOT NULL,
    ended BIGINT,
    data_time BIGINT NOT NULL,
    state TEXT NOT NULL
);
CREATE TABLE extents (
    backup BIGINT NOT NULL REFERENCES backups (id) ON DELETE CASCADE,
    stream BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    source_offset BIGINT NOT NULL,
    source_length BIGINT NOT NULL,
    target BIGINT NOT NULL,
    medium BIGINT NOT NULL,
    position TEXT NOT NULL,
    size BIGINT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (backup, seq, target)
);
