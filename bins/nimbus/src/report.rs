//! `nimbus report …`: read-only summaries from the services.

use clap::Subcommand;
use nimbus_core::Env;
use serde_json::Value;

#[derive(Subcommand)]
pub enum ReportCommand {
    /// Log lines and bytes stored by the logging pipeline, per level and org.
    Logs {
        /// Print the pipeline's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Cache usage per org: bytes, entries, hits, misses, hit rate, evictions.
    Cache {
        /// Print the proxy's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub fn report(command: ReportCommand) -> Result<(), String> {
    match command {
        ReportCommand::Logs { json } => logs(json),
        ReportCommand::Cache { json } => cache(json),
    }
}

/// GETs `path` from the service at `$url_var` (default `default_url`) with the
/// services token, and returns the JSON answer.
fn fetch(url_var: &str, default_url: &str, path: &str, service: &str) -> Result<Value, String> {
    let env = Env::from_process().map_err(|e| e.to_string())?;
    let url = env
        .get(url_var)
        .unwrap_or(default_url)
        .trim_end_matches('/')
        .to_string();
    let token = env
        .get("NIMBUS_CONTROL_PLANE_TOKEN")
        .ok_or(
            "NIMBUS_CONTROL_PLANE_TOKEN is not set (a token for the services: nimbus token mint)",
        )?
        .to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let response = reqwest::Client::new()
            .get(format!("{url}{path}"))
            .bearer_auth(&token)
            .send()
            .await
            .map_err(|e| format!("reaching the {service} at {url}: {e}"))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| format!("reading {url}{path}: {e}"))?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!(
                "{url}{path} answered {status}: {}",
                body["error"].as_str().unwrap_or("")
            ))
        }
    })
}

fn print_json(value: &Value) -> Result<(), String> {
    println!(
        "{}",
        serde_json::to_string_pretty(value).map_err(|e| e.to_string())?
    );
    Ok(())
}

/// `nimbus report cache`: the cache proxy's usage per org.
fn cache(as_json: bool) -> Result<(), String> {
    let usage = fetch(
        "NIMBUS_CACHE_URL",
        "http://127.0.0.1:8001",
        "/api/usage",
        "cache proxy",
    )?;
    if as_json {
        return print_json(&usage);
    }
    let number = |v: &Value| v.as_u64().unwrap_or(0);
    println!(
        "{:>8} {:>14} {:>9} {:>9} {:>9} {:>10} {:>9}",
        "org", "bytes", "entries", "hits", "misses", "hit rate", "evicted"
    );
    for org in usage["orgs"].as_array().into_iter().flatten() {
        let (hits, misses) = (number(&org["hits"]), number(&org["misses"]));
        let rate = if hits + misses == 0 {
            "-".to_string()
        } else {
            format!("{:.1} %", 100.0 * hits as f64 / (hits + misses) as f64)
        };
        println!(
            "{:>8} {:>14} {:>9} {:>9} {:>9} {:>10} {:>9}",
            number(&org["org_id"]),
            number(&org["bytes"]),
            number(&org["entries"]),
            hits,
            misses,
            rate,
            number(&org["evictions"]),
        );
    }
    Ok(())
}

fn logs(as_json: bool) -> Result<(), String> {
    let stats = fetch(
        "NIMBUS_LOGS_URL",
        "http://127.0.0.1:8002",
        "/api/stats",
        "logging pipeline",
    )?;
    if as_json {
        return print_json(&stats);
    }
    let number = |v: &Value| v.as_u64().unwrap_or(0);
    println!(
        "{} lines, {} bytes in {} (last ingest {}; {} lines buffered)",
        number(&stats["lines"]),
        number(&stats["bytes"]),
        stats["backend"].as_str().unwrap_or("?"),
        stats["last_ingest"].as_str().unwrap_or("never"),
        number(&stats["buffered_lines"]),
    );
    for (title, key) in [("level", "per_level"), ("org", "per_org")] {
        if let Some(map) = stats[key].as_object() {
            println!("\n{title:<10} {:>12}", "lines");
            for (name, lines) in map {
                println!("{name:<10} {:>12}", number(lines));
            }
        }
    }
    Ok(())
}
