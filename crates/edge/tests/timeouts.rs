//! Timeouts: slow request heads (slowloris), idle keep-alive connections, paused request bodies
//! and the pool's total bound on a request whose response is still streaming.

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

/// Answers with the head of a billion-byte response and writes its body until the PoP stops
/// taking it: it returns when the PoP has let go of the origin connection.
async fn write_endless_response(s: &mut tokio::net::TcpStream) {
    let head = b"HTTP/1.1 200 OK\r\ncontent-length: 1000000000\r\ncache-control: no-store\r\n\r\n";
    let _ = s.write_all(head).await;
    let chunk = vec![b'x'; 64 * 1024];
    while s.write_all(&chunk).await.is_ok() {}
}

/// A PoP in front of a raw origin at `origin`: `top` adds global tables, `pool` keys of the
/// pool. Returns it with its plain listener.
async fn pop_before(
    dir: &TempDir,
    origin: std::net::SocketAddr,
    top: &str,
    pool: &str,
) -> (outpost_edge::Edge, std::net::SocketAddr) {
    let edge = start_edge(
        dir,
        &pop_config(top, pool, &[(format!("http://{origin}"), false)]),
    )
    .await;
    let addr = edge.listener_addr("http").unwrap();
    (edge, addr)
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

#[tokio::test]
async fn a_response_still_streaming_at_the_pools_request_timeout_is_cut_off() {
    // An origin that answers its head at once, then drips its 100-byte body, a byte every
    // 100 ms (10 s in all).
    let origin = raw_origin(|mut s| async move {
        if read_head(&mut s).await.is_none() {
            return;
        }
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ncache-control: no-store\r\n\r\n")
            .await;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if s.write_all(b"x").await.is_err() {
                return;
            }
        }
    })
    .await;
    let dir = TempDir::new("total-timeout");
    // The head comes well within response_header_timeout: only the total bound can end this.
    let pool = "request_timeout = \"1s\"\nresponse_header_timeout = \"30s\"";
    let (_edge, addr) = pop_before(&dir, origin, "", pool).await;
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET /drip HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    // Without the total bound the body would take 10 s.
    let ended = tokio::time::timeout(Duration::from_secs(6), async {
        let mut chunk = [0u8; 1024];
        while let Ok(n @ 1..) = client.read(&mut chunk).await {
            answer.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        ended.is_ok(),
        "the response was still streaming after 6 s: {text}"
    );
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = text.split_once("\r\n\r\n").map_or(0, |(_, b)| b.len());
    assert!(body < 100, "the body was cut short of its 100 bytes, got {body}");
}

#[tokio::test]
async fn an_upload_outlasting_the_response_header_timeout_is_not_cut_off() {
    let origin = Origin::start("o").await;
    let dir = TempDir::new("long-upload");
    // The origin's clock starts once it has the whole request: a steady upload may take longer
    // than the origin is given to answer.
    let config = pop_config("", "response_header_timeout = \"1s\"", &[(origin.url(), false)]);
    let edge = start_edge(&dir, &config).await;
    let addr = edge.listener_addr("http").unwrap();

    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // A byte every 100 ms, 2 s in all: never paused for `timeouts.body`, and over before the
    // minimum rate's window. A write fails only when the PoP gave up early; the answer says why.
    for piece in b"abcdefghijklmnopqrst" {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.write_all(&[*piece]).await.is_err() {
            break;
        }
    }
    let answer = read_to_close(&mut s).await.expect("answered");
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("abcdefghijklmnopqrst"),
        "{answer}"
    );

    // Once the body is in, the origin's clock runs: one that then sits on it gets 504.
    origin.set_delay(Duration::from_secs(3));
    let started = std::time::Instant::now();
    let answer = send(
        &http1_client(),
        addr,
        "x",
        http::Method::POST,
        "/echo",
        "body".into(),
    )
    .await;
    assert_eq!(
        answer.status,
        http::StatusCode::GATEWAY_TIMEOUT,
        "{}",
        answer.body
    );
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_at_the_pools_request_timeout() {
    // An origin with a body of a billion bytes, written until the PoP stops taking them; it
    // reports when the PoP lets go of its connection.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    let (released_tx, released) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        if read_head(&mut s).await.is_none() {
            return;
        }
        write_endless_response(&mut s).await;
        let _ = released_tx.send(());
    });
    let dir = TempDir::new("client-stops-reading");
    let pool = "request_timeout = \"1s\"";
    let (_edge, addr) = pop_before(&dir, origin, "", pool).await;
    // Asks, then never reads: once its socket buffers are full, nothing polls the response.
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(6), released)
        .await
        .expect("the origin's connection was still held after 6 s")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(3500),
        "released after {:?}",
        started.elapsed()
    );
    drop(client);
}

