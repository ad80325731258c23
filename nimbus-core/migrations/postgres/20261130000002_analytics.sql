-- Fleet analytics (docs/analytics.md). Finished jobs are folded into per-day
-- rollups by a background task, so reports over millions of jobs read a few
-- thousand rows; jobs not folded yet are read from `jobs` itself.

-- One row per org, UTC day of creation and final status: the job count and
-- the durations of those jobs as histograms (JSON objects of milliseconds,
-- rounded to two significant digits, to job counts).
CREATE TABLE job_rollups (
    org_id      BIGINT NOT NULL,
    day         BIGINT NOT NULL,  -- days since the Unix epoch
    status      TEXT   NOT NULL,
    jobs        BIGINT NOT NULL,
    queue_wait  TEXT   NOT NULL,
    run_time    TEXT   NOT NULL,
    PRIMARY KEY (org_id, day, status)
);

-- The same per metadata key and value.
CREATE TABLE job_metadata_rollups (
    key     TEXT   NOT NULL,
    value   TEXT   NOT NULL,
    org_id  BIGINT NOT NULL,
    day     BIGINT NOT NULL,
    status  TEXT   NOT NULL,
    jobs    BIGINT NOT NULL,
    PRIMARY KEY (key, org_id, day, value, status)
);

-- Jobs that finished at or before `folded_until` (Unix ms) are in the rollups.
CREATE TABLE analytics_watermark (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    folded_until  BIGINT NOT NULL
);
INSERT INTO analytics_watermark (id, folded_until) VALUES (1, 0);

-- Submissions the org rate limit refused, per org and hour (Unix ms of its start).
CREATE TABLE rate_limit_hits (
    org_id  BIGINT NOT NULL,
    hour    BIGINT NOT NULL,
    hits    BIGINT NOT NULL,
    PRIMARY KEY (org_id, hour)
);

-- The folder reads the jobs finished since the watermark; reports read the jobs
-- created at the edges of their window (partial days).
CREATE INDEX jobs_by_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX jobs_by_created ON jobs (created_at);
