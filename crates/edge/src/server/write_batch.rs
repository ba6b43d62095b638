//! When a client connection's bytes reach the socket: one write per pass over the connection.
//!
//! hyper's HTTP/2 writes every DATA frame of 256 bytes or more as its own `writev`: h2 chains
//! the payload instead of copying it, and must flush before it can take the next frame. When a
//! pass over the connection answers several streams (a client with four requests in flight gets
//! four responses), that is a system call, and a wake-up of the client, per response where one
//! would do. HAProxy sends what one pass of its event loop produced in one `send`. This layer
//! does the same: while the connection's driver polls hyper ([`Batcher::poll`]), small writes
//! are copied into a buffer and hyper's flushes return at once; when hyper's poll returns, the
//! driver writes the buffer in one call and flushes the transport (TLS). Writes that are not
//! copied go out directly, behind what is buffered and in the same `writev`.
//!
//! HTTP/1.1 responses come as a head and a body in two buffers; up to 8 KiB they are copied
//! into one plain write (cheaper than the kernel's iovec path for a small body: 1 KiB hits ~5 %
//! less CPU per request), a bigger body goes beside the head in one `writev` (cheaper than
//! copying it: 16 KiB hits 9.0-9.6 µs of CPU per request against 9.9-10.1). HTTP/2 frames up
//! to a full 16 KiB frame are copied until the pass has written through once (the buffer full,
//! or a bigger write); after that only writes up to 4 KiB: copying every frame of large bodies
//! halved h2 throughput at 256 KiB.
//!
//! Outside the driver's poll (an upgraded connection's tunnel, which holds the same I/O object
//! in another task) every flush is real, and a read first sends what is still buffered.
//!
//! The buffer is lent from a per-thread spare while a pass writes and given back when the
//! driver has sent it all, so an idle connection holds no write buffer.
//!
//! On a plain HTTP/1.1 connection, a large body stored in pages of its own goes out of a pipe
//! instead (`super::splice`): copied head, referenced body. Bytes waiting in the pipe come
//! before bytes waiting in the buffer: a splice starts only when both are empty, and
//! everything written while the pipe still holds bytes is buffered or waits behind them.

use std::cell::Cell;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::h2_guard::H2Guard;
use super::splice::{self, Pipe, SpliceCounters, SpliceOut};

/// HTTP/1.1 writes up to this size are copied (a small response's head and body become one
/// write). A bigger body goes out beside the head in one `writev`, which costs less than the
/// copy: 16 KiB cache hits gained 8-10 % req/s over copying up to 64 KiB; at 8 KiB the two
/// measured the same, and pass-through at 16 KiB too.
const H1_COPY_MAX: usize = 8 * 1024;
/// HTTP/2 writes up to this size are copied: a small response's frames, not a big body's.
const H2_COPY_MAX: usize = 17 * 1024;
/// Writes up to this size are copied even after a pass wrote through.
const ALWAYS_COPY_MAX: usize = 4 * 1024;
/// A pass buffers at most this much before writing through.
const PENDING_MAX: usize = 128 * 1024;
/// A buffer larger than this is not kept as the thread's spare.
const SPARE_MAX: usize = 256 * 1024;

