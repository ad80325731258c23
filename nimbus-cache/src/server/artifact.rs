//! The plain artifact API for tools: `PUT/GET/HEAD/DELETE /api/cache/{key}` in the
//! token's scope (a PUT replaces the key's entry once the new one is complete),
//! and `GET /api/usage`.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use nimbus_core::auth::{bearer_token, Audience, Principal};

use super::{body_stream, serve_entry, CacheAuth, Proxy};
use crate::error::{Error, Result};

/// Artifacts have no version: one key, one entry.
const ARTIFACT_VERSION: &str = "";

/// `PUT /api/cache/{key}`
pub async fn put(
    State(state): State<Proxy>,
    CacheAuth(scope): CacheAuth,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let content_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let entry = state
        .cache
        .reserve(&scope, &key, ARTIFACT_VERSION, content_length, true)
        .await?;
    let committed = state
        .cache
        .upload_whole(&entry, body_stream(body), content_length, true)
        .await?;
    state.wake_maintenance.notify_one();
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "key": committed.key,
            "size": committed.size,
            "sha256": committed.sha256,
        })),
    )
        .into_response())
}

/// `GET|HEAD /api/cache/{key}`
pub async fn get(
    State(state): State<Proxy>,
    CacheAuth(scope): CacheAuth,
    Path(key): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response> {
    let entry = if method == Method::HEAD {
        crate::cache::check_cache_key(&key)?;
        state
            .cache
            .index
            .lookup(
                scope.org_id,
                &scope.repo,
                &scope.restore_refs(),
                &[key.as_str()],
                ARTIFACT_VERSION,
            )
            .await?
    } else {
        state
            .cache
            .lookup(&scope, &key, &[], ARTIFACT_VERSION)
            .await?
    };
    let entry = entry.ok_or_else(|| Error::NotFound(format!("cache entry {key:?}")))?;
    serve_entry(&state, &entry, &headers, method == Method::HEAD).await
}

/// `DELETE /api/cache/{key}`
pub async fn delete(
    State(state): State<Proxy>,
    CacheAuth(scope): CacheAuth,
    Path(key): Path<String>,
) -> Result<Response> {
    state.cache.delete(&scope, &key, ARTIFACT_VERSION).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/usage`: a cache token sees its org; a JWT sees what its role allows.
pub async fn usage(State(state): State<Proxy>, headers: HeaderMap) -> Result<Response> {
    let token = bearer_token(&headers)
        .ok_or_else(|| Error::Unauthenticated("missing Authorization: Bearer <token>".into()))?;
    let org = if token.starts_with("nct1.") {
        Some(state.tokens.verify(token)?.org_id)
    } else {
        match state.jwt.verify(token, Audience::CacheProxy)? {
            Principal::Agent { .. } => {
                return Err(Error::Forbidden(
                    "agent tokens cannot read cache usage; use an org or admin token".into(),
                ))
            }
            principal => principal.org_scope(),
        }
    };
    let orgs = state.cache.usage(org).await?;
    Ok(Json(json!({"orgs": orgs})).into_response())
}
