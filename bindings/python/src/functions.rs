//! The free functions: webhook signatures, metadata labels, tokens.

use std::collections::BTreeMap;
use std::time::Duration;

use nimbus_core::auth::{JwtKeys, Role};
use nimbus_core::Secret;
use pyo3::prelude::*;

use crate::errors::{core_error, InvalidInput};

/// Text or bytes from Python, as bytes (UTF-8 for text).
#[derive(FromPyObject)]
pub enum Bytes {
    Text(String),
    Raw(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Text(text) => text.as_bytes(),
            Bytes::Raw(raw) => raw,
        }
    }
}

/// Whether `header` (the `X-Hub-Signature-256` value, `sha256=<hex>`) is GitHub's
/// signature of `body` with the webhook `secret`. Compares in constant time; a
/// missing or malformed header is `False`.
#[pyfunction]
#[pyo3(signature = (secret, body, header))]
pub fn verify_github_signature(secret: Bytes, body: Bytes, header: Option<&str>) -> bool {
    nimbus_core::webhook::verify_signature(secret.as_slice(), body.as_slice(), header).is_ok()
}

/// The metadata runner labels carry: `param:KEY=VALUE` and `meta:KEY=VALUE` become
/// `{KEY: VALUE}` (a later label with the same key wins); other labels are ignored.
#[pyfunction]
pub fn parse_metadata_labels(labels: Vec<String>) -> BTreeMap<String, String> {
    nimbus_core::domain::metadata_from_labels(&labels)
        .into_iter()
        .collect()
}

/// A control-plane JWT signed with `secret` (the control plane's
/// `NIMBUS_JWT_SECRET`): `role` is `admin`, `agent` or `org` (which needs
/// `org_id`), valid for `ttl` seconds, for the role's default audiences.
#[pyfunction]
#[pyo3(signature = (secret, role, org_id=None, ttl=3600, subject=None))]
pub fn mint_token(
    secret: &str,
    role: &str,
    org_id: Option<i64>,
    ttl: u64,
    subject: Option<String>,
) -> PyResult<String> {
    if secret.is_empty() {
        return Err(InvalidInput::new_err("the signing secret is empty"));
    }
    let role: Role = role.parse().map_err(core_error)?;
    if role != Role::Org && org_id.is_some() {
        return Err(InvalidInput::new_err("org_id only goes with role=\"org\""));
    }
    if ttl == 0 {
        return Err(InvalidInput::new_err("ttl must be at least one second"));
    }
    let subject = subject.unwrap_or_else(|| match org_id {
        Some(id) => format!("org-{id}"),
        None => role.to_string(),
    });
    JwtKeys::new(&Secret::new(secret.to_string()))
        .mint(&subject, role, org_id, Duration::from_secs(ttl))
        .map_err(core_error)
}

/// A cache token for the cache proxy (`ACTIONS_RUNTIME_TOKEN`), signed with
/// `secret` (`NIMBUS_CACHE_SHARED_SECRET`): org `org_id`, repository `repo`
/// (`OWNER/NAME`), saves to `ref`, restores from `ref` then `default_ref`;
/// `read_only` tokens cannot save. Valid for `ttl` seconds.
#[pyfunction]
#[pyo3(signature = (secret, org_id, repo, *, r#ref="refs/heads/main", default_ref="refs/heads/main", read_only=false, ttl=21600))]
pub fn mint_cache_token(
    secret: &str,
    org_id: i64,
    repo: &str,
    r#ref: &str,
    default_ref: &str,
    read_only: bool,
    ttl: u64,
) -> PyResult<String> {
    use nimbus_core::cache_token::{CachePermission, CacheTokenKeys};
    if secret.is_empty() {
        return Err(InvalidInput::new_err("the signing secret is empty"));
    }
    if ttl == 0 {
        return Err(InvalidInput::new_err("ttl must be at least one second"));
    }
    let permission = if read_only {
        CachePermission::Read
    } else {
        CachePermission::Write
    };
    CacheTokenKeys::new(&Secret::new(secret.to_string()))
        .mint(
            org_id,
            repo,
            r#ref,
            default_ref,
            permission,
            Duration::from_secs(ttl),
        )
        .map_err(core_error)
}
