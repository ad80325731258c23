//! The embedded default store: one SQLite file, one node.
//!
//! SQLite allows one writer at a time, and a transaction that reads before it
//! writes can fail with `SQLITE_BUSY` instead of waiting. So all writes go through a
//! pool of exactly one connection (they queue in the pool, never in SQLite), and
//! reads use a separate pool; WAL mode lets the readers run beside the writer.

use std::sync::LazyLock;

use crate::db;
use crate::error::Result;
use crate::store::sql::statements::indexed_by;
use crate::store::sql::{Dialect, SqlStore};

/// SQLite's statements where they differ from PostgreSQL's: indexes named (see
/// [`IndexHint`](crate::store::sql::statements::IndexHint)), labels matched with
/// `json_each`.
static SQLITE: LazyLock<Dialect> = LazyLock::new(|| {
    Dialect::new(
        "",
        indexed_by,
        (
            " AND EXISTS (SELECT 1 FROM json_each(jobs.labels) WHERE json_each.value = ",
            ")",
        ),
        " AND NOT EXISTS (SELECT 1 FROM json_each(jobs.labels) l \
         WHERE lower(l.value) NOT IN (SELECT lower(a.value) FROM json_each($L) a) \
         AND lower(l.value) <> 'self-hosted' AND l.value NOT LIKE 'param:%' \
         AND l.value NOT LIKE 'meta:%' AND l.value NOT LIKE 'timeout:%')",
    )
});

impl SqlStore {
    /// Opens (creating if needed) the SQLite database at `url` (`sqlite://PATH` or
    /// `sqlite::memory:`) and applies migrations; up to `max_connections` readers.
    pub async fn sqlite(url: &str, max_connections: u32) -> Result<SqlStore> {
        let pools = db::open_sqlite(url, "NIMBUS_DATABASE_URL", max_connections).await?;
        pools
            .writer
            .migrate(
                sqlx::migrate!("migrations/sqlite"),
                sqlx::migrate!("migrations/postgres"),
            )
            .await?;
        // SQLite has one writer anyway: the counters share it.
        Ok(SqlStore::new(
            pools.writer.clone(),
            pools.reader,
            pools.writer,
            &SQLITE,
        ))
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
        let store = SqlStore::sqlite("sqlite::memory:", 1).await.expect("store");
        let db::Pool::Sqlite(writer) = store.pool() else {
            unreachable!("a SQLite store")
        };
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) \
             INSERT INTO jobs (org_id, repo, source, status, labels, metadata, spec, attempt, \
             fencing_token, created_at, updated_at) \
             SELECT 1, 'acme/app', 'direct', 'queued', '[]', '{}', '{}', 1, 0, i, i FROM n",
        )
        .execute(writer)
        .await
        .expect("jobs");
        sqlx::query("ANALYZE")
            .execute(writer)
            .await
            .expect("analyze");
        for sql in [
            SQLITE.lease(false, true),
            SQLITE.lease(true, true),
            SQLITE.queued_orgs.as_str(),
        ] {
            let plan: Vec<(i64, i64, i64, String)> =
                sqlx::query_as(&format!("EXPLAIN QUERY PLAN {sql}"))
                    .fetch_all(writer)
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
