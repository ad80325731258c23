//! A Nimbus control plane embedded in another tokio program.
//!
//! `cargo run -p nimbus-examples --example embedded_control_plane`

use std::time::Duration;

use nimbus_core::auth::{JwtKeys, Role};
use nimbus_core::client::ControlPlaneClient;
use nimbus_core::control_plane::{self, ControlPlane};
use nimbus_core::domain::{Completion, CompletionStatus};
use nimbus_core::{ControlPlaneConfig, Env, Secret};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Configuration comes from a map here, not the process environment.
    let secret = "example-secret-0123456789";
    let config = ControlPlaneConfig::from_env(&Env::from_map([("NIMBUS_JWT_SECRET", secret)]))?;
    // Any `Arc<dyn Store>` works: an in-memory SQLite database for this example.
    let store = nimbus_core::store::open("sqlite::memory:", 1).await?;
    let state = ControlPlane::new(config, store)?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(control_plane::serve(state, listener, async {
        let _ = stopped.await;
    }));

    let keys = JwtKeys::new(&Secret::new(secret));
    let token = |sub: &str, role, org| {
        keys.mint(sub, role, org, Duration::from_secs(300))
            .map(Secret::new)
    };
    let admin = ControlPlaneClient::new(&url, Some(token("example-admin", Role::Admin, None)?))?;
    let org = ControlPlaneClient::new(&url, Some(token("example-org", Role::Org, Some(1))?))?;
    let agent = ControlPlaneClient::new(&url, Some(token("example-agent", Role::Agent, None)?))?;

    admin.upsert_org(1, "acme").await?;
    let job = org
        .submit_job(&serde_json::json!({
            "repo": "acme/app",
            "labels": ["nimbus", "param:python=3.12"],
            "steps": [{"name": "hello", "run": "echo hello"}]
        }))
        .await?;
    println!("submitted job {} ({})", job.id, job.status);

    let lease = agent
        .lease(Duration::from_secs(5))
        .await?
        .ok_or("no job to lease")?;
    println!(
        "leased job {} with fencing token {}",
        lease.job.id, lease.fencing_token
    );
    let done = agent
        .complete(
            lease.job.id,
            &Completion {
                fencing_token: lease.fencing_token,
                status: CompletionStatus::Succeeded,
                exit_code: Some(0),
                reason: None,
            },
        )
        .await?;
    println!("job {} is {}", done.id, done.status);

    let _ = stop.send(());
    server.await??;
    Ok(())
}
