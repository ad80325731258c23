//! `nimbus`: the command line. Each subcommand is a thin call into nimbus-core.

use std::process::ExitCode;
use std::time::Duration;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

mod dev_up;
mod run;
mod vm;
use nimbus_core::auth::{Audience, JwtKeys, Role};
use nimbus_core::cache_token::{CachePermission, CacheTokenKeys};
use nimbus_core::{config, Env};
use nimbus_policy::{describe_error, JobFacts, Policy};

#[derive(Parser)]
#[command(
    name = "nimbus",
    version,
    about = "Nimbus: CI jobs in microVMs on your own machines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Admission policies (docs/policy-as-code.md).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Local development helpers.
    #[command(subcommand)]
    Dev(DevCommand),
    /// One-off VMs: run a command in a fresh VM, list the drivers.
    #[command(subcommand)]
    Vm(vm::VmCommand),
    /// Guest assets: build and verify kernel, initramfs and rootfs.
    #[command(subcommand)]
    Assets(vm::AssetsCommand),
    /// Checks this host can run jobs: KVM, VMM binaries and versions, jailer,
    /// cgroup v2, netns/tap, assets, disk space, clock skew against the control
    /// plane, databases. A pass/fail table with the fix for each failure; exits 1
    /// when a check fails.
    Doctor {
        /// The checks as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Fleet reports from the services: orgs, jobs, metadata, cache, logs
    /// (docs/reporting.md).
    Report(nimbus_core::report::ReportArgs),
    /// Jobs of the control plane.
    Jobs(nimbus_core::report::JobsArgs),
    /// Hosted runner minutes priced beside your own hosts: monthly cost both ways
    /// and the break-even (docs/roi-calculator.md).
    Roi(nimbus_core::report::roi::RoiArgs),
    /// Runs a GitHub Actions workflow here the way GitHub's runner would, one microVM
    /// per job (and matrix combination): needs, outputs, expressions, environment
    /// files, local composite actions, the working tree copied in; exits with the
    /// first failed job's code.
    Run(run::RunArgs),
}

