mod common;

// Malformed and abusive requests, written byte by byte on raw sockets: request smuggling
// framings, broken heads, limits, slow bodies and HTTP/2 rapid reset. Each test asserts what
// the client gets back and that the origin never saw a request that must not be forwarded.

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every read on a raw socket is bounded by this.
const READ_LIMIT: Duration = Duration::from_secs(5);

/// A PoP with one catch-all site in front of `origin`. `sections` is extra top-level TOML
/// (`[limits]`, `[timeouts]`); `pool_keys` are extra keys of the `[[pool]]` table.
async fn start_pop(dir: &TempDir, origin: &Origin, sections: &str, pool_keys: &str) -> outpost_edge::Edge {
    start_edge(dir, &pop_config(sections, pool_keys, &[(origin.url(), false)])).await
}

/// Starts an origin and a PoP in front of it; returns them with the PoP's plain listener.
async fn setup(
    tag: &str,
    sections: &str,
    pool_keys: &str,
) -> (Origin, TempDir, outpost_edge::Edge, std::net::SocketAddr) {
    let origin = Origin::start("o").await;
    let dir = TempDir::new(tag);
    let edge = start_pop(&dir, &origin, sections, pool_keys).await;
    let addr = edge.listener_addr("http").unwrap();
    (origin, dir, edge, addr)
}

/// Writes `raw` on a fresh connection. A write error is ignored: the PoP may close the socket
/// as soon as it has seen enough to refuse, and the answer (or the close) is what is checked.
async fn send_raw(addr: std::net::SocketAddr, raw: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = tokio::time::timeout(READ_LIMIT, s.write_all(raw)).await;
    s
}

/// Reads one response head (up to the blank line) without waiting for the connection to close:
/// answers the proxy makes itself keep the connection alive. Returns what arrived, possibly
/// empty when the PoP closed without answering.
async fn read_head(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + READ_LIMIT;
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => panic!(
                "no response head within {READ_LIMIT:?}; got {:?}",
                String::from_utf8_lossy(&out)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends `raw`, expects the PoP to answer `status` and close the connection, and the origin
/// to have seen nothing.
async fn assert_refused_and_closed(raw: &[u8], status: u16) {
    let (origin, _dir, _edge, addr) = setup("refuse", "", "").await;
    let mut s = send_raw(addr, raw).await;
    let answer = read_to_close(&mut s)
        .await
        .expect("the PoP closes the connection after refusing a malformed request");
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status} ")),
        "expected {status} for {:?}, got {answer:?}",
        String::from_utf8_lossy(raw)
    );
    assert_eq!(origin.hits(), 0, "a malformed request reached the origin");
}

#[tokio::test]
async fn content_length_with_transfer_encoding_cannot_smuggle_a_request() {
    // The classic CL.TE / TE.CL framings (RFC 9112 §6.1). hyper lets Transfer-Encoding win and
    // drops Content-Length (§6.3 item 3), forwards the body re-framed, and closes the
    // connection after answering, so the request hidden behind the chunked body is never
    // processed. Both header orders, since parsers treat them differently.
    for heads in [
        "Content-Length: 4\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 4",
    ] {
        let origin = Origin::start("o").await;
        let dir = TempDir::new("clte");
        let edge = start_pop(&dir, &origin, "", "").await;
        let addr = edge.listener_addr("http").unwrap();
        let raw = format!(
            "POST /echo HTTP/1.1\r\nHost: x\r\n{heads}\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
        );
        let mut s = send_raw(addr, raw.as_bytes()).await;
        let all = read_to_close(&mut s)
            .await
            .expect("connection closed after one answer");
        assert_eq!(all.matches("HTTP/1.1 ").count(), 1, "exactly one response: {all}");
        assert_eq!(origin.hits(), 1, "the smuggled request never reached the origin");
    }
}

#[tokio::test]
async fn differing_content_lengths_are_refused() {
    // Two lengths that disagree are ambiguous framing too (RFC 9112 §6.3 item 5).
    assert_refused_and_closed(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
        400,
    )
    .await;
}

