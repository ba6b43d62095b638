//! Routing by Host and SNI, proxy header semantics, HTTP/2 on both sides, WebSocket, limits.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, StatusCode};

/// A PoP with one plain listener, "http"; the sites and pools follow.
const POP: &str = r#"
[pop]
id = "test"
[admin]
listen = "127.0.0.1:0"
[log]
access_log = "off"
[[listener]]
name = "http"
address = "127.0.0.1:0"
"#;

fn two_site_config(a: &Origin, b: &Origin) -> String {
    format!(
        r#"{POP}[[site]]
name = "alpha"
hosts = ["a.test", "*.alpha.test"]
pool = "a"
[[site]]
name = "beta"
hosts = ["b.test"]
pool = "b"
[[pool]]
name = "a"
[[pool.origin]]
url = "{}"
[[pool]]
name = "b"
protocol = "http2"
[[pool.origin]]
url = "{}"
"#,
        a.url(),
        b.url()
    )
}

#[tokio::test]
async fn routes_by_host_and_refuses_unknown_hosts() {
    let (a, b) = (Origin::start("origin-a").await, Origin::start("origin-b").await);
    let dir = TempDir::new("routing");
    let edge = start_edge(&dir, &two_site_config(&a, &b)).await;
    let addr = edge.listener_addr("http").unwrap();

    assert_eq!(get(addr, "a.test", "/").await.body, "origin-a");
    assert_eq!(
        get(addr, "A.TEST:8080", "/").await.body,
        "origin-a",
        "host match ignores case and port"
    );
    assert_eq!(
        get(addr, "www.alpha.test", "/").await.body,
        "origin-a",
        "wildcard host"
    );
    assert_eq!(get(addr, "b.test", "/").await.body, "origin-b");

    let unknown = get(addr, "nobody.test", "/").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(
        unknown
            .body
            .contains("no site is configured for host \"nobody.test\""),
        "{}",
        unknown.body
    );
    assert_eq!((a.hits(), b.hits()), (3, 1), "the unknown host reached no origin");
    let text = metrics(&edge).await;
    assert_eq!(
        metric_value(
            &text,
            "outpost_rejected_requests_total",
            &[("reason", "unknown_host")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &text,
            "outpost_requests_total",
            &[("site", "alpha"), ("class", "2xx"), ("pop", "test")]
        ),
        Some(3.0)
    );
}

#[tokio::test]
async fn proxy_headers_follow_the_rfcs() {
    let (a, b) = (Origin::start("origin-a").await, Origin::start("origin-b").await);
    let dir = TempDir::new("headers");
    let edge = start_edge(&dir, &two_site_config(&a, &b)).await;
    let addr = edge.listener_addr("http").unwrap();

    let client = http1_client();
    let req = http::Request::builder()
        .uri(format!("http://{addr}/path?q=1"))
        .header("host", "a.test")
        .header("connection", "x-private")
        .header("x-private", "hop only")
        .header("x-forwarded-for", "198.51.100.9")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let resp = collect(client.request(req).await.unwrap()).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert!(
        resp.headers.get("x-hop").is_none(),
        "header named by the origin's Connection is stripped"
    );
    assert_eq!(resp.headers["via"], "1.1 outpost-test");

    let seen = a.last_headers.lock().unwrap().clone().unwrap();
    assert_eq!(seen["host"], "a.test", "Host is passed through unchanged");
    assert!(
        seen.get("x-private").is_none(),
        "client's Connection-named header is stripped"
    );
    assert_eq!(seen["x-forwarded-for"], "198.51.100.9, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "a.test");
    assert_eq!(seen["forwarded"], "for=127.0.0.1;proto=http;host=a.test");
    assert_eq!(seen["via"], "1.1 outpost-test");
    let tp = seen["traceparent"].to_str().unwrap();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "trace id propagated: {tp}"
    );
    assert!(!tp.contains("00f067aa0ba902b7"));

    // The same without an earlier hop's X-Forwarded-For (the fields are then written straight
    // into the request head): the client's copies are replaced, not repeated.
    let req = http::Request::builder()
        .uri(format!("http://{addr}/path?q=2"))
        .header("host", "a.test")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "spoofed.example")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        collect(client.request(req).await.unwrap()).await.status,
        StatusCode::OK
    );
    let seen = a.last_headers.lock().unwrap().clone().unwrap();
    for (name, value) in [
        ("host", "a.test"),
        ("x-forwarded-for", "127.0.0.1"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", "a.test"),
        ("forwarded", "for=127.0.0.1;proto=http;host=a.test"),
        ("via", "1.1 outpost-test"),
    ] {
        let values: Vec<_> = seen.get_all(name).iter().collect();
        assert_eq!(values, [value], "{name}");
    }
    let tp: Vec<_> = seen.get_all("traceparent").iter().collect();
    assert_eq!(tp.len(), 1);
    assert!(tp[0]
        .to_str()
        .unwrap()
        .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    assert!(!tp[0].to_str().unwrap().contains("00f067aa0ba902b7"));

    // Without a traceparent one is created.
    get(addr, "a.test", "/").await;
    let seen = a.last_headers.lock().unwrap().clone().unwrap();
    assert_eq!(seen["traceparent"].len(), 55);
}

/// `forwarded_headers` per site: each family is sent only where the site asks for it, and a
/// family it leaves out never reaches the origin, even when the client sent it.
#[tokio::test]
async fn forwarding_fields_follow_the_sites_choice() {
    let origin = Origin::start("origin").await;
    let dir = TempDir::new("forwarded-choice");
    let config = format!(
        r#"{POP}[[site]]
name = "none"
hosts = ["none.test"]
pool = "o"
forwarded_headers = "none"
[[site]]
name = "legacy"
hosts = ["legacy.test"]
pool = "o"
forwarded_headers = "x-forwarded"
[[site]]
name = "rfc"
hosts = ["rfc.test"]
pool = "o"
forwarded_headers = "forwarded"
[[pool]]
name = "o"
[[pool.origin]]
url = "{}"
"#,
        origin.url()
    );
    let edge = start_edge(&dir, &config).await;
    let addr = edge.listener_addr("http").unwrap();
    let client = http1_client();
    let seen_for = |host: &'static str| {
        let client = client.clone();
        let origin = &origin;
        async move {
            let req = http::Request::builder()
                .uri(format!("http://{addr}/"))
                .header("host", host)
                .header("x-forwarded-for", "203.0.113.66")
                .header("x-forwarded-proto", "https")
                .header("x-forwarded-host", "spoofed.example")
                .header("forwarded", "for=203.0.113.66")
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap();
            assert_eq!(
                collect(client.request(req).await.unwrap()).await.status,
                StatusCode::OK
            );
            origin.last_headers.lock().unwrap().clone().unwrap()
        }
    };

    let seen = seen_for("none.test").await;
    for name in [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
    ] {
        assert!(seen.get(name).is_none(), "none: {name} reached the origin");
    }
    assert_eq!(
        seen["via"], "1.1 outpost-test",
        "Via is not a forwarding field of the choice"
    );

    let seen = seen_for("legacy.test").await;
    assert_eq!(seen["x-forwarded-for"], "203.0.113.66, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "legacy.test");
    assert!(
        seen.get("forwarded").is_none(),
        "x-forwarded: Forwarded reached the origin"
    );

    let seen = seen_for("rfc.test").await;
    let forwarded: Vec<_> = seen.get_all("forwarded").iter().collect();
    assert_eq!(
        forwarded,
        ["for=203.0.113.66", "for=127.0.0.1;proto=http;host=rfc.test"]
    );
    for name in ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"] {
        assert!(seen.get(name).is_none(), "forwarded: {name} reached the origin");
    }
}

