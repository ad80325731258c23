//! The verdict, job by job, from what the services kept: the control plane's
//! record of the job, the markers its runs saved in the cache, and its log lines.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::cluster::{Cluster, ORG_ID};
use crate::workload::expected_messages;
use crate::Args;

/// Line numbers one lease (attempt) of a job may use (`nimbus_core::domain::LOG_SEQS_PER_LEASE`).
const SEQS_PER_ATTEMPT: u64 = nimbus_core::domain::LOG_SEQS_PER_LEASE;

/// How long lines still in an agent's spool get to arrive before they count as lost.
const LATE_LINES: Duration = Duration::from_secs(90);

/// What the check found. A clean run has zero in every field but `jobs`, `runs`,
/// `reruns` and `log_lines`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Findings {
    /// Jobs checked.
    pub jobs: u64,
    /// Runs that reached their marker (markers found), all attempts together.
    pub runs: u64,
    /// Runs beyond the first: attempts after a lost lease that ran to their marker.
    pub reruns: u64,
    /// Attempts the control plane handed out, all jobs together.
    pub attempts: u64,
    /// Log lines found.
    pub log_lines: u64,
    /// Jobs whose final status is not `succeeded`.
    pub not_succeeded: u64,
    /// Jobs whose completing run left no marker (the run cannot be proven).
    pub missing_markers: u64,
    /// Markers whose content does not match what their run logged (sha256), or
    /// that name another job or attempt.
    pub corrupt_markers: u64,
    /// Jobs two of whose runs overlapped in time (a concurrent second run).
    pub concurrent_runs: u64,
    /// Log lines missing: of the completing run, or gaps in any run's numbering.
    pub lost_lines: u64,
    /// Log lines present more than once (the same line number twice).
    pub duplicate_lines: u64,
    /// The first problems, for the reader.
    pub examples: Vec<String>,
}

impl Findings {
    /// Nothing lost, doubled or corrupt.
    pub fn clean(&self) -> bool {
        self.not_succeeded == 0
            && self.missing_markers == 0
            && self.corrupt_markers == 0
            && self.concurrent_runs == 0
            && self.lost_lines == 0
            && self.duplicate_lines == 0
    }

    fn add(&mut self, job: &JobVerdict) {
        self.jobs += 1;
        self.runs += job.runs;
        self.reruns += job.runs.saturating_sub(1);
        self.attempts += job.attempts;
        self.log_lines += job.log_lines;
        self.not_succeeded += u64::from(job.not_succeeded);
        self.missing_markers += u64::from(job.missing_marker);
        self.corrupt_markers += job.corrupt_markers;
        self.concurrent_runs += u64::from(job.concurrent);
        self.lost_lines += job.lost_lines;
        self.duplicate_lines += job.duplicate_lines;
        if self.examples.len() < 10 {
            self.examples.extend(job.problems.iter().take(2).cloned());
        }
    }
}

/// One run's marker, as read back from the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub attempt: u64,
    /// Nanoseconds since the epoch when the run started and finished its work.
    pub start: u128,
    pub end: u128,
    pub sha256: String,
}

/// Parses a marker body: `job=J attempt=A start=S end=E` then the random bytes.
pub fn parse_marker(job: i64, attempt: u64, body: &[u8]) -> Result<Marker> {
    let text = String::from_utf8_lossy(body);
    let first = text.lines().next().unwrap_or("");
    let mut fields = BTreeMap::new();
    for pair in first.split_whitespace() {
        if let Some((key, value)) = pair.split_once('=') {
            fields.insert(key, value);
        }
    }
    let number = |key: &str| -> Result<u128> {
        fields
            .get(key)
            .and_then(|v| v.parse::<u128>().ok())
            .ok_or_else(|| {
                anyhow::anyhow!("marker of job {job} attempt {attempt}: no {key} in {first:?}")
            })
    };
    if number("job")? != job as u128 || number("attempt")? != u128::from(attempt) {
        bail!("marker of job {job} attempt {attempt} names another run: {first:?}");
    }
    Ok(Marker {
        attempt,
        start: number("start")?,
        end: number("end")?,
        sha256: hex::encode(Sha256::digest(body)),
    })
}

/// Whether any two runs' working times overlap.
pub fn overlapping(markers: &[Marker]) -> bool {
    let mut sorted: Vec<&Marker> = markers.iter().collect();
    sorted.sort_by_key(|m| m.start);
    sorted.windows(2).any(|pair| pair[1].start < pair[0].end)
}

