//! Each report as tables for people.

use serde_json::Value;

use super::table::{bar, duration, rate, Table, Tone};
use crate::analytics::{
    JobSummary, MetadataBucket, MetadataHistogram, MetadataPresets, MetadataTrend, OrgsReport,
    StatusCounts,
};
use crate::domain::{Job, JobStatus};

/// Widest bar of a histogram.
const BAR_WIDTH: usize = 30;

fn status_tone(status: JobStatus) -> Tone {
    match status {
        JobStatus::Succeeded => Tone::Good,
        JobStatus::Failed | JobStatus::TimedOut | JobStatus::Rejected => Tone::Bad,
        JobStatus::Cancelled => Tone::Dim,
        JobStatus::Queued | JobStatus::Leased => Tone::Plain,
    }
}

fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}

fn plain(text: impl ToString) -> (String, Tone) {
    (text.to_string(), Tone::Plain)
}

/// Counts as words: `5 (1 queued, 2 succeeded, …)`, statuses with jobs only.
fn counts_line(total: i64, jobs: &StatusCounts) -> String {
    let parts: Vec<String> = JobStatus::ALL
        .iter()
        .filter(|s| jobs.get(**s) > 0)
        .map(|s| format!("{} {}", jobs.get(*s), s.as_str().replace('_', " ")))
        .collect();
    if parts.is_empty() {
        total.to_string()
    } else {
        format!("{total} ({})", parts.join(", "))
    }
}

fn buckets_table(buckets: &[MetadataBucket], colour: bool) -> String {
    let mut table = Table::new(&[
        "VALUE",
        ">JOBS",
        ">SUCCEEDED",
        ">FAILED",
        ">TIMED OUT",
        ">OTHER",
        ">SUCCESS",
        "",
    ]);
    let max = buckets.iter().map(|b| b.total).max().unwrap_or(0);
    for bucket in buckets {
        let jobs = &bucket.jobs;
        let other = bucket.total - jobs.succeeded - jobs.failed - jobs.timed_out;
        table.toned_row(vec![
            plain(&bucket.value),
            plain(bucket.total),
            plain(jobs.succeeded),
            plain(jobs.failed),
            plain(jobs.timed_out),
            plain(other),
            rate(bucket.success_rate),
            (bar(bucket.total, max, BAR_WIDTH), Tone::Dim),
        ]);
    }
    if table.is_empty() {
        return "(no jobs carry this key)\n".into();
    }
    table.render(colour)
}

/// `nimbus report orgs`.
pub fn orgs(report: &OrgsReport, colour: bool) -> String {
    let mut table = Table::new(&[
        ">ORG",
        "NAME",
        ">JOBS",
        ">QUEUED",
        ">RUNNING",
        ">SUCCEEDED",
        ">FAILED",
        ">TIMED OUT",
        ">CANCELLED",
        ">REJECTED",
        ">SUCCESS",
        ">WAIT P50",
        ">WAIT P95",
        ">RUN P50",
        ">RUN P95",
        ">LEASES",
        ">RATE LIMITED",
    ]);
    for org in &report.orgs {
        let jobs = &org.jobs;
        table.toned_row(vec![
            plain(org.org_id),
            plain(org.name.as_deref().unwrap_or("-")),
            plain(org.total),
            plain(jobs.queued),
            plain(jobs.leased),
            plain(jobs.succeeded),
            plain(jobs.failed),
            plain(jobs.timed_out),
            plain(jobs.cancelled),
            plain(jobs.rejected),
            rate(org.success_rate),
            plain(duration(org.queue_wait_ms.p50)),
            plain(duration(org.queue_wait_ms.p95)),
            plain(duration(org.run_time_ms.p50)),
            plain(duration(org.run_time_ms.p95)),
            plain(org.active_leases),
            (
                org.rate_limit_hits.to_string(),
                if org.rate_limit_hits > 0 {
                    Tone::Bad
                } else {
                    Tone::Plain
                },
            ),
        ]);
    }
    let mut out = if table.is_empty() {
        "(no orgs)\n".to_string()
    } else {
        table.render(colour)
    };
    if let Some(key) = &report.metadata_key {
        for org in &report.orgs {
            let name = org
                .name
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            out.push_str(&format!("\nOrg {}{name} by {key}\n", org.org_id));
            out.push_str(&buckets_table(
                org.metadata.as_deref().unwrap_or(&[]),
                colour,
            ));
        }
    }
    out
}

