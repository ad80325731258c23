//! Typed configuration from `NIMBUS_*` environment variables (and an optional `.env`).
//!
//! Parsing takes the environment as a value ([`Env`]), so tests never touch the
//! process environment. Each part of Nimbus parses its own settings beside its
//! code and lists its variables as [`Settings`]; this module holds what they share
//! (the environment, secrets, [`SHARED`]). `docs/configuration.md` is generated
//! from every part's list (a test keeps the two equal).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};

/// One documented variable: name, default (as text) and meaning.
#[derive(Debug, Clone, Copy)]
pub struct VarDoc {
    /// The variable's name, e.g. `NIMBUS_DATA_DIR`.
    pub name: &'static str,
    /// The default as shown in the docs (`(none)`, `(generated)` when there is no literal one).
    pub default: &'static str,
    /// What the variable does, in Markdown.
    pub meaning: &'static str,
}

/// The variables of one part of Nimbus, as a section of `docs/configuration.md`.
/// Each part owns its list beside the code that reads it (the control plane's in
/// `control_plane::config`, the pipeline's in `nimbus_logs::pipeline::config`, …);
/// `nimbus config docs` renders them all, and a test of the CLI checks that every
/// `NIMBUS_*` name in the code is in one of them.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The section's title.
    pub service: &'static str,
    /// The variables of the section, in the order they are listed.
    pub variables: &'static [VarDoc],
}

/// What every part reads: mode, data directory, shared secrets, logging, and where
/// clients find the services.
pub const SHARED: Settings = Settings {
    service: "Every service and client",
    variables: &[
    VarDoc { name: "NIMBUS_MODE", default: "dev", meaning: "`dev` or `production`. Production refuses to start with generated or short (< 32 bytes) secrets, without explicit databases (NIMBUS_DATABASE_URL, NIMBUS_CACHE_METRICS_DB, NIMBUS_LOGS_BACKEND) or without NIMBUS_TRUSTED_PROXIES." },
    VarDoc { name: "NIMBUS_TRUSTED_PROXIES", default: "(none)", meaning: "The TLS-terminating reverse proxies in front of the services (IP addresses or CIDR ranges, comma-separated). Required when NIMBUS_MODE=production: the services speak plain HTTP. Only these peers' X-Forwarded-For/-Proto are believed, and a request through them is never a loopback one (metrics need their token)." },
    VarDoc { name: "NIMBUS_DATA_DIR", default: "./.nimbus", meaning: "Directory for embedded state (SQLite files, generated dev secrets)." },
    VarDoc { name: "NIMBUS_CONTROL_PLANE_URL", default: "http://127.0.0.1:8000", meaning: "Where clients (CLI, host agent, benchmarks) reach the control plane." },
    VarDoc { name: "NIMBUS_CONTROL_PLANE_TOKEN", default: "(none)", meaning: "Bearer JWT clients send to the control plane (`nimbus token mint`)." },
    VarDoc { name: "NIMBUS_TOKEN", default: "(none)", meaning: "An admin token `nimbus dev up` writes into `.nimbus/dev.env`, for curl and scripts against the local services; `nimbus report` and `nimbus jobs` use it as `--token` (before NIMBUS_CONTROL_PLANE_TOKEN), `nimbus run` to submit to a control plane (before the one in dev.env)." },
    VarDoc { name: "NIMBUS_BASE_URL", default: "(none)", meaning: "The control plane `nimbus report` and `nimbus jobs` talk to (`--base-url`), before NIMBUS_CONTROL_PLANE_URL (docs/reporting.md)." },
    VarDoc { name: "NIMBUS_JWT_SECRET", default: "(generated)", meaning: "HS256 secret for API tokens. Unset: a random secret is generated once into `$NIMBUS_DATA_DIR/jwt-secret` (development only)." },
    VarDoc { name: "NIMBUS_LOGS_URL", default: "http://127.0.0.1:8002", meaning: "Where clients (host agent, `nimbus report logs`, the dashboard's live logs) reach the logging pipeline." },
    VarDoc { name: "NIMBUS_CACHE_SHARED_SECRET", default: "(derived)", meaning: "HMAC-SHA256 secret of cache tokens, shared by the control plane (mints) and the cache proxy (verifies). Unset: derived from the JWT secret (development only; required when NIMBUS_MODE=production)." },
    VarDoc { name: "NIMBUS_LOG_LEVEL", default: "info", meaning: "Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing directive such as `nimbus_core=debug`)." },
    VarDoc { name: "NIMBUS_LOG_FORMAT", default: "text", meaning: "`text` or `json` log lines on stderr." },
    VarDoc { name: "NIMBUS_OTEL_EXPORTER_ENDPOINT", default: "(none)", meaning: "OTLP/HTTP collector (e.g. `http://collector:4318`; `/v1/traces` is appended): each service exports its spans there, one trace per job (docs/observability.md). Unset: no export." },
    VarDoc { name: "NIMBUS_OTEL_EXPORTER_HEADERS", default: "(none)", meaning: "Headers sent with every export, `name=value` comma-separated (e.g. an API key of a hosted collector)." },
    VarDoc { name: "NIMBUS_OTEL_SAMPLER_RATIO", default: "1.0", meaning: "Share of job traces sampled, 0.0 to 1.0 (by trace id, so every service keeps or drops the same jobs; a trace's children follow its root)." },
    ],
};

