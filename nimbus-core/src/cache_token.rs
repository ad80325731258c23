//! Cache tokens: what a job presents to the cache proxy (`ACTIONS_RUNTIME_TOKEN`).
//!
//! `nct1.<base64url(JSON claims)>.<base64url(HMAC-SHA256(secret, "nct1." + claims))>`,
//! signed with `NIMBUS_CACHE_SHARED_SECRET`. The claims name the org, the repository,
//! the git ref the job runs on (entries are saved there), the default branch restores
//! fall back to, the permission and the expiry. The control plane mints one per job;
//! `nimbus token cache` mints one by hand. They live here, not in `nimbus-cache`,
//! because the control plane mints what the cache proxy verifies.

use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use time::OffsetDateTime;

use crate::config::Secret;
use crate::domain::OrgId;
use crate::error::{Error, Result};

const PREFIX: &str = "nct1.";

/// The ref restores fall back to when the token names none.
pub const DEFAULT_BRANCH: &str = "refs/heads/main";

/// What a cache token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CachePermission {
    /// Restore entries only.
    Read,
    /// Restore and save entries.
    Write,
}

impl fmt::Display for CachePermission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CachePermission::Read => "read",
            CachePermission::Write => "write",
        })
    }
}

/// What a cache token grants: one org, one repository, one ref.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheScope {
    /// The org whose cache the token opens.
    pub org_id: OrgId,
    /// `owner/name`.
    pub repo: String,
    /// Where saves go and restores look first, e.g. `refs/heads/feature`.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Where restores look next, for a pull request: its base branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ref: Option<String>,
    /// Where restores look last (GitHub: the default branch).
    pub default_ref: String,
    /// Whether the bearer may save entries as well as restore them.
    pub permission: CachePermission,
    /// Expiry, Unix seconds.
    pub exp: i64,
}

impl CacheScope {
    /// The refs a restore searches, in order, without repeats: the job's own ref,
    /// a pull request's base branch, the default branch (GitHub's order).
    pub fn restore_refs(&self) -> Vec<&str> {
        let mut refs = vec![self.git_ref.as_str()];
        for next in self.base_ref.iter().chain([&self.default_ref]) {
            if !refs.contains(&next.as_str()) {
                refs.push(next.as_str());
            }
        }
        refs
    }

    /// Whether the token allows saving entries.
    pub fn can_write(&self) -> bool {
        self.permission == CachePermission::Write
    }
}

/// What a job may do in the cache, before it is signed into a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheGrant {
    /// The org whose cache the job may use.
    pub org_id: OrgId,
    /// The repository, `owner/name`.
    pub repo: String,
    /// Where saves go and restores look first.
    pub git_ref: String,
    /// A pull request's base branch, restored from after `git_ref`.
    pub base_ref: Option<String>,
    /// Where restores look last (GitHub: the default branch).
    pub default_ref: String,
    /// Whether the job may save entries as well as restore them.
    pub permission: CachePermission,
}

/// Mints and verifies cache tokens with one secret.
#[derive(Clone)]
pub struct CacheTokenKeys {
    secret: Vec<u8>,
}

impl fmt::Debug for CacheTokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CacheTokenKeys(HMAC-SHA256)")
    }
}

impl CacheTokenKeys {
    /// Keys for tokens signed with `secret` (`NIMBUS_CACHE_SHARED_SECRET`).
    pub fn new(secret: &Secret) -> Self {
        CacheTokenKeys {
            secret: secret.expose().as_bytes().to_vec(),
        }
    }

    fn mac(&self, context: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC accepts keys of any length");
        mac.update(context);
        mac
    }

    /// A token for `repo` at `git_ref` (falling back to `default_ref`), valid for `ttl`.
    pub fn mint(
        &self,
        org_id: OrgId,
        repo: &str,
        git_ref: &str,
        default_ref: &str,
        permission: CachePermission,
        ttl: Duration,
    ) -> Result<String> {
        self.mint_grant(
            &CacheGrant {
                org_id,
                repo: repo.to_string(),
                git_ref: git_ref.to_string(),
                base_ref: None,
                default_ref: default_ref.to_string(),
                permission,
            },
            ttl,
        )
    }

