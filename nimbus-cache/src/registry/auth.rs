//! Who may pull and push what, and the registry tokens Docker clients exchange
//! their credentials for.
//!
//! Credentials are Nimbus's own: an org or admin API token (JWT for the cache
//! proxy) or a cache token, as `Authorization: Bearer …` or as the password of
//! `Basic` (`docker login -u anything -p $TOKEN`). Docker clients first get a
//! `WWW-Authenticate: Bearer realm=…/v2/token` challenge, exchange the credential
//! there for a short-lived registry token (`nrg1.…`, HMAC-signed with the cache
//! secret) carrying the granted scopes, and present that.
//!
//! Rights follow the name: mirrors (`library/`, `mirror/`) can be pulled by every
//! org and pushed by none; `org-{id}/` can be pulled by org `{id}` (and admins)
//! and pushed by its writers. Agents' tokens are refused: a job's VM gets a cache
//! token of its org.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use nimbus_core::auth::{Audience, JwtKeys, Principal};
use nimbus_core::cache_token::CacheTokenKeys;
use nimbus_core::OrgId;
use serde::{Deserialize, Serialize};

use super::name::Repository;
use super::{OciCode, OciError};

const PREFIX: &str = "nrg1.";

/// How long a registry token lives (Docker asks for a new one when it expires).
pub const TOKEN_TTL_SECS: i64 = 300;

/// A pull or a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Reading manifests, tags and blobs.
    Pull,
    /// Uploading blobs and putting manifests and tags: writers of the owning
    /// org and admins may; nobody may push to a mirror.
    Push,
}

impl Action {
    /// The action as scopes spell it: `pull` or `push`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
        }
    }
}

/// The authenticated party behind a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// `None`: an admin.
    pub org_id: Option<OrgId>,
    /// Whether the credential allows writing (org API tokens do; read-only cache
    /// tokens do not).
    pub write: bool,
}

impl Identity {
    /// What this identity may do to `repository`, by name alone.
    pub fn may(&self, repository: &Repository, action: Action) -> bool {
        match (repository.org(), action) {
            (None, Action::Pull) => true,
            (None, Action::Push) => false,
            (Some(owner), Action::Pull) => self.org_id.is_none_or(|org| org == owner),
            (Some(owner), Action::Push) => self.write && self.org_id.is_none_or(|org| org == owner),
        }
    }
}

/// One granted scope: `repository:NAME:ACTIONS`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The repository name the grant is for.
    pub name: String,
    /// The granted actions, `pull` and/or `push` (`*` is accepted as all).
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claims {
    #[serde(flatten)]
    identity: Identity,
    access: Vec<Grant>,
    exp: i64,
}

/// A verified caller: a plain credential (all its rights) or a registry token
/// (its grants, within its identity's rights).
#[derive(Debug, Clone)]
pub enum Caller {
    /// A Nimbus credential (cache token or API token) presented directly.
    Credential(Identity),
    /// A registry token minted by [`Authority::mint`].
    Token {
        /// Who the token was minted for.
        identity: Identity,
        /// The scopes it grants; anything else is refused with a 401.
        access: Vec<Grant>,
    },
}

impl Caller {
    /// Who is calling, whichever way they authenticated.
    pub fn identity(&self) -> &Identity {
        match self {
            Caller::Credential(identity) | Caller::Token { identity, .. } => identity,
        }
    }

    /// `Ok` when allowed; otherwise the answer that reveals nothing: another
    /// org's repository is unknown (pull) or denied (push), and a token merely
    /// lacking a scope its holder could get is told to fetch it (401).
    pub fn check(&self, repository: &Repository, action: Action) -> Result<(), OciError> {
        let identity = self.identity();
        if !identity.may(repository, action) {
            return Err(match action {
                Action::Pull => OciError::new(
                    OciCode::NameUnknown,
                    format!("repository {repository} is not known to this registry"),
                ),
                Action::Push => {
                    OciError::new(
                        OciCode::Denied,
                        if repository.is_mirror() {
                            format!("{repository} is a mirror of the upstream registry: it is read-only")
                        } else {
                            format!("only its own org may push to {repository}")
                        },
                    )
                }
            });
        }
        if let Caller::Token { access, .. } = self {
            let granted = access.iter().any(|grant| {
                grant.name == repository.as_str()
                    && grant
                        .actions
                        .iter()
                        .any(|a| a == action.as_str() || a == "*")
            });
            if !granted {
                return Err(OciError::unauthorized(format!(
                    "the registry token does not grant {} on {repository}",
                    action.as_str()
                ))
                .with_scope(repository, action));
            }
        }
        Ok(())
    }
}

