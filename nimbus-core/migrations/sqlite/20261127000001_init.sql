-- Control-plane schema (SQLite). Timestamps are Unix epoch milliseconds.
CREATE TABLE orgs (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE jobs (
    id                      INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id                  INTEGER NOT NULL,
    repo                    TEXT    NOT NULL,
    repo_id                 INTEGER,
    source                  TEXT    NOT NULL,
    status                  TEXT    NOT NULL,
    labels                  TEXT    NOT NULL,  -- JSON array of strings
    metadata                TEXT    NOT NULL,  -- JSON object, mirrors job_metadata
    spec                    TEXT    NOT NULL,  -- JSON JobSpec
    attempt                 INTEGER NOT NULL DEFAULT 1,
    fencing_token           INTEGER NOT NULL DEFAULT 0,
    lease_id                TEXT,
    agent_id                TEXT,
    lease_expires_at        INTEGER,
    exit_code               INTEGER,
    failure_reason          TEXT,
    created_at              INTEGER NOT NULL,
    updated_at              INTEGER NOT NULL,
    started_at              INTEGER,
    finished_at             INTEGER,
    github_job_id           INTEGER UNIQUE,
    github_run_id           INTEGER,
    github_run_attempt      INTEGER,
    github_workflow_name    TEXT,
    github_job_name         TEXT,
    github_head_sha         TEXT,
    github_head_branch      TEXT,
    github_installation_id  INTEGER,
    github_status           TEXT,
    github_conclusion       TEXT,
    github_runner_name      TEXT
);
CREATE INDEX jobs_by_status ON jobs (status, id);
CREATE INDEX jobs_by_org ON jobs (org_id, id);
CREATE INDEX jobs_by_repo ON jobs (repo, id);
CREATE INDEX jobs_lease_expiry ON jobs (lease_expires_at) WHERE status = 'leased';

CREATE TABLE job_metadata (
    job_id  INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    org_id  INTEGER NOT NULL,
    key     TEXT    NOT NULL,
    value   TEXT    NOT NULL,
    PRIMARY KEY (job_id, key)
);
CREATE INDEX job_metadata_by_key ON job_metadata (key, value, job_id);

CREATE TABLE webhook_deliveries (
    delivery_id  TEXT    PRIMARY KEY,
    received_at  INTEGER NOT NULL
);
CREATE INDEX webhook_deliveries_by_time ON webhook_deliveries (received_at);

CREATE TABLE rate_limits (
    key           TEXT    PRIMARY KEY,
    window_start  INTEGER NOT NULL,
    count         INTEGER NOT NULL
);
