//! `nimbus`: the command line. Each subcommand is a thin call into nimbus-core.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use nimbus_core::auth::{JwtKeys, Role};
use nimbus_core::{config, Env};

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("nimbus: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Token(TokenCommand::Mint {
            role,
            org_id,
            sub,
            ttl,
        }) => {
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
            let token = JwtKeys::new(&secret)
                .mint(&sub, role, org_id, ttl)
                .map_err(|e| e.to_string())?;
            println!("{token}");
            Ok(())
        }
        Command::Config(ConfigCommand::Docs) => {
            print!("{}", config::render_variables_table());
            Ok(())
        }
    }
}
