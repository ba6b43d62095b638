//! Body wrappers on the streaming path: nothing here buffers a body.
//!
//! `ResponseBody` counts bytes to the client, enforces the request deadline while the body
//! streams, and runs the request's completion (metrics, access log) exactly once, when the body
//! ends or the client goes away. `RequestBody` counts and caps the bytes sent to the origin.

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
    Origin(Incoming),
    Local(Option<Bytes>),
    /// A response being filled into the cache, shared with other requests.
    Fill(outpost_cache::FillReader),
}

impl OutBody {
    pub fn empty() -> Self {
        Self::Local(None)
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
        match &self.inner {
            OutBody::Origin(b) => b.is_end_stream(),
            OutBody::Local(b) => b.is_none(),
            OutBody::Fill(b) => b.is_end_stream(),
        }
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
        match &self.inner {
            OutBody::Origin(b) => b.size_hint(),
            OutBody::Local(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            OutBody::Fill(b) => b.size_hint(),
        }
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

/// The client's request body on its way to the origin: counted, and cut at the size limit.
pub struct RequestBody {
    inner: Incoming,
    limit: u64,
    pub bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Set once the client has sent its whole body: until then, a stalled exchange is the
    /// client's doing, not the origin's.
    pub done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: u64,
    /// Longest pause allowed between two pieces of the body.
    pause: std::time::Duration,
    // Armed only while the client is silent, reset by every piece that arrives.
    stall: Option<Pin<Box<Sleep>>>,
}

impl RequestBody {
    pub fn new(inner: Incoming, limit: u64, pause: std::time::Duration) -> Self {
        Self {
            inner,
            limit,
            bytes: Default::default(),
            done: Default::default(),
            seen: 0,
            pause,
            stall: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the client paused its request body for longer than {0:?}")]
pub struct BodyStalled(pub std::time::Duration);

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.stall = None;
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    this.bytes.store(this.seen, std::sync::atomic::Ordering::Relaxed);
                    if this.inner.is_end_stream() {
                        this.done.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    if this.limit > 0 && this.seen > this.limit {
                        return Poll::Ready(Some(Err(Box::new(BodyLimitExceeded(this.limit)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => {
                this.done.store(true, std::sync::atomic::Ordering::Relaxed);
                Poll::Ready(None)
            }
            Poll::Pending => {
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