/// The summary part of `nimbus report jobs`.
pub fn summary(summary: &JobSummary, colour: bool) -> String {
    let scope = match (&summary.metadata_key, &summary.metadata_value) {
        (Some(key), Some(value)) => format!(" with {key}={value}"),
        (Some(key), None) => format!(" with {key}"),
        _ => String::new(),
    };
    let (success, _) = rate(summary.success_rate);
    let mut out = format!(
        "Jobs{scope}: {}; success rate {success}\n",
        counts_line(summary.total, &summary.jobs)
    );
    if !summary.top_metadata.is_empty() {
        let mut table = Table::new(&["TAG", ">JOBS"]);
        for tag in &summary.top_metadata {
            table.row(vec![
                format!("{}={}", tag.key, tag.value),
                tag.jobs.to_string(),
            ]);
        }
        out.push('\n');
        out.push_str(&table.render(colour));
    }
    out
}

/// A list of jobs (`nimbus jobs list`, `nimbus report jobs`).
pub fn jobs(jobs: &[Job], with_metadata: bool, colour: bool) -> String {
    let mut columns = vec![
        ">ID", ">ORG", "REPO", "STATUS", ">ATTEMPT", "CREATED", ">WAIT", ">RUN",
    ];
    if with_metadata {
        columns.push("METADATA");
    }
    let mut table = Table::new(&columns);
    for job in jobs {
        let ms =
            |from: Option<time::OffsetDateTime>, to: Option<time::OffsetDateTime>| match (from, to)
            {
                (Some(from), Some(to)) => {
                    Some(u64::try_from((to - from).whole_milliseconds()).unwrap_or(0))
                }
                _ => None,
            };
        let mut row = vec![
            plain(job.id),
            plain(job.org_id),
            plain(&job.repo),
            (job.status.to_string(), status_tone(job.status)),
            plain(job.attempt),
            plain(rfc3339(job.created_at)),
            plain(duration(ms(Some(job.created_at), job.started_at))),
            plain(duration(ms(job.started_at, job.finished_at))),
        ];
        if with_metadata {
            let tags: Vec<String> = job
                .metadata
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            row.push(plain(tags.join(",")));
        }
        table.toned_row(row);
    }
    if table.is_empty() {
        return "(no jobs)\n".into();
    }
    table.render(colour)
}

/// One job (`nimbus report jobs --job-id`).
pub fn job(job: &Job) -> String {
    let mut out = format!(
        "job {} (org {}, {}): {}, attempt {}\ncreated {}\n",
        job.id,
        job.org_id,
        job.repo,
        job.status,
        job.attempt,
        rfc3339(job.created_at)
    );
    if let Some(at) = job.started_at {
        out.push_str(&format!("started {}\n", rfc3339(at)));
    }
    if let Some(at) = job.finished_at {
        out.push_str(&format!("finished {}\n", rfc3339(at)));
    }
    if let Some(code) = job.exit_code {
        out.push_str(&format!("exit code {code}\n"));
    }
    if let Some(reason) = &job.failure_reason {
        out.push_str(&format!("reason: {reason}\n"));
    }
    for (key, value) in &job.metadata {
        out.push_str(&format!("{key}={value}\n"));
    }
    out
}

/// `nimbus report metadata --key K`.
pub fn histogram(histogram: &MetadataHistogram, colour: bool) -> String {
    format!(
        "Jobs by {}\n{}",
        histogram.key,
        buckets_table(&histogram.buckets, colour)
    )
}