#[tokio::test]
async fn invalid_content_lengths_are_refused() {
    for value in ["12abc", "-1", "+5", "1 2", ""] {
        let raw = format!("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {value}\r\n\r\nabcde");
        assert_refused_and_closed(raw.as_bytes(), 400).await;
    }
}

#[tokio::test]
async fn transfer_encoding_not_ending_in_chunked_is_refused() {
    // Without chunked last, a request body has no defined end (RFC 9112 §6.3 item 4).
    for value in ["gzip", "chunked, gzip"] {
        let raw = format!("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {value}\r\n\r\nabcde");
        assert_refused_and_closed(raw.as_bytes(), 400).await;
    }
}

#[tokio::test]
async fn obsolete_line_folding_is_refused() {
    // A continuation line could be read as a new header by another parser (RFC 9112 §5.2).
    for fold in [" folded", "\tfolded"] {
        let raw = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Long: first\r\n{fold}\r\n\r\n");
        assert_refused_and_closed(raw.as_bytes(), 400).await;
    }
}

#[tokio::test]
async fn invalid_header_names_are_refused() {
    for line in [
        "Bad Header: x",
        "X(bad): x",
        "X-Bad\x01: x",
        "X-Bad : x",
        ": empty",
    ] {
        let raw = format!("GET / HTTP/1.1\r\nHost: x\r\n{line}\r\n\r\n");
        assert_refused_and_closed(raw.as_bytes(), 400).await;
    }
}

#[tokio::test]
async fn too_many_headers_are_refused_with_431() {
    // hyper parses at most 100 headers; more is answered 431 before anything is routed.
    let mut raw = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..150 {
        raw.push_str(&format!("X-H{i}: v\r\n"));
    }
    raw.push_str("\r\n");
    assert_refused_and_closed(raw.as_bytes(), 431).await;
}

#[tokio::test]
async fn request_target_over_the_limit_is_refused_with_414() {
    let (origin, _dir, _edge, addr) = setup("uri", "[limits]\nmax_uri_bytes = 64", "").await;
    let raw = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "u".repeat(100));
    let mut s = send_raw(addr, raw.as_bytes()).await;
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 414 "), "{head}");
    assert_eq!(origin.hits(), 0);

    // A target exactly at the limit still goes through: the limit is not off by one.
    let raw = format!(
        "GET /{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "u".repeat(63)
    );
    let mut s = send_raw(addr, raw.as_bytes()).await;
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn declared_body_over_the_limit_is_refused_with_413() {
    let (origin, _dir, _edge, addr) = setup("body-cl", "[limits]\nmax_body_bytes = 1000", "").await;
    // Only the head is sent: the PoP must refuse on the declared length, without waiting for
    // (or forwarding) a body it will not accept.
    let mut s = send_raw(
        addr,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n",
    )
    .await;
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 413 "), "{head}");
    assert_eq!(origin.hits(), 0, "a body over the limit was forwarded");
}

#[tokio::test]
async fn chunked_body_growing_past_the_limit_is_cut_off() {
    let (origin, _dir, _edge, addr) = setup("body-chunked", "[limits]\nmax_body_bytes = 1000", "").await;
    // No declared length: the PoP starts forwarding, then must stop once 1000 bytes passed.
    let mut raw = String::from("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    for _ in 0..10 {
        raw.push_str(&format!("1f4\r\n{}\r\n", "c".repeat(500)));
    }
    raw.push_str("0\r\n\r\n");
    let mut s = send_raw(addr, raw.as_bytes()).await;
    // The head, or nothing if the PoP closed the connection instead of answering.
    let answer = read_head(&mut s).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 413 "),
        "expected 413 or a closed connection, got {answer:?}"
    );
    // The origin may have seen the start of the request, never the whole 5000-byte body:
    // a 200 here would be its echo of everything the client sent.
    assert!(!answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(origin.hits() <= 1);
}

