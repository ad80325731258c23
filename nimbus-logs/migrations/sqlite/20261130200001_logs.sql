-- The embedded log sink (nimbus-logs/src/sink/sqlite.rs). Versions of this
-- crate's migrations are YYYYMMDD2000NN (see nimbus-core/src/db.rs).
-- IF NOT EXISTS: tables and indexes created before there were migrations stay.

CREATE TABLE IF NOT EXISTS ci_logs (
    job_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    agent_id TEXT NOT NULL,
    org_id INTEGER,
    repo_id INTEGER,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    ts INTEGER NOT NULL,
    inserted_at INTEGER NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS ci_logs_ts ON ci_logs (ts);

CREATE INDEX IF NOT EXISTS ci_logs_org_ts ON ci_logs (org_id, ts);

CREATE TABLE IF NOT EXISTS job_metadata (
    job_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    org_id INTEGER,
    repo_id INTEGER,
    value TEXT NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (job_id, key)
);

CREATE INDEX IF NOT EXISTS job_metadata_ts ON job_metadata (ts);
