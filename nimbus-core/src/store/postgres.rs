//! The production store: PostgreSQL, shared by several control-plane replicas.
//!
//! Leases are claimed with `FOR UPDATE SKIP LOCKED`, so concurrent replicas never
//! hand out the same job and never wait on each other's claimed rows. Migrations
//! take PostgreSQL's advisory lock (sqlx does this), so replicas may start together.

use std::sync::LazyLock;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::db::{self, Pool};
use crate::error::Result;
use crate::store::sql::statements::planner_picks;
use crate::store::sql::{Dialect, SqlStore};

/// PostgreSQL's statements where they differ from SQLite's: claims skip locked
/// rows, labels matched with `jsonb`.
static POSTGRES: LazyLock<Dialect> = LazyLock::new(|| {
    Dialect::new(
        " FOR UPDATE SKIP LOCKED",
        planner_picks,
        (" AND jobs.labels::jsonb @> jsonb_build_array(", "::text)"),
        " AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements_text(jobs.labels::jsonb) AS l(value) \
         WHERE lower(l.value) NOT IN (SELECT lower(a.value) FROM jsonb_array_elements_text($L::jsonb) AS a(value)) \
         AND lower(l.value) <> 'self-hosted' AND l.value NOT LIKE 'param:%' \
         AND l.value NOT LIKE 'meta:%' AND l.value NOT LIKE 'timeout:%')",
    )
});

impl SqlStore {
    /// Connects to `url` (`postgres://…`) and applies migrations.
    pub async fn postgres(url: &str, max_connections: u32) -> Result<SqlStore> {
        let options = db::postgres_options(url, "NIMBUS_DATABASE_URL")?;
        Self::postgres_with(options, max_connections).await
    }

    /// Connects with explicit options (tests use this to pin a `search_path`).
    pub async fn postgres_with(
        options: PgConnectOptions,
        max_connections: u32,
    ) -> Result<SqlStore> {
        // Rate-limit counters, on connections with `synchronous_commit=off`: every
        // admission of an org updates the same counter row, and a durable commit
        // would hold that row's lock through a WAL flush, serialising the org's
        // admissions. A crash may forget the last few increments, which a rate
        // limit can afford.
        let counters = PgPoolOptions::new()
            .max_connections(max_connections.clamp(1, 4))
            .acquire_timeout(Duration::from_secs(10))
            .test_before_acquire(false)
            .connect_lazy_with(options.clone().options([("synchronous_commit", "off")]));
        let pool = db::open_postgres(options, max_connections).await?;
        let writer = Pool::Postgres(pool.clone());
        writer
            .migrate(
                sqlx::migrate!("migrations/sqlite"),
                sqlx::migrate!("migrations/postgres"),
            )
            .await?;
        let batcher = super::batch::AdmissionBatcher::spawn(pool, counters.clone());
        Ok(
            SqlStore::new(writer.clone(), writer, Pool::Postgres(counters), &POSTGRES)
                .with_batcher(batcher),
        )
    }
}
