//! `nimbus-logging-pipeline`: job logs and metadata into SQLite or ClickHouse
//! (default 0.0.0.0:8002). See nimbus_logs::pipeline for the API.

use std::process::ExitCode;

use nimbus_core::service;
use nimbus_logs::pipeline::{self, PipelineConfig};

fn main() -> ExitCode {
    service::main(
        "nimbus-logging-pipeline",
        "NIMBUS_LOGGING_PIPELINE_ADDR",
        PipelineConfig::from_env,
        pipeline::run,
    )
}
