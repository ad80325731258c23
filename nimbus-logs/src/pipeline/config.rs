//! Configuration of the logging pipeline, from `NIMBUS_*` variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use nimbus_core::config::{jwt_secret, Secret};
use nimbus_core::Env;

use crate::sink::clickhouse::ClickHouseConfig;

/// The variables the logging pipeline reads (a section of docs/configuration.md).
pub const SETTINGS: nimbus_core::config::Settings = nimbus_core::config::Settings {
    service: "Logging pipeline (nimbus-logging-pipeline)",
    variables: &[
        nimbus_core::config::VarDoc { name: "NIMBUS_LOGGING_PIPELINE_ADDR", default: "0.0.0.0:8002", meaning: "Listen address of `nimbus-logging-pipeline` (also `--listen`)." },
        nimbus_core::config::VarDoc { name: "NIMBUS_LOGGING_PIPELINE_METRICS_TOKEN", default: "(none)", meaning: "Bearer token for the pipeline's `/metrics` from non-loopback peers; unset means loopback only." },
        nimbus_core::config::VarDoc { name: "NIMBUS_LOGS_BACKEND", default: "sqlite", meaning: "Where job logs go: `sqlite` (`$NIMBUS_DATA_DIR/logs.db`) or `clickhouse`." },
        nimbus_core::config::VarDoc { name: "NIMBUS_CLICKHOUSE_URL", default: "http://127.0.0.1:8123", meaning: "ClickHouse HTTP interface of the `clickhouse` log backend." },
        nimbus_core::config::VarDoc { name: "NIMBUS_CLICKHOUSE_USER", default: "(server default)", meaning: "ClickHouse user." },
        nimbus_core::config::VarDoc { name: "NIMBUS_CLICKHOUSE_PASSWORD", default: "(none)", meaning: "ClickHouse password." },
        nimbus_core::config::VarDoc { name: "NIMBUS_CLICKHOUSE_DATABASE", default: "nimbus", meaning: "ClickHouse database of `ci_logs` and `job_metadata` (created if missing; docs/CLICKHOUSE_SCHEMA.md)." },
        nimbus_core::config::VarDoc { name: "NIMBUS_LOG_RETENTION_DAYS", default: "30", meaning: "Job log lines older than this are pruned (ClickHouse table TTL; hourly delete on SQLite)." },
        nimbus_core::config::VarDoc { name: "NIMBUS_METADATA_RETENTION_DAYS", default: "90", meaning: "Job metadata rows older than this are pruned by the logging pipeline." },
        nimbus_core::config::VarDoc { name: "NIMBUS_LOGS_MAX_BUFFERED_LINES", default: "500000", meaning: "Lines the pipeline holds before they are durable; beyond it `POST /api/logs` answers 503 with Retry-After." },
        nimbus_core::config::VarDoc { name: "NIMBUS_LOGS_MAX_FOLLOWS", default: "1024", meaning: "Live follows (`GET /api/logs/{job}/follow`) open at once, all callers together; more answer 429." },
        nimbus_core::config::VarDoc { name: "NIMBUS_LOGS_MAX_FOLLOWS_PER_ORG", default: "32", meaning: "Live follows one org (or the admins together) may have open at once; more answer 429." },
        nimbus_core::config::VarDoc { name: "NIMBUS_LOGS_FOLLOW_IDLE_SECONDS", default: "600", meaning: "A follow that saw no new line for this long ends with an `end` event (resume with `Last-Event-ID`)." },
        nimbus_core::config::VarDoc { name: "NIMBUS_LOGS_FOLLOW_MAX_SECONDS", default: "21600", meaning: "No follow lasts longer; it ends with an `end` event." },
        nimbus_core::config::VarDoc { name: "NIMBUS_LOGS_FLUSH_INTERVAL", default: "0.001", meaning: "Seconds the pipeline waits for more lines before writing a batch (batches also flush at 50,000 lines); lines arriving during a write are batched anyway." },
    ],
};