#[derive(Subcommand)]
enum DevCommand {
    /// Runs control plane (:8000), cache proxy (:8001), logging pipeline (:8002) and a
    /// host agent in this process on the embedded defaults; state under ./.nimbus,
    /// secrets and an admin token in ./.nimbus/dev.env. Ctrl-C stops everything.
    Up,
    /// Signs a recorded GitHub webhook with NIMBUS_GITHUB_WEBHOOK_SECRET and sends it to
    /// the control plane at NIMBUS_CONTROL_PLANE_URL, so the GitHub path can be tried
    /// without GitHub. The action's timestamp is set to now (recordings are older than
    /// the freshness window) and the delivery id is fresh, unless told otherwise.
    Webhook {
        /// The payload, e.g. examples/webhooks/workflow_job_queued.json.
        file: PathBuf,
        /// X-GitHub-Event (default: workflow_job, or ping for a payload with `zen`).
        #[arg(long)]
        event: Option<String>,
        /// X-GitHub-Delivery to send (default: a new UUID). Reuse one to try replay protection.
        #[arg(long)]
        delivery: Option<String>,
        /// Send the payload's timestamps as recorded.
        #[arg(long)]
        keep_timestamps: bool,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validates a policy file. Exit 0 valid, 2 invalid (errors as FILE:LINE:COLUMN).
    Check { file: PathBuf },
    /// Evaluates a policy against a job. Exit 0 allow, 1 deny, 2 invalid.
    Eval {
        file: PathBuf,
        /// Job facts as JSON: {org_id, repository, workflow_name, job_name, labels,
        /// timeout_minutes}, or a job as `GET /api/jobs/{id}` returns it.
        #[arg(long)]
        job: PathBuf,
        /// Print the decision as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Prints a JWT signed with NIMBUS_JWT_SECRET (or the development secret under NIMBUS_DATA_DIR).
    Mint {
        #[arg(long, value_enum)]
        role: RoleArg,
        /// The org an `org` token is scoped to.
        #[arg(long)]
        org_id: Option<i64>,
        /// Token subject (defaults to the role, or `org-N`).
        #[arg(long)]
        sub: Option<String>,
        /// Lifetime, e.g. `1h`, `30m`, `7d`.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// The services the token is for, comma-separated: control-plane,
        /// cache-proxy, logging-pipeline. Default: the role's (admin and org: all
        /// three; agent: control-plane).
        #[arg(long, value_delimiter = ',')]
        aud: Vec<String>,
    },
    /// Prints a cache token (HMAC-SHA256 with NIMBUS_CACHE_SHARED_SECRET) for one
    /// org, repository and ref: what the cache proxy takes as ACTIONS_RUNTIME_TOKEN.
    Cache {
        #[arg(long)]
        org_id: i64,
        /// OWNER/NAME.
        #[arg(long)]
        repo: String,
        /// Where saves go and restores look first.
        #[arg(long = "ref", default_value = "refs/heads/main")]
        git_ref: String,
        /// Where restores look second (the repository's default branch).
        #[arg(long, default_value = "refs/heads/main")]
        default_ref: String,
        /// Restore only: the token cannot save entries.
        #[arg(long)]
        read_only: bool,
        /// Lifetime, e.g. `6h`, `30m`.
        #[arg(long, default_value = "6h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Prints the table of every NIMBUS_* variable (the source of docs/configuration.md).
    Docs,
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Admin,
    Agent,
    Org,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::Admin => Role::Admin,
            RoleArg::Agent => Role::Agent,
            RoleArg::Org => Role::Org,
        }
    }
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn main() -> ExitCode {
    nimbus_core::service::private_files();
    let outcome = match Cli::parse().command {
        // Policy commands have exit codes of their own (0 allow, 1 deny, 2 invalid).
        Command::Policy(command) => return policy(command),
        Command::Token(command) => token(command),
        Command::Config(command) => config_command(command),
        Command::Dev(command) => dev(command),
        Command::Assets(command) => vm::assets(command),
        // Reports print one line and exit 1 when a service is down or refuses.
        Command::Report(args) => {
            return exit(nimbus_core::report::run(
                nimbus_core::report::Invocation::Report(args),
            ))
        }
        Command::Roi(args) => return exit(nimbus_core::report::roi::run(args)),
        Command::Jobs(args) => {
            return exit(nimbus_core::report::run(
                nimbus_core::report::Invocation::Jobs(args),
            ))
        }
        // These exit with the job's code (vm run) or the check's verdict (doctor).
        Command::Vm(command) => return vm::vm(command),
        Command::Doctor { json } => return vm::doctor(json),
        Command::Run(args) => {
            return match run::run(&args) {
                Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
                Err(message) => {
                    eprintln!("nimbus: {message}");
                    ExitCode::from(125)
                }
            }
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("nimbus: {message}");
            ExitCode::FAILURE
        }
    }
}

fn token(command: TokenCommand) -> Result<(), String> {
    match command {
        TokenCommand::Mint {
            role,
            org_id,
            sub,
            ttl,
            aud,
        } => {
            let role = Role::from(role);
            if role == Role::Org && org_id.is_none() {
                return Err("--role org needs --org-id N".into());
            }
            if role != Role::Org && org_id.is_some() {
                return Err("--org-id only goes with --role org".into());
            }
            let env = Env::from_process().map_err(|e| e.to_string())?;
            let secret = config::jwt_secret(&env, &env.data_dir()).map_err(|e| e.to_string())?;
            let sub = sub.unwrap_or_else(|| match org_id {
                Some(id) => format!("org-{id}"),
                None => role.to_string(),
            });
            let audiences = aud
                .iter()
                .map(|name| name.parse::<Audience>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let audiences = if audiences.is_empty() {
                role.default_audiences().to_vec()
            } else {
                audiences
            };
            let token = JwtKeys::new(&secret)
                .mint_for(&sub, role, org_id, &audiences, ttl)
                .map_err(|e| e.to_string())?;
            println!("{token}");
            Ok(())
        }
        TokenCommand::Cache {
            org_id,
            repo,
            git_ref,
            default_ref,
            read_only,
            ttl,
        } => {
            let env = Env::from_process().map_err(|e| e.to_string())?;
            let secret =
                config::cache_shared_secret(&env, &env.data_dir()).map_err(|e| e.to_string())?;
            let git_ref = full_ref(&git_ref);
            let default_ref = full_ref(&default_ref);
            let permission = if read_only {
                CachePermission::Read
            } else {
                CachePermission::Write
            };
            let token = CacheTokenKeys::new(&secret)
                .mint(org_id, &repo, &git_ref, &default_ref, permission, ttl)
                .map_err(|e| e.to_string())?;
            println!("{token}");
            Ok(())
        }
    }
}

/// `main` → `refs/heads/main`; full refs stay as they are.
fn full_ref(name: &str) -> String {
    if name.starts_with("refs/") {
        name.to_string()
    } else {
        format!("refs/heads/{name}")
    }
}

/// Every part's settings, in the order docs/configuration.md lists them.
fn settings() -> [&'static config::Settings; 6] {
    [
        &config::SHARED,
        &nimbus_core::control_plane::config::SETTINGS,
        &nimbus_logs::pipeline::config::SETTINGS,
        &nimbus_cache::server::config::SETTINGS,
        &nimbus_vmm::agent::SETTINGS,
        &nimbus_vmm::select::SETTINGS,
    ]
}

fn config_command(command: ConfigCommand) -> Result<(), String> {
    match command {
        ConfigCommand::Docs => {
            print!("{}", config::render_variables(&settings()));
            Ok(())
        }
    }
}

/// Exit codes of `nimbus policy`: 0 allow / valid, 1 deny, 2 invalid input.
const POLICY_DENY: u8 = 1;
const POLICY_INVALID: u8 = 2;

fn policy(command: PolicyCommand) -> ExitCode {
    let load = |file: &PathBuf| {
        Policy::from_path(file).map_err(|e| describe_error(&file.display().to_string(), &e))
    };
    match command {
        PolicyCommand::Check { file } => match load(&file) {
            Ok(policy) => {
                println!(
                    "{}: valid ({} rules{})",
                    file.display(),
                    policy.rule_count(),
                    if policy.dry_run() { ", dry run" } else { "" }
                );
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("{message}");
                ExitCode::from(POLICY_INVALID)
            }
        },
        PolicyCommand::Eval { file, job, json } => {
            let policy = match load(&file) {
                Ok(policy) => policy,
                Err(message) => {
                    eprintln!("{message}");
                    return ExitCode::from(POLICY_INVALID);
                }
            };
            let facts = match read_facts(&job) {
                Ok(facts) => facts,
                Err(message) => {
                    eprintln!("{}: {message}", job.display());
                    return ExitCode::from(POLICY_INVALID);
                }
            };
            let decision = policy.evaluate(&facts);
            if json {
                match serde_json::to_string_pretty(&decision) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("nimbus: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                let verdict = if decision.allowed { "allow" } else { "deny" };
                let note = if decision.dry_run && decision.would_deny() {
                    " (dry run: would deny)"
                } else {
                    ""
                };
                println!("{verdict}{note}");
                for reason in &decision.reasons {
                    println!("  {}: {}", reason.rule, reason.message);
                }
            }
            if decision.allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(POLICY_DENY)
            }
        }
    }
}

/// Job facts from a file: the facts themselves, or a job from the API.
fn read_facts(path: &PathBuf) -> Result<JobFacts, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("invalid JSON: {e}"))?;
    if value.get("spec").is_some() {
        let job: nimbus_core::Job =
            serde_json::from_value(value).map_err(|e| format!("not a Nimbus job: {e}"))?;
        return Ok(JobFacts {
            org_id: job.org_id,
            repository: job.repo,
            workflow_name: job.github.as_ref().and_then(|g| g.workflow_name.clone()),
            job_name: job.github.as_ref().and_then(|g| g.job_name.clone()),
            labels: job.labels,
            timeout_minutes: job.spec.timeout_minutes,
        });
    }
    serde_json::from_value(value).map_err(|e| format!("not job facts: {e}"))
}

fn dev(command: DevCommand) -> Result<(), String> {
    let (file, event, delivery, keep_timestamps) = match command {
        DevCommand::Up => return dev_up::up(),
        DevCommand::Webhook {
            file,
            event,
            delivery,
            keep_timestamps,
        } => (file, event, delivery, keep_timestamps),
    };
    let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut payload: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("{}: invalid JSON: {e}", file.display()))?;
    let event = event.unwrap_or_else(|| {
        if payload.get("zen").is_some() {
            "ping"
        } else {
            "workflow_job"
        }
        .to_string()
    });
    if !keep_timestamps {
        refresh_action_timestamp(&mut payload);
    }
    let env = Env::from_process().map_err(|e| e.to_string())?;
    let secret = env
        .get("NIMBUS_GITHUB_WEBHOOK_SECRET")
        .ok_or("NIMBUS_GITHUB_WEBHOOK_SECRET is not set (the control plane's webhook secret)")?
        .to_string();
    let client_config = nimbus_core::ClientConfig::from_env(&env).map_err(|e| e.to_string())?;
    let client = nimbus_core::client::ControlPlaneClient::from_config(&client_config)
        .map_err(|e| e.to_string())?;
    let delivery = delivery.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let body = serde_json::to_vec(&payload).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (status, answer) = runtime
        .block_on(client.send_webhook(secret.as_bytes(), &event, &delivery, body))
        .map_err(|e| format!("sending to {}: {e}", client.base_url()))?;
    println!("{status} {answer}");
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!(
            "the control plane answered {status} (delivery {delivery})"
        ))
    }
}

