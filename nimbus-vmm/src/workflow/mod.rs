//! GitHub Actions workflows run locally (`nimbus run`).
//!
//! - [`expr`]: the expression language, shared by the host and the guest.
pub mod expr;
#[cfg(feature = "workflow")]
mod plan_old;
#[cfg(feature = "workflow")]
pub use plan_old::*;
