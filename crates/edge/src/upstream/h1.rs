//! HTTP/1.1 to origins: keep-alive connections per origin, driven through
//! `hyper::client::conn::http1`, reused most recently idle first.
//!
//! Why not hyper-util's pooled client: on every request it hashes the destination into a map
//! shared by all origins under one mutex, wraps the connection in pool bookkeeping and spawns a
//! task that waits for the connection to become idle again. Here each origin keeps its own short
//! idle list; a connection goes back on it when the response body ends ([`OriginBody`]), with no
//! task of its own, and a checkout is a pop.
//!
//! A connection the origin closed while it sat idle is noticed by hyper either before the
//! request is written (`try_send_request` hands the request back, and it goes to the next
//! connection or a new one) or not at all, when the close races the write: that exchange fails
//! like any other broken exchange, and the proxy's retry policy decides.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_util::rt::TokioIo;

use super::connect::{self, OriginTls};
use super::SendError;
use crate::proxy::body::ProxyBody;

/// Idle connections kept per origin; more are closed as they come back.
const MAX_IDLE: usize = 1024;
/// Connections still finishing their previous exchange that a checkout steps over before it
/// opens a new one.
const MAX_BUSY_SKIPS: usize = 4;

/// The idle keep-alive connections to one origin.
#[derive(Default)]
pub struct H1Conns {
    /// Oldest first; checkouts take from the back.
    idle: Mutex<VecDeque<Idle>>,
    /// Set while a task is closing connections idle longer than the pool's idle timeout.
    reaping: AtomicBool,
}

struct Idle {
    sender: SendRequest<ProxyBody>,
    since: Instant,
}

impl H1Conns {
    /// Closes every idle connection (the pool's TLS or timeouts changed).
    pub fn clear(&self) {
        let drained: Vec<Idle> = match self.idle.lock() {
            Ok(mut idle) => idle.drain(..).collect(),
            Err(_) => return,
        };
        drop(drained);
    }

    fn checkout(&self, idle_timeout: Duration) -> Option<SendRequest<ProxyBody>> {
        let mut idle = self.idle.lock().ok()?;
        let now = Instant::now();
        let mut skipped = 0;
        while let Some(conn) = idle.pop_back() {
            if now.duration_since(conn.since) >= idle_timeout || conn.sender.is_closed() {
                continue;
            }
            if conn.sender.is_ready() {
                return Some(conn.sender);
            }
            // Its previous response ended a moment ago and hyper has not yet marked the
            // connection idle (or the request body is still going out): leave it for later.
            idle.push_front(conn);
            skipped += 1;
            if skipped >= MAX_BUSY_SKIPS {
                return None;
            }
        }
        None
    }

    fn put_back(self: &Arc<Self>, sender: SendRequest<ProxyBody>, idle_timeout: Duration) {
        if sender.is_closed() || idle_timeout.is_zero() {
            return;
        }
        let surplus = {
            let Ok(mut idle) = self.idle.lock() else { return };
            idle.push_back(Idle {
                sender,
                since: Instant::now(),
            });
            (idle.len() > MAX_IDLE).then(|| idle.pop_front())
        };
        drop(surplus);
        if !self.reaping.swap(true, Ordering::AcqRel) {
            tokio::spawn(reap(Arc::downgrade(self), idle_timeout));
        }
    }
}

/// Closes connections idle for longer than `idle_timeout`, while there are any.
async fn reap(conns: Weak<H1Conns>, idle_timeout: Duration) {
    loop {
        tokio::time::sleep(idle_timeout.max(Duration::from_millis(100))).await;
        let Some(conns) = conns.upgrade() else { return };
        let expired: Vec<Idle> = {
            let Ok(mut idle) = conns.idle.lock() else { return };
            let now = Instant::now();
            let keep = idle
                .iter()
                .position(|c| now.duration_since(c.since) < idle_timeout)
                .unwrap_or(idle.len());
            let expired = idle.drain(..keep).collect();
            if idle.is_empty() {
                conns.reaping.store(false, Ordering::Release);
                drop(idle);
                drop(expired);
                return;
            }
            expired
        };
        drop(expired);
    }
}