#[tokio::test]
async fn slow_request_body_is_not_waited_on_forever() {
    // `timeouts.header` only covers the head; the pool's deadlines are what should bound a
    // request whose body trickles in (a "slow POST").
    let (origin, _dir, _edge, addr) = setup(
        "slow-body",
        "[timeouts]\nheader = \"300ms\"",
        "request_timeout = \"1s\"\nresponse_header_timeout = \"1s\"",
    )
    .await;
    let started = Instant::now();
    // /echo reads the whole body before answering, as an origin that needs the body would.
    let mut s = send_raw(
        addr,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nx",
    )
    .await;
    // ...and then nothing more: the client stalls with 99 bytes owed.
    let head = read_head(&mut s).await;
    let elapsed = started.elapsed();
    let status: u16 = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    assert!(
        head.is_empty() || (400..600).contains(&status),
        "expected an error status or a close, got {head:?}"
    );
    assert!(elapsed < Duration::from_secs(3), "answered after {elapsed:?}");
    // The connection is not kept for the body the PoP gave up on.
    let rest = read_to_close(&mut s).await;
    assert!(
        rest.is_some(),
        "the connection stayed open after the error answer"
    );
    assert!(origin.hits() <= 1);
}

#[tokio::test]
async fn slow_client_bodies_do_not_eject_a_healthy_origin() {
    // The origin's response-header clock starts only once the body is in, so what cuts these
    // clients off is the body pause timeout.
    let (origin, _dir, _edge, addr) = setup(
        "slow-body-eject",
        "[timeouts]\nbody = \"300ms\"",
        "response_header_timeout = \"300ms\"\n[pool.outlier]\nconsecutive_failures = 2",
    )
    .await;
    // Two clients promise 100 bytes, send 1 and stall; the origin (/echo) waits for the rest.
    let mut heads = Vec::new();
    for _ in 0..2 {
        let mut s = send_raw(
            addr,
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nx",
        )
        .await;
        heads.push(read_head(&mut s).await);
    }
    // The origin did nothing wrong and must still be in rotation.
    let answer = get(addr, "x", "/").await;
    assert_eq!(
        answer.status,
        http::StatusCode::OK,
        "stalled clients ejected the origin: {}",
        answer.body
    );
    assert_eq!(origin.hits(), 3);
    // The clients are the ones who stalled: 408, not a gateway timeout blamed on the origin.
    for head in heads {
        assert!(head.starts_with("HTTP/1.1 408 "), "{head}");
    }
}

// --- HTTP/2 rapid reset -------------------------------------------------------------------

/// Frame types (RFC 9113 §6).
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
/// HEADERS flags.
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
/// RST_STREAM error code CANCEL, what browsers send when a navigation is abandoned.
const CANCEL: u32 = 0x8;

/// A complete GET / request as an HPACK header block using only the static table, so every
/// stream's block is the same bytes and no dynamic-table state has to be tracked:
/// 0x82 :method GET, 0x86 :scheme http, 0x84 :path /, then :authority (static index 1) as a
/// literal without indexing (0x01) with the 1-byte value "x".
const GET_BLOCK: &[u8] = &[0x82, 0x86, 0x84, 0x01, 0x01, b'x'];

