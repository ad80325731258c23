//! The faults, injected one after another while the jobs run, each measured: how
//! many jobs were running when it hit, how long the component was out, how long it
//! took to answer again, and how long until the queue moved on.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::cluster::{self, Cluster};
use crate::workload::{Progress, Sample};
use crate::{say, Args};

/// One injected fault, as measured.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    /// What was done.
    pub name: String,
    /// Seconds after the first submission.
    pub injected_at_s: f64,
    /// Seconds the component was gone (killed or stopped until restarted).
    pub outage_s: f64,
    /// Jobs leased (running) when it hit.
    pub in_flight: u64,
    /// Jobs that finished while it lasted.
    pub finished_during: u64,
    /// Seconds from the restart until the component answered again.
    pub back_after_s: f64,
    /// Seconds from the end of the fault until the next job finished (none: the
    /// queue was already empty).
    pub progress_after_s: Option<f64>,
}

struct Injection {
    name: String,
    at: f64,
    before: Sample,
}

impl Injection {
    fn begin(progress: &Progress, name: &str, started: Instant) -> Injection {
        say(started, format!("fault: {name}"));
        Injection {
            name: name.to_string(),
            at: progress.now(),
            before: progress.latest(),
        }
    }

    async fn end(
        self,
        progress: &Progress,
        total: u64,
        outage: Duration,
        back_after: Duration,
    ) -> FaultRecord {
        let end = progress.now();
        let now = progress.latest();
        let progress_after = if now.finished >= total {
            None
        } else {
            progress
                .wait_progress(end, now.finished, Duration::from_secs(120))
                .await
                .map(|at| at - end)
        };
        FaultRecord {
            name: self.name,
            injected_at_s: self.at,
            outage_s: outage.as_secs_f64(),
            in_flight: self.before.leased,
            finished_during: now.finished.saturating_sub(self.before.finished),
            back_after_s: back_after.as_secs_f64(),
            progress_after_s: progress_after,
        }
    }
}

async fn services(action: &'static str, service: &'static str) -> Result<()> {
    tokio::task::spawn_blocking(move || cluster::services(action, service))
        .await
        .context("services task")?
}

/// Runs every fault in turn, a few seconds apart.
pub async fn run_all(
    cluster: &mut Cluster,
    args: &Args,
    progress: &Progress,
    started: Instant,
) -> Result<Vec<FaultRecord>> {
    let total = args.jobs as u64;
    let gap = Duration::from_secs(5);
    let outage = Duration::from_secs(args.outage_seconds);
    let mut records = Vec::new();
    // Let the agents fill their slots first.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // A control-plane replica dies hard and is restarted (as systemd would).
    let fault = Injection::begin(
        progress,
        "kill -9 control-plane replica B, restart after 3 s",
        started,
    );
    let down = Instant::now();
    cluster.replicas[1].kill_hard()?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restart = Instant::now();
    cluster.replicas[1]
        .restart()
        .await
        .context("restarting replica B")?;
    records.push(
        fault
            .end(progress, total, down.elapsed(), restart.elapsed())
            .await,
    );
    tokio::time::sleep(gap).await;

    // PostgreSQL restarts (fast shutdown: every open connection is cut).
    let fault = Injection::begin(progress, "restart PostgreSQL (fast shutdown)", started);
    let down = Instant::now();
    services("restart", "postgres").await?;
    let outage_pg = down.elapsed();
    for replica in &cluster.replicas {
        cluster::wait_healthy(
            &cluster.http,
            &format!("{}/readyz", replica.url),
            Duration::from_secs(60),
        )
        .await?;
    }
    records.push(fault.end(progress, total, outage_pg, down.elapsed()).await);
    tokio::time::sleep(gap).await;

    // Two agents die hard mid-job; their leases must expire and their jobs run again.
    let fault = Injection::begin(
        progress,
        "kill -9 two host agents, restart after 5 s",
        started,
    );
    let down = Instant::now();
    for agent in cluster.agents.iter_mut().take(2) {
        agent.kill_hard()?;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let restart = Instant::now();
    for agent in cluster.agents.iter_mut().take(2) {
        agent.restart()?;
    }
    records.push(
        fault
            .end(progress, total, down.elapsed(), restart.elapsed())
            .await,
    );
    tokio::time::sleep(gap).await;

    // The log store goes away; agents keep their lines until it is back.
    let ping = format!("{}/ping", cluster.settings.clickhouse_url);
    let name = format!("stop ClickHouse for {} s", outage.as_secs());
    let fault = Injection::begin(progress, &name, started);
    let down = Instant::now();
    services("stop", "clickhouse").await?;
    if cluster::answers(&cluster.http, &ping).await {
        bail!("ClickHouse still answers after `scripts/services.sh stop clickhouse`: it was not started by that script, so the suite cannot stop it");
    }
    tokio::time::sleep(outage.saturating_sub(down.elapsed())).await;
    let restart = Instant::now();
    services("start", "clickhouse").await?;
    records.push(
        fault
            .end(progress, total, down.elapsed(), restart.elapsed())
            .await,
    );
    tokio::time::sleep(gap).await;

    // The blob store goes away; cache writes fail clearly and are retried.
    let s3 = cluster.settings.s3_endpoint.clone();
    let name = format!("stop the S3 server for {} s", outage.as_secs());
    let fault = Injection::begin(progress, &name, started);
    let down = Instant::now();
    services("stop", "s3").await?;
    if cluster::answers(&cluster.http, &s3).await {
        bail!("the S3 server still answers after `scripts/services.sh stop s3`: it was not started by that script, so the suite cannot stop it");
    }
    tokio::time::sleep(outage.saturating_sub(down.elapsed())).await;
    let restart = Instant::now();
    services("start", "s3").await?;
    records.push(
        fault
            .end(progress, total, down.elapsed(), restart.elapsed())
            .await,
    );
    Ok(records)
}