/// One log line as the pipeline serves it.
#[derive(Debug, Clone)]
pub struct Line {
    pub seq: u64,
    pub message: String,
}

/// The verdict on one job.
#[derive(Debug, Default)]
pub struct JobVerdict {
    pub runs: u64,
    pub attempts: u64,
    pub log_lines: u64,
    pub not_succeeded: bool,
    pub missing_marker: bool,
    pub corrupt_markers: u64,
    pub concurrent: bool,
    pub lost_lines: u64,
    pub duplicate_lines: u64,
    pub problems: Vec<String>,
}

impl JobVerdict {
    /// Whether waiting could still change the verdict (lines on their way).
    fn may_improve(&self) -> bool {
        self.lost_lines > 0
    }
}

/// Judges one job from its record, markers (by attempt) and log lines.
pub fn judge(
    id: i64,
    status: &str,
    attempts: u64,
    markers: &BTreeMap<u64, Vec<u8>>,
    lines: &[Line],
    expected_lines: usize,
) -> JobVerdict {
    let mut verdict = JobVerdict {
        attempts,
        log_lines: lines.len() as u64,
        ..JobVerdict::default()
    };
    if status != "succeeded" {
        verdict.not_succeeded = true;
        verdict.problems.push(format!("job {id}: {status}"));
    }
    // Lines by attempt: each lease numbers its lines from its own base.
    let mut by_attempt: BTreeMap<u64, Vec<&Line>> = BTreeMap::new();
    for line in lines {
        let attempt = line.seq.saturating_sub(1) / SEQS_PER_ATTEMPT + 1;
        by_attempt.entry(attempt).or_default().push(line);
    }
    let mut logged_sha: BTreeMap<u64, String> = BTreeMap::new();
    let mut gaps: BTreeMap<u64, u64> = BTreeMap::new();
    for (attempt, lines) in &mut by_attempt {
        lines.sort_by_key(|l| l.seq);
        let base = (*attempt - 1) * SEQS_PER_ATTEMPT;
        let mut expected_seq = base + 1;
        for line in lines.iter() {
            if line.seq < expected_seq {
                verdict.duplicate_lines += 1;
                verdict
                    .problems
                    .push(format!("job {id}: line {} twice", line.seq - base));
                continue;
            }
            if line.seq > expected_seq {
                let gap = line.seq - expected_seq;
                verdict.lost_lines += gap;
                *gaps.entry(*attempt).or_default() += gap;
                verdict.problems.push(format!(
                    "job {id} attempt {attempt}: {gap} line(s) missing before line {}",
                    line.seq - base
                ));
            }
            expected_seq = line.seq + 1;
            if let Some(rest) = line.message.strip_prefix("chaos marker ") {
                if let Some(sha) = rest
                    .split_whitespace()
                    .find_map(|f| f.strip_prefix("sha256="))
                {
                    logged_sha.insert(*attempt, sha.to_string());
                }
            }
        }
    }
    // The markers: which runs got that far, and whether they are intact.
    let mut parsed = Vec::new();
    for (attempt, body) in markers {
        match parse_marker(id, *attempt, body) {
            Ok(marker) => {
                if let Some(logged) = logged_sha.get(attempt) {
                    if *logged != marker.sha256 {
                        verdict.corrupt_markers += 1;
                        verdict.problems.push(format!(
                            "job {id} attempt {attempt}: the cache returned a marker with sha256 {} but the run logged {logged}",
                            marker.sha256
                        ));
                    }
                }
                parsed.push(marker);
            }
            Err(error) => {
                verdict.corrupt_markers += 1;
                verdict.problems.push(error.to_string());
            }
        }
    }
    verdict.runs = markers.len() as u64;
    if !markers.contains_key(&attempts) {
        verdict.missing_marker = true;
        verdict.problems.push(format!(
            "job {id}: its completing run (attempt {attempts}) left no marker"
        ));
    }
    if overlapping(&parsed) {
        verdict.concurrent = true;
        verdict
            .problems
            .push(format!("job {id}: two runs overlapped in time: {parsed:?}"));
    }
    // The completing run logged everything it printed, in order.
    let expected = expected_messages(expected_lines);
    let last: Vec<&str> = by_attempt
        .get(&attempts)
        .map(|lines| lines.iter().map(|l| l.message.as_str()).collect())
        .unwrap_or_default();
    let matches = |want: &String, got: &str| {
        got == want || (want == "chaos marker" && got.starts_with("chaos marker "))
    };
    let present = expected
        .iter()
        .filter(|want| last.iter().any(|got| matches(want, got)))
        .count();
    // Gaps inside the run were counted above; this counts its missing tail.
    let missing = (expected.len() - present) as u64;
    let extra = missing.saturating_sub(gaps.get(&attempts).copied().unwrap_or(0));
    if extra > 0 {
        verdict.lost_lines += extra;
        verdict.problems.push(format!(
            "job {id} attempt {attempts}: {extra} of its {} lines missing",
            expected.len()
        ));
    }
    verdict
}

