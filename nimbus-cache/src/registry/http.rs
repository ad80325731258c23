//! The `/v2/` API: the distribution spec's wire form of [`Registry`]'s
//! operations. Every answer carries `Docker-Distribution-Api-Version:
//! registry/2.0`; every failure is `{"errors": [{"code", "message"}]}` with the
//! spec's status, and a `401` carries the `WWW-Authenticate: Bearer` challenge
//! that sends Docker clients to `GET /v2/token`.

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::json;

use super::manifest::MAX_MANIFEST_BYTES;
use super::name::{Digest, Reference, Repository};
use super::{BlobRead, Caller, OciCode, OciError, UploadStarted};
use crate::error::Error;
use crate::server::{body_stream, parse_range, Proxy, Unsatisfiable};

/// The `service` of the challenge and of the token endpoint.
pub const SERVICE: &str = "nimbus-registry";

/// Most tags or repositories one listing answers.
const MAX_LIST: u32 = 1000;

const API_VERSION: (&str, &str) = ("docker-distribution-api-version", "registry/2.0");

/// A registry answer: any failure becomes the spec's JSON.
pub struct Reply(Result<Response, Failure>);

/// A failure and the base URL its challenge points at.
pub struct Failure {
    error: Error,
    realm: String,
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = match self.0 {
            Ok(response) => response,
            Err(failure) => failure.into_response(),
        };
        response.headers_mut().insert(
            HeaderName::from_static(API_VERSION.0),
            HeaderValue::from_static(API_VERSION.1),
        );
        response
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let oci = match self.error {
            Error::Registry(oci) => oci,
            other => {
                let code = match &other {
                    Error::NotFound(_) => OciCode::NameUnknown,
                    Error::InvalidInput(_) | Error::Truncated(_) => OciCode::BlobUploadInvalid,
                    Error::Conflict(_) => OciCode::BlobUploadInvalid,
                    Error::Unauthenticated(_) => OciCode::Unauthorized,
                    Error::Forbidden(_) => OciCode::Denied,
                    Error::TooLarge(_) => OciCode::SizeInvalid,
                    Error::TooMany(_) => OciCode::TooManyRequests,
                    _ => OciCode::Unavailable,
                };
                if code == OciCode::Unavailable {
                    tracing::error!(error = %other, "registry request failed");
                }
                OciError::new(code, other.to_string())
            }
        };
        let status = StatusCode::from_u16(oci.code.status()).unwrap_or(StatusCode::BAD_REQUEST);
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            json!({"errors": [{"code": oci.code.as_str(), "message": oci.message, "detail": null}]})
                .to_string(),
        )
            .into_response();
        if oci.code == OciCode::Unauthorized {
            let mut challenge = format!(
                "Bearer realm=\"{}/v2/token\",service=\"{SERVICE}\"",
                self.realm
            );
            if let Some(scope) = &oci.scope {
                challenge.push_str(&format!(",scope=\"{scope}\",error=\"insufficient_scope\""));
            }
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, value);
            }
        }
        if let Some(offset) = oci.offset {
            if let Ok(value) = HeaderValue::from_str(&range_value(offset)) {
                response.headers_mut().insert(header::RANGE, value);
            }
        }
        response
    }
}

/// `Range: 0-N` of an upload of `size` bytes (`0-0` when empty, as the
/// distribution registry answers).
fn range_value(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// Runs `work` with the caller, turning failures into the spec's answers.
async fn reply<F, Fut>(proxy: &Proxy, headers: &HeaderMap, work: F) -> Reply
where
    F: FnOnce(super::Registry, Caller) -> Fut,
    Fut: std::future::Future<Output = Result<Response, Error>>,
{
    let realm = proxy.base_url(headers);
    let result = match proxy.registry() {
        None => Err(Error::Registry(OciError::new(
            OciCode::Unsupported,
            "this cache proxy serves no registry",
        ))),
        Some(registry) => match registry.authority().caller(authorization(headers)) {
            Ok(caller) => work(registry.clone(), caller).await,
            Err(error) => Err(Error::Registry(error)),
        },
    };
    Reply(result.map_err(|error| Failure { error, realm }))
}

/// `GET /v2/`: 200 for any valid credential, else the challenge.
pub async fn base(State(proxy): State<Proxy>, headers: HeaderMap) -> Reply {
    reply(&proxy, &headers, |_, _| async { Ok(Json::ok(json!({}))) }).await
}

struct Json;

impl Json {
    fn ok(value: serde_json::Value) -> Response {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            value.to_string(),
        )
            .into_response()
    }
}

