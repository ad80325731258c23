//! `nimbus._native`: the Rust side of the `nimbus` Python package
//! (bindings/python/python/nimbus re-exports it with stubs and docs;
//! docs/python.md is the guide).
//!
//! The glue only: every rule is the Rust crates' own — the policy is
//! `nimbus_policy::Policy`, the clients sit on `ControlPlaneApi` and `JobSource`,
//! the embedded control plane is `nimbus_core::control_plane`.

use pyo3::prelude::*;

mod cache;
mod client;
mod control_plane;
mod convert;
mod errors;
mod functions;
mod logs;
mod logs_client;
mod policy;
mod runtime;
mod service;
mod serving;

#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(module)?;
    module.add_class::<policy::Policy>()?;
    module.add_class::<policy::Decision>()?;
    module.add_class::<policy::Reason>()?;
    module.add_class::<client::ControlPlaneClient>()?;
    module.add_class::<client::AsyncControlPlaneClient>()?;
    module.add_class::<control_plane::ControlPlane>()?;
    module.add_class::<control_plane::EmbeddedControlPlane>()?;
    module.add_class::<logs::LoggingPipeline>()?;
    module.add_class::<logs::EmbeddedLoggingPipeline>()?;
    module.add_class::<logs_client::LogsClient>()?;
    module.add_class::<logs_client::AsyncLogsClient>()?;
    module.add_class::<cache::CacheClient>()?;
    module.add_class::<cache::AsyncCacheClient>()?;
    module.add_class::<cache::CacheProxy>()?;
    module.add_class::<cache::EmbeddedCacheProxy>()?;
    module.add_function(wrap_pyfunction!(
        functions::verify_github_signature,
        module
    )?)?;
    module.add_function(wrap_pyfunction!(functions::parse_metadata_labels, module)?)?;
    module.add_function(wrap_pyfunction!(functions::mint_token, module)?)?;
    module.add_function(wrap_pyfunction!(functions::mint_cache_token, module)?)?;
    module.add_function(wrap_pyfunction!(service::serve, module)?)?;
    module.add_function(wrap_pyfunction!(service::cli, module)?)?;
    Ok(())
}
