//! Request-body inspection on the real request path: urlencoded, JSON and multipart bodies are
//! buffered up to the site's body limit, inspected by custom rules and the managed rule set, and
//! forwarded to a real origin byte for byte; a blocked body never reaches it.

mod common;

use bytes::Bytes;
use common::*;
use http::StatusCode;
use http_body_util::Full;

async fn post(addr: std::net::SocketAddr, path: &str, content_type: &str, body: &[u8]) -> Answer {
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("host", "x")
        .header("content-type", content_type)
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    let resp = tokio::time::timeout(std::time::Duration::from_secs(10), http1_client().request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    collect(resp).await
}

fn config(origin: &Origin, waf: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[log]
access_log = "off"
[[listener]]
name = "http"
address = "127.0.0.1:0"
[[site]]
name = "api"
hosts = ["*"]
pool = "p"
[site.waf]
mode = "block"
{waf}
[[site.waf_rule]]
id = "no-admin-signups"
[[site.waf_rule.match]]
target = "body_arg:user.role"
operator = "equals"
values = ["admin"]
[[pool]]
name = "p"
[[pool.origin]]
url = "{}"
"#,
        origin.url()
    )
}

#[tokio::test]
async fn bodies_are_inspected_and_forwarded_byte_for_byte() {
    let origin = Origin::start("o").await;
    let dir = TempDir::new("waf-body");
    let edge = start_edge(&dir, &config(&origin, "")).await;
    let addr = edge.listener_addr("http").unwrap();

    // Benign bodies that look risky reach the origin exactly as sent.
    let benign: [(&str, &[u8]); 3] = [
        (
            "application/json",
            br#"{"author":"O'Brien","text":"It's \"great\", isn't it?","code":"if (a < b) { return; }"}"#,
        ),
        (
            "application/x-www-form-urlencoded",
            b"name=Mary+O%27Neil&message=Hi%2C+I%27d+like+a+quote",
        ),
        (
            "multipart/form-data; boundary=XyZ",
            b"--XyZ\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nHoliday & beach\r\n--XyZ\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"IMG_1.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n\xff\xd8\xff\xe0binary\x00\r\n--XyZ--\r\n",
        ),
    ];
    for (content_type, body) in benign {
        let answer = post(addr, "/echo", content_type, body).await;
        assert_eq!(answer.status, StatusCode::OK, "{content_type}: {}", answer.body);
        assert_eq!(
            answer.body.as_bytes(),
            String::from_utf8_lossy(body).as_bytes(),
            "{content_type}"
        );
    }
    assert_eq!(origin.hits(), 3);

    // Attacks in bodies are blocked before the origin.
    let attacks: [(&str, &[u8]); 4] = [
        ("application/x-www-form-urlencoded", b"user=admin'--&pass=x"),
        ("application/json", br#"{"comment":{"text":"<script>alert(1)</script>"}}"#),
        (
            "multipart/form-data; boundary=XyZ",
            b"--XyZ\r\nContent-Disposition: form-data; name=\"doc\"; filename=\"../../../../etc/passwd\"\r\n\r\nx\r\n--XyZ--\r\n",
        ),
        ("application/json", br#"{"user":{"name":"eve","role":"admin"}}"#),
    ];
    for (content_type, body) in attacks {
        let answer = post(addr, "/echo", content_type, body).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{content_type}: {:?}", body);
    }
    assert_eq!(origin.hits(), 3, "a blocked body never reaches the origin");
    let text = metrics(&edge).await;
    assert_eq!(
        metric_value(
            &text,
            "outpost_waf_rule_hits_total",
            &[("rule", "no-admin-signups"), ("action", "block")]
        ),
        Some(1.0)
    );

    // A body larger than the limit (64 KiB by default) is inspected in part and forwarded whole.
    let mut big = Vec::from(&b"{\"items\":["[..]);
    while big.len() < 200 * 1024 {
        big.extend_from_slice(b"{\"sku\":\"A-1\",\"note\":\"it's fine\"},");
    }
    big.extend_from_slice(b"{}]}");
    let answer = post(addr, "/echo", "application/json", &big).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body.len(), big.len());
    assert!(
        answer.body.as_bytes() == big,
        "the origin got the body byte for byte"
    );
    // ...and an attack in its first 64 KiB is still found.
    let mut early = Vec::from(&b"{\"q\":\"1 union select password from users\",\"pad\":\""[..]);
    early.resize(100 * 1024, b'a');
    early.extend_from_slice(b"\"}");
    assert_eq!(
        post(addr, "/echo", "application/json", &early).await.status,
        StatusCode::FORBIDDEN
    );

    // Other content types are not buffered or parsed.
    let answer = post(addr, "/echo", "text/plain", b"user=admin'--").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "user=admin'--");
    assert_eq!(origin.hits(), 5);
}

#[tokio::test]
async fn oversize_bodies_are_refused_when_the_site_says_so() {
    let origin = Origin::start("o").await;
    let dir = TempDir::new("waf-body-oversize");
    let edge = start_edge(
        &dir,
        &config(&origin, "body_limit = \"1KiB\"\nbody_oversize = \"block\""),
    )
    .await;
    let addr = edge.listener_addr("http").unwrap();
    let small = format!("q={}", "a".repeat(500));
    let answer = post(
        addr,
        "/echo",
        "application/x-www-form-urlencoded",
        small.as_bytes(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, small);
    let large = format!("q={}", "a".repeat(2000));
    let answer = post(
        addr,
        "/echo",
        "application/x-www-form-urlencoded",
        large.as_bytes(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Chunked (no Content-Length): found out while reading.
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/echo"))
        .header("host", "x")
        .header("content-type", "application/json")
        .body(http_body_util::StreamBody::new(futures_util::stream::iter(
            (0..4).map(|_| {
                Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(vec![b' '; 600])))
            }),
        )))
        .unwrap();
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let answer = collect(client.request(req).await.unwrap()).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(origin.hits(), 1, "refused bodies never reach the origin");
    // Bodies the WAF does not parse are not held to its limit.
    let answer = post(addr, "/echo", "application/octet-stream", large.as_bytes()).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn a_body_the_waf_read_whole_still_starts_the_origins_clock() {
    let origin = Origin::start("o").await;
    origin.set_delay(std::time::Duration::from_secs(3));
    let dir = TempDir::new("waf-body-header-timeout");
    let config = config(&origin, "").replace(
        "name = \"p\"\n",
        "name = \"p\"\nresponse_header_timeout = \"1s\"\n",
    );
    let edge = start_edge(&dir, &config).await;
    let addr = edge.listener_addr("http").unwrap();
    // The WAF read the whole body before the exchange began: nothing is left to send, so the
    // response-header timeout runs from the start.
    let started = std::time::Instant::now();
    let answer = post(addr, "/echo", "application/json", br#"{"a":1}"#).await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT, "{}", answer.body);
    assert!(
        started.elapsed() < std::time::Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
}