/// `GET /v2/token?service=…&scope=…`: a registry token for Nimbus credentials
/// (Basic with an org or admin token, or a cache token, as the password).
pub async fn token(
    State(proxy): State<Proxy>,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let realm = proxy.base_url(&headers);
    let Some(registry) = proxy.registry() else {
        return Reply(Err(Failure {
            error: Error::Registry(OciError::new(
                OciCode::Unsupported,
                "this cache proxy serves no registry",
            )),
            realm,
        }))
        .into_response();
    };
    let result = registry
        .authority()
        .caller(authorization(&headers))
        .and_then(|caller| {
            let scopes: Vec<String> = params
                .iter()
                .filter(|(key, _)| key == "scope")
                .map(|(_, value)| value.clone())
                .take(16)
                .collect();
            registry.authority().mint(caller.identity(), &scopes)
        });
    match result {
        Ok(token) => {
            let issued = time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            Json::ok(json!({
                "token": token,
                "access_token": token,
                "expires_in": super::auth::TOKEN_TTL_SECS,
                "issued_at": issued,
            }))
        }
        Err(error) => {
            // The token endpoint itself asks for Basic credentials.
            let mut response = Reply(Err(Failure {
                error: Error::Registry(error),
                realm,
            }))
            .into_response();
            if response.status() == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"nimbus-registry\""),
                );
            }
            response
        }
    }
}

/// The pagination query of `GET /v2/_catalog`: at most `n` names (default 100,
/// clamped to 1..=1000), those after `last`.
#[derive(Debug, serde::Deserialize)]
pub struct ListQuery {
    n: Option<u32>,
    last: Option<String>,
}

/// `GET /v2/_catalog`: the repositories the caller may pull.
pub async fn catalog(
    State(proxy): State<Proxy>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Reply {
    reply(&proxy, &headers, |registry, caller| async move {
        let limit = query.n.unwrap_or(100).clamp(1, MAX_LIST);
        let names = registry
            .catalog(&caller, query.last.as_deref(), limit)
            .await?;
        Ok(Json::ok(json!({"repositories": names})))
    })
    .await
}

/// What a `/v2/{path}` names.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    Tags(&'a str),
    Manifest(&'a str, &'a str),
    Uploads(&'a str, Option<&'a str>),
    Blob(&'a str, &'a str),
}

fn target(path: &str) -> Option<Target<'_>> {
    let last_segment = |rest: &str| !rest.is_empty() && !rest.contains('/');
    if let Some(name) = path.strip_suffix("/tags/list") {
        return Some(Target::Tags(name));
    }
    if let Some((name, reference)) = path.rsplit_once("/manifests/") {
        if last_segment(reference) {
            return Some(Target::Manifest(name, reference));
        }
    }
    if let Some(name) = path
        .strip_suffix("/blobs/uploads")
        .or_else(|| path.strip_suffix("/blobs/uploads/"))
    {
        return Some(Target::Uploads(name, None));
    }
    if let Some((name, id)) = path.rsplit_once("/blobs/uploads/") {
        if last_segment(id) {
            return Some(Target::Uploads(name, Some(id)));
        }
    }
    if let Some((name, digest)) = path.rsplit_once("/blobs/") {
        if last_segment(digest) {
            return Some(Target::Blob(name, digest));
        }
    }
    None
}

