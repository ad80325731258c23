//! The services' HTTP server loop (nimbus_core::serve) against hostile and slow
//! clients on real sockets: headers sent a byte at a time or not at all, bodies
//! that stall, more idle connections than the server takes; each is cut off
//! within its timeout while a well-behaved client keeps being answered promptly.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::routing::{get, post};
use axum::Router;
use nimbus_core::serve::{serve, HttpLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HEADERS: Duration = Duration::from_millis(800);
const BODY: Duration = Duration::from_millis(800);

async fn start(max_connections: usize) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let app = Router::new()
        .route(
            "/",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() }),
        )
        .route(
            "/echo",
            post(|body: Bytes| async move { body.len().to_string() }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                "done"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let limits = HttpLimits {
        header_read_timeout: HEADERS,
        body_read_timeout: BODY,
        max_connections,
    };
    tokio::spawn(async move {
        serve(listener, app, limits, async move {
            let _ = stopped.await;
        })
        .await
        .expect("serve");
    });
    (address, stop)
}

/// One well-behaved request on a new connection: its status line and how long it took.
async fn polite(address: SocketAddr) -> (String, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: nimbus\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    (
        answer.lines().next().unwrap_or_default().to_string(),
        started.elapsed(),
    )
}

/// Waits until the server closes `stream` (a read of 0 bytes or an error),
/// giving up after `limit`; returns how long that took and what was read.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> (Duration, String) {
    let started = Instant::now();
    let mut read = Vec::new();
    let result = tokio::time::timeout(limit, async {
        let mut buffer = [0u8; 1024];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    assert!(
        result.is_ok(),
        "the server kept the connection open past {limit:?}"
    );
    (
        started.elapsed(),
        String::from_utf8_lossy(&read).into_owned(),
    )
}

#[tokio::test]
async fn headers_that_never_finish_are_cut_off_and_others_are_served_meanwhile() {
    let (address, _stop) = start(1024).await;
    // Slowloris: a byte of headers every 200 ms, never the blank line.
    let mut slow = TcpStream::connect(address).await.expect("connect");
    let trickle = tokio::spawn(async move {
        for byte in b"GET / HTTP/1.1\r\nHost: nimbus\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa" {
            if slow.write_all(&[*byte]).await.is_err() {
                return (slow, true);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (slow, false)
    });
    // An idle connection that never sends a byte.
    let mut idle = TcpStream::connect(address).await.expect("connect");
    for _ in 0..5 {
        let (status, took) = polite(address).await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(
            took < Duration::from_millis(200),
            "a polite request took {took:?}"
        );
    }
    let (took, _) = closed_within(&mut idle, HEADERS * 3).await;
    assert!(
        took <= HEADERS + Duration::from_millis(400),
        "idle cut off after {took:?}"
    );
    let (_slow, cut) = trickle.await.expect("trickle");
    assert!(cut, "the trickling client was cut off before it finished");
}

#[tokio::test]
async fn a_keep_alive_connection_idle_past_the_header_timeout_is_closed() {
    let (address, _stop) = start(1024).await;
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: nimbus\r\n\r\n")
        .await
        .expect("write");
    let mut buffer = [0u8; 1024];
    let n = stream.read(&mut buffer).await.expect("read");
    assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200 OK"));
    let (took, _) = closed_within(&mut stream, HEADERS * 3).await;
    assert!(
        took <= HEADERS + Duration::from_millis(400),
        "closed after {took:?}"
    );
}

#[tokio::test]
async fn a_body_that_stalls_fails_within_the_body_timeout() {
    let (address, _stop) = start(1024).await;
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: nimbus\r\nContent-Length: 1000\r\n\r\nonly ten b")
        .await
        .expect("write");
    let (took, answer) = closed_within(&mut stream, BODY * 4).await;
    assert!(
        took <= BODY + Duration::from_millis(600),
        "answered after {took:?}"
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "a stalled body is refused, not accepted: {answer:?}"
    );
    // A whole body goes through.
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: nimbus\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        .await
        .expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    assert!(
        answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with('5'),
        "{answer}"
    );
}

#[tokio::test]
async fn connections_past_the_limit_wait_until_idle_ones_are_cut_off() {
    let (address, _stop) = start(20).await;
    // Twenty idle connections take every slot.
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(address).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The next client is queued, then served once the idle ones time out.
    let (status, took) = polite(address).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        took >= HEADERS / 2 && took <= HEADERS * 3,
        "served after {took:?}, once the idle connections were cut off"
    );
    drop(idle);
}

#[tokio::test]
async fn many_idle_connections_do_not_slow_a_polite_client() {
    let (address, _stop) = start(100_000).await;
    let mut before = Vec::new();
    for _ in 0..20 {
        before.push(polite(address).await.1);
    }
    let mut idle = Vec::new();
    for _ in 0..2_000 {
        match TcpStream::connect(address).await {
            Ok(stream) => idle.push(stream),
            Err(error) => panic!("connect {}: {error}", idle.len()),
        }
    }
    let mut during = Vec::new();
    for _ in 0..20 {
        let (status, took) = polite(address).await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        during.push(took);
    }
    before.sort();
    during.sort();
    let (p50_before, p50_during) = (before[10], during[10]);
    eprintln!("polite p50: {p50_before:?} before, {p50_during:?} beside 2,000 idle connections");
    assert!(
        p50_during < Duration::from_millis(50),
        "beside 2,000 idle connections a request took {p50_during:?} (p50)"
    );
    drop(idle);
}

#[tokio::test]
async fn shutdown_lets_requests_in_progress_finish() {
    let (address, stop) = start(1024).await;
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: nimbus\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = stop.send(());
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    assert!(
        answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("done"),
        "{answer}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        TcpStream::connect(address).await.is_err(),
        "no new connections after shutdown"
    );
}