/// A string that never shows up in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret value itself, for the few places that need it (signing, headers).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The environment a configuration is read from.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    /// A fixed environment (tests, embedders).
    pub fn from_map<K: Into<String>, V: Into<String>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Env {
            vars: vars
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The process environment, over the values of `./.env` if that file exists.
    pub fn from_process() -> Result<Self> {
        let mut vars = HashMap::new();
        let dotenv = Path::new(".env");
        if dotenv.exists() {
            let entries = dotenvy::from_path_iter(dotenv).map_err(|e| Error::Config {
                variable: ".env".into(),
                message: e.to_string(),
            })?;
            for entry in entries {
                let (key, value) = entry.map_err(|e| Error::Config {
                    variable: ".env".into(),
                    message: e.to_string(),
                })?;
                vars.insert(key, value);
            }
        }
        vars.extend(std::env::vars());
        Ok(Env { vars })
    }

    /// The value of a variable; empty counts as unset.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    /// Sets (or replaces) a variable.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.vars.insert(name.into(), value.into());
    }

    /// Parses a variable, or returns `default` when unset; a bad value names the variable.
    pub fn parse_or<T>(&self, name: &str, default: T) -> Result<T>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw.trim().parse::<T>().map_err(|e| Error::Config {
                variable: name.into(),
                message: format!("invalid value {raw:?}: {e}"),
            }),
        }
    }

    /// A number of seconds (integer or fractional), strictly positive.
    pub fn seconds_or(&self, name: &str, default: Duration) -> Result<Duration> {
        let Some(raw) = self.get(name) else {
            return Ok(default);
        };
        let seconds: f64 = raw.trim().parse().map_err(|_| Error::Config {
            variable: name.into(),
            message: format!("invalid value {raw:?}: expected a number of seconds"),
        })?;
        if !(seconds.is_finite() && seconds > 0.0 && seconds < 1e9) {
            return Err(Error::Config {
                variable: name.into(),
                message: format!("invalid value {raw:?}: must be a positive number of seconds"),
            });
        }
        Ok(Duration::from_secs_f64(seconds))
    }

    /// A variable parsed as an integer of at least 1, or `default` when unset.
    pub fn positive_u32(&self, name: &str, default: u32) -> Result<u32> {
        let value: u32 = self.parse_or(name, default)?;
        if value == 0 {
            return Err(Error::Config {
                variable: name.into(),
                message: "must be at least 1".into(),
            });
        }
        Ok(value)
    }

    /// A variable as a [`Secret`], `None` when unset or empty.
    pub fn secret(&self, name: &str) -> Option<Secret> {
        self.get(name).map(Secret::new)
    }

    /// `NIMBUS_DATA_DIR`, default `./.nimbus`.
    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from(self.get("NIMBUS_DATA_DIR").unwrap_or("./.nimbus"))
    }
}

/// Where clients find the control plane, and the token they present.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The control plane's base URL, without a trailing `/` (`NIMBUS_CONTROL_PLANE_URL`).
    pub control_plane_url: String,
    /// The bearer token sent with requests (`NIMBUS_CONTROL_PLANE_TOKEN`).
    pub token: Option<Secret>,
}

impl ClientConfig {
    /// Reads `NIMBUS_CONTROL_PLANE_URL` (default `http://127.0.0.1:8000`, must be
    /// http(s)) and `NIMBUS_CONTROL_PLANE_TOKEN`.
    pub fn from_env(env: &Env) -> Result<Self> {
        let url = env
            .get("NIMBUS_CONTROL_PLANE_URL")
            .unwrap_or("http://127.0.0.1:8000")
            .trim_end_matches('/')
            .to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Error::Config {
                variable: "NIMBUS_CONTROL_PLANE_URL".into(),
                message: format!("{url:?} is not an http(s) URL"),
            });
        }
        Ok(ClientConfig {
            control_plane_url: url,
            token: env.secret("NIMBUS_CONTROL_PLANE_TOKEN"),
        })
    }
}

