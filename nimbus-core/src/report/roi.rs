//! `nimbus roi`: hosted runner minutes priced beside your own hosts
//! ([`crate::roi`] computes; this reads the command line, the job history and
//! prints). docs/roi-calculator.md is the guide.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::Args;
use time::OffsetDateTime;

use super::{Connection, ReportError, Result, Table};
use crate::control_plane::ControlPlaneApi;
use crate::domain::Job;
use crate::roi::{cores_of, estimate, Estimate, Hosts, PriceList, Workload, MONTH_MINUTES};
use crate::store::JobFilter;

/// Jobs read from the history at most (newest first).
const MAX_HISTORY_JOBS: usize = 200_000;

/// `nimbus roi`.
#[derive(Debug, Clone, Args)]
pub struct RoiArgs {
    /// Where the control plane is and who asks (for the job history).
    #[command(flatten)]
    pub connection: Connection,
    /// Monthly job minutes of a runner size, e.g. `--minutes linux-2-core=40000`
    /// (repeatable). Without it, the minutes come from the control plane's job
    /// history (`--base-url`, `--token`).
    #[arg(long = "minutes", value_name = "SIZE=MINUTES")]
    pub minutes: Vec<String>,
    /// Days of job history to read (scaled to a 30-day month).
    #[arg(long, default_value_t = 30)]
    pub days: u32,
    /// The size of jobs whose labels name no core count.
    #[arg(long, default_value = "linux-2-core")]
    pub default_size: String,
    /// Monthly cost of one host (amortised hardware, power and rack, or the cloud bill).
    #[arg(long, default_value_t = 250.0)]
    pub host_cost: f64,
    /// Cores of one host.
    #[arg(long, default_value_t = 32)]
    pub host_cores: u32,
    /// The share of the hosts' core-minutes jobs may use (headroom for peaks).
    #[arg(long, default_value_t = 0.6)]
    pub utilisation: f64,
    /// Fixed monthly cost besides the hosts (service machines, people's time).
    #[arg(long, default_value_t = 0.0)]
    pub overhead: f64,
    /// A price list in the shipped JSON form (data/github-hosted-prices.json) to
    /// use instead of GitHub's published rates.
    #[arg(long, value_name = "FILE")]
    pub prices: Option<PathBuf>,
}

/// What the history says besides minutes: the agents seen and how busy they were.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Measured {
    /// Finished jobs counted.
    pub jobs: u64,
    /// Days of history read.
    pub days: u32,
    /// Distinct agents that ran the jobs.
    pub agents: usize,
    /// Core-minutes of the jobs over the agents' core-minutes (`--host-cores` each).
    pub utilisation: Option<f64>,
}

fn parse_minutes(values: &[String]) -> Result<Workload> {
    let mut workload = Workload::default();
    for value in values {
        let (size, minutes) = value.split_once('=').ok_or_else(|| {
            ReportError(format!(
                "--minutes {value:?}: expected SIZE=MINUTES, e.g. linux-4-core=20000"
            ))
        })?;
        let minutes: f64 = minutes
            .trim()
            .parse()
            .ok()
            .filter(|m: &f64| m.is_finite() && *m >= 0.0)
            .ok_or_else(|| {
                ReportError(format!(
                    "--minutes {value:?}: minutes must be a number of 0 or more"
                ))
            })?;
        *workload.minutes.entry(size.trim().to_string()).or_default() += minutes;
    }
    Ok(workload)
}

/// The jobs of the last `days` that ran and finished, newest first, through the API.
pub async fn history(
    api: &dyn ControlPlaneApi,
    days: u32,
    now: OffsetDateTime,
) -> Result<Vec<Job>> {
    let since = now - time::Duration::days(i64::from(days));
    let mut jobs = Vec::new();
    let mut cursor = None;
    loop {
        let page = api
            .jobs(JobFilter {
                limit: 500,
                cursor,
                ..JobFilter::default()
            })
            .await
            .map_err(|e| ReportError(format!("reading the job history: {e}")))?;
        let mut older = false;
        for job in page.jobs {
            if job.created_at < since {
                older = true;
                continue;
            }
            if job.created_at > now {
                continue;
            }
            // Ran and finished: what a hosted runner would have billed.
            if job.started_at.is_some() && job.finished_at.is_some() {
                jobs.push(job);
            }
        }
        match page.next_cursor {
            Some(next) if !older && jobs.len() < MAX_HISTORY_JOBS => {
                cursor = Some(next.parse().map_err(|_| {
                    ReportError(format!("a page cursor {next:?} that is no job id"))
                })?);
            }
            _ => break,
        }
    }
    Ok(jobs)
}

