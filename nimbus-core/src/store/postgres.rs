//! The production store: PostgreSQL, shared by several control-plane replicas.
//!
//! Leases are claimed with `FOR UPDATE SKIP LOCKED`, so concurrent replicas never
//! hand out the same job and never wait on each other's claimed rows. Migrations
//! take PostgreSQL's advisory lock (sqlx does this), so replicas may start together.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use crate::error::{Error, Result};
use crate::store::sql::{planner_picks, Dialect};

#[derive(Debug, Clone)]
pub struct PostgresStore {
    writer: PgPool,
    reader: PgPool,
    /// Rate-limit counters, on connections with `synchronous_commit=off`: every
    /// admission of an org updates the same counter row, and a durable commit would
    /// hold that row's lock through a WAL flush, serialising the org's admissions.
    /// A crash may forget the last few increments, which a rate limit can afford.
    counters: PgPool,
    /// Batches concurrent admissions of GitHub jobs into one statement.
    batcher: super::batch::AdmissionBatcher,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://…`) and applies migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let options: PgConnectOptions = url.parse().map_err(|e| Error::Config {
            variable: "NIMBUS_DATABASE_URL".into(),
            message: format!("invalid PostgreSQL URL {:?}: {e}", super::redact_url(url)),
        })?;
        Self::connect_with(options, max_connections).await
    }

    /// Connects with explicit options (tests use this to pin a `search_path`).
    pub async fn connect_with(options: PgConnectOptions, max_connections: u32) -> Result<Self> {
        let counters = PgPoolOptions::new()
            .max_connections(max_connections.clamp(1, 4))
            .acquire_timeout(Duration::from_secs(10))
            .test_before_acquire(false)
            .connect_lazy_with(options.clone().options([("synchronous_commit", "off")]));
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            // A ping before every query would double the round trips; a dead
            // connection surfaces as an error on use and is then dropped.
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        Ok(PostgresStore {
            batcher: super::batch::AdmissionBatcher::spawn(pool.clone(), counters.clone()),
            writer: pool.clone(),
            reader: pool,
            counters,
        })
    }

    /// The underlying pool (for embedders that share the database).
    pub fn pool(&self) -> &PgPool {
        &self.writer
    }
}

static LEASE_ANY_ORG: LazyLock<String> =
    LazyLock::new(|| super::sql::lease_sql(" FOR UPDATE SKIP LOCKED", false, planner_picks));
static LEASE_ONE_ORG: LazyLock<String> =
    LazyLock::new(|| super::sql::lease_sql(" FOR UPDATE SKIP LOCKED", true, planner_picks));
static LEASE_LABELS_ANY_ORG: LazyLock<String> = LazyLock::new(|| {
    super::sql::lease_with_labels_sql(
        " FOR UPDATE SKIP LOCKED",
        false,
        <PostgresStore as Dialect>::AGENT_LABELS_FILTER,
        planner_picks,
    )
});
static LEASE_LABELS_ONE_ORG: LazyLock<String> = LazyLock::new(|| {
    super::sql::lease_with_labels_sql(
        " FOR UPDATE SKIP LOCKED",
        true,
        <PostgresStore as Dialect>::AGENT_LABELS_FILTER,
        planner_picks,
    )
});
static QUEUED_ORGS: LazyLock<String> = LazyLock::new(|| super::sql::queued_orgs_sql(planner_picks));

impl Dialect for PostgresStore {
    fn lease_sql(one_org: bool) -> &'static str {
        if one_org {
            LEASE_ONE_ORG.as_str()
        } else {
            LEASE_ANY_ORG.as_str()
        }
    }
    fn admission_batcher(&self) -> Option<&super::batch::AdmissionBatcher> {
        Some(&self.batcher)
    }
    const LABEL_FILTER: (&'static str, &'static str) =
        (" AND jobs.labels::jsonb @> jsonb_build_array(", "::text)");
    const AGENT_LABELS_FILTER: &'static str = " AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements_text(jobs.labels::jsonb) AS l(value) \
         WHERE lower(l.value) NOT IN (SELECT lower(a.value) FROM jsonb_array_elements_text($L::jsonb) AS a(value)) \
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

impl_shared_store!(PostgresStore, Postgres);

#[async_trait]
impl super::Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }
}
