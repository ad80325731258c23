//! Fleet analytics at scale: `GET /api/observability/orgs` over a million jobs in
//! a hundred orgs, before and after the rollup fold, with the seeding time.
//!
//! The jobs are written by one `INSERT … SELECT` over a generated series (the
//! API would take hours to queue a million jobs one by one), spread over the
//! last 30 days in every status, each with two metadata rows (`lr`, `batch`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use nimbus_core::auth::{JwtKeys, Role};
use nimbus_core::client::ControlPlaneClient;
use nimbus_core::control_plane::{self, ControlPlane, ControlPlaneApi, OrgsQuery};
use nimbus_core::store::SqlStore;
use nimbus_core::{with_pool, ControlPlaneConfig, Env, Secret, Store};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::stats::{ms, percentile, sorted};

const JWT_SECRET: &str = "bench-jwt-secret-0123456789";

#[derive(clap::Args)]
pub struct Args {
    /// Store URL (`postgres://…` for the figure of docs/benchmarks.md); default: a
    /// fresh SQLite file in a temporary directory.
    #[arg(long)]
    database_url: Option<String>,
    /// Jobs to seed.
    #[arg(long, default_value_t = 1_000_000)]
    jobs: u64,
    /// Orgs the jobs belong to.
    #[arg(long, default_value_t = 100)]
    orgs: u64,
    /// Report requests timed per variant.
    #[arg(long, default_value_t = 50)]
    queries: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Timing {
    variant: &'static str,
    queries: usize,
    p50_ms: f64,
    p95_ms: f64,
}

#[derive(Serialize)]
struct Report {
    store: String,
    jobs: u64,
    orgs: u64,
    seed_seconds: f64,
    fold_seconds: f64,
    timings: Vec<Timing>,
}

/// The seed statement. `$1` jobs, `$2` orgs, `$3` now (ms). Job `i` belongs to
/// org `1 + i % orgs`, is created `i` steps into the last 30 days, and has a
/// status by `i % 100`: 1 queued, 1 leased, 80 succeeded, 10 failed, 3 timed
/// out, 3 cancelled, 2 rejected; waits up to a minute, runs up to ten.
fn seed_jobs_sql(series: &str) -> String {
    format!(
        "INSERT INTO jobs (org_id, repo, source, status, labels, metadata, spec, created_at, \
         updated_at, started_at, finished_at) \
         SELECT 1 + i % $2, 'acme/app', 'direct', \
           CASE WHEN i % 100 = 0 THEN 'queued' WHEN i % 100 = 1 THEN 'leased' \
                WHEN i % 100 < 82 THEN 'succeeded' WHEN i % 100 < 92 THEN 'failed' \
                WHEN i % 100 < 95 THEN 'timed_out' WHEN i % 100 < 98 THEN 'cancelled' \
                ELSE 'rejected' END, \
           '[\"self-hosted\",\"nimbus\"]', '{{}}', '{{\"steps\":[{{\"run\":\"true\"}}]}}', \
           c, c, \
           CASE WHEN i % 100 = 0 OR i % 100 >= 98 THEN NULL ELSE c + i * 7919 % 60000 END, \
           CASE WHEN i % 100 < 2 THEN NULL WHEN i % 100 >= 98 THEN c \
                ELSE c + i * 7919 % 60000 + i * 104729 % 600000 END \
         FROM (SELECT i, $3 - 2592000000 + i * (2592000000 - 800000) / $1 AS c FROM {series}) AS s"
    )
}

const SEED_METADATA: &str = "INSERT INTO job_metadata (job_id, org_id, key, value) \
     SELECT id, org_id, 'lr', CASE id % 3 WHEN 0 THEN '0.1' WHEN 1 THEN '0.01' ELSE '0.001' END FROM jobs \
     UNION ALL \
     SELECT id, org_id, 'batch', CASE id % 4 WHEN 0 THEN '16' WHEN 1 THEN '32' WHEN 2 THEN '64' ELSE '128' END FROM jobs";

async fn seed(store: &SqlStore, jobs: u64, orgs: u64, now_ms: i64) -> Result<()> {
    let (jobs, orgs) = (i64::try_from(jobs)?, i64::try_from(orgs)?);
    with_pool!(store.pool(), pool => {
        let series = match store.backend() {
            "postgres" => "generate_series(0, $1 - 1) AS i",
            _ => "(WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < $1) SELECT i FROM n)",
        };
        sqlx::query(&seed_jobs_sql(series))
            .bind(jobs)
            .bind(orgs)
            .bind(now_ms)
            .execute(pool)
            .await?;
        sqlx::query(SEED_METADATA).execute(pool).await?;
        for org in 1..=orgs {
            sqlx::query("INSERT INTO orgs (id, name, created_at) VALUES ($1, $2, $3)")
                .bind(org)
                .bind(format!("org-{org}"))
                .bind(now_ms)
                .execute(pool)
                .await?;
        }
        if store.backend() == "postgres" {
            sqlx::query("VACUUM ANALYZE").execute(pool).await?;
        }
        Ok::<_, sqlx::Error>(())
    })?;
    Ok(())
}

async fn time_queries(
    client: &ControlPlaneClient,
    query: &OrgsQuery,
    runs: usize,
    orgs: u64,
) -> Result<(f64, f64)> {
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let report = client.observability_orgs(query).await?;
        samples.push(ms(started.elapsed()));
        if report.orgs.len() as u64 != orgs {
            bail!("the report has {} orgs, not {orgs}", report.orgs.len());
        }
    }
    let samples = sorted(samples);
    Ok((percentile(&samples, 0.5), percentile(&samples, 0.95)))
}

