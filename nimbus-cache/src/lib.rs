//! `nimbus-cache`: the GitHub Actions cache and OCI pull-through cache.
//!
//! This crate holds the storage contract, [`CacheBackend`]; the `fs` and `s3`
//! backends, the Actions cache protocols, tokens and eviction land with their issue.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} not found")]
    NotFound(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("backend: {0}")]
    Backend(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A stored object's description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    pub last_modified_millis: i64,
}

/// Blob storage for cache entries. Writes become visible atomically on commit.
#[async_trait]
pub trait CacheBackend: Send + Sync {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<ObjectMeta>;
    /// Reads a whole object or `range` (start, end exclusive) of it.
    async fn get(&self, key: &str, range: Option<(u64, u64)>) -> Result<Vec<u8>>;
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>>;
    async fn delete(&self, key: &str) -> Result<()>;
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;
}
