//! TLS termination: SNI among several certificates (exact, wildcard, default), ALPN h2,
//! misdirected requests, handshake metrics, certificate hot reload.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;

struct TlsFixture {
    _dir: TempDir,
    edge: outpost_edge::Edge,
    ca: TestCa,
    origin: Origin,
    cert_a: std::path::PathBuf,
    key_a: std::path::PathBuf,
}

async fn fixture() -> TlsFixture {
    let origin = Origin::start("origin").await;
    let dir = TempDir::new("tls");
    let ca = TestCa::new();
    let (cert_a, key_a) = ca.issue(&dir.0, "a", &["a.test"]);
    let (cert_w, key_w) = ca.issue(&dir.0, "wild", &["*.w.test"]);
    let config = format!(
        r#"
[pop]
id = "tls"
[admin]
listen = "127.0.0.1:0"
[log]
access_log = "off"
[[listener]]
name = "https"
address = "127.0.0.1:0"
tls = {{ default_certificate = "a" }}
[[certificate]]
name = "a"
cert = "{}"
key = "{}"
[[certificate]]
name = "wild"
cert = "{}"
key = "{}"
[[site]]
name = "all"
hosts = ["a.test", "*.w.test", "other.test"]
pool = "p"
[[pool]]
name = "p"
[[pool.origin]]
url = "{}"
"#,
        cert_a.display(),
        key_a.display(),
        cert_w.display(),
        key_w.display(),
        origin.url()
    );
    let edge = start_edge(&dir, &config).await;
    TlsFixture {
        _dir: dir,
        edge,
        ca,
        origin,
        cert_a,
        key_a,
    }
}

fn leaf_names(der: &[u8]) -> Vec<String> {
    let der = rustls_pki_types::CertificateDer::from(der.to_vec());
    let cert = webpki::EndEntityCert::try_from(&der).unwrap();
    cert.valid_dns_names().map(str::to_owned).collect()
}

#[tokio::test]
async fn sni_selects_exact_wildcard_and_default_certificates() {
    let f = fixture().await;
    let addr = f.edge.listener_addr("https").unwrap();

    let (resp, cert) = tls_get(addr, f.ca.roots(), "a.test", &[b"http/1.1"], "a.test", "/")
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(leaf_names(&cert), ["a.test"]);

    let (resp, cert) = tls_get(addr, f.ca.roots(), "x.w.test", &[b"http/1.1"], "x.w.test", "/")
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(leaf_names(&cert), ["*.w.test"]);

    // An SNI no certificate names gets the listener's default; the client then rejects it.
    let err = tls_get(
        addr,
        f.ca.roots(),
        "other.test",
        &[b"http/1.1"],
        "other.test",
        "/",
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("certificate") || err.contains("NotValidForName"),
        "{err}"
    );
    assert_eq!(f.origin.hits(), 2);

    let text = metrics(&f.edge).await;
    assert_eq!(
        metric_value(&text, "outpost_tls_handshakes_total", &[("result", "success")]),
        Some(2.0)
    );
    assert!(
        metric_value(
            &text,
            "outpost_tls_handshakes_total",
            &[("result", "alert_received")]
        )
        .is_some(),
        "{text}"
    );
}

#[tokio::test]
async fn alpn_h2_and_misdirected_requests() {
    let f = fixture().await;
    let addr = f.edge.listener_addr("https").unwrap();

    let (resp, _) = tls_get(addr, f.ca.roots(), "a.test", &[b"h2", b"http/1.1"], "a.test", "/")
        .await
        .unwrap();
    assert_eq!(resp.version, http::Version::HTTP_2);
    assert_eq!(resp.body, "origin");

    // Same certificate covers both names: allowed. A host under another certificate: 421.
    let (resp, _) = tls_get(addr, f.ca.roots(), "x.w.test", &[b"h2"], "y.w.test", "/")
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    let (resp, _) = tls_get(addr, f.ca.roots(), "a.test", &[b"http/1.1"], "x.w.test", "/")
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::MISDIRECTED_REQUEST);
    assert!(resp.body.contains("x.w.test"), "{}", resp.body);
}