thread_local! {
    static SPARE: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

struct Batch<I> {
    io: H2Guard<I>,
    /// Bytes written by hyper and not yet sent; `pending[sent..]` is what is left.
    pending: Vec<u8>,
    sent: usize,
    /// Set while the driver polls hyper: flushes wait for the end of the pass.
    deferring: bool,
    /// hyper asked for a flush during the pass: the transport is flushed at its end.
    flush_due: bool,
    /// A write of this pass went straight to the transport (too big to copy, or the buffer
    /// full): the rest of the pass copies only small writes. A big body streaming out in
    /// 16 KiB frames is copied until the buffer fills, not frame after frame.
    wrote_through: bool,
    /// A write of buffered bytes failed after hyper had been told they were written: hyper's
    /// next write or flush reports it.
    failed: Option<io::ErrorKind>,
    /// The last task outside the driver's passes (an upgrade's tunnel) that waited on the
    /// transport: woken when the driver goes, which may have taken the transport's wake-up.
    holder: Option<Waker>,
    /// Lent while bytes of a spliced body wait in it (they go before `pending`).
    pipe: Option<Pipe>,
    /// A splice failed on this connection: it writes the usual way from now on.
    no_splice: bool,
    counters: SpliceCounters,
}

/// The I/O object hyper reads and writes.
pub struct BatchedIo<I> {
    batch: Arc<Mutex<Batch<I>>>,
}

/// Held by the connection's driver, which polls hyper through it.
pub struct Batcher<I> {
    batch: Arc<Mutex<Batch<I>>>,
}

/// Wraps a client connection: hyper gets the first half, the driver the second.
pub fn batched<I>(io: H2Guard<I>, counters: SpliceCounters) -> (BatchedIo<I>, Batcher<I>) {
    let batch = Arc::new(Mutex::new(Batch {
        io,
        pending: Vec::new(),
        sent: 0,
        deferring: false,
        flush_due: false,
        wrote_through: false,
        failed: None,
        holder: None,
        pipe: None,
        no_splice: false,
        counters,
    }));
    (BatchedIo { batch: batch.clone() }, Batcher { batch })
}

fn lock<I>(batch: &Mutex<Batch<I>>) -> MutexGuard<'_, Batch<I>> {
    // Nothing panics while holding the lock with the batch half-updated; a poisoned lock is
    // the remains of a panic in hyper's poll, and the batch itself is consistent.
    batch.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<I: AsyncWrite + SpliceOut + Unpin> Batcher<I> {
    /// Polls hyper (`poll`) with flushes deferred, then sends what it wrote and flushes the
    /// transport. A send that would block leaves the rest buffered and the task registered
    /// for writability; hyper is polled again then and the rest goes first.
    pub fn poll<R>(&self, cx: &mut Context<'_>, poll: impl FnOnce(&mut Context<'_>) -> Poll<R>) -> Poll<R> {
        {
            let mut batch = lock(&self.batch);
            batch.deferring = true;
            batch.wrote_through = false;
        }
        let polled = poll(cx);
        let mut batch = lock(&self.batch);
        batch.deferring = false;
        if batch.has_pending() || batch.flush_due {
            if let Poll::Ready(Err(e)) = batch.poll_settle(cx) {
                batch.fail(e.kind(), cx);
            }
        }
        polled
    }

    /// After hyper's connection future ended: sends what its last pass left and flushes the
    /// transport. hyper shuts the transport down (sending everything first) when it ends a
    /// connection itself; what can be left is an upgrade's 101 that a full socket or TLS
    /// did not take at once, while the tunnel task may hold the connection already.
    pub fn poll_finish(&self, cx: &mut Context<'_>) -> Poll<()> {
        lock(&self.batch).poll_settle(cx).map(|_| ())
    }

    /// Whether hyper's last pass left bytes unsent or a flush owed ([`Self::poll_finish`]).
    pub fn owes_writes(&self) -> bool {
        let batch = lock(&self.batch);
        batch.has_pending() || batch.flush_due
    }
}

impl<I> Drop for Batcher<I> {
    fn drop(&mut self) {
        if let Some(holder) = lock(&self.batch).holder.take() {
            holder.wake();
        }
    }
}

impl<I: AsyncWrite + SpliceOut + Unpin> Batch<I> {
    fn has_pending(&self) -> bool {
        self.sent < self.pending.len() || self.pipe.is_some()
    }

    fn copy_max(&self) -> usize {
        if self.io.speaks_http2() {
            H2_COPY_MAX
        } else {
            H1_COPY_MAX
        }
    }

