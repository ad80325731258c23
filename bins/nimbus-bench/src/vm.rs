//! VM start-up cost per driver: from the boot call to the guest's first log line,
//! and a whole job round trip (prepare, boot, run `true`, destroy). Median of N.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nimbus_core::Env;
use nimbus_vmm::launch;
use nimbus_vmm::protocol::GuestJob;
use nimbus_vmm::select::VmmConfig;
use nimbus_vmm::spec::NetworkSpec;
use nimbus_vmm::{DriverKind, JobEvent, Outcome, VmmDriver};
use serde::Serialize;

use crate::stats::{ms, percentile, sorted};

#[derive(clap::Args)]
pub struct Args {
    /// Runs per measurement and driver.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Drivers to measure (default: every one available here, QEMU even under TCG).
    #[arg(long, value_delimiter = ',')]
    drivers: Vec<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct DriverReport {
    driver: String,
    detail: String,
    runs: usize,
    first_line_median_ms: f64,
    first_line_min_ms: f64,
    first_line_max_ms: f64,
    round_trip_median_ms: f64,
    round_trip_min_ms: f64,
    round_trip_max_ms: f64,
}

#[derive(Serialize)]
struct Report {
    drivers: Vec<DriverReport>,
    unavailable: Vec<(String, String)>,
}

pub async fn run(args: Args) -> Result<()> {
    let env = Env::from_process()?;
    let mut config = VmmConfig::from_env(&env)?;
    // Start-up cost only: no network set-up, a small scratch disk.
    config.network = NetworkSpec::None;
    config.vcpus = 1;
    config.memory_mib = 512;
    config.scratch_disk_mib = 256;
    let kinds: Vec<DriverKind> = if args.drivers.is_empty() {
        DriverKind::ALL.to_vec()
    } else {
        args.drivers
            .iter()
            .map(|name| match name.as_str() {
                "firecracker" => Ok(DriverKind::Firecracker),
                "qemu" => Ok(DriverKind::Qemu),
                "sandbox" => Ok(DriverKind::Sandbox),
                other => bail!("unknown driver {other}"),
            })
            .collect::<Result<_>>()?
    };
    let mut report = Report {
        drivers: Vec::new(),
        unavailable: Vec::new(),
    };
    for kind in kinds {
        let driver = config.driver(kind);
        let probe = driver.probe().await;
        if !probe.available {
            report.unavailable.push((kind.to_string(), probe.reason));
            continue;
        }
        let assets = launch::verified_assets(&config, kind)
            .await
            .with_context(|| format!("assets for {kind}"))?;
        let spec = |label: &str| {
            launch::spec(
                &config,
                &assets,
                launch::unique_id(label),
                Duration::from_secs(60),
            )
        };
        let mut first_lines = Vec::new();
        let mut round_trips = Vec::new();
        // One unmeasured run warms the page cache and the scratch template.
        one_job(&driver, &spec("bench-warm"), "true").await?;
        for _ in 0..args.runs {
            let first_line = first_line_after(&driver, &spec("bench-line")).await?;
            first_lines.push(ms(first_line));
            let started = Instant::now();
            one_job(&driver, &spec("bench-true"), "true").await?;
            round_trips.push(ms(started.elapsed()));
        }
        let first_lines = sorted(first_lines);
        let round_trips = sorted(round_trips);
        report.drivers.push(DriverReport {
            driver: kind.to_string(),
            detail: probe.reason,
            runs: args.runs,
            first_line_median_ms: percentile(&first_lines, 0.5),
            first_line_min_ms: percentile(&first_lines, 0.0),
            first_line_max_ms: percentile(&first_lines, 1.0),
            round_trip_median_ms: percentile(&round_trips, 0.5),
            round_trip_min_ms: percentile(&round_trips, 0.0),
            round_trip_max_ms: percentile(&round_trips, 1.0),
        });
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("| driver | first line (median, min–max) | round trip `true` (median, min–max) |");
        println!("|---|---:|---:|");
        for d in &report.drivers {
            println!(
                "| {} | {:.0} ms ({:.0}–{:.0}) | {:.0} ms ({:.0}–{:.0}) |",
                d.driver,
                d.first_line_median_ms,
                d.first_line_min_ms,
                d.first_line_max_ms,
                d.round_trip_median_ms,
                d.round_trip_min_ms,
                d.round_trip_max_ms
            );
        }
        for (driver, reason) in &report.unavailable {
            println!("{driver}: not measured ({reason})");
        }
    }
    Ok(())
}

async fn one_job(
    driver: &Arc<dyn VmmDriver>,
    spec: &nimbus_vmm::VmSpec,
    command: &str,
) -> Result<()> {
    let (_, report) = launch::run_once(
        driver,
        spec,
        &GuestJob::from_commands(&[command]),
        &mut |_| {},
        &mut |_| {},
    )
    .await?;
    if report.outcome != (Outcome::Exited { code: 0 }) {
        bail!("`{command}` ended {:?}", report.outcome);
    }
    Ok(())
}

/// From the boot call to the first output line of an `echo` job.
async fn first_line_after(
    driver: &Arc<dyn VmmDriver>,
    spec: &nimbus_vmm::VmSpec,
) -> Result<Duration> {
    let mut vm = driver.prepare(spec).await?;
    let booted = Instant::now();
    let mut first = None;
    let result = async {
        vm.boot().await?;
        let mut on_event = |event: JobEvent| {
            if matches!(event, JobEvent::Output(_)) && first.is_none() {
                first = Some(booted.elapsed());
            }
        };
        vm.run(
            &GuestJob::from_commands(&["echo first line"]),
            &mut on_event,
        )
        .await
    }
    .await;
    vm.destroy().await?;
    result?;
    first.context("the guest printed nothing")
}