fn query_value<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Every `/v2/{name}/…` request.
pub async fn dispatch(
    State(proxy): State<Proxy>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
    body: Body,
) -> Reply {
    let base = proxy.base_url(&headers);
    let request_headers = headers.clone();
    reply(&proxy, &request_headers, |registry, caller| async move {
        // The raw path: names, tags and digests never hold '%', so an encoded
        // byte (a slash, a dot) is refused, never decoded into another name.
        let path = uri.path().strip_prefix("/v2/").unwrap_or("");
        if path.contains('%') {
            return Err(Error::Registry(OciError::new(
                OciCode::NameInvalid,
                "percent-encoded bytes are not allowed in registry paths",
            )));
        }
        let target = target(path).ok_or_else(|| {
            Error::Registry(OciError::new(OciCode::NameUnknown, "no such registry route"))
        })?;
        let name = match &target {
            Target::Tags(name) | Target::Manifest(name, _) | Target::Uploads(name, _) | Target::Blob(name, _) => *name,
        };
        let repository = Repository::parse(name)?;
        let head = method == Method::HEAD;
        match (target, method.clone()) {
            (Target::Tags(_), Method::GET) => {
                let limit = query_value(&params, "n").and_then(|n| n.parse().ok()).unwrap_or(MAX_LIST).clamp(1, MAX_LIST);
                let last = query_value(&params, "last");
                let tags = registry.tags(&caller, &repository, last, limit).await?;
                Ok(Json::ok(json!({"name": repository.as_str(), "tags": tags})))
            }
            (Target::Manifest(_, reference), Method::GET | Method::HEAD) => {
                let reference = Reference::parse(reference)?;
                let manifest = registry.manifest(&caller, &repository, &reference).await?;
                let length = manifest.body.len();
                let body = if head { Body::empty() } else { Body::from(manifest.body) };
                Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_TYPE, manifest.media_type)
                    .header(header::CONTENT_LENGTH, length)
                    .header("docker-content-digest", manifest.digest.as_str())
                    .header(header::ETAG, format!("\"{}\"", manifest.digest))
                    .body(body)
                    .map_err(|e| Error::Backend(e.to_string()))
            }
            (Target::Manifest(_, reference), Method::PUT) => {
                let reference = Reference::parse(reference)?;
                let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
                let bytes = read_manifest(body).await?;
                let digest = registry.put_manifest(&caller, &repository, &reference, content_type, bytes).await?;
                created(&base, &format!("/v2/{repository}/manifests/{digest}"), &digest, None)
            }
            (Target::Blob(_, digest), Method::GET | Method::HEAD) => {
                let digest = Digest::parse(digest)?;
                blob_response(&registry, &caller, &repository, &digest, &headers, head).await
            }
            (Target::Uploads(_, None), Method::POST) => {
                let mount = match (query_value(&params, "mount"), query_value(&params, "from")) {
                    (Some(digest), Some(from)) => Some((Digest::parse(digest)?, from)),
                    _ => None,
                };
                let monolithic = query_value(&params, "digest").map(Digest::parse).transpose()?;
                match registry.start_upload(&caller, &repository, mount).await? {
                    UploadStarted::Mounted(digest) => {
                        created(&base, &format!("/v2/{repository}/blobs/{digest}"), &digest, None)
                    }
                    UploadStarted::Started { id } => match monolithic {
                        Some(digest) => {
                            let digest = registry.finish(&caller, &repository, &id, &digest, Some(body_stream(body))).await?;
                            created(&base, &format!("/v2/{repository}/blobs/{digest}"), &digest, None)
                        }
                        None => upload_status(&base, &repository, &id, 0, StatusCode::ACCEPTED),
                    },
                }
            }
            (Target::Uploads(_, Some(id)), Method::PATCH) => {
                let range = match headers.get(header::CONTENT_RANGE).and_then(|v| v.to_str().ok()) {
                    Some(value) => Some(parse_content_range(value)?),
                    None => None,
                };
                let size = registry.append(&caller, &repository, id, range, body_stream(body)).await?;
                upload_status(&base, &repository, id, size, StatusCode::ACCEPTED)
            }
            (Target::Uploads(_, Some(id)), Method::PUT) => {
                let digest = query_value(&params, "digest").ok_or_else(|| {
                    Error::Registry(OciError::new(OciCode::DigestInvalid, "finishing an upload needs ?digest="))
                })?;
                let digest = Digest::parse(digest)?;
                let digest = registry.finish(&caller, &repository, id, &digest, Some(body_stream(body))).await?;
                created(&base, &format!("/v2/{repository}/blobs/{digest}"), &digest, None)
            }
            (Target::Uploads(_, Some(id)), Method::GET) => {
                let size = registry.upload_offset(&caller, &repository, id).await?;
                upload_status(&base, &repository, id, size, StatusCode::NO_CONTENT)
            }
            (Target::Uploads(_, Some(id)), Method::DELETE) => {
                registry.cancel(&caller, &repository, id).await?;
                Ok(StatusCode::NO_CONTENT.into_response())
            }
            (Target::Manifest(..) | Target::Blob(..), Method::DELETE) => Err(Error::Registry(OciError::new(
                OciCode::Unsupported,
                "deleting is not supported: untagged manifests and unreferenced blobs are collected",
            ))),
            _ => Err(Error::Registry(OciError::new(
                OciCode::Unsupported,
                format!("{method} is not supported on this path"),
            ))),
        }
    })
    .await
}

