//! Test harness: real origins (small hyper servers), real PoPs (`Edge` on ephemeral loopback
//! ports), real TLS (a CA and leaf certificates made by rcgen), and clients for HTTP/1.1, h2c
//! and TLS with SNI and ALPN.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use outpost_edge::Edge;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How an origin answers.
#[derive(Clone)]
pub struct Behaviour {
    pub status: u16,
    pub delay: Duration,
    pub body: Option<String>,
}

/// A real HTTP origin (HTTP/1.1 and h2c) on 127.0.0.1 that counts and records what it gets.
pub struct Origin {
    pub name: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    /// Connections accepted.
    pub accepted: Arc<AtomicUsize>,
    pub last_headers: Arc<Mutex<Option<HeaderMap>>>,
    pub last_version: Arc<Mutex<Option<http::Version>>>,
    pub behaviour: Arc<Mutex<Behaviour>>,
    stop: CancellationToken,
}

impl Origin {
    pub async fn start(name: &str) -> Self {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(name: &str, addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind origin");
        let addr = listener.local_addr().unwrap();
        let origin = Self {
            name: name.to_owned(),
            addr,
            hits: Arc::default(),
            accepted: Arc::default(),
            last_headers: Arc::default(),
            last_version: Arc::default(),
            behaviour: Arc::new(Mutex::new(Behaviour {
                status: 200,
                delay: Duration::ZERO,
                body: None,
            })),
            stop: CancellationToken::new(),
        };
        let (name, hits, headers, version, behaviour, stop) = (
            origin.name.clone(),
            origin.hits.clone(),
            origin.last_headers.clone(),
            origin.last_version.clone(),
            origin.behaviour.clone(),
            origin.stop.clone(),
        );
        let accepted = origin.accepted.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (name, hits, headers, version, behaviour, stop) = (
                    name.clone(),
                    hits.clone(),
                    headers.clone(),
                    version.clone(),
                    behaviour.clone(),
                    stop.clone(),
                );
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (name, hits, headers, version, behaviour) = (
                            name.clone(),
                            hits.clone(),
                            headers.clone(),
                            version.clone(),
                            behaviour.clone(),
                        );
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                answer(req, &name, &hits, &headers, &version, &behaviour).await,
                            )
                        }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
        origin
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn set_status(&self, status: u16) {
        self.behaviour.lock().unwrap().status = status;
    }

    pub fn set_delay(&self, delay: Duration) {
        self.behaviour.lock().unwrap().delay = delay;
    }

    /// Kills the origin: the listener closes and every open connection is dropped.
    pub fn kill(&self) {
        self.stop.cancel();
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn answer(
    mut req: Request<Incoming>,
    name: &str,
    hits: &AtomicUsize,
    headers: &Mutex<Option<HeaderMap>>,
    version: &Mutex<Option<http::Version>>,
    behaviour: &Mutex<Behaviour>,
) -> Response<Full<Bytes>> {
    let b = behaviour.lock().unwrap().clone();
    if req.uri().path() != "/health" {
        hits.fetch_add(1, Ordering::SeqCst);
        *headers.lock().unwrap() = Some(req.headers().clone());
        *version.lock().unwrap() = Some(req.version());
        if let Some(authority) = req.uri().authority() {
            headers.lock().unwrap().as_mut().unwrap().insert(
                "x-test-seen-authority",
                http::HeaderValue::from_str(authority.as_str()).unwrap(),
            );
        }
    }
    if req.headers().get("upgrade").is_some_and(|v| v == "websocket") {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        return Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    if !b.delay.is_zero() {
        tokio::time::sleep(b.delay).await;
    }
    let status = b.status;
    let body = match req.uri().path() {
        "/echo" => {
            let bytes = req
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return Response::builder()
                .status(200)
                .header("x-origin", name)
                .body(Full::new(bytes))
                .unwrap();
        }
        p if p.starts_with("/size/") => "x".repeat(p[6..].parse().unwrap_or(0)),
        _ => b.body.unwrap_or_else(|| name.to_owned()),
    };
    Response::builder()
        .status(status)
        .header("x-origin", name)
        .header("connection", "x-hop")
        .header("x-hop", "must not reach the client")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// A plain HTTP/1.1 client that reuses connections.
pub fn http1_client(
) -> hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// An h2c (prior knowledge) client.
pub fn h2c_client(
) -> hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
    pub version: http::Version,
}

pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Answer {
    send(&http1_client(), addr, host, http::Method::GET, path, Bytes::new()).await
}

pub async fn send(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    addr: SocketAddr,
    host: &str,
    method: http::Method,
    path: &str,
    body: Bytes,
) -> Answer {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", host)
        .body(Full::new(body))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    collect(resp).await
}

pub async fn collect(resp: Response<Incoming>) -> Answer {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        version: parts.version,
    }
}

/// One request over a fresh h2c (prior knowledge) connection; the host goes in :authority,
/// as HTTP/2 clients send it.
pub async fn h2c_send(addr: SocketAddr, host: &str, method: http::Method, path: &str, body: Bytes) -> Answer {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{host}{path}"))
        .body(Full::new(body))
        .unwrap();
    collect(sender.send_request(req).await.unwrap()).await
}

/// An origin written byte by byte: listens on an ephemeral loopback port and hands each
/// connection it accepts to `serve`, in a task of its own. Returns its address.
pub async fn raw_origin<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(s));
        }
    });
    addr
}

