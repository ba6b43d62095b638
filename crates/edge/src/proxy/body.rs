//! Body wrappers on the streaming path.
//!
//! `ResponseBody` counts bytes to the client, enforces the request deadline while the body
//! streams, and runs the request's completion (metrics, access log) exactly once, when the body
//! ends or the client goes away. `RequestBody` counts and caps the bytes sent to the origin and
//! refuses clients that pause too long or send too slowly. `Replayed` is the one buffered case:
//! the beginning of a request body that the WAF read (at most its body limit), sent to the
//! origin byte for byte ahead of the rest of the stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = BoxBody<Bytes, BoxError>;

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Called once when a response body is finished, with the bytes sent and whether it completed.
pub trait Completion: Send + Unpin + 'static {
    fn complete(self, bytes: u64, completed: bool);
}

#[derive(Debug, thiserror::Error)]
#[error("request deadline passed while the response body was streaming")]
pub struct DeadlineExceeded;

/// What a response carries: the origin's body, streamed, or a small body the PoP made itself.
/// An enum rather than a boxed body: this is built for every request.
pub enum OutBody {
    Origin(crate::upstream::OriginBody),
    Local(Option<Bytes>),
    /// A response being filled into the cache, shared with other requests.
    Fill(outpost_cache::FillReader),
}

impl OutBody {
    pub fn empty() -> Self {
        Self::Local(None)
    }

