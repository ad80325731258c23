//! The embedded default store: one SQLite file, one node.
//!
//! SQLite allows one writer at a time, and a transaction that reads before it
//! writes can fail with `SQLITE_BUSY` instead of waiting. So all writes go through a
//! pool of exactly one connection (they queue in the pool, never in SQLite), and
//! reads use a separate pool; WAL mode lets the readers run beside the writer.

use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool};

use crate::error::{Error, Result};
use crate::store::sql::{indexed_by, Dialect};

#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// Rate-limit counters: the writer itself (SQLite has one writer anyway).
    counters: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` (`sqlite://PATH` or
    /// `sqlite::memory:`) and applies migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::Config {
                variable: "NIMBUS_DATABASE_URL".into(),
                message: format!("invalid SQLite URL {url:?}: {e}"),
            })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        if !in_memory {
            let path = options.get_filename();
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
            }
        }
        // `test_before_acquire` would cost a round trip to the connection's worker
        // thread on every query; a broken SQLite connection is not a thing.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            // An in-memory database lives as long as its connection.
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&writer).await?;
        let reader = if in_memory {
            // Each in-memory connection is its own database: share the writer.
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(max_connections.max(1))
                .test_before_acquire(false)
                .connect_with(options.read_only(true))
                .await?
        };
        Ok(SqliteStore {
            counters: writer.clone(),
            writer,
            reader,
        })
    }
}

static LEASE_ANY_ORG: LazyLock<String> =
    LazyLock::new(|| super::sql::lease_sql("", false, indexed_by));
static LEASE_ONE_ORG: LazyLock<String> =
    LazyLock::new(|| super::sql::lease_sql("", true, indexed_by));
static LEASE_LABELS_ANY_ORG: LazyLock<String> = LazyLock::new(|| {
    super::sql::lease_with_labels_sql(
        "",
        false,
        <SqliteStore as Dialect>::AGENT_LABELS_FILTER,
        indexed_by,
    )
});
static LEASE_LABELS_ONE_ORG: LazyLock<String> = LazyLock::new(|| {
    super::sql::lease_with_labels_sql(
        "",
        true,
        <SqliteStore as Dialect>::AGENT_LABELS_FILTER,
        indexed_by,
    )
});
static QUEUED_ORGS: LazyLock<String> = LazyLock::new(|| super::sql::queued_orgs_sql(indexed_by));

impl Dialect for SqliteStore {
    fn lease_sql(one_org: bool) -> &'static str {
        if one_org {
            LEASE_ONE_ORG.as_str()
        } else {
            LEASE_ANY_ORG.as_str()
        }
    }
    const LABEL_FILTER: (&'static str, &'static str) = (
        " AND EXISTS (SELECT 1 FROM json_each(jobs.labels) WHERE json_each.value = ",
        ")",
    );
    const AGENT_LABELS_FILTER: &'static str =
        " AND NOT EXISTS (SELECT 1 FROM json_each(jobs.labels) l \
         WHERE lower(l.value) NOT IN (SELECT lower(a.value) FROM json_each($L) a) \
         AND lower(l.value) <> 'self-hosted' AND l.value NOT LIKE 'param:%' \
         AND l.value NOT LIKE 'meta:%' AND l.value NOT LIKE 'timeout:%')";
    fn lease_with_labels_sql(one_org: bool) -> &'static str {
        if one_org {
            LEASE_LABELS_ONE_ORG.as_str()
        } else {
            LEASE_LABELS_ANY_ORG.as_str()
        }
    }
    fn queued_orgs_sql() -> &'static str {
        QUEUED_ORGS.as_str()
    }
}

impl_shared_store!(SqliteStore, Sqlite);

#[async_trait]
impl super::Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With statistics of a table full of one org's queued jobs, SQLite would walk
    /// the table in id order for the org's oldest queued job (later skipping every
    /// job finished since, on each lease) and `jobs_by_status` for the busy orgs:
    /// the fair-share statements must name their index.
    #[tokio::test]
    async fn fair_share_statements_walk_the_queued_by_org_index() {
        let store = SqliteStore::connect("sqlite::memory:", 1)
            .await
            .expect("store");
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) \
             INSERT INTO jobs (org_id, repo, source, status, labels, metadata, spec, attempt, \
             fencing_token, created_at, updated_at) \
             SELECT 1, 'acme/app', 'direct', 'queued', '[]', '{}', '{}', 1, 0, i, i FROM n",
        )
        .execute(&store.writer)
        .await
        .expect("jobs");
        sqlx::query("ANALYZE")
            .execute(&store.writer)
            .await
            .expect("analyze");
        for sql in [
            <SqliteStore as Dialect>::lease_sql(true),
            <SqliteStore as Dialect>::lease_with_labels_sql(true),
            <SqliteStore as Dialect>::queued_orgs_sql(),
        ] {
            let plan: Vec<(i64, i64, i64, String)> =
                sqlx::query_as(&format!("EXPLAIN QUERY PLAN {sql}"))
                    .fetch_all(&store.writer)
                    .await
                    .expect("plan");
            let steps: Vec<&str> = plan.iter().map(|row| row.3.as_str()).collect();
            assert!(
                steps.iter().any(|s| s.contains("jobs_queued_by_org")),
                "{steps:?}"
            );
            // Not the table in id order, not every queued job, not every job of the
            // org to count its running ones.
            assert!(
                !steps.iter().any(|s| *s == "SCAN jobs"
                    || s.contains("jobs_by_status")
                    || s.contains("jobs_by_org")),
                "{steps:?}"
            );
        }
    }
}
