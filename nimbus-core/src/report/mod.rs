//! `nimbus report …` and `nimbus jobs list`: the fleet's figures as aligned
//! tables for people or as the services' JSON (`--json`, stable: it is the API's
//! answer). One implementation for the `nimbus` binary and the Python entry
//! points (`python -m nimbus.cli.report`, `python -m nimbus.cli.jobs`), which call
//! [`main`] with their command line. docs/reporting.md shows every command.
//!
//! The reports read the control plane through [`ControlPlaneApi`] (so a test or
//! an embedder can hand in an in-process session), the cache proxy's
//! `/api/usage` and the logging pipeline's `/api/stats` and `/api/logs`.

pub mod roi;
mod table;
mod views;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;
use time::OffsetDateTime;

use crate::analytics::parse_time_bound;
use crate::auth::{JwtKeys, Role};
use crate::client::ControlPlaneClient;
use crate::config::{Env, Secret};
use crate::control_plane::{ControlPlaneApi, HistogramQuery, OrgsQuery, SummaryQuery, TrendQuery};
use crate::domain::{JobStatus, OrgId};
use crate::error::{Error, ErrorKind};
use crate::store::JobFilter;

pub use table::{duration, Table, Tone};

/// Lifetime of an admin token minted from a JWT secret passed as `--token`.
const MINTED_TOKEN_TTL: Duration = Duration::from_secs(300);

/// Where the services are and who asks; every flag also comes from the
/// environment (or `.env`).
#[derive(Debug, Clone, Default, Args)]
pub struct Connection {
    /// The control plane [env: NIMBUS_BASE_URL, then NIMBUS_CONTROL_PLANE_URL; default http://127.0.0.1:8000].
    #[arg(long, global = true)]
    pub base_url: Option<String>,
    /// A token (`nimbus token mint`) [env: NIMBUS_TOKEN, then NIMBUS_CONTROL_PLANE_TOKEN]. Given
    /// NIMBUS_JWT_SECRET instead, a 5-minute admin token is minted from it (with a warning).
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// The cache proxy [env: NIMBUS_CACHE_URL; default http://127.0.0.1:8001].
    #[arg(long, global = true)]
    pub cache_url: Option<String>,
    /// The logging pipeline [env: NIMBUS_LOGS_URL; default http://127.0.0.1:8002].
    #[arg(long, global = true)]
    pub logs_url: Option<String>,
    /// Print the services' JSON (stable machine output) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Write the output to this file instead of standard output.
    #[arg(long, global = true, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// `nimbus report …`.
#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// Where the services are and who asks.
    #[command(flatten)]
    pub connection: Connection,
    /// Which report.
    #[command(subcommand)]
    pub command: ReportCommand,
}

