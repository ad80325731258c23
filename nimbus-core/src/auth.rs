//! API authentication: HS256 JWTs signed with `NIMBUS_JWT_SECRET`.
//!
//! Claims are `sub`, `role` (`admin` | `agent` | `org`), `org_id` (required for
//! `org`), `aud` (the services the token is for), `iat` and `exp`. Only HS256 is
//! accepted: `alg: none` and every other algorithm are refused before the signature
//! is even looked at. Each service accepts only tokens naming it in `aud`, so a
//! token minted for one service is worth nothing at another.
//!
//! Log ingest tokens ([`IngestScope`]) are JWTs too, minted per lease by the control
//! plane: they name one job, its org and repository, the agent holding the lease
//! and the range of line numbers that lease may write, and nothing else. They carry
//! no `role`, so no service takes one for an API token, and their audience is the
//! pipeline's ingest alone.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::config::Secret;
use crate::domain::OrgId;
use crate::error::{Error, Result};

/// What a token lets its bearer do (the `role` claim).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Operators: everything, every org.
    Admin,
    /// Host agents: lease, heartbeat and complete jobs.
    Agent,
    /// One organisation: its own jobs and analytics only.
    Org,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Admin => "admin",
            Role::Agent => "agent",
            Role::Org => "org",
        })
    }
}

impl FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "admin" => Ok(Role::Admin),
            "agent" => Ok(Role::Agent),
            "org" => Ok(Role::Org),
            other => Err(Error::invalid(format!(
                "unknown role {other:?}; expected admin, agent or org"
            ))),
        }
    }
}

impl Role {
    /// The services a token of this role is for unless minted for others: admins
    /// and orgs read from every service; an agent talks to the control plane only
    /// (its job's logs go out with the lease's ingest token, its cache requests
    /// with the lease's cache token).
    pub fn default_audiences(self) -> &'static [Audience] {
        match self {
            Role::Admin | Role::Org => &Audience::ALL,
            Role::Agent => &[Audience::ControlPlane],
        }
    }
}

/// The service a token is for (`aud`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Audience {
    /// `nimbus-control-plane`: the API, job queue and dashboard.
    ControlPlane,
    /// `nimbus-cache-proxy`: the build cache.
    CacheProxy,
    /// `nimbus-logging-pipeline`: job logs.
    LoggingPipeline,
}

impl Audience {
    /// Every service, in a fixed order: the default audiences of admin and org tokens.
    pub const ALL: [Audience; 3] = [
        Audience::ControlPlane,
        Audience::CacheProxy,
        Audience::LoggingPipeline,
    ];

    /// The `aud` value: the service's binary name.
    pub fn as_str(self) -> &'static str {
        match self {
            Audience::ControlPlane => "nimbus-control-plane",
            Audience::CacheProxy => "nimbus-cache-proxy",
            Audience::LoggingPipeline => "nimbus-logging-pipeline",
        }
    }
}

impl fmt::Display for Audience {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Audience {
    type Err = Error;
    /// Accepts the `aud` value or the short name (`control-plane`, `cache-proxy`,
    /// `logging-pipeline`).
    fn from_str(s: &str) -> Result<Self> {
        let short = s.trim().strip_prefix("nimbus-").unwrap_or(s.trim());
        match short {
            "control-plane" => Ok(Audience::ControlPlane),
            "cache-proxy" => Ok(Audience::CacheProxy),
            "logging-pipeline" => Ok(Audience::LoggingPipeline),
            other => Err(Error::invalid(format!(
                "unknown audience {other:?}; expected control-plane, cache-proxy or logging-pipeline"
            ))),
        }
    }
}

/// The audience of log ingest tokens: the pipeline's `POST /api/logs` only.
pub const INGEST_AUDIENCE: &str = "nimbus-logging-pipeline/ingest";

/// The claims of an API token, as signed (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Subject: who the token was minted for (the agent id for agent tokens).
    pub sub: String,
    /// What the bearer may do.
    pub role: Role,
    /// The org of an org token; absent for other roles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<OrgId>,
    /// The services the token is for ([`Audience::as_str`] values).
    pub aud: Vec<String>,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds.
    pub exp: i64,
}

