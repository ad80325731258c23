//! Actions cache v2: `POST /twirp/github.actions.results.api.v1.CacheService/<Method>`.
//!
//! `CreateCacheEntry` reserves the key and answers a signed upload link (to
//! [`super::blob`]); `FinalizeCacheEntryUpload` checks the size of what arrived;
//! `GetCacheEntryDownloadURL` finds an entry and answers a signed download link.
//! "Not reserved" and "miss" are `ok: false` answers, as the client expects.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::error::{Error, Result};
use crate::server::{CacheAuth, Proxy};

#[derive(Debug, Deserialize)]
struct CreateRequest {
    key: String,
    #[serde(default)]
    version: String,
}

#[derive(Debug, Deserialize)]
struct FinalizeRequest {
    key: String,
    #[serde(default)]
    version: String,
    #[serde(default, alias = "sizeBytes", deserialize_with = "super::lenient_u64")]
    size_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct DownloadRequest {
    key: String,
    #[serde(default, alias = "restoreKeys")]
    restore_keys: Vec<String>,
    #[serde(default)]
    version: String,
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| Error::InvalidInput(format!("request body: {e}")))
}

/// `POST /twirp/github.actions.results.api.v1.CacheService/{method}`
pub async fn twirp(
    State(state): State<Proxy>,
    CacheAuth(scope): CacheAuth,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    match method.as_str() {
        "CreateCacheEntry" => {
            let request: CreateRequest = parse(&body)?;
            match state
                .cache
                .reserve(&scope, &request.key, &request.version, None, false)
                .await
            {
                Ok(entry) => Ok(Json(json!({
                    "ok": true,
                    "signed_upload_url": state.signed_link(&headers, "upload", entry.id),
                }))
                .into_response()),
                Err(Error::Conflict(message)) => {
                    Ok(Json(json!({"ok": false, "message": message})).into_response())
                }
                Err(error) => Err(error),
            }
        }
        "FinalizeCacheEntryUpload" => {
            let request: FinalizeRequest = parse(&body)?;
            match state
                .cache
                .finalize(&scope, &request.key, &request.version, request.size_bytes)
                .await?
            {
                Ok(entry) => {
                    state.wake_maintenance.notify_one();
                    Ok(Json(json!({"ok": true, "entry_id": entry.id.to_string()})).into_response())
                }
                Err(message) => Ok(Json(json!({"ok": false, "message": message})).into_response()),
            }
        }
        "GetCacheEntryDownloadURL" => {
            let request: DownloadRequest = parse(&body)?;
            let restore_keys: Vec<&str> = request.restore_keys.iter().map(String::as_str).collect();
            match state
                .cache
                .lookup(&scope, &request.key, &restore_keys, &request.version)
                .await?
            {
                Some(entry) => Ok(Json(json!({
                    "ok": true,
                    "signed_download_url": state.signed_link(&headers, "download", entry.id),
                    "matched_key": entry.key,
                }))
                .into_response()),
                None => Ok(Json(
                    json!({"ok": false, "signed_download_url": "", "matched_key": ""}),
                )
                .into_response()),
            }
        }
        other => Err(Error::NotFound(format!("Twirp method {other:?}"))),
    }
}