/// Every job, read back and judged; jobs with lines missing are read again until
/// [`LATE_LINES`] has passed (an agent's spool may still be sending them).
pub async fn verify(cluster: &Cluster, ids: &[i64], args: &Args) -> Result<Findings> {
    let jobs = list_jobs(cluster).await?;
    let mut pending: Vec<i64> = ids.to_vec();
    let mut verdicts: BTreeMap<i64, JobVerdict> = BTreeMap::new();
    let started = Instant::now();
    loop {
        let judged: Vec<(i64, JobVerdict)> = futures::stream::iter(pending.iter().copied())
            .map(|id| {
                let job = jobs.get(&id).cloned();
                async move {
                    let Some((status, attempts)) = job else {
                        let mut verdict = JobVerdict {
                            not_succeeded: true,
                            ..JobVerdict::default()
                        };
                        verdict.problems.push(format!("job {id}: not listed"));
                        return Ok::<_, anyhow::Error>((id, verdict));
                    };
                    let markers = read_markers(cluster, id, attempts).await?;
                    let lines = read_lines(cluster, id).await?;
                    Ok((
                        id,
                        judge(id, &status, attempts, &markers, &lines, args.lines),
                    ))
                }
            })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        pending.clear();
        for (id, verdict) in judged {
            if verdict.may_improve() {
                pending.push(id);
            }
            verdicts.insert(id, verdict);
        }
        if pending.is_empty() || started.elapsed() > LATE_LINES {
            break;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let mut findings = Findings::default();
    for verdict in verdicts.values() {
        findings.add(verdict);
    }
    Ok(findings)
}

/// Every job of the org: id → (status, attempt).
async fn list_jobs(cluster: &Cluster) -> Result<BTreeMap<i64, (String, u64)>> {
    let mut jobs = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/jobs?org_id={ORG_ID}&limit=500");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page = cluster.get_json(&path, &cluster.admin).await?;
        for job in page["jobs"].as_array().into_iter().flatten() {
            if let Some(id) = job["id"].as_i64() {
                jobs.insert(
                    id,
                    (
                        job["status"].as_str().unwrap_or("?").to_string(),
                        job["attempt"].as_u64().unwrap_or(0),
                    ),
                );
            }
        }
        cursor = match &page["next_cursor"] {
            Value::String(next) => Some(next.clone()),
            Value::Number(next) => Some(next.to_string()),
            _ => None,
        };
        if cursor.is_none() {
            return Ok(jobs);
        }
    }
}

/// The markers of attempts 1..=`attempts` that exist, by attempt.
async fn read_markers(cluster: &Cluster, id: i64, attempts: u64) -> Result<BTreeMap<u64, Vec<u8>>> {
    let mut markers = BTreeMap::new();
    for attempt in 1..=attempts {
        let url = format!(
            "{}/api/cache/chaos-marker-{id}-{attempt}",
            cluster.cache.url
        );
        let answer = cluster
            .http
            .get(&url)
            .bearer_auth(&cluster.cache_token)
            .send()
            .await?;
        match answer.status().as_u16() {
            200 => {
                markers.insert(attempt, answer.bytes().await?.to_vec());
            }
            404 => {}
            status => bail!("reading the marker of job {id} attempt {attempt}: HTTP {status}"),
        }
    }
    Ok(markers)
}

/// All of a job's log lines, every attempt.
async fn read_lines(cluster: &Cluster, id: i64) -> Result<Vec<Line>> {
    let answer = cluster
        .http
        .get(format!(
            "{}/api/logs?job_id={id}&order=oldest&limit=10000",
            cluster.pipeline.url
        ))
        .bearer_auth(&cluster.admin)
        .send()
        .await?;
    if !answer.status().is_success() {
        bail!("reading the lines of job {id}: {}", answer.status());
    }
    let body: Value = answer.json().await?;
    Ok(body["lines"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|line| {
            Some(Line {
                seq: line["seq"].as_u64()?,
                message: line["message"].as_str()?.to_string(),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(job: i64, attempt: u64, start: u128, end: u128) -> Vec<u8> {
        format!("job={job} attempt={attempt} start={start} end={end}\nAAAA\n").into_bytes()
    }

    fn sha(body: &[u8]) -> String {
        hex::encode(Sha256::digest(body))
    }

    fn run_lines(attempt: u64, messages: &[String]) -> Vec<Line> {
        let base = (attempt - 1) * SEQS_PER_ATTEMPT;
        messages
            .iter()
            .enumerate()
            .map(|(i, m)| Line {
                seq: base + i as u64 + 1,
                message: m.clone(),
            })
            .collect()
    }

    fn complete_run(attempt: u64, body: &[u8]) -> Vec<Line> {
        let mut messages: Vec<String> = (1..=3).map(|i| format!("chaos line {i}")).collect();
        messages.push(format!(
            "chaos marker attempt={attempt} sha256={}",
            sha(body)
        ));
        messages.push("chaos done".into());
        run_lines(attempt, &messages)
    }

    #[test]
    fn a_complete_single_run_is_clean() {
        let body = marker(7, 1, 100, 200);
        let lines = complete_run(1, &body);
        let verdict = judge(7, "succeeded", 1, &BTreeMap::from([(1, body)]), &lines, 3);
        assert!(verdict.problems.is_empty(), "{:?}", verdict.problems);
        assert_eq!((verdict.runs, verdict.log_lines), (1, 5));
    }

    #[test]
    fn a_rerun_after_a_lost_lease_is_clean_when_the_runs_do_not_overlap() {
        let first = marker(7, 1, 100, 200);
        let second = marker(7, 2, 300, 400);
        let mut lines = complete_run(1, &first);
        lines.extend(complete_run(2, &second));
        let markers = BTreeMap::from([(1, first), (2, second)]);
        let verdict = judge(7, "succeeded", 2, &markers, &lines, 3);
        assert!(verdict.problems.is_empty(), "{:?}", verdict.problems);
        assert_eq!(verdict.runs, 2);
    }

    #[test]
    fn overlapping_runs_are_found() {
        let first = marker(7, 1, 100, 300);
        let second = marker(7, 2, 200, 400);
        let mut lines = complete_run(1, &first);
        lines.extend(complete_run(2, &second));
        let markers = BTreeMap::from([(1, first), (2, second)]);
        assert!(judge(7, "succeeded", 2, &markers, &lines, 3).concurrent);
    }

    #[test]
    fn gaps_duplicates_and_a_missing_tail_are_counted() {
        let body = marker(7, 1, 100, 200);
        let mut lines = complete_run(1, &body);
        lines.remove(1); // line 2 lost
        lines.push(lines[0].clone()); // line 1 twice
        let verdict = judge(
            7,
            "succeeded",
            1,
            &BTreeMap::from([(1, body.clone())]),
            &lines,
            3,
        );
        assert_eq!((verdict.lost_lines, verdict.duplicate_lines), (1, 1));

        let truncated: Vec<Line> = complete_run(1, &body).into_iter().take(3).collect();
        let verdict = judge(
            7,
            "succeeded",
            1,
            &BTreeMap::from([(1, body)]),
            &truncated,
            3,
        );
        assert_eq!(verdict.lost_lines, 2, "{:?}", verdict.problems);
    }

    #[test]
    fn a_missing_or_altered_marker_is_found() {
        let body = marker(7, 1, 100, 200);
        let lines = complete_run(1, &body);
        let verdict = judge(7, "succeeded", 1, &BTreeMap::new(), &lines, 3);
        assert!(verdict.missing_marker);

        let mut altered = body.clone();
        altered.push(b'!');
        let verdict = judge(
            7,
            "succeeded",
            1,
            &BTreeMap::from([(1, altered)]),
            &lines,
            3,
        );
        assert_eq!(verdict.corrupt_markers, 1);

        let other_job = marker(8, 1, 100, 200);
        let verdict = judge(
            7,
            "succeeded",
            1,
            &BTreeMap::from([(1, other_job)]),
            &lines,
            3,
        );
        assert_eq!(verdict.corrupt_markers, 1);
    }

    #[test]
    fn a_job_that_did_not_succeed_is_reported() {
        let verdict = judge(7, "failed", 1, &BTreeMap::new(), &[], 3);
        assert!(verdict.not_succeeded && verdict.missing_marker);
        assert_eq!(verdict.lost_lines, 5);
    }
}
