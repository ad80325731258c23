//! `nimbus.ControlPlane`: a control plane embedded in the Python process, for
//! tooling and tests. `start()` opens its store, serves the HTTP API on a port (so
//! agents and `ControlPlaneClient`s can reach it) and returns the running
//! `EmbeddedControlPlane`, whose `client()` and `agent()` call the same rules in
//! process, with no HTTP and no tokens.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use nimbus_core::auth::{JwtKeys, Principal, Role};
use nimbus_core::control_plane::{self, AppState};
use nimbus_core::{ControlPlaneConfig, Env, Secret};
use pyo3::prelude::*;

use crate::client::{AsyncControlPlaneClient, Calls, ControlPlaneClient};
use crate::errors::{core_error, InvalidInput};
use crate::runtime::block_on;
use crate::serving::Serving;

/// A control plane to run in this process, configured by `NIMBUS_*` settings
/// given as a dict (docs/configuration.md; the process environment is not read).
/// Unless given: an in-memory SQLite store, `127.0.0.1` on a free port, and a
/// random JWT secret.
#[pyclass(module = "nimbus._native", frozen)]
pub struct ControlPlane {
    settings: BTreeMap<String, String>,
}

#[pymethods]
impl ControlPlane {
    #[new]
    #[pyo3(signature = (config=None))]
    fn new(config: Option<BTreeMap<String, String>>) -> PyResult<Self> {
        let mut settings = config.unwrap_or_default();
        if let Some(key) = settings.keys().find(|key| !key.starts_with("NIMBUS_")) {
            return Err(InvalidInput::new_err(format!(
                "setting {key:?}: settings are NIMBUS_* variables (docs/configuration.md)"
            )));
        }
        settings
            .entry("NIMBUS_DATABASE_URL".into())
            .or_insert_with(|| "sqlite::memory:".into());
        settings
            .entry("NIMBUS_CONTROL_PLANE_ADDR".into())
            .or_insert_with(|| "127.0.0.1:0".into());
        settings
            .entry("NIMBUS_JWT_SECRET".into())
            .or_insert_with(|| hex::encode(rand::random::<[u8; 32]>()));
        Ok(ControlPlane { settings })
    }

    /// Opens the store (applying migrations), starts serving, and returns the
    /// running control plane. Use it as a context manager to stop it on exit.
    fn start(&self, py: Python<'_>) -> PyResult<EmbeddedControlPlane> {
        let config = ControlPlaneConfig::from_env(&Env::from_map(self.settings.clone()))
            .map_err(core_error)?;
        let jwt_secret = config.jwt_secret.clone();
        let started = block_on(py, async move {
            let store =
                nimbus_core::store::open(&config.database_url, config.database_max_connections)
                    .await?;
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .map_err(|e| nimbus_core::Error::io(format!("binding {}", config.listen), e))?;
            let address = listener
                .local_addr()
                .map_err(|e| nimbus_core::Error::io("reading the bound address", e))?;
            let state = control_plane::ControlPlane::new(config, store)?;
            let serving = Serving::spawn(|stopped| {
                control_plane::serve(state.clone(), listener, async {
                    let _ = stopped.await;
                })
            });
            Ok::<_, nimbus_core::Error>((state, address, serving))
        })
        .map_err(core_error)?;
        let (state, address, serving) = started;
        Ok(EmbeddedControlPlane {
            state,
            base_url: format!("http://{address}"),
            jwt_secret,
            serving,
        })
    }
}

/// A running embedded control plane (from `ControlPlane.start()`).
#[pyclass(module = "nimbus._native", frozen)]
pub struct EmbeddedControlPlane {
    state: AppState,
    base_url: String,
    jwt_secret: Secret,
    serving: Serving<nimbus_core::Error>,
}

#[pymethods]
impl EmbeddedControlPlane {
    /// Where it serves the HTTP API, e.g. `http://127.0.0.1:41234`.
    #[getter]
    fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Whether it is still serving.
    #[getter]
    fn running(&self) -> bool {
        self.serving.running()
    }

    /// A client that calls this control plane in process as org `org_id`, or as
    /// admin when `org_id` is None.
    #[pyo3(signature = (org_id=None))]
    fn client(&self, org_id: Option<i64>) -> ControlPlaneClient {
        ControlPlaneClient::from_calls(self.session(org_id))
    }

    /// [`client`] for asyncio.
    #[pyo3(signature = (org_id=None))]
    fn async_client(&self, org_id: Option<i64>) -> AsyncControlPlaneClient {
        AsyncControlPlaneClient::from_calls(self.session(org_id))
    }

    /// A client for a host agent named `agent_id`: lease, heartbeat, complete.
    #[pyo3(signature = (agent_id="python-agent"))]
    fn agent(&self, agent_id: &str) -> PyResult<ControlPlaneClient> {
        if agent_id.is_empty() {
            return Err(InvalidInput::new_err("an agent needs an id"));
        }
        Ok(ControlPlaneClient::from_calls(Calls::agent(Arc::new(
            self.state.agent(agent_id),
        ))))
    }

    /// A bearer token for HTTP clients of this control plane: `role` `admin`,
    /// `agent` or `org` (with `org_id`), valid for `ttl` seconds.
    #[pyo3(signature = (role="admin", org_id=None, ttl=3600))]
    fn token(&self, role: &str, org_id: Option<i64>, ttl: u64) -> PyResult<String> {
        let role: Role = role.parse().map_err(core_error)?;
        let subject = match org_id {
            Some(id) => format!("org-{id}"),
            None => role.to_string(),
        };
        JwtKeys::new(&self.jwt_secret)
            .mint(&subject, role, org_id, Duration::from_secs(ttl.max(1)))
            .map_err(core_error)
    }

    /// Stops serving: ends long polls, waits for requests in flight.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        self.serving.stop(py, core_error)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.stop(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "EmbeddedControlPlane(base_url={:?}, running={})",
            self.base_url,
            if self.running() { "True" } else { "False" }
        )
    }
}

impl EmbeddedControlPlane {
    fn session(&self, org_id: Option<i64>) -> Calls {
        let principal = match org_id {
            Some(org_id) => Principal::Org {
                org_id,
                sub: format!("org-{org_id}"),
            },
            None => Principal::Admin {
                sub: "python".into(),
            },
        };
        Calls::api(Arc::new(self.state.session(principal)))
    }
}
