mod common;

// HTTP/2 header blocks as the PoP writes them (vendor/h2 carries Outpost's HPACK encoder:
// static-table names, literal values, no dynamic table). Every field must reach the other
// side as it was, in both directions: responses to clients and requests to HTTP/2 origins,
// with the awkward cases (values past one length byte, repeated fields, names outside the
// static table, non-ASCII bytes, statuses and methods with no static entry).

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(10);

/// A value longer than 127 bytes: its length takes more than the 7-bit prefix.
fn long_value() -> String {
    "v".repeat(300) + "-end"
}

fn huge_value() -> String {
    "h".repeat(40 * 1024) + "-end"
}

/// An origin (HTTP/1.1 and h2c) that answers with awkward header fields and echoes back what
/// it received: the request's method, path, and its `x-echo-*` fields.
async fn awkward_origin() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    let mut resp = Response::builder()
                        .status(if req.uri().path() == "/teapot" { 418 } else { 200 })
                        .header("x-seen-method", req.method().as_str())
                        .header("x-seen-path", req.uri().path_and_query().unwrap().as_str())
                        .header("x-long", long_value())
                        .header("set-cookie", "a=1; Path=/")
                        .header("set-cookie", "b=2; Path=/")
                        .header("x-multi", "first")
                        .header("x-multi", "second")
                        .header("x-latin1", HeaderValue::from_bytes(b"caf\xe9").unwrap())
                        .header("content-type", "text/plain")
                        .header("cache-control", "no-store")
                        .body(Full::new(Bytes::from_static(b"ok")))
                        .unwrap();
                    if req.uri().path() == "/huge" {
                        // Past one 16 KiB frame: the block goes out as HEADERS and CONTINUATIONs.
                        resp.headers_mut()
                            .insert("x-huge", HeaderValue::from_str(&huge_value()).unwrap());
                    }
                    for (name, value) in req.headers() {
                        if let Some(rest) = name.as_str().strip_prefix("x-echo-") {
                            let echoed =
                                http::HeaderName::from_bytes(format!("x-seen-{rest}").as_bytes()).unwrap();
                            resp.headers_mut().append(echoed, value.clone());
                        }
                    }
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// The awkward fields the origin always sends, as a client must see them.
fn assert_awkward_fields(headers: &HeaderMap) {
    assert_eq!(headers.get("x-long").unwrap(), long_value().as_str());
    let cookies: Vec<_> = headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1; Path=/", "b=2; Path=/"]);
    let multi: Vec<_> = headers.get_all("x-multi").iter().collect();
    assert_eq!(multi, ["first", "second"]);
    assert_eq!(headers.get("x-latin1").unwrap().as_bytes(), b"caf\xe9");
    assert_eq!(headers.get("content-type").unwrap(), "text/plain");
}

