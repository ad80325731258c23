//! A Nimbus control plane embedded in another tokio program, called in-process:
//! the API's methods take the caller (a `Principal`) and typed requests, apply
//! the same rules as the HTTP API, and need no server and no tokens. The agent
//! side goes through `JobSource`, the seam a host agent leases through.
//!
//! `cargo run -p nimbus-examples --example embedded_control_plane`

use std::time::Duration;

use nimbus_core::auth::Principal;
use nimbus_core::control_plane::{ControlPlane, JobRequest};
use nimbus_core::domain::{Completion, CompletionStatus, Step};
use nimbus_core::{ControlPlaneConfig, Env, JobSource};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Configuration comes from a map here, not the process environment.
    let config = ControlPlaneConfig::from_env(&Env::from_map([(
        "NIMBUS_JWT_SECRET",
        "example-secret-0123456789",
    )]))?;
    // Any `Arc<dyn Store>` works: an in-memory SQLite database for this example.
    let store = nimbus_core::store::open("sqlite::memory:", 1).await?;
    let control_plane = ControlPlane::new(config, store)?;

    let admin = Principal::Admin {
        sub: "example-admin".into(),
    };
    let org = Principal::Org {
        org_id: 1,
        sub: "example-org".into(),
    };
    control_plane.upsert_org(&admin, 1, "acme").await?;
    let job = control_plane
        .submit(
            &org,
            JobRequest {
                repo: "acme/app".into(),
                labels: vec!["nimbus".into(), "param:python=3.12".into()],
                steps: vec![Step {
                    name: Some("hello".into()),
                    run: "echo hello".into(),
                    env: Default::default(),
                    working_directory: None,
                }],
                ..JobRequest::default()
            },
        )
        .await?;
    println!("submitted job {} ({})", job.id, job.status);

    // What a host agent in this process holds: the in-process JobSource.
    let agent = control_plane.agent("example-agent");
    let lease = agent
        .lease(Duration::from_secs(5), None)
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
                result: None,
            },
        )
        .await?;
    println!("job {} is {}", done.id, done.status);
    let analytics = control_plane
        .metadata_values(&org, "python", None, 10)
        .await?;
    println!("jobs by python version: {analytics:?}");
    Ok(())
}