/// Reads frames until GOAWAY arrives or the connection ends. Returns the GOAWAY's last stream
/// id and error code, None when the socket closed without one. Panics if neither happens
/// within `READ_LIMIT` (the PoP kept accepting the abuse).
async fn await_goaway(s: &mut TcpStream) -> Option<(u32, u32)> {
    let deadline = tokio::time::Instant::now() + READ_LIMIT;
    loop {
        let mut head = [0u8; 9];
        match tokio::time::timeout_at(deadline, s.read_exact(&mut head)).await {
            Err(_) => panic!("the PoP neither sent GOAWAY nor closed the connection"),
            Ok(Err(_)) => return None,
            Ok(Ok(_)) => {}
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        match tokio::time::timeout_at(deadline, s.read_exact(&mut payload)).await {
            Err(_) => panic!("the PoP stalled mid-frame"),
            Ok(Err(_)) => return None,
            Ok(Ok(_)) => {}
        }
        if head[3] == GOAWAY && payload.len() >= 8 {
            let last = u32::from_be_bytes(payload[..4].try_into().unwrap()) & 0x7fff_ffff;
            let code = u32::from_be_bytes(payload[4..8].try_into().unwrap());
            return Some((last, code));
        }
        // SETTINGS, WINDOW_UPDATE, PING, responses and RST_STREAMs for the cancelled streams
        // are skipped: only the connection's fate matters here.
    }
}

#[tokio::test]
async fn http2_rapid_reset_is_cut_off_with_goaway() {
    const STREAMS: u32 = 2_000;
    let (origin, _dir, _edge, addr) = setup("rapid-reset", "", "").await;
    let mut s = TcpStream::connect(addr).await.unwrap();

    // h2c with prior knowledge: the preface, then our (empty) SETTINGS.
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2_frame(&mut out, SETTINGS, 0, 0, &[]);
    s.write_all(&out).await.unwrap();

    // Open and immediately cancel streams 1, 3, 5, ... in batches of 50 HEADERS+RST pairs,
    // as CVE-2023-44487 does. A write error means the PoP already closed on us.
    let mut written = 0;
    'attack: for batch in 0..STREAMS / 50 {
        let mut out = Vec::with_capacity(50 * 28);
        for i in 0..50 {
            let stream = 2 * (batch * 50 + i) + 1;
            h2_frame(&mut out, HEADERS, END_HEADERS | END_STREAM, stream, GET_BLOCK);
            h2_frame(&mut out, RST_STREAM, 0, stream, &CANCEL.to_be_bytes());
        }
        match tokio::time::timeout(READ_LIMIT, s.write_all(&out)).await {
            Ok(Ok(())) => written += 50,
            Ok(Err(_)) => break 'attack,
            Err(_) => panic!("writing the attack stalled"),
        }
    }

    let goaway = await_goaway(&mut s).await;
    let (last, code) = goaway
        .unwrap_or_else(|| panic!("the PoP closed the connection without GOAWAY after {written} streams"));
    // ENHANCE_YOUR_CALM (0xb) is what h2 answers to too many remotely reset streams.
    assert_eq!(code, 0xb, "GOAWAY error code");
    assert!(
        last < 2 * STREAMS - 1,
        "GOAWAY came only after all {STREAMS} streams were accepted (last stream {last})"
    );
    // Cancelled streams may have been forwarded before their reset was read, but not all.
    assert!(
        origin.hits() < STREAMS as usize,
        "{} of {STREAMS} streams reached the origin",
        origin.hits()
    );

    // The PoP itself is unharmed: a fresh connection is served, over h2c and HTTP/1.1.
    still_serving(addr).await;
}

