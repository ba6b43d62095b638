//! The client socket as the HTTP server sees it: bytes already read before HTTP started (after
//! a PROXY protocol header) are replayed first, and every read and write is counted for idle
//! tracking (hyper has no keep-alive idle timeout of its own, so the connection task closes a
//! connection gracefully once the count has not moved for the idle timeout while no request was
//! in flight).
//!
//! A counter rather than a timestamp: reading the clock on every socket operation costs more
//! than the whole check, which runs a few times per idle period.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Clone, Default)]
pub struct Activity(Arc<AtomicU64>);

impl Activity {
    fn touch(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// A number that changes whenever the connection reads or writes.
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The idle-timeout arithmetic of a connection's tick: a connection idles out once its
/// activity count has not moved, with no request in flight, for the idle timeout.
pub struct IdleWatch {
    idle: std::time::Duration,
    seen: u64,
    quiet: std::time::Duration,
}

impl IdleWatch {
    pub fn new(idle: std::time::Duration, activity: &Activity) -> Self {
        Self {
            idle,
            seen: activity.count(),
            quiet: std::time::Duration::ZERO,
        }
    }

    /// One tick of `tick` has passed; true when the connection has now idled out.
    pub fn on_tick(&mut self, tick: std::time::Duration, activity: &Activity, busy: bool) -> bool {
        let now = activity.count();
        if now != self.seen || busy {
            self.seen = now;
            self.quiet = std::time::Duration::ZERO;
            return false;
        }
        self.quiet += tick;
        self.quiet >= self.idle
    }
}

pub struct IdleIo<T> {
    inner: T,
    activity: Activity,
    /// Bytes read ahead of HTTP (after a PROXY header) that belong to the request.
    prefix: Vec<u8>,
    offset: usize,
}

impl<T> IdleIo<T> {
    pub fn new(inner: T, activity: Activity, prefix: Vec<u8>) -> Self {
        Self {
            inner,
            activity,
            prefix,
            offset: 0,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.offset < self.prefix.len() {
            let this = &mut *self;
            let rest = &this.prefix[this.offset..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.offset += n;
            this.activity.touch();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        res
    }
}

impl<T: super::splice::SpliceOut> super::splice::SpliceOut for IdleIo<T> {
    fn can_splice(&self) -> bool {
        self.inner.can_splice()
    }

    fn poll_splice(
        &mut self,
        cx: &mut Context<'_>,
        pipe: &mut super::splice::Pipe,
    ) -> Poll<std::io::Result<usize>> {
        let res = self.inner.poll_splice(cx, pipe);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_connection_idles_out_only_after_a_whole_quiet_idle_period() {
        let activity = Activity::default();
        let tick = Duration::from_secs(15);
        let mut watch = IdleWatch::new(Duration::from_secs(60), &activity);
        assert!(!watch.on_tick(tick, &activity, false));
        assert!(!watch.on_tick(tick, &activity, false));
        activity.touch();
        assert!(
            !watch.on_tick(tick, &activity, false),
            "activity restarts the count"
        );
        for _ in 0..3 {
            assert!(!watch.on_tick(tick, &activity, false));
        }
        assert!(
            !watch.on_tick(tick, &activity, true),
            "a request in flight is not idle"
        );
        for _ in 0..3 {
            assert!(!watch.on_tick(tick, &activity, false));
        }
        assert!(watch.on_tick(tick, &activity, false));
    }
}
