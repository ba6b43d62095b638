//! HTTP/1.1 to origins: keep-alive connections per origin, driven through
//! `hyper::client::conn::http1`, reused most recently idle first.
//!
//! Why not hyper-util's pooled client: on every request it hashes the destination into a map
//! shared by all origins under one mutex, wraps the connection in pool bookkeeping and spawns a
//! task that waits for the connection to become idle again. Here each origin keeps its own short
//! idle list; a connection goes back on it when the response body ends ([`OriginBody`]), with no
//! task of its own, and a checkout is a pop.
//!
//! Requests without a body that ask for no upgrade (nearly all) are written and answered inside
//! the request's own task (`h1_inline.rs`) on connections of their own; requests with a body and
//! upgrades go through hyper's client connection, which writes the body while it reads the
//! response. Each kind keeps its own idle list per origin.
//!
//! A connection the origin closed while it sat idle is noticed at checkout (hyper's connection
//! task sees the close; an inline connection is polled once without waiting) or, when the close
//! races the write, by the exchange failing: an idempotent inline request then goes again on a
//! fresh connection, anything else fails like any other broken exchange and the proxy's retry
//! policy decides.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::Either;
use http::uri::{Authority, Scheme};
use http::{header, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_util::rt::TokioIo;

use super::connect::{self, OriginTls};
use super::h1_inline::{self, Conn, InlineBody};
use super::SendError;
use crate::proxy::body::{BoxError, ProxyBody};

/// Idle connections kept per origin; more are closed as they come back.
const MAX_IDLE: usize = 1024;
/// Connections still finishing their previous exchange that a checkout steps over before it
/// opens a new one.
const MAX_BUSY_SKIPS: usize = 4;

/// The idle keep-alive connections to one origin.
#[derive(Default)]
pub struct H1Conns {
    /// hyper's connections (requests with bodies, upgrades). Oldest first; checkouts take from
    /// the back.
    idle: Mutex<VecDeque<Idle<SendRequest<ProxyBody>>>>,
    /// Connections for inline exchanges, likewise ordered.
    inline: Mutex<VecDeque<Idle<Box<Conn>>>>,
    /// Set while a task is closing connections idle longer than the pool's idle timeout.
    reaping: AtomicBool,
}

struct Idle<C> {
    conn: C,
    since: Instant,
}

/// Pushes a connection on an idle list, closing the oldest beyond `MAX_IDLE`.
fn push_idle<C>(list: &Mutex<VecDeque<Idle<C>>>, conn: C) {
    let surplus = {
        let Ok(mut idle) = list.lock() else { return };
        idle.push_back(Idle {
            conn,
            since: Instant::now(),
        });
        (idle.len() > MAX_IDLE).then(|| idle.pop_front())
    };
    drop(surplus);
}

/// Takes the connections idle for `idle_timeout` or longer off the front of a list.
fn expired<C>(list: &mut VecDeque<Idle<C>>, idle_timeout: Duration) -> Vec<Idle<C>> {
    let now = Instant::now();
    let keep = list
        .iter()
        .position(|c| now.duration_since(c.since) < idle_timeout)
        .unwrap_or(list.len());
    list.drain(..keep).collect()
}

impl H1Conns {
    /// Closes every idle connection (the pool's TLS or timeouts changed).
    pub fn clear(&self) {
        let hyper: Vec<_> = match self.idle.lock() {
            Ok(mut idle) => idle.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        let inline: Vec<_> = match self.inline.lock() {
            Ok(mut idle) => idle.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        drop((hyper, inline));
    }

    fn checkout_inline(&self, idle_timeout: Duration) -> Option<Box<Conn>> {
        let mut idle = self.inline.lock().ok()?;
        let now = Instant::now();
        while let Some(mut entry) = idle.pop_back() {
            if now.duration_since(entry.since) < idle_timeout && entry.conn.is_usable() {
                return Some(entry.conn);
            }
        }
        None
    }

    fn put_back_inline(self: &Arc<Self>, conn: Box<Conn>, idle_timeout: Duration) {
        if idle_timeout.is_zero() {
            return;
        }
        push_idle(&self.inline, conn);
        self.start_reaper(idle_timeout);
    }

    fn start_reaper(self: &Arc<Self>, idle_timeout: Duration) {
        if !self.reaping.swap(true, Ordering::AcqRel) {
            tokio::spawn(reap(Arc::downgrade(self), idle_timeout));
        }
    }

    fn checkout(&self, idle_timeout: Duration) -> Option<SendRequest<ProxyBody>> {
        let mut idle = self.idle.lock().ok()?;
        let now = Instant::now();
        let mut skipped = 0;
        while let Some(entry) = idle.pop_back() {
            if now.duration_since(entry.since) >= idle_timeout || entry.conn.is_closed() {
                continue;
            }
            if entry.conn.is_ready() {
                return Some(entry.conn);
            }
            // Its previous response ended a moment ago and hyper has not yet marked the
            // connection idle (or the request body is still going out): leave it for later.
            idle.push_front(entry);
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
        push_idle(&self.idle, sender);
        self.start_reaper(idle_timeout);
    }
}

/// Closes connections idle for longer than `idle_timeout`, while there are any.
async fn reap(conns: Weak<H1Conns>, idle_timeout: Duration) {
    loop {
        tokio::time::sleep(idle_timeout.max(Duration::from_millis(100))).await;
        let Some(conns) = conns.upgrade() else { return };
        let (Ok(mut idle), Ok(mut inline)) = (conns.idle.lock(), conns.inline.lock()) else {
            return;
        };
        let closed = (
            expired(&mut idle, idle_timeout),
            expired(&mut inline, idle_timeout),
        );
        let done = idle.is_empty() && inline.is_empty();
        if done {
            conns.reaping.store(false, Ordering::Release);
        }
        drop((idle, inline));
        drop(closed);
        if done {
            return;
        }
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
    /// When the response head must have come (connecting included).
    pub deadline: tokio::time::Instant,
}

/// Whether a request with this body and these fields goes inline (`h1_inline.rs`) rather than
/// through hyper's client connection: no body and no upgrade.
pub fn is_inline(body: &ProxyBody, headers: &http::HeaderMap) -> bool {
    use http_body::Body as _;
    body.is_end_stream() && !headers.contains_key(header::UPGRADE)
}

/// Sends `req` (origin-form URI, Host set) on an idle connection to the origin or a new one.
/// An inline request's fields are left in `fields_back` once they are written into the request
/// head, for a retry to reuse; `added` fields go into that head with them (an inline request
/// only: the caller inserts them into the map of any other).
///
/// Not an `async fn`: one would hold the hyper path's future (about 2 KB) inline in every
/// request's future, and keep the request twice (argument and local); this returns the inline
/// path's future as is and the hyper path's (requests with a body, upgrades) boxed.
pub fn send<'a>(
    target: Target<'a>,
    req: Request<ProxyBody>,
    added: Option<&'a dyn super::AddedFields>,
    fields_back: &'a mut Option<http::HeaderMap>,
) -> impl Future<Output = Result<Response<OriginBody>, SendError>> + 'a {
    if is_inline(req.body(), req.headers()) {
        Either::Left(send_inline(target, req, added, fields_back))
    } else {
        Either::Right(Box::pin(super::by_deadline(
            target.deadline,
            send_hyper(target, req),
        )))
    }
}

async fn send_inline(
    target: Target<'_>,
    req: Request<ProxyBody>,
    added: Option<&dyn super::AddedFields>,
    fields_back: &mut Option<http::HeaderMap>,
) -> Result<Response<OriginBody>, SendError> {
    let target = &target;
    let (parts, _) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let head = h1_inline::encode_head(&parts.method, path, &parts.headers, added);
    *fields_back = Some(parts.headers);
    let idempotent = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    loop {
        let (mut conn, reused) = match target.conns.checkout_inline(target.idle_timeout) {
            Some(conn) => (conn, true),
            // Boxed: connecting is rare and would make every request's future larger.
            None => {
                let io = super::by_deadline(target.deadline, Box::pin(open_inline(target))).await?;
                (Box::new(Conn::new(io)), false)
            }
        };
        match conn.exchange(&head, &parts.method, target.deadline).await {
            Ok(resp) => {
                let conns = target.conns.clone();
                let idle_timeout = target.idle_timeout;
                return Ok(resp.map(|framing| {
                    let on_end = Box::new(move |conn| conns.put_back_inline(conn, idle_timeout));
                    OriginBody::inline(InlineBody::new(conn, framing, on_end), framing.hop_by_hop_removed)
                }));
            }
            // The origin closed a kept-alive connection as the request went out: nothing was
            // answered, so an idempotent request goes again (on the next idle connection or a
            // new one; a new one is not retried).
            Err(e) if reused && idempotent && e.is_stale_connection() => continue,
            Err(h1_inline::InlineError::HeadTimeout) => return Err(SendError::Timeout),
            Err(e) => return Err(SendError::Protocol(e.into())),
        }
    }
}

async fn open_inline(target: &Target<'_>) -> Result<h1_inline::Io, SendError> {
    let tcp = connect::tcp(target.scheme, target.authority, target.connect_timeout)
        .await
        .map_err(SendError::Connect)?;
    if connect::is_tls(target.scheme) {
        let stream = connect::tls(target.tls, target.authority, tcp, target.connect_timeout)
            .await
            .map_err(SendError::Connect)?;
        Ok(h1_inline::Io::Tls(Box::new(stream)))
    } else {
        Ok(h1_inline::Io::Plain(super::send_batch::BatchedStream::new(tcp)))
    }
}

async fn send_hyper(
    target: Target<'_>,
    mut req: Request<ProxyBody>,
) -> Result<Response<OriginBody>, SendError> {
    while let Some(mut sender) = target.conns.checkout(target.idle_timeout) {
        match sender.try_send_request(req).await {
            Ok(resp) => return Ok(leased(resp, sender, &target)),
            Err(mut e) => match e.take_message() {
                // Closed before the request was written: nothing reached the origin.
                Some(unsent) => req = unsent,
                None => return Err(SendError::Protocol(e.into_error().into())),
            },
        }
    }
    // Boxed: connecting (TCP, TLS handshake) is rare and would make every request's future
    // larger.
    let mut sender = Box::pin(open(&target)).await?;
    match sender.try_send_request(req).await {
        Ok(resp) => Ok(leased(resp, sender, &target)),
        Err(e) => Err(SendError::Protocol(e.into_error().into())),
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

/// An origin's response body. Over HTTP/1.1 it carries its connection: the connection goes
/// back to its origin's idle list when the body ends, and is closed with the body when the body
/// is dropped unfinished.
pub struct OriginBody {
    kind: Kind,
    /// The response head it came with holds no connection-specific field (`h1_inline` sorts
    /// them out as it parses).
    hop_by_hop_removed: bool,
    /// The origin's count of requests it is answering, held until the body ends.
    busy: Option<super::pool::Busy>,
}

enum Kind {
    /// Read by hyper's connection task; `lease` is the right to reuse that connection.
    Hyper { inner: Incoming, lease: Option<Lease> },
    /// Read inline from the connection it owns.
    Inline(InlineBody),
    /// Already complete in memory (a small inline response read with its head).
    Buffered(Option<Bytes>),
}

impl OriginBody {
    fn new(inner: Incoming, lease: Option<Lease>) -> Self {
        let mut body = Self {
            kind: Kind::Hyper { inner, lease },
            hop_by_hop_removed: false,
            busy: None,
        };
        if body.is_end_stream() {
            body.release();
        }
        body
    }

    fn inline(mut body: InlineBody, hop_by_hop_removed: bool) -> Self {
        let kind = match body.take_buffered() {
            Some(data) => Kind::Buffered(Some(data)),
            None => Kind::Inline(body),
        };
        Self {
            kind,
            hop_by_hop_removed,
            busy: None,
        }
    }

    /// Keeps the origin counted as busy with this request until the body ends (or is dropped).
    pub fn hold(&mut self, busy: super::pool::Busy) {
        if !self.is_end_stream() {
            self.busy = Some(busy);
        }
    }

    /// Whether the response head this body came with holds no connection-specific field, so
    /// that stripping them can be skipped.
    pub fn hop_by_hop_removed(&self) -> bool {
        self.hop_by_hop_removed
    }

    /// A body that holds no connection (HTTP/2 streams share theirs).
    pub fn unleased(inner: Incoming) -> Self {
        Self {
            kind: Kind::Hyper { inner, lease: None },
            hop_by_hop_removed: false,
            busy: None,
        }
    }

    fn release(&mut self) {
        if let Kind::Hyper { lease, .. } = &mut self.kind {
            if let Some(lease) = lease.take() {
                lease.release();
            }
        }
    }
}

impl Body for OriginBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = match &mut self.kind {
            Kind::Buffered(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Inline(body) => body.poll_frame(cx).map(|f| f.map(|r| r.map_err(BoxError::from))),
            Kind::Hyper { inner, lease } => {
                let polled = Pin::new(&mut *inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => self.release(),
                    Poll::Ready(Some(Ok(_))) if inner.is_end_stream() => self.release(),
                    Poll::Ready(Some(Err(_))) => *lease = None,
                    _ => {}
                }
                polled.map(|f| f.map(|r| r.map_err(BoxError::from)))
            }
        };
        // The origin is done with this request once its body has ended or failed.
        if self.busy.is_some()
            && (matches!(&polled, Poll::Ready(None | Some(Err(_)))) || self.is_end_stream())
        {
            self.busy = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Buffered(data) => data.is_none(),
            Kind::Inline(body) => body.is_end_stream(),
            Kind::Hyper { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Buffered(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Inline(body) => body.size_hint(),
            Kind::Hyper { inner, .. } => inner.size_hint(),
        }
    }
}
