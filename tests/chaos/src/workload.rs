//! The jobs of a run, and how far the queue has got with them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Value};

use crate::cluster::{Cluster, ORG_ID, REPO};
use crate::Args;

/// What every chaos job runs: `CHAOS_LINES` numbered lines, some work, then its
/// marker — when this run started and ended, and random bytes — saved through the
/// cache under a key naming the job and the attempt, retried through outages. The
/// marker's sha256 is logged too, so the two channels check each other.
pub const SCRIPT: &str = r#"start=$(date +%s%N)
i=1
while [ "$i" -le "$CHAOS_LINES" ]; do echo "chaos line $i"; i=$((i + 1)); done
sleep "$CHAOS_SECONDS"
end=$(date +%s%N)
marker=$(mktemp)
{ echo "job=$NIMBUS_JOB_ID attempt=$NIMBUS_JOB_ATTEMPT start=$start end=$end"; head -c 3000 /dev/urandom | base64; } >"$marker"
sha=$(sha256sum "$marker" | cut -d ' ' -f 1)
echo "chaos marker attempt=$NIMBUS_JOB_ATTEMPT sha256=$sha"
key="chaos-marker-$NIMBUS_JOB_ID-$NIMBUS_JOB_ATTEMPT"
tries=0
while :; do
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 20 -X PUT \
    -H "Authorization: Bearer $ACTIONS_RUNTIME_TOKEN" --data-binary @"$marker" \
    "$NIMBUS_CACHE_URL/api/cache/$key") || code=000
  case "$code" in 2*|409) break ;; esac
  tries=$((tries + 1))
  if [ "$tries" -ge 180 ]; then echo "chaos marker not saved: HTTP $code" >&2; exit 1; fi
  sleep 1
done
echo "chaos done""#;

/// The messages a complete run of attempt `attempt` logs, but for the sha256.
pub fn expected_messages(lines: usize) -> Vec<String> {
    let mut messages: Vec<String> = (1..=lines).map(|i| format!("chaos line {i}")).collect();
    messages.push("chaos marker".to_string());
    messages.push("chaos done".to_string());
    messages
}

fn job_body(args: &Args) -> Value {
    json!({
        "repo": REPO,
        "labels": ["nimbus"],
        "steps": [{"name": "work", "run": SCRIPT}],
        "env": {
            "CHAOS_LINES": args.lines.to_string(),
            "CHAOS_SECONDS": format!("{}", args.job_seconds),
        },
        "timeout_minutes": 10,
    })
}

/// Submits `args.jobs` jobs through both replicas in turn; returns their ids.
pub async fn submit(cluster: &Cluster, args: &Args) -> Result<Vec<i64>> {
    futures::stream::iter(0..args.jobs)
        .map(|n| {
            let url = format!(
                "{}/api/jobs",
                cluster.replicas[n % cluster.replicas.len()].url
            );
            let body = job_body(args);
            async move {
                let answer = cluster
                    .http
                    .post(&url)
                    .bearer_auth(&cluster.org)
                    .json(&body)
                    .send()
                    .await?;
                if !answer.status().is_success() {
                    bail!("submitting job {n}: {}", answer.status());
                }
                let job: Value = answer.json().await?;
                job["id"]
                    .as_i64()
                    .ok_or_else(|| anyhow::anyhow!("submitting job {n}: no id in {job}"))
            }
        })
        .buffer_unordered(8)
        .try_collect()
        .await
}

/// One look at the queue: jobs running and finished, seconds after the run's start.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub at: f64,
    pub leased: u64,
    pub finished: u64,
}

/// The queue, sampled twice a second through whichever replica answers.
pub struct Progress {
    samples: Arc<Mutex<Vec<Sample>>>,
    clock: Instant,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Progress {
    pub fn watch(cluster: &Cluster, clock: Instant) -> Progress {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let urls: Vec<String> = cluster.replicas.iter().map(|r| r.url.clone()).collect();
        let http = cluster.http.clone();
        let admin = cluster.admin.clone();
        let task = {
            let samples = samples.clone();
            tokio::spawn(async move {
                loop {
                    for url in &urls {
                        let answer = http
                            .get(format!("{url}/api/jobs/summary?org_id={ORG_ID}"))
                            .bearer_auth(&admin)
                            .timeout(Duration::from_secs(2))
                            .send()
                            .await;
                        let Ok(answer) = answer else { continue };
                        let Ok(summary) = answer.json::<Value>().await else {
                            continue;
                        };
                        let count = |status: &str| summary["jobs"][status].as_u64().unwrap_or(0);
                        let sample = Sample {
                            at: clock.elapsed().as_secs_f64(),
                            leased: count("leased"),
                            finished: count("succeeded")
                                + count("failed")
                                + count("timed_out")
                                + count("cancelled"),
                        };
                        if let Ok(mut samples) = samples.lock() {
                            samples.push(sample);
                        }
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            })
        };
        Progress {
            samples,
            clock,
            task,
        }
    }

    /// The newest sample.
    pub fn latest(&self) -> Sample {
        self.samples
            .lock()
            .ok()
            .and_then(|s| s.last().copied())
            .unwrap_or_default()
    }

    /// Waits for a sample taken after `since` (seconds after the run's start) that
    /// shows more than `finished` jobs finished; returns when it was taken.
    pub async fn wait_progress(&self, since: f64, finished: u64, limit: Duration) -> Option<f64> {
        let started = Instant::now();
        while started.elapsed() < limit {
            let latest = self.latest();
            if latest.at > since && latest.finished > finished {
                return Some(latest.at);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// Waits until `total` jobs are finished or `limit` passes; returns when.
    pub async fn wait_finished(&self, total: u64, limit: Duration) -> Option<Instant> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.latest().finished >= total {
                return Some(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    }

    /// Seconds since the run's start.
    pub fn now(&self) -> f64 {
        self.clock.elapsed().as_secs_f64()
    }
}
