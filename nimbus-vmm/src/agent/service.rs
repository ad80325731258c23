//! The host agent as a process (`nimbus-host-agent`, and `python -m
//! nimbus.host_agent.main`): the environment, telemetry, `/metrics` on
//! `NIMBUS_HOST_AGENT_METRICS_ADDR`, the control plane's HTTP client as the job
//! source, then [`super::run`] until SIGTERM / Ctrl-C (the first drains, a second
//! exits at once).

use std::net::SocketAddr;
use std::process::ExitCode;

use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use nimbus_core::{telemetry, Env};

use super::{AgentConfig, AgentMetrics, LogDestination};

const USAGE: &str = "usage: nimbus-host-agent\n\
    Configuration comes from NIMBUS_* environment variables (see docs/configuration.md).";

/// Runs the host agent with the process's arguments after the program name.
pub fn main(args: impl IntoIterator<Item = String>) -> ExitCode {
    nimbus_core::service::private_files();
    if let Some(arg) = args.into_iter().next() {
        if arg == "-h" || arg == "--help" {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        eprintln!("nimbus-host-agent: unknown argument {arg:?}\n{USAGE}");
        return ExitCode::from(2);
    }
    let env = match Env::from_process() {
        Ok(env) => env,
        Err(e) => return fail(&e),
    };
    if let Err(e) = telemetry::init(&env, "nimbus-host-agent") {
        return fail(&e);
    }
    let config = match AgentConfig::from_env(&env) {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    // What the agent runs with, secrets and URL passwords redacted.
    tracing::info!(
        "nimbus-host-agent: effective configuration: {}",
        nimbus_core::config::redact_credentials(&format!("{config:?}"))
    );
    let metrics_addr: SocketAddr = match env.parse_or(
        "NIMBUS_HOST_AGENT_METRICS_ADDR",
        SocketAddr::from(([0, 0, 0, 0], 9460)),
    ) {
        Ok(addr) => addr,
        Err(e) => return fail(&e),
    };
    let metrics_token = env.secret("NIMBUS_HOST_AGENT_METRICS_TOKEN");
    let metrics = match AgentMetrics::new() {
        Ok(metrics) => metrics,
        Err(e) => return fail(&e),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&e),
    };
    let result = runtime.block_on(async move {
        let registry = metrics.registry.clone();
        let app = axum::Router::new().route(
            "/metrics",
            get(
                move |ConnectInfo(peer): ConnectInfo<SocketAddr>,
                      headers: axum::http::HeaderMap| {
                    let registry = registry.clone();
                    let token = metrics_token.clone();
                    async move { metrics_text(&registry, token.as_ref(), peer, &headers) }
                },
            ),
        );
        match tokio::net::TcpListener::bind(metrics_addr).await {
            Ok(listener) => {
                tokio::spawn(nimbus_core::serve::serve(
                    listener,
                    app,
                    nimbus_core::serve::HttpLimits::default(),
                    std::future::pending(),
                ));
            }
            Err(error) => {
                tracing::warn!(%error, address = %metrics_addr, "metrics endpoint not served")
            }
        }
        // The first SIGTERM (or Ctrl-C) drains; a second one exits at once.
        let (first, first_seen) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            nimbus_core::service::shutdown_signal().await;
            let _ = first.send(());
            nimbus_core::service::shutdown_signal().await;
            tracing::warn!("second signal: exiting without draining");
            std::process::exit(130);
        });
        let jobs: std::sync::Arc<dyn nimbus_core::JobSource> = std::sync::Arc::new(
            nimbus_core::client::ControlPlaneClient::from_config(&config.client)
                .map_err(|e| crate::Error::Config(e.to_string()))?,
        );
        let logs = LogDestination::from_config(&config);
        super::run(config, jobs, logs, metrics, async {
            let _ = first_seen.await;
        })
        .await
    });
    drop(runtime);
    telemetry::shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// `/metrics`: open to loopback peers; others need the metrics token (docs/host-agent.md).
fn metrics_text(
    registry: &prometheus::Registry,
    token: Option<&nimbus_core::Secret>,
    peer: SocketAddr,
    headers: &axum::http::HeaderMap,
) -> Response {
    if !nimbus_core::auth::metrics_access_allowed(
        nimbus_core::forwarded::Origin::direct(Some(peer)),
        headers,
        token,
    ) {
        return (
            StatusCode::FORBIDDEN,
            "metrics need Authorization: Bearer $NIMBUS_HOST_AGENT_METRICS_TOKEN from non-loopback peers\n",
        )
            .into_response();
    }
    use prometheus::Encoder;
    let mut buffer = Vec::new();
    let _ = prometheus::TextEncoder::new().encode(&registry.gather(), &mut buffer);
    String::from_utf8_lossy(&buffer)
        .into_owned()
        .into_response()
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("nimbus-host-agent: {error}");
    ExitCode::FAILURE
}