/// Appends one HTTP/2 frame (RFC 9113 §4.1) to `out`, for tests that speak h2 byte by byte.
pub fn h2_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
}

/// A scratch directory that disappears with the test.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "outpost-test-{tag}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test CA that signs leaf certificates for given DNS names.
pub struct TestCa {
    pub cert: rcgen::Certificate,
    pub key: rcgen::KeyPair,
}

impl TestCa {
    pub fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Outpost Test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self { cert, key }
    }

    /// Writes `NAME.pem` and `NAME.key` for a leaf valid for `names` into `dir`.
    pub fn issue(&self, dir: &Path, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let cert_path = dir.join(format!("{file}.pem"));
        let key_path = dir.join(format!("{file}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    /// Writes the CA certificate as PEM into `dir/ca.pem`.
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, self.cert.pem()).unwrap();
        path
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        roots
    }
}

/// An HTTP/1.1 connection over TLS that the test keeps open across requests.
pub async fn open_tls_h1(
    addr: SocketAddr,
    roots: rustls::RootCertStore,
    sni: &str,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// A TLS connection to the PoP as a client that trusts `roots`, offering `alpn`.
pub async fn tls_connect(
    addr: SocketAddr,
    roots: rustls::RootCertStore,
    sni: &str,
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
    connector.connect(name, tcp).await.map_err(|e| e.to_string())
}

/// Sends a WebSocket upgrade for `host` and reads the response head (within 5 s, without
/// sending anything more), returned as text.
pub async fn websocket_handshake<S>(s: &mut S, host: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let request = format!(
        "GET /chat HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(request.as_bytes()).await.unwrap();
    s.flush().await.unwrap();
    let head = tokio::time::timeout(Duration::from_secs(5), read_head(s))
        .await
        .expect("the response head arrives without the client sending more")
        .expect("the connection stays open until the head has come");
    String::from_utf8(head).unwrap()
}

/// Reads a message head (through its blank line) a byte at a time, so nothing after it is
/// consumed; None if the peer closes first.
pub async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.unwrap_or(0) == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(head)
}

/// Writes `message` into an upgraded connection and expects the origin's echo within 5 s.
pub async fn tunnel_echo<S>(s: &mut S, message: &[u8])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(message).await.unwrap();
    s.flush().await.unwrap();
    let mut echoed = vec![0u8; message.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed, message);
}

