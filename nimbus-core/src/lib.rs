//! `nimbus-core`: what every part shares — the domain, configuration, auth and
//! tokens, the durable job queue with fenced leases and its scheduler — and the
//! control plane: its in-process API, the HTTP adapter, the GitHub client.
//!
//! Start at [`store::Store`] (the traits and their SQLite/PostgreSQL backends),
//! [`control_plane::ControlPlane`] (the API) and docs/architecture.md (the map).

#![warn(missing_docs)]

pub mod analytics;
pub mod auth;
pub mod cache_token;
pub mod client;
pub mod config;
pub mod control_plane;
pub mod db;
pub mod domain;
pub mod error;
pub mod forwarded;
pub mod github;
pub mod job_source;
#[cfg(feature = "cli")]
pub mod report;
pub mod retry;
pub mod roi;
pub mod route;
pub mod scheduler;
pub mod serve;
pub mod service;
pub mod store;
pub mod telemetry;
#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;
pub mod webhook;

pub use config::{ClientConfig, Env, Secret};
pub use control_plane::ControlPlaneConfig;
pub use domain::{Job, JobId, JobSpec, JobStatus, Lease, NewJob, Org, OrgId};
pub use error::{Error, ErrorKind, Result};
pub use job_source::JobSource;
pub use store::Store;
