//! A bound on HTTP/2 control frames a client may send: SETTINGS and PING floods.
//!
//! Every SETTINGS and PING frame obliges the server to answer (an ACK, a PONG). hyper's h2
//! keeps at most one unsent answer of each kind, so a flood costs bounded memory, but it has no
//! frame-rate limit: a client can keep a core busy answering. This wrapper reads the client's
//! byte stream alongside hyper, recognises the HTTP/2 connection preface and frame headers,
//! and ends the connection when SETTINGS and PING frames (not their ACKs) exceed a budget per
//! window. HTTP/1.1 connections are passed through after their first bytes; the layer above
//! (`write_batch`) asks which protocol the connection speaks.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;

/// SETTINGS and PING frames a connection may send per window. Browsers send a handful per
/// connection, gRPC keepalives one every few seconds; a flood sends thousands.
pub const CONTROL_FRAME_BUDGET: u32 = 250;
pub const CONTROL_FRAME_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[error("more than {CONTROL_FRAME_BUDGET} HTTP/2 SETTINGS and PING frames in {CONTROL_FRAME_WINDOW:?}")]
pub struct ControlFrameFlood;

enum State {
    /// Comparing the first bytes with the HTTP/2 preface.
    Preface(usize),
    /// Inside HTTP/2 frames: bytes of the current frame header seen, payload bytes to skip.
    Frames { head: [u8; 9], have: usize, skip: u64 },
    /// Not HTTP/2 (or flagged): nothing more to inspect.
    Passthrough,
}

pub struct H2Guard<I> {
    inner: I,
    state: State,
    window_start: Instant,
    in_window: u32,
    on_flood: Option<Box<dyn FnOnce() + Send>>,
}

impl<I> H2Guard<I> {
    /// `h2`: Some(false) when ALPN chose HTTP/1.1 (nothing to inspect); otherwise the preface
    /// decides. `on_flood` runs once when a connection is cut off.
    pub fn new(inner: I, h2: Option<bool>, on_flood: impl FnOnce() + Send + 'static) -> Self {
        Self {
            inner,
            state: if h2 == Some(false) {
                State::Passthrough
            } else {
                State::Preface(0)
            },
            window_start: Instant::now(),
            in_window: 0,
            on_flood: Some(Box::new(on_flood)),
        }
    }

    #[cfg(test)]
    pub fn get_ref(&self) -> &I {
        &self.inner
    }

    #[cfg(test)]
    pub fn get_mut(&mut self) -> &mut I {
        &mut self.inner
    }

    /// Whether the client opened with the HTTP/2 preface (and was not cut off).
    pub fn speaks_http2(&self) -> bool {
        matches!(self.state, State::Frames { .. })
    }

    /// Runs the client's new bytes through the frame reader; Err when the budget is exceeded.
    fn inspect(&mut self, mut bytes: &[u8]) -> Result<(), ControlFrameFlood> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Passthrough => return Ok(()),
                State::Preface(seen) => {
                    let n = bytes.len().min(PREFACE.len() - *seen);
                    if bytes[..n] != PREFACE[*seen..*seen + n] {
                        self.state = State::Passthrough;
                        return Ok(());
                    }
                    *seen += n;
                    bytes = &bytes[n..];
                    if *seen == PREFACE.len() {
                        self.state = State::Frames {
                            head: [0; 9],
                            have: 0,
                            skip: 0,
                        };
                    }
                }
                State::Frames { head, have, skip } => {
                    if *skip > 0 {
                        let n = (*skip).min(bytes.len() as u64) as usize;
                        *skip -= n as u64;
                        bytes = &bytes[n..];
                        continue;
                    }
                    let n = (9 - *have).min(bytes.len());
                    head[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    if *have < 9 {
                        continue;
                    }
                    *have = 0;
                    *skip = u64::from(u32::from_be_bytes([0, head[0], head[1], head[2]]));
                    let (kind, flags) = (head[3], head[4]);
                    if (kind == SETTINGS || kind == PING) && flags & ACK == 0 {
                        let now = Instant::now();
                        if now.duration_since(self.window_start) > CONTROL_FRAME_WINDOW {
                            self.window_start = now;
                            self.in_window = 0;
                        }
                        self.in_window += 1;
                        if self.in_window > CONTROL_FRAME_BUDGET {
                            self.state = State::Passthrough;
                            if let Some(f) = self.on_flood.take() {
                                f();
                            }
                            return Err(ControlFrameFlood);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for H2Guard<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if matches!(this.state, State::Passthrough) && this.on_flood.is_none() {
            // Cut off earlier: every later read fails too.
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, ControlFrameFlood)));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            if !matches!(this.state, State::Passthrough) {
                if let Err(e) = this.inspect(&buf.filled()[before..]) {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
            }
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for H2Guard<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<I: super::splice::SpliceOut> super::splice::SpliceOut for H2Guard<I> {
    fn can_splice(&self) -> bool {
        self.inner.can_splice()
    }

    fn poll_splice(
        &mut self,
        cx: &mut Context<'_>,
        pipe: &mut super::splice::Pipe,
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_splice(cx, pipe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            0,
        ];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn counts_settings_and_pings_but_not_acks_and_ignores_http1() {
        let mut g = H2Guard::new((), None, || {});
        let mut bytes = PREFACE.to_vec();
        for _ in 0..CONTROL_FRAME_BUDGET {
            bytes.extend(frame(PING, 0, &[0; 8]));
            bytes.extend(frame(PING, ACK, &[0; 8]));
        }
        // Fed in awkward pieces: frame headers split across reads.
        for piece in bytes.chunks(7) {
            assert!(g.inspect(piece).is_ok());
        }
        assert!(
            g.inspect(&frame(SETTINGS, 0, &[])).is_err(),
            "one over the budget"
        );

        let mut h1 = H2Guard::new((), None, || {});
        let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(1000);
        assert!(h1.inspect(&req).is_ok());
        assert!(matches!(h1.state, State::Passthrough));
    }
}