/// The JWT secret: `NIMBUS_JWT_SECRET`, or for development a random secret kept in
/// `$NIMBUS_DATA_DIR/jwt-secret` (created on first use, mode 0600), so the control
/// plane and the CLI started in the same directory agree without any set-up.
pub fn jwt_secret(env: &Env, data_dir: &Path) -> Result<Secret> {
    secret_or_generated(env, data_dir, "NIMBUS_JWT_SECRET", "jwt-secret")
}

/// The cache token secret: `NIMBUS_CACHE_SHARED_SECRET`, or for development one
/// derived from the JWT secret, so services that share a JWT secret (or a data
/// directory) agree on cache tokens with no set-up. Production needs it set.
pub fn cache_shared_secret(env: &Env, data_dir: &Path) -> Result<Secret> {
    use hmac::{Hmac, Mac};
    if let Some(secret) = env.secret("NIMBUS_CACHE_SHARED_SECRET") {
        check_secret_length(env, "NIMBUS_CACHE_SHARED_SECRET", &secret)?;
        return Ok(secret);
    }
    if production_mode(env)? {
        return Err(Error::Config {
            variable: "NIMBUS_CACHE_SHARED_SECRET".into(),
            message: "must be set when NIMBUS_MODE=production".into(),
        });
    }
    let jwt = jwt_secret(env, data_dir)?;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(jwt.expose().as_bytes())
        .map_err(|e| Error::Internal(format!("deriving the cache secret: {e}")))?;
    mac.update(b"nimbus cache token secret v1");
    Ok(Secret::new(hex::encode(mac.finalize().into_bytes())))
}

/// Secrets need 16 bytes, 32 in production (what an HMAC-SHA256 key should hold).
fn check_secret_length(env: &Env, variable: &str, secret: &Secret) -> Result<()> {
    let least = if production_mode(env)? { 32 } else { 16 };
    if secret.expose().len() < least {
        let mode = if least == 32 {
            " when NIMBUS_MODE=production"
        } else {
            ""
        };
        return Err(Error::Config {
            variable: variable.into(),
            message: format!("must be at least {least} bytes long{mode}"),
        });
    }
    Ok(())
}

/// A setting production must name: outside production the caller's embedded
/// default applies (`None`); in production a missing one is refused, saying `why`.
pub fn explicit<'a>(env: &'a Env, variable: &str, why: &str) -> Result<Option<&'a str>> {
    let value = env.get(variable).filter(|v| !v.trim().is_empty());
    if value.is_none() && production_mode(env)? {
        return Err(Error::Config {
            variable: variable.into(),
            message: format!("must be set when NIMBUS_MODE=production ({why})"),
        });
    }
    Ok(value)
}

/// The TLS-terminating proxies in front of a service (`NIMBUS_TRUSTED_PROXIES`:
/// addresses or CIDR ranges, comma-separated). The services speak plain HTTP, so
/// production refuses to start until the proxy that gives them TLS is declared.
pub fn trusted_proxies(env: &Env) -> Result<crate::forwarded::TrustedProxies> {
    let bad = |message: String| Error::Config {
        variable: "NIMBUS_TRUSTED_PROXIES".into(),
        message,
    };
    let proxies =
        crate::forwarded::TrustedProxies::parse(env.get("NIMBUS_TRUSTED_PROXIES").unwrap_or(""))
            .map_err(bad)?;
    if proxies.is_empty() && production_mode(env)? {
        return Err(bad(
            "must name the TLS-terminating proxy when NIMBUS_MODE=production (the services serve plain HTTP)"
                .into(),
        ));
    }
    Ok(proxies)
}

/// `text` with the passwords of URLs in it (`scheme://user:password@host`) masked,
/// for printing configurations.
pub fn redact_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let authority_end = after.find(['/', '"', ' ', ',', ')']).unwrap_or(after.len());
        let authority = &after[..authority_end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
                out.push_str(user);
                if userinfo.contains(':') {
                    out.push_str(":***");
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[authority_end..];
    }
    out.push_str(rest);
    out
}

/// Whether `NIMBUS_MODE=production`: generated secrets and embedded defaults that
/// only suit one developer's machine are refused at start-up.
pub fn production_mode(env: &Env) -> Result<bool> {
    match env.get("NIMBUS_MODE").unwrap_or("dev") {
        "dev" | "development" => Ok(false),
        "production" | "prod" => Ok(true),
        other => Err(Error::Config {
            variable: "NIMBUS_MODE".into(),
            message: format!("invalid value {other:?}: expected dev or production"),
        }),
    }
}