#[tokio::test]
async fn http2_downstream_and_upstream() {
    let (a, b) = (Origin::start("origin-a").await, Origin::start("origin-b").await);
    let dir = TempDir::new("h2");
    let edge = start_edge(&dir, &two_site_config(&a, &b)).await;
    let addr = edge.listener_addr("http").unwrap();

    // h2c with prior knowledge to the PoP; pool "b" speaks HTTP/2 to its origin.
    let resp = h2c_send(addr, "b.test", Method::GET, "/", Bytes::new()).await;
    assert_eq!(resp.version, http::Version::HTTP_2);
    assert_eq!(resp.body, "origin-b");
    assert_eq!(*b.last_version.lock().unwrap(), Some(http::Version::HTTP_2));
    let seen = b.last_headers.lock().unwrap().clone().unwrap();
    assert_eq!(
        seen["x-test-seen-authority"], "b.test",
        "HTTP/2 origins get the site in :authority"
    );
    assert!(seen.get("host").is_none(), "no Host beside :authority");
    assert_eq!(
        b.last_headers.lock().unwrap().as_ref().unwrap()["via"],
        "2 outpost-test"
    );

    // And HTTP/1.1 to the PoP with an HTTP/1.1 pool.
    let resp = get(addr, "a.test", "/").await;
    assert_eq!(resp.version, http::Version::HTTP_11);
    assert_eq!(*a.last_version.lock().unwrap(), Some(http::Version::HTTP_11));

    // Request bodies stream through both ways.
    let payload = Bytes::from(vec![b'z'; 300_000]);
    let resp = send(
        &http1_client(),
        addr,
        "a.test",
        Method::POST,
        "/echo",
        payload.clone(),
    )
    .await;
    assert_eq!(resp.body.len(), payload.len());
    let resp = h2c_send(addr, "b.test", Method::POST, "/echo", payload.clone()).await;
    assert_eq!(resp.body.len(), payload.len());
}

#[tokio::test]
async fn websocket_upgrade_passes_through() {
    let (a, b) = (Origin::start("origin-a").await, Origin::start("origin-b").await);
    let dir = TempDir::new("ws");
    let edge = start_edge(&dir, &two_site_config(&a, &b)).await;
    let addr = edge.listener_addr("http").unwrap();

    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = websocket_handshake(&mut s, "a.test").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains("upgrade: websocket"), "{head}");
    tunnel_echo(&mut s, b"ping through the tunnel").await;
}

