//! Origin pools under failure and load: dead origins, passive ejection and return, active
//! health checks, backup origins, the retry budget, least-requests balancing.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, StatusCode};

fn pool_config(origins: &[(&Origin, bool)], pool_extra: &str) -> String {
    let origins: Vec<(String, bool)> = origins.iter().map(|(o, backup)| (o.url(), *backup)).collect();
    pop_config("", pool_extra, &origins)
}

#[tokio::test]
async fn failover_when_an_origin_dies_mid_test() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let dir = TempDir::new("failover");
    let edge = start_edge(&dir, &pool_config(&[(&a, false), (&b, false)], "")).await;
    let addr = edge.listener_addr("http").unwrap();
    let client = http1_client();

    for _ in 0..20 {
        assert_eq!(
            send(&client, addr, "x", Method::GET, "/", Bytes::new())
                .await
                .status,
            StatusCode::OK
        );
    }
    assert!(a.hits() > 0 && b.hits() > 0, "round robin uses both");
    a.kill();
    let mut served_by = Vec::new();
    for _ in 0..50 {
        let resp = send(&client, addr, "x", Method::GET, "/", Bytes::new()).await;
        assert_eq!(
            resp.status,
            StatusCode::OK,
            "a dead origin must not fail requests: {}",
            resp.body
        );
        served_by.push(resp.body);
    }
    assert!(served_by.iter().all(|o| o == "b"));
    let text = metrics(&edge).await;
    assert!(
        metric_value(&text, "outpost_origin_ejections_total", &[("origin", &a.url())]).unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "outpost_origin_healthy", &[("origin", &a.url())]),
        Some(0.0)
    );
}

#[tokio::test]
async fn ejected_origin_returns_after_backoff() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let dir = TempDir::new("eject");
    let extra = "outlier = { consecutive_failures = 3, base_ejection = \"400ms\", max_ejection = \"10s\" }\nretry = { attempts = 0 }\n";
    let edge = start_edge(&dir, &pool_config(&[(&a, false), (&b, false)], extra)).await;
    let addr = edge.listener_addr("http").unwrap();
    let client = http1_client();

    a.set_status(500);
    let mut five_hundreds = 0;
    for _ in 0..20 {
        if send(&client, addr, "x", Method::GET, "/", Bytes::new())
            .await
            .status
            == StatusCode::INTERNAL_SERVER_ERROR
        {
            five_hundreds += 1;
        }
    }
    assert_eq!(five_hundreds, 3, "a is ejected after exactly 3 consecutive 5xx");
    let hits_while_ejected = a.hits();
    for _ in 0..10 {
        assert_eq!(
            send(&client, addr, "x", Method::GET, "/", Bytes::new())
                .await
                .body,
            "b"
        );
    }
    assert_eq!(a.hits(), hits_while_ejected, "no traffic to an ejected origin");

    a.set_status(200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut back = false;
    for _ in 0..10 {
        if send(&client, addr, "x", Method::GET, "/", Bytes::new())
            .await
            .body
            == "a"
        {
            back = true;
        }
    }
    assert!(back, "origin returns once its ejection expires");
}

#[tokio::test]
async fn active_health_checks_take_origins_out_and_back() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let dir = TempDir::new("health");
    let extra = "health_check = { path = \"/health\", interval = \"50ms\", timeout = \"45ms\", rise = 2, fall = 2 }\n";
    let edge = start_edge(&dir, &pool_config(&[(&a, false), (&b, false)], extra)).await;
    let addr = edge.listener_addr("http").unwrap();

    // `a` fails its checks (and its traffic): after `fall` probes it gets nothing.
    a.set_status(503);
    assert!(eventually_get(addr, "x", "/", Duration::from_secs(5), |r| r.body == "b").await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = a.hits();
    for _ in 0..10 {
        assert_eq!(get(addr, "x", "/").await.body, "b");
    }
    assert_eq!(a.hits(), before, "an unhealthy origin takes no traffic");
    let text = metrics(&edge).await;
    assert_eq!(
        metric_value(&text, "outpost_origin_healthy", &[("origin", &a.url())]),
        Some(0.0)
    );
    assert_eq!(
        metric_value(&text, "outpost_origin_healthy", &[("origin", &b.url())]),
        Some(1.0)
    );

    // Healthy again: after `rise` probes it is back in rotation.
    a.set_status(200);
    assert!(
        eventually_get(addr, "x", "/", Duration::from_secs(5), |r| r.body == "a").await,
        "a healthy origin comes back into rotation"
    );
}