#[tokio::test]
async fn body_trickling_below_the_minimum_rate_gets_408_and_is_counted() {
    // The pause timeout alone never fires: a byte arrives every 100 ms. The minimum rate does.
    let (origin, _dir, edge, addr) = setup(
        "min-rate",
        "[timeouts]\nbody = \"30s\"\nbody_min_rate = \"1KiB/s\"\nbody_rate_window = \"1s\"",
        "",
    )
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let trickle = async {
        for _ in 0..100 {
            if s.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(1800), trickle).await;
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 408 "), "got {head:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert!(read_to_close(&mut s).await.is_some(), "the connection is closed");
    let text = metrics(&edge).await;
    assert_eq!(
        metric_value(
            &text,
            "outpost_rejected_requests_total",
            &[("reason", "client_body_too_slow")]
        ),
        Some(1.0)
    );

    // A client at a normal pace is unaffected.
    let body = vec![b'y'; 64 * 1024];
    let answer = send(
        &http1_client(),
        addr,
        "x",
        http::Method::POST,
        "/echo",
        body.clone().into(),
    )
    .await;
    assert_eq!(answer.status, http::StatusCode::OK);
    assert_eq!(answer.body.len(), body.len());
    assert!(origin.hits() <= 2);
}

#[tokio::test]
async fn oversized_heads_are_answered_431_and_counted() {
    let (origin, _dir, edge, addr) = setup("431", "[limits]\nmax_header_bytes = 8192", "").await;
    // Too many fields, then too many bytes in one field.
    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..150 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(20_000)
    );
    for raw in [many, big] {
        let mut s = send_raw(addr, raw.as_bytes()).await;
        let answer = read_to_close(&mut s).await.expect("closed after the answer");
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer:?}");
    }
    assert_eq!(origin.hits(), 0);
    // The connection's end (where hyper's error is seen) may trail the answer a little.
    let mut counted = None;
    for _ in 0..50 {
        let text = metrics(&edge).await;
        counted = metric_value(
            &text,
            "outpost_rejected_requests_total",
            &[("reason", "header_too_large")],
        );
        if counted == Some(2.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(counted, Some(2.0), "both 431s are counted");
}

#[tokio::test]
async fn bare_lf_line_endings_are_never_forwarded_ambiguously() {
    // RFC 9112 §2.2 lets a server accept a bare LF as a line ending; hyper (httparse) does.
    // What matters is that the PoP reads the same request the origin will: it re-serializes the
    // head with CRLF, so the origin never sees the client's bare LFs.
    let (origin, _dir, _edge, addr) = setup("bare-lf", "", "").await;
    let mut s = send_raw(addr, b"GET /lf HTTP/1.1\nHost: x\nX-Probe: one\n\n").await;
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head:?}");
    let seen = origin.last_headers.lock().unwrap().clone().unwrap();
    assert_eq!(
        seen.get("x-probe").unwrap(),
        "one",
        "one field, parsed as the PoP parsed it"
    );
    assert_eq!(origin.hits(), 1);
    // A bare CR is not a line ending: refused, and nothing reaches the origin.
    let before = origin.hits();
    let mut s = send_raw(addr, b"GET /cr HTTP/1.1\r\nHost: x\rX-Smuggle: 1\r\n\r\n").await;
    let answer = read_to_close(&mut s).await.unwrap_or_default();
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400 "),
        "{answer:?}"
    );
    assert_eq!(origin.hits(), before);
}

const CONTINUATION: u8 = 0x9;
const PING: u8 = 0x6;

/// Opens an h2c connection (preface and empty SETTINGS) to `addr`.
async fn h2c_raw(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2_frame(&mut out, SETTINGS, 0, 0, &[]);
    s.write_all(&out).await.unwrap();
    s
}

/// Writes `chunk` over and over for up to `rounds` times or until the PoP stops reading
/// (a write stalls for a second) or closes; returns how many were written.
async fn flood(s: &mut TcpStream, chunk: &[u8], rounds: usize) -> usize {
    for i in 0..rounds {
        match tokio::time::timeout(Duration::from_secs(1), s.write_all(chunk)).await {
            Ok(Ok(())) => {}
            _ => return i,
        }
    }
    rounds
}

/// After an attack: a fresh connection is served, over h2c and HTTP/1.1.
async fn still_serving(addr: std::net::SocketAddr) {
    let h2 = tokio::time::timeout(
        READ_LIMIT,
        h2c_send(addr, "x", http::Method::GET, "/", bytes::Bytes::new()),
    )
    .await
    .expect("h2c request after the attack");
    assert_eq!(h2.status, http::StatusCode::OK);
    let h1 = tokio::time::timeout(READ_LIMIT, get(addr, "x", "/"))
        .await
        .expect("HTTP/1.1 request after the attack");
    assert_eq!(h1.status, http::StatusCode::OK);
}