/// One request over a fresh TLS connection with the given SNI and ALPN offer.
/// Returns the answer and the certificate's DER the server presented.
pub async fn tls_get(
    addr: SocketAddr,
    roots: rustls::RootCertStore,
    sni: &str,
    alpn: &[&[u8]],
    host: &str,
    path: &str,
) -> Result<(Answer, Vec<u8>), String> {
    let tls = tls_connect(addr, roots, sni, alpn).await?;
    let (_, session) = tls.get_ref();
    let presented = session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let h2 = session.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    let resp = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::builder()
            .uri(format!("https://{host}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        sender.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::builder()
            .uri(path)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        sender.send_request(req).await.map_err(|e| e.to_string())?
    };
    Ok((collect(resp).await, presented))
}

/// The config most tests need: admin on an ephemeral loopback port, no access log, one plain
/// listener "http" on an ephemeral port, one site "site" for every host, one pool "p". `top`
/// adds global tables (not [admin] or [log]); `pool` adds keys to the pool; each origin is
/// `(url, backup)`.
pub fn pop_config(top: &str, pool: &str, origins: &[(String, bool)]) -> String {
    let mut s = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess_log = \"off\"\n{top}\n\
         [[listener]]\nname = \"http\"\naddress = \"127.0.0.1:0\"\n\
         [[site]]\nname = \"site\"\nhosts = [\"*\"]\npool = \"p\"\n\
         [[pool]]\nname = \"p\"\n{pool}\n"
    );
    for (url, backup) in origins {
        s.push_str(&format!("[[pool.origin]]\nurl = \"{url}\"\nbackup = {backup}\n"));
    }
    s
}

/// Starts a PoP from TOML text (written to `dir/edge.toml` so reloads can re-read it).
pub async fn start_edge(dir: &TempDir, toml: &str) -> Edge {
    let path = dir.path("edge.toml");
    std::fs::write(&path, toml).unwrap();
    let loaded = outpost_config::load_file(&path).unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
    Edge::start(loaded, Some(path))
        .await
        .unwrap_or_else(|e| panic!("edge failed to start: {e}"))
}

/// Rewrites the config file of a PoP started with `start_edge`.
pub fn write_config(dir: &TempDir, toml: &str) {
    std::fs::write(dir.path("edge.toml"), toml).unwrap();
}

/// Polls `check` every 20 ms until it holds or `within` passes.
pub async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// Repeats a GET every 20 ms until an answer satisfies `check` or `within` passes.
pub async fn eventually_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    within: Duration,
    check: impl Fn(&Answer) -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check(&get(addr, host, path).await) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads until the PoP closes the connection; None when it is still open after 5 s. A reset
/// counts as closed (the PoP may close with unread request bytes in its buffer).
pub async fn read_to_close(s: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&out).into_owned()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Fetches the PoP's Prometheus text from its admin listener.
pub async fn metrics(edge: &Edge) -> String {
    let addr = edge.admin_addr().expect("admin listener");
    get(addr, "admin", "/metrics").await.body
}

pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let matches = series.split('{').next() == Some(name)
                && labels
                    .iter()
                    .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")));
            matches.then(|| value.parse().ok()).flatten()
        })
}

pub fn count_by<T: Eq + std::hash::Hash>(items: impl IntoIterator<Item = T>) -> HashMap<T, usize> {
    let mut m = HashMap::new();
    for i in items {
        *m.entry(i).or_insert(0) += 1;
    }
    m
}

/// An HTTPS origin that requires a client certificate signed by `client_ca` (mTLS) and answers
/// every request with its name. Returns its address; it runs until the test ends.
pub async fn start_mtls_origin(name: &'static str, ca: &TestCa, dir: &Path) -> SocketAddr {
    let (cert, key) = ca.issue(dir, "origin-server", &["origin.test"]);
    let chain: Vec<rustls_pki_types::CertificateDer<'static>> = {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::pem_file_iter(&cert)
            .unwrap()
            .map(|c| c.unwrap())
            .collect()
    };
    let key = {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::PrivateKeyDer::from_pem_file(&key).unwrap()
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()), provider.clone())
            .build()
            .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |_req: Request<Incoming>| async move {
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(name))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

/// Captures what the PoP logs at INFO and above, as text lines, while the guard from `capture`
/// lives. The subscriber is this thread's: events from tasks polled on other threads (other
/// tests, blocking pools) are not in it.
#[derive(Clone, Default)]
pub struct LogLines(Arc<std::sync::Mutex<Vec<u8>>>);

impl LogLines {
    pub fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let sink = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    pub fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl std::io::Write for LogLines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
