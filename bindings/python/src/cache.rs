//! The cache proxy from Python: `CacheClient` / `AsyncCacheClient` over its
//! artifact API (`nimbus_cache::client::CacheClient`), and `CacheProxy(...).start()`
//! running the real proxy in this process — on its configured backend, or on a
//! `nimbus.CacheBackend` written in Python.
//!
//! The proxy calls a Python backend from its tokio tasks; each call moves to a
//! blocking thread and takes the GIL there, and only there. A Python backend
//! holds an entry in memory while it passes (fine for tooling and tests; the
//! `fs` and `s3` backends stream).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use nimbus_cache::backend::{bytes_stream, ByteRange, ObjectReader};
use nimbus_cache::client::CacheClient as HttpCacheClient;
use nimbus_cache::server::{self, Proxy, ProxyConfig};
use nimbus_cache::{ByteStream, CacheBackend, CacheIndex, ObjectMeta, StoredObject};
use nimbus_core::{Env, Secret};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use sha2::{Digest, Sha256};

use crate::convert::{from_python, to_python};
use crate::errors::{
    AuthError, Conflict, InvalidInput, NimbusError, NotFound, RateLimited, Unavailable,
};
use crate::runtime::{block_on, run_async, run_blocking, Call};
use crate::serving::Serving;

/// A `nimbus_cache::Error` as the exception of its kind.
pub fn cache_error(error: nimbus_cache::Error) -> PyErr {
    use nimbus_cache::Error;
    let message = error.to_string();
    match error {
        Error::InvalidInput(_) | Error::Config { .. } | Error::TooLarge(_) => {
            InvalidInput::new_err(message)
        }
        Error::Unauthenticated(_) | Error::Forbidden(_) => AuthError::new_err(message),
        Error::NotFound(_) => NotFound::new_err(message),
        Error::Conflict(_) => Conflict::new_err(message),
        Error::TooMany(_) => RateLimited::new_err(message),
        Error::Backend(_) | Error::Index(_) => Unavailable::new_err(message),
        _ => NimbusError::new_err(message),
    }
}

fn answer<T: serde::Serialize>(value: nimbus_cache::Result<T>) -> PyResult<Py<PyAny>> {
    let value = value.map_err(cache_error)?;
    Python::attach(|py| to_python(py, &value))
}

/// The calls, once, for both client classes.
#[derive(Clone)]
struct Calls {
    proxy: Arc<HttpCacheClient>,
}

impl Calls {
    fn new(base_url: &str, token: String) -> PyResult<Self> {
        Ok(Calls {
            proxy: Arc::new(
                HttpCacheClient::new(base_url, Secret::new(token)).map_err(cache_error)?,
            ),
        })
    }

    fn put(&self, key: String, data: &[u8]) -> Call {
        let proxy = self.proxy.clone();
        let data = Bytes::copy_from_slice(data);
        Box::pin(async move { answer(proxy.put(&key, data).await) })
    }

    fn get(&self, key: String) -> Call {
        let proxy = self.proxy.clone();
        Box::pin(async move {
            let data = proxy.get(&key).await.map_err(cache_error)?;
            Python::attach(|py| {
                Ok(match data {
                    Some(data) => PyBytes::new(py, &data).into_any().unbind(),
                    None => py.None(),
                })
            })
        })
    }

    fn delete(&self, key: String) -> Call {
        let proxy = self.proxy.clone();
        Box::pin(async move { answer(proxy.delete(&key).await) })
    }

    fn usage(&self) -> Call {
        let proxy = self.proxy.clone();
        Box::pin(async move { answer(proxy.usage().await) })
    }
}

/// The cache proxy at `base_url`, blocking (each call releases the GIL).
#[pyclass(module = "nimbus._native", frozen)]
pub struct CacheClient {
    calls: Calls,
}

/// [`CacheClient`] for asyncio: every call returns an awaitable.
#[pyclass(module = "nimbus._native", frozen)]
pub struct AsyncCacheClient {
    calls: Calls,
}

macro_rules! cache_methods {
    ($class:ident, $ret:ty, $run:path) => {
        #[pymethods]
        impl $class {
            /// A client of the proxy at `base_url` (e.g. `http://127.0.0.1:8001`) with
            /// `token`: a cache token (`nimbus.mint_cache_token`) for entries, which
            /// it scopes to its org, repository and ref; an org or admin token for `usage()`.
            #[new]
            fn new(base_url: &str, token: String) -> PyResult<Self> {
                Ok($class {
                    calls: Calls::new(base_url, token)?,
                })
            }

            /// Stores `data` under `key`; answers `{"key", "size", "sha256"}`.
            fn put<'py>(&self, py: Python<'py>, key: String, data: &[u8]) -> $ret {
                $run(py, self.calls.put(key, data))
            }

            /// The entry's bytes, or `None` when the token's scopes hold none.
            fn get<'py>(&self, py: Python<'py>, key: String) -> $ret {
                $run(py, self.calls.get(key))
            }

            /// Removes the entry; a missing one is not an error.
            fn delete<'py>(&self, py: Python<'py>, key: String) -> $ret {
                $run(py, self.calls.delete(key))
            }

            /// Bytes, entries, hits, misses and evictions per org the token may see.
            fn usage<'py>(&self, py: Python<'py>) -> $ret {
                $run(py, self.calls.usage())
            }
        }
    };
}