/// Sets the timestamp the control plane judges freshness by (created_at for queued,
/// started_at for in_progress, completed_at for completed) to now.
fn refresh_action_timestamp(payload: &mut serde_json::Value) {
    let field = match payload.get("action").and_then(|a| a.as_str()) {
        Some("in_progress") => "started_at",
        Some("completed") => "completed_at",
        Some(_) => "created_at",
        None => return,
    };
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    if let Some(job) = payload
        .get_mut("workflow_job")
        .and_then(|j| j.as_object_mut())
    {
        job.insert(field.to_string(), serde_json::Value::String(now));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::settings;

    /// Names that look like settings but are not read from the environment: the
    /// bare prefix, the guest's runner config variable and test-only knobs.
    fn not_a_setting(name: &str) -> bool {
        name == "NIMBUS_"
            || name.starts_with("NIMBUS_TEST_")
            || matches!(name, "NIMBUS_JIT_CONFIG" | "NIMBUS_JAILER_WRAPPER_CONF")
            // Set for every job by the host agent (docs/host-agent.md), never read.
            || matches!(name, "NIMBUS_JOB_ID" | "NIMBUS_JOB_ATTEMPT")
    }

    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if path.is_dir() {
                if name != "target"
                    && name != "node_modules"
                    && !name.to_string_lossy().starts_with('.')
                {
                    rust_files(&path, out);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn docs_configuration_lists_every_setting_as_the_code_does() {
        let doc = include_str!("../../../docs/configuration.md");
        let rendered = nimbus_core::config::render_variables(&settings());
        assert!(
            doc.contains(&rendered),
            "docs/configuration.md is out of date; run scripts/config-docs.sh:\n{rendered}"
        );
    }

    #[test]
    fn every_variable_in_the_code_belongs_to_a_part() {
        let documented: BTreeSet<&str> = settings()
            .iter()
            .flat_map(|s| s.variables.iter().map(|v| v.name))
            .collect();
        let total: usize = settings().iter().map(|s| s.variables.len()).sum();
        assert_eq!(total, documented.len(), "a variable is listed by two parts");
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut files = Vec::new();
        for dir in [
            "nimbus-core",
            "nimbus-vmm",
            "nimbus-cache",
            "nimbus-logs",
            "nimbus-policy",
            "bins",
        ] {
            rust_files(&root.join(dir).join("src"), &mut files);
            for bin in std::fs::read_dir(root.join(dir))
                .into_iter()
                .flatten()
                .flatten()
            {
                rust_files(&bin.path().join("src"), &mut files);
            }
        }
        assert!(files.len() > 50, "found only {} source files", files.len());
        let mut missing = BTreeSet::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            for (at, _) in text.match_indices("\"NIMBUS_") {
                let name: String = text[at + 1..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if !documented.contains(name.as_str()) && !not_a_setting(&name) {
                    missing.insert(format!("{name} ({})", file.display()));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "read in the code but listed by no part's SETTINGS: {missing:?}"
        );
    }
}