/// The estimate of `args` over `jobs` (the history) or its `--minutes`.
pub fn compute(
    args: &RoiArgs,
    jobs: Option<&[Job]>,
) -> Result<(Estimate, Option<Measured>, PriceList)> {
    let prices = match &args.prices {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ReportError(format!("reading {}: {e}", path.display())))?;
            PriceList::parse(&text).map_err(|e| ReportError(format!("{}: {e}", path.display())))?
        }
        None => PriceList::github().map_err(|e| ReportError(e.to_string()))?,
    };
    let (workload, measured) = match jobs {
        Some(jobs) => {
            let days = f64::from(args.days.max(1));
            let workload = Workload::from_jobs(jobs, days, &args.default_size);
            let agents: BTreeSet<&str> =
                jobs.iter().filter_map(|j| j.agent_id.as_deref()).collect();
            let core_minutes: f64 = workload
                .minutes
                .iter()
                .map(|(size, minutes)| minutes * f64::from(cores_of(size).unwrap_or(2)))
                .sum();
            let capacity = agents.len() as f64 * f64::from(args.host_cores) * MONTH_MINUTES;
            let measured = Measured {
                jobs: workload.jobs,
                days: args.days,
                agents: agents.len(),
                utilisation: (capacity > 0.0).then(|| core_minutes / capacity),
            };
            (workload, Some(measured))
        }
        None => (parse_minutes(&args.minutes)?, None),
    };
    let hosts = Hosts {
        monthly_cost: args.host_cost,
        cores: args.host_cores,
        utilisation: args.utilisation,
        overhead: args.overhead,
    };
    let estimate = estimate(&workload, &prices, &hosts).map_err(|e| ReportError(e.to_string()))?;
    Ok((estimate, measured, prices))
}

fn money(value: f64) -> String {
    let rounded = value.round() as i64;
    let digits = rounded.abs().to_string();
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{}${grouped}", if rounded < 0 { "-" } else { "" })
}

fn count(value: f64) -> String {
    money(value)
        .trim_start_matches('-')
        .trim_start_matches('$')
        .to_string()
}

/// The table people read.
pub fn render(
    estimate: &Estimate,
    measured: Option<&Measured>,
    args: &RoiArgs,
    colour: bool,
) -> String {
    let mut text = String::new();
    if let Some(m) = measured {
        text.push_str(&format!(
            "From the job history: {} finished jobs in the last {} days, scaled to 30 days; {} agents ran them{}.\n\n",
            m.jobs,
            m.days,
            m.agents,
            m.utilisation
                .map(|u| format!(" at {:.0} % of {} cores each", u * 100.0, args.host_cores))
                .unwrap_or_default()
        ));
    }
    let mut table = Table::new(&[
        "runner size",
        "minutes/month",
        "hosted $/min",
        "hosted/month",
    ]);
    for line in &estimate.lines {
        table.row(vec![
            line.size.clone(),
            count(line.minutes),
            format!("{:.3}", line.price_per_minute),
            money(line.hosted_cost),
        ]);
    }
    table.row(vec![
        "total".into(),
        count(estimate.minutes),
        String::new(),
        money(estimate.hosted_cost),
    ]);
    text.push_str(&table.render(colour));
    text.push_str(&format!(
        "\nSelf-hosted: {} host{} of {} cores at {}/month each, run at {:.0} %{}: {}/month.\n",
        estimate.hosts_needed,
        if estimate.hosts_needed == 1 { "" } else { "s" },
        args.host_cores,
        money(args.host_cost),
        estimate.utilisation * 100.0,
        if args.overhead > 0.0 {
            format!(", plus {}/month overhead", money(args.overhead))
        } else {
            String::new()
        },
        money(estimate.self_hosted_cost),
    ));
    text.push_str(&format!(
        "Monthly {}: {} ({} a year).\n",
        if estimate.monthly_saving >= 0.0 {
            "saving"
        } else {
            "extra cost"
        },
        money(estimate.monthly_saving.abs()),
        money(estimate.monthly_saving.abs() * 12.0),
    ));
    if let Some(minutes) = estimate.break_even_minutes {
        text.push_str(&format!(
            "Break-even: {} job minutes a month at this size mix.\n",
            count(minutes)
        ));
    }
    text.push_str(&format!(
        "Hosted prices: {} (retrieved {}).\n",
        estimate.prices_source, estimate.prices_retrieved
    ));
    text
}

/// The JSON form (`--json`).
pub fn json(estimate: &Estimate, measured: Option<&Measured>) -> String {
    let mut value = serde_json::json!({"estimate": estimate});
    if let Some(measured) = measured {
        value["history"] = serde_json::json!(measured);
    }
    format!(
        "{}\n",
        serde_json::to_string_pretty(&value).unwrap_or_default()
    )
}

/// `nimbus roi`: 0, or 1 with one line on standard error.
pub fn run(args: RoiArgs) -> i32 {
    let outcome = (|| {
        let use_history = args.minutes.is_empty();
        let jobs = if use_history {
            let env = crate::config::Env::from_process().map_err(|e| ReportError(e.to_string()))?;
            let services = super::Services::resolve(&args.connection, &env)?;
            let client = services.control_plane()?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| ReportError(e.to_string()))?;
            Some(runtime.block_on(history(&client, args.days, OffsetDateTime::now_utc()))?)
        } else {
            None
        };
        let (estimate, measured, _) = compute(&args, jobs.as_deref())?;
        let colour = args.connection.output.is_none()
            && std::io::IsTerminal::is_terminal(&std::io::stdout());
        let text = if args.connection.json {
            json(&estimate, measured.as_ref())
        } else {
            render(&estimate, measured.as_ref(), &args, colour)
        };
        super::emit(args.connection.output.as_deref(), &text)
    })();
    match outcome {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("nimbus: {error}");
            1
        }
    }
}