/// `Content-Range: START-END` (inclusive) of a chunk (fuzzed: any value gets an answer).
pub fn parse_content_range(value: &str) -> Result<(u64, u64), Error> {
    let value = value
        .trim()
        .trim_start_matches("bytes ")
        .trim_start_matches("bytes=");
    let value = value.split('/').next().unwrap_or("");
    let parsed = value
        .split_once('-')
        .and_then(|(start, end)| {
            Some((
                start.trim().parse::<u64>().ok()?,
                end.trim().parse::<u64>().ok()?,
            ))
        })
        .filter(|(start, end)| end >= start);
    parsed.ok_or_else(|| {
        let mut error = OciError::new(
            OciCode::RangeInvalid,
            format!("invalid Content-Range {value:?}: expected START-END"),
        );
        error.offset = None;
        Error::Registry(error)
    })
}

async fn read_manifest(body: Body) -> Result<Vec<u8>, Error> {
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Error::Truncated(e.to_string()))?;
        if bytes.len() + chunk.len() > MAX_MANIFEST_BYTES {
            return Err(Error::Registry(OciError::new(
                OciCode::SizeInvalid,
                format!("manifests are at most {MAX_MANIFEST_BYTES} bytes"),
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

fn created(
    base: &str,
    location: &str,
    digest: &Digest,
    _range: Option<u64>,
) -> Result<Response, Error> {
    Response::builder()
        .status(StatusCode::CREATED)
        .header(header::LOCATION, format!("{base}{location}"))
        .header("docker-content-digest", digest.as_str())
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .map_err(|e| Error::Backend(e.to_string()))
}

fn upload_status(
    base: &str,
    repository: &Repository,
    id: &str,
    size: u64,
    status: StatusCode,
) -> Result<Response, Error> {
    Response::builder()
        .status(status)
        .header(
            header::LOCATION,
            format!("{base}/v2/{repository}/blobs/uploads/{id}"),
        )
        .header(header::RANGE, range_value(size))
        .header("docker-upload-uuid", id)
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .map_err(|e| Error::Backend(e.to_string()))
}

async fn blob_response(
    registry: &super::Registry,
    caller: &Caller,
    repository: &Repository,
    digest: &Digest,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, Error> {
    // Ranges are resolved against the stored size; a first pull-through read
    // streams whole.
    let known = registry.index().linked_blob(repository, digest).await?;
    let range = match known {
        Some(size) => match parse_range(headers, size) {
            Ok(range) => range,
            Err(Unsatisfiable) => {
                let mut response = Response::builder()
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                    .body(Body::empty())
                    .map_err(|e| Error::Backend(e.to_string()))?;
                response
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
                return Ok(response);
            }
        },
        None => None,
    };
    let BlobRead {
        digest,
        size,
        range,
        body,
    } = registry
        .blob(caller, repository, digest, range, head)
        .await?;
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header("docker-content-digest", digest.as_str())
        .header(header::ETAG, format!("\"{digest}\""))
        .header(header::ACCEPT_RANGES, "bytes");
    match (range, size) {
        (Some(range), Some(size)) => {
            builder = builder
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_LENGTH, range.end - range.start)
                .header(
                    header::CONTENT_RANGE,
                    format!(
                        "bytes {}-{}/{size}",
                        range.start,
                        range.end.saturating_sub(1)
                    ),
                );
        }
        (_, Some(size)) => {
            builder = builder
                .status(StatusCode::OK)
                .header(header::CONTENT_LENGTH, size)
        }
        (_, None) => builder = builder.status(StatusCode::OK),
    }
    let body = if head {
        Body::empty()
    } else {
        Body::from_stream(body)
    };
    builder
        .body(body)
        .map_err(|e| Error::Backend(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_targets() {
        assert_eq!(
            target("org-1/app/manifests/latest"),
            Some(Target::Manifest("org-1/app", "latest"))
        );
        assert_eq!(
            target("org-1/app/tags/list"),
            Some(Target::Tags("org-1/app"))
        );
        assert_eq!(
            target("org-1/app/blobs/uploads/"),
            Some(Target::Uploads("org-1/app", None))
        );
        assert_eq!(
            target("org-1/app/blobs/uploads/reg-1"),
            Some(Target::Uploads("org-1/app", Some("reg-1")))
        );
        assert_eq!(
            target("org-1/blobs/blobs/sha256:x"),
            Some(Target::Blob("org-1/blobs", "sha256:x"))
        );
        assert_eq!(
            target("org-1/manifests/x/manifests/v1"),
            Some(Target::Manifest("org-1/manifests/x", "v1"))
        );
        assert_eq!(target("org-1/app"), None);
        assert_eq!(target("org-1/app/manifests/"), None);
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-99").ok(), Some((0, 99)));
        assert_eq!(
            parse_content_range("bytes 100-199/*").ok(),
            Some((100, 199))
        );
        assert!(parse_content_range("9-3").is_err());
        assert!(parse_content_range("x").is_err());
    }
}