#[tokio::test]
async fn backups_take_over_and_503_when_none_is_left() {
    let (a, backup) = (Origin::start("primary").await, Origin::start("backup").await);
    let dir = TempDir::new("backup");
    let extra = "health_check = { path = \"/health\", interval = \"50ms\", timeout = \"45ms\", rise = 1, fall = 1 }\n";
    let edge = start_edge(&dir, &pool_config(&[(&a, false), (&backup, true)], extra)).await;
    let addr = edge.listener_addr("http").unwrap();

    for _ in 0..5 {
        assert_eq!(
            get(addr, "x", "/").await.body,
            "primary",
            "backups idle while a primary is healthy"
        );
    }
    a.kill();
    assert!(
        eventually_get(addr, "x", "/", Duration::from_secs(5), |r| r.body == "backup").await,
        "backup takes over when the primary is down"
    );
    backup.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // What the PoP logs from here on (the edge's tasks run on this test's thread).
    let logged = LogLines::default();
    let _logging = logged.capture();
    for _ in 0..20 {
        let resp = get(addr, "x", "/").await;
        assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            resp.body.contains("no healthy origin is available for this site"),
            "{}",
            resp.body
        );
    }
    let text = metrics(&edge).await;
    assert_eq!(
        metric_value(&text, "outpost_no_healthy_origin_total", &[("pool", "p")]),
        Some(20.0),
        "counted per request"
    );
    let lines = logged.lines();
    let outage = lines
        .iter()
        .filter(|l| l.contains("no origin of the pool can take traffic"))
        .count();
    assert_eq!(
        outage,
        1,
        "the outage is logged once, not per request:\n{}",
        lines.join("\n")
    );
    assert!(
        !lines.iter().any(|l| l.contains("request failed")),
        "no line per refused request:\n{}",
        lines.join("\n")
    );
}

#[tokio::test]
async fn retries_respect_the_budget_and_never_resend_bodies() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    a.set_status(503);
    b.set_status(503);
    let dir = TempDir::new("budget");
    let extra = "retry = { attempts = 2, budget_ratio = 0.0, min_per_second = 1, on_status = [503] }\noutlier = { consecutive_failures = 0 }\n";
    let edge = start_edge(&dir, &pool_config(&[(&a, false), (&b, false)], extra)).await;
    let addr = edge.listener_addr("http").unwrap();
    let client = http1_client();

    for _ in 0..30 {
        assert_eq!(
            send(&client, addr, "x", Method::GET, "/", Bytes::new())
                .await
                .status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    // 30 originals plus the 10 retries that min_per_second=1 over the 10 s window allows.
    assert_eq!(a.hits() + b.hits(), 40);
    let text = metrics(&edge).await;
    assert_eq!(
        metric_value(&text, "outpost_retries_total", &[("outcome", "attempted")]),
        Some(10.0)
    );
    assert!(
        metric_value(&text, "outpost_retries_total", &[("outcome", "budget_exhausted")]).unwrap_or(0.0)
            >= 1.0
    );
}

#[tokio::test]
async fn requests_that_sent_a_body_or_are_not_idempotent_are_never_retried() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    a.set_status(503);
    b.set_status(503);
    let dir = TempDir::new("no-retry");
    // A budget that allows every retry: only the request decides.
    let extra = "retry = { attempts = 1, budget_ratio = 1.0, min_per_second = 100, on_status = [503] }\noutlier = { consecutive_failures = 0 }\n";
    let edge = start_edge(&dir, &pool_config(&[(&a, false), (&b, false)], extra)).await;
    let addr = edge.listener_addr("http").unwrap();
    let client = http1_client();
    let tries = |method: Method, body: &'static [u8]| {
        let client = client.clone();
        let (a, b) = (&a, &b);
        async move {
            let before = a.hits() + b.hits();
            let resp = send(&client, addr, "x", method, "/", Bytes::from_static(body)).await;
            assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE);
            a.hits() + b.hits() - before
        }
    };
    assert_eq!(
        tries(Method::GET, b"").await,
        2,
        "an idempotent request without a body is retried"
    );
    assert_eq!(
        tries(Method::PUT, b"payload").await,
        1,
        "a request whose body was sent is not"
    );
    assert_eq!(
        tries(Method::POST, b"").await,
        1,
        "nor a request that is not idempotent"
    );
    assert_eq!(tries(Method::DELETE, b"").await, 2);
}

