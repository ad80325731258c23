//! Configuration of the cache proxy, from `NIMBUS_*` variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use nimbus_core::config::{cache_shared_secret, jwt_secret, production_mode, Secret};
use nimbus_core::Env;

use crate::error::{Error, Result};
use crate::maintenance::Budgets;

/// The variables the cache proxy reads (a section of docs/configuration.md).
pub const SETTINGS: nimbus_core::config::Settings = nimbus_core::config::Settings {
    service: "Cache proxy (nimbus-cache-proxy)",
    variables: &[
        nimbus_core::config::VarDoc { name: "NIMBUS_CACHE_PROXY_ADDR", default: "0.0.0.0:8001", meaning: "Listen address of `nimbus-cache-proxy` (also `--listen`)." },
        nimbus_core::config::VarDoc { name: "NIMBUS_CACHE_PUBLIC_URL", default: "(the request's Host)", meaning: "Base of the upload/download links the cache proxy hands out; set it when clients reach the proxy through another name." },
        nimbus_core::config::VarDoc { name: "NIMBUS_CACHE_PROXY_METRICS_TOKEN", default: "(none)", meaning: "Bearer token for the cache proxy's `/metrics` from non-loopback peers; unset means loopback only." },
        nimbus_core::config::VarDoc { name: "NIMBUS_CACHE_BACKEND", default: "fs", meaning: "Where cache blobs live: `fs` (a local directory) or `s3` (any S3-compatible store)." },
        nimbus_core::config::VarDoc { name: "NIMBUS_CACHE_DIR", default: "$NIMBUS_DATA_DIR/cache", meaning: "Directory of the `fs` cache backend." },
        nimbus_core::config::VarDoc { name: "NIMBUS_CACHE_S3_BUCKET", default: "(none)", meaning: "Bucket of the `s3` cache backend (required with it)." },
        nimbus_core::config::VarDoc { name: "NIMBUS_CACHE_S3_ENDPOINT", default: "(AWS)", meaning: "Endpoint of an S3-compatible store, e.g. `http://127.0.0.1:8333`." },
        nimbus_core::config::VarDoc { name: "NIMBUS_CACHE_S3_REGION", default: "us-east-1", meaning: "Region of the bucket." },
        nimbus_core::config::VarDoc { name: "NIMBUS_CACHE_S3_PREFIX", default: "(none)", meaning: "Prefix of every object key the cache writes, e.g. `nimbus-cache/`." },
        nimbus_core::config::VarDoc { name: "NIMBUS_CACHE_S3_PATH_STYLE", default: "false", meaning: "`true` for path-style requests (`endpoint/bucket/key`), which most S3-compatible servers need." },
        nimbus_core::config::VarDoc { name: "NIMBUS_CACHE_S3_ACCESS_KEY_ID", default: "$AWS_ACCESS_KEY_ID", meaning: "Access key of the bucket." },
        nimbus_core::config::VarDoc { name: "NIMBUS_CACHE_S3_SECRET_ACCESS_KEY", default: "$AWS_SECRET_ACCESS_KEY", meaning: "Secret key of the bucket." },
        nimbus_core::config::VarDoc { name: "NIMBUS_CACHE_METRICS_DB", default: "$NIMBUS_DATA_DIR/cache-index.db (dev only)", meaning: "The cache index (entries, sizes, last access, hit/miss/eviction counters): a SQLite path or a `postgres://` URL. Required when NIMBUS_MODE=production." },
        nimbus_core::config::VarDoc { name: "NIMBUS_CACHE_MAX_BYTES", default: "(none)", meaning: "Byte budget of all orgs together (`10GiB`, `500GB` or bytes); least recently used entries are evicted beyond it." },
        nimbus_core::config::VarDoc { name: "NIMBUS_CACHE_ORG_MAX_BYTES", default: "10GiB", meaning: "Byte budget of each org; least recently used entries are evicted beyond it, and no entry may be larger." },
        nimbus_core::config::VarDoc { name: "NIMBUS_CACHE_MAX_IDLE_DAYS", default: "7", meaning: "Entries not restored for this many days are evicted." },
        nimbus_core::config::VarDoc { name: "NIMBUS_CACHE_UPLOAD_TTL", default: "900", meaning: "Seconds an upload may go without activity (reservation, chunk, block) before it is dropped and its key freed." },
        nimbus_core::config::VarDoc { name: "NIMBUS_CACHE_UPLOAD_MAX_AGE", default: "21600", meaning: "Seconds an upload may stay unfinished however busy it is (a trickle of parts cannot keep staged bytes forever)." },
        nimbus_core::config::VarDoc { name: "NIMBUS_CACHE_ORG_MAX_PENDING_UPLOADS", default: "64", meaning: "Unfinished uploads one org may have at once; more are refused with 429. Their staged bytes together count against the org's budget." },
        nimbus_core::config::VarDoc { name: "NIMBUS_CACHE_EVICTION_INTERVAL", default: "60", meaning: "Seconds between eviction passes (they also run after each commit)." },
        nimbus_core::config::VarDoc { name: "NIMBUS_DOCKER_CACHE_DB_PATH", default: "$NIMBUS_DATA_DIR/registry-index.db (dev only)", meaning: "The registry index (repositories and owners, tags, manifests, blobs, last pull): a SQLite path or a `postgres://` URL. Required when NIMBUS_MODE=production." },
        nimbus_core::config::VarDoc { name: "NIMBUS_DOCKER_UPSTREAM", default: "https://registry-1.docker.io", meaning: "The registry that `library/…` and `mirror/…` repositories copy (Docker Hub's by default); `none` serves mirrors only from what they hold." },
        nimbus_core::config::VarDoc { name: "NIMBUS_DOCKER_UPSTREAM_USERNAME", default: "(anonymous)", meaning: "User for the upstream registry (its token realm or Basic auth), e.g. to lift Docker Hub's anonymous pull limit." },
        nimbus_core::config::VarDoc { name: "NIMBUS_DOCKER_UPSTREAM_PASSWORD", default: "(none)", meaning: "Password or access token of NIMBUS_DOCKER_UPSTREAM_USERNAME." },
        nimbus_core::config::VarDoc { name: "NIMBUS_DOCKER_TAG_TTL", default: "300", meaning: "Seconds a mirrored tag is served before it is checked against the upstream again (a HEAD; the copy is served while the upstream is down)." },
        nimbus_core::config::VarDoc { name: "NIMBUS_DOCKER_CACHE_MAX_BYTES", default: "50GiB", meaning: "Byte budget of the registry's blobs (also the largest blob): beyond it the least recently pulled mirror tags are evicted; org images are never evicted." },
        nimbus_core::config::VarDoc { name: "NIMBUS_CACHE_SCRUB_INTERVAL", default: "21600", meaning: "Seconds between integrity scrubs (every committed entry's sha256 re-checked; corrupt or missing entries are dropped)." },
    ],
};

