//! Actions cache v1 (`ACTIONS_CACHE_URL` + `_apis/artifactcache/`).
//!
//! Reserve (`POST caches`) → chunks (`PATCH caches/{id}` with `Content-Range:
//! bytes S-E/*`, in parallel and any order) → commit (`POST caches/{id}` with the
//! size; the chunks must tile it exactly). Restore: `GET cache?keys=&version=`
//! answers 200 with an `archiveLocation` (a signed link) or 204.

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::cache::{PartOrder, OFFSET_RANK_BYTES};
use crate::error::{Error, Result};
use crate::index::{Entry, Part};
use crate::server::{body_stream, CacheAuth, Proxy};

/// Most entries one list answers.
const LIST_LIMIT: u32 = 100;

/// The query of a v1 restore lookup: `keys` is comma-separated, the primary key
/// first and then the restore keys (prefixes) in order; `version` defaults to empty.
#[derive(Debug, Deserialize)]
pub struct LookupQuery {
    keys: String,
    #[serde(default)]
    version: String,
}

/// The query of a v1 list: `key` is a key prefix; the token's scope's committed
/// entries that start with it are listed, newest first.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    key: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReserveRequest {
    key: String,
    #[serde(default)]
    version: String,
    #[serde(default, deserialize_with = "super::lenient_u64")]
    cache_size: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct CommitRequest {
    #[serde(deserialize_with = "super::lenient_u64")]
    size: Option<u64>,
}

fn rfc3339(millis: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn describe(entry: &Entry) -> serde_json::Value {
    json!({
        "cacheKey": entry.key,
        "scope": entry.git_ref,
        "cacheVersion": entry.version,
        "creationTime": rfc3339(entry.created_at),
    })
}

/// v1 says "too large" with a 400, which the client turns into its size message.
fn v1_error(error: Error) -> Error {
    match error {
        Error::TooLarge(message) => Error::InvalidInput(message),
        other => other,
    }
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| Error::InvalidInput(format!("request body: {e}")))
}

/// `GET /_apis/artifactcache/cache?keys=k1,k2&version=V`
pub async fn lookup(
    State(state): State<Proxy>,
    CacheAuth(scope): CacheAuth,
    Query(query): Query<LookupQuery>,
    headers: HeaderMap,
) -> Result<Response> {
    let keys: Vec<&str> = query
        .keys
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .collect();
    let Some((primary, restore)) = keys.split_first() else {
        return Err(Error::InvalidInput("keys= names no key".into()));
    };
    match state
        .cache
        .lookup(&scope, primary, restore, &query.version)
        .await?
    {
        Some(entry) => {
            let mut body = describe(&entry);
            body["archiveLocation"] = json!(state.signed_link(&headers, "download", entry.id));
            Ok(Json(body).into_response())
        }
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// `GET /_apis/artifactcache/caches?key=PREFIX`
pub async fn list(
    State(state): State<Proxy>,
    CacheAuth(scope): CacheAuth,
    Query(query): Query<ListQuery>,
) -> Result<Response> {
    let entries = state
        .cache
        .index
        .list(
            scope.org_id,
            &scope.repo,
            &scope.git_ref,
            &query.key,
            LIST_LIMIT,
        )
        .await?;
    let caches: Vec<_> = entries.iter().map(describe).collect();
    Ok(Json(json!({"totalCount": caches.len(), "artifactCaches": caches})).into_response())
}

/// `POST /_apis/artifactcache/caches` `{key, version, cacheSize}` → `{cacheId}`
pub async fn reserve(
    State(state): State<Proxy>,
    CacheAuth(scope): CacheAuth,
    body: Bytes,
) -> Result<Response> {
    let request: ReserveRequest = json_body(&body)?;
    let entry = state
        .cache
        .reserve(
            &scope,
            &request.key,
            &request.version,
            request.cache_size,
            false,
        )
        .await
        .map_err(v1_error)?;
    Ok((StatusCode::CREATED, Json(json!({"cacheId": entry.id}))).into_response())
}

/// `Content-Range: bytes S-E/*` (or `/TOTAL`) → (start, length).
fn content_range(headers: &HeaderMap) -> Result<(u64, u64)> {
    let raw = headers
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            Error::InvalidInput("a chunk needs Content-Range: bytes START-END/*".into())
        })?;
    parse_content_range(raw)
}

