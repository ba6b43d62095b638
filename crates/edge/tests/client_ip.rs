//! The client's address behind load balancers: PROXY protocol listeners and forwarding
//! headers, believed only from trusted proxies.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(
    origin: &Origin,
    trusted: &str,
    listener_extra: &str,
    site_extra: &str,
    client_ip_extra: &str,
) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[log]
access_log = "off"
[client_ip]
trusted_proxies = [{trusted}]
{client_ip_extra}
[[listener]]
name = "http"
address = "127.0.0.1:0"
{listener_extra}
[[site]]
name = "s"
hosts = ["*"]
pool = "p"
{site_extra}
[[pool]]
name = "p"
[[pool.origin]]
url = "{}"
"#,
        origin.url()
    )
}

async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("closed in time");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_set_the_client_address() {
    let origin = Origin::start("o").await;
    let dir = TempDir::new("proxyproto");
    let edge = start_edge(
        &dir,
        &config(&origin, "\"127.0.0.0/8\"", "proxy_protocol = true", "", ""),
    )
    .await;
    let addr = edge.listener_addr("http").unwrap();

    let answer = exchange(
        addr,
        b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 80\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        origin.last_headers.lock().unwrap().as_ref().unwrap()["x-forwarded-for"],
        "203.0.113.9"
    );

    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[
        0x21, 0x11, 0, 12, 198, 51, 100, 23, 127, 0, 0, 1, 0x9c, 0x40, 0, 80,
    ]);
    v2.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let answer = exchange(addr, &v2).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        origin.last_headers.lock().unwrap().as_ref().unwrap()["x-forwarded-for"],
        "198.51.100.23"
    );

    // Without the header the connection is refused, and nothing reaches the origin.
    let before = origin.hits();
    let answer = exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.is_empty(), "{answer}");
    assert_eq!(origin.hits(), before);
    let text = metrics(&edge).await;
    assert_eq!(
        metric_value(
            &text,
            "outpost_connections_refused_total",
            &[("reason", "proxy_protocol")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn proxy_headers_from_untrusted_peers_are_refused() {
    let origin = Origin::start("o").await;
    let dir = TempDir::new("untrusted");
    let edge = start_edge(
        &dir,
        &config(&origin, "\"10.0.0.0/8\"", "proxy_protocol = true", "", ""),
    )
    .await;
    let addr = edge.listener_addr("http").unwrap();
    let answer = exchange(
        addr,
        b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 80\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        answer.is_empty(),
        "a loopback peer is not in 10.0.0.0/8: {answer}"
    );
    assert_eq!(origin.hits(), 0);
    let text = metrics(&edge).await;
    assert_eq!(
        metric_value(
            &text,
            "outpost_connections_refused_total",
            &[("reason", "untrusted_proxy")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn forwarded_for_is_believed_only_past_trusted_hops() {
    let origin = Origin::start("o").await;
    let dir = TempDir::new("xff");
    let limit = "[[site.rate_limit]]\nname = \"per-client\"\nrate = 1\nper = \"60s\"";
    let edge = start_edge(
        &dir,
        &config(
            &origin,
            "\"127.0.0.0/8\"",
            "",
            limit,
            "header = \"x-forwarded-for\"",
        ),
    )
    .await;
    let addr = edge.listener_addr("http").unwrap();
    let status = |xff: &'static str| async move {
        let client = http1_client();
        let req = http::Request::builder()
            .uri(format!("http://{addr}/"))
            .header("host", "x")
            .header("x-forwarded-for", xff)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        client.request(req).await.unwrap().status()
    };
    assert_eq!(status("198.51.100.7").await, StatusCode::OK);
    assert_eq!(
        status("198.51.100.7").await,
        StatusCode::TOO_MANY_REQUESTS,
        "same client, one request a minute"
    );
    assert_eq!(
        status("198.51.100.8").await,
        StatusCode::OK,
        "another client behind the same proxy"
    );
    // A client cannot pick its identity by prepending addresses: the right-most untrusted one counts.
    assert_eq!(
        status("1.2.3.4, 198.51.100.8").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Trusted hops on the right are skipped.
    assert_eq!(status("198.51.100.9, 127.0.0.9").await, StatusCode::OK);
    assert_eq!(status("198.51.100.9").await, StatusCode::TOO_MANY_REQUESTS);
}
