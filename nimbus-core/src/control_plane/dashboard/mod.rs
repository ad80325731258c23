//! `GET /dashboard`: the fleet at a glance, rendered on the server (no build
//! step; the one script and stylesheet are in this directory and served from
//! `/dashboard/assets/`). Per-org figures, jobs and durations per day, the
//! metadata-key picker, recent jobs with their live log (the logging pipeline's
//! SSE, relayed), and cache usage per org. docs/dashboard.md describes it.
//!
//! Sign-in: an API token posted to `/dashboard/login` is checked and kept in an
//! HttpOnly, SameSite=Strict cookie scoped to `/dashboard`; an org's token sees
//! its org only, as on the API (each figure comes from the API's calls with the
//! signed-in principal). A bearer token works too, for tools.

mod chart;
mod page;

use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::Markup;
use serde::Deserialize;
use time::OffsetDateTime;

use super::{AppState, HistogramQuery, OrgsQuery};
use crate::auth::{Audience, Principal};
use crate::error::{Error, Result};
use crate::store::JobFilter;

/// The sign-in cookie.
const COOKIE: &str = "nimbus_dashboard";
/// Days the page covers unless `days` says otherwise.
const DEFAULT_DAYS: u32 = 14;
/// Recent jobs listed.
const RECENT_JOBS: u32 = 25;
/// How long the dashboard waits for the cache proxy.
const CACHE_TIMEOUT: Duration = Duration::from_secs(2);
/// Lifetime of the tokens the dashboard mints for the pipeline and the cache
/// proxy on behalf of the signed-in principal (one request, or one log follow's start).
const RELAY_TOKEN_TTL: Duration = Duration::from_secs(60);

/// The page may load its own script, stylesheet and nothing else; it may not be
/// framed (clickjacking); its referrer (job ids in URLs) stays on this site, while
/// its own form posts still carry the `Origin` the sign-in checks.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn html(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup.into_string()).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// The token of a request: its bearer token, else the sign-in cookie.
fn credential(headers: &HeaderMap) -> Option<&str> {
    crate::auth::bearer_token(headers).or_else(|| {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .find_map(|pair| {
                let (name, value) = pair.trim().split_once('=')?;
                (name == COOKIE && !value.is_empty()).then_some(value)
            })
    })
}

/// Who signs in with `token`: an admin or an org the control plane knows.
async fn principal_of(state: &AppState, token: &str) -> Result<Principal> {
    let principal = state.keys.verify(token, Audience::ControlPlane)?;
    match &principal {
        Principal::Agent { .. } => Err(Error::Forbidden(
            "agent tokens cannot read the dashboard; sign in with an org or admin token".into(),
        )),
        Principal::Org { org_id, .. } if !state.org_exists(*org_id).await? => Err(
            Error::Forbidden(format!("unknown org {org_id} in the token")),
        ),
        _ => Ok(principal),
    }
}

async fn principal(state: &AppState, headers: &HeaderMap) -> Result<Principal> {
    let token = credential(headers)
        .ok_or_else(|| Error::Unauthenticated("sign in with an API token".into()))?;
    principal_of(state, token).await
}

fn describe(who: &Principal) -> String {
    match who {
        Principal::Admin { sub } => format!("{sub} (admin)"),
        Principal::Org { org_id, sub } => format!("{sub} (org {org_id})"),
        Principal::Agent { agent_id } => format!("agent {agent_id}"),
    }
}

/// A token for another service with the principal's own role and org.
fn relay_token(state: &AppState, who: &Principal, audience: Audience) -> Result<String> {
    let (sub, org_id) = match who {
        Principal::Admin { sub } => (sub.as_str(), None),
        Principal::Org { org_id, sub } => (sub.as_str(), Some(*org_id)),
        Principal::Agent { agent_id } => (agent_id.as_str(), None),
    };
    state
        .keys
        .mint_for(sub, who.role(), org_id, &[audience], RELAY_TOKEN_TTL)
}

/// A failed request as a page: sign-in for 401, a message otherwise.
fn refusal(error: &Error) -> Response {
    let status = super::http::status_of(error.kind());
    if status == StatusCode::UNAUTHORIZED {
        let message = credential_message(error);
        return html(status, page::login(message.as_deref()));
    }
    html(status, page::problem(None, &error.to_string()))
}

