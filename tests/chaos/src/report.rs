//! The run's report: JSON for machines, a table for docs/reliability.md.

use std::path::Path;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::check::Findings;
use crate::faults::FaultRecord;
use crate::Args;

/// Where the figures go in the Markdown file; everything between is replaced.
const BEGIN: &str = "<!-- chaos-figures:begin (written by scripts/chaos.sh; do not edit) -->";
const END: &str = "<!-- chaos-figures:end -->";

#[derive(Debug, Serialize)]
pub struct Report {
    pub name: String,
    /// UTC, RFC 3339.
    pub date: String,
    pub commit: String,
    pub machine: String,
    pub jobs: usize,
    pub agents: usize,
    pub slots_per_agent: usize,
    pub replicas: usize,
    pub lines_per_job: usize,
    pub outage_seconds: u64,
    pub lease_ttl_seconds: u64,
    pub submit_seconds: f64,
    /// From the first submission until the last job finished.
    pub run_seconds: f64,
    /// From the end of the last fault until the last job finished; none when the
    /// queue did not drain within the bound.
    pub drain_after_faults_seconds: Option<f64>,
    pub drain_bound_seconds: u64,
    pub faults: Vec<FaultRecord>,
    pub findings: Findings,
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores ({cpu}), {memory_gib:.0} GiB")
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        args: &Args,
        jobs: usize,
        submit_seconds: f64,
        run_seconds: f64,
        drain_after_faults_seconds: Option<f64>,
        faults: Vec<FaultRecord>,
        findings: Findings,
    ) -> Report {
        let date = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        Report {
            name: args.name.clone(),
            date,
            commit: command_output("git", &["rev-parse", "--short", "HEAD"])
                .unwrap_or_else(|| "unknown".into()),
            machine: machine(),
            jobs,
            agents: args.agents,
            slots_per_agent: args.slots,
            replicas: 2,
            lines_per_job: args.lines,
            outage_seconds: args.outage_seconds,
            lease_ttl_seconds: args.lease_ttl,
            submit_seconds,
            run_seconds,
            drain_after_faults_seconds,
            drain_bound_seconds: args.drain_bound_seconds,
            faults,
            findings,
        }
    }

    /// Clean findings, and drained within the bound.
    pub fn passed(&self) -> bool {
        self.findings.clean() && self.drain_after_faults_seconds.is_some()
    }

    pub fn print(&self) {
        eprintln!("{}", self.markdown());
        for example in &self.findings.examples {
            eprintln!("  problem: {example}");
        }
    }

    /// The figures as Markdown.
    pub fn markdown(&self) -> String {
        let f = &self.findings;
        let mut out = String::new();
        out.push_str(&format!(
            "Run `{}` on {} at commit `{}`, {}: {} jobs, {} host agents × {} slots (sandbox), {} control-plane replicas on PostgreSQL, logs in ClickHouse, cache on S3 (SeaweedFS); lease TTL {} s; each job printed {} numbered lines.\n\n",
            self.name, self.date, self.commit, self.machine, self.jobs, self.agents,
            self.slots_per_agent, self.replicas, self.lease_ttl_seconds, self.lines_per_job
        ));
        out.push_str("| Fault | At (s) | Out for (s) | Jobs running | Finished meanwhile | Answering again after (s) | Next job finished after (s) |\n");
        out.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
        for fault in &self.faults {
            out.push_str(&format!(
                "| {} | {:.1} | {:.1} | {} | {} | {:.1} | {} |\n",
                fault.name,
                fault.injected_at_s,
                fault.outage_s,
                fault.in_flight,
                fault.finished_during,
                fault.back_after_s,
                fault
                    .progress_after_s
                    .map_or("—".to_string(), |s| format!("{s:.1}"))
            ));
        }
        for fault in self.faults.iter().filter(|f| f.in_flight == 0) {
            out.push_str(&format!(
                "\nNote: \"{}\" hit no running job: the queue had drained; run more jobs (`--jobs`) for it to mean something.\n",
                fault.name
            ));
        }
        let drain = self
            .drain_after_faults_seconds
            .map_or(format!("not within {} s", self.drain_bound_seconds), |s| {
                format!("{s:.1} s (bound {} s)", self.drain_bound_seconds)
            });
        out.push_str(&format!(
            "\n| Figure | Value |\n|---|---:|\n\
             | Jobs submitted / checked | {} / {} |\n\
             | Attempts handed out | {} |\n\
             | Runs that reached their marker | {} |\n\
             | Re-runs after a lost lease | {} |\n\
             | Jobs not succeeded | {} |\n\
             | Concurrent runs of one job (duplicates) | {} |\n\
             | Jobs without the marker of their completing run (lost) | {} |\n\
             | Corrupt cache entries (sha256) | {} |\n\
             | Log lines checked | {} |\n\
             | Log lines lost | {} |\n\
             | Log lines duplicated | {} |\n\
             | Submission time | {:.1} s |\n\
             | Run time (first submission to last job finished) | {:.1} s |\n\
             | Queue drained after the last fault | {} |\n\
             | Verdict | {} |\n",
            self.jobs,
            f.jobs,
            f.attempts,
            f.runs,
            f.reruns,
            f.not_succeeded,
            f.concurrent_runs,
            f.missing_markers,
            f.corrupt_markers,
            f.log_lines,
            f.lost_lines,
            f.duplicate_lines,
            self.submit_seconds,
            self.run_seconds,
            drain,
            if self.passed() { "passed" } else { "FAILED" },
        ));
        out
    }

    /// Replaces the block between the chaos markers of `path` with the figures.
    pub fn update_markdown(&self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path)?;
        let (Some(begin), Some(end)) = (text.find(BEGIN), text.find(END)) else {
            bail!(
                "{} has no chaos figures block ({BEGIN} … {END})",
                path.display()
            );
        };
        if end < begin {
            bail!("{}: the chaos figures block is malformed", path.display());
        }
        let updated = format!(
            "{}{BEGIN}\n{}{END}{}",
            &text[..begin],
            self.markdown(),
            &text[end + END.len()..]
        );
        std::fs::write(path, updated)?;
        Ok(())
    }
}