cache_methods!(CacheClient, PyResult<Py<PyAny>>, run_blocking);
cache_methods!(AsyncCacheClient, PyResult<Bound<'py, PyAny>>, run_async);

/// A Python object with the methods of `nimbus.CacheBackend`, as a Rust
/// `CacheBackend`.
pub struct PythonCacheBackend {
    backend: Arc<Py<PyAny>>,
}

fn stored(data: &[u8]) -> StoredObject {
    StoredObject {
        size: data.len() as u64,
        sha256: hex::encode(Sha256::digest(data)),
    }
}

async fn collect(mut body: ByteStream) -> nimbus_cache::Result<Vec<u8>> {
    let mut data = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| nimbus_cache::Error::Truncated(e.to_string()))?;
        data.extend_from_slice(&chunk);
    }
    Ok(data)
}

impl PythonCacheBackend {
    /// Runs `body` with the Python backend on a blocking thread, under the GIL; a
    /// Python exception becomes a backend error with its message.
    async fn with_backend<T: Send + 'static>(
        &self,
        method: &'static str,
        body: impl FnOnce(&Bound<'_, PyAny>) -> PyResult<T> + Send + 'static,
    ) -> nimbus_cache::Result<T> {
        let backend = self.backend.clone();
        let answer =
            tokio::task::spawn_blocking(move || Python::attach(|py| body(backend.bind(py))))
                .await
                .map_err(|e| {
                    nimbus_cache::Error::Backend(format!("python backend {method}: {e}"))
                })?;
        answer.map_err(|e| nimbus_cache::Error::Backend(format!("python backend {method}: {e}")))
    }
}

#[async_trait]
impl CacheBackend for PythonCacheBackend {
    fn name(&self) -> &'static str {
        "python"
    }

    async fn put(&self, key: &str, body: ByteStream) -> nimbus_cache::Result<StoredObject> {
        let data = collect(body).await?;
        let object = stored(&data);
        let key = key.to_string();
        self.with_backend("put", move |backend| {
            backend.call_method1("put", (key, PyBytes::new(backend.py(), &data)))?;
            Ok(())
        })
        .await?;
        Ok(object)
    }

    async fn get(&self, key: &str, range: Option<ByteRange>) -> nimbus_cache::Result<ObjectReader> {
        let name = key.to_string();
        let data: Option<Vec<u8>> = self
            .with_backend("get", move |backend| {
                let answer = backend.call_method1("get", (name,))?;
                if answer.is_none() {
                    return Ok(None);
                }
                Ok(Some(answer.extract::<Vec<u8>>()?))
            })
            .await?;
        let data = data.ok_or_else(|| nimbus_cache::Error::NotFound(format!("object {key}")))?;
        let size = data.len() as u64;
        let body = match range {
            Some(range) => {
                let start = range.start.min(size) as usize;
                let end = range.end.min(size).max(range.start.min(size)) as usize;
                Bytes::copy_from_slice(&data[start..end])
            }
            None => Bytes::from(data),
        };
        Ok(ObjectReader {
            size,
            body: bytes_stream(body),
        })
    }

    async fn head(&self, key: &str) -> nimbus_cache::Result<Option<ObjectMeta>> {
        let key = key.to_string();
        self.with_backend("head", move |backend| {
            from_python::<Option<ObjectMeta>>(&backend.call_method1("head", (key,))?)
        })
        .await
    }

    async fn delete(&self, key: &str) -> nimbus_cache::Result<()> {
        let key = key.to_string();
        self.with_backend("delete", move |backend| {
            backend.call_method1("delete", (key,))?;
            Ok(())
        })
        .await
    }

    async fn list(&self, prefix: &str) -> nimbus_cache::Result<Vec<ObjectMeta>> {
        let prefix = prefix.to_string();
        let mut objects = self
            .with_backend("list", move |backend| {
                from_python::<Vec<ObjectMeta>>(&backend.call_method1("list", (prefix,))?)
            })
            .await?;
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    async fn put_part(
        &self,
        upload: &str,
        part: &str,
        body: ByteStream,
    ) -> nimbus_cache::Result<StoredObject> {
        let data = collect(body).await?;
        let object = stored(&data);
        let (upload, part) = (upload.to_string(), part.to_string());
        self.with_backend("put_part", move |backend| {
            backend.call_method1(
                "put_part",
                (upload, part, PyBytes::new(backend.py(), &data)),
            )?;
            Ok(())
        })
        .await?;
        Ok(object)
    }

    async fn complete(
        &self,
        upload: &str,
        parts: &[String],
        key: &str,
    ) -> nimbus_cache::Result<StoredObject> {
        let (upload, parts, key) = (upload.to_string(), parts.to_vec(), key.to_string());
        let data: Vec<u8> = self
            .with_backend("complete", move |backend| {
                backend
                    .call_method1("complete", (upload, parts, key))?
                    .extract::<Vec<u8>>()
            })
            .await?;
        Ok(stored(&data))
    }

    async fn abort(&self, upload: &str) -> nimbus_cache::Result<()> {
        let upload = upload.to_string();
        self.with_backend("abort", move |backend| {
            backend.call_method1("abort", (upload,))?;
            Ok(())
        })
        .await
    }

    async fn list_uploads(&self) -> nimbus_cache::Result<Vec<String>> {
        self.with_backend("list_uploads", |backend| {
            from_python::<Vec<String>>(&backend.call_method0("list_uploads")?)
        })
        .await
    }
}