/// Where blobs live.
#[derive(Debug, Clone)]
pub enum BackendConfig {
    /// A local directory (`NIMBUS_CACHE_BACKEND=fs`, the default).
    Fs {
        /// The directory (`NIMBUS_CACHE_DIR`, default `$NIMBUS_DATA_DIR/cache`).
        root: PathBuf,
    },
    /// An S3-compatible bucket (`NIMBUS_CACHE_BACKEND=s3`); needs the `s3`
    /// feature, or opening the backend fails.
    S3(S3Config),
}

/// An S3-compatible bucket (`NIMBUS_CACHE_S3_*`).
#[derive(Debug, Clone)]
pub struct S3Config {
    /// The bucket's name (`NIMBUS_CACHE_S3_BUCKET`, required); created if missing.
    pub bucket: String,
    /// Endpoint URL of an S3-compatible store, e.g. `http://127.0.0.1:8333`;
    /// `None` talks to AWS.
    pub endpoint: Option<String>,
    /// The bucket's region (`NIMBUS_CACHE_S3_REGION`, default `us-east-1`).
    pub region: String,
    /// Prepended to every object key, e.g. `nimbus-cache/`.
    pub prefix: String,
    /// Path-style requests (`endpoint/bucket/key`) instead of virtual-hosted
    /// ones; most S3-compatible servers need it. Default `false`.
    pub path_style: bool,
    /// `NIMBUS_CACHE_S3_ACCESS_KEY_ID`; `None` falls back to `AWS_ACCESS_KEY_ID`
    /// when connecting, and fails if that is unset too.
    pub access_key_id: Option<String>,
    /// `NIMBUS_CACHE_S3_SECRET_ACCESS_KEY`; `None` falls back to
    /// `AWS_SECRET_ACCESS_KEY` when connecting, and fails if that is unset too.
    pub secret_access_key: Option<Secret>,
}