fn credential_message(error: &Error) -> Option<String> {
    match error {
        Error::Unauthenticated(message) if message == "sign in with an API token" => None,
        other => Some(format!("{other}")),
    }
}

#[derive(Debug, Default, Deserialize)]
pub(in crate::control_plane) struct PageParams {
    metadata_key: Option<String>,
    org_id: Option<String>,
    days: Option<String>,
    log: Option<String>,
}

fn number<T: std::str::FromStr>(name: &str, raw: Option<&str>) -> Result<Option<T>> {
    raw.filter(|raw| !raw.is_empty())
        .map(|raw| {
            raw.trim()
                .parse()
                .map_err(|_| Error::invalid(format!("{name}={raw:?} is not a valid number")))
        })
        .transpose()
}

/// `GET /dashboard`.
pub(in crate::control_plane) async fn dashboard(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::extract::Query(params): axum::extract::Query<PageParams>,
) -> Response {
    let who = match principal(&state, &headers).await {
        Ok(who) => who,
        Err(error) => return refusal(&error),
    };
    match overview(&state, &who, &params).await {
        Ok(markup) => html(StatusCode::OK, markup),
        Err(error) => html(
            super::http::status_of(error.kind()),
            page::problem(Some(&describe(&who)), &error.to_string()),
        ),
    }
}

async fn overview(state: &AppState, who: &Principal, params: &PageParams) -> Result<Markup> {
    let org_filter = number::<i64>("org_id", params.org_id.as_deref())?;
    let days = number::<u32>("days", params.days.as_deref())?.unwrap_or(DEFAULT_DAYS);
    let follow = number::<i64>("log", params.log.as_deref())?;
    let today = OffsetDateTime::now_utc().date().midnight().assume_utc();
    let since = today - time::Duration::days(i64::from(days.max(1)) - 1);
    let daily = state.daily_figures(who, org_filter, days).await?;
    let orgs = state
        .observability_orgs(
            who,
            &OrgsQuery {
                org_id: org_filter,
                since: Some(since),
                ..OrgsQuery::default()
            },
        )
        .await?;
    let keys = state.metadata_keys(who, org_filter, Some(since)).await?;
    let key = params.metadata_key.as_deref().filter(|key| !key.is_empty());
    let histogram = match key {
        Some(key) => Some(
            state
                .metadata_histogram(
                    who,
                    &HistogramQuery {
                        key: key.to_string(),
                        org_id: org_filter,
                        since: Some(since),
                        until: None,
                    },
                )
                .await?,
        ),
        None => None,
    };
    let jobs = state
        .jobs(
            who,
            JobFilter {
                org_id: org_filter,
                limit: RECENT_JOBS,
                ..JobFilter::default()
            },
        )
        .await?
        .jobs;
    if let Some(job) = follow {
        // Following a job the principal cannot see is "not found", as on the API.
        state.job(who, job).await?;
    }
    let cache = cache_usage(state, who).await;
    let who_text = describe(who);
    Ok(page::overview(&page::Overview {
        who: &who_text,
        days,
        org_filter,
        orgs: &orgs,
        daily: &daily,
        keys: &keys,
        histogram: histogram.as_ref(),
        jobs: &jobs,
        follow,
        cache,
    }))
}

/// The cache proxy's usage per org, as the principal may see it.
async fn cache_usage(
    state: &AppState,
    who: &Principal,
) -> std::result::Result<Vec<page::CacheUsage>, String> {
    #[derive(Deserialize)]
    struct Usage {
        orgs: Vec<page::CacheUsage>,
    }
    let url = format!("{}/api/usage", state.config.cache_url);
    let token = relay_token(state, who, Audience::CacheProxy).map_err(|e| e.to_string())?;
    let client = reqwest::Client::builder()
        .timeout(CACHE_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let response = client
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| {
            format!(
                "the cache proxy at {} did not answer ({e})",
                state.config.cache_url
            )
        })?;
    if !response.status().is_success() {
        return Err(format!("the cache proxy answered {}", response.status()));
    }
    response
        .json::<Usage>()
        .await
        .map(|usage| usage.orgs)
        .map_err(|e| format!("the cache proxy's answer was unreadable ({e})"))
}

