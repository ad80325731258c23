//! API authentication: HS256 JWTs signed with `NIMBUS_JWT_SECRET`.
//!
//! Claims are `sub`, `role` (`admin` | `agent` | `org`), `org_id` (required for
//! `org`), `iat` and `exp`. Only HS256 is accepted: `alg: none` and every other
//! algorithm are refused before the signature is even looked at.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::config::Secret;
use crate::domain::OrgId;
use crate::error::{Error, Result};

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<OrgId>,
    pub iat: i64,
    pub exp: i64,
}

/// Who is calling, once their token verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin { sub: String },
    Agent { agent_id: String },
    Org { org_id: OrgId, sub: String },
}

impl Principal {
    /// The only org this principal may see, or `None` for all orgs.
    pub fn org_scope(&self) -> Option<OrgId> {
        match self {
            Principal::Org { org_id, .. } => Some(*org_id),
            Principal::Admin { .. } | Principal::Agent { .. } => None,
        }
    }

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
    validation: Validation,
}

impl fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JwtKeys(HS256)")
    }
}

impl JwtKeys {
    pub fn new(secret: &Secret) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        JwtKeys {
            encoding: EncodingKey::from_secret(secret.expose().as_bytes()),
            decoding: DecodingKey::from_secret(secret.expose().as_bytes()),
            validation,
        }
    }

    /// Signs a token for `sub` with `role`, valid for `ttl`.
    pub fn mint(
        &self,
        sub: &str,
        role: Role,
        org_id: Option<OrgId>,
        ttl: Duration,
    ) -> Result<String> {
        if role == Role::Org && org_id.is_none() {
            return Err(Error::invalid("an org token needs an org id"));
        }
        if sub.is_empty() {
            return Err(Error::invalid("a token needs a subject"));
        }
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let claims = Claims {
            sub: sub.to_string(),
            role,
            org_id: if role == Role::Org { org_id } else { None },
            iat: now,
            exp: now.saturating_add(ttl_secs),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| Error::Internal(format!("signing token: {e}")))
    }

    /// Verifies signature, algorithm and expiry, and turns the claims into a principal.
    pub fn verify(&self, token: &str) -> Result<Principal> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                let why = match e.kind() {
                    K::ExpiredSignature => "token expired",
                    K::InvalidAlgorithm | K::InvalidAlgorithmName => {
                        "token algorithm refused (only HS256 is accepted)"
                    }
                    K::InvalidSignature => "token signature does not verify",
                    K::MissingRequiredClaim(_) => "token lacks a required claim (sub, exp)",
                    _ => "token is malformed",
                };
                Error::Unauthenticated(why.to_string())
            })?;
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
}

/// Whether a `/metrics` request may be served (DESIGN.md): always from a loopback
/// peer, otherwise only with `Authorization: Bearer <token>` matching the service's
/// metrics token (compared in constant time). No token configured: loopback only.
pub fn metrics_access_allowed(
    peer: Option<std::net::SocketAddr>,
    headers: &axum::http::HeaderMap,
    token: Option<&Secret>,
) -> bool {
    if peer.is_some_and(|peer| peer.ip().is_loopback()) {
        return true;
    }
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match (token, presented) {
        (Some(expected), Some(given)) => {
            use subtle::ConstantTimeEq;
            bool::from(expected.expose().as_bytes().ct_eq(given.trim().as_bytes()))
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
            keys.verify(&token).expect("verify"),
            Principal::Org {
                org_id: 42,
                sub: "acme-ci".into()
            }
        );
        let agent = keys
            .mint("host-1", Role::Agent, None, Duration::from_secs(60))
            .expect("mint");
        assert_eq!(
            keys.verify(&agent).expect("verify"),
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
            format!(r#"{{"sub":"x","role":"admin","iat":0,"exp":{exp}}}"#).as_bytes(),
        );
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}"),
        ] {
            let err = keys().verify(&token).expect_err("alg none must fail");
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
            iat: 0,
            exp,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encode");
        let err = keys().verify(&token).expect_err("HS512 refused");
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
            iat: exp - 10,
            exp,
        };
        let expired = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding)
            .expect("encode");
        assert!(keys
            .verify(&expired)
            .expect_err("expired")
            .to_string()
            .contains("expired"));

        let other = JwtKeys::new(&Secret::new("another-secret-9876543210"));
        let foreign = other
            .mint("x", Role::Admin, None, Duration::from_secs(60))
            .expect("mint");
        assert!(keys
            .verify(&foreign)
            .expect_err("foreign")
            .to_string()
            .contains("signature"));
        assert!(keys.verify("not-a-token").is_err());
        assert!(keys.verify("").is_err());
    }

    #[test]
    fn metrics_are_open_to_loopback_and_to_the_token_only() {
        let token = Secret::new("metrics-token");
        let mut headers = axum::http::HeaderMap::new();
        let local: std::net::SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let remote: std::net::SocketAddr = "10.0.0.7:5000".parse().expect("addr");
        assert!(metrics_access_allowed(Some(local), &headers, None));
        assert!(!metrics_access_allowed(
            Some(remote),
            &headers,
            Some(&token)
        ));
        assert!(!metrics_access_allowed(None, &headers, Some(&token)));
        headers.insert(
            axum::http::header::AUTHORIZATION,
            "Bearer wrong".parse().expect("header"),
        );
        assert!(!metrics_access_allowed(
            Some(remote),
            &headers,
            Some(&token)
        ));
        assert!(!metrics_access_allowed(Some(remote), &headers, None));
        headers.insert(
            axum::http::header::AUTHORIZATION,
            "Bearer metrics-token".parse().expect("header"),
        );
        assert!(metrics_access_allowed(Some(remote), &headers, Some(&token)));
    }
}
