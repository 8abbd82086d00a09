-- kura catalog v3: what each completed run did, for the daemon's finish predictions and the
-- operator's history: bytes scanned (the logical size of the source), read (what changed)
-- and stored (new packed bytes), files, and how long it took; per target (a JSON list) the
-- bytes it took and its throughput. One row per run, written when the run is recorded.
CREATE TABLE run_stats (
    run BIGINT PRIMARY KEY REFERENCES job_runs (id) ON DELETE CASCADE,
    job BIGINT,
    ended BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    bytes_scanned BIGINT NOT NULL,
    bytes_read BIGINT NOT NULL,
    bytes_stored BIGINT NOT NULL,
    files BIGINT NOT NULL,
    targets TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX run_stats_job ON run_stats (job, ended);