/// The cache proxy to run in this process, configured by `NIMBUS_*` settings given
/// as a dict (the process environment is not read), storing entry bytes in
/// `backend` (a `nimbus.CacheBackend`) or, without one, in the configured backend.
/// Unless given: `127.0.0.1` on a free port.
#[pyclass(module = "nimbus._native", frozen)]
pub struct CacheProxy {
    settings: BTreeMap<String, String>,
    backend: Option<Arc<Py<PyAny>>>,
}

#[pymethods]
impl CacheProxy {
    #[new]
    #[pyo3(signature = (config=None, *, backend=None))]
    fn new(config: Option<BTreeMap<String, String>>, backend: Option<Py<PyAny>>) -> PyResult<Self> {
        let mut settings = config.unwrap_or_default();
        if let Some(key) = settings.keys().find(|key| !key.starts_with("NIMBUS_")) {
            return Err(InvalidInput::new_err(format!(
                "setting {key:?}: settings are NIMBUS_* variables (docs/configuration.md)"
            )));
        }
        settings
            .entry("NIMBUS_CACHE_PROXY_ADDR".into())
            .or_insert_with(|| "127.0.0.1:0".into());
        if let Some(backend) = &backend {
            Python::attach(|py| {
                let backend = backend.bind(py);
                for method in [
                    "put",
                    "get",
                    "delete",
                    "list",
                    "head",
                    "put_part",
                    "complete",
                    "abort",
                    "list_uploads",
                ] {
                    if !backend.hasattr(method)? {
                        return Err(InvalidInput::new_err(format!(
                            "backend: a CacheBackend needs a {method}() method (subclass nimbus.CacheBackend)"
                        )));
                    }
                }
                Ok(())
            })?;
        }
        Ok(CacheProxy {
            settings,
            backend: backend.map(Arc::new),
        })
    }

    /// Starts serving the proxy; returns the running proxy (a context manager that
    /// stops it on exit).
    fn start(&self, py: Python<'_>) -> PyResult<EmbeddedCacheProxy> {
        let config =
            ProxyConfig::from_env(&Env::from_map(self.settings.clone())).map_err(cache_error)?;
        let backend = self.backend.clone();
        let (address, serving) = block_on(py, async move {
            let backend: Arc<dyn CacheBackend> = match backend {
                Some(backend) => Arc::new(PythonCacheBackend { backend }),
                None => server::open_backend(&config).await?,
            };
            let index = CacheIndex::open(&config.index_url).await?;
            let registry_index =
                nimbus_cache::registry::RegistryIndex::open(&config.registry_index_url).await?;
            let listener =
                tokio::net::TcpListener::bind(config.listen)
                    .await
                    .map_err(|source| nimbus_cache::Error::Io {
                        context: format!("binding {}", config.listen),
                        source,
                    })?;
            let address = listener
                .local_addr()
                .map_err(|source| nimbus_cache::Error::Io {
                    context: "reading the bound address".into(),
                    source,
                })?;
            let state =
                Proxy::new(&config, backend, index)?.with_registry(&config, registry_index)?;
            let serving = Serving::spawn(|stopped| async move {
                server::serve(&config, state, listener, async {
                    let _ = stopped.await;
                })
                .await
            });
            Ok::<_, nimbus_cache::Error>((address, serving))
        })
        .map_err(cache_error)?;
        Ok(EmbeddedCacheProxy {
            base_url: format!("http://{address}"),
            serving,
        })
    }
}

/// A running embedded cache proxy (from `CacheProxy.start()`).
#[pyclass(module = "nimbus._native", frozen)]
pub struct EmbeddedCacheProxy {
    base_url: String,
    serving: Serving<nimbus_cache::Error>,
}

#[pymethods]
impl EmbeddedCacheProxy {
    /// Where it serves, e.g. `http://127.0.0.1:41235` (docs/cache.md).
    #[getter]
    fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Stops serving (in-flight requests finish first).
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        self.serving.stop(py, cache_error)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.stop(py)?;
        Ok(false)
    }
}
