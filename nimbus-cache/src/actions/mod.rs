//! The GitHub Actions cache protocols as the official `@actions/cache` client
//! speaks them (wire facts: docs/cache.md, "Protocols"): v2 over Twirp with signed blob links,
//! v1 under `_apis/artifactcache/`. Both are adapters over [`crate::Cache`].

pub mod blob;
pub mod v1;
pub mod v2;

use serde::{Deserialize, Deserializer};

/// protobuf JSON sends int64 as a string; accept strings and numbers.
pub(crate) fn lenient_u64<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Int(u64),
        Text(String),
    }
    match Option::<Number>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Number::Int(n)) => Ok(Some(n)),
        Some(Number::Text(text)) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("{text:?} is not a whole number"))),
    }
}
