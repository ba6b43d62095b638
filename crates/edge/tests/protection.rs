//! Rate limits and connection limits on the real request path.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(origin: &Origin, limits: &str, extra_limits: &str) -> String {
    format!(
        r#"
[pop]
id = "rl"
[admin]
listen = "127.0.0.1:0"
[log]
access_log = "off"
[limits]
{extra_limits}
[[listener]]
name = "http"
address = "127.0.0.1:0"
[[site]]
name = "shop"
hosts = ["*"]
pool = "p"
{limits}
[[pool]]
name = "p"
[[pool.origin]]
url = "{}"
"#,
        origin.url()
    )
}

async fn get_with(addr: std::net::SocketAddr, path: &str, header: Option<(&str, &str)>) -> Answer {
    let client = http1_client();
    let mut req = http::Request::builder()
        .uri(format!("http://{addr}{path}"))
        .header("host", "shop.test");
    if let Some((k, v)) = header {
        req = req.header(k, v);
    }
    collect(
        client
            .request(req.body(http_body_util::Full::new(Bytes::new())).unwrap())
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn over_the_limit_gets_429_with_retry_after_and_ratelimit_headers() {
    let origin = Origin::start("o").await;
    let dir = TempDir::new("ratelimit");
    let limits = "[[site.rate_limit]]\nname = \"per-ip\"\nrate = 3\nper = \"60s\"\n";
    let edge = start_edge(&dir, &config(&origin, limits, "")).await;
    let addr = edge.listener_addr("http").unwrap();

    for _ in 0..3 {
        assert_eq!(get(addr, "shop.test", "/").await.status, StatusCode::OK);
    }
    let limited = get(addr, "shop.test", "/").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = limited.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        (1..=20).contains(&retry),
        "one request every 20 s: retry after {retry}"
    );
    assert_eq!(limited.headers["ratelimit-policy"], "\"per-ip\";q=3;w=60");
    assert_eq!(
        limited.headers["ratelimit"].to_str().unwrap(),
        format!("\"per-ip\";r=0;t={retry}")
    );
    assert_eq!(origin.hits(), 3, "the limited request never reached the origin");

    // The buckets survive a reload that leaves the limit unchanged.
    write_config(
        &dir,
        &config(&origin, limits, "").replace("id = \"rl\"", "id = \"rl\"\nregion = \"test\""),
    );
    edge.reload().await.unwrap();
    assert_eq!(
        get(addr, "shop.test", "/").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );

    let text = metrics(&edge).await;
    assert_eq!(
        metric_value(
            &text,
            "outpost_rate_limited_total",
            &[("limit", "per-ip"), ("action", "blocked")]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric_value(
            &text,
            "outpost_requests_total",
            &[("site", "shop"), ("class", "4xx")]
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn routes_keys_and_log_only_limits() {
    let origin = Origin::start("o").await;
    let dir = TempDir::new("ratelimit-routes");
    let limits = "\
[[site.rate_limit]]
name = \"api-keys\"
key = \"header:x-api-key\"
rate = 2
per = \"60s\"
path_prefix = \"/api/\"
[[site.rate_limit]]
name = \"observe\"
key = \"site\"
rate = 1
per = \"60s\"
action = \"log\"
";
    let edge = start_edge(&dir, &config(&origin, limits, "")).await;
    let addr = edge.listener_addr("http").unwrap();

    let key_a = Some(("x-api-key", "key-a"));
    let key_b = Some(("x-api-key", "key-b"));
    assert_eq!(get_with(addr, "/api/x", key_a).await.status, StatusCode::OK);
    assert_eq!(get_with(addr, "/api/x", key_a).await.status, StatusCode::OK);
    assert_eq!(
        get_with(addr, "/api/x", key_a).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    for evasive in ["//api/x", "/./api/x", "/%61pi/x", "/static/../api/x"] {
        assert_eq!(
            get_with(addr, evasive, key_a).await.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{evasive} is the same route"
        );
    }
    assert_eq!(
        get_with(addr, "/api/x", key_b).await.status,
        StatusCode::OK,
        "each API key has its own budget"
    );
    for _ in 0..5 {
        assert_eq!(
            get_with(addr, "/static/app.js", key_a).await.status,
            StatusCode::OK,
            "outside the route"
        );
    }
    let text = metrics(&edge).await;
    let logged = metric_value(
        &text,
        "outpost_rate_limited_total",
        &[("limit", "observe"), ("action", "logged")],
    );
    assert!(
        logged.unwrap_or(0.0) >= 5.0,
        "log-only limit counts but does not block: {logged:?}"
    );
}

#[tokio::test]
async fn connections_per_ip_are_capped() {
    let origin = Origin::start("o").await;
    let dir = TempDir::new("connlimit");
    let edge = start_edge(&dir, &config(&origin, "", "max_connections_per_ip = 2")).await;
    let addr = edge.listener_addr("http").unwrap();

    let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _second = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = third.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "the third connection is closed without an answer");

    // The first two still work, and a slot frees up when one closes.
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), first.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        send(&http1_client(), addr, "x", Method::GET, "/", Bytes::new())
            .await
            .status,
        StatusCode::OK
    );
    let text = metrics(&edge).await;
    assert_eq!(
        metric_value(
            &text,
            "outpost_connections_refused_total",
            &[("listener", "http")]
        ),
        Some(1.0)
    );
}