/// HTTP/2 over TLS answers many streams per pass, and the PoP sends a pass's frames in one
/// write (server::write_batch): concurrent small and large responses on one connection must
/// arrive whole and each with its own body.
#[tokio::test]
async fn concurrent_http2_streams_over_tls_each_get_their_whole_body() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let f = fixture().await;
    let addr = f.edge.listener_addr("https").unwrap();
    let tls = tls_connect(addr, f.ca.roots(), "a.test", &[b"h2"]).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);

    let sizes = [10usize, 1024, 16 * 1024, 300_000, 7, 70_000, 1024, 16 * 1024 + 1];
    let requests = (0..4).flat_map(|_| sizes).map(|size| {
        let mut sender = sender.clone();
        async move {
            let req = http::Request::builder()
                .uri(format!("https://a.test/size/{size}"))
                .body(Full::new(bytes::Bytes::new()))
                .unwrap();
            let resp = tokio::time::timeout(Duration::from_secs(20), sender.send_request(req))
                .await
                .expect("response in time")
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (size, body)
        }
    });
    for (size, body) in futures_util::future::join_all(requests).await {
        assert_eq!(body.len(), size);
        assert!(
            body.iter().all(|&b| b == b'x'),
            "size {size}: foreign bytes in the body"
        );
    }
}

/// A WebSocket upgrade over TLS: the client waits for the 101 before it sends a byte, so the
/// 101 must leave the PoP (through rustls) while the tunnel only reads.
#[tokio::test]
async fn websocket_upgrade_over_tls_sends_the_101_before_the_client_speaks() {
    let f = fixture().await;
    let addr = f.edge.listener_addr("https").unwrap();
    let mut s = tls_connect(addr, f.ca.roots(), "a.test", &[b"http/1.1"])
        .await
        .unwrap();
    let head = websocket_handshake(&mut s, "a.test").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tunnel_echo(&mut s, b"ping through the tls tunnel").await;
}