/// What a log ingest token lets its bearer write: lines of one job's one lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestScope {
    /// The job whose lines the token may write.
    pub job_id: crate::domain::JobId,
    /// The job's org.
    pub org_id: OrgId,
    /// The job's GitHub repository id, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_id: Option<i64>,
    /// The agent holding the lease; its lines are stored under this id.
    pub agent_id: String,
    /// Line numbers this lease may write lie in `seq_base + 1 ..= seq_base + 2^32 - 1`
    /// (see [`crate::domain::log_seq_base`]): an earlier lease of the job cannot
    /// write, or pre-empt, a later one's lines.
    pub seq_base: u64,
}

impl IngestScope {
    /// Whether `seq` is one of this lease's line numbers.
    pub fn owns_seq(&self, seq: u64) -> bool {
        seq > self.seq_base && seq - self.seq_base < crate::domain::LOG_SEQS_PER_LEASE
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct IngestClaims {
    #[serde(flatten)]
    scope: IngestScope,
    aud: String,
    iat: i64,
    exp: i64,
}

/// Who is calling, once their token verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An admin token.
    Admin {
        /// The token's subject.
        sub: String,
    },
    /// An agent token.
    Agent {
        /// The agent's id (the token's subject).
        agent_id: String,
    },
    /// An org token.
    Org {
        /// The only org the token may see.
        org_id: OrgId,
        /// The token's subject.
        sub: String,
    },
}

impl Principal {
    /// The only org this principal may see, or `None` for all orgs.
    pub fn org_scope(&self) -> Option<OrgId> {
        match self {
            Principal::Org { org_id, .. } => Some(*org_id),
            Principal::Admin { .. } | Principal::Agent { .. } => None,
        }
    }

    /// The role of the token this principal came from.
    pub fn role(&self) -> Role {
        match self {
            Principal::Admin { .. } => Role::Admin,
            Principal::Agent { .. } => Role::Agent,
            Principal::Org { .. } => Role::Org,
        }
    }
}

/// Mints and verifies API tokens with one secret.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JwtKeys(HS256)")
    }
}

fn validation(audience: &str, required: &[&str]) -> Validation {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 5;
    validation.set_required_spec_claims(required);
    validation.set_audience(&[audience]);
    validation
}

fn unix_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

fn expiry(now: i64, ttl: Duration) -> i64 {
    now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2))
}

/// A verification failure as the caller may hear it (never the token itself).
fn rejection(e: jsonwebtoken::errors::Error) -> Error {
    use jsonwebtoken::errors::ErrorKind as K;
    let why = match e.kind() {
        K::ExpiredSignature => "token expired",
        K::InvalidAlgorithm | K::InvalidAlgorithmName => {
            "token algorithm refused (only HS256 is accepted)"
        }
        K::InvalidSignature => "token signature does not verify",
        K::InvalidAudience => "token is not for this service (aud)",
        K::MissingRequiredClaim(_) => "token lacks a required claim (sub, exp, aud)",
        _ => "token is malformed",
    };
    Error::Unauthenticated(why.to_string())
}

impl JwtKeys {
    /// Keys for HS256 tokens signed with `secret` (`NIMBUS_JWT_SECRET`).
    pub fn new(secret: &Secret) -> Self {
        JwtKeys {
            encoding: EncodingKey::from_secret(secret.expose().as_bytes()),
            decoding: DecodingKey::from_secret(secret.expose().as_bytes()),
        }
    }

    /// Signs a token for `sub` with `role`, valid for `ttl`, for the role's
    /// [default audiences](Role::default_audiences).
    pub fn mint(
        &self,
        sub: &str,
        role: Role,
        org_id: Option<OrgId>,
        ttl: Duration,
    ) -> Result<String> {
        self.mint_for(sub, role, org_id, role.default_audiences(), ttl)
    }

    /// Signs a token for `sub` with `role`, valid for `ttl`, at `audiences` only.
    pub fn mint_for(
        &self,
        sub: &str,
        role: Role,
        org_id: Option<OrgId>,
        audiences: &[Audience],
        ttl: Duration,
    ) -> Result<String> {
        if role == Role::Org && org_id.is_none() {
            return Err(Error::invalid("an org token needs an org id"));
        }
        if sub.is_empty() {
            return Err(Error::invalid("a token needs a subject"));
        }
        if audiences.is_empty() {
            return Err(Error::invalid("a token needs at least one audience"));
        }
        let now = unix_now();
        let claims = Claims {
            sub: sub.to_string(),
            role,
            org_id: if role == Role::Org { org_id } else { None },
            aud: audiences.iter().map(|a| a.as_str().to_string()).collect(),
            iat: now,
            exp: expiry(now, ttl),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| Error::Internal(format!("signing token: {e}")))
    }

