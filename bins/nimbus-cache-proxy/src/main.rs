//! `nimbus-cache-proxy`: the GitHub Actions cache (v1, v2) and artifact API on local
//! disk or S3 (default 0.0.0.0:8001). See nimbus_cache::server for the routes.

use std::process::ExitCode;

use nimbus_cache::server::{self, ProxyConfig};
use nimbus_core::service;

fn main() -> ExitCode {
    service::main(
        "nimbus-cache-proxy",
        "NIMBUS_CACHE_PROXY_ADDR",
        ProxyConfig::from_env,
        server::run,
    )
}