/// Everything the cache proxy service needs to start; [`ProxyConfig::from_env`]
/// reads it from the variables in [`SETTINGS`].
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The TLS-terminating proxies in front (NIMBUS_TRUSTED_PROXIES).
    pub trusted_proxies: nimbus_core::forwarded::TrustedProxies,
    /// The address to listen on (`NIMBUS_CACHE_PROXY_ADDR`, default `0.0.0.0:8001`).
    pub listen: SocketAddr,
    /// Where blobs live (`NIMBUS_CACHE_BACKEND`).
    pub backend: BackendConfig,
    /// `NIMBUS_CACHE_METRICS_DB`: SQLite path or PostgreSQL URL of the index.
    pub index_url: String,
    /// The secret cache tokens are verified with, and upload/download links and
    /// registry tokens signed with (`NIMBUS_CACHE_SHARED_SECRET`; in development, derived from
    /// the JWT secret). Must match the control plane's, which mints the tokens.
    pub shared_secret: Secret,
    /// Verifies the control plane's JWTs (API tokens), accepted by the usage
    /// report and the registry (`NIMBUS_JWT_SECRET`).
    pub jwt_secret: Secret,
    /// Bearer token non-loopback peers need for `/metrics`
    /// (`NIMBUS_CACHE_PROXY_METRICS_TOKEN`); `None` allows loopback peers only.
    pub metrics_token: Option<Secret>,
    /// Base of the upload/download links handed to clients; `None` uses the
    /// request's `Host`.
    pub public_url: Option<String>,
    /// Byte budgets, idle age and upload lifetimes that maintenance enforces
    /// (`NIMBUS_CACHE_MAX_BYTES`, `NIMBUS_CACHE_ORG_MAX_BYTES`, …).
    pub budgets: Budgets,
    /// Time between eviction passes, also the registry's garbage collection
    /// (`NIMBUS_CACHE_EVICTION_INTERVAL`, default 60 s).
    pub eviction_interval: Duration,
    /// Time between integrity scrubs (`NIMBUS_CACHE_SCRUB_INTERVAL`, default 6 h).
    pub scrub_interval: Duration,
    /// How long upload/download links stay valid.
    pub link_ttl: Duration,
    /// Unfinished uploads one org may have at once
    /// (`NIMBUS_CACHE_ORG_MAX_PENDING_UPLOADS`).
    pub max_pending_uploads: u32,
    /// `NIMBUS_DOCKER_CACHE_DB_PATH`: SQLite path or PostgreSQL URL of the
    /// registry index.
    pub registry_index_url: String,
    /// The registry's upstream, tag TTL and budget (`NIMBUS_DOCKER_*`).
    pub registry: crate::registry::RegistrySettings,
}

fn config_error(variable: &str, message: impl Into<String>) -> Error {
    Error::Config {
        variable: variable.into(),
        message: message.into(),
    }
}

/// A byte count: a plain number, or with a unit (`10GiB`, `500MB`, `1TiB`).
pub fn parse_bytes(raw: &str) -> Option<u64> {
    let raw = raw.trim();
    let split = raw
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let number: f64 = number.parse().ok()?;
    let multiplier: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1024.0 * 1024.0,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "ti" | "tib" => 1024.0f64.powi(4),
        _ => return None,
    };
    let bytes = number * multiplier;
    (bytes.is_finite() && (1.0..1.8e19).contains(&bytes)).then_some(bytes as u64)
}

fn bytes_var(env: &Env, name: &str) -> Result<Option<u64>> {
    match env.get(name) {
        None => Ok(None),
        Some(raw) => parse_bytes(raw).map(Some).ok_or_else(|| {
            config_error(
                name,
                format!(
                    "invalid value {raw:?}: expected a byte count such as 10737418240 or 10GiB"
                ),
            )
        }),
    }
}

