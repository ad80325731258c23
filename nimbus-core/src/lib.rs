//! `nimbus-core`: the domain, configuration, auth, GitHub webhook verification,
//! the durable job queue with fenced leases, and the control plane service.
//!
//! Start at [`store::Store`] (the traits and their SQLite/PostgreSQL backends) and
//! [`control_plane::router`] (the HTTP API over them).

pub mod auth;
pub mod cache_token;
pub mod client;
pub mod config;
pub mod control_plane;
pub mod domain;
pub mod error;
pub mod github;
pub mod job_source;
pub mod route;
pub mod scheduler;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod webhook;

pub use config::{ClientConfig, ControlPlaneConfig, Env, Secret};
pub use domain::{Job, JobId, JobSpec, JobStatus, Lease, NewJob, Org, OrgId};
pub use error::{Error, ErrorKind, Result};
pub use job_source::JobSource;
pub use store::Store;
