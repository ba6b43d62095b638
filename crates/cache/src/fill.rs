//! A response being fetched for the cache, readable by any number of clients while it arrives.
//!
//! The fetch runs on its own task (so a client that goes away does not abort a fill others
//! wait for); each client reads the chunks from the start at its own pace. A fill that fails
//! midway ends every reader with an error, so no client takes a truncated body for a whole one.
//!
//! A fill keeps every chunk while the body may still be stored, which the size limit bounds.
//! Past the limit it only relays: nobody new may join (the start is about to go), each chunk
//! is dropped once every reader has it, and the fetch waits for readers to make room, so a
//! body of any length costs at most the limit and a chunk. With no reader left, nothing more
//! is worth fetching.

use std::collections::{BTreeMap, VecDeque};
use std::future::poll_fn;
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
    /// The most body bytes kept: the largest object that may be stored.
    max_bytes: u64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The chunks from number `base` on; those before were dropped once every reader had them.
    chunks: VecDeque<Bytes>,
    base: usize,
    /// Bytes in `chunks`.
    buffered: u64,
    /// Bytes pushed in all.
    total: u64,
    /// The body went past `max_bytes`: it will not be stored, and the fill only relays.
    relaying: bool,
    /// How many readers read each chunk number next; the first key is the oldest chunk still
    /// needed.
    positions: BTreeMap<usize, usize>,
    /// `Some(true)` complete, `Some(false)` aborted.
    end: Option<bool>,
    wakers: Vec<Waker>,
    /// The fetch, waiting for readers to make room.
    producer: Option<Waker>,
}

impl State {
    fn chunk(&self, number: usize) -> Option<&Bytes> {
        self.chunks.get(number.checked_sub(self.base)?)
    }

    fn pushed(&self) -> usize {
        self.base + self.chunks.len()
    }

    /// A reader moved on from chunk `from` to chunk `to` (None: it joined, or left).
    fn moved(&mut self, from: Option<usize>, to: Option<usize>) {
        // The new position first: a lone reader then never empties the map, which would free
        // its node only to allocate it again for every chunk.
        if let Some(to) = to {
            *self.positions.entry(to).or_default() += 1;
        }
        if let Some(from) = from {
            if let Some(n) = self.positions.get_mut(&from) {
                *n -= 1;
                if *n == 0 {
                    self.positions.remove(&from);
                }
            }
        }
        if self.relaying {
            self.trim();
        }
    }

    /// Drops the chunks every reader has had; wakes the fetch when that made room, or when
    /// no reader is left (it then stops).
    fn trim(&mut self) {
        let first_needed = self.positions.keys().next().copied().unwrap_or(self.pushed());
        let mut freed = false;
        while self.base < first_needed {
            let Some(chunk) = self.chunks.pop_front() else {
                break;
            };
            self.buffered -= chunk.len() as u64;
            self.base += 1;
            freed = true;
        }
        if freed || self.positions.is_empty() {
            if let Some(w) = self.producer.take() {
                w.wake();
            }
        }
    }
}