#[tokio::test]
async fn a_retried_request_carries_the_clients_fields_and_the_pops() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    a.set_status(503);
    let dir = TempDir::new("retry-fields");
    let extra = "retry = { attempts = 1, budget_ratio = 1.0, min_per_second = 100, on_status = [503] }\noutlier = { consecutive_failures = 0 }\n";
    let edge = start_edge(&dir, &pool_config(&[(&a, false), (&b, false)], extra)).await;
    let addr = edge.listener_addr("http").unwrap();
    let client = http1_client();

    let mut retried = 0;
    for i in 0..6 {
        let tried_a = a.hits();
        let req = http::Request::builder()
            .uri(format!("http://{addr}/r{i}"))
            .header("host", "x")
            .header("x-client-field", format!("v{i}"))
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        let resp = collect(client.request(req).await.expect("request failed")).await;
        assert_eq!(resp.status, StatusCode::OK, "b answers the retry: {}", resp.body);
        if a.hits() > tried_a {
            // The request went to a first: what b saw is the second attempt.
            retried += 1;
            let seen = b.last_headers.lock().unwrap().clone().expect("b was asked");
            assert_eq!(seen["x-client-field"], format!("v{i}").as_str());
            assert_eq!(seen["host"], "x");
            for field in ["via", "x-forwarded-for", "forwarded", "traceparent"] {
                assert!(
                    seen.contains_key(field),
                    "{field} missing from the retry: {seen:?}"
                );
            }
        }
    }
    assert!(retried > 0, "round robin sends some requests to a first");
}

#[tokio::test]
async fn consistent_hashing_keeps_a_key_on_one_origin() {
    let (a, b, c) = (
        Origin::start("a").await,
        Origin::start("b").await,
        Origin::start("c").await,
    );
    let dir = TempDir::new("chash");
    let extra = "balance = \"consistent_hash\"\nhash_key = \"path\"\n";
    let edge = start_edge(
        &dir,
        &pool_config(&[(&a, false), (&b, false), (&c, false)], extra),
    )
    .await;
    let addr = edge.listener_addr("http").unwrap();

    let mut owners = std::collections::HashMap::new();
    for i in 0..30 {
        let path = format!("/object/{i}");
        let first = get(addr, "x", &path).await.body;
        for _ in 0..3 {
            assert_eq!(
                get(addr, "x", &format!("{path}?v=2")).await.body,
                first,
                "same path, same origin"
            );
        }
        owners.insert(path, first);
    }
    let spread = count_by(owners.values().cloned());
    assert_eq!(spread.len(), 3, "keys spread over every origin: {spread:?}");

    // Losing one origin moves only its keys.
    b.kill();
    for (path, owner) in &owners {
        let now = get(addr, "x", path).await;
        assert_eq!(now.status, StatusCode::OK);
        if owner != "b" {
            assert_eq!(&now.body, owner, "{path} moved although its origin is alive");
        }
    }
}