/// Where the pipeline stores lines and metadata (`NIMBUS_LOGS_BACKEND`).
#[derive(Debug, Clone)]
pub enum Backend {
    /// The embedded SQLite sink (the default outside production).
    Sqlite {
        /// The database file, `$NIMBUS_DATA_DIR/logs.db`.
        path: PathBuf,
    },
    /// A ClickHouse server.
    ClickHouse(ClickHouseConfig),
}

/// Everything the logging pipeline service needs, read by [`PipelineConfig::from_env`].
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// The TLS-terminating proxies in front (NIMBUS_TRUSTED_PROXIES).
    pub trusted_proxies: nimbus_core::forwarded::TrustedProxies,
    /// Listen address (`NIMBUS_LOGGING_PIPELINE_ADDR`, default `0.0.0.0:8002`).
    pub listen: SocketAddr,
    /// Where lines and metadata are stored.
    pub backend: Backend,
    /// Verifies callers' tokens (`NIMBUS_JWT_SECRET`, shared with the control plane).
    pub jwt_secret: Secret,
    /// Bearer token for `/metrics` from non-loopback peers; `None`: loopback only.
    pub metrics_token: Option<Secret>,
    /// Days log lines are kept (`NIMBUS_LOG_RETENTION_DAYS`, default 30, at least 1).
    pub log_retention_days: u32,
    /// Days metadata rows are kept (`NIMBUS_METADATA_RETENTION_DAYS`, default 90, at
    /// least 1).
    pub metadata_retention_days: u32,
    /// Lines buffered (received, not yet durable) before ingest answers 503.
    pub max_buffered_lines: usize,
    /// A flush writes at most this many lines...
    pub flush_lines: usize,
    /// ...and waits at most this long for more before writing what it has.
    pub flush_interval: Duration,
    /// Bounds on live follows (SSE streams).
    pub follow: FollowLimits,
}

/// What live follows (`GET /api/logs/{job}/follow`) may hold: each is a connection
/// and a polling task, so their number and life are bounded.
#[derive(Debug, Clone, Copy)]
pub struct FollowLimits {
    /// Follows open at once, all callers together (`NIMBUS_LOGS_MAX_FOLLOWS`).
    pub max_total: usize,
    /// Follows one org (or one admin) may have open (`NIMBUS_LOGS_MAX_FOLLOWS_PER_ORG`).
    pub max_per_org: usize,
    /// A follow that saw no new line for this long ends (`NIMBUS_LOGS_FOLLOW_IDLE_SECONDS`);
    /// the client resumes with `Last-Event-ID`.
    pub idle: Duration,
    /// No follow lasts longer (`NIMBUS_LOGS_FOLLOW_MAX_SECONDS`).
    pub max_duration: Duration,
}

impl Default for FollowLimits {
    fn default() -> Self {
        FollowLimits {
            max_total: 1024,
            max_per_org: 32,
            idle: Duration::from_secs(600),
            max_duration: Duration::from_secs(6 * 3600),
        }
    }
}

fn config_error(variable: &str, message: impl Into<String>) -> nimbus_core::Error {
    nimbus_core::Error::Config {
        variable: variable.into(),
        message: message.into(),
    }
}