/// The reports of `nimbus report`.
#[derive(Debug, Clone, Subcommand)]
pub enum ReportCommand {
    /// Per org: jobs by status, success rate, queue wait and run time (p50/p95),
    /// active leases, rate-limit hits; with --metadata-key, that key's values.
    Orgs {
        /// Also break each org's jobs down by this metadata key's values.
        #[arg(long)]
        metadata_key: Option<String>,
        /// RFC 3339 time, date (2026-11-30) or age (7d, 24h).
        #[arg(long)]
        since: Option<String>,
        /// End of the window (exclusive): RFC 3339 time, date or age.
        #[arg(long)]
        until: Option<String>,
        /// Only this org (admin tokens).
        #[arg(long)]
        org_id: Option<OrgId>,
    },
    /// Jobs by status and their top metadata tags (of all jobs, or those with
    /// --metadata-key[=--metadata-value]), then the most recent jobs (filtered by
    /// --job-metadata-key/--job-metadata-value, or one job with --job-id).
    Jobs {
        /// Summarise only jobs with this metadata key.
        #[arg(long)]
        metadata_key: Option<String>,
        /// Summarise only jobs whose --metadata-key has this value.
        #[arg(long, requires = "metadata_key")]
        metadata_value: Option<String>,
        /// List only recent jobs with this metadata key.
        #[arg(long)]
        job_metadata_key: Option<String>,
        /// List only recent jobs whose --job-metadata-key has this value.
        #[arg(long, requires = "job_metadata_key")]
        job_metadata_value: Option<String>,
        /// Show this one job instead.
        #[arg(long)]
        job_id: Option<i64>,
        /// Only this org (admin tokens).
        #[arg(long)]
        org_id: Option<OrgId>,
        /// Recent jobs listed.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// A metadata key's values: jobs and success rate per value; per time bucket
    /// with --trend.
    Metadata {
        /// The metadata key.
        #[arg(long)]
        key: String,
        /// Per time bucket instead of over the whole window.
        #[arg(long)]
        trend: bool,
        /// Trend bucket length.
        #[arg(long, default_value_t = 24)]
        bucket_hours: u32,
        /// Start of the window: RFC 3339 time, date (2026-11-30) or age (7d, 24h).
        #[arg(long)]
        since: Option<String>,
        /// End of the window (exclusive): RFC 3339 time, date or age.
        #[arg(long)]
        until: Option<String>,
        /// Only this org (admin tokens).
        #[arg(long)]
        org_id: Option<OrgId>,
    },
    /// The keys of NIMBUS_METADATA_DEFAULT_KEYS, per org and value (kept warm
    /// by the control plane).
    MetadataPresets,
    /// Cache usage per org: bytes, entries, hits, misses, hit rate, evictions.
    Cache,
    /// Log lines stored by the logging pipeline per level and org, or one job's
    /// lines with --job-id.
    Logs {
        /// Show this job's log lines instead.
        #[arg(long)]
        job_id: Option<i64>,
        /// Lines shown with --job-id.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// The orgs report, cache usage and log volume together.
    Overview {
        /// Start of the window: RFC 3339 time, date (2026-11-30) or age (7d, 24h).
        #[arg(long)]
        since: Option<String>,
        /// End of the window (exclusive): RFC 3339 time, date or age.
        #[arg(long)]
        until: Option<String>,
    },
}

/// `nimbus jobs …`.
#[derive(Debug, Clone, Args)]
pub struct JobsArgs {
    /// Where the services are and who asks.
    #[command(flatten)]
    pub connection: Connection,
    /// Which jobs command.
    #[command(subcommand)]
    pub command: JobsCommand,
}

/// The commands of `nimbus jobs`.
#[derive(Debug, Clone, Subcommand)]
pub enum JobsCommand {
    /// The most recent jobs the token may see, newest first.
    List {
        /// Add each job's metadata (`param:`/`meta:` labels and submitted metadata).
        #[arg(long)]
        with_metadata: bool,
        /// Only jobs with this status.
        #[arg(long)]
        status: Option<JobStatus>,
        /// Only this org (admin tokens).
        #[arg(long)]
        org_id: Option<OrgId>,
        /// Only jobs with this metadata key.
        #[arg(long)]
        metadata_key: Option<String>,
        /// Only jobs whose --metadata-key has this value.
        #[arg(long, requires = "metadata_key")]
        metadata_value: Option<String>,
        /// Most jobs listed (1 to 500).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

/// What went wrong, as one line for the person at the terminal.
#[derive(Debug)]
pub struct ReportError(pub String);

impl std::fmt::Display for ReportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ReportError {}

type Result<T> = std::result::Result<T, ReportError>;

/// Says what a service's error means for the person running the report.
fn explain(service: &str, url: &str, error: &Error) -> ReportError {
    let message = match error.kind() {
        ErrorKind::Unauthenticated => format!(
            "the {service} at {url} refused the token (401): {error}; \
             mint one with `nimbus token mint --role admin`"
        ),
        ErrorKind::Forbidden => {
            format!("the {service} at {url} does not allow this token: {error}")
        }
        _ if matches!(error, Error::Http(e) if e.is_connect() || e.is_timeout()) => {
            format!("cannot reach the {service} at {url}: is it running? ({error})")
        }
        _ => format!("the {service} at {url}: {error}"),
    };
    ReportError(message)
}

/// Where to reach each service, resolved from flags, then the environment.
#[derive(Debug, Clone)]
pub struct Services {
    /// The control plane's base URL.
    pub base_url: String,
    /// The cache proxy's base URL.
    pub cache_url: String,
    /// The logging pipeline's base URL.
    pub logs_url: String,
    /// The bearer token sent to every service.
    pub token: Option<Secret>,
    /// Print the services' JSON instead of tables.
    pub json: bool,
    /// Colour the tables (output to a terminal, NO_COLOR unset).
    pub colour: bool,
    /// Where the report goes (`--output`); standard output when `None`.
    pub output: Option<PathBuf>,
}

fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3 && !token.contains(char::is_whitespace)
}

impl Services {
    /// Resolves `connection` against the environment. A `--token` that is not a
    /// JWT is taken for NIMBUS_JWT_SECRET: a short-lived admin token is minted
    /// from it, with a warning on standard error.
    pub fn resolve(connection: &Connection, env: &Env) -> Result<Services> {
        let pick = |flag: &Option<String>, vars: &[&str], default: &str| {
            flag.clone()
                .or_else(|| vars.iter().find_map(|v| env.get(v).map(str::to_string)))
                .unwrap_or_else(|| default.to_string())
                .trim_end_matches('/')
                .to_string()
        };
        let token = connection.token.clone().or_else(|| {
            ["NIMBUS_TOKEN", "NIMBUS_CONTROL_PLANE_TOKEN"]
                .iter()
                .find_map(|v| env.get(v).map(str::to_string))
        });
        let token = match token {
            Some(token) if !looks_like_jwt(&token) => {
                if token.len() < 16 {
                    return Err(ReportError(
                        "--token is neither a token nor a JWT secret (secrets have at least 16 bytes)"
                            .into(),
                    ));
                }
                eprintln!(
                    "nimbus: warning: --token is not a token; taking it for NIMBUS_JWT_SECRET \
                     and using a {}-minute admin token minted from it",
                    MINTED_TOKEN_TTL.as_secs() / 60
                );
                let minted = JwtKeys::new(&Secret::new(token))
                    .mint("nimbus-report", Role::Admin, None, MINTED_TOKEN_TTL)
                    .map_err(|e| ReportError(format!("minting a token from the secret: {e}")))?;
                Some(Secret::new(minted))
            }
            token => token.map(Secret::new),
        };
        let colour = connection.output.is_none()
            && std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none();
        Ok(Services {
            base_url: pick(
                &connection.base_url,
                &["NIMBUS_BASE_URL", "NIMBUS_CONTROL_PLANE_URL"],
                "http://127.0.0.1:8000",
            ),
            cache_url: pick(
                &connection.cache_url,
                &["NIMBUS_CACHE_URL"],
                "http://127.0.0.1:8001",
            ),
            logs_url: pick(
                &connection.logs_url,
                &["NIMBUS_LOGS_URL"],
                "http://127.0.0.1:8002",
            ),
            token,
            json: connection.json,
            colour,
            output: connection.output.clone(),
        })
    }

    fn token(&self) -> Result<&str> {
        self.token.as_ref().map(Secret::expose).ok_or_else(|| {
            ReportError(
                "no token: pass --token or set NIMBUS_TOKEN (mint one with `nimbus token mint --role admin`)"
                    .into(),
            )
        })
    }

    /// The control plane over HTTP.
    pub fn control_plane(&self) -> Result<ControlPlaneClient> {
        ControlPlaneClient::new(&self.base_url, Some(Secret::new(self.token()?)))
            .map_err(|e| explain("control plane", &self.base_url, &e))
    }

    /// GETs JSON from the cache proxy or the logging pipeline.
    async fn get_json(
        &self,
        service: &str,
        base: &str,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Value> {
        let token = self.token()?;
        let response = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| ReportError(e.to_string()))?
            .get(format!("{base}{path}"))
            .query(query)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| explain(service, base, &Error::Http(e)))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let message = body["error"]
            .as_str()
            .unwrap_or("no error message")
            .to_string();
        let error = match status.as_u16() {
            401 => Error::Unauthenticated(message),
            403 => Error::Forbidden(message),
            _ => Error::Unavailable(format!("answered {status}: {message}")),
        };
        Err(explain(service, base, &error))
    }
}

fn time_bound(name: &str, raw: &Option<String>) -> Result<Option<OffsetDateTime>> {
    raw.as_deref()
        .map(|raw| parse_time_bound(name, raw, OffsetDateTime::now_utc()))
        .transpose()
        .map_err(|e| ReportError(e.to_string()))
}

fn to_json(value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string_pretty(value)
        .map(|text| text + "\n")
        .map_err(|e| ReportError(e.to_string()))
}

/// Runs a report against `api` (the control plane) and `services` (the others);
/// returns what to print.
pub async fn report(
    api: &dyn ControlPlaneApi,
    services: &Services,
    command: &ReportCommand,
) -> Result<String> {
    let control_plane = |e: Error| explain("control plane", &services.base_url, &e);
    match command {
        ReportCommand::Orgs {
            metadata_key,
            since,
            until,
            org_id,
        } => {
            let query = OrgsQuery {
                org_id: *org_id,
                metadata_key: metadata_key.clone(),
                since: time_bound("--since", since)?,
                until: time_bound("--until", until)?,
            };
            let report = api
                .observability_orgs(&query)
                .await
                .map_err(control_plane)?;
            if services.json {
                return to_json(&report);
            }
            Ok(views::orgs(&report, services.colour))
        }
        ReportCommand::Jobs {
            metadata_key,
            metadata_value,
            job_metadata_key,
            job_metadata_value,
            job_id,
            org_id,
            limit,
        } => {
            if let Some(id) = job_id {
                let job = api.job(*id).await.map_err(control_plane)?;
                if services.json {
                    return to_json(&job);
                }
                return Ok(views::job(&job));
            }
            let summary = api
                .job_summary(&SummaryQuery {
                    org_id: *org_id,
                    metadata_key: metadata_key.clone(),
                    metadata_value: metadata_value.clone(),
                })
                .await
                .map_err(control_plane)?;
            let page = api
                .jobs(JobFilter {
                    org_id: *org_id,
                    metadata_key: job_metadata_key.clone(),
                    metadata_value: job_metadata_value.clone(),
                    limit: *limit,
                    ..JobFilter::default()
                })
                .await
                .map_err(control_plane)?;
            if services.json {
                return to_json(&serde_json::json!({"summary": summary, "jobs": page.jobs}));
            }
            Ok(views::summary(&summary, services.colour)
                + "\n"
                + &views::jobs(&page.jobs, true, services.colour))
        }
        ReportCommand::Metadata {
            key,
            trend,
            bucket_hours,
            since,
            until,
            org_id,
        } => {
            let (since, until) = (time_bound("--since", since)?, time_bound("--until", until)?);
            if *trend {
                let trend = api
                    .metadata_trend(&TrendQuery {
                        key: key.clone(),
                        org_id: *org_id,
                        bucket_hours: Some(*bucket_hours),
                        since,
                        until,
                    })
                    .await
                    .map_err(control_plane)?;
                if services.json {
                    return to_json(&trend);
                }
                return Ok(views::trend(&trend, services.colour));
            }
            let histogram = api
                .metadata_histogram(&HistogramQuery {
                    key: key.clone(),
                    org_id: *org_id,
                    since,
                    until,
                })
                .await
                .map_err(control_plane)?;
            if services.json {
                return to_json(&histogram);
            }
            Ok(views::histogram(&histogram, services.colour))
        }
        ReportCommand::MetadataPresets => {
            let presets = api.metadata_presets().await.map_err(control_plane)?;
            if services.json {
                return to_json(&presets);
            }
            Ok(views::presets(&presets, services.colour))
        }
        ReportCommand::Cache => {
            let usage = services
                .get_json("cache proxy", &services.cache_url, "/api/usage", &[])
                .await?;
            if services.json {
                return to_json(&usage);
            }
            Ok(views::cache(&usage, services.colour))
        }
        ReportCommand::Logs { job_id, limit } => match job_id {
            Some(id) => {
                let query = [("job_id", id.to_string()), ("limit", limit.to_string())];
                let lines = services
                    .get_json("logging pipeline", &services.logs_url, "/api/logs", &query)
                    .await?;
                if services.json {
                    return to_json(&lines);
                }
                Ok(views::log_lines(&lines))
            }
            None => {
                let stats = services
                    .get_json("logging pipeline", &services.logs_url, "/api/stats", &[])
                    .await?;
                if services.json {
                    return to_json(&stats);
                }
                Ok(views::log_stats(&stats))
            }
        },
        ReportCommand::Overview { since, until } => {
            let query = OrgsQuery {
                since: time_bound("--since", since)?,
                until: time_bound("--until", until)?,
                ..OrgsQuery::default()
            };
            let orgs = api
                .observability_orgs(&query)
                .await
                .map_err(control_plane)?;
            // The other services add to the overview; one that is down is named
            // in it (and in the exit status) rather than hiding the rest.
            let cache = services
                .get_json("cache proxy", &services.cache_url, "/api/usage", &[])
                .await;
            let logs = services
                .get_json("logging pipeline", &services.logs_url, "/api/stats", &[])
                .await;
            let failed: Vec<String> = [&cache, &logs]
                .iter()
                .filter_map(|r| r.as_ref().err().map(|e| e.0.clone()))
                .collect();
            let text = if services.json {
                let part = |r: &Result<Value>| match r {
                    Ok(value) => value.clone(),
                    Err(e) => serde_json::json!({"error": e.0}),
                };
                to_json(
                    &serde_json::json!({"orgs": orgs, "cache": part(&cache), "logs": part(&logs)}),
                )?
            } else {
                let mut text = views::orgs(&orgs, services.colour);
                text.push_str("\nCache\n");
                text.push_str(&match &cache {
                    Ok(usage) => views::cache(usage, services.colour),
                    Err(e) => format!("unavailable: {e}\n"),
                });
                text.push_str("\nLogs\n");
                text.push_str(&match &logs {
                    Ok(stats) => views::log_stats(stats),
                    Err(e) => format!("unavailable: {e}\n"),
                });
                text
            };
            if failed.is_empty() {
                Ok(text)
            } else {
                // Write what there is where the report goes, then fail with the reasons.
                emit(services.output.as_deref(), &text)?;
                Err(ReportError(failed.join("; ")))
            }
        }
    }
}

/// Runs `nimbus jobs …`.
pub async fn jobs(
    api: &dyn ControlPlaneApi,
    services: &Services,
    command: &JobsCommand,
) -> Result<String> {
    let JobsCommand::List {
        with_metadata,
        status,
        org_id,
        metadata_key,
        metadata_value,
        limit,
    } = command;
    let page = api
        .jobs(JobFilter {
            org_id: *org_id,
            status: *status,
            metadata_key: metadata_key.clone(),
            metadata_value: metadata_value.clone(),
            limit: *limit,
            ..JobFilter::default()
        })
        .await
        .map_err(|e| explain("control plane", &services.base_url, &e))?;
    if services.json {
        return to_json(&page);
    }
    Ok(views::jobs(&page.jobs, *with_metadata, services.colour))
}

/// Writes `text` to `output` (a file) or standard output.
fn emit(output: Option<&std::path::Path>, text: &str) -> Result<()> {
    match output {
        Some(path) => std::fs::write(path, text)
            .map_err(|e| ReportError(format!("writing {}: {e}", path.display()))),
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|e| ReportError(format!("writing the output: {e}")))
        }
    }
}

