//! The access log and the request metrics a PoP operator relies on.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Method;

#[tokio::test]
async fn access_log_lines_are_json_with_the_request_facts() {
    let origin = Origin::start("o").await;
    let dir = TempDir::new("accesslog");
    let log_path = dir.path("access.log");
    let config = format!(
        r#"
[pop]
id = "logpop"
[admin]
listen = "127.0.0.1:0"
[log]
access_log = "{}"
[[listener]]
name = "http"
address = "127.0.0.1:0"
[[site]]
name = "shop"
hosts = ["shop.test"]
pool = "p"
[[pool]]
name = "p"
[[pool.origin]]
url = "{}"
"#,
        log_path.display(),
        origin.url()
    );
    let edge = start_edge(&dir, &config).await;
    let addr = edge.listener_addr("http").unwrap();
    let client = http1_client();
    let req = http::Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}/echo?secret=1"))
        .header("host", "shop.test")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .body(http_body_util::Full::new(Bytes::from_static(b"12345")))
        .unwrap();
    let resp = collect(client.request(req).await.unwrap()).await;
    assert_eq!(resp.body, "12345");
    get(addr, "unknown.test", "/nope").await;

    let mut lines = Vec::new();
    assert!(
        eventually(Duration::from_secs(5), || {
            lines = std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect();
            lines.len() >= 2
        })
        .await,
        "two access log lines"
    );
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(first["pop"], "logpop");
    assert_eq!(first["site"], "shop");
    assert_eq!(first["method"], "POST");
    assert_eq!(
        first["path"], "/echo",
        "the query string (may hold secrets) is not logged"
    );
    assert_eq!(first["status"], 200);
    assert_eq!(first["bytes_in"], 5);
    assert_eq!(first["bytes_out"], 5);
    assert_eq!(first["upstream"], origin.url());
    assert_eq!(first["client_ip"], "127.0.0.1");
    assert!(first["duration_ms"].as_f64().unwrap() >= first["upstream_ms"].as_f64().unwrap());
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    let second: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(second["status"], 404);
    assert_eq!(second["error"], "unknown_host");

    let text = metrics(&edge).await;
    assert_eq!(
        metric_value(&text, "outpost_request_bytes_total", &[("site", "shop")]),
        Some(5.0)
    );
    assert_eq!(
        metric_value(&text, "outpost_response_bytes_total", &[("site", "shop")]),
        Some(5.0)
    );
    assert_eq!(
        metric_value(
            &text,
            "outpost_request_duration_seconds_count",
            &[("site", "shop")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &text,
            "outpost_upstream_requests_total",
            &[("origin", &origin.url()), ("result", "2xx")]
        ),
        Some(1.0)
    );
    assert!(text.contains("outpost_config_info{"), "{text}");

    // The gauge follows a client connection: open while it is, back down once it closes (the
    // client above kept its connection alive: closed with it).
    drop(client);
    // The gauge's value once it reaches `want` (or its last value after 2 s).
    let active = |want: f64| {
        let edge = &edge;
        async move {
            let mut seen = None;
            for _ in 0..100 {
                seen = metric_value(
                    &metrics(edge).await,
                    "outpost_active_connections",
                    &[("listener", "http")],
                );
                if seen == Some(want) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        }
    };
    let mut held = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut held, b"GET /x HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    tokio::io::AsyncReadExt::read_exact(&mut held, &mut head)
        .await
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    assert_eq!(active(1.0).await, Some(1.0), "one client connection is open");
    drop(held);
    assert_eq!(
        active(0.0).await,
        Some(0.0),
        "the closed connection is no longer counted"
    );
}
