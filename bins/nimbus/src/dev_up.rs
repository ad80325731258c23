//! `nimbus dev up`: the whole system in one process on the embedded defaults —
//! control plane (:8000), cache proxy (:8001), logging pipeline (:8002) and one host
//! agent (best VM driver available) — with state under `./.nimbus` and secrets
//! generated once into `./.nimbus/dev.env`. Ctrl-C stops everything cleanly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nimbus_core::auth::{JwtKeys, Role};
use nimbus_core::control_plane::{self, ControlPlane};
use nimbus_core::{ControlPlaneConfig, Env, Secret};
use tokio::net::TcpListener;
use tokio::sync::watch;

const CONTROL_PLANE: &str = "127.0.0.1:8000";
const CACHE: &str = "127.0.0.1:8001";
const LOGS: &str = "127.0.0.1:8002";

/// Reads `KEY=VALUE` lines (the format `set -a; . .nimbus/dev.env` understands).
pub(crate) fn read_env_file(path: &Path) -> Result<BTreeMap<String, String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_string(),
                v.trim().trim_matches('\'').to_string(),
            )
        })
        .collect())
}

/// Where each service listens: `NIMBUS_*_ADDR` from the environment, else loopback.
struct Addresses {
    control_plane: String,
    cache: String,
    logs: String,
}