/// Verifies credentials and mints registry tokens.
#[derive(Clone)]
pub struct Authority {
    jwt: JwtKeys,
    cache_tokens: CacheTokenKeys,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authority")
    }
}

impl Authority {
    /// An authority that verifies API tokens with `jwt` and cache tokens with
    /// `cache_tokens`, and signs registry tokens with the cache-token secret.
    pub fn new(jwt: JwtKeys, cache_tokens: CacheTokenKeys) -> Self {
        Authority { jwt, cache_tokens }
    }

    /// The caller behind an `Authorization` header value (`None`: no header).
    pub fn caller(&self, authorization: Option<&str>) -> Result<Caller, OciError> {
        let Some(value) = authorization else {
            return Err(OciError::unauthorized("authentication required"));
        };
        let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            if rest.starts_with(PREFIX) {
                return self.verify_token(rest);
            }
            return self.identity(rest).map(Caller::Credential);
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = STANDARD
                .decode(rest)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| OciError::unauthorized("malformed Basic credentials"))?;
            let (_user, password) = decoded
                .split_once(':')
                .ok_or_else(|| OciError::unauthorized("malformed Basic credentials"))?;
            return self.identity(password).map(Caller::Credential);
        }
        Err(OciError::unauthorized(
            "unsupported Authorization scheme (Bearer or Basic)",
        ))
    }

    /// The identity of a Nimbus credential: a cache token or an API token.
    fn identity(&self, credential: &str) -> Result<Identity, OciError> {
        if credential.starts_with("nct1.") {
            let scope = self
                .cache_tokens
                .verify(credential)
                .map_err(|e| OciError::unauthorized(e.to_string()))?;
            return Ok(Identity {
                org_id: Some(scope.org_id),
                write: scope.can_write(),
            });
        }
        match self.jwt.verify(credential, Audience::CacheProxy) {
            Ok(Principal::Admin { .. }) => Ok(Identity {
                org_id: None,
                write: true,
            }),
            Ok(Principal::Org { org_id, .. }) => Ok(Identity {
                org_id: Some(org_id),
                write: true,
            }),
            Ok(Principal::Agent { .. }) => Err(OciError::new(
                OciCode::Denied,
                "agent tokens have no registry access; jobs use their org's cache token",
            )),
            Err(error) => Err(OciError::unauthorized(error.to_string())),
        }
    }

    /// A registry token for `identity` with the requested `scopes` (the token
    /// endpoint's `scope` values) that it may have; the rest are left out, as the
    /// token protocol says, so the registry then refuses them.
    pub fn mint(&self, identity: &Identity, scopes: &[String]) -> Result<String, OciError> {
        let mut access: Vec<Grant> = Vec::new();
        for scope in scopes
            .iter()
            .flat_map(|s| s.split(' '))
            .filter(|s| !s.is_empty())
        {
            let mut parts = scope.splitn(3, ':');
            let (Some("repository"), Some(name), Some(actions)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue; // registry:catalog:* and unknown kinds: nothing granted
            };
            let Ok(repository) = Repository::parse(name) else {
                continue;
            };
            let granted: Vec<String> = actions
                .split(',')
                .filter_map(|action| match action {
                    "pull" => Some(Action::Pull),
                    "push" => Some(Action::Push),
                    _ => None,
                })
                .filter(|action| identity.may(&repository, *action))
                .map(|action| action.as_str().to_string())
                .collect();
            if !granted.is_empty() && access.len() < 32 {
                access.push(Grant {
                    name: name.to_string(),
                    actions: granted,
                });
            }
        }
        let claims = Claims {
            identity: identity.clone(),
            access,
            exp: time::OffsetDateTime::now_utc().unix_timestamp() + TOKEN_TTL_SECS,
        };
        let json = serde_json::to_vec(&claims)
            .map_err(|e| OciError::new(OciCode::Unavailable, format!("encoding a token: {e}")))?;
        let body = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json));
        let signature = self.cache_tokens.sign_url(&format!("registry:{body}"));
        Ok(format!("{body}.{signature}"))
    }

    fn verify_token(&self, token: &str) -> Result<Caller, OciError> {
        let bad = |why: &str| OciError::unauthorized(format!("registry token {why}"));
        let (body, signature) = token.rsplit_once('.').ok_or_else(|| bad("is malformed"))?;
        if !self
            .cache_tokens
            .verify_url(&format!("registry:{body}"), signature)
        {
            return Err(bad("has a bad signature"));
        }
        let json = URL_SAFE_NO_PAD
            .decode(&body[PREFIX.len()..])
            .map_err(|_| bad("is malformed"))?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| bad("is malformed"))?;
        if claims.exp <= time::OffsetDateTime::now_utc().unix_timestamp() {
            return Err(bad("has expired"));
        }
        Ok(Caller::Token {
            identity: claims.identity,
            access: claims.access,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_core::auth::Role;
    use nimbus_core::Secret;
    use std::time::Duration;

    fn authority() -> (Authority, JwtKeys) {
        let jwt = JwtKeys::new(&Secret::new("registry-auth-test-secret-0123456789"));
        let cache = CacheTokenKeys::new(&Secret::new("registry-cache-test-secret-0123456789"));
        (Authority::new(jwt.clone(), cache), jwt)
    }

    fn repo(name: &str) -> Repository {
        Repository::parse(name).expect("name")
    }

    #[test]
    fn rights_follow_the_name() {
        let org1 = Identity {
            org_id: Some(1),
            write: true,
        };
        let reader1 = Identity {
            org_id: Some(1),
            write: false,
        };
        let admin = Identity {
            org_id: None,
            write: true,
        };
        assert!(org1.may(&repo("org-1/app"), Action::Push));
        assert!(!reader1.may(&repo("org-1/app"), Action::Push));
        assert!(reader1.may(&repo("org-1/app"), Action::Pull));
        assert!(!org1.may(&repo("org-2/app"), Action::Pull));
        assert!(!org1.may(&repo("org-2/app"), Action::Push));
        assert!(org1.may(&repo("library/alpine"), Action::Pull));
        assert!(!org1.may(&repo("library/alpine"), Action::Push));
        assert!(!admin.may(&repo("mirror/x/y"), Action::Push));
        assert!(admin.may(&repo("org-9/app"), Action::Push));
    }

    #[test]
    fn tokens_carry_only_what_the_identity_may_have() {
        let (authority, jwt) = authority();
        let org2 = jwt
            .mint_for(
                "ci",
                Role::Org,
                Some(2),
                &[Audience::CacheProxy],
                Duration::from_secs(60),
            )
            .expect("mint");
        let caller = authority
            .caller(Some(&format!(
                "Basic {}",
                STANDARD.encode(format!("x:{org2}"))
            )))
            .expect("basic");
        let token = authority
            .mint(
                caller.identity(),
                &[
                    "repository:org-1/app:pull,push repository:org-2/app:pull,push".into(),
                    "repository:library/alpine:pull,push".into(),
                ],
            )
            .expect("token");
        let caller = authority
            .caller(Some(&format!("Bearer {token}")))
            .expect("verify");
        assert!(caller.check(&repo("org-2/app"), Action::Push).is_ok());
        assert!(caller.check(&repo("library/alpine"), Action::Pull).is_ok());
        assert_eq!(
            caller
                .check(&repo("org-1/app"), Action::Pull)
                .expect_err("foreign")
                .code,
            OciCode::NameUnknown
        );
        assert_eq!(
            caller
                .check(&repo("org-1/app"), Action::Push)
                .expect_err("foreign")
                .code,
            OciCode::Denied
        );
        assert_eq!(
            caller
                .check(&repo("library/alpine"), Action::Push)
                .expect_err("mirror")
                .code,
            OciCode::Denied
        );
        // Its own repository, not in the token: fetch another token.
        assert_eq!(
            caller
                .check(&repo("org-2/other"), Action::Pull)
                .expect_err("scope")
                .code,
            OciCode::Unauthorized
        );
        // Tampering breaks the signature.
        let forged = token.replacen("nrg1.e", "nrg1.f", 1);
        assert!(authority.caller(Some(&format!("Bearer {forged}"))).is_err());
        let agent = jwt
            .mint_for(
                "a",
                Role::Agent,
                None,
                &[Audience::CacheProxy],
                Duration::from_secs(60),
            )
            .expect("mint");
        assert_eq!(
            authority
                .caller(Some(&format!("Bearer {agent}")))
                .expect_err("agent")
                .code,
            OciCode::Denied
        );
        assert!(authority.caller(None).is_err());
        assert!(authority.caller(Some("Basic !!!")).is_err());
    }
}
