//! Sending large cached bodies on plain TCP connections without copying them.
//!
//! A body stored in pages of its own (`outpost_cache::pages`) is handed to the kernel by
//! reference: `vmsplice` puts its pages into a pipe, `splice` moves them from the pipe into
//! the socket, and the socket sends from the cache's pages as `sendfile` sends from a file's
//! (nginx serves its cache files that way). The response head in front of it is copied into
//! the same pipe, so head and body keep their order. At 256 KiB the copy this saves was ~40 %
//! of a hit's CPU (`bench/cache.sh`, perf); below `SPLICE_MIN` the two extra system calls cost
//! more than the copy. TLS connections encrypt into their own buffers and never splice.
//!
//! Pipes are kept per thread and lent to a connection only while bytes of a response wait in
//! one, so the descriptors in use follow the responses being sent, not the connections open.
//! They are bounded all the same (`max_pipes`: clients that stop reading hold theirs), and a
//! pipe the kernel would not make large enough (a user past `pipe-user-pages-soft`) is not
//! used: past either limit a body is copied, as it would be without this module.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::task::{ready, Context, Poll};

use prometheus_client::metrics::counter::Counter;
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::metrics::Metrics;

/// Slices this large or larger that lie in a page body are spliced.
pub const SPLICE_MIN: usize = 32 * 1024;
/// A head in front of the body larger than this is written the usual way first.
const HEAD_MAX: usize = 16 * 1024;
/// Pipe capacity asked for: a 256 KiB body and its head in one pass, and up to 1 MiB of a
/// larger body per pass (the kernel counts a slot per page; the default is 16 slots).
const PIPE_SIZE: libc::c_int = 1 << 20;
/// A pipe smaller than this is closed rather than used: a body would take many passes of two
/// system calls each, where one copy does.
const PIPE_MIN: libc::c_int = 256 * 1024;
/// Idle pipes a thread keeps for the next response.
const POOL_MAX: usize = 4;

thread_local! {
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// Pipes open in the process, pooled or lent.
static PIPES: AtomicUsize = AtomicUsize::new(0);

/// At most this many pipes: 512, or fewer where their descriptors (two each) would pass an
/// eighth of the process's descriptor limit, so that slow clients holding pipes cannot starve
/// `accept`.
fn max_pipes() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit into the struct given.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        let fit = if rc == 0 {
            (limit.rlim_cur / 16) as usize
        } else {
            64
        };
        fit.min(512)
    })
}

/// A non-blocking pipe, and how many bytes in it are still to be sent.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: File,
    held: usize,
}

