//! Bodies stream through the PoP both ways: a client gets the first bytes of a response before
//! the origin has sent the rest (pass-through, a cache fill that is being stored, and a request
//! that joined that fill), and the origin gets the first bytes of a request body before the
//! client has sent the rest.
//!
//! Each test gates the second half on the far side having seen the first: a PoP that buffered
//! whole bodies would wait for bytes that never come, and the bounded wait fails the test.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const HALF: usize = 64 * 1024;
const WAIT: Duration = Duration::from_secs(5);

/// Reads from `s` until `buf` holds `marker`; false if the stream ends or `WAIT` passes first.
async fn read_until(s: &mut TcpStream, buf: &mut Vec<u8>, marker: &[u8]) -> bool {
    let found = async {
        let mut chunk = [0u8; 16 * 1024];
        while !buf.windows(marker.len()).any(|w| w == marker) {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        true
    };
    tokio::time::timeout(WAIT, found).await.unwrap_or(false)
}

/// An origin that answers each connection's one GET with `cache_control`, a body of two halves
/// (`a`s then `b`s, Content-Length framed), sending the second half only once `gate` fires.
/// Counts the requests it gets.
async fn gated_origin(cache_control: &'static str) -> (SocketAddr, oneshot::Sender<()>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (open, gate) = oneshot::channel::<()>();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        let mut gate = Some(gate);
        while let Ok((mut s, _)) = listener.accept().await {
            let mut head = Vec::new();
            if !read_until(&mut s, &mut head, b"\r\n\r\n").await {
                continue;
            }
            counted.fetch_add(1, Ordering::SeqCst);
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncache-control: {cache_control}\r\ncontent-length: {}\r\n\r\n",
                2 * HALF
            );
            s.write_all(reply.as_bytes()).await.unwrap();
            s.write_all(&[b'a'; HALF]).await.unwrap();
            if let Some(gate) = gate.take() {
                let _ = gate.await;
            }
            let _ = s.write_all(&[b'b'; HALF]).await;
        }
    });
    (addr, open, hits)
}

async fn pop_in_front_of(origin: SocketAddr) -> (TempDir, outpost_edge::Edge, SocketAddr) {
    let dir = TempDir::new("streaming");
    let edge = start_edge(&dir, &pop_config("", "", &[(format!("http://{origin}"), false)])).await;
    let addr = edge.listener_addr("http").unwrap();
    (dir, edge, addr)
}

/// A client that sent a GET for `/big` and has the response up to its first half, which must
/// arrive while the origin holds the second.
async fn client_with_first_half(addr: SocketAddr) -> (TcpStream, Vec<u8>) {
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET /big HTTP/1.1\r\nHost: www.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    assert!(
        read_until(&mut client, &mut got, &[b'a'; HALF]).await,
        "the first half did not reach the client while the origin held the second ({} bytes came)",
        got.len()
    );
    (client, got)
}

/// The rest of a response `client` has begun to receive.
async fn rest_of(mut client: TcpStream, mut got: Vec<u8>) -> Vec<u8> {
    tokio::time::timeout(WAIT, client.read_to_end(&mut got))
        .await
        .expect("the rest of the body came")
        .unwrap();
    got
}

/// Sends a GET for `/big` and checks the response's first half arrives while the origin holds
/// the second; then lets the origin finish and returns the whole response.
async fn first_half_arrives_before_the_origin_finishes(
    addr: SocketAddr,
    open: oneshot::Sender<()>,
) -> Vec<u8> {
    let (client, got) = client_with_first_half(addr).await;
    open.send(()).unwrap();
    rest_of(client, got).await
}

fn body_of(response: &[u8]) -> &[u8] {
    let at = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    &response[at + 4..]
}

#[tokio::test]
async fn a_pass_through_response_streams_to_the_client() {
    let (origin, open, _) = gated_origin("no-store").await;
    let (_dir, _edge, addr) = pop_in_front_of(origin).await;
    let response = first_half_arrives_before_the_origin_finishes(addr, open).await;
    let body = body_of(&response);
    assert_eq!(body.len(), 2 * HALF);
    assert!(body[HALF..].iter().all(|&b| b == b'b'));
}

#[tokio::test]
async fn a_cache_fill_streams_to_the_client_while_it_is_stored() {
    let (origin, open, hits) = gated_origin("max-age=60").await;
    let (_dir, _edge, addr) = pop_in_front_of(origin).await;
    let response = first_half_arrives_before_the_origin_finishes(addr, open).await;
    assert_eq!(body_of(&response).len(), 2 * HALF);
    // Stored whole once the origin finished: the next client gets it from the cache.
    let again = get(addr, "www.test", "/big").await;
    assert_eq!(again.body.len(), 2 * HALF);
    assert!(
        again.headers["cache-status"].to_str().unwrap().contains("hit"),
        "{:?}",
        again.headers
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_request_body_streams_to_the_origin() {
    // The origin reports when the first half of the upload has reached it, then reads the rest
    // and answers with the number of bytes it got.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    let (first_half_seen, reached) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        let first_half = [b'a'; HALF];
        if !read_until(&mut s, &mut got, &first_half).await {
            return;
        }
        let _ = first_half_seen.send(());
        let second_half = [b'b'; HALF];
        if !read_until(&mut s, &mut got, &second_half).await {
            return;
        }
        let body = body_of(&got).len();
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.to_string().len()
        );
        s.write_all(reply.as_bytes()).await.unwrap();
    });
    let (_dir, _edge, addr) = pop_in_front_of(origin).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: www.test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        2 * HALF
    );
    client.write_all(head.as_bytes()).await.unwrap();
    client.write_all(&[b'a'; HALF]).await.unwrap();
    tokio::time::timeout(WAIT, reached)
        .await
        .expect("the first half of the body reached the origin before the client sent the rest")
        .unwrap();
    client.write_all(&[b'b'; HALF]).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, client.read_to_end(&mut response))
        .await
        .expect("the origin answered")
        .unwrap();
    assert!(
        response.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&response)
    );
    assert_eq!(body_of(&response), (2 * HALF).to_string().as_bytes());
}

#[tokio::test]
async fn a_request_that_joins_a_fill_streams_it_as_it_arrives() {
    let (origin, open, hits) = gated_origin("max-age=60").await;
    let (_dir, _edge, addr) = pop_in_front_of(origin).await;
    // The second client asks while the first one's fetch is half done: it joins that fetch
    // (one origin request) and gets its bytes as they come, not once it has finished.
    let first = client_with_first_half(addr).await;
    let second = client_with_first_half(addr).await;
    open.send(()).unwrap();
    for (client, got) in [first, second] {
        assert_eq!(body_of(&rest_of(client, got).await).len(), 2 * HALF);
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the second request joined the first's fetch"
    );
}
