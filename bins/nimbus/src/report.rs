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
}

pub fn report(command: ReportCommand) -> Result<(), String> {
    match command {
        ReportCommand::Logs { json } => logs(json),
    }
}

fn logs(as_json: bool) -> Result<(), String> {
    let env = Env::from_process().map_err(|e| e.to_string())?;
    let url = env
        .get("NIMBUS_LOGS_URL")
        .unwrap_or("http://127.0.0.1:8002")
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
    let stats: Value = runtime.block_on(async {
        let response = reqwest::Client::new()
            .get(format!("{url}/api/stats"))
            .bearer_auth(&token)
            .send()
            .await
            .map_err(|e| format!("reaching the logging pipeline at {url}: {e}"))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| format!("reading {url}/api/stats: {e}"))?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!(
                "{url}/api/stats answered {status}: {}",
                body["error"].as_str().unwrap_or("")
            ))
        }
    })?;
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&stats).map_err(|e| e.to_string())?
        );
        return Ok(());
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
