//! A response being fetched for the cache, readable by any number of clients while it arrives.
//!
//! The fetch runs on its own task (so a client that goes away does not abort a fill others
//! wait for); each client reads the chunks from the start at its own pace. A fill that fails
//! midway ends every reader with an error, so no client takes a truncated body for a whole one.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame, SizeHint};

#[derive(Debug, thiserror::Error)]
#[error("the origin response being cached ended before it was complete")]
pub struct FillAborted;

#[derive(Debug)]
pub struct Fill {
    pub status: StatusCode,
    /// The response's fields as stored (hop-by-hop removed), before Age and Cache-Status.
    pub headers: HeaderMap,
    /// What selects this response (Vary values, extra key parts), for requests that join.
    pub vary: crate::object::VaryValues,
    pub extra: Option<Box<str>>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    chunks: Vec<Bytes>,
    /// `Some(true)` complete, `Some(false)` aborted.
    end: Option<bool>,
    wakers: Vec<Waker>,
}

impl Fill {
    pub fn new(
        status: StatusCode,
        headers: HeaderMap,
        vary: crate::object::VaryValues,
        extra: Option<Box<str>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            status,
            headers,
            vary,
            extra,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, chunk: Bytes) {
        let wakers = {
            let mut s = self.state();
            s.chunks.push(chunk);
            std::mem::take(&mut s.wakers)
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    pub fn finish(&self, complete: bool) {
        let wakers = {
            let mut s = self.state();
            s.end.get_or_insert(complete);
            std::mem::take(&mut s.wakers)
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Whether a request with these headers and extra key parts may share this response.
    pub fn matches(&self, request: &HeaderMap, extra: Option<&str>) -> bool {
        crate::object::selects(&self.vary, self.extra.as_deref(), request, extra)
    }

    pub fn reader(self: &Arc<Self>) -> FillReader {
        FillReader {
            fill: self.clone(),
            next: 0,
            skip: 0,
            remaining: None,
        }
    }

    /// A reader of bytes `start..start + len` only: a range request answered while the whole
    /// response is being fetched and stored.
    pub fn range_reader(self: &Arc<Self>, start: u64, len: u64) -> FillReader {
        FillReader {
            fill: self.clone(),
            next: 0,
            skip: start,
            remaining: Some(len),
        }
    }
}

/// One client's view of a fill.
#[derive(Debug)]
pub struct FillReader {
    fill: Arc<Fill>,
    next: usize,
    /// Bytes still to skip before the range starts.
    skip: u64,
    /// Bytes still to deliver; `None` for the whole body.
    remaining: Option<u64>,
}

impl Body for FillReader {
    type Data = Bytes;
    type Error = FillAborted;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, FillAborted>>> {
        let this = &mut *self;
        if this.remaining == Some(0) {
            return Poll::Ready(None);
        }
        let mut s = this.fill.state();
        while let Some(chunk) = s.chunks.get(this.next) {
            let mut chunk = chunk.clone();
            this.next += 1;
            if this.skip >= chunk.len() as u64 {
                this.skip -= chunk.len() as u64;
                continue;
            }
            chunk = chunk.slice(this.skip as usize..);
            this.skip = 0;
            if let Some(left) = &mut this.remaining {
                chunk.truncate((*left).min(chunk.len() as u64) as usize);
                *left -= chunk.len() as u64;
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match s.end {
            Some(true) => Poll::Ready(None),
            Some(false) => Poll::Ready(Some(Err(FillAborted))),
            None => {
                if !s.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    s.wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.remaining == Some(0) {
            return true;
        }
        let s = self.fill.state();
        s.end == Some(true) && self.next >= s.chunks.len()
    }

    fn size_hint(&self) -> SizeHint {
        if let Some(left) = self.remaining {
            return SizeHint::with_exact(left);
        }
        let declared = self
            .fill
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        match declared {
            Some(len) => SizeHint::with_exact(len),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn readers_that_join_late_get_everything_and_aborts_are_errors() {
        let fill = Fill::new(StatusCode::OK, HeaderMap::new(), Box::new([]), None);
        let early = fill.reader();
        fill.push(Bytes::from_static(b"ab"));
        let late = fill.reader();
        let f2 = fill.clone();
        let pusher = tokio::spawn(async move {
            tokio::task::yield_now().await;
            f2.push(Bytes::from_static(b"cd"));
            f2.finish(true);
        });
        let a = early.collect().await.unwrap().to_bytes();
        let b = late.collect().await.unwrap().to_bytes();
        pusher.await.unwrap();
        assert_eq!((&a[..], &b[..]), (&b"abcd"[..], &b"abcd"[..]));

        let ranged = Fill::new(StatusCode::OK, HeaderMap::new(), Box::new([]), None);
        for part in [&b"0123"[..], b"4567", b"89"] {
            ranged.push(Bytes::from_static(part));
        }
        ranged.finish(true);
        let middle = ranged.range_reader(3, 4).collect().await.unwrap().to_bytes();
        assert_eq!(&middle[..], b"3456", "a range across chunk boundaries");

        let broken = Fill::new(StatusCode::OK, HeaderMap::new(), Box::new([]), None);
        broken.push(Bytes::from_static(b"x"));
        broken.finish(false);
        assert!(broken.reader().collect().await.is_err());
    }
}