#[derive(Debug, Deserialize)]
pub(in crate::control_plane) struct LoginForm {
    token: String,
}

/// `POST /dashboard/login`: checks the token and keeps it in the cookie.
pub(in crate::control_plane) async fn login(
    State(state): State<AppState>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    form: std::result::Result<Form<LoginForm>, FormRejection>,
) -> Response {
    // Another site's page cannot sign a visitor in (with the other site's
    // token, showing that org's figures as if they were the visitor's).
    if !same_origin(&headers) {
        return html(
            StatusCode::FORBIDDEN,
            page::login(Some("Sign in from the dashboard's own page.")),
        );
    }
    let form = match form {
        Ok(Form(form)) => Some(form),
        // An oversized form is refused as such, not read as a missing token.
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return html(
                StatusCode::PAYLOAD_TOO_LARGE,
                page::login(Some("The sign-in form is too large.")),
            );
        }
        Err(_) => None,
    };
    let Some(token) = form
        .map(|form| form.token.trim().to_string())
        .filter(|token| !token.is_empty())
    else {
        return html(
            StatusCode::UNAUTHORIZED,
            page::login(Some("Paste an API token to sign in.")),
        );
    };
    if let Err(error) = principal_of(&state, &token).await {
        let status = super::http::status_of(error.kind());
        return html(status, page::login(Some(&error.to_string())));
    }
    // In production (behind its declared TLS proxy), or when a declared proxy
    // says the request came over TLS, the cookie is marked Secure.
    let peer = peer.map(|axum::Extension(axum::extract::ConnectInfo(peer))| peer);
    let secure =
        state.config.production || state.config.trusted_proxies.origin(peer, &headers).https;
    let cookie = format!(
        "{COOKIE}={token}; Path=/dashboard; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    );
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static("/dashboard"));
    match HeaderValue::from_str(&cookie) {
        Ok(value) => {
            headers.insert(header::SET_COOKIE, value);
            response
        }
        Err(_) => html(
            StatusCode::UNAUTHORIZED,
            page::login(Some("That token has characters no token has.")),
        ),
    }
}

/// Whether a form post comes from a page of this host: browsers send `Origin`
/// with every POST; a request without one (a script, curl) is not a browser's
/// cross-site post.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, host)| host);
    matches!((origin_host, host), (Some(origin), Some(host)) if origin.eq_ignore_ascii_case(host))
}

/// `POST /dashboard/logout`: forgets the cookie.
pub(in crate::control_plane) async fn logout() -> Response {
    let mut response = html(StatusCode::OK, page::login(Some("Signed out.")));
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "nimbus_dashboard=; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}

/// `GET /dashboard/assets/{file}`: the script and the stylesheet.
pub(in crate::control_plane) async fn asset(Path(file): Path<String>) -> Response {
    let (body, content_type) = match file.as_str() {
        "dashboard.js" => (
            include_str!("dashboard.js"),
            "text/javascript; charset=utf-8",
        ),
        "dashboard.css" => (include_str!("dashboard.css"), "text/css; charset=utf-8"),
        _ => return Error::not_found(format!("asset {file}")).into_response(),
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=300"),
    );
    response
}

/// `GET /dashboard/jobs/{id}/log`: the job's live log, relayed from the logging
/// pipeline's SSE follow with a token of the signed-in principal.
pub(in crate::control_plane) async fn follow_log(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response> {
    let who = principal(&state, &headers).await?;
    let id = super::http::parse_job_id(&id)?;
    state.job(&who, id).await?;
    let token = relay_token(&state, &who, Audience::LoggingPipeline)?;
    let url = format!("{}/api/logs/{id}/follow", state.config.logs_url);
    let upstream = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()?
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| {
            Error::Unavailable(format!(
                "the logging pipeline at {} did not answer: {e}",
                state.config.logs_url
            ))
        })?;
    if !upstream.status().is_success() {
        return Err(Error::Unavailable(format!(
            "the logging pipeline answered {} to the follow of job {id}",
            upstream.status()
        )));
    }
    let mut response = Response::new(Body::from_stream(upstream.bytes_stream()));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}