pub async fn run(args: Args) -> Result<()> {
    if args.jobs == 0 || args.orgs == 0 || args.queries == 0 {
        bail!("--jobs, --orgs and --queries must be at least 1");
    }
    let temp = std::env::temp_dir().join(format!("nimbus-bench-{}", uuid::Uuid::new_v4()));
    let url = args
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", temp.join("bench.db").display()));
    let store = if url.starts_with("postgres") {
        SqlStore::postgres(&url, 8).await?
    } else {
        SqlStore::sqlite(&url, 8).await?
    };
    let now = time::OffsetDateTime::now_utc();
    let now_ms = nimbus_core::domain::to_millis(now);
    let seeding = Instant::now();
    seed(&store, args.jobs, args.orgs, now_ms).await?;
    let seed_seconds = seeding.elapsed().as_secs_f64();

    let env = Env::from_map([
        ("NIMBUS_JWT_SECRET", JWT_SECRET),
        ("NIMBUS_LOG_LEVEL", "warn"),
    ]);
    let config = ControlPlaneConfig::from_env(&env)?;
    let store: Arc<dyn Store> = Arc::new(store);
    let state = ControlPlane::new(config, store.clone())?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = control_plane::router(state.clone());
    let server = tokio::spawn(async move {
        axum_serve(listener, app).await;
    });
    let token = JwtKeys::new(&Secret::new(JWT_SECRET)).mint(
        "bench",
        Role::Admin,
        None,
        Duration::from_secs(3600),
    )?;
    let client = ControlPlaneClient::new(&base, Some(Secret::new(token)))?;
    let all = OrgsQuery::default();
    let by_lr = OrgsQuery {
        metadata_key: Some("lr".into()),
        ..OrgsQuery::default()
    };
    let week = OrgsQuery {
        since: Some(now - time::Duration::days(7) - time::Duration::minutes(90)),
        ..OrgsQuery::default()
    };

    let mut timings = Vec::new();
    // Before the fold every job is read from `jobs` (a few runs: they are slow).
    let unfolded_runs = args.queries.clamp(1, 5);
    let (p50, p95) = time_queries(&client, &all, unfolded_runs, args.orgs).await?;
    timings.push(Timing {
        variant: "all time, before the rollup fold",
        queries: unfolded_runs,
        p50_ms: p50,
        p95_ms: p95,
    });
    let folding = Instant::now();
    state.refresh_analytics().await?;
    let fold_seconds = folding.elapsed().as_secs_f64();
    for (variant, query) in [
        ("all time", &all),
        ("all time, by metadata key lr", &by_lr),
        ("the last 7 days (window inside days)", &week),
    ] {
        let (p50, p95) = time_queries(&client, query, args.queries, args.orgs).await?;
        timings.push(Timing {
            variant,
            queries: args.queries,
            p50_ms: p50,
            p95_ms: p95,
        });
    }
    server.abort();

    let report = Report {
        store: store.backend().to_string(),
        jobs: args.jobs,
        orgs: args.orgs,
        seed_seconds,
        fold_seconds,
        timings,
    };
    let _ = std::fs::remove_dir_all(&temp);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{} jobs in {} orgs on {}: seeded in {:.1} s, first fold {:.1} s",
        report.jobs, report.orgs, report.store, report.seed_seconds, report.fold_seconds
    );
    println!(
        "{:<40} {:>8} {:>10} {:>10}",
        "GET /api/observability/orgs", "queries", "p50", "p95"
    );
    for t in &report.timings {
        println!(
            "{:<40} {:>8} {:>8.1} ms {:>8.1} ms",
            t.variant, t.queries, t.p50_ms, t.p95_ms
        );
    }
    Ok(())
}

async fn axum_serve(listener: TcpListener, app: axum::Router) {
    let _ = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .await;
}