    /// Verifies signature, algorithm, expiry and that the token is for `audience`,
    /// and turns the claims into a principal.
    pub fn verify(&self, token: &str, audience: Audience) -> Result<Principal> {
        let data = jsonwebtoken::decode::<Claims>(
            token,
            &self.decoding,
            &validation(audience.as_str(), &["exp", "sub", "aud"]),
        )
        .map_err(rejection)?;
        let claims = data.claims;
        Ok(match claims.role {
            Role::Admin => Principal::Admin { sub: claims.sub },
            Role::Agent => Principal::Agent {
                agent_id: claims.sub,
            },
            Role::Org => Principal::Org {
                org_id: claims.org_id.ok_or_else(|| {
                    Error::Unauthenticated("org token without org_id".to_string())
                })?,
                sub: claims.sub,
            },
        })
    }

    /// Signs a log ingest token for one lease, valid for `ttl`.
    pub fn mint_ingest(&self, scope: &IngestScope, ttl: Duration) -> Result<String> {
        let now = unix_now();
        let claims = IngestClaims {
            scope: scope.clone(),
            aud: INGEST_AUDIENCE.to_string(),
            iat: now,
            exp: expiry(now, ttl),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| Error::Internal(format!("signing ingest token: {e}")))
    }

    /// Verifies a log ingest token (signature, HS256, expiry, ingest audience).
    pub fn verify_ingest(&self, token: &str) -> Result<IngestScope> {
        let data = jsonwebtoken::decode::<IngestClaims>(
            token,
            &self.decoding,
            &validation(INGEST_AUDIENCE, &["exp", "aud"]),
        )
        .map_err(rejection)?;
        Ok(data.claims.scope)
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme matched
/// case-insensitively, as RFC 9110 says), trimmed; `None` without one.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

/// Whether a `/metrics` request may be served (docs/security.md): always from a loopback
/// peer that is not a declared proxy forwarding someone else, otherwise only with `Authorization: Bearer <token>` matching the service's
/// metrics token (compared in constant time). No token configured: loopback only.
pub fn metrics_access_allowed(
    origin: crate::forwarded::Origin,
    headers: &axum::http::HeaderMap,
    token: Option<&Secret>,
) -> bool {
    if origin.is_local() {
        return true;
    }
    match (token, bearer_token(headers)) {
        (Some(expected), Some(given)) => {
            use subtle::ConstantTimeEq;
            bool::from(expected.expose().as_bytes().ct_eq(given.as_bytes()))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64_engine::encode_segment;

    // Tiny base64url (no padding) so tests can forge headers without another crate.
    mod base64_engine {
        pub fn encode_segment(bytes: &[u8]) -> String {
            const ALPHABET: &[u8; 64] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut out = String::new();
            for chunk in bytes.chunks(3) {
                let b = [
                    chunk[0],
                    *chunk.get(1).unwrap_or(&0),
                    *chunk.get(2).unwrap_or(&0),
                ];
                let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
                let chars = chunk.len() + 1;
                for i in 0..chars {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                }
            }
            out
        }
    }

    fn keys() -> JwtKeys {
        JwtKeys::new(&Secret::new("test-secret-0123456789"))
    }

    #[test]
    fn minted_tokens_verify() {
        let keys = keys();
        let token = keys
            .mint("acme-ci", Role::Org, Some(42), Duration::from_secs(60))
            .expect("mint");
        assert_eq!(
            keys.verify(&token, Audience::ControlPlane).expect("verify"),
            Principal::Org {
                org_id: 42,
                sub: "acme-ci".into()
            }
        );
        let agent = keys
            .mint("host-1", Role::Agent, None, Duration::from_secs(60))
            .expect("mint");
        assert_eq!(
            keys.verify(&agent, Audience::ControlPlane).expect("verify"),
            Principal::Agent {
                agent_id: "host-1".into()
            }
        );
    }

    #[test]
    fn org_tokens_need_an_org() {
        assert!(keys()
            .mint("x", Role::Org, None, Duration::from_secs(60))
            .is_err());
    }

    #[test]
    fn alg_none_is_refused() {
        let header = encode_segment(br#"{"alg":"none","typ":"JWT"}"#);
        let exp = OffsetDateTime::now_utc().unix_timestamp() + 600;
        let payload = encode_segment(
            format!(
                r#"{{"sub":"x","role":"admin","aud":["nimbus-control-plane"],"iat":0,"exp":{exp}}}"#
            )
            .as_bytes(),
        );
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}"),
        ] {
            let err = keys()
                .verify(&token, Audience::ControlPlane)
                .expect_err("alg none must fail");
            assert_eq!(err.kind(), crate::error::ErrorKind::Unauthenticated);
        }
    }

    #[test]
    fn other_algorithms_are_refused() {
        let secret = "test-secret-0123456789";
        let exp = OffsetDateTime::now_utc().unix_timestamp() + 600;
        let claims = Claims {
            sub: "x".into(),
            role: Role::Admin,
            org_id: None,
            aud: vec!["nimbus-control-plane".into()],
            iat: 0,
            exp,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encode");
        let err = keys()
            .verify(&token, Audience::ControlPlane)
            .expect_err("HS512 refused");
        assert!(err.to_string().contains("algorithm"), "{err}");
    }

    #[test]
    fn expired_and_foreign_tokens_are_refused() {
        let keys = keys();
        let exp = OffsetDateTime::now_utc().unix_timestamp() - 3600;
        let claims = Claims {
            sub: "x".into(),
            role: Role::Admin,
            org_id: None,
            aud: vec!["nimbus-control-plane".into()],
            iat: exp - 10,
            exp,
        };
        let expired = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding)
            .expect("encode");
        assert!(keys
            .verify(&expired, Audience::ControlPlane)
            .expect_err("expired")
            .to_string()
            .contains("expired"));

        let other = JwtKeys::new(&Secret::new("another-secret-9876543210"));
        let foreign = other
            .mint("x", Role::Admin, None, Duration::from_secs(60))
            .expect("mint");
        assert!(keys
            .verify(&foreign, Audience::ControlPlane)
            .expect_err("foreign")
            .to_string()
            .contains("signature"));
        assert!(keys.verify("not-a-token", Audience::ControlPlane).is_err());
        assert!(keys.verify("", Audience::ControlPlane).is_err());
    }

    #[test]
    fn tokens_are_only_good_at_their_audiences() {
        let keys = keys();
        let agent = keys
            .mint("host-1", Role::Agent, None, Duration::from_secs(60))
            .expect("mint");
        assert!(keys.verify(&agent, Audience::ControlPlane).is_ok());
        for elsewhere in [Audience::CacheProxy, Audience::LoggingPipeline] {
            let err = keys
                .verify(&agent, elsewhere)
                .expect_err("agent token elsewhere");
            assert!(err.to_string().contains("not for this service"), "{err}");
        }
        let logs_only = keys
            .mint_for(
                "ops",
                Role::Admin,
                None,
                &[Audience::LoggingPipeline],
                Duration::from_secs(60),
            )
            .expect("mint");
        assert!(keys.verify(&logs_only, Audience::LoggingPipeline).is_ok());
        assert!(keys.verify(&logs_only, Audience::ControlPlane).is_err());
        let admin = keys
            .mint("ops", Role::Admin, None, Duration::from_secs(60))
            .expect("mint");
        for audience in Audience::ALL {
            assert!(keys.verify(&admin, audience).is_ok(), "{audience}");
        }
        // A token without `aud` (minted before audiences existed) is refused.
        let exp = OffsetDateTime::now_utc().unix_timestamp() + 600;
        let bare = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "x", "role": "admin", "iat": 0, "exp": exp}),
            &keys.encoding,
        )
        .expect("encode");
        assert!(keys.verify(&bare, Audience::ControlPlane).is_err());
        assert_eq!(
            "logging-pipeline".parse::<Audience>().expect("short"),
            Audience::LoggingPipeline
        );
        assert_eq!(
            "nimbus-cache-proxy".parse::<Audience>().expect("long"),
            Audience::CacheProxy
        );
        assert!("metrics".parse::<Audience>().is_err());
    }