/// The dev environment: `dev.env` as it is, or generated once (mode 0600).
fn dev_env(data_dir: &Path, at: &Addresses) -> Result<BTreeMap<String, String>, String> {
    let path = data_dir.join("dev.env");
    if path.is_file() {
        let vars = read_env_file(&path)?;
        if admin_token_works(&vars) {
            return Ok(vars);
        }
        // Written by an older Nimbus (tokens without an audience) or expired: the
        // secrets stay, the admin token is minted again.
        eprintln!(
            "dev up: the admin token in {} no longer verifies; minting a new one",
            path.display()
        );
        return rewrite_admin_token(&path, vars);
    }
    std::fs::create_dir_all(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    let random = || {
        use std::fmt::Write;
        let bytes: [u8; 32] = rand_bytes();
        bytes.iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    };
    let jwt_secret = random();
    let admin = mint_dev_admin(&jwt_secret)?;
    let mut vars = BTreeMap::new();
    vars.insert("NIMBUS_JWT_SECRET".to_string(), jwt_secret);
    vars.insert("NIMBUS_CACHE_SHARED_SECRET".to_string(), random());
    vars.insert("NIMBUS_GITHUB_WEBHOOK_SECRET".to_string(), random());
    vars.insert("NIMBUS_TOKEN".to_string(), admin.clone());
    vars.insert("NIMBUS_CONTROL_PLANE_TOKEN".to_string(), admin);
    vars.insert(
        "NIMBUS_CONTROL_PLANE_URL".to_string(),
        format!("http://{}", at.control_plane),
    );
    vars.insert(
        "NIMBUS_CACHE_URL".to_string(),
        format!("http://{}", at.cache),
    );
    vars.insert("NIMBUS_LOGS_URL".to_string(), format!("http://{}", at.logs));
    write_env_file(&path, &vars)?;
    Ok(vars)
}

fn mint_dev_admin(jwt_secret: &str) -> Result<String, String> {
    JwtKeys::new(&Secret::new(jwt_secret))
        .mint(
            "dev-admin",
            Role::Admin,
            None,
            Duration::from_secs(365 * 86_400),
        )
        .map_err(|e| e.to_string())
}

fn admin_token_works(vars: &BTreeMap<String, String>) -> bool {
    match (vars.get("NIMBUS_JWT_SECRET"), vars.get("NIMBUS_TOKEN")) {
        (Some(secret), Some(token)) => nimbus_core::auth::Audience::ALL.iter().all(|audience| {
            JwtKeys::new(&Secret::new(secret))
                .verify(token, *audience)
                .is_ok()
        }),
        _ => false,
    }
}

fn rewrite_admin_token(
    path: &Path,
    mut vars: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    let secret = vars
        .get("NIMBUS_JWT_SECRET")
        .ok_or_else(|| format!("{} has no NIMBUS_JWT_SECRET", path.display()))?;
    let admin = mint_dev_admin(secret)?;
    vars.insert("NIMBUS_TOKEN".to_string(), admin.clone());
    vars.insert("NIMBUS_CONTROL_PLANE_TOKEN".to_string(), admin);
    std::fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    write_env_file(path, &vars)?;
    Ok(vars)
}

fn write_env_file(path: &Path, vars: &BTreeMap<String, String>) -> Result<(), String> {
    let mut text = String::from(
        "# Written by `nimbus dev up`; `set -a; . .nimbus/dev.env` prepares a shell.\n",
    );
    for (key, value) in vars {
        text.push_str(&format!("{key}={value}\n"));
    }
    write_private(path, &text)
}

fn rand_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    for chunk in bytes.chunks_mut(16) {
        chunk.copy_from_slice(&uuid::Uuid::new_v4().into_bytes());
    }
    bytes
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(text.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Builds the guest assets on first use (shows progress); `Err` says what to do.
fn ensure_assets(dir: &Path) -> Result<(), String> {
    use nimbus_vmm::assets::{AssetSet, GUEST_BINARY, SANDBOX_ROOT};
    match AssetSet::open(dir) {
        Ok(set)
            if set.manifest.trees.contains_key(SANDBOX_ROOT)
                && set.manifest.files.contains_key(GUEST_BINARY) =>
        {
            return Ok(());
        }
        Ok(_) => eprintln!(
            "dev up: the guest assets in {} come from an older Nimbus (no attested sandbox tree): rebuilding them",
            dir.display()
        ),
        Err(_) => eprintln!(
            "dev up: no guest assets in {} yet: building them (first run only)",
            dir.display()
        ),
    }
    // In a clone of the repository the script does it all: the packages the build
    // needs, the static nimbus-guest, then the assets (about a minute, once).
    let script = Path::new("scripts/guest-assets.sh");
    if crate::vm::default_guest().is_err() && script.is_file() {
        let status = std::process::Command::new("bash")
            .arg(script)
            .env("NIMBUS_TEST_ASSETS", dir)
            .stdout(std::process::Stdio::null())
            .status()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        return if status.success() {
            Ok(())
        } else {
            Err(format!("{} failed ({status})", script.display()))
        };
    }
    let guest = crate::vm::default_guest()?;
    let options = nimbus_vmm::assets::BuildOptions::new(dir, guest);
    nimbus_vmm::assets::AssetBuilder::new(options, |message| eprintln!("assets: {message}"))
        .build()
        .map(drop)
        .map_err(|e| e.to_string())
}

pub fn up() -> Result<(), String> {
    let process = Env::from_process().map_err(|e| e.to_string())?;
    let data_dir = process.data_dir();
    let address = |name: &str, default: &str| process.get(name).unwrap_or(default).to_string();
    let addresses = Addresses {
        control_plane: address("NIMBUS_CONTROL_PLANE_ADDR", CONTROL_PLANE),
        cache: address("NIMBUS_CACHE_PROXY_ADDR", CACHE),
        logs: address("NIMBUS_LOGGING_PIPELINE_ADDR", LOGS),
    };
    let generated = dev_env(&data_dir, &addresses)?;
    // The process environment wins over dev.env; listen on loopback by default.
    let mut env = Env::from_map(generated.clone());
    for (key, value) in std::env::vars().filter(|(k, _)| k.starts_with("NIMBUS_")) {
        env.set(key, value);
    }
    env.set("NIMBUS_DATA_DIR", data_dir.display().to_string());
    for (key, value) in [
        (
            "NIMBUS_CONTROL_PLANE_ADDR",
            addresses.control_plane.as_str(),
        ),
        ("NIMBUS_CACHE_PROXY_ADDR", addresses.cache.as_str()),
        ("NIMBUS_LOGGING_PIPELINE_ADDR", addresses.logs.as_str()),
    ] {
        if env.get(key).is_none() {
            env.set(key, value);
        }
    }
    let metadata_sink = format!("http://{}", addresses.logs);
    if env.get("NIMBUS_METADATA_SINK_URL").is_none() {
        env.set("NIMBUS_METADATA_SINK_URL", metadata_sink);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(run(env, data_dir))
}

async fn bind(address: &str) -> Result<TcpListener, String> {
    TcpListener::bind(address)
        .await
        .map_err(|e| format!("binding {address}: {e} (is another Nimbus running?)"))
}

async fn run(env: Env, data_dir: PathBuf) -> Result<(), String> {
    let (stop, stopped) = watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let text = |e: &dyn std::fmt::Display| e.to_string();

    // Control plane.
    let config = ControlPlaneConfig::from_env(&env).map_err(|e| text(&e))?;
    let store = nimbus_core::store::open(&config.database_url, config.database_max_connections)
        .await
        .map_err(|e| text(&e))?;
    let listener = bind(&config.listen.to_string()).await?;
    let control_plane_url = format!("http://{}", config.listen);
    let state = ControlPlane::new(config, store).map_err(|e| text(&e))?;
    // The agent below leases through the API in this process, not over HTTP.
    let agent_jobs: Arc<dyn nimbus_core::JobSource> = Arc::new(state.agent("dev-agent"));
    let control_plane = tokio::spawn(control_plane::serve(state, listener, until_stopped()));

    // Logging pipeline.
    let pipeline_config =
        nimbus_logs::pipeline::PipelineConfig::from_env(&env).map_err(|e| text(&e))?;
    let sink = nimbus_logs::pipeline::open_sink(&pipeline_config)
        .await
        .map_err(|e| text(&e))?;
    let listener = bind(&pipeline_config.listen.to_string()).await?;
    let logs_url = format!("http://{}", pipeline_config.listen);
    // The agent below writes its jobs' lines to the pipeline's sink directly.
    let agent_logs = nimbus_vmm::agent::LogDestination::Sink(sink.clone());
    let pipeline_state =
        nimbus_logs::pipeline::Pipeline::new(&pipeline_config, sink).map_err(|e| text(&e))?;
    let shutdown = until_stopped();
    let pipeline = tokio::spawn(async move {
        nimbus_logs::pipeline::serve(&pipeline_config, pipeline_state, listener, shutdown).await
    });

    // Cache proxy.
    let cache_config = nimbus_cache::ProxyConfig::from_env(&env).map_err(|e| text(&e))?;
    let proxy = nimbus_cache::server::open(&cache_config)
        .await
        .map_err(|e| text(&e))?;
    let listener = bind(&cache_config.listen.to_string()).await?;
    let cache_url = format!("http://{}", cache_config.listen);
    let shutdown = until_stopped();
    let cache = tokio::spawn(async move {
        nimbus_cache::server::serve(&cache_config, proxy, listener, shutdown).await
    });

    // Host agent, once the assets are there.
    let mut agent_config = nimbus_vmm::agent::AgentConfig::from_env(&env).map_err(|e| text(&e))?;
    agent_config.agent_id = "dev-agent".into();
    agent_config.cache_url = Some(cache_url.clone());
    let assets_dir = agent_config.vmm.assets_dir.clone();
    let assets_ready = match tokio::task::spawn_blocking(move || ensure_assets(&assets_dir)).await {
        Ok(result) => result,
        Err(e) => Err(e.to_string()),
    };
    let agent = match assets_ready {
        Ok(()) => {
            let metrics = nimbus_vmm::agent::AgentMetrics::new().map_err(|e| text(&e))?;
            Some(tokio::spawn(nimbus_vmm::agent::run(
                agent_config,
                agent_jobs,
                agent_logs,
                metrics,
                until_stopped(),
            )))
        }
        Err(why) => {
            eprintln!(
                "dev up: no host agent (jobs stay queued): {why}\n        \
                 build the assets with scripts/guest-assets.sh, then start dev up again"
            );
            None
        }
    };

    let token = env.get("NIMBUS_TOKEN").unwrap_or_default().to_string();
    println!("Nimbus is up (data under {}):", data_dir.display());
    println!("  control plane      {control_plane_url}");
    println!("  cache proxy        {cache_url}");
    println!("  logging pipeline   {logs_url}");
    println!(
        "  host agent         {}",
        if agent.is_some() {
            "running"
        } else {
            "not running (no guest assets)"
        }
    );
    println!("  admin token        {token}");
    println!();
    println!("Next, in another shell:");
    println!("  set -a; . {}/dev.env; set +a", data_dir.display());
    println!("  curl -s -X POST $NIMBUS_CONTROL_PLANE_URL/api/orgs -H \"authorization: Bearer $NIMBUS_TOKEN\" -H 'content-type: application/json' -d '{{\"id\": 1, \"name\": \"acme\"}}'");
    println!("  curl -s -X POST $NIMBUS_CONTROL_PLANE_URL/api/jobs -H \"authorization: Bearer $NIMBUS_TOKEN\" -H 'content-type: application/json' -d '{{\"org_id\": 1, \"repo\": \"acme/app\", \"labels\": [\"nimbus\"], \"steps\": [{{\"run\": \"echo hello from a microVM\"}}]}}'");
    println!("  nimbus report logs");
    println!("Ctrl-C stops everything.");

    nimbus_core::service::shutdown_signal().await;
    eprintln!("dev up: stopping (running jobs drain first)");
    let _ = stop.send(true);
    if let Some(agent) = agent {
        let _ = agent.await;
    }
    let _ = control_plane.await;
    let _ = pipeline.await;
    let _ = cache.await;
    Ok(())
}
