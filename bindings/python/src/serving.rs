//! A service served from inside the Python process (an embedded control plane or
//! logging pipeline): its server task and the signal that stops it.

use std::fmt::Display;
use std::future::Future;
use std::sync::Mutex;

use pyo3::prelude::*;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::errors::NimbusError;
use crate::runtime::{block_on, runtime};

/// A server task spawned on the shared runtime; stopped by [`Serving::stop`], or
/// signalled to stop (without waiting) when dropped.
pub struct Serving<E> {
    running: Mutex<Option<Running<E>>>,
}

/// The stop signal of a running server, and its task.
type Running<E> = (oneshot::Sender<()>, JoinHandle<Result<(), E>>);

impl<E: Display + Send + 'static> Serving<E> {
    /// Spawns `serve(shutdown)`, where `shutdown` resolves when the service is to stop.
    pub fn spawn<F>(serve: impl FnOnce(oneshot::Receiver<()>) -> F) -> Self
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        Serving {
            running: Mutex::new(Some((stop, runtime().spawn(serve(stopped))))),
        }
    }

    pub fn running(&self) -> bool {
        self.running.lock().map(|r| r.is_some()).unwrap_or(false)
    }

    /// Stops the service and waits for it (without the GIL); a second stop is a
    /// no-op. `error` turns the service's failure into the Python exception.
    pub fn stop(&self, py: Python<'_>, error: impl FnOnce(E) -> PyErr) -> PyResult<()> {
        let running = self
            .running
            .lock()
            .map_err(|_| NimbusError::new_err("the service's state is poisoned"))?
            .take();
        let Some((stop, serving)) = running else {
            return Ok(());
        };
        let _ = stop.send(());
        match block_on(py, serving) {
            Ok(result) => result.map_err(error),
            Err(join) => Err(NimbusError::new_err(format!(
                "the service's server task failed: {join}"
            ))),
        }
    }
}

impl<E> Drop for Serving<E> {
    fn drop(&mut self) {
        if let Ok(mut running) = self.running.lock() {
            if let Some((stop, _)) = running.take() {
                let _ = stop.send(());
            }
        }
    }
}
