//! The upstream registry a mirror copies (`NIMBUS_DOCKER_UPSTREAM`, Docker Hub's
//! by default), spoken to with its own token flow: a request answered 401 with
//! `WWW-Authenticate: Bearer realm=…,service=…` is retried with a token fetched
//! from that realm for `repository:NAME:pull` (anonymously, or with
//! `NIMBUS_DOCKER_UPSTREAM_USERNAME`/`_PASSWORD`); a `Basic` challenge is
//! answered with those credentials. Tokens are cached per repository until they
//! expire.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, ACCEPT, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use tokio::sync::Mutex;

use nimbus_core::Secret;

use crate::error::{Error, Result};

/// Most tokens the cache holds (one per repository pulled).
const MAX_TOKENS: usize = 1024;

/// A client of the upstream registry, with its credentials and the tokens it
/// was given, cached per repository.
pub struct Upstream {
    base: String,
    client: reqwest::Client,
    username: Option<String>,
    password: Option<Secret>,
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

fn unavailable(what: impl std::fmt::Display) -> Error {
    Error::Backend(format!("upstream registry: {what}"))
}

/// `key="value"` pairs of a challenge (values may hold commas inside quotes).
pub fn challenge_params(value: &str) -> (String, HashMap<String, String>) {
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(next) = chars.next() {
                            val.push(next);
                        }
                    }
                    '"' => break,
                    c => val.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                val.push(*c);
                chars.next();
            }
        }
        params.insert(key.trim().to_ascii_lowercase(), val.trim().to_string());
    }
    (scheme.to_ascii_lowercase(), params)
}

impl Upstream {
    /// A client of the registry at `base` (e.g. `https://registry-1.docker.io`;
    /// a trailing `/` is ignored), authenticating as `username` when given.
    /// Connecting times out after 10 s, and a read stalled for 60 s fails.
    pub fn new(base: &str, username: Option<String>, password: Option<Secret>) -> Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("nimbus-cache-proxy/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(unavailable)?;
        Ok(Upstream {
            base: base.trim_end_matches('/').to_string(),
            client,
            username,
            password,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// The upstream's base URL, without a trailing `/`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `METHOD /v2/{name}/{path}` upstream, authenticating as challenged. The
    /// answer may be any status; transport failures are errors.
    pub async fn request(
        &self,
        method: Method,
        name: &str,
        path: &str,
        accept: &[&str],
    ) -> Result<reqwest::Response> {
        let url = format!("{}/v2/{name}/{path}", self.base);
        let mut headers = HeaderMap::new();
        for value in accept {
            if let Ok(value) = value.parse() {
                headers.append(ACCEPT, value);
            }
        }
        let cached = self.cached_token(name).await;
        let send = |authorization: Option<String>| {
            let mut request = self
                .client
                .request(method.clone(), &url)
                .headers(headers.clone());
            if let Some(authorization) = authorization {
                request = request.header(reqwest::header::AUTHORIZATION, authorization);
            }
            request.send()
        };
        let response = send(cached.map(|t| format!("Bearer {t}")))
            .await
            .map_err(unavailable)?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let Some(challenge) = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
        else {
            return Ok(response);
        };
        let (scheme, params) = challenge_params(&challenge);
        let authorization = match scheme.as_str() {
            "bearer" => {
                let token = self.fetch_token(name, &params).await?;
                format!("Bearer {token}")
            }
            "basic" => match self.basic() {
                Some(basic) => basic,
                None => return Ok(response),
            },
            _ => return Ok(response),
        };
        send(Some(authorization)).await.map_err(unavailable)
    }

    fn basic(&self) -> Option<String> {
        use base64::Engine;
        let (user, password) = (self.username.as_ref()?, self.password.as_ref()?);
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{user}:{}", password.expose()))
        ))
    }

    async fn cached_token(&self, name: &str) -> Option<String> {
        let tokens = self.tokens.lock().await;
        tokens
            .get(name)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(token, _)| token.clone())
    }

    async fn fetch_token(&self, name: &str, params: &HashMap<String, String>) -> Result<String> {
        let realm = params
            .get("realm")
            .ok_or_else(|| unavailable("its Bearer challenge names no realm"))?;
        if !(realm.starts_with("https://") || realm.starts_with("http://")) {
            return Err(unavailable(format!(
                "token realm {realm:?} is not an http(s) URL"
            )));
        }
        let scope = format!("repository:{name}:pull");
        let mut query = vec![("scope", scope.as_str())];
        if let Some(service) = params.get("service") {
            query.push(("service", service.as_str()));
        }
        let mut request = self.client.get(realm).query(&query);
        if let Some(basic) = self.basic() {
            request = request.header(reqwest::header::AUTHORIZATION, basic);
        }
        let response = request.send().await.map_err(unavailable)?;
        if !response.status().is_success() {
            return Err(unavailable(format!(
                "its token realm answered {}",
                response.status()
            )));
        }
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let answer: TokenAnswer = response.json().await.map_err(unavailable)?;
        let token = answer
            .token
            .or(answer.access_token)
            .ok_or_else(|| unavailable("its token realm answered without a token"))?;
        // Docker's minimum lifetime is 60 s; renew a little early.
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(60).clamp(10, 3600) - 5);
        let mut tokens = self.tokens.lock().await;
        if tokens.len() >= MAX_TOKENS {
            let now = Instant::now();
            tokens.retain(|_, (_, expires)| *expires > now);
            if tokens.len() >= MAX_TOKENS {
                tokens.clear();
            }
        }
        tokens.insert(name.to_string(), (token.clone(), Instant::now() + lifetime));
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_parsed_with_quoted_commas() {
        let (scheme, params) = challenge_params(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push""#,
        );
        assert_eq!(scheme, "bearer");
        assert_eq!(params["realm"], "https://auth.docker.io/token");
        assert_eq!(params["service"], "registry.docker.io");
        assert_eq!(params["scope"], "repository:library/alpine:pull,push");
        let (scheme, params) = challenge_params(r#"Basic realm=registry"#);
        assert_eq!(scheme, "basic");
        assert_eq!(params["realm"], "registry");
        assert!(challenge_params("").1.is_empty());
        assert!(challenge_params("Bearer ===,,\"").0 == "bearer");
    }
}