#[tokio::test]
async fn tls_connections_use_modern_protocols_only() {
    let f = fixture().await;
    let addr = f.edge.listener_addr("https").unwrap();
    // rustls cannot even speak TLS 1.1; send a raw TLS 1.0 ClientHello record and expect an alert.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut hello = vec![0x16, 0x03, 0x01, 0x00, 0x2f, 0x01, 0x00, 0x00, 0x2b, 0x03, 0x01];
    hello.extend_from_slice(&[0u8; 32]);
    hello.extend_from_slice(&[0x00, 0x00, 0x02, 0x00, 0x2f, 0x01, 0x00, 0x00, 0x00]);
    s.write_all(&hello).await.unwrap();
    let mut buf = [0u8; 7];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert!(
        n == 0 || buf[0] == 0x15,
        "expected a TLS alert or close, got {:?}",
        &buf[..n]
    );
    // Counted by its reason.
    let mut text = String::new();
    for _ in 0..50 {
        text = metrics(&f.edge).await;
        if metric_value(
            &text,
            "outpost_tls_handshakes_total",
            &[("result", "incompatible")],
        )
        .is_some()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        metric_value(
            &text,
            "outpost_tls_handshakes_total",
            &[("result", "incompatible")]
        ),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn certificate_files_are_hot_reloaded() {
    let f = fixture().await;
    let addr = f.edge.listener_addr("https").unwrap();
    let (_, before) = tls_get(addr, f.ca.roots(), "a.test", &[b"http/1.1"], "a.test", "/")
        .await
        .unwrap();
    // A connection established before the renewal must keep working after it.
    let mut kept = open_tls_h1(addr, f.ca.roots(), "a.test").await;

    // A new certificate for the same name, also valid for "new.a.test".
    let dir = f.cert_a.parent().unwrap().to_path_buf();
    let (cert, key) = f.ca.issue(&dir, "a-renewed", &["a.test", "new.a.test"]);
    // Make sure the mtime moves even on coarse-grained filesystems.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::copy(&key, &f.key_a).unwrap();
    std::fs::copy(&cert, &f.cert_a).unwrap();

    let mut renewed = false;
    for _ in 0..100 {
        let (_, now) = tls_get(addr, f.ca.roots(), "a.test", &[b"http/1.1"], "a.test", "/")
            .await
            .unwrap();
        if now != before {
            assert_eq!(leaf_names(&now), ["a.test", "new.a.test"]);
            renewed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(renewed, "the renewed certificate was never served");
    let req = http::Request::builder()
        .uri("/after-renewal")
        .header("host", "a.test")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = kept
        .send_request(req)
        .await
        .expect("pre-renewal connection still open");
    assert_eq!(resp.status(), StatusCode::OK);
    let text = metrics(&f.edge).await;
    assert!(
        metric_value(
            &text,
            "outpost_tls_certificate_reloads_total",
            &[("result", "success")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );

    // A certificate file that does not load (a half-written copy, a wrong file) is refused and
    // counted; the certificate loaded before it keeps serving.
    let (_, renewed_chain) = tls_get(addr, f.ca.roots(), "a.test", &[b"http/1.1"], "a.test", "/")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // (The renewal above may have counted a failure already: a look between the key's copy
    // and the certificate's.)
    let failures = || async {
        metric_value(
            &metrics(&f.edge).await,
            "outpost_tls_certificate_reloads_total",
            &[("result", "failure")],
        )
        .unwrap_or(0.0)
    };
    let before = failures().await;
    std::fs::write(&f.cert_a, b"-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    let mut refused = false;
    for _ in 0..100 {
        if failures().await == before + 1.0 {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "the broken certificate file was never refused");
    let (_, now) = tls_get(addr, f.ca.roots(), "a.test", &[b"http/1.1"], "a.test", "/")
        .await
        .expect("still serving TLS after a broken certificate file");
    assert_eq!(now, renewed_chain, "the certificate loaded before keeps serving");
}

#[tokio::test]
async fn mtls_to_origins() {
    let dir = TempDir::new("mtls");
    let ca = TestCa::new();
    let origin = start_mtls_origin("secure-origin", &ca, &dir.0).await;
    let ca_pem = ca.write_ca(&dir.0);
    let (client_cert, client_key) = ca.issue(&dir.0, "pop-client", &["pop.test"]);
    let config = |with_client_cert: bool| {
        let client = if with_client_cert {
            format!(
                ", client_cert = \"{}\", client_key = \"{}\"",
                client_cert.display(),
                client_key.display()
            )
        } else {
            String::new()
        };
        format!(
            r#"
[pop]
id = "mtls"
[admin]
listen = "127.0.0.1:0"
[log]
access_log = "off"
[[listener]]
name = "http"
address = "127.0.0.1:0"
[[site]]
name = "s"
hosts = ["*"]
pool = "secure"
[[pool]]
name = "secure"
tls = {{ ca = "{}", server_name = "origin.test"{client} }}
retry = {{ attempts = 0 }}
[[pool.origin]]
url = "https://{origin}"
"#,
            ca_pem.display()
        )
    };
    let edge = start_edge(&dir, &config(true)).await;
    let addr = edge.listener_addr("http").unwrap();
    let resp = get(addr, "x", "/").await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    assert_eq!(resp.body, "secure-origin");

    // Without the client certificate the origin refuses the handshake: 502 with the reason.
    write_config(&dir, &config(false));
    edge.reload().await.unwrap();
    let resp = get(addr, "x", "/").await;
    assert_eq!(resp.status, StatusCode::BAD_GATEWAY, "{}", resp.body);
}
