//! Client-side timeouts: slow request heads (slowloris) and idle keep-alive connections.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn edge_with_timeouts(dir: &TempDir, origin: &Origin) -> outpost_edge::Edge {
    let config = pop_config(
        "[timeouts]\nheader = \"300ms\"\nidle = \"400ms\"",
        "",
        &[(origin.url(), false)],
    );
    start_edge(dir, &config).await
}

#[tokio::test]
async fn slow_request_heads_are_cut_off() {
    let origin = Origin::start("o").await;
    let dir = TempDir::new("slowloris");
    let edge = edge_with_timeouts(&dir, &origin).await;
    let addr = edge.listener_addr("http").unwrap();

    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    // Never finish the head, but keep it moving (a byte every 100 ms for 6 s, so the idle
    // timeout never sees silence): the PoP must close the connection after `timeouts.header`,
    // well before the trickle ends.
    let (mut rd, mut wr) = s.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..60 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if wr.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the slow head was not cut off");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert_eq!(origin.hits(), 0);
    trickle.abort();
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_but_busy_ones_are_not() {
    let origin = Origin::start("o").await;
    origin.set_delay(Duration::from_millis(700));
    let dir = TempDir::new("idle");
    let edge = edge_with_timeouts(&dir, &origin).await;
    let addr = edge.listener_addr("http").unwrap();

    // A request slower than the idle timeout still completes: the connection is busy, not idle.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );

    // Then, silent on a keep-alive connection: closed after `timeouts.idle`.
    let started = std::time::Instant::now();
    let rest = read_to_close(&mut s).await.expect("idle connection closed");
    assert!(rest.is_empty(), "{rest}");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed too early: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_paused_request_body_gets_408_but_a_slow_steady_one_passes() {
    let origin = Origin::start("o").await;
    let dir = TempDir::new("body-pause");
    let config = pop_config("[timeouts]\nbody = \"300ms\"", "", &[(origin.url(), false)]);
    let edge = start_edge(&dir, &config).await;
    let addr = edge.listener_addr("http").unwrap();

    // Promises 100 bytes, sends 1, then goes quiet.
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nx")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let answer = read_to_close(&mut stalled).await.expect("answered and closed");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "cut at the body timeout, not a pool timeout"
    );

    // Five pieces 100 ms apart: slow, but never paused for 300 ms.
    let mut steady = tokio::net::TcpStream::connect(addr).await.unwrap();
    steady
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    for piece in b"hello" {
        tokio::time::sleep(Duration::from_millis(100)).await;
        steady.write_all(&[*piece]).await.unwrap();
    }
    let answer = read_to_close(&mut steady).await.expect("answered");
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello"),
        "{answer}"
    );
}