impl PipelineConfig {
    /// Reads the `NIMBUS_*` variables listed in [`SETTINGS`], with their defaults.
    /// In production mode the log store, the ClickHouse URL and the trusted proxies
    /// must be set explicitly.
    pub fn from_env(env: &Env) -> nimbus_core::Result<Self> {
        let data_dir = env.data_dir();
        let listen = env.parse_or(
            "NIMBUS_LOGGING_PIPELINE_ADDR",
            SocketAddr::from(([0, 0, 0, 0], 8002)),
        )?;
        let log_retention_days: u32 = env.parse_or("NIMBUS_LOG_RETENTION_DAYS", 30)?;
        let metadata_retention_days: u32 = env.parse_or("NIMBUS_METADATA_RETENTION_DAYS", 90)?;
        for (name, days) in [
            ("NIMBUS_LOG_RETENTION_DAYS", log_retention_days),
            ("NIMBUS_METADATA_RETENTION_DAYS", metadata_retention_days),
        ] {
            if days == 0 {
                return Err(config_error(name, "must be at least 1 day"));
            }
        }
        let backend_name = nimbus_core::config::explicit(
            env,
            "NIMBUS_LOGS_BACKEND",
            "sqlite or clickhouse: no log store is chosen for production",
        )?
        .unwrap_or("sqlite");
        let backend = match backend_name {
            "sqlite" => Backend::Sqlite {
                path: data_dir.join("logs.db"),
            },
            "clickhouse" => Backend::ClickHouse(ClickHouseConfig {
                url: nimbus_core::config::explicit(
                    env,
                    "NIMBUS_CLICKHOUSE_URL",
                    "the ClickHouse HTTP interface; no localhost default in production",
                )?
                .unwrap_or("http://127.0.0.1:8123")
                .to_string(),
                user: env.get("NIMBUS_CLICKHOUSE_USER").map(str::to_string),
                password: env.secret("NIMBUS_CLICKHOUSE_PASSWORD"),
                database: env
                    .get("NIMBUS_CLICKHOUSE_DATABASE")
                    .unwrap_or("nimbus")
                    .to_string(),
                log_retention_days,
                metadata_retention_days,
            }),
            other => {
                return Err(config_error(
                    "NIMBUS_LOGS_BACKEND",
                    format!("invalid value {other:?}: expected sqlite or clickhouse"),
                ))
            }
        };
        let max_buffered_lines: usize = env.parse_or("NIMBUS_LOGS_MAX_BUFFERED_LINES", 500_000)?;
        if max_buffered_lines < 1000 {
            return Err(config_error(
                "NIMBUS_LOGS_MAX_BUFFERED_LINES",
                "must be at least 1000",
            ));
        }
        Ok(PipelineConfig {
            listen,
            backend,
            jwt_secret: jwt_secret(env, &data_dir)?,
            trusted_proxies: nimbus_core::config::trusted_proxies(env)?,
            metrics_token: env.secret("NIMBUS_LOGGING_PIPELINE_METRICS_TOKEN"),
            log_retention_days,
            metadata_retention_days,
            max_buffered_lines,
            flush_lines: 50_000.min(max_buffered_lines),
            flush_interval: env
                .seconds_or("NIMBUS_LOGS_FLUSH_INTERVAL", Duration::from_millis(1))?,
            follow: {
                let defaults = FollowLimits::default();
                FollowLimits {
                    max_total: env.parse_or("NIMBUS_LOGS_MAX_FOLLOWS", defaults.max_total)?,
                    max_per_org: env
                        .parse_or("NIMBUS_LOGS_MAX_FOLLOWS_PER_ORG", defaults.max_per_org)?,
                    idle: env.seconds_or("NIMBUS_LOGS_FOLLOW_IDLE_SECONDS", defaults.idle)?,
                    max_duration: env
                        .seconds_or("NIMBUS_LOGS_FOLLOW_MAX_SECONDS", defaults.max_duration)?,
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_core::Env;

    #[test]
    fn production_needs_an_explicit_log_store_and_proxy() {
        let complete = [
            ("NIMBUS_MODE", "production"),
            (
                "NIMBUS_JWT_SECRET",
                "production-jwt-secret-0123456789abcdef",
            ),
            ("NIMBUS_LOGS_BACKEND", "clickhouse"),
            ("NIMBUS_CLICKHOUSE_URL", "http://clickhouse.internal:8123"),
            ("NIMBUS_TRUSTED_PROXIES", "10.0.0.7"),
        ];
        assert!(PipelineConfig::from_env(&Env::from_map(complete)).is_ok());
        for missing in [
            "NIMBUS_LOGS_BACKEND",
            "NIMBUS_CLICKHOUSE_URL",
            "NIMBUS_TRUSTED_PROXIES",
        ] {
            let env = Env::from_map(complete.into_iter().filter(|(name, _)| *name != missing));
            let error = PipelineConfig::from_env(&env).expect_err("refused");
            assert!(error.to_string().contains(missing), "{missing}: {error}");
        }
    }
}
