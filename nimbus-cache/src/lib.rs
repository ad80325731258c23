//! `nimbus-cache`: the cache proxy's library — a GitHub Actions cache (v1 and v2,
//! as the official `@actions/cache` client speaks them), a plain artifact API and
//! an OCI registry (pull-through mirror and org images),
//! on local disk or S3, with scoped tokens, budgets, eviction and an integrity scrub.
//!
//! - [`backend`]: the [`CacheBackend`] trait (streaming, staged uploads, atomic
//!   commit) and its `fs` and `s3` implementations;
//! - [`index`]: entries, sizes, last access and counters in SQLite or PostgreSQL;
//! - [`cache`]: [`Cache`], the rules every protocol shares;
//! - [`actions`]: the v1 and v2 protocols and the blob subset v2 uploads with;
//! - [`maintenance`]: eviction, abandoned uploads, scrub;
//! - [`registry`]: the OCI registry — a pull-through mirror of an upstream
//!   registry and org-owned repositories, on the same backend;
//! - [`server`]: the axum router and the service (`bins/nimbus-cache-proxy`);
//! - [`client`]: an HTTP client of the artifact API and usage report.
//!
//! Cache tokens are minted by the control plane and verified here; their format
//! lives in [`nimbus_core::cache_token`].

#![warn(missing_docs)]

pub mod actions;
pub mod backend;
pub mod cache;
pub mod client;
pub mod digest;
pub mod error;
pub mod index;
pub mod maintenance;
pub mod metrics;
pub mod registry;
pub mod server;
#[cfg(feature = "testsuite")]
pub mod testsuite;

pub use backend::{ByteStream, CacheBackend, ObjectMeta, StoredObject};
pub use cache::Cache;
pub use error::{Error, Result};
pub use index::CacheIndex;
pub use server::{Proxy, ProxyConfig};