#[tokio::test]
async fn slow_origins_get_504_and_are_not_retried() {
    let a = Origin::start("slow").await;
    a.set_delay(Duration::from_millis(800));
    let dir = TempDir::new("timeout504");
    let extra = "response_header_timeout = \"200ms\"\n";
    let edge = start_edge(&dir, &pool_config(&[(&a, false)], extra)).await;
    let addr = edge.listener_addr("http").unwrap();

    let started = std::time::Instant::now();
    let resp = get(addr, "x", "/").await;
    assert_eq!(resp.status, StatusCode::GATEWAY_TIMEOUT, "{}", resp.body);
    assert!(resp.body.contains("did not answer within"), "{}", resp.body);
    assert!(
        started.elapsed() < Duration::from_millis(750),
        "answered at the deadline, not after the origin"
    );
    assert_eq!(a.hits(), 1, "a timed-out request is not retried");
    let text = metrics(&edge).await;
    assert_eq!(
        metric_value(&text, "outpost_upstream_requests_total", &[("result", "timeout")]),
        Some(1.0)
    );
}

/// The response-header deadline of a request that reuses a kept-alive origin connection is
/// its own: not the previous request's (already past), and not forgotten.
#[tokio::test]
async fn a_reused_origin_connection_times_out_at_the_new_requests_deadline() {
    let a = Origin::start("slow-reused").await;
    let dir = TempDir::new("timeout504-reused");
    let extra = "response_header_timeout = \"300ms\"\n";
    let edge = start_edge(&dir, &pool_config(&[(&a, false)], extra)).await;
    let addr = edge.listener_addr("http").unwrap();

    assert_eq!(get(addr, "x", "/").await.status, StatusCode::OK);
    // Past the first request's deadline: a timer left at it would fire at once.
    tokio::time::sleep(Duration::from_millis(400)).await;
    a.set_delay(Duration::from_millis(1500));
    let started = std::time::Instant::now();
    let resp = get(addr, "x", "/").await;
    let elapsed = started.elapsed();
    assert_eq!(resp.status, StatusCode::GATEWAY_TIMEOUT, "{}", resp.body);
    assert!(
        elapsed >= Duration::from_millis(300),
        "gave up before the deadline: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(1400),
        "waited for the origin instead: {elapsed:?}"
    );
    a.set_delay(Duration::ZERO);
    assert_eq!(get(addr, "x", "/").await.status, StatusCode::OK);
    assert_eq!(a.hits(), 3);
}

/// A listener that accepts nothing and whose backlog is full: a connect to it hangs (the kernel
/// drops the SYN), which is how an unreachable origin looks, but on loopback.
fn black_hole() -> (
    Vec<std::net::TcpStream>,
    tokio::net::TcpListener,
    std::net::SocketAddr,
) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    // Fill the accept queue; further handshakes cannot complete.
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => fillers.push(s),
            Err(_) => break,
        }
    }
    (fillers, listener, addr)
}

#[tokio::test]
async fn connect_timeout_fails_over_to_a_reachable_origin() {
    let (_fillers, _hole, hole_addr) = black_hole();
    let probe = std::net::TcpStream::connect_timeout(&hole_addr, Duration::from_millis(300));
    assert_eq!(
        probe.map(|_| ()).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::TimedOut),
        "the black hole must make connects hang, or this test proves nothing"
    );
    let alive = Origin::start("alive").await;
    let dir = TempDir::new("connect-timeout");
    let config = pop_config(
        "",
        "connect_timeout = \"200ms\"\noutlier = { consecutive_failures = 0 }",
        &[(format!("http://{hole_addr}"), false), (alive.url(), false)],
    );
    let edge = start_edge(&dir, &config).await;
    let addr = edge.listener_addr("http").unwrap();
    for _ in 0..4 {
        let started = std::time::Instant::now();
        let resp = get(addr, "x", "/").await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
        assert_eq!(resp.body, "alive");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the hung connect was cut at connect_timeout"
        );
    }
    let text = metrics(&edge).await;
    let errors = metric_value(
        &text,
        "outpost_upstream_requests_total",
        &[
            ("origin", &format!("http://{hole_addr}")),
            ("result", "connect_error"),
        ],
    );
    assert!(errors.unwrap_or(0.0) >= 1.0, "{text}");
}