async fn h2c_connection(addr: std::net::SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    // A header list limit above the 40 KiB field of /huge (hyper's default is 16 KiB).
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .max_header_list_size(1 << 20)
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn request(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    fields: &[(&str, &str)],
) -> Answer {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://h2.test{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    for (name, value) in fields {
        req.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let resp = tokio::time::timeout(LIMIT, sender.send_request(req))
        .await
        .expect("answer within the limit")
        .expect("request failed");
    collect(resp).await
}

#[tokio::test]
async fn http2_clients_get_every_response_field_intact() {
    let origin = awkward_origin().await;
    let dir = TempDir::new("hpack-client");
    let edge = start_edge(&dir, &pop_config("", "", &[(format!("http://{origin}"), false)])).await;
    let mut sender = h2c_connection(edge.listener_addr("http").unwrap()).await;
    // Several responses on one connection: a decoder that kept dynamic-table state from an
    // earlier block would misread the later ones.
    for round in 0..3 {
        let ok = request(&mut sender, "GET", &format!("/r{round}?q=1"), &[]).await;
        assert_eq!(ok.status, StatusCode::OK, "round {round}");
        assert_eq!(ok.version, http::Version::HTTP_2);
        assert_eq!(ok.body, "ok");
        assert_awkward_fields(&ok.headers);
        assert_eq!(
            ok.headers.get("x-seen-path").unwrap(),
            format!("/r{round}?q=1").as_str()
        );
        // A block larger than a frame, split over CONTINUATION frames.
        let huge = request(&mut sender, "GET", "/huge", &[]).await;
        assert_eq!(huge.headers.get("x-huge").unwrap(), huge_value().as_str());
        assert_awkward_fields(&huge.headers);
        // A status with no static-table entry travels as a literal.
        let teapot = request(&mut sender, "GET", "/teapot", &[]).await;
        assert_eq!(teapot.status.as_u16(), 418, "round {round}");
        assert_awkward_fields(&teapot.headers);
    }
}

#[tokio::test]
async fn http2_origins_get_every_request_field_intact() {
    let origin = awkward_origin().await;
    let dir = TempDir::new("hpack-origin");
    let toml = pop_config("", "protocol = \"http2\"", &[(format!("http://{origin}"), false)]);
    let edge = start_edge(&dir, &toml).await;
    let addr = edge.listener_addr("http").unwrap();
    let long = long_value();
    let client = http1_client();
    for (method, path) in [("GET", "/"), ("PUT", "/put/there?x=%20y"), ("PROPFIND", "/dav")] {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header("host", "h2.test")
            .header("x-echo-long", long.as_str())
            .header("x-echo-twice", "one")
            .header("x-echo-twice", "two")
            .header("accept-encoding", "gzip, deflate")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = tokio::time::timeout(LIMIT, client.request(req))
            .await
            .expect("answer within the limit")
            .expect("request failed");
        let answer = collect(resp).await;
        assert_eq!(answer.status, StatusCode::OK, "{method} {path}");
        assert_eq!(answer.headers.get("x-seen-method").unwrap(), method);
        assert_eq!(answer.headers.get("x-seen-path").unwrap(), path);
        assert_eq!(answer.headers.get("x-seen-long").unwrap(), long.as_str());
        let twice: Vec<_> = answer.headers.get_all("x-seen-twice").iter().collect();
        assert_eq!(twice, ["one", "two"], "{method} {path}");
        assert_awkward_fields(&answer.headers);
    }
}

const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

#[tokio::test]
async fn http2_response_blocks_do_not_depend_on_earlier_ones() {
    // The encoder never adds to the dynamic table, so the same response encodes to the same
    // block on every stream (an encoder that indexes sends the second one far shorter, and
    // spends a hash and a table insert per field to do it: the cost this patch removes).
    let origin = awkward_origin().await;
    let dir = TempDir::new("hpack-blocks");
    let edge = start_edge(&dir, &pop_config("", "", &[(format!("http://{origin}"), false)])).await;
    let mut s = TcpStream::connect(edge.listener_addr("http").unwrap())
        .await
        .unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2_frame(&mut out, SETTINGS, 0, 0, &[]);
    // GET /teapot: :method GET, :scheme http, :path literal, :authority literal (static table
    // names only, so the request blocks need no table either).
    let block = [&[0x82, 0x86, 0x04, 7][..], b"/teapot", &[0x01, 1, b'x']].concat();
    h2_frame(&mut out, HEADERS, END_STREAM | END_HEADERS, 1, &block);
    s.write_all(&out).await.unwrap();
    let first = read_headers_block(&mut s, 1).await;
    let mut out = Vec::new();
    h2_frame(&mut out, HEADERS, END_STREAM | END_HEADERS, 3, &block);
    s.write_all(&out).await.unwrap();
    let second = read_headers_block(&mut s, 3).await;
    assert!(first.len() > long_value().len(), "{} bytes", first.len());
    assert_eq!(
        first.len(),
        second.len(),
        "the second block is encoded as fully as the first"
    );
    // :status 418 has no static entry: a literal with the static name :status (index 8).
    assert_eq!(&first[..5], &[0x08, 3, b'4', b'1', b'8']);
}

#[tokio::test]
async fn a_smaller_header_table_is_acknowledged_at_the_start_of_the_next_block() {
    // RFC 7541 §4.2: after the client's SETTINGS_HEADER_TABLE_SIZE lowers the table, the
    // encoder's next header block starts with a dynamic table size update, even though this
    // encoder never puts anything in the table.
    let origin = awkward_origin().await;
    let dir = TempDir::new("hpack-table-size");
    let edge = start_edge(&dir, &pop_config("", "", &[(format!("http://{origin}"), false)])).await;
    let mut s = TcpStream::connect(edge.listener_addr("http").unwrap())
        .await
        .unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS_HEADER_TABLE_SIZE (0x1) = 0.
    h2_frame(&mut out, SETTINGS, 0, 0, &[0x00, 0x01, 0, 0, 0, 0]);
    let block = [&[0x82, 0x86, 0x04, 7][..], b"/teapot", &[0x01, 1, b'x']].concat();
    h2_frame(&mut out, HEADERS, END_STREAM | END_HEADERS, 1, &block);
    s.write_all(&out).await.unwrap();
    let first = read_headers_block(&mut s, 1).await;
    // 001 + 5-bit size 0, then :status 418 as before.
    assert_eq!(
        &first[..6],
        &[0x20, 0x08, 3, b'4', b'1', b'8'],
        "{:02x?}",
        &first[..8]
    );
    let mut out = Vec::new();
    h2_frame(&mut out, HEADERS, END_STREAM | END_HEADERS, 3, &block);
    s.write_all(&out).await.unwrap();
    let second = read_headers_block(&mut s, 3).await;
    assert_eq!(&second[..5], &[0x08, 3, b'4', b'1', b'8'], "signalled once");
}

/// Reads frames until the HEADERS frame of `stream` (END_HEADERS, no padding or priority: what
/// the PoP sends) and returns its header block.
async fn read_headers_block(s: &mut TcpStream, stream: u32) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let mut head = [0u8; 9];
        tokio::time::timeout_at(deadline, s.read_exact(&mut head))
            .await
            .expect("a HEADERS frame within the limit")
            .expect("connection open");
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        tokio::time::timeout_at(deadline, s.read_exact(&mut payload))
            .await
            .expect("the frame's payload within the limit")
            .expect("connection open");
        let id = u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff;
        if head[3] == HEADERS && id == stream {
            assert_ne!(head[4] & END_HEADERS, 0, "one frame holds the block");
            return payload;
        }
    }
}
