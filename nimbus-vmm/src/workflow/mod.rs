//! GitHub Actions workflows run locally (`nimbus run`).
//!
//! - [`expr`]: the expression language, shared by the host and the guest;
//! - [`job`]: a workflow job as the guest receives it, and its result;
//! - [`commands`]: environment files and workflow commands (read in the guest);
//! - [`file`] and [`action`]: workflow and `action.yml` files, checked as they are read;
//! - [`plan`]: the jobs as a graph, matrices expanded, what `--list` shows;
//! - [`schedule`]: running the graph (needs, `if:`, fail-fast, parallelism) over a `JobRunner`;
//! - [`workspace`]: the working tree packed for the jobs' VMs.
#[cfg(feature = "workflow")]
pub mod action;
pub mod commands;
pub mod expr;
#[cfg(feature = "workflow")]
pub mod file;
pub mod job;
#[cfg(feature = "workflow")]
pub mod plan;
#[cfg(feature = "host")]
pub mod schedule;
#[cfg(feature = "host")]
pub mod workspace;

pub use job::{Annotation, RunDefaults, WorkflowJob, WorkflowResult, WorkflowStep};
