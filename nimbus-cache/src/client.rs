//! HTTP client of the cache proxy's plain artifact API (`PUT|GET|DELETE
//! /api/cache/{key}`) and usage report (`GET /api/usage`), for tools and the
//! Python bindings. A cache token (`nimbus token cache`) scopes the entries to
//! its org, repository and ref, as it does for the Actions cache protocol.

use std::time::Duration;

use bytes::Bytes;
use nimbus_core::Secret;
use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What `put` stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    /// The key the entry was stored under.
    pub key: String,
    /// Length of the stored body, in bytes.
    pub size: u64,
    /// The sha256 of the stored bytes, lowercase hex.
    pub sha256: String,
}

/// The proxy at a base URL, called with a token.
#[derive(Debug, Clone)]
pub struct CacheClient {
    http: reqwest::Client,
    base: Url,
    token: Secret,
}

impl CacheClient {
    /// A client of the proxy at `base_url` (e.g. `http://127.0.0.1:8001`; a
    /// trailing `/` is ignored) that sends `token`, a cache token, as its bearer.
    /// Fails on a URL that does not parse or cannot take a path. Connecting times
    /// out after 5 s; requests themselves have no overall timeout.
    pub fn new(base_url: &str, token: Secret) -> Result<Self> {
        let base = Url::parse(base_url.trim_end_matches('/'))
            .map_err(|e| Error::InvalidInput(format!("cache proxy URL {base_url:?}: {e}")))?;
        if base.cannot_be_a_base() {
            return Err(Error::InvalidInput(format!(
                "cache proxy URL {base_url:?} cannot have paths"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| Error::Backend(format!("HTTP client: {e}")))?;
        Ok(CacheClient { http, base, token })
    }

    /// The proxy's base URL, without a trailing `/`.
    pub fn base_url(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// `…/api/cache/{key}`, the key one path segment whatever it holds.
    fn entry_url(&self, key: &str) -> Result<Url> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| Error::InvalidInput("the cache proxy URL cannot have paths".into()))?
            .pop_if_empty()
            .extend(["api", "cache", key]);
        Ok(url)
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<Bytes>,
    ) -> Result<reqwest::Response> {
        let mut request = self
            .http
            .request(method, url)
            .bearer_auth(self.token.expose());
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Error::Backend(format!("cache proxy at {}: {e}", self.base_url())))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
        let message = body["error"]
            .as_str()
            .unwrap_or("no error message")
            .to_string();
        Err(match status {
            StatusCode::BAD_REQUEST => Error::InvalidInput(message),
            StatusCode::UNAUTHORIZED => Error::Unauthenticated(message),
            StatusCode::FORBIDDEN => Error::Forbidden(message),
            StatusCode::NOT_FOUND => Error::NotFound(message),
            StatusCode::CONFLICT => Error::Conflict(message),
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::INSUFFICIENT_STORAGE => {
                Error::TooLarge(message)
            }
            StatusCode::TOO_MANY_REQUESTS => Error::TooMany(message),
            other => Error::Backend(format!("cache proxy answered {other}: {message}")),
        })
    }

    /// Stores `data` under `key` (replacing an entry of that key in the token's scope).
    pub async fn put(&self, key: &str, data: Bytes) -> Result<Stored> {
        let response = self
            .send(Method::PUT, self.entry_url(key)?, Some(data))
            .await?;
        response
            .json()
            .await
            .map_err(|e| Error::Backend(format!("reading the cache proxy's answer: {e}")))
    }

    /// The entry's bytes, or `None` when the token's scopes hold no such entry.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        match self.send(Method::GET, self.entry_url(key)?, None).await {
            Ok(response) => response
                .bytes()
                .await
                .map(Some)
                .map_err(|e| Error::Backend(format!("reading entry {key:?}: {e}"))),
            Err(Error::NotFound(_)) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Removes the entry (in the token's scope); a missing one is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.send(Method::DELETE, self.entry_url(key)?, None).await {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// `GET /api/usage`: bytes, entries, hits, misses and evictions per org the
    /// token may see.
    pub async fn usage(&self) -> Result<serde_json::Value> {
        let mut url = self.base.clone();
        url.set_path("/api/usage");
        self.send(Method::GET, url, None)
            .await?
            .json()
            .await
            .map_err(|e| Error::Backend(format!("reading the cache proxy's answer: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_path_segment() {
        let client = CacheClient::new("http://127.0.0.1:8001/", Secret::new("t")).expect("client");
        let url = client.entry_url("deps/linux?x#y z").expect("url");
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8001/api/cache/deps%2Flinux%3Fx%23y%20z"
        );
        assert!(CacheClient::new("not a url", Secret::new("t")).is_err());
    }
}
