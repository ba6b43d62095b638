//! HTTP/2 to origins: one multiplexed connection per origin, opened on demand and replaced when
//! it closes.
//!
//! hyper's pooled client derives both the TCP destination and `:authority` from the request
//! URI, but a proxy must connect to the origin's address while naming the *site* in
//! `:authority` (RFC 9113 §8.3.1; origins route virtual hosts on it). Driving
//! `hyper::client::conn::http2` directly separates the two.

use std::sync::Mutex;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{Request, Response};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::connect::{self, OriginTls};
use super::{OriginBody, SendError};
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

pub async fn send(
    conn: &H2Conn,
    scheme: &Scheme,
    origin: &Authority,
    tls: &OriginTls,
    connect_timeout: Duration,
    req: Request<ProxyBody>,
) -> Result<Response<OriginBody>, SendError> {
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
    match sender.send_request(req).await {
        Ok(resp) => Ok(resp.map(OriginBody::unleased)),
        Err(e) => {
            conn.reset();
            Err(SendError::Protocol(e.into()))
        }
    }
}

async fn connect(
    scheme: &Scheme,
    origin: &Authority,
    tls: &OriginTls,
    timeout: Duration,
) -> Result<SendRequest<ProxyBody>, SendError> {
    let tcp = connect::tcp(scheme, origin, timeout)
        .await
        .map_err(SendError::Connect)?;
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    if connect::is_tls(scheme) {
        let stream = connect::tls(tls, origin, tcp, timeout)
            .await
            .map_err(SendError::Connect)?;
        if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(SendError::Connect("origin did not agree to HTTP/2 (ALPN)".into()));
        }
        handshake(&builder, stream).await
    } else {
        handshake(&builder, tcp).await
    }
}

async fn handshake<IO>(
    builder: &hyper::client::conn::http2::Builder<TokioExecutor>,
    io: IO,
) -> Result<SendRequest<ProxyBody>, SendError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = builder
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| SendError::Connect(e.to_string()))?;
    tokio::spawn(connection);
    Ok(sender)
}