/// `nimbus report metadata --key K --trend`.
pub fn trend(trend: &MetadataTrend, colour: bool) -> String {
    let mut table = Table::new(&[
        "START",
        "VALUE",
        ">JOBS",
        ">SUCCEEDED",
        ">FAILED",
        ">SUCCESS",
    ]);
    for bucket in &trend.buckets {
        for value in &bucket.values {
            table.toned_row(vec![
                plain(rfc3339(bucket.start)),
                plain(&value.value),
                plain(value.total),
                plain(value.jobs.succeeded),
                plain(value.jobs.failed + value.jobs.timed_out),
                rate(value.success_rate),
            ]);
        }
    }
    let head = format!(
        "Jobs by {} per {} h, {} to {}\n",
        trend.key,
        trend.bucket_hours,
        rfc3339(trend.since),
        rfc3339(trend.until)
    );
    if table.is_empty() {
        return head + "(no jobs carry this key in the window)\n";
    }
    head + &table.render(colour)
}

/// `nimbus report metadata-presets`.
pub fn presets(presets: &MetadataPresets, colour: bool) -> String {
    let mut table = Table::new(&["KEY", ">ORG", "VALUE", ">JOBS", ">SUCCESS"]);
    for preset in &presets.presets {
        for org in &preset.orgs {
            for bucket in &org.buckets {
                table.toned_row(vec![
                    plain(&preset.key),
                    plain(org.org_id),
                    plain(&bucket.value),
                    plain(bucket.total),
                    rate(bucket.success_rate),
                ]);
            }
        }
    }
    if presets.presets.is_empty() {
        return "(no preset keys: set NIMBUS_METADATA_DEFAULT_KEYS on the control plane)\n".into();
    }
    if table.is_empty() {
        return "(no jobs carry the preset keys)\n".into();
    }
    table.render(colour)
}

fn number(value: &Value) -> u64 {
    value.as_u64().unwrap_or(0)
}

/// `nimbus report cache`.
pub fn cache(usage: &Value, colour: bool) -> String {
    let mut table = Table::new(&[
        ">ORG",
        ">BYTES",
        ">ENTRIES",
        ">HITS",
        ">MISSES",
        ">HIT RATE",
        ">EVICTED",
    ]);
    for org in usage["orgs"].as_array().into_iter().flatten() {
        let (hits, misses) = (number(&org["hits"]), number(&org["misses"]));
        let hit_rate = (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64);
        table.toned_row(vec![
            plain(number(&org["org_id"])),
            plain(number(&org["bytes"])),
            plain(number(&org["entries"])),
            plain(hits),
            plain(misses),
            rate(hit_rate),
            plain(number(&org["evictions"])),
        ]);
    }
    if table.is_empty() {
        return "(no cache entries)\n".into();
    }
    table.render(colour)
}

/// `nimbus report logs`.
pub fn log_stats(stats: &Value) -> String {
    let mut out = format!(
        "{} lines, {} bytes in {} (last ingest {}; {} lines buffered)\n",
        number(&stats["lines"]),
        number(&stats["bytes"]),
        stats["backend"].as_str().unwrap_or("?"),
        stats["last_ingest"].as_str().unwrap_or("never"),
        number(&stats["buffered_lines"]),
    );
    for (title, key) in [("LEVEL", "per_level"), ("ORG", "per_org")] {
        if let Some(map) = stats[key].as_object() {
            let mut table = Table::new(&[title, ">LINES"]);
            for (name, lines) in map {
                table.row(vec![name.clone(), number(lines).to_string()]);
            }
            out.push('\n');
            out.push_str(&table.render(false));
        }
    }
    out
}

/// `nimbus report logs --job-id N`: the lines, oldest first.
pub fn log_lines(answer: &Value) -> String {
    let lines = answer["lines"].as_array().or_else(|| answer.as_array());
    let mut out = String::new();
    for line in lines.into_iter().flatten() {
        out.push_str(&format!(
            "{} {:<5} {}\n",
            line["ts"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| line["ts"].to_string()),
            line["level"].as_str().unwrap_or("?"),
            line["message"].as_str().unwrap_or("")
        ));
    }
    if out.is_empty() {
        out.push_str("(no lines)\n");
    }
    out
}