#[tokio::test]
async fn an_unread_http2_stream_is_reset_at_the_request_timeout_and_its_connection_lives_on() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    // An origin for two paths: /big, a body of a billion bytes written until the PoP stops
    // taking them (then it says the PoP let go); /after, answered only once /big was let go,
    // so that its stream is in flight on the same client connection when /big's ends.
    let (released_tx, released_rx) = tokio::sync::watch::channel(false);
    let origin_released = released_rx.clone();
    let origin = raw_origin(move |mut s| {
        let (released_tx, mut released_rx) = (released_tx.clone(), origin_released.clone());
        async move {
            while let Some(head) = read_head(&mut s).await {
                if head.starts_with(b"GET /big ") {
                    write_endless_response(&mut s).await;
                    let _ = released_tx.send(true);
                    return;
                }
                let _ = tokio::time::timeout(Duration::from_secs(8), released_rx.wait_for(|r| *r)).await;
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncache-control: no-store\r\n\r\nafter";
                if s.write_all(answer).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let dir = TempDir::new("h2-stream-overdue");
    // A head timeout of 400 ms makes the h2c connection's tick 100 ms.
    let (_edge, addr) = pop_before(
        &dir,
        origin,
        "[timeouts]\nheader = \"400ms\"",
        "request_timeout = \"4s\"",
    )
    .await;

    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = |path: &str| {
        http::Request::builder()
            .uri(format!("http://x{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let started = tokio::time::Instant::now();
    // Never read: once the stream's flow-control window is spent, nothing polls the response.
    let big = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request("/big")))
        .await
        .expect("the head of /big came within 5 s")
        .unwrap();
    assert_eq!(big.status(), http::StatusCode::OK);
    // Past /big's deadline (4 s), before it is overdue (a second later): this stream is still
    // within its own request timeout when /big's is ended.
    tokio::time::sleep_until(started + Duration::from_millis(4400)).await;
    let after = tokio::time::timeout(Duration::from_secs(6), sender.send_request(request("/after")))
        .await
        .expect("/after answered within 6 s")
        .expect("/after failed: the connection went with the overdue stream");
    let after = collect(after).await;
    assert_eq!(after.status, http::StatusCode::OK);
    assert_eq!(after.body, "after");
    assert!(
        *released_rx.borrow(),
        "/after is answered only once the PoP let go of /big"
    );

    // The overdue stream alone was ended: what it had buffered, then a reset.
    let rest = tokio::time::timeout(Duration::from_secs(5), big.into_body().collect())
        .await
        .expect("the unread stream was ended");
    let Err(err) = rest else {
        panic!("the unread stream ended with its whole body, not a reset");
    };
    assert!(format!("{err:?}").contains("CANCEL"), "{err:?}");
    // And the connection still takes new streams.
    let again = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request("/again")))
        .await
        .expect("answered within 5 s")
        .expect("a new stream on the same connection");
    assert_eq!(collect(again).await.body, "after");
}

/// Over TLS with h2 chosen by ALPN an idle connection ticks only every quarter idle period
/// (15 s by default): a stream whose client stops reading must still be ended about a second
/// after its deadline's grace, and its origin connection let go.
#[tokio::test]
async fn an_unread_stream_over_tls_h2_is_ended_soon_after_its_deadline() {
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let (released_tx, mut released_rx) = tokio::sync::watch::channel(false);
    let origin = raw_origin(move |mut s| {
        let released_tx = released_tx.clone();
        async move {
            if read_head(&mut s).await.is_some() {
                write_endless_response(&mut s).await;
                let _ = released_tx.send(true);
            }
        }
    })
    .await;
    let dir = TempDir::new("tls-h2-overdue");
    let ca = TestCa::new();
    let (cert, key) = ca.issue(&dir.0, "a", &["a.test"]);
    let tls = format!(
        "[[listener]]\nname = \"https\"\naddress = \"127.0.0.1:0\"\ntls = {{ default_certificate = \"a\" }}\n\
         [[certificate]]\nname = \"a\"\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let config = pop_config(
        &tls,
        "request_timeout = \"2s\"",
        &[(format!("http://{origin}"), false)],
    );
    let edge = start_edge(&dir, &config).await;
    let addr = edge.listener_addr("https").unwrap();

    let tls = tls_connect(addr, ca.roots(), "a.test", &[b"h2"]).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = http::Request::builder()
        .uri("https://a.test/big")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let big = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
        .await
        .expect("the head of /big came within 5 s")
        .unwrap();
    assert_eq!(big.status(), http::StatusCode::OK);
    // Never read. Deadline 2 s, grace 1 s, then a tick within a second; the quarter idle
    // period would be 15 s.
    let released = tokio::time::timeout(Duration::from_secs(8), released_rx.wait_for(|r| *r)).await;
    assert!(released.is_ok(), "the overdue stream was not ended within 8 s");
    drop(big);
}

#[tokio::test]
async fn an_http2_client_that_reads_nothing_at_all_is_disconnected() {
    // Its streams are ended at their deadline, but then the connection has nothing in flight
    // and its graceful shutdown cannot finish (the client neither reads the GOAWAY nor answers
    // the PING): the PoP drops it rather than keep it, and its buffers, for good.
    let origin = raw_origin(|mut s| async move {
        if read_head(&mut s).await.is_some() {
            write_endless_response(&mut s).await;
        }
    })
    .await;
    let dir = TempDir::new("h2-reads-nothing");
    // A head timeout of 400 ms makes the h2c connection's tick 100 ms.
    let (_edge, addr) = pop_before(
        &dir,
        origin,
        "[timeouts]\nheader = \"400ms\"\nidle = \"1s\"",
        "request_timeout = \"1s\"",
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2_frame(&mut out, 0x4, 0, 0, &[]); // SETTINGS
                                        // GET /big: :method GET, :scheme http, :path literal, :authority "x".
    let block = [&[0x82, 0x86, 0x04, 4][..], b"/big", &[0x01, 1, b'x']].concat();
    h2_frame(&mut out, 0x1, 0x1 | 0x4, 1, &block); // HEADERS, END_STREAM | END_HEADERS
    s.write_all(&out).await.unwrap();
    // Read nothing while the stream runs past its deadline (1 s), is ended (a second later),
    // the connection goes idle (1 s) and its shutdown does not finish (at least 1 s).
    tokio::time::sleep(Duration::from_secs(6)).await;
    // Then what the kernel holds for us is read quickly, and the connection must have ended.
    let mut buf = vec![0u8; 1 << 20];
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the connection was still open 16 s after its only request"
    );
}

#[tokio::test]
async fn an_upload_the_origin_stops_reading_is_the_origins_timeout_not_the_clients() {
    // An origin that takes the request head, then reads nothing more and never answers.
    let origin = raw_origin(|mut s| async move {
        if read_head(&mut s).await.is_some() {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    })
    .await;
    let dir = TempDir::new("origin-stops-reading");
    let pool = "response_header_timeout = \"1s\"\nrequest_timeout = \"8s\"";
    let (edge, addr) = pop_before(&dir, origin, "", pool).await;

    // 64 MiB, far more than the socket buffers between client, PoP and origin hold: the PoP's
    // writes to the origin stall while the client could go on sending (checked below: were
    // the whole body sent, the 504 could come from the timer that starts after the body).
    const LEN: usize = 64 << 20;
    let client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = client.into_split();
    let sent_all = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let uploaded = sent_all.clone();
    let uploader = tokio::spawn(async move {
        let head = format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {LEN}\r\n\r\n");
        if wr.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![b'u'; 64 * 1024];
        for _ in 0..LEN / chunk.len() {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
        uploaded.store(true, std::sync::atomic::Ordering::SeqCst);
        // Held open: the PoP answers while it could still read.
        tokio::time::sleep(Duration::from_secs(10)).await;
    });
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(6), async {
        let mut buf = [0u8; 4096];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    uploader.abort();
    let text = String::from_utf8_lossy(&answer);
    assert!(
        read.is_ok(),
        "no answer within 6 s (request_timeout is 8 s): {text}"
    );
    assert!(text.starts_with("HTTP/1.1 504"), "{text}");
    assert!(
        !sent_all.load(std::sync::atomic::Ordering::SeqCst),
        "the whole body fitted in the socket buffers: the stall was not tested"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered after {:?}",
        started.elapsed()
    );
    let m = metrics(&edge).await;
    assert_eq!(
        metric_value(&m, "outpost_upstream_requests_total", &[("result", "timeout")]),
        Some(1.0),
        "the timeout is counted against the origin"
    );
    assert_eq!(
        metric_value(
            &m,
            "outpost_rejected_requests_total",
            &[("reason", "client_body_timeout")]
        )
        .unwrap_or(0.0),
        0.0,
        "and not against the client"
    );
}

#[tokio::test]
async fn an_upload_the_client_stops_sending_is_still_the_clients_timeout() {
    let origin = Origin::start("o").await;
    let dir = TempDir::new("client-stops-sending");
    // The pause limit (timeouts.body, 30 s by default) is out of reach: the request timeout
    // ends this upload, and the origin was waiting for the client all along.
    let pool = "response_header_timeout = \"1s\"\nrequest_timeout = \"3s\"";
    let edge = start_edge(&dir, &pop_config("", pool, &[(origin.url(), false)])).await;
    let addr = edge.listener_addr("http").unwrap();

    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&[b'c'; 1000]).await.unwrap();
    let started = std::time::Instant::now();
    let answer = read_to_close(&mut s).await.expect("answered within 5 s");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        started.elapsed() >= Duration::from_millis(2500),
        "408 before the request timeout, after {:?}",
        started.elapsed()
    );
    let m = metrics(&edge).await;
    assert_eq!(
        metric_value(&m, "outpost_upstream_requests_total", &[("result", "timeout")]).unwrap_or(0.0),
        0.0,
        "no timeout counted against the origin"
    );
    assert_eq!(
        metric_value(
            &m,
            "outpost_rejected_requests_total",
            &[("reason", "client_body_timeout")]
        ),
        Some(1.0)
    );
}