#[tokio::test]
async fn a_pool_whose_every_origin_is_ejected_still_sends_them_traffic() {
    let a = Origin::start("only").await;
    let dir = TempDir::new("panic");
    let extra = "outlier = { consecutive_failures = 2, base_ejection = \"30s\", max_ejection = \"60s\" }\n";
    let edge = start_edge(&dir, &pool_config(&[(&a, false)], extra)).await;
    let addr = edge.listener_addr("http").unwrap();
    a.set_status(500);
    for _ in 0..3 {
        get(addr, "x", "/").await;
    }
    a.set_status(200);
    let resp = get(addr, "x", "/").await;
    assert_eq!(
        (resp.status, resp.body.as_str()),
        (StatusCode::OK, "only"),
        "the only origin, ejected for its 5xx, is still tried rather than answering 503"
    );
}

/// An origin speaking HTTP/1.1 by hand: `/stream` answers a head and the first bytes of a body
/// that it then holds open until the test lets it go; anything else gets its name.
struct HeldOrigin {
    url: String,
    hits: Arc<AtomicUsize>,
    streaming: Arc<AtomicUsize>,
}

async fn held_origin(name: &'static str, release: Arc<tokio::sync::Notify>) -> HeldOrigin {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (hits, streaming) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (h, st) = (hits.clone(), streaming.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (h, st, release) = (h.clone(), st.clone(), release.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    h.fetch_add(1, Ordering::SeqCst);
                    if head.starts_with("GET /stream ") {
                        st.fetch_add(1, Ordering::SeqCst);
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 20\r\n\r\nfirst half")
                            .await;
                        release.notified().await;
                        let _ = s.write_all(b"secondhalf").await;
                        continue;
                    }
                    let reply = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{name}", name.len());
                    if s.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    HeldOrigin { url, hits, streaming }
}

#[tokio::test]
async fn least_requests_counts_a_response_until_its_body_ends() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let release = Arc::new(tokio::sync::Notify::new());
    let a = held_origin("a", release.clone()).await;
    let b = held_origin("b", release.clone()).await;
    let dir = TempDir::new("least-requests");
    let origins = [(a.url.clone(), false), (b.url.clone(), false)];
    let edge = start_edge(&dir, &pop_config("", "balance = \"least_requests\"", &origins)).await;
    let addr = edge.listener_addr("http").unwrap();

    // A download whose head has come and whose body is still streaming.
    let mut download = tokio::net::TcpStream::connect(addr).await.unwrap();
    download
        .write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while !got.ends_with(b"first half") {
        let n = tokio::time::timeout(Duration::from_secs(5), download.read(&mut chunk))
            .await
            .expect("the first half came")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    let (busy, idle) = if a.streaming.load(Ordering::SeqCst) == 1 {
        (&a, "b")
    } else {
        (&b, "a")
    };
    let before = busy.hits.load(Ordering::SeqCst);
    // The busy origin has one request outstanding, the other none: every pick of two goes to
    // the idle one (with ties broken at random, a count that ended with the head would send
    // about half of these to the busy origin).
    let client = http1_client();
    for _ in 0..10 {
        let resp = send(&client, addr, "x", Method::GET, "/", Bytes::new()).await;
        assert_eq!(resp.body, idle);
    }
    assert_eq!(busy.hits.load(Ordering::SeqCst), before);
    // Once the body has ended, both take requests again.
    release.notify_waiters();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !rest.ends_with(b"secondhalf") {
            let n = download.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            rest.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("the rest of the body came");
    let mut answered_by_busy = false;
    for _ in 0..40 {
        let resp = send(&client, addr, "x", Method::GET, "/", Bytes::new()).await;
        answered_by_busy |= resp.body != idle;
    }
    assert!(
        answered_by_busy,
        "the origin stayed counted as busy after the body ended"
    );
}
