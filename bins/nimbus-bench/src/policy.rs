//! Policy evaluation cost: a generated 200-rule policy, evaluated on one core.

use std::time::Instant;

use anyhow::Result;
use nimbus_policy::{JobFacts, Policy};
use serde::Serialize;

#[derive(clap::Args)]
pub struct Args {
    /// Rules in the generated policy (split over every rule kind and a few orgs).
    #[arg(long, default_value_t = 200)]
    rules: usize,
    /// Evaluations to time.
    #[arg(long, default_value_t = 1_000_000)]
    evaluations: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    rules: usize,
    evaluations: usize,
    evaluations_per_second: f64,
    denied_share: f64,
}

/// A policy with `rules` rules: forbidden label globs, allowed repositories, title
/// regexes and safety reviews, globally and for four orgs.
fn generate(rules: usize) -> String {
    let per_kind = (rules / 8).max(1);
    let list = |f: &dyn Fn(usize) -> String| (0..per_kind).map(f).collect::<Vec<_>>().join(", ");
    let mut yaml = String::from("version: 1\n");
    yaml.push_str(&format!(
        "forbidden_labels: [{}]\n",
        list(&|i| format!("\"forbidden-{i}-*\""))
    ));
    yaml.push_str(&format!(
        "allowed_repositories: [{}]\n",
        list(&|i| format!("\"org{i}/*\""))
    ));
    yaml.push_str("blocked_workflow_titles:\n");
    for i in 0..per_kind {
        yaml.push_str(&format!(
            "  - pattern: \"^deploy-{i}-(prod|staging)\"\n    case_insensitive: true\n"
        ));
    }
    yaml.push_str("require_safety_review:\n");
    for i in 0..per_kind {
        yaml.push_str(&format!(
            "  - labels: [\"gpu-{i}-*\"]\n    reviewed_repositories: [\"org{i}/ml\"]\n"
        ));
    }
    yaml.push_str(
        "limits:\n  max_timeout_minutes: 120\n  max_vcpus: 16\n  max_memory_mib: 65536\n",
    );
    yaml.push_str("orgs:\n");
    for org in 1..=4 {
        yaml.push_str(&format!(
            "  {org}:\n    forbidden_labels: [{}]\n    limits:\n      max_vcpus: 32\n",
            list(&|i| format!("\"org{org}-blocked-{i}\""))
        ));
    }
    yaml
}

fn jobs() -> Vec<JobFacts> {
    (0..64)
        .map(|n| JobFacts {
            org_id: (n % 6) as i64,
            repository: format!("org{}/app-{n}", n % 30),
            workflow_name: Some(if n % 9 == 0 {
                format!("deploy-{}-prod", n % 20)
            } else {
                "CI".into()
            }),
            job_name: Some(format!("build-{n}")),
            labels: vec![
                "self-hosted".into(),
                "nimbus".into(),
                format!("vcpus:{}", 2 + n % 20),
                if n % 7 == 0 {
                    format!("forbidden-{}-x", n % 25)
                } else {
                    format!("param:n={n}")
                },
                if n % 11 == 0 {
                    format!("gpu-{}-a100", n % 25)
                } else {
                    "linux".into()
                },
            ],
            timeout_minutes: 30 + (n as u32 % 5) * 30,
        })
        .collect()
}

pub fn run(args: Args) -> Result<()> {
    let policy = Policy::from_yaml(&generate(args.rules))?;
    let jobs = jobs();
    let mut denied = 0usize;
    // Warm up, then time on this thread alone (one core).
    for job in &jobs {
        std::hint::black_box(policy.evaluate(job));
    }
    let started = Instant::now();
    for n in 0..args.evaluations {
        let decision = policy.evaluate(&jobs[n % jobs.len()]);
        denied += usize::from(!decision.allowed);
        std::hint::black_box(decision);
    }
    let elapsed = started.elapsed();
    let report = Report {
        rules: policy.rule_count(),
        evaluations: args.evaluations,
        evaluations_per_second: args.evaluations as f64 / elapsed.as_secs_f64(),
        denied_share: denied as f64 / args.evaluations as f64,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("rules  evaluations/s  denied");
        println!(
            "{:>5}  {:>13.0}  {:>5.1}%",
            report.rules,
            report.evaluations_per_second,
            report.denied_share * 100.0
        );
    }
    Ok(())
}