#[tokio::test]
async fn limits_answer_with_their_status() {
    let (a, b) = (Origin::start("origin-a").await, Origin::start("origin-b").await);
    let dir = TempDir::new("limits");
    let config = two_site_config(&a, &b).replace(
        "[log]",
        "[limits]\nmax_uri_bytes = 64\nmax_body_bytes = 1000\nmax_header_bytes = 8192\n[log]",
    );
    let edge = start_edge(&dir, &config).await;
    let addr = edge.listener_addr("http").unwrap();

    let long = format!("/{}", "u".repeat(100));
    assert_eq!(get(addr, "a.test", &long).await.status, StatusCode::URI_TOO_LONG);
    let big = Bytes::from(vec![b'b'; 5000]);
    let resp = send(&http1_client(), addr, "a.test", Method::POST, "/echo", big).await;
    assert_eq!(resp.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.hits(), 0, "refused requests never reach the origin");

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: {}\r\n\r\n",
        "h".repeat(20_000)
    );
    let _ = s.write_all(huge.as_bytes()).await;
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
}

/// A HEAD over a fresh h2c connection: the response head, and its body as the client's HTTP/2
/// stack reads it (an error when the stream is reset).
async fn h2c_head(
    addr: std::net::SocketAddr,
    host: &str,
    path: &str,
) -> (http::response::Parts, Result<Bytes, String>) {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(tcp);
    let (mut sender, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(Method::HEAD)
        .uri(format!("http://{host}{path}"))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
        .await
        .expect("answered")
        .expect("a response head");
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(5), body.collect())
        .await
        .expect("the body ended")
        .map(|c| c.to_bytes())
        .map_err(|e| format!("{e:?}"));
    (parts, body)
}

#[tokio::test]
async fn head_over_http2_gets_no_body_wherever_the_answer_comes_from() {
    // An origin whose answers a cache must not store: a HEAD miss is fetched with GET, and that
    // GET's body then has nowhere to go.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    let resp = http::Response::builder()
                        .header("cache-control", "no-store")
                        .body(http_body_util::Full::new(Bytes::from_static(b"0123456789")))
                        .unwrap();
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    let dir = TempDir::new("h2-head");
    let config = format!(
        r#"{POP}[[site]]
name = "cached"
hosts = ["c.test"]
pool = "o"
[site.cache]
[[pool]]
name = "o"
[[pool.origin]]
url = "http://{origin}"
"#
    );
    let edge = start_edge(&dir, &config).await;
    let addr = edge.listener_addr("http").unwrap();

    // The PoP's own answer.
    let (head, body) = h2c_head(addr, "nobody.test", "/").await;
    assert_eq!(head.status, StatusCode::NOT_FOUND);
    assert_eq!(body.as_deref(), Ok(&b""[..]), "the stream was reset");
    let error_text = get(addr, "nobody.test", "/").await.body;
    assert_eq!(
        head.headers["content-length"],
        error_text.len().to_string(),
        "the GET's length"
    );

    // The origin's answer to the GET a HEAD miss was fetched with.
    let (head, body) = h2c_head(addr, "c.test", "/h").await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(body.as_deref(), Ok(&b""[..]), "the stream was reset");
    assert_eq!(head.headers["content-length"], "10");
    // Counted as answered, with nothing sent.
    let text = metrics(&edge).await;
    let site = [("site", "cached")];
    assert_eq!(
        metric_value(
            &text,
            "outpost_requests_total",
            &[("site", "cached"), ("class", "2xx")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&text, "outpost_response_bytes_total", &site),
        Some(0.0)
    );
}

#[tokio::test]
async fn a_request_body_over_the_limit_is_the_clients_fault_with_an_http2_origin_too() {
    let (a, b) = (Origin::start("origin-a").await, Origin::start("origin-b").await);
    let dir = TempDir::new("h2-body-limit");
    let config = two_site_config(&a, &b).replace("[log]", "[limits]\nmax_body_bytes = 1000\n[log]");
    let edge = start_edge(&dir, &config).await;
    let addr = edge.listener_addr("http").unwrap();
    assert_eq!(get(addr, "b.test", "/").await.status, StatusCode::OK);

    // No declared length: found out while the body goes to the origin, which reads it all
    // before answering (/echo).
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut raw = String::from("POST /echo HTTP/1.1\r\nHost: b.test\r\nTransfer-Encoding: chunked\r\n\r\n");
    for _ in 0..10 {
        raw.push_str(&format!("1f4\r\n{}\r\n", "c".repeat(500)));
    }
    raw.push_str("0\r\n\r\n");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut head))
        .await
        .expect("answered")
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 413 "), "{head}");

    // The origin did nothing wrong: not counted as a failure, and its connection is kept (a
    // reset stream leaves an HTTP/2 connection usable).
    let text = metrics(&edge).await;
    assert_eq!(
        metric_value(
            &text,
            "outpost_upstream_requests_total",
            &[("result", "protocol_error")]
        )
        .unwrap_or(0.0),
        0.0
    );
    assert_eq!(get(addr, "b.test", "/").await.status, StatusCode::OK);
    assert_eq!(b.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}