impl Pipe {
    /// An empty pipe from the thread's pool, or a new one; None where none may or can be had
    /// now (the write is copied instead).
    pub fn take() -> Option<Pipe> {
        if let Some(pipe) = POOL.with_borrow_mut(Vec::pop) {
            return Some(pipe);
        }
        if PIPES.fetch_add(1, Ordering::Relaxed) >= max_pipes() {
            PIPES.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        match Pipe::new() {
            Ok(pipe) => Some(pipe),
            Err(e) => {
                PIPES.fetch_sub(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "no pipe for a large body; copied instead");
                None
            }
        }
    }

    /// A new pipe of at least `PIPE_MIN`; the caller has counted it in `PIPES`.
    fn new() -> io::Result<Pipe> {
        let mut fds: [libc::c_int; 2] = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array, which has room for two.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just made by pipe2 and belong to nothing else.
        #[allow(unsafe_code)]
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // The kernel refuses the size (EPERM) to a user past `pipe-user-pages-soft`, and then
        // the pipe keeps 2 pages: too small to be worth it.
        // SAFETY: F_SETPIPE_SZ takes an integer and touches no memory of ours.
        #[allow(unsafe_code)]
        let size = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
        if size < PIPE_MIN {
            return Err(io::Error::other(format!("pipe size {size}")));
        }
        Ok(Pipe {
            read,
            write: File::from(write),
            held: 0,
        })
    }

    /// Gives an empty pipe back to the thread's pool; one still holding bytes is closed.
    pub fn release(self) {
        if self.held == 0 {
            POOL.with_borrow_mut(|pool| {
                if pool.len() < POOL_MAX {
                    pool.push(self);
                }
            });
        }
    }

    /// Bytes in the pipe not yet sent.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Copies `bufs` into the pipe (a response head: small).
    fn copy_in(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let n = (&self.write).write_vectored(bufs)?;
        self.held += n;
        Ok(n)
    }

    /// Puts references to the pages of `body`, which must lie in a page body
    /// (`outpost_cache::pages::is_page_body`), into the pipe.
    fn reference(&mut self, body: &[u8]) -> io::Result<usize> {
        debug_assert!(outpost_cache::pages::is_page_body(body));
        let iov = libc::iovec {
            iov_base: body.as_ptr() as *mut libc::c_void,
            iov_len: body.len(),
        };
        // SAFETY: `iov` describes `body`, readable for the call. Without SPLICE_F_GIFT the
        // kernel takes references to the pages and reads them later, while the socket sends.
        // That is sound only for memory nobody writes again: a page body is a read-only
        // mapping of its own, never reused by an allocator, whose pages the kernel's
        // references keep alive, unchanged, after it is unmapped (see outpost_cache::pages).
        #[allow(unsafe_code)]
        let n = unsafe { libc::vmsplice(self.write.as_raw_fd(), &iov, 1, libc::SPLICE_F_NONBLOCK) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        self.held += n as usize;
        Ok(n as usize)
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        PIPES.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a connection's writer counts (see `Metrics::spliced_bytes`, `splice_fallbacks`).
#[derive(Clone, Default)]
pub struct SpliceCounters {
    pub bytes: Counter,
    pub no_pipe: Counter,
    pub failed: Counter,
}

impl SpliceCounters {
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            bytes: metrics.spliced_bytes.clone(),
            no_pipe: metrics.splice_no_pipe.clone(),
            failed: metrics.splice_failed.clone(),
        }
    }
}

/// A transport that can send bytes out of a pipe (a plain TCP socket).
pub trait SpliceOut {
    fn can_splice(&self) -> bool {
        false
    }

    /// Moves bytes out of `pipe` (which holds some) into the transport: Ready(Ok(n > 0)).
    fn poll_splice(&mut self, _cx: &mut Context<'_>, _pipe: &mut Pipe) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::ErrorKind::Unsupported.into()))
    }
}

impl SpliceOut for TcpStream {
    fn can_splice(&self) -> bool {
        true
    }

    fn poll_splice(&mut self, cx: &mut Context<'_>, pipe: &mut Pipe) -> Poll<io::Result<usize>> {
        let (from, to, len) = (pipe.read.as_raw_fd(), self.as_raw_fd(), pipe.held);
        loop {
            ready!(self.poll_write_ready(cx))?;
            let moved = self.try_io(Interest::WRITABLE, || {
                // SAFETY: two open descriptors and no offsets (a pipe and a socket are
                // streams); no memory of ours is passed. (splice has no MSG_NOSIGNAL: a closed
                // peer raises SIGPIPE, which Rust's runtime ignores, and EPIPE is returned.)
                #[allow(unsafe_code)]
                let n = unsafe {
                    libc::splice(
                        from,
                        std::ptr::null_mut(),
                        to,
                        std::ptr::null_mut(),
                        len,
                        libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match moved {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    pipe.held -= n;
                    return Poll::Ready(Ok(n));
                }
                // Readiness was cleared: wait for the socket to have room again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl<T> SpliceOut for tokio_rustls::server::TlsStream<T> {}

/// Where `bufs` (one write of a response) has a slice to splice: at least `SPLICE_MIN` bytes
/// of a page body, behind at most `HEAD_MAX` bytes of other slices.
pub fn splice_at(bufs: &[IoSlice<'_>]) -> Option<usize> {
    let at = bufs.iter().position(|b| b.len() >= SPLICE_MIN)?;
    let head: usize = bufs[..at].iter().map(|b| b.len()).sum();
    (head <= HEAD_MAX && outpost_cache::pages::is_page_body(&bufs[at])).then_some(at)
}

/// What `fill` put into a pipe: head bytes copied, body bytes referenced.
pub struct Filled {
    pub copied: usize,
    pub referenced: usize,
}

/// Puts `bufs[..at]` (copied) and as much of `bufs[at]` (by reference) as fits into an empty
/// `pipe`. Err only when nothing was taken.
pub fn fill(pipe: &mut Pipe, bufs: &[IoSlice<'_>], at: usize) -> io::Result<Filled> {
    debug_assert_eq!(pipe.held, 0);
    let head: usize = bufs[..at].iter().map(|b| b.len()).sum();
    let mut copied = 0;
    if head > 0 {
        copied = pipe.copy_in(&bufs[..at])?;
        if copied < head {
            return Ok(Filled {
                copied,
                referenced: 0,
            });
        }
    }
    let referenced = match pipe.reference(&bufs[at]) {
        Ok(n) => n,
        Err(e) if copied == 0 => return Err(e),
        // The head is in: the body comes again with the next write.
        Err(_) => 0,
    };
    Ok(Filled { copied, referenced })
}