impl Fill {
    pub fn new(
        status: StatusCode,
        headers: HeaderMap,
        vary: crate::object::VaryValues,
        extra: Option<Box<str>>,
        max_bytes: u64,
    ) -> Arc<Self> {
        Arc::new(Self {
            status,
            headers,
            vary,
            extra,
            max_bytes,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a chunk for the readers; false once the body is past the size limit, when the fill
    /// no longer holds all of it.
    pub fn push(&self, chunk: Bytes) -> bool {
        let (wakers, whole) = {
            let mut s = self.state();
            s.total += chunk.len() as u64;
            s.buffered += chunk.len() as u64;
            s.chunks.push_back(chunk);
            if !s.relaying && s.total > self.max_bytes {
                s.relaying = true;
                s.trim();
            }
            (std::mem::take(&mut s.wakers), !s.relaying)
        };
        wakers.into_iter().for_each(Waker::wake);
        whole
    }

    /// Resolves when the fill may take another chunk: at once while it keeps the body to
    /// store it, and once relaying when readers have left at most the limit unread. False when
    /// it relays to nobody: the rest of the body would be fetched for nothing.
    pub async fn room(&self) -> bool {
        poll_fn(|cx| {
            let mut s = self.state();
            if !s.relaying {
                return Poll::Ready(true);
            }
            if s.positions.is_empty() {
                return Poll::Ready(false);
            }
            if s.buffered <= self.max_bytes {
                return Poll::Ready(true);
            }
            s.producer = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    pub fn finish(&self, complete: bool) {
        let wakers = {
            let mut s = self.state();
            s.end.get_or_insert(complete);
            std::mem::take(&mut s.wakers)
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// The whole body so far, while the fill still holds all of it.
    pub fn body(&self) -> Option<Bytes> {
        let s = self.state();
        if s.relaying {
            return None;
        }
        // Always copied, even a single chunk: a chunk is often a slice of a larger read buffer
        // (an origin connection reads 8 KiB and more at a time), and storing the slice would
        // keep that whole buffer alive with the object: 4.4 KB per cached 1 KiB object
        // measured (bench/memory.sh), where the memory budget counts 1 KiB.
        // A large body goes into pages of its own, which a plain connection sends without
        // copying (see `pages`).
        let parts = s.chunks.iter().map(|c| &c[..]);
        Some(crate::pages::body_from(parts, s.buffered as usize))
    }

    /// Body bytes held in memory now.
    pub fn buffered(&self) -> u64 {
        self.state().buffered
    }

    /// Whether a request with these headers and extra key parts may share this response.
    pub fn matches(&self, request: &HeaderMap, extra: Option<&str>) -> bool {
        crate::object::selects(&self.vary, self.extra.as_deref(), request, extra)
    }

    /// A reader of the whole body; None once the fill relays, when its start may be gone.
    pub fn reader(self: &Arc<Self>) -> Option<FillReader> {
        self.join(0, None)
    }

    /// A reader of bytes `start..start + len` only: a range request answered while the whole
    /// response is being fetched and stored. None once the fill relays.
    pub fn range_reader(self: &Arc<Self>, start: u64, len: u64) -> Option<FillReader> {
        self.join(start, Some(len))
    }

    fn join(self: &Arc<Self>, skip: u64, remaining: Option<u64>) -> Option<FillReader> {
        let mut s = self.state();
        if s.relaying {
            return None;
        }
        s.moved(None, Some(0));
        Some(FillReader {
            fill: self.clone(),
            next: Some(0),
            skip,
            remaining,
        })
    }
}

/// One client's view of a fill.
#[derive(Debug)]
pub struct FillReader {
    fill: Arc<Fill>,
    /// The number of the chunk to read next; None once this reader is done with the fill.
    next: Option<usize>,
    /// Bytes still to skip before the range starts.
    skip: u64,
    /// Bytes still to deliver; `None` for the whole body.
    remaining: Option<u64>,
}

/// Stops holding chunks for a reader that is done.
fn leave(next: &mut Option<usize>, s: &mut State) {
    if let Some(next) = next.take() {
        s.moved(Some(next), None);
    }
}

impl Drop for FillReader {
    fn drop(&mut self) {
        if self.next.is_some() {
            leave(&mut self.next, &mut self.fill.state());
        }
    }
}

impl Body for FillReader {
    type Data = Bytes;
    type Error = FillAborted;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, FillAborted>>> {
        let this = &mut *self;
        let mut s = this.fill.state();
        let Some(mut next) = this.next else {
            return Poll::Ready(None);
        };
        if this.remaining == Some(0) {
            leave(&mut this.next, &mut s);
            return Poll::Ready(None);
        }
        while let Some(chunk) = s.chunk(next) {
            let mut chunk = chunk.clone();
            s.moved(Some(next), Some(next + 1));
            next += 1;
            this.next = Some(next);
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
            Some(true) => {
                leave(&mut this.next, &mut s);
                Poll::Ready(None)
            }
            Some(false) => {
                leave(&mut this.next, &mut s);
                Poll::Ready(Some(Err(FillAborted)))
            }
            None => {
                if !s.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    s.wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let Some(next) = self.next else { return true };
        if self.remaining == Some(0) {
            return true;
        }
        let s = self.fill.state();
        s.end == Some(true) && next >= s.pushed()
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

    fn fill(max_bytes: u64) -> Arc<Fill> {
        Fill::new(StatusCode::OK, HeaderMap::new(), Box::new([]), None, max_bytes)
    }

    #[test]
    fn the_stored_body_does_not_keep_the_origins_read_buffer_alive() {
        // What an origin connection hands over: 1 KiB of an 8 KiB read buffer.
        let read_buffer = Bytes::from(vec![7u8; 8192]);
        let chunk = read_buffer.slice(0..1024);
        let fill = fill(u64::MAX);
        fill.push(chunk.clone());
        fill.finish(true);
        let body = fill.body().unwrap();
        assert_eq!(body, chunk);
        let inside = read_buffer.as_ptr_range();
        assert!(
            !inside.contains(&body.as_ptr()),
            "the object owns its 1 KiB instead of pinning the 8 KiB buffer"
        );
    }

    #[tokio::test]
    async fn readers_that_join_late_get_everything_and_aborts_are_errors() {
        let fill = fill(u64::MAX);
        let early = fill.reader().unwrap();
        fill.push(Bytes::from_static(b"ab"));
        let late = fill.reader().unwrap();
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
        assert_eq!(fill.body().as_deref(), Some(&b"abcd"[..]));

        let ranged = self::fill(u64::MAX);
        for part in [&b"0123"[..], b"4567", b"89"] {
            ranged.push(Bytes::from_static(part));
        }
        ranged.finish(true);
        let middle = ranged
            .range_reader(3, 4)
            .unwrap()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&middle[..], b"3456", "a range across chunk boundaries");

        let broken = self::fill(u64::MAX);
        broken.push(Bytes::from_static(b"x"));
        broken.finish(false);
        assert!(broken.reader().unwrap().collect().await.is_err());
    }

    #[tokio::test]
    async fn past_its_limit_a_fill_relays_at_its_readers_pace_without_keeping_the_body() {
        const MIB: u64 = 1 << 20;
        const CHUNK: usize = 64 << 10;
        let fill = fill(MIB);
        let reader = fill.reader().unwrap();
        let producer = {
            let fill = fill.clone();
            async move {
                let mut most = 0;
                for i in 0..128u8 {
                    assert!(fill.room().await, "a reader is still there");
                    fill.push(Bytes::from(vec![i; CHUNK]));
                    most = most.max(fill.buffered());
                }
                fill.finish(true);
                most
            }
        };
        let consumer = async move {
            let mut reader = reader;
            let mut got = Vec::new();
            while let Some(frame) = reader.frame().await {
                got.extend_from_slice(&frame.unwrap().into_data().unwrap());
                // Slower than the origin: the fill is what would pile up.
                tokio::task::yield_now().await;
            }
            got
        };
        let (most, got) = tokio::join!(producer, consumer);
        assert_eq!(got.len(), 8 * MIB as usize);
        assert!(got
            .chunks(CHUNK)
            .enumerate()
            .all(|(i, c)| c.iter().all(|&b| b == i as u8)));
        assert!(most <= MIB + CHUNK as u64, "held {most} bytes at most");
        assert_eq!(fill.buffered(), 0, "nothing kept once every reader had it");
        assert!(fill.body().is_none(), "not whole: not to be stored");
        assert!(fill.reader().is_none(), "its start is gone: nobody may join");
    }

    #[tokio::test]
    async fn a_fill_past_its_limit_with_no_reader_left_wants_no_more() {
        let fill = fill(4);
        let reader = fill.reader().unwrap();
        assert!(fill.room().await);
        assert!(!fill.push(Bytes::from_static(b"0123456789")), "past the limit");
        let waiting = tokio::spawn({
            let fill = fill.clone();
            async move { fill.room().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the reader has not made room yet");
        drop(reader);
        assert!(!waiting.await.unwrap(), "nobody to relay to");
        assert_eq!(fill.buffered(), 0);

        // Within the limit the body is kept for the store, reader or not.
        let storing = self::fill(100);
        drop(storing.reader());
        assert!(storing.push(Bytes::from_static(b"0123456789")));
        assert!(storing.room().await);
        assert_eq!(storing.body().as_deref(), Some(&b"0123456789"[..]));
    }
}