    pub fn is_end_stream(&self) -> bool {
        match self {
            Self::Origin(b) => b.is_end_stream(),
            Self::Local(b) => b.is_none(),
            Self::Fill(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Origin(b) => b.size_hint(),
            Self::Local(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Fill(b) => b.size_hint(),
        }
    }

    /// The body of an answer to HEAD: none (RFC 9110 §9.3.2), whoever made the answer. hyper's
    /// HTTP/1 server leaves the body out itself, its HTTP/2 server sends it, and the client then
    /// resets the stream. The fields keep saying how long the GET's body is, when that is known
    /// (an origin's answer to HEAD itself has an empty body: its fields stand as they are).
    pub fn drop_for_head(self, headers: &mut http::HeaderMap) -> Self {
        if !headers.contains_key(http::header::CONTENT_LENGTH) {
            if let Some(len) = self.size_hint().exact().filter(|&len| len > 0) {
                headers.insert(http::header::CONTENT_LENGTH, len.into());
            }
        }
        Self::empty()
    }
}

pub struct ResponseBody<C: Completion> {
    inner: OutBody,
    bytes: u64,
    deadline: Option<Instant>,
    // Created only when the origin's body is pending, so bodies that are already in memory
    // never arm a timer.
    sleep: Option<Pin<Box<Sleep>>>,
    completion: Option<C>,
}

impl<C: Completion> ResponseBody<C> {
    pub fn new(inner: OutBody, deadline: Option<Instant>, completion: C) -> Self {
        Self {
            inner,
            bytes: 0,
            deadline,
            sleep: None,
            completion: Some(completion),
        }
    }

    fn finish(&mut self, completed: bool) {
        if let Some(c) = self.completion.take() {
            c.complete(self.bytes, completed);
        }
    }

    fn inner_is_end(&self) -> bool {
        self.inner.is_end_stream()
    }
}

impl<C: Completion> Body for ResponseBody<C> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            OutBody::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            OutBody::Origin(body) => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BoxError::from(e)))),
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            OutBody::Fill(body) => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BoxError::from(e)))),
                other => other.map(|o| o.map(|r| r.map_err(BoxError::from))),
            },
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                if this.inner_is_end() {
                    this.finish(true);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish(false);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.finish(true);
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let Some(deadline) = this.deadline {
                    let sleep = this
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if sleep.as_mut().poll(cx).is_ready() {
                        this.finish(false);
                        return Poll::Ready(Some(Err(Box::new(DeadlineExceeded))));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner_is_end()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<C: Completion> Drop for ResponseBody<C> {
    fn drop(&mut self) {
        // Hyper drops an empty body without polling it; otherwise the client went away.
        let completed = self.inner_is_end();
        self.finish(completed);
    }
}

use std::future::Future;

#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {0} bytes")]
pub struct BodyLimitExceeded(pub u64);

/// Whether the client has sent its whole request body, and a wake-up for the exchange waiting
/// on that: the origin's time to answer starts only then (it may need the whole body first),
/// and the body is polled by the connection's task, not the one waiting for the response.
///
/// It also tells whose turn it is while the body is on its way: the client's when the writer
/// to the origin asked for the next piece and the client has not sent it yet, the origin's when
/// the writer holds a piece it has not been able to hand on (the origin is not reading).
pub struct BodySent {
    done: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
    /// Since when the origin's side holds up the body: nanoseconds after `base`, plus one; 0
    /// while the writer waits for the client (or is reading the body).
    origin_turn: std::sync::atomic::AtomicU64,
    base: Instant,
}

impl Default for BodySent {
    fn default() -> Self {
        Self {
            done: Default::default(),
            notify: Default::default(),
            origin_turn: Default::default(),
            base: Instant::now(),
        }
    }
}

impl BodySent {
    pub fn is_done(&self) -> bool {
        self.done.load(std::sync::atomic::Ordering::Acquire)
    }

    fn set(&self) {
        if !self.done.swap(true, std::sync::atomic::Ordering::AcqRel) {
            self.notify.notify_waiters();
        }
    }

    /// Returns once the whole body has been sent.
    pub async fn wait(&self) {
        loop {
            // Created before the check: `notify_waiters` wakes it even before its first poll.
            let notified = self.notify.notified();
            if self.is_done() {
                return;
            }
            notified.await;
        }
    }

    /// The origin's side holds up the body from `at` on: the exchange starts (it has to
    /// connect and write the head before it asks for the body), or the writer took a piece
    /// and has not asked for the next one yet.
    pub fn origin_turn_from(&self, at: Instant) {
        let nanos = at.saturating_duration_since(self.base).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1;
        self.origin_turn
            .store(nanos, std::sync::atomic::Ordering::Relaxed);
    }

    /// The writer asked for the next piece: until one comes, the client holds up the body.
    fn client_turn(&self) {
        self.origin_turn.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// Since when the origin's side has been holding up the body; None while it waits for the
    /// client.
    pub fn origin_turn_since(&self) -> Option<Instant> {
        match self.origin_turn.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            n => Some(self.base + std::time::Duration::from_nanos(n - 1)),
        }
    }

    /// Returns once the origin has held up the body for `limit` in one go (never, once the
    /// whole body has been sent). Wakes at most once per `limit` to look.
    pub async fn origin_stalled(&self, limit: std::time::Duration) {
        loop {
            if self.is_done() {
                return std::future::pending().await;
            }
            let now = Instant::now();
            let next = match self.origin_turn_since() {
                Some(since) if now >= since + limit => return,
                Some(since) => since + limit,
                None => now + limit,
            };
            tokio::time::sleep_until(next).await;
        }
    }
}

/// The client's request body on its way to the origin: counted, and cut at the size limit.
pub struct RequestBody {
    inner: Incoming,
    limit: u64,
    pub bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Set once the client has sent its whole body: until then, a stalled exchange is the
    /// client's doing, not the origin's.
    pub done: std::sync::Arc<BodySent>,
    seen: u64,
    /// Longest pause allowed between two pieces of the body.
    pause: std::time::Duration,
    // Armed only while the client is silent, reset by every piece that arrives.
    stall: Option<Pin<Box<Sleep>>>,
    rate: MinRate,
}

/// The minimum body rate: bytes per second over a window of time spent *waiting for the
/// client* (time the origin spends not reading is the origin's, not the client's).
struct MinRate {
    bytes_per_sec: u64,
    window: std::time::Duration,
    /// Waiting time and bytes in the current window.
    waited: std::time::Duration,
    bytes: u64,
    /// When the current wait began.
    waiting_since: Option<Instant>,
    /// Fires when the wait completes the window.
    timer: Option<Pin<Box<Sleep>>>,
}

impl MinRate {
    fn arrived(&mut self, bytes: u64) -> Result<(), BodyTooSlow> {
        self.timer = None;
        if let Some(since) = self.waiting_since.take() {
            self.waited += since.elapsed();
        }
        self.bytes += bytes;
        self.check()
    }

    /// At the end of a window: enough bytes, or the client is too slow.
    fn check(&mut self) -> Result<(), BodyTooSlow> {
        if self.bytes_per_sec == 0 || self.waited < self.window {
            return Ok(());
        }
        let wanted = (self.bytes_per_sec as f64 * self.waited.as_secs_f64()) as u64;
        if self.bytes < wanted {
            return Err(BodyTooSlow {
                rate: self.bytes as f64 / self.waited.as_secs_f64(),
                min: self.bytes_per_sec,
            });
        }
        self.waited = std::time::Duration::ZERO;
        self.bytes = 0;
        Ok(())
    }

    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Result<(), BodyTooSlow> {
        if self.bytes_per_sec == 0 {
            return Ok(());
        }
        let since = *self.waiting_since.get_or_insert_with(Instant::now);
        let left = self.window.saturating_sub(self.waited);
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(since + left)));
        if timer.as_mut().poll(cx).is_ready() {
            self.timer = None;
            self.waiting_since = None;
            self.waited += since.elapsed();
            self.check()?;
            // Enough bytes: a new window, and a timer for it.
            return self.poll_pending(cx);
        }
        Ok(())
    }
}

impl RequestBody {
    /// `min_rate`: bytes per second (0 for none) over a window of waiting time.
    pub fn new(
        inner: Incoming,
        limit: u64,
        pause: std::time::Duration,
        min_rate: (u64, std::time::Duration),
    ) -> Self {
        Self {
            inner,
            limit,
            bytes: Default::default(),
            done: Default::default(),
            seen: 0,
            pause,
            stall: None,
            rate: MinRate {
                bytes_per_sec: min_rate.0,
                window: min_rate.1,
                waited: std::time::Duration::ZERO,
                bytes: 0,
                waiting_since: None,
                timer: None,
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the client paused its request body for longer than {0:?}")]
pub struct BodyStalled(pub std::time::Duration);

#[derive(Debug, thiserror::Error)]
#[error("the client sent its request body at {rate:.0} B/s, below the minimum of {min} B/s")]
pub struct BodyTooSlow {
    pub rate: f64,
    pub min: u64,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        this.done.client_turn();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.stall = None;
                if let Some(data) = frame.data_ref() {
                    if let Err(slow) = this.rate.arrived(data.len() as u64) {
                        return Poll::Ready(Some(Err(Box::new(slow))));
                    }
                    this.seen += data.len() as u64;
                    this.bytes.store(this.seen, std::sync::atomic::Ordering::Relaxed);
                    if this.limit > 0 && this.seen > this.limit {
                        return Poll::Ready(Some(Err(Box::new(BodyLimitExceeded(this.limit)))));
                    }
                }
                // The codecs stop polling a body that says it has ended: this frame is its last.
                if this.inner.is_end_stream() {
                    this.done.set();
                } else {
                    // The writer has a piece to hand on: the origin's turn until it asks again.
                    this.done.origin_turn_from(Instant::now());
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => {
                this.done.set();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let Err(slow) = this.rate.poll_pending(cx) {
                    return Poll::Ready(Some(Err(Box::new(slow))));
                }
                let pause = this.pause;
                let stall = this
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(pause)));
                if stall.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(Box::new(BodyStalled(pause)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body whose beginning the WAF buffered: those bytes (and trailers, if the body
/// ended with them) first, exactly as received, then whatever the client has not sent yet.
pub struct Replayed {
    prefix: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
    rest: RequestBody,
}

impl Replayed {
    pub fn new(prefix: Bytes, trailers: Option<http::HeaderMap>, rest: RequestBody) -> Self {
        Self {
            prefix: (!prefix.is_empty()).then_some(prefix),
            trailers,
            rest,
        }
    }

    pub fn rest(&self) -> &RequestBody {
        &self.rest
    }
}

impl Body for Replayed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        if let Some(trailers) = self.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.trailers.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let buffered = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + buffered);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + buffered);
        }
        hint
    }
}
