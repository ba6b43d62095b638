//! Keep-alive connections to HTTP/1.1 origins: reused while idle, never reused after the
//! origin closed them (no request pays for it), closed after the pool's idle timeout.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A raw HTTP/1.1 origin that counts connections: accepted in all, and open now. Each
/// connection answers requests until the client closes it or, with `linger`, until it has
/// been idle that long after a response (an origin's own keep-alive timeout).
struct CountingOrigin {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
}

impl CountingOrigin {
    async fn start(linger: Option<Duration>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = Self {
            addr: listener.local_addr().unwrap(),
            accepted: Arc::default(),
            open: Arc::default(),
        };
        let (accepted, open) = (origin.accepted.clone(), origin.open.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                open.fetch_add(1, Ordering::SeqCst);
                let open = open.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let read = match linger {
                            Some(idle) if buf.is_empty() => {
                                match tokio::time::timeout(idle, stream.read(&mut chunk)).await {
                                    Ok(r) => r,
                                    Err(_) => break,
                                }
                            }
                            _ => stream.read(&mut chunk).await,
                        };
                        let n = match read {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                            if stream.write_all(reply).await.is_err() {
                                break;
                            }
                        }
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        origin
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

async fn pop(origin: &CountingOrigin, pool: &str) -> (TempDir, outpost_edge::Edge, SocketAddr) {
    let dir = TempDir::new("origin-conns");
    let toml = pop_config("", pool, &[(format!("http://{}", origin.addr), false)]);
    let edge = start_edge(&dir, &toml).await;
    let addr = edge.listener_addr("http").unwrap();
    (dir, edge, addr)
}

#[tokio::test]
async fn idle_connections_to_the_origin_are_reused() {
    let origin = CountingOrigin::start(None).await;
    let (_dir, _edge, addr) = pop(&origin, "").await;
    for i in 0..20 {
        let a = get(addr, "www.test", &format!("/seq/{i}")).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.body, "ok");
    }
    assert_eq!(origin.accepted(), 1, "20 requests in a row share one connection");

    // Concurrent requests need a connection each; once they are idle, later rounds reuse them.
    for _ in 0..3 {
        let round: Vec<_> = (0..8)
            .map(|i| tokio::spawn(async move { get(addr, "www.test", &format!("/par/{i}")).await }))
            .collect();
        for r in round {
            assert_eq!(r.await.unwrap().status, StatusCode::OK);
        }
    }
    assert!(
        origin.accepted() <= 9,
        "three rounds of 8 concurrent requests opened {} connections",
        origin.accepted()
    );
}

#[tokio::test]
async fn a_connection_the_origin_closed_while_idle_costs_no_request() {
    // The origin closes connections idle for 100 ms.
    let origin = CountingOrigin::start(Some(Duration::from_millis(100))).await;
    let (_dir, edge, addr) = pop(&origin, "").await;
    for i in 0..5 {
        let a = get(addr, "www.test", &format!("/after-close/{i}")).await;
        assert_eq!(a.status, StatusCode::OK, "request {i}: {}", a.body);
        assert!(
            eventually(Duration::from_secs(5), || origin.open() == 0).await,
            "the origin closed its idle connection"
        );
    }
    assert_eq!(
        origin.accepted(),
        5,
        "each request after a close opened a new connection"
    );
    let text = metrics(&edge).await;
    for failure in ["protocol_error", "connect_error"] {
        assert_eq!(
            metric_value(&text, "outpost_upstream_requests_total", &[("result", failure)]).unwrap_or(0.0),
            0.0,
            "no exchange failed ({failure})"
        );
    }
    assert_eq!(
        metric_value(&text, "outpost_upstream_requests_total", &[("result", "2xx")]),
        Some(5.0)
    );
}

#[tokio::test]
async fn idle_connections_close_after_the_pools_idle_timeout() {
    let origin = CountingOrigin::start(None).await;
    let (_dir, _edge, addr) = pop(&origin, "idle_timeout = \"300ms\"").await;
    assert_eq!(get(addr, "www.test", "/").await.status, StatusCode::OK);
    assert_eq!(origin.open(), 1);
    assert!(
        eventually(Duration::from_secs(5), || origin.open() == 0).await,
        "the PoP closed the connection after it was idle for 300 ms"
    );
    // The next request opens a new one.
    assert_eq!(get(addr, "www.test", "/").await.status, StatusCode::OK);
    assert_eq!(origin.accepted(), 2);
}
