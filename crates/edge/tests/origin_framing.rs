//! HTTP/1.1 origins' responses as the inline exchange reads them (bodiless requests): chunked
//! bodies with extensions and trailers, close-delimited bodies, HEAD, bodies cut short (never
//! passed off or stored as complete), and keep-alive connections the origin drops as a request
//! goes out (an idempotent request goes again on a fresh connection; a POST does not).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the scripted origin does with one request.
enum Action {
    Reply(&'static [u8]),
    /// Reply, then close the connection without saying so.
    ReplyThenClose(&'static [u8]),
    /// Close the connection without answering.
    Close,
}

/// A raw HTTP/1.1 origin whose answers are chosen by `script(path, n)`, `n` counting the
/// requests on that connection from 0. It counts connections and requests per path.
struct ScriptedOrigin {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl ScriptedOrigin {
    async fn start(script: fn(&str, usize) -> Action) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = Self {
            addr: listener.local_addr().unwrap(),
            accepted: Arc::default(),
            hits: Arc::default(),
        };
        let (accepted, hits) = (origin.accepted.clone(), origin.hits.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let hits = hits.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let mut n = 0;
                    loop {
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(read) => buf.extend_from_slice(&chunk[..read]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                        *hits.lock().unwrap().entry(path.clone()).or_default() += 1;
                        match script(&path, n) {
                            Action::Reply(bytes) => {
                                if stream.write_all(bytes).await.is_err() {
                                    return;
                                }
                            }
                            Action::ReplyThenClose(bytes) => {
                                let _ = stream.write_all(bytes).await;
                                return;
                            }
                            Action::Close => return,
                        }
                        n += 1;
                    }
                });
            }
        });
        origin
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// A PoP in front of `origin`; `top` adds global tables (`[cache]`).
async fn pop(origin: &ScriptedOrigin, top: &str) -> (TempDir, outpost_edge::Edge, SocketAddr) {
    let dir = TempDir::new("origin-framing");
    let toml = pop_config(top, "", &[(format!("http://{}", origin.addr), false)]);
    let edge = start_edge(&dir, &toml).await;
    let addr = edge.listener_addr("http").unwrap();
    (dir, edge, addr)
}

fn framing_script(path: &str, _n: usize) -> Action {
    match path {
        "/chunked" => Action::Reply(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nCache-Control: no-store\r\n\r\n\
              6;name=value\r\nhello \r\n5\r\nworld\r\n0\r\nX-Checksum: 42\r\n\r\n",
        ),
        "/head" => Action::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nCache-Control: no-store\r\n\r\n"),
        "/close-delimited" => {
            Action::ReplyThenClose(b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\n\r\nuntil the end")
        }
        "/truncated" => Action::ReplyThenClose(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nCache-Control: max-age=60\r\n\r\nonly ten b",
        ),
        "/truncated-chunked" => Action::ReplyThenClose(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nCache-Control: max-age=60\r\n\r\n5\r\nhel",
        ),
        _ => Action::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: no-store\r\n\r\nok"),
    }
}

#[tokio::test]
async fn chunked_close_delimited_and_head_responses_arrive_whole() {
    let origin = ScriptedOrigin::start(framing_script).await;
    // Caching off: a HEAD goes to the origin as a HEAD (a caching PoP fetches a GET to store).
    let (_dir, _edge, addr) = pop(&origin, "[cache]\nmemory = \"0\"").await;

    let chunked = get(addr, "www.test", "/chunked").await;
    assert_eq!(chunked.status, StatusCode::OK);
    assert_eq!(chunked.body, "hello world");
    let again = get(addr, "www.test", "/chunked").await;
    assert_eq!(again.body, "hello world");
    assert_eq!(
        origin.accepted(),
        1,
        "a chunked response leaves the connection reusable"
    );

    let client = http1_client();
    let head = send(
        &client,
        addr,
        "www.test",
        http::Method::HEAD,
        "/head",
        Default::default(),
    )
    .await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(
        head.headers["content-length"], "5",
        "HEAD keeps the length of the GET"
    );
    assert_eq!(head.body, "");
    assert_eq!(get(addr, "www.test", "/after-head").await.body, "ok");
    assert_eq!(origin.accepted(), 1, "a HEAD response has no body to wait for");

    let delimited = get(addr, "www.test", "/close-delimited").await;
    assert_eq!(delimited.status, StatusCode::OK);
    assert_eq!(delimited.body, "until the end");
    assert_eq!(get(addr, "www.test", "/after-close").await.body, "ok");
    assert_eq!(origin.accepted(), 2, "a close-delimited body ends its connection");
}

#[tokio::test]
async fn bodies_cut_short_fail_and_are_never_stored() {
    let origin = ScriptedOrigin::start(framing_script).await;
    let (_dir, edge, addr) = pop(&origin, "").await;
    for path in ["/truncated", "/truncated-chunked"] {
        for attempt in 1..=2 {
            let cut = get(addr, "www.test", path).await;
            assert_eq!(cut.status, StatusCode::OK);
            // The client's read fails (the helper then reports an empty body): the PoP never
            // ends a cut body as if it were complete.
            assert_eq!(cut.body, "", "{path}: the client saw the body fail");
            assert_eq!(
                origin.hits(path),
                attempt,
                "{path}: nothing was stored, so attempt {attempt} reached the origin"
            );
        }
    }
    let text = metrics(&edge).await;
    let broken = metric_value(&text, "outpost_cache_requests_total", &[("result", "hit")]).unwrap_or(0.0);
    assert_eq!(broken, 0.0, "no cut body was ever served from cache");
}

fn racing_script(path: &str, n: usize) -> Action {
    // Every connection answers its first request, then drops the next one unanswered, as an
    // origin whose keep-alive timeout fires just as the PoP reuses the connection.
    match (path, n) {
        (_, 0) => Action::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: no-store\r\n\r\nok"),
        _ => Action::Close,
    }
}

#[tokio::test]
async fn a_kept_alive_connection_dropped_under_a_request_is_replaced_for_idempotent_requests() {
    let origin = ScriptedOrigin::start(racing_script).await;
    let (_dir, edge, addr) = pop(&origin, "").await;
    for i in 0..4 {
        let a = get(addr, "www.test", &format!("/get/{i}")).await;
        assert_eq!(a.status, StatusCode::OK, "GET {i}: {}", a.body);
        assert_eq!(a.body, "ok");
    }
    // Request 0 opened a connection; each later one found it dropped and went again on a new
    // one (whose first answer it got).
    assert_eq!(origin.accepted(), 4);
    let text = metrics(&edge).await;
    assert_eq!(
        metric_value(
            &text,
            "outpost_upstream_requests_total",
            &[("result", "protocol_error")]
        )
        .unwrap_or(0.0),
        0.0,
        "no GET failed"
    );

    // A POST is not replayed: the origin may have acted on it.
    let client = http1_client();
    let post = send(
        &client,
        addr,
        "www.test",
        http::Method::POST,
        "/post",
        Default::default(),
    )
    .await;
    assert_eq!(post.status, StatusCode::BAD_GATEWAY);
    assert_eq!(origin.hits("/post"), 1, "the POST reached the origin once");
}
