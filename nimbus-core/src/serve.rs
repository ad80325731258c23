//! The HTTP server loop every Nimbus service runs: hyper's HTTP/1 connection
//! handling under an axum router, with the limits `axum::serve` leaves out.
//!
//! Every service faces clients it does not trust (webhook senders, jobs, agents),
//! so a client that opens connections and sends nothing, sends its headers a
//! byte at a time, or stops half-way through a body must not hold a connection
//! (a file descriptor, a task) for long, nor stop the server accepting others:
//!
//! - a request's headers must arrive within [`HttpLimits::header_read_timeout`]
//!   of the connection opening or of the previous response (idle keep-alive
//!   connections are closed after that long too);
//! - a body must make progress: no more than [`HttpLimits::body_read_timeout`]
//!   between two of its pieces (the handler reading it sees an error);
//! - at most [`HttpLimits::max_connections`] connections are served at once;
//!   beyond that, new ones wait in the kernel's accept queue until one closes,
//!   and the slow ones above close soon enough to let them in.
//!
//! Body size limits stay per route (axum's `DefaultBodyLimit`, set by each
//! service). docs/security.md ("Bounds") lists the figures; tests/it/serve.rs in
//! nimbus-core tests each against real sockets.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// Limits every Nimbus HTTP server holds its clients to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Longest a connection may take to send a request's headers, counted from
    /// when it opened or its previous response was sent.
    pub header_read_timeout: Duration,
    /// Longest wait for the next piece of a request body.
    pub body_read_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

/// File descriptors kept free of connections: databases, logs, cache files.
const RESERVED_DESCRIPTORS: u64 = 512;

impl Default for HttpLimits {
    /// 10 s for headers, 30 s between body pieces, and as many connections as
    /// the process's open-file limit allows after [`RESERVED_DESCRIPTORS`] (at
    /// least 64).
    fn default() -> Self {
        let descriptors =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(1024);
        HttpLimits {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_connections: descriptors
                .saturating_sub(RESERVED_DESCRIPTORS)
                .clamp(64, 1 << 20) as usize,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting
/// and waits for the requests in progress to finish. Handlers can extract
/// `ConnectInfo<SocketAddr>` (the peer's address).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // never closed
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(&error).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let body_timeout = limits.body_read_timeout;
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let mut request = request.map(|body| {
                axum::body::Body::new(tower_http::timeout::TimeoutBody::new(body_timeout, body))
            });
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(request)
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// An accept that failed: a peer that reset before we took it is nothing; out of
/// descriptors (or memory) is logged and waited out briefly rather than spun on.
async fn accept_failed(error: &std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    ) {
        return;
    }
    tracing::warn!(%error, "accepting a connection failed; retrying shortly");
    tokio::time::sleep(Duration::from_millis(50)).await;
}