    /// Records a failed send of bytes hyper believes written, and wakes the task so that
    /// hyper's next write or flush sees it.
    fn fail(&mut self, kind: io::ErrorKind, cx: &mut Context<'_>) {
        self.failed = Some(kind);
        self.flush_due = false;
        self.pipe = None;
        self.release();
        cx.waker().wake_by_ref();
    }

    /// Sends what waits in the pipe; Ready(Ok) once it is empty (and given back).
    fn poll_drain_pipe(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(pipe) = &mut self.pipe {
            while pipe.held() > 0 {
                ready!(self.io.poll_splice(cx, pipe))?;
            }
        }
        if let Some(pipe) = self.pipe.take() {
            pipe.release();
        }
        Poll::Ready(Ok(()))
    }

    /// Sends what waits in the pipe, then what is buffered; Ready(Ok) once nothing is left.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain_pipe(cx))?;
        while self.sent < self.pending.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.release();
        Poll::Ready(Ok(()))
    }

    /// Sends what is buffered, then flushes the transport if a flush is owed.
    fn poll_settle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send(cx))?;
        if self.flush_due {
            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            self.flush_due = false;
        }
        Poll::Ready(Ok(()))
    }

    /// Outside the driver's passes: remembers a task that waits on the transport.
    fn hold(&mut self, cx: &Context<'_>) {
        match &mut self.holder {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
    }

    /// Gives the (sent) buffer back to the thread's spare.
    fn release(&mut self) {
        let mut buffer = std::mem::take(&mut self.pending);
        self.sent = 0;
        if buffer.capacity() > 0 && buffer.capacity() <= SPARE_MAX {
            buffer.clear();
            SPARE.set(buffer);
        }
    }

    fn buffer(&mut self, bufs: &[IoSlice<'_>]) {
        if self.pending.capacity() == 0 {
            self.pending = SPARE.take();
        } else if self.sent > 0 {
            // A send that a slow reader's socket cut short: what went is dropped, so the
            // buffer holds at most PENDING_MAX, however long the slow download.
            self.pending.drain(..self.sent);
            self.sent = 0;
        }
        bufs.iter().for_each(|b| self.pending.extend_from_slice(b));
    }

    fn check_failed(&self) -> io::Result<()> {
        match self.failed {
            Some(kind) => Err(io::Error::new(kind, "sending buffered response bytes failed")),
            None => Ok(()),
        }
    }

    /// The slice of `bufs` to splice, if this connection can and `bufs` has one.
    fn splice_at(&self, bufs: &[IoSlice<'_>]) -> Option<usize> {
        if self.no_splice || self.io.speaks_http2() || !self.io.can_splice() {
            return None;
        }
        splice::splice_at(bufs)
    }

    /// Writes `bufs[..=at]` through a pipe: the head copied, the body by reference (see
    /// `super::splice`). What the pipe took counts as written; what the socket did not take
    /// yet waits in the pipe, before anything written later.
    fn poll_write_spliced(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
        at: usize,
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_send(cx))?;
        let Some(mut pipe) = Pipe::take() else {
            self.counters.no_pipe.inc();
            return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        };
        let filled = match splice::fill(&mut pipe, bufs, at) {
            Ok(filled) => filled,
            Err(e) => {
                tracing::debug!(error = %e, "splicing a body failed; this connection copies from now on");
                self.no_splice = true;
                self.counters.failed.inc();
                pipe.release();
                return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
            }
        };
        self.counters.bytes.inc_by(filled.referenced as u64);
        self.pipe = Some(pipe);
        // As much as the socket takes now; the rest goes when it has room (the driver's
        // settle, hyper's flush or its next write).
        if let Poll::Ready(Err(e)) = self.poll_drain_pipe(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(filled.copied + filled.referenced))
    }

    fn poll_write_vectored(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        self.check_failed()?;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let pending = self.pending.len() - self.sent;
        if self.deferring {
            let copy = total <= ALWAYS_COPY_MAX || (!self.wrote_through && total <= self.copy_max());
            if copy && pending + total <= PENDING_MAX {
                self.buffer(bufs);
                return Poll::Ready(Ok(total));
            }
            self.wrote_through = true;
        }
        if let Some(at) = self.splice_at(bufs) {
            return self.poll_write_spliced(cx, bufs, at);
        }
        // Nothing goes around bytes waiting in the pipe.
        ready!(self.poll_drain_pipe(cx))?;
        if pending == 0 {
            return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        }
        // Behind buffered bytes: both in one writev where the slices fit, else the buffer
        // first.
        let mut slices = [IoSlice::new(&[]); 8];
        if bufs.len() < slices.len() {
            slices[0] = IoSlice::new(&self.pending[self.sent..]);
            slices[1..=bufs.len()].copy_from_slice(bufs);
            let n = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..=bufs.len()]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n < pending {
                self.sent += n;
                // Part of the buffer went: the caller's bytes are not written yet (Ok(0)
                // would read as a closed transport). Asking again at once would be a spin;
                // the transport takes more when it can.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.release();
            if n > pending {
                return Poll::Ready(Ok(n - pending));
            }
            // Exactly the buffer went: the caller's bytes go now, or wait for the transport.
            return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        }
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

impl<I: AsyncRead + AsyncWrite + SpliceOut + Unpin> AsyncRead for BatchedIo<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut batch = lock(&self.batch);
        if !batch.deferring && (batch.has_pending() || batch.flush_due) {
            // A tunnel that only reads must still send (and flush, for TLS) what the
            // connection left behind, such as an upgrade's 101. Would-block: this task is
            // registered for writability too.
            match batch.poll_settle(cx) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => batch.hold(cx),
                Poll::Ready(Ok(())) => {}
            }
        }
        Pin::new(&mut batch.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + SpliceOut + Unpin> BatchedIo<I> {
    fn write(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let mut batch = lock(&self.batch);
        let written = batch.poll_write_vectored(cx, bufs);
        if written.is_pending() && !batch.deferring {
            batch.hold(cx);
        }
        written
    }
}

impl<I: AsyncWrite + SpliceOut + Unpin> AsyncWrite for BatchedIo<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.write(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.write(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut batch = lock(&self.batch);
        batch.check_failed()?;
        batch.flush_due = true;
        if batch.deferring {
            // The driver sends and flushes when hyper's poll returns.
            return Poll::Ready(Ok(()));
        }
        let settled = batch.poll_settle(cx);
        if settled.is_pending() {
            batch.hold(cx);
        }
        settled
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut batch = lock(&self.batch);
        ready!(batch.poll_send(cx))?;
        ready!(Pin::new(&mut batch.io).poll_shutdown(cx))?;
        batch.flush_due = false;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A transport that records each write call, and can refuse writes (full) or fail them.
    #[derive(Default)]
    struct Wire {
        to_read: Vec<u8>,
        writes: Vec<Vec<u8>>,
        /// How many buffers each write call was given (1 for a plain write).
        slices: Vec<usize>,
        full: bool,
        broken: bool,
        /// Bytes one write call takes at most (a nearly full socket).
        limit: Option<usize>,
        /// Bytes the socket takes before it is full (a slow reader).
        budget: Option<usize>,
        flushes: usize,
    }

    impl AsyncRead for Wire {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let n = self.to_read.len().min(buf.remaining());
            buf.put_slice(&self.to_read[..n]);
            self.to_read.drain(..n);
            Poll::Ready(Ok(()))
        }
    }

    impl SpliceOut for Wire {}

    impl AsyncWrite for Wire {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            if self.broken {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            if self.full {
                return Poll::Pending;
            }
            if self.budget == Some(0) {
                return Poll::Pending;
            }
            let n = self.limit.map_or(buf.len(), |limit| limit.min(buf.len()));
            let n = self.budget.map_or(n, |budget| budget.min(n));
            if let Some(budget) = &mut self.budget {
                *budget -= n;
            }
            self.writes.push(buf[..n].to_vec());
            self.slices.push(1);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            let written = self.as_mut().poll_write(cx, &joined);
            if written.is_ready() {
                if let Some(last) = self.slices.last_mut() {
                    *last = bufs.len();
                }
            }
            written
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn flushes(io: &BatchedIo<Wire>) -> usize {
        lock(&io.batch).io.get_ref().flushes
    }

    /// An HTTP/2 connection (the client's preface already read) and its driver.
    async fn http2() -> (BatchedIo<Wire>, Batcher<Wire>) {
        let wire = Wire {
            to_read: b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            ..Wire::default()
        };
        let (mut io, batcher) = batched(H2Guard::new(wire, Some(true), || {}), Default::default());
        let mut preface = [0u8; 24];
        io.read_exact(&mut preface).await.unwrap();
        assert!(lock(&io.batch).io.speaks_http2());
        (io, batcher)
    }

    fn writes(io: &BatchedIo<Wire>) -> Vec<Vec<u8>> {
        lock(&io.batch).io.get_ref().writes.clone()
    }

    /// One pass of the driver, in which hyper writes each frame (split in two buffers) and
    /// flushes.
    async fn pass(batcher: &Batcher<Wire>, io: &mut BatchedIo<Wire>, frames: &[&[u8]]) {
        let writes: Vec<[&[u8]; 2]> = frames.iter().map(|f| [&f[..4], &f[4..]]).collect();
        let writes: Vec<&[&[u8]]> = writes.iter().map(|w| &w[..]).collect();
        pass_writes(batcher, io, &writes).await;
    }

    /// One pass of the driver, in which hyper makes each of `writes` (its buffers in one
    /// vectored write) and flushes after it.
    async fn pass_writes(batcher: &Batcher<Wire>, io: &mut BatchedIo<Wire>, writes: &[&[&[u8]]]) {
        poll_fn(|cx| {
            batcher.poll(cx, |cx| {
                for bufs in writes {
                    let slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
                    let total: usize = bufs.iter().map(|b| b.len()).sum();
                    let written = Pin::new(&mut *io).poll_write_vectored(cx, &slices);
                    assert!(matches!(written, Poll::Ready(Ok(n)) if n == total));
                    assert!(Pin::new(&mut *io).poll_flush(cx).is_ready());
                }
                Poll::Ready(())
            })
        })
        .await;
    }

    #[tokio::test]
    async fn a_pass_of_small_http2_frames_is_one_write_and_big_frames_are_not_copied_but_keep_their_order() {
        let (mut io, batcher) = http2().await;
        let small = [[1u8; 1033], [2u8; 1033], [3u8; 1033]];
        pass(&batcher, &mut io, &[&small[0], &small[1], &small[2]]).await;
        assert_eq!(
            writes(&io),
            vec![small.concat()],
            "three flushed responses, one write"
        );
        assert_eq!(
            flushes(&io),
            1,
            "and one flush of the transport (TLS), after the write"
        );

        let big = vec![9u8; 32 * 1024];
        pass(&batcher, &mut io, &[&small[0], &big, &small[1]]).await;
        let sent = writes(&io);
        assert_eq!(
            sent.len(),
            3,
            "{:?}",
            sent.iter().map(Vec::len).collect::<Vec<_>>()
        );
        assert_eq!(
            sent[1],
            [&small[0][..], &big[..]].concat(),
            "the big frame goes behind what was buffered, in the same write"
        );
        assert_eq!(sent[2], small[1]);
    }

    #[tokio::test]
    async fn a_body_in_full_frames_is_copied_until_the_buffer_fills_then_written_through() {
        let (mut io, batcher) = http2().await;
        // Four 16 KiB responses (a HEADERS frame and one DATA frame each): one write.
        let response = vec![5u8; 16 * 1024 + 200];
        pass(&batcher, &mut io, &[&response, &response, &response, &response]).await;
        assert_eq!(writes(&io).len(), 1);

        // A 256 KiB body: frames are copied up to the buffer's bound, the frame that does not
        // fit goes out behind them, and the later frames of the pass go straight out.
        let frame = vec![6u8; 16 * 1024 + 9];
        let frames: Vec<&[u8]> = std::iter::repeat_n(&frame[..], 16).collect();
        pass(&batcher, &mut io, &frames).await;
        let sent = writes(&io)[1..].to_vec();
        let copied = PENDING_MAX / frame.len();
        assert_eq!(
            sent.len(),
            16 - copied,
            "{:?}",
            sent.iter().map(Vec::len).collect::<Vec<_>>()
        );
        assert_eq!(sent[0].len(), (copied + 1) * frame.len());
        assert_eq!(sent.concat(), frames.concat());

        // Small frames after a write-through are still gathered.
        let small = [7u8; 300];
        let big = vec![8u8; 32 * 1024];
        pass(&batcher, &mut io, &[&big, &small, &small]).await;
        let sent = writes(&io);
        assert_eq!(sent[sent.len() - 2], big);
        assert_eq!(sent[sent.len() - 1], [small, small].concat());
    }

    #[tokio::test]
    async fn bytes_a_full_socket_refused_go_first_on_the_next_pass() {
        let (mut io, batcher) = http2().await;
        lock(&io.batch).io.get_mut().full = true;
        pass(&batcher, &mut io, &[&[1u8; 100]]).await;
        assert!(writes(&io).is_empty());
        lock(&io.batch).io.get_mut().full = false;
        pass(&batcher, &mut io, &[&[2u8; 100]]).await;
        assert_eq!(writes(&io), vec![[[1u8; 100], [2u8; 100]].concat()]);
    }

    #[tokio::test]
    async fn a_write_behind_the_buffer_that_sends_only_the_buffer_is_not_reported_as_zero() {
        let (mut io, batcher) = http2().await;
        lock(&io.batch).io.get_mut().full = true;
        pass(&batcher, &mut io, &[&[1u8; 1000]]).await;
        // The socket takes exactly the buffered bytes in the next call, then the rest.
        {
            let mut batch = lock(&io.batch);
            batch.io.get_mut().full = false;
            batch.io.get_mut().limit = Some(1000);
        }
        let big = vec![2u8; 40 * 1024];
        io.write_all(&big).await.unwrap();
        lock(&io.batch).io.get_mut().limit = None;
        io.flush().await.unwrap();
        let sent = writes(&io).concat();
        assert_eq!(sent, [&[1u8; 1000][..], &big[..]].concat());
    }

    #[tokio::test]
    async fn a_failed_send_at_the_end_of_a_pass_is_reported_to_the_next_write() {
        let (mut io, batcher) = http2().await;
        lock(&io.batch).io.get_mut().broken = true;
        pass(&batcher, &mut io, &[&[1u8; 100]]).await;
        lock(&io.batch).io.get_mut().broken = false;
        let e = io.write_all(b"more").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        assert_eq!(io.flush().await.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }

    #[tokio::test]
    async fn outside_the_drivers_pass_a_read_or_a_flush_sends_what_is_buffered_and_writes_go_at_once() {
        // An upgrade: hyper buffered the 101 in its last pass, then a tunnel holds the I/O.
        const SWITCHING: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";
        let (mut io, batcher) = http2().await;
        lock(&io.batch).io.get_mut().full = true;
        pass(&batcher, &mut io, &[SWITCHING]).await;
        lock(&io.batch).io.get_mut().full = false;
        let flushed = flushes(&io);
        let mut buf = [0u8; 8];
        let _ = io.read(&mut buf).await.unwrap();
        assert_eq!(writes(&io).concat(), SWITCHING, "a read sends it");
        assert_eq!(flushes(&io), flushed + 1, "and flushes the transport");

        io.write_all(b"tunnel bytes").await.unwrap();
        assert_eq!(
            writes(&io).last().unwrap(),
            b"tunnel bytes",
            "written at once, not held for a pass"
        );

        // The same 101 left behind, then the tunnel flushes before it reads.
        lock(&io.batch).io.get_mut().full = true;
        pass(&batcher, &mut io, &[SWITCHING]).await;
        lock(&io.batch).io.get_mut().full = false;
        io.flush().await.unwrap();
        assert_eq!(writes(&io).last().unwrap(), SWITCHING, "a flush sends it");
    }

    #[tokio::test]
    async fn the_driver_finishing_sends_what_the_last_pass_left() {
        let (mut io, batcher) = http2().await;
        lock(&io.batch).io.get_mut().full = true;
        pass(&batcher, &mut io, &[b"last bytes"]).await;
        assert!(writes(&io).is_empty());
        assert!(batcher.owes_writes());
        lock(&io.batch).io.get_mut().full = false;
        poll_fn(|cx| batcher.poll_finish(cx)).await;
        assert!(!batcher.owes_writes());
        assert_eq!(writes(&io), vec![b"last bytes".to_vec()]);
        assert!(flushes(&io) >= 1);
    }

    #[tokio::test]
    async fn a_slow_reader_keeps_the_buffer_bounded_and_gets_every_byte_in_order() {
        let (mut io, batcher) = http2().await;
        // hyper offers 3 KiB writes each pass until one is refused; the socket takes 1 KiB
        // per pass, then is full.
        let data: Vec<u8> = (0..600 * 1024u32).map(|i| (i % 251) as u8).collect();
        let mut offered = 0;
        for round in 0.. {
            assert!(round < 10_000, "no progress");
            lock(&io.batch).io.get_mut().budget = Some(1024);
            poll_fn(|cx| {
                batcher.poll(cx, |cx| {
                    while offered < data.len() {
                        let chunk = &data[offered..(offered + 3 * 1024).min(data.len())];
                        match Pin::new(&mut io).poll_write(cx, chunk) {
                            Poll::Ready(Ok(n)) => offered += n,
                            Poll::Ready(Err(e)) => panic!("{e}"),
                            Poll::Pending => break,
                        }
                    }
                    let _ = Pin::new(&mut io).poll_flush(cx);
                    Poll::Ready(())
                })
            })
            .await;
            let held = lock(&io.batch).pending.len();
            assert!(held <= PENDING_MAX, "round {round}: {held} bytes held");
            if offered == data.len() {
                break;
            }
        }
        lock(&io.batch).io.get_mut().budget = None;
        poll_fn(|cx| batcher.poll_finish(cx)).await;
        assert_eq!(writes(&io).concat(), data);
    }

    #[tokio::test]
    async fn http1_copies_a_small_response_into_one_plain_write_and_sends_a_big_body_beside_its_head() {
        let wire = Wire {
            to_read: b"GET / HTTP/1.1\r\n".to_vec(),
            ..Wire::default()
        };
        let (mut io, batcher) = batched(H2Guard::new(wire, None, || {}), Default::default());
        let mut line = [0u8; 16];
        io.read_exact(&mut line).await.unwrap();
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: ...\r\n\r\n";
        let (small, big) = (vec![7u8; 4 * 1024], vec![8u8; 16 * 1024]);
        for body in [&small, &big] {
            pass_writes(&batcher, &mut io, &[&[head, body]]).await;
        }
        assert_eq!(
            writes(&io),
            vec![[&head[..], &small].concat(), [&head[..], &big].concat()]
        );
        let slices = lock(&io.batch).io.get_ref().slices.clone();
        assert_eq!(
            slices,
            [1, 2],
            "4 KiB: copied behind its head; 16 KiB: a writev of both"
        );
    }

    /// A plain TCP connection whose sending side takes little before it is full.
    async fn narrow_connection() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let client = socket.connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        socket2::SockRef::from(&server)
            .set_send_buffer_size(4096)
            .unwrap();
        (server, client)
    }

    type Plain = crate::server::idle::IdleIo<tokio::net::TcpStream>;

    fn plain(server: tokio::net::TcpStream, counters: SpliceCounters) -> (BatchedIo<Plain>, Batcher<Plain>) {
        let io = crate::server::idle::IdleIo::new(server, Default::default(), Vec::new());
        batched(H2Guard::new(io, Some(false), || {}), counters)
    }

    /// The kernel sends a spliced body from the cache's pages after the write returned, while
    /// the body may be evicted and its memory given to other bodies: the client must still get
    /// the body's bytes, and what is written after it must come after it.
    #[tokio::test]
    async fn a_spliced_body_outlives_its_pages_and_keeps_its_place() {
        let (server, mut client) = narrow_connection().await;
        let counters = SpliceCounters::default();
        let (mut w, _batcher) = plain(server, counters.clone());
        let pattern: Vec<u8> = (0..512 * 1024 + 17).map(|i| (i * 7 % 251) as u8).collect();
        let body = outpost_cache::pages::body_from([&pattern[..]], pattern.len());
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", pattern.len());
        let slices = [IoSlice::new(head.as_bytes()), IoSlice::new(&body)];
        let n = poll_fn(|cx| Pin::new(&mut w).poll_write_vectored(cx, &slices))
            .await
            .unwrap();
        assert_eq!(n, head.len() + body.len(), "the pipe took head and body at once");
        assert_eq!(
            counters.bytes.get(),
            body.len() as u64,
            "the body counts as spliced"
        );
        let waiting = lock(&w.batch).pipe.as_ref().map_or(0, Pipe::held);
        assert!(
            waiting > 0,
            "the socket did not take it all: the rest waits in the pipe"
        );

        // Evicted: its pages are unmapped, and other bodies are mapped, perhaps where it was.
        drop(body);
        let filler = vec![0xEE_u8; pattern.len()];
        let others: Vec<Bytes> = (0..8)
            .map(|_| outpost_cache::pages::body_from([&filler[..]], filler.len()))
            .collect();

        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        w.write_all(b"tail").await.unwrap();
        w.flush().await.unwrap();
        w.shutdown().await.unwrap();
        let got = reader.await.unwrap();
        let mut want = head.into_bytes();
        want.extend_from_slice(&pattern);
        want.extend_from_slice(b"tail");
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the body arrived intact, in its place");
        assert!(
            lock(&w.batch).pipe.is_none(),
            "the emptied pipe went back to the pool"
        );
        drop(others);
    }

    /// A body on the heap is written the usual way.
    #[tokio::test]
    async fn bodies_on_the_heap_are_written_the_usual_way() {
        let (server, mut client) = narrow_connection().await;
        let counters = SpliceCounters::default();
        let (mut w, _batcher) = plain(server, counters.clone());
        let heap = vec![1u8; 512 * 1024];
        let n = poll_fn(|cx| Pin::new(&mut w).poll_write_vectored(cx, &[IoSlice::new(&heap)]))
            .await
            .unwrap();
        assert!(
            n < heap.len(),
            "a heap body goes to the socket directly, which takes part"
        );
        assert!(lock(&w.batch).pipe.is_none());
        let mut rest = &heap[n..];
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got.len()
        });
        while !rest.is_empty() {
            let n = AsyncWriteExt::write(&mut w, rest).await.unwrap();
            rest = &rest[n..];
        }
        w.shutdown().await.unwrap();
        assert_eq!(reader.await.unwrap(), heap.len());
        assert_eq!(counters.bytes.get(), 0, "nothing spliced");
    }
}