fn secret_or_generated(env: &Env, data_dir: &Path, variable: &str, file: &str) -> Result<Secret> {
    if let Some(secret) = env.secret(variable) {
        check_secret_length(env, variable, &secret)?;
        return Ok(secret);
    }
    if production_mode(env)? {
        return Err(Error::Config {
            variable: variable.into(),
            message: "must be set when NIMBUS_MODE=production".into(),
        });
    }
    let path = data_dir.join(file);
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim();
        if !existing.is_empty() {
            return Ok(Secret::new(existing));
        }
    }
    std::fs::create_dir_all(data_dir)
        .map_err(|e| Error::io(format!("creating {}", data_dir.display()), e))?;
    let secret = hex::encode(rand::random::<[u8; 32]>());
    write_private_file(&path, &secret)?;
    tracing::warn!(
        path = %path.display(),
        "{variable} is not set: using a generated development secret"
    );
    // Another process may have won the race to create it: read back what is there.
    let stored = std::fs::read_to_string(&path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    Ok(Secret::new(stored.trim()))
}

fn write_private_file(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(mut file) => file
            .write_all(contents.as_bytes())
            .map_err(|e| Error::io(format!("writing {}", path.display()), e)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(format!("creating {}", path.display()), e)),
    }
}

/// Renders `sections` as the variables part of `docs/configuration.md`: a heading
/// and a table per section, in the order given.
pub fn render_variables(sections: &[&Settings]) -> String {
    let mut out = String::new();
    for section in sections {
        out.push_str(&format!(
            "### {}\n\n| Variable | Default | Meaning |\n|---|---|---|\n",
            section.service
        ));
        for var in section.variables {
            out.push_str(&format!(
                "| `{}` | `{}` | {} |\n",
                var.name, var.default, var.meaning
            ));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn production_needs_long_secrets_proxies_and_explicit_settings() {
        let prod = |pairs: &[(&'static str, &'static str)]| {
            let mut env = Env::from_map([("NIMBUS_MODE", "production")]);
            for (k, v) in pairs {
                env.set(*k, *v);
            }
            env
        };
        let dir = std::path::Path::new("/nonexistent");
        let short = prod(&[("NIMBUS_JWT_SECRET", "0123456789abcdef0123")]);
        let error = jwt_secret(&short, dir).expect_err("20 bytes");
        assert!(error.to_string().contains("at least 32 bytes"), "{error}");
        let dev = Env::from_map([("NIMBUS_JWT_SECRET", "0123456789abcdef0123")]);
        assert!(
            jwt_secret(&dev, dir).is_ok(),
            "16 bytes do outside production"
        );

        let error = trusted_proxies(&prod(&[])).expect_err("no proxy");
        assert!(
            error.to_string().contains("NIMBUS_TRUSTED_PROXIES"),
            "{error}"
        );
        let proxies = trusted_proxies(&prod(&[(
            "NIMBUS_TRUSTED_PROXIES",
            "10.0.0.5, 10.1.0.0/16,fd00::/8",
        )]))
        .expect("valid");
        assert_eq!(
            proxies.entries(),
            ["10.0.0.5/32", "10.1.0.0/16", "fd00::/8"]
        );
        for bad in ["proxy.example", "10.0.0.0/33", "::1/129"] {
            let env = Env::from_map([("NIMBUS_TRUSTED_PROXIES", bad)]);
            assert!(trusted_proxies(&env).is_err(), "{bad}");
        }
        assert!(trusted_proxies(&Env::from_map([("X", "y")]))
            .expect("dev")
            .is_empty());

        let error =
            explicit(&prod(&[]), "NIMBUS_DATABASE_URL", "no SQLite default").expect_err("missing");
        assert!(error.to_string().contains("no SQLite default"), "{error}");
        assert_eq!(
            explicit(&Env::from_map([("X", "y")]), "NIMBUS_DATABASE_URL", "").expect("dev"),
            None
        );
    }

    #[test]
    fn printed_configurations_hide_url_passwords() {
        assert_eq!(
            redact_credentials(
                r#"Config { database_url: "postgres://nimbus:hunter2@db:5432/nimbus", x: "http://plain/" }"#
            ),
            r#"Config { database_url: "postgres://nimbus:***@db:5432/nimbus", x: "http://plain/" }"#
        );
        assert_eq!(
            redact_credentials("sqlite://./.nimbus/cp.db"),
            "sqlite://./.nimbus/cp.db"
        );
        assert_eq!(redact_credentials("http://token@host"), "http://token@host");
    }

    use super::*;

    #[test]
    fn a_dev_secret_is_generated_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("nimbus-cfg-{}", uuid::Uuid::new_v4()));
        let env = Env::from_map([("NIMBUS_DATA_DIR", dir.to_string_lossy().to_string())]);
        let first = jwt_secret(&env, &dir).expect("generated");
        let second = jwt_secret(&env, &dir).expect("reused");
        assert_eq!(first, second);
        assert_eq!(first.expose().len(), 64);
        let _ = std::fs::remove_dir_all(dir);
    }
}
