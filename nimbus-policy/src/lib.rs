//! `nimbus-policy`: policy-as-code admission for jobs.
//!
//! A policy is YAML ([`Policy::from_yaml`]) checked strictly (unknown fields, wrong
//! types, bad globs and bad regular expressions are errors with line and column),
//! compiled once, then evaluated cheaply against each job's [`JobFacts`]:
//! [`Policy::evaluate`] returns a [`Decision`] naming every rule that matched.
//! The crate knows nothing of the rest of Nimbus but the small facts struct.
//! The language is documented in docs/policy-as-code.md.

#![warn(missing_docs)]

mod compile;
mod error;
mod facts;
mod spec;

pub use compile::{describe_error, Decision, Policy, Reason};
pub use error::{Error, Position};
pub use facts::JobFacts;
pub use spec::PolicySpec;