/// Parses a chunk's `Content-Range` value, `bytes START-END/*` (or `/TOTAL`), into
/// (start, length). Any text gets an answer, never a panic (fuzzed).
pub fn parse_content_range(raw: &str) -> Result<(u64, u64)> {
    let bad = || Error::InvalidInput(format!("Content-Range {raw:?} is not bytes START-END/*"));
    let range = raw.trim().strip_prefix("bytes ").ok_or_else(bad)?;
    let (span, _total) = range.split_once('/').ok_or_else(bad)?;
    let (start, end) = span.split_once('-').ok_or_else(bad)?;
    let start: u64 = start.trim().parse().map_err(|_| bad())?;
    let end: u64 = end.trim().parse().map_err(|_| bad())?;
    if end < start {
        return Err(bad());
    }
    // END is inclusive: bytes 0-18446744073709551615 has no length that fits.
    let length = (end - start).checked_add(1).ok_or_else(bad)?;
    Ok((start, length))
}

/// `PATCH /_apis/artifactcache/caches/{id}` with one chunk.
pub async fn upload_chunk(
    State(state): State<Proxy>,
    CacheAuth(scope): CacheAuth,
    Path(id): Path<i64>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let entry = state.cache.pending(&scope, id).await?;
    let (start, length) = match content_range(&headers) {
        Ok(range) => range,
        Err(error) => {
            state.cache.discard(&entry).await;
            return Err(error);
        }
    };
    state
        .cache
        .upload_part(
            &entry,
            Part {
                name: format!("o{start:020}"),
                start: Some(start),
                size: length,
                sha256: None,
                rank: (length >= OFFSET_RANK_BYTES)
                    .then(|| u32::try_from(start / OFFSET_RANK_BYTES).ok())
                    .flatten(),
            },
            body_stream(body),
        )
        .await
        .map_err(v1_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /_apis/artifactcache/caches/{id}` `{size}`: join the chunks and commit.
pub async fn commit(
    State(state): State<Proxy>,
    CacheAuth(scope): CacheAuth,
    Path(id): Path<i64>,
    body: Bytes,
) -> Result<Response> {
    let entry = state.cache.pending(&scope, id).await?;
    let request: CommitRequest = match json_body(&body) {
        Ok(request) => request,
        Err(error) => {
            state.cache.discard(&entry).await;
            return Err(error);
        }
    };
    let Some(size) = request.size else {
        state.cache.discard(&entry).await;
        return Err(Error::InvalidInput("commit needs the size".into()));
    };
    state
        .cache
        .commit(&entry, PartOrder::ByOffset { size }, false)
        .await
        .map_err(v1_error)?;
    state.wake_maintenance.notify_one();
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::parse_content_range;

    #[test]
    fn content_range_ends_are_bounded() {
        assert_eq!(parse_content_range("bytes 0-9/*").ok(), Some((0, 10)));
        assert_eq!(parse_content_range("bytes 5-5/100").ok(), Some((5, 1)));
        // An inclusive end of 2^64 - 1 has no length that fits: refused, no overflow.
        assert!(parse_content_range("bytes 0-18446744073709551615/*").is_err());
        for bad in [
            "",
            "bytes 9-3/*",
            "bytes x-3/*",
            "items 0-1/*",
            "bytes 0-1",
            "bytes -1/*",
        ] {
            assert!(parse_content_range(bad).is_err(), "{bad:?}");
        }
    }
}
