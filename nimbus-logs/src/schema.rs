//! The ClickHouse DDL the pipeline runs at start. docs/CLICKHOUSE_SCHEMA.md shows
//! the same text; a test keeps the two equal.
//!
//! `ci_logs` is the operations guide's canonical table with its columns in its
//! order, plus `SETTINGS allow_nullable_key = 1` (current ClickHouse refuses
//! Nullable columns in ORDER BY without it) and two additions at the end: `seq`
//! (the line's position in its job; with job_id the dedupe key) and a minmax index
//! on job_id (job queries would otherwise scan every org's granules).

/// Creates the `nimbus` database.
pub const CREATE_DATABASE: &str = "CREATE DATABASE IF NOT EXISTS nimbus";

/// The log-line table: partitioned by month, ordered by org, repository, job and time.
pub const CREATE_CI_LOGS: &str = "CREATE TABLE IF NOT EXISTS nimbus.ci_logs
(
    job_id UInt64,
    agent_id String,
    org_id Nullable(UInt64),
    repo_id Nullable(UInt64),
    level String,
    message String,
    ts DateTime64(3),
    inserted_at DateTime DEFAULT now(),
    seq UInt64,
    INDEX job_id_minmax job_id TYPE minmax GRANULARITY 1
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (org_id, repo_id, job_id, ts)
SETTINGS allow_nullable_key = 1";

/// The job metadata table. A `ReplacingMergeTree` on (job_id, key): a key written again
/// replaces the old row when parts merge, so reads use `FINAL`.
pub const CREATE_JOB_METADATA: &str = "CREATE TABLE IF NOT EXISTS nimbus.job_metadata
(
    job_id UInt64,
    org_id Nullable(UInt64),
    repo_id Nullable(UInt64),
    key String,
    value String,
    ts DateTime64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (job_id, key)";

/// Retention, applied at start with the configured days.
pub const LOG_TTL: &str =
    "ALTER TABLE nimbus.ci_logs MODIFY TTL toDateTime(ts) + toIntervalDay({days})";
/// Retention of metadata rows, applied at start like [`LOG_TTL`]; `{days}` is
/// replaced by the configured days.
pub const METADATA_TTL: &str =
    "ALTER TABLE nimbus.job_metadata MODIFY TTL toDateTime(ts) + toIntervalDay({days})";

/// Every statement, in the order the pipeline runs them.
pub const ALL: &[&str] = &[
    CREATE_DATABASE,
    CREATE_CI_LOGS,
    CREATE_JOB_METADATA,
    LOG_TTL,
    METADATA_TTL,
];

/// A statement for database `database` (the text names `nimbus`).
pub fn for_database(statement: &str, database: &str) -> String {
    if database == "nimbus" {
        statement.to_string()
    } else {
        statement
            .replace(
                "DATABASE IF NOT EXISTS nimbus",
                &format!("DATABASE IF NOT EXISTS {database}"),
            )
            .replace("nimbus.", &format!("{database}."))
    }
}

#[cfg(test)]
mod tests {
    /// docs/CLICKHOUSE_SCHEMA.md's ```sql blocks are exactly these statements.
    #[test]
    fn the_documented_ddl_is_the_ddl_the_code_runs() {
        let doc = include_str!("../../docs/CLICKHOUSE_SCHEMA.md");
        let blocks: Vec<&str> = doc
            .split("```sql\n")
            .skip(1)
            .filter_map(|rest| rest.split("\n```").next())
            .collect();
        assert_eq!(
            blocks,
            super::ALL,
            "update docs/CLICKHOUSE_SCHEMA.md to match nimbus-logs/src/schema.rs"
        );
    }
}
