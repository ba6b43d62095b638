//! HTTP/2 to origins: one multiplexed connection per origin, opened on demand and replaced when
//! it closes.
//!
//! hyper's pooled client derives both the TCP destination and `:authority` from the request
//! URI, but a proxy must connect to the origin's address while naming the *site* in
//! `:authority` (RFC 9113 §8.3.1; origins route virtual hosts on it). Driving
//! `hyper::client::conn::http2` directly separates the two.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use crate::proxy::body::ProxyBody;

/// The live HTTP/2 connection to one origin, if any.
#[derive(Default)]
pub struct H2Conn {
    sender: Mutex<Option<SendRequest<ProxyBody>>>,
}

impl H2Conn {
    fn current(&self) -> Option<SendRequest<ProxyBody>> {
        let guard = self.sender.lock().ok()?;
        guard.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    /// Forgets the connection (config change or failure); the next request opens a new one.
    pub fn reset(&self) {
        if let Ok(mut guard) = self.sender.lock() {
            *guard = None;
        }
    }
}

/// How to reach origins over TLS, shared by a pool's origins.
pub struct H2Tls {
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: Option<ServerName<'static>>,
}

pub enum H2Error {
    Connect(String),
    Protocol(hyper::Error),
}

pub async fn send(
    conn: &H2Conn,
    scheme: &Scheme,
    origin: &Authority,
    tls: Option<&Arc<H2Tls>>,
    connect_timeout: Duration,
    req: Request<ProxyBody>,
) -> Result<Response<Incoming>, H2Error> {
    let mut sender = match conn.current() {
        Some(s) => s,
        None => {
            // Connect without holding the lock: two racing requests may both connect, and the
            // later connection simply replaces the earlier in the slot.
            let s = connect(scheme, origin, tls, connect_timeout).await?;
            if let Ok(mut guard) = conn.sender.lock() {
                *guard = Some(s.clone());
            }
            s
        }
    };
    sender.send_request(req).await.map_err(|e| {
        conn.reset();
        H2Error::Protocol(e)
    })
}

async fn connect(
    scheme: &Scheme,
    origin: &Authority,
    tls: Option<&Arc<H2Tls>>,
    timeout: Duration,
) -> Result<SendRequest<ProxyBody>, H2Error> {
    let https = *scheme == Scheme::HTTPS;
    let port = origin.port_u16().unwrap_or(if https { 443 } else { 80 });
    let host = origin.host().trim_start_matches('[').trim_end_matches(']');
    let tcp = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| H2Error::Connect(format!("connect timed out after {timeout:?}")))?
        .map_err(|e| H2Error::Connect(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    if https {
        let tls = tls.ok_or_else(|| H2Error::Connect("no TLS settings for an https origin".into()))?;
        let name = match &tls.server_name {
            Some(name) => name.clone(),
            None => ServerName::try_from(host.to_owned()).map_err(|e| H2Error::Connect(e.to_string()))?,
        };
        let stream = tokio::time::timeout(timeout, tls.connector.connect(name, tcp))
            .await
            .map_err(|_| H2Error::Connect(format!("TLS handshake timed out after {timeout:?}")))?
            .map_err(|e| H2Error::Connect(format!("TLS handshake failed: {e}")))?;
        if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(H2Error::Connect("origin did not agree to HTTP/2 (ALPN)".into()));
        }
        let (sender, connection) = builder
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| H2Error::Connect(e.to_string()))?;
        tokio::spawn(connection);
        Ok(sender)
    } else {
        let (sender, connection) = builder
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| H2Error::Connect(e.to_string()))?;
        tokio::spawn(connection);
        Ok(sender)
    }
}
