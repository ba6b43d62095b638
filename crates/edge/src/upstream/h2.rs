//! HTTP/2 to origins: one multiplexed connection per origin, opened on demand and replaced when
//! it closes.
//!
//! hyper's pooled client derives both the TCP destination and `:authority` from the request
//! URI, but a proxy must connect to the origin's address while naming the *site* in
//! `:authority` (RFC 9113 §8.3.1; origins route virtual hosts on it). Driving
//! `hyper::client::conn::http2` directly separates the two.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::connect::{self, OriginTls};
use super::{OriginBody, SendError};
use crate::proxy::body::{BoxError, ProxyBody};

/// The live HTTP/2 connection to one origin, if any.
#[derive(Default)]
pub struct H2Conn {
    sender: Mutex<Option<SendRequest<Watched>>>,
}

impl H2Conn {
    fn current(&self) -> Option<SendRequest<Watched>> {
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
    let body_error = (!req.body().is_end_stream()).then(Arc::default);
    let req = req.map(|inner| Watched {
        inner,
        error: body_error.clone(),
    });
    match sender.send_request(req).await {
        Ok(resp) => Ok(resp.map(OriginBody::unleased)),
        Err(e) => {
            // The request's own body failed (the client's doing): only its stream was reset,
            // and the connection serves on. The exchange fails with that cause, as it does over
            // HTTP/1.1.
            let cause = body_error.and_then(|slot| slot.lock().ok()?.take());
            if let Some(cause) = cause {
                return Err(SendError::Protocol(Box::new(RequestBodyFailed(cause))));
            }
            conn.reset();
            Err(SendError::Protocol(e.into()))
        }
    }
}

/// The request body failed while it was being sent; the source says how.
#[derive(Debug, thiserror::Error)]
#[error("the request body failed")]
pub struct RequestBodyFailed(#[source] pub BoxError);

/// A request body on its way through hyper's HTTP/2 client, which only logs a body's error
/// and resets the stream: the response then fails with a bare reset that says nothing of the
/// cause. The error is kept here instead, and hyper is handed a stand-in.
struct Watched {
    inner: ProxyBody,
    /// None for a body that has already ended (it cannot fail).
    error: Option<Arc<Mutex<Option<BoxError>>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("the request body failed (the cause goes with the exchange's error)")]
struct BodyFailed;

impl Body for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                if let Some(Ok(mut slot)) = self.error.as_ref().map(|slot| slot.lock()) {
                    *slot = Some(e);
                    return Poll::Ready(Some(Err(Box::new(BodyFailed))));
                }
                Poll::Ready(Some(Err(e)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

async fn connect(
    scheme: &Scheme,
    origin: &Authority,
    tls: &OriginTls,
    timeout: Duration,
) -> Result<SendRequest<Watched>, SendError> {
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
) -> Result<SendRequest<Watched>, SendError>
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