#[tokio::test]
async fn http2_continuation_flood_is_cut_off() {
    // A header block that never ends (CVE-2024-27316 and kin): HEADERS without END_HEADERS,
    // then CONTINUATION frames forever. The block is bounded by max_header_list_size
    // (limits.max_header_bytes) and the number of CONTINUATION frames h2 accepts.
    let (origin, _dir, _edge, addr) = setup("continuation", "", "").await;
    let mut s = h2c_raw(addr).await;
    let mut out = Vec::new();
    h2_frame(&mut out, HEADERS, END_STREAM, 1, GET_BLOCK);
    s.write_all(&out).await.unwrap();
    let mut chunk = Vec::new();
    for _ in 0..64 {
        h2_frame(&mut chunk, CONTINUATION, 0, 1, &[0x40, 0x01, b'a', 0x7f, 0x7f]);
    }
    let written = flood(&mut s, &chunk, 20_000).await;
    let goaway = await_goaway(&mut s).await;
    assert!(
        goaway.is_none_or(|(_, code)| code != 0),
        "closed with an error after {written} rounds: {goaway:?}"
    );
    assert_eq!(origin.hits(), 0, "the endless request never reached the origin");
    still_serving(addr).await;
}

/// SETTINGS and PING floods: each frame obliges the PoP to answer; past the per-connection
/// budget (server::h2_guard) the connection is cut off and counted, and other clients are
/// served throughout.
async fn flood_is_cut_off(tag: &str, chunk: Vec<u8>) {
    let (_origin, _dir, edge, addr) = setup(tag, "", "").await;
    let mut s = h2c_raw(addr).await;
    let attacker = tokio::spawn(async move {
        let written = flood(&mut s, &chunk, 1_000).await;
        let closed = await_goaway(&mut s).await;
        (written, closed)
    });
    still_serving(addr).await;
    let (written, goaway) = attacker.await.unwrap();
    assert!(
        written < 1_000,
        "the PoP stopped reading the flood after {written} rounds"
    );
    assert!(
        goaway.is_none_or(|(_, code)| code != 0),
        "closed with an error: {goaway:?}"
    );
    still_serving(addr).await;
    let text = metrics(&edge).await;
    assert_eq!(
        metric_value(
            &text,
            "outpost_rejected_requests_total",
            &[("reason", "h2_control_flood")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn http2_settings_flood_is_cut_off() {
    let mut chunk = Vec::new();
    for _ in 0..256 {
        // SETTINGS_MAX_CONCURRENT_STREAMS = 100: a real setting, each needing an ACK.
        h2_frame(&mut chunk, SETTINGS, 0, 0, &[0x00, 0x03, 0, 0, 0, 100]);
    }
    flood_is_cut_off("settings-flood", chunk).await;
}

#[tokio::test]
async fn http2_ping_flood_is_cut_off() {
    let mut chunk = Vec::new();
    for i in 0..256u64 {
        h2_frame(&mut chunk, PING, 0, 0, &i.to_be_bytes());
    }
    flood_is_cut_off("ping-flood", chunk).await;
}

#[tokio::test]
async fn http2_streams_beyond_the_concurrency_limit_are_refused() {
    // The listener allows 256 concurrent streams per connection (server/listener.rs). Open 300
    // uploads that never send their body: the excess is refused with RST_STREAM
    // REFUSED_STREAM (or the connection closed), never queued.
    let (_origin, _dir, _edge, addr) = setup("streams", "", "").await;
    let mut s = h2c_raw(addr).await;
    // :method POST (static 3), :scheme http, :path /, :authority "x".
    const POST_BLOCK: &[u8] = &[0x83, 0x86, 0x84, 0x01, 0x01, b'x'];
    let mut out = Vec::new();
    for i in 0..300u32 {
        h2_frame(&mut out, HEADERS, END_HEADERS, 2 * i + 1, POST_BLOCK);
    }
    s.write_all(&out).await.unwrap();
    let mut refused = 0;
    let mut closed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let mut head = [0u8; 9];
        match tokio::time::timeout_at(deadline, s.read_exact(&mut head)).await {
            Err(_) => break,
            Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => {}
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if s.read_exact(&mut payload).await.is_err() {
            closed = true;
            break;
        }
        if head[3] == RST_STREAM && payload == 0x7u32.to_be_bytes() {
            refused += 1;
        }
        if head[3] == GOAWAY {
            closed = true;
            break;
        }
    }
    assert!(
        closed || refused >= 300 - 256,
        "{refused} streams refused, connection open"
    );
    still_serving(addr).await;
}