/// Everything `send` needs to know about one origin.
pub struct Target<'a> {
    pub conns: &'a Arc<H1Conns>,
    pub scheme: &'a Scheme,
    pub authority: &'a Authority,
    pub tls: &'a OriginTls,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Sends `req` (origin-form URI, Host set) on an idle connection to the origin or a new one.
pub async fn send(
    target: Target<'_>,
    mut req: Request<ProxyBody>,
) -> Result<Response<OriginBody>, SendError> {
    while let Some(mut sender) = target.conns.checkout(target.idle_timeout) {
        match sender.try_send_request(req).await {
            Ok(resp) => return Ok(leased(resp, sender, &target)),
            Err(mut e) => match e.take_message() {
                // Closed before the request was written: nothing reached the origin.
                Some(unsent) => req = unsent,
                None => return Err(SendError::Protocol(e.into_error())),
            },
        }
    }
    // Boxed: connecting (TCP, TLS handshake) is rare and would make every request's future
    // larger.
    let mut sender = Box::pin(open(&target)).await?;
    match sender.try_send_request(req).await {
        Ok(resp) => Ok(leased(resp, sender, &target)),
        Err(e) => Err(SendError::Protocol(e.into_error())),
    }
}

fn leased(
    resp: Response<Incoming>,
    sender: SendRequest<ProxyBody>,
    target: &Target<'_>,
) -> Response<OriginBody> {
    // A 101 hands the connection over to the upgraded protocol: it is never reused.
    let lease = (resp.status() != StatusCode::SWITCHING_PROTOCOLS).then(|| Lease {
        sender,
        conns: target.conns.clone(),
        idle_timeout: target.idle_timeout,
    });
    resp.map(|body| OriginBody::new(body, lease))
}

async fn open(target: &Target<'_>) -> Result<SendRequest<ProxyBody>, SendError> {
    let tcp = connect::tcp(target.scheme, target.authority, target.connect_timeout)
        .await
        .map_err(SendError::Connect)?;
    let mut builder = Builder::new();
    // Requests are mostly a head without a body: one send of one buffer costs less than
    // writev's iovec path (small bodies are copied into the buffer).
    builder.writev(false);
    if connect::is_tls(target.scheme) {
        let stream = connect::tls(target.tls, target.authority, tcp, target.connect_timeout)
            .await
            .map_err(SendError::Connect)?;
        handshake(&builder, stream).await
    } else {
        handshake(&builder, tcp).await
    }
}

async fn handshake<IO>(builder: &Builder, io: IO) -> Result<SendRequest<ProxyBody>, SendError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = builder
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| SendError::Connect(e.to_string()))?;
    tokio::spawn(conn.with_upgrades());
    Ok(sender)
}

/// The right to reuse a connection once its response body has been read to the end.
struct Lease {
    sender: SendRequest<ProxyBody>,
    conns: Arc<H1Conns>,
    idle_timeout: Duration,
}

impl Lease {
    fn release(self) {
        self.conns.put_back(self.sender, self.idle_timeout);
    }
}

/// An origin's response body. Over HTTP/1.1 it carries the connection's lease: the connection
/// goes back to its origin's idle list when the body ends, and is closed (by hyper, with the
/// body) when the body is dropped unfinished.
pub struct OriginBody {
    inner: Incoming,
    lease: Option<Lease>,
}

impl OriginBody {
    fn new(inner: Incoming, lease: Option<Lease>) -> Self {
        let mut body = Self { inner, lease };
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    /// A body that holds no connection (HTTP/2 streams share theirs).
    pub fn unleased(inner: Incoming) -> Self {
        Self { inner, lease: None }
    }

    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }
}

impl Body for OriginBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => self.lease = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