    /// A token carrying `grant`, valid for `ttl`.
    pub fn mint_grant(&self, grant: &CacheGrant, ttl: Duration) -> Result<String> {
        validate_repo(&grant.repo)?;
        for (what, value) in [
            ("ref", Some(&grant.git_ref)),
            ("base ref", grant.base_ref.as_ref()),
            ("default ref", Some(&grant.default_ref)),
        ] {
            if value.is_some_and(|value| value.is_empty() || value.len() > 255) {
                return Err(Error::invalid(format!(
                    "a cache token's {what} must be 1 to 255 bytes"
                )));
            }
        }
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let scope = CacheScope {
            org_id: grant.org_id,
            repo: grant.repo.clone(),
            git_ref: grant.git_ref.clone(),
            base_ref: grant.base_ref.clone(),
            default_ref: grant.default_ref.clone(),
            permission: grant.permission,
            exp: now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2)),
        };
        let claims = serde_json::to_vec(&scope)
            .map_err(|e| Error::Internal(format!("encoding cache token: {e}")))?;
        let body = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(claims));
        let signature = self.mac(body.as_bytes()).finalize().into_bytes();
        Ok(format!("{body}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }

    /// Checks signature (in constant time) and expiry.
    pub fn verify(&self, token: &str) -> Result<CacheScope> {
        let unauthenticated = |why: &str| Error::Unauthenticated(format!("cache token {why}"));
        let (body, signature) = token
            .rsplit_once('.')
            .ok_or_else(|| unauthenticated("is malformed"))?;
        let claims = body
            .strip_prefix(PREFIX)
            .ok_or_else(|| unauthenticated("is not a Nimbus cache token (nct1.…)"))?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| unauthenticated("is malformed"))?;
        self.mac(body.as_bytes())
            .verify_slice(&signature)
            .map_err(|_| unauthenticated("has a bad signature"))?;
        let claims = URL_SAFE_NO_PAD
            .decode(claims)
            .map_err(|_| unauthenticated("is malformed"))?;
        let scope: CacheScope =
            serde_json::from_slice(&claims).map_err(|_| unauthenticated("is malformed"))?;
        if scope.exp <= OffsetDateTime::now_utc().unix_timestamp() {
            return Err(unauthenticated("has expired"));
        }
        Ok(scope)
    }

    /// A signature over `message` for URLs the proxy hands out (upload and download
    /// links that carry no bearer token), derived so it cannot double as a token.
    pub fn sign_url(&self, message: &str) -> String {
        let mut mac = self.mac(b"nimbus-cache-url\0");
        mac.update(message.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// Checks a [`sign_url`](Self::sign_url) signature in constant time.
    pub fn verify_url(&self, message: &str, signature: &str) -> bool {
        let Ok(signature) = URL_SAFE_NO_PAD.decode(signature) else {
            return false;
        };
        let mut mac = self.mac(b"nimbus-cache-url\0");
        mac.update(message.as_bytes());
        mac.verify_slice(&signature).is_ok()
    }
}

fn validate_repo(repo: &str) -> Result<()> {
    let valid = repo.len() <= 255
        && repo.split_once('/').is_some_and(|(owner, name)| {
            !owner.is_empty() && !name.is_empty() && !name.contains('/')
        })
        && repo
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if valid {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "repository {repo:?} is not of the form OWNER/NAME"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &str) -> CacheTokenKeys {
        CacheTokenKeys::new(&Secret::new(secret))
    }

    fn mint(keys: &CacheTokenKeys, permission: CachePermission, ttl: Duration) -> String {
        keys.mint(
            7,
            "acme/widgets",
            "refs/heads/feature",
            DEFAULT_BRANCH,
            permission,
            ttl,
        )
        .expect("mint")
    }

    #[test]
    fn a_minted_token_verifies_to_its_scope() {
        let keys = keys("0123456789abcdef0123");
        let token = mint(&keys, CachePermission::Write, Duration::from_secs(60));
        let scope = keys.verify(&token).expect("verifies");
        assert_eq!(scope.org_id, 7);
        assert_eq!(scope.repo, "acme/widgets");
        assert!(scope.can_write());
        assert_eq!(
            scope.restore_refs(),
            vec!["refs/heads/feature", "refs/heads/main"]
        );
    }

    #[test]
    fn another_secret_a_changed_claim_or_an_expired_token_is_refused() {
        let keys_a = keys("0123456789abcdef0123");
        let token = mint(&keys_a, CachePermission::Read, Duration::from_secs(60));
        assert!(keys("another-secret-entirely").verify(&token).is_err());

        // Swap the claims for another org's, keeping the signature.
        let (_, signature) = token.rsplit_once('.').expect("dot");
        let forged_claims = URL_SAFE_NO_PAD.encode(
            br#"{"org_id":8,"repo":"acme/widgets","ref":"x","default_ref":"x","permission":"write","exp":9999999999}"#,
        );
        let forged = format!("{PREFIX}{forged_claims}.{signature}");
        assert!(keys_a.verify(&forged).is_err());

        let expired = mint(&keys_a, CachePermission::Read, Duration::ZERO);
        let error = keys_a.verify(&expired).expect_err("expired");
        assert!(error.to_string().contains("expired"), "{error}");
        assert!(keys_a.verify("garbage").is_err());
        assert!(keys_a.verify("nct1.!!.!!").is_err());
    }

    #[test]
    fn bad_repositories_are_refused_at_mint() {
        let keys = keys("0123456789abcdef0123");
        for repo in ["", "noslash", "a/b/c", "/x", "x/", "a b/c"] {
            assert!(
                keys.mint(
                    1,
                    repo,
                    "r",
                    "r",
                    CachePermission::Read,
                    Duration::from_secs(1)
                )
                .is_err(),
                "{repo:?}"
            );
        }
    }

    #[test]
    fn url_signatures_are_bound_to_their_message() {
        let keys = keys("0123456789abcdef0123");
        let signature = keys.sign_url("download:42:1700000000");
        assert!(keys.verify_url("download:42:1700000000", &signature));
        assert!(!keys.verify_url("download:43:1700000000", &signature));
        assert!(!keys.verify_url("download:42:1700000000", "AAAA"));
    }
}
