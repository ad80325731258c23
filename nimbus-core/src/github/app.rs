//! GitHub App authentication: the app JWT (RS256; `iss` = app id, `iat` back-dated
//! 60 s for clock drift, `exp` 9 minutes ahead — GitHub refuses more than 10).

use std::fmt;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{Error, Result};

/// The claims of a GitHub App JWT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppJwtClaims {
    /// Issued at, Unix seconds (back-dated 60 s).
    pub iat: i64,
    /// Expires at, Unix seconds (9 minutes after minting).
    pub exp: i64,
    /// The app id, as a string (GitHub accepts the client id or the app id).
    pub iss: String,
}

/// An app id and its private key.
#[derive(Clone)]
pub struct AppCredentials {
    /// GitHub's numeric id of the App.
    pub app_id: i64,
    key: EncodingKey,
}

impl fmt::Debug for AppCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AppCredentials(app {}, key ***)", self.app_id)
    }
}

impl AppCredentials {
    /// From the PEM GitHub hands out (PKCS#1 `RSA PRIVATE KEY`, or PKCS#8).
    pub fn new(app_id: i64, pem: &str) -> Result<Self> {
        let key = EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| {
            Error::invalid(format!(
                "the GitHub App private key is not an RSA PEM key: {e}"
            ))
        })?;
        Ok(AppCredentials { app_id, key })
    }

    /// The claims of a JWT minted at `now`.
    pub fn claims(&self, now: OffsetDateTime) -> AppJwtClaims {
        let now = now.unix_timestamp();
        AppJwtClaims {
            iat: now - 60,
            exp: now + 9 * 60,
            iss: self.app_id.to_string(),
        }
    }

    /// A signed app JWT, valid for about 10 minutes from `now`.
    pub fn jwt(&self, now: OffsetDateTime) -> Result<String> {
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &self.claims(now), &self.key)
            .map_err(|e| Error::Internal(format!("signing the GitHub App JWT: {e}")))
    }
}