impl ProxyConfig {
    /// Reads the configuration from `env`, applying the defaults in
    /// [`SETTINGS`]. Fails with [`Error::Config`] on an invalid value, or when
    /// `NIMBUS_MODE=production` and an index location is not set.
    pub fn from_env(env: &Env) -> Result<Self> {
        let data_dir = env.data_dir();
        let production = production_mode(env)?;
        let listen = env.parse_or(
            "NIMBUS_CACHE_PROXY_ADDR",
            SocketAddr::from(([0, 0, 0, 0], 8001)),
        )?;
        let backend = match env.get("NIMBUS_CACHE_BACKEND").unwrap_or("fs") {
            "fs" => BackendConfig::Fs {
                root: env
                    .get("NIMBUS_CACHE_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| data_dir.join("cache")),
            },
            "s3" => {
                let bucket = env.get("NIMBUS_CACHE_S3_BUCKET").ok_or_else(|| {
                    config_error(
                        "NIMBUS_CACHE_S3_BUCKET",
                        "must be set for NIMBUS_CACHE_BACKEND=s3",
                    )
                })?;
                let mut prefix = env.get("NIMBUS_CACHE_S3_PREFIX").unwrap_or("").to_string();
                if !prefix.is_empty() && !prefix.ends_with('/') {
                    prefix.push('/');
                }
                BackendConfig::S3(S3Config {
                    bucket: bucket.to_string(),
                    endpoint: env.get("NIMBUS_CACHE_S3_ENDPOINT").map(str::to_string),
                    region: env
                        .get("NIMBUS_CACHE_S3_REGION")
                        .unwrap_or("us-east-1")
                        .to_string(),
                    prefix,
                    path_style: env.parse_or("NIMBUS_CACHE_S3_PATH_STYLE", false)?,
                    access_key_id: env.get("NIMBUS_CACHE_S3_ACCESS_KEY_ID").map(str::to_string),
                    secret_access_key: env.secret("NIMBUS_CACHE_S3_SECRET_ACCESS_KEY"),
                })
            }
            other => {
                return Err(config_error(
                    "NIMBUS_CACHE_BACKEND",
                    format!("invalid value {other:?}: expected fs or s3"),
                ))
            }
        };
        let index_url =
            match env.get("NIMBUS_CACHE_METRICS_DB") {
                Some(url) => url.to_string(),
                None if production => return Err(config_error(
                    "NIMBUS_CACHE_METRICS_DB",
                    "must be set when NIMBUS_MODE=production (a SQLite path or a postgres:// URL)",
                )),
                None => data_dir.join("cache-index.db").display().to_string(),
            };
        let registry_index_url =
            match env.get("NIMBUS_DOCKER_CACHE_DB_PATH") {
                Some(url) => url.to_string(),
                None if production => return Err(config_error(
                    "NIMBUS_DOCKER_CACHE_DB_PATH",
                    "must be set when NIMBUS_MODE=production (a SQLite path or a postgres:// URL)",
                )),
                None => data_dir.join("registry-index.db").display().to_string(),
            };
        let upstream = match env.get("NIMBUS_DOCKER_UPSTREAM") {
            Some("none") => None,
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                Some(url.trim_end_matches('/').to_string())
            }
            Some(other) => {
                return Err(config_error(
                    "NIMBUS_DOCKER_UPSTREAM",
                    format!("invalid value {other:?}: expected an http(s):// URL or none"),
                ))
            }
            None => Some(crate::registry::DEFAULT_UPSTREAM.to_string()),
        };
        let defaults = crate::registry::RegistrySettings::default();
        let registry = crate::registry::RegistrySettings {
            upstream,
            upstream_username: env
                .get("NIMBUS_DOCKER_UPSTREAM_USERNAME")
                .map(str::to_string),
            upstream_password: env.secret("NIMBUS_DOCKER_UPSTREAM_PASSWORD"),
            tag_ttl: env.seconds_or("NIMBUS_DOCKER_TAG_TTL", defaults.tag_ttl)?,
            max_bytes: bytes_var(env, "NIMBUS_DOCKER_CACHE_MAX_BYTES")?
                .unwrap_or(defaults.max_bytes),
            upload_ttl: env.seconds_or("NIMBUS_CACHE_UPLOAD_TTL", defaults.upload_ttl)?,
            max_uploads_per_org: env.parse_or("NIMBUS_CACHE_ORG_MAX_PENDING_UPLOADS", 64u32)?,
            ..defaults
        };
        let max_idle_days: u32 = env.parse_or("NIMBUS_CACHE_MAX_IDLE_DAYS", 7)?;
        if max_idle_days == 0 {
            return Err(config_error(
                "NIMBUS_CACHE_MAX_IDLE_DAYS",
                "must be at least 1",
            ));
        }
        let public_url = env
            .get("NIMBUS_CACHE_PUBLIC_URL")
            .map(|url| url.trim_end_matches('/').to_string());
        if let Some(url) = &public_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(config_error(
                    "NIMBUS_CACHE_PUBLIC_URL",
                    format!("invalid value {url:?}: expected an http:// or https:// URL"),
                ));
            }
        }
        Ok(ProxyConfig {
            listen,
            backend,
            index_url,
            shared_secret: cache_shared_secret(env, &data_dir)?,
            jwt_secret: jwt_secret(env, &data_dir)?,
            trusted_proxies: nimbus_core::config::trusted_proxies(env)?,
            metrics_token: env.secret("NIMBUS_CACHE_PROXY_METRICS_TOKEN"),
            public_url,
            budgets: Budgets {
                global_bytes: bytes_var(env, "NIMBUS_CACHE_MAX_BYTES")?,
                org_bytes: Some(
                    bytes_var(env, "NIMBUS_CACHE_ORG_MAX_BYTES")?.unwrap_or(10 * (1 << 30)),
                ),
                max_idle: Duration::from_secs(u64::from(max_idle_days) * 86_400),
                upload_ttl: env.seconds_or("NIMBUS_CACHE_UPLOAD_TTL", Duration::from_secs(900))?,
                upload_max_age: env
                    .seconds_or("NIMBUS_CACHE_UPLOAD_MAX_AGE", Duration::from_secs(6 * 3600))?,
            },
            eviction_interval: env
                .seconds_or("NIMBUS_CACHE_EVICTION_INTERVAL", Duration::from_secs(60))?,
            scrub_interval: env
                .seconds_or("NIMBUS_CACHE_SCRUB_INTERVAL", Duration::from_secs(6 * 3600))?,
            link_ttl: Duration::from_secs(6 * 3600),
            max_pending_uploads: env.parse_or("NIMBUS_CACHE_ORG_MAX_PENDING_UPLOADS", 64u32)?,
            registry_index_url,
            registry,
        })
    }

    /// What uploads may take: entries up to the budgets, staging up to the org's
    /// budget, `NIMBUS_CACHE_ORG_MAX_PENDING_UPLOADS` unfinished uploads per org.
    pub fn limits(&self) -> crate::cache::Limits {
        let max_entry_bytes = self.max_entry_bytes();
        crate::cache::Limits {
            max_entry_bytes,
            org_staging_bytes: self.budgets.org_bytes.unwrap_or(max_entry_bytes),
            max_pending_uploads: self.max_pending_uploads,
        }
    }

    /// The largest single entry the budgets allow.
    pub fn max_entry_bytes(&self) -> u64 {
        [self.budgets.global_bytes, self.budgets.org_bytes]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_take_units() {
        assert_eq!(parse_bytes("1024"), Some(1024));
        assert_eq!(parse_bytes("10GiB"), Some(10 * (1 << 30)));
        assert_eq!(parse_bytes("1.5 MB"), Some(1_500_000));
        assert_eq!(parse_bytes("0"), None);
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("5 parsecs"), None);
    }

    #[test]
    fn defaults_and_bad_values() {
        let dir = std::env::temp_dir().join(format!("nimbus-cache-config-{}", std::process::id()));
        let data_dir = dir.display().to_string();
        let config =
            ProxyConfig::from_env(&Env::from_map([("NIMBUS_DATA_DIR", data_dir.as_str())]))
                .expect("defaults");
        assert_eq!(config.listen.port(), 8001);
        assert!(matches!(config.backend, BackendConfig::Fs { .. }));
        assert_eq!(config.max_entry_bytes(), 10 * (1 << 30));
        for (name, value) in [
            ("NIMBUS_CACHE_BACKEND", "ftp"),
            ("NIMBUS_CACHE_MAX_BYTES", "many"),
            ("NIMBUS_CACHE_MAX_IDLE_DAYS", "0"),
            ("NIMBUS_CACHE_PUBLIC_URL", "cache.example"),
            ("NIMBUS_DOCKER_UPSTREAM", "registry.example"),
            ("NIMBUS_DOCKER_CACHE_MAX_BYTES", "huge"),
        ] {
            let error = ProxyConfig::from_env(&Env::from_map([
                ("NIMBUS_DATA_DIR", data_dir.as_str()),
                (name, value),
            ]))
            .expect_err(name);
            assert!(error.to_string().contains(name), "{error}");
        }
        let error = ProxyConfig::from_env(&Env::from_map([
            ("NIMBUS_DATA_DIR", data_dir.as_str()),
            ("NIMBUS_MODE", "production"),
            ("NIMBUS_JWT_SECRET", "0123456789abcdef0123"),
            ("NIMBUS_CACHE_SHARED_SECRET", "0123456789abcdef0123"),
        ]))
        .expect_err("production needs an index");
        assert!(
            error.to_string().contains("NIMBUS_CACHE_METRICS_DB"),
            "{error}"
        );
        let error = ProxyConfig::from_env(&Env::from_map([
            ("NIMBUS_DATA_DIR", data_dir.as_str()),
            ("NIMBUS_MODE", "production"),
            ("NIMBUS_JWT_SECRET", "0123456789abcdef0123"),
            ("NIMBUS_CACHE_SHARED_SECRET", "0123456789abcdef0123"),
            ("NIMBUS_CACHE_METRICS_DB", "postgres://db.internal/cache"),
        ]))
        .expect_err("production needs a registry index");
        assert!(
            error.to_string().contains("NIMBUS_DOCKER_CACHE_DB_PATH"),
            "{error}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