/// What [`main`] runs: the report or jobs command line of the `nimbus` binary.
#[derive(Debug, Clone)]
pub enum Invocation {
    /// `nimbus report …`.
    Report(ReportArgs),
    /// `nimbus jobs …`.
    Jobs(JobsArgs),
}

/// Runs an invocation to the end: resolves the services, runs the command on a
/// runtime of its own, prints the result. Returns the process exit code (0, or
/// 1 with one line on standard error).
pub fn run(invocation: Invocation) -> i32 {
    let outcome = (|| {
        let env = Env::from_process().map_err(|e| ReportError(e.to_string()))?;
        let connection = match &invocation {
            Invocation::Report(args) => &args.connection,
            Invocation::Jobs(args) => &args.connection,
        };
        let services = Services::resolve(connection, &env)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ReportError(e.to_string()))?;
        let text = runtime.block_on(async {
            let client = services.control_plane();
            match &invocation {
                // The cache and logs reports need no control plane (nor its token's audience).
                Invocation::Report(ReportArgs {
                    command: command @ (ReportCommand::Cache | ReportCommand::Logs { .. }),
                    ..
                }) => {
                    let none = ControlPlaneClient::new(&services.base_url, None)
                        .map_err(|e| ReportError(e.to_string()))?;
                    report(&none, &services, command).await
                }
                Invocation::Report(args) => report(&client?, &services, &args.command).await,
                Invocation::Jobs(args) => jobs(&client?, &services, &args.command).await,
            }
        })?;
        emit(services.output.as_deref(), &text)
    })();
    match outcome {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("nimbus: {error}");
            1
        }
    }
}

/// The command line of the Python entry points: `report …` or `jobs …` as the
/// `nimbus` binary takes them.
#[derive(Debug, Parser)]
#[command(name = "nimbus")]
enum EntryPoint {
    /// Summaries from the services.
    Report(ReportArgs),
    /// Jobs.
    Jobs(JobsArgs),
}

/// Parses `args` (program name first, then `report …` or `jobs …`) and runs it;
/// returns the exit code (2 for a command line clap refuses, after its message).
pub fn main(args: impl IntoIterator<Item = String>) -> i32 {
    match EntryPoint::try_parse_from(args) {
        Ok(EntryPoint::Report(args)) => run(Invocation::Report(args)),
        Ok(EntryPoint::Jobs(args)) => run(Invocation::Jobs(args)),
        Err(error) => {
            let _ = error.print();
            error.exit_code()
        }
    }
}
