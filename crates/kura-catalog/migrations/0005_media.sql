-- kura catalog v5: sequential media. Pools (retention, append policy), media sets, tapes
-- with their states, backups copied to tape with where their management information is,
-- and where each piece of each pack is (tape label, file number): seed 000/001's "backup
-- data save information" for tape. Mount requests are kept so `kura media pending` and the
-- daemon can show what an operator is asked to do.
CREATE TABLE media_pools (
    name TEXT PRIMARY KEY,
    retention TEXT,
    append_policy TEXT NOT NULL,
    created BIGINT NOT NULL
);
CREATE TABLE media_sets (
    id TEXT PRIMARY KEY,
    pool TEXT NOT NULL REFERENCES media_pools (name),
    library TEXT NOT NULL,
    created BIGINT NOT NULL,
    last_written BIGINT
);
CREATE TABLE tapes (
    label TEXT PRIMARY KEY,
    library TEXT NOT NULL,
    pool TEXT NOT NULL REFERENCES media_pools (name),
    uuid TEXT NOT NULL,
    state TEXT NOT NULL,
    media_set TEXT REFERENCES media_sets (id),
    set_seq BIGINT,
    expired_set TEXT,
    bytes BIGINT NOT NULL DEFAULT 0,
    files BIGINT NOT NULL DEFAULT 0,
    labelled BIGINT NOT NULL,
    written BIGINT,
    reason TEXT
);
CREATE TABLE tape_backups (
    id {{ID}},
    media_set TEXT NOT NULL REFERENCES media_sets (id),
    repository TEXT NOT NULL,
    snapshot TEXT NOT NULL,
    taken BIGINT NOT NULL,
    label TEXT NOT NULL,
    file BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    state TEXT NOT NULL,
    added BIGINT NOT NULL,
    UNIQUE (media_set, snapshot)
);
CREATE TABLE tape_backup_packs (
    backup BIGINT NOT NULL REFERENCES tape_backups (id) ON DELETE CASCADE,
    pack TEXT NOT NULL,
    size BIGINT NOT NULL,
    PRIMARY KEY (backup, pack)
);
CREATE TABLE tape_pieces (
    media_set TEXT NOT NULL REFERENCES media_sets (id),
    pack TEXT NOT NULL,
    start BIGINT NOT NULL,
    len BIGINT NOT NULL,
    total BIGINT NOT NULL,
    label TEXT NOT NULL,
    file BIGINT NOT NULL,
    PRIMARY KEY (media_set, pack, start)
);
CREATE TABLE mount_requests (
    id {{ID}},
    library TEXT NOT NULL,
    message TEXT NOT NULL,
    since BIGINT NOT NULL,
    ended BIGINT,
    outcome TEXT
);
