-- The cache index (nimbus-cache/src/index.rs). Versions of this crate's
-- migrations are YYYYMMDD1000NN: they may share sqlx's migrations table with the
-- control plane's (YYYYMMDD0000NN) when both live in one PostgreSQL database.
-- IF NOT EXISTS: tables and indexes created before there were migrations stay.

CREATE TABLE IF NOT EXISTS cache_entries (
    id BIGSERIAL PRIMARY KEY,
    org_id BIGINT NOT NULL,
    repo TEXT NOT NULL,
    git_ref TEXT NOT NULL,
    cache_key TEXT NOT NULL,
    version TEXT NOT NULL,
    state TEXT NOT NULL,
    upload_id TEXT NOT NULL,
    blob_key TEXT NOT NULL,
    size BIGINT NOT NULL DEFAULT 0,
    expected_size BIGINT,
    sha256 TEXT,
    created_at BIGINT NOT NULL,
    last_access BIGINT NOT NULL,
    hits BIGINT NOT NULL DEFAULT 0,
    verified_at BIGINT
);

CREATE TABLE IF NOT EXISTS cache_parts (
    entry_id BIGINT NOT NULL,
    part TEXT NOT NULL,
    start_offset BIGINT,
    size BIGINT NOT NULL,
    PRIMARY KEY (entry_id, part)
);

CREATE TABLE IF NOT EXISTS cache_org_counters (
    org_id BIGINT PRIMARY KEY,
    hits BIGINT NOT NULL DEFAULT 0,
    misses BIGINT NOT NULL DEFAULT 0,
    evictions BIGINT NOT NULL DEFAULT 0
);

CREATE UNIQUE INDEX IF NOT EXISTS cache_entries_key
    ON cache_entries (org_id, repo, git_ref, cache_key, version, state);

CREATE INDEX IF NOT EXISTS cache_entries_lru ON cache_entries (state, last_access);

CREATE INDEX IF NOT EXISTS cache_entries_org ON cache_entries (org_id, state, last_access);