    #[test]
    fn ingest_tokens_and_api_tokens_are_not_interchangeable() {
        let keys = keys();
        let scope = IngestScope {
            job_id: 7,
            org_id: 3,
            repo_id: Some(11),
            agent_id: "host-1".into(),
            seq_base: 0,
        };
        let ingest = keys
            .mint_ingest(&scope, Duration::from_secs(60))
            .expect("mint");
        assert_eq!(keys.verify_ingest(&ingest).expect("verify"), scope);
        for audience in Audience::ALL {
            assert!(keys.verify(&ingest, audience).is_err(), "{audience}");
        }
        let admin = keys
            .mint("ops", Role::Admin, None, Duration::from_secs(60))
            .expect("mint");
        assert!(keys.verify_ingest(&admin).is_err());
        let other = JwtKeys::new(&Secret::new("another-secret-9876543210"));
        assert!(keys
            .verify_ingest(
                &other
                    .mint_ingest(&scope, Duration::from_secs(60))
                    .expect("mint")
            )
            .is_err());
        assert!(scope.owns_seq(1));
        assert!(!scope.owns_seq(0));
        let second = IngestScope {
            seq_base: crate::domain::log_seq_base(2),
            ..scope
        };
        assert!(!second.owns_seq(5));
        assert!(second.owns_seq(second.seq_base + 5));
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively() {
        let mut headers = axum::http::HeaderMap::new();
        assert_eq!(bearer_token(&headers), None);
        for (value, expected) in [
            ("Bearer abc", Some("abc")),
            ("bearer  abc ", Some("abc")),
            ("BEARER abc", Some("abc")),
            ("Basic abc", None),
            ("Bearer ", None),
            ("Bearerabc", None),
        ] {
            headers.insert(
                axum::http::header::AUTHORIZATION,
                value.parse().expect("header"),
            );
            assert_eq!(bearer_token(&headers), expected, "{value:?}");
        }
    }

    #[test]
    fn metrics_are_open_to_loopback_and_to_the_token_only() {
        use crate::forwarded::{Origin, TrustedProxies};
        let token = Secret::new("metrics-token");
        let mut headers = axum::http::HeaderMap::new();
        let local: std::net::SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let remote: std::net::SocketAddr = "10.0.0.7:5000".parse().expect("addr");
        assert!(metrics_access_allowed(
            Origin::direct(Some(local)),
            &headers,
            None
        ));
        assert!(!metrics_access_allowed(
            Origin::direct(Some(remote)),
            &headers,
            Some(&token)
        ));
        assert!(!metrics_access_allowed(
            Origin::direct(None),
            &headers,
            Some(&token)
        ));
        headers.insert(
            axum::http::header::AUTHORIZATION,
            "Bearer wrong".parse().expect("header"),
        );
        assert!(!metrics_access_allowed(
            Origin::direct(Some(remote)),
            &headers,
            Some(&token)
        ));
        assert!(!metrics_access_allowed(
            Origin::direct(Some(remote)),
            &headers,
            None
        ));
        headers.insert(
            axum::http::header::AUTHORIZATION,
            "Bearer metrics-token".parse().expect("header"),
        );
        assert!(metrics_access_allowed(
            Origin::direct(Some(remote)),
            &headers,
            Some(&token)
        ));

        // Through a proxy on this host, a request is not local: the token is needed.
        let proxies = TrustedProxies::parse("127.0.0.1").expect("proxies");
        let mut forwarded = axum::http::HeaderMap::new();
        forwarded.insert("x-forwarded-for", "127.0.0.1".parse().expect("header"));
        let origin = proxies.origin(Some(local), &forwarded);
        assert!(!metrics_access_allowed(origin, &forwarded, None));
        assert!(!metrics_access_allowed(origin, &forwarded, Some(&token)));
        forwarded.insert(
            axum::http::header::AUTHORIZATION,
            "Bearer metrics-token".parse().expect("header"),
        );
        assert!(metrics_access_allowed(origin, &forwarded, Some(&token)));
    }
}
