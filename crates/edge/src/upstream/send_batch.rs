//! Request heads for origins sent together: a single-worker PoP holds the heads its requests
//! write to plain-HTTP/1.1 origin connections during a pass over its ready tasks, and sends
//! them all at the end of the pass in one io_uring submission, instead of one `send` each as
//! the tasks run.
//!
//! Why: the first send to a sleeping origin wakes it. When the origin shares the proxy's CPU
//! (a sidecar, a local app server, every benchmark on one machine) and the proxy has used more
//! than its fair share, the kernel (EEVDF) switches to the origin at once; the origin answers
//! the one request it has, sleeps, and the pair ping-pongs, two context switches per request
//! (`bench/sched.sh` counts them). Sent in one submission, the heads are all in the origin's
//! sockets before the proxy can be preempted (the kernel does not preempt a task inside a
//! system call here), so the origin finds the whole batch when it runs. Measured on the 2-CPU
//! bench VM, 1 KiB pass-through with nginx on the proxy's CPU: preemptions went from ~155 to
//! ~10 per 1,000 requests, the proxy's system time per request from ~13 to ~10 µs, req/s up
//! 5-13 % (`bench/results/2026-12-06-passthrough-6-batched-sends.md`). With the origin on
//! another machine the gain is the system calls saved: one `io_uring_enter` for the batch.
//! (On a fully preemptible kernel the switch can come inside the submission too.)
//!
//! What the end of a pass is: a flusher task, woken when the first head of a batch is held,
//! yields once (tokio runs a yielded task after its next poll of the I/O driver, so after the
//! tasks that were ready before it and those that driver poll wakes) and then sends the batch.
//! A head waits at most one pass; a busy worker (long transfers keep its queue full) still
//! reaches the flusher, as tokio polls the driver every 61 tasks.
//!
//! Scope: the current-thread runtime (`--workers 1`) only. In the work-stealing runtime a task
//! can move between threads, and its held head would wait for another thread's flusher.
//! Where io_uring or its send operation is not available (a kernel before 5.6,
//! `kernel.io_uring_disabled`, a container's seccomp profile, gVisor; `install` probes) or
//! `--io-uring off` is set, heads go out one `send` each, as before.
//!
//! Why by hand: tokio's I/O is readiness-based (epoll) and has no batched submission; the
//! io_uring runtimes (tokio-uring, glommio, monoio) would replace tokio and hyper under the
//! whole PoP. Only the sends use the ring here; reads stay on tokio.

use std::cell::RefCell;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::net::TcpStream;

/// Submission queue size: a larger batch goes in several submissions.
const RING_ENTRIES: u32 = 256;

/// Where a held head stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Held,
    /// The bytes the batch sent (0 when the socket was full: the task writes them itself).
    Sent(usize),
    Failed(i32),
    /// Its future was dropped before the batch went out: not sent.
    Cancelled,
}

/// One held head, shared by its future and the batch. The lock is held while the batch is in
/// the kernel, and the future's drop takes it: a socket whose head is being sent cannot be
/// closed under the submission.
struct Slot {
    inner: Mutex<SlotInner>,
}

struct SlotInner {
    state: State,
    /// The task to wake when the batch has gone out (updated on every poll).
    waker: Waker,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Held {
    fd: i32,
    head: Bytes,
    slot: Arc<Slot>,
}

struct Batcher {
    ring: io_uring::IoUring,
    held: Vec<Held>,
    /// The flusher's waker while it waits for a batch to start.
    flusher: Option<Waker>,
    /// Submissions made and heads they carried, for the tests.
    submissions: u64,
    heads: u64,
}

thread_local! {
    /// Set on the thread that runs a current-thread runtime with batching installed.
    static BATCHER: RefCell<Option<Batcher>> = const { RefCell::new(None) };
}

/// Turns batching on for `runtime`, which must be a current-thread runtime driven from this
/// thread (`block_on` called here). Fails, changing nothing, where io_uring or its send
/// operation is unavailable.
pub fn install(runtime: &tokio::runtime::Runtime) -> io::Result<()> {
    if runtime.handle().runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "origin heads are batched on a current-thread runtime only",
        ));
    }
    let ring = io_uring::IoUring::new(RING_ENTRIES)?;
    // Rings exist since Linux 5.1, their send operation since 5.6, and sandboxes (gVisor)
    // implement only some operations: without it every batched send would fail.
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    if !probe.is_supported(io_uring::opcode::Send::CODE) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this kernel's io_uring has no send operation",
        ));
    }
    BATCHER.with(|b| {
        *b.borrow_mut() = Some(Batcher {
            ring,
            held: Vec::new(),
            flusher: None,
            submissions: 0,
            heads: 0,
        })
    });
    runtime.spawn(flusher());
    Ok(())
}

async fn flusher() {
    loop {
        let installed = std::future::poll_fn(|cx| {
            BATCHER.with(|b| match b.borrow_mut().as_mut() {
                None => Poll::Ready(false),
                Some(batcher) if batcher.held.is_empty() => {
                    batcher.flusher = Some(cx.waker().clone());
                    Poll::Pending
                }
                Some(_) => Poll::Ready(true),
            })
        })
        .await;
        if !installed {
            return;
        }
        tokio::task::yield_now().await;
        flush();
    }
}

/// Sends every held head in one submission and wakes their tasks.
fn flush() {
    let batch = BATCHER.with(|b| {
        b.borrow_mut()
            .as_mut()
            .map(|batcher| std::mem::take(&mut batcher.held))
    });
    let Some(batch) = batch else { return };
    let chunks: Vec<&[Held]> = batch.chunks(RING_ENTRIES as usize).collect();
    let broken = BATCHER.with(|b| {
        let mut b = b.borrow_mut();
        let batcher = b.as_mut()?;
        for (n, chunk) in chunks.iter().enumerate() {
            batcher.submissions += 1;
            batcher.heads += chunk.len() as u64;
            if let Err(e) = submit(&mut batcher.ring, chunk) {
                return Some((n, e));
            }
        }
        None
    });
    if let Some((failed, e)) = broken {
        // The ring's state is unknown: some heads of the failed chunk may be in the kernel.
        // Their requests fail (their connections are then closed, never reused), and their
        // buffers are kept for any send still in flight; the ring is dropped with whatever it
        // had not submitted. Later chunks never reached it: their tasks write their heads
        // themselves. This thread sends heads one by one from now on.
        tracing::error!(error = %e, "io_uring failed; origin request heads are sent one by one from now on");
        let errno = e.raw_os_error().unwrap_or(libc::EIO);
        for (n, chunk) in chunks.iter().enumerate().skip(failed) {
            for held in chunk.iter() {
                let mut slot = held.slot.lock();
                if slot.state == State::Held {
                    slot.state = if n == failed {
                        State::Failed(errno)
                    } else {
                        State::Sent(0)
                    };
                }
                if n == failed {
                    std::mem::forget(held.head.clone());
                }
            }
        }
        BATCHER.with(|b| *b.borrow_mut() = None);
    }
    for held in batch {
        let waker = held.slot.lock().waker.clone();
        waker.wake();
    }
}

/// Sends one chunk of a batch and waits for every send it queued to complete. An error means
/// the ring can no longer be trusted (see `flush`).
fn submit(ring: &mut io_uring::IoUring, chunk: &[Held]) -> io::Result<()> {
    // Locked for the whole submission: see `Slot`.
    let mut slots: Vec<MutexGuard<'_, SlotInner>> = chunk.iter().map(|h| h.slot.lock()).collect();
    let mut queued = 0;
    {
        let mut queue = ring.submission();
        for (i, held) in chunk.iter().enumerate() {
            if slots[i].state != State::Held {
                continue;
            }
            let len = u32::try_from(held.head.len()).unwrap_or(u32::MAX);
            let entry = io_uring::opcode::Send::new(io_uring::types::Fd(held.fd), held.head.as_ptr(), len)
                // Never wait for room in a socket (its task writes what did not fit) nor
                // raise SIGPIPE for a closed one.
                .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                .build()
                .user_data(i as u64);
            // SAFETY: the buffer (`held.head`, a `Bytes` this batch holds a reference to) stays
            // valid until the completion is reaped below, before this function returns (if the
            // ring fails, `flush` keeps the buffers for good). The descriptor names this head's
            // socket: its state is still `Held`, so neither the future that held it nor the
            // `BatchedStream` has been dropped (both cancel under this slot's lock, which is
            // held here, and the stream's drop runs before its socket closes); the kernel
            // takes its own reference to the socket when the send is submitted. The queue has
            // room: a chunk is at most `RING_ENTRIES` entries and every submission leaves the
            // queue empty.
            #[allow(unsafe_code)]
            let pushed = unsafe { queue.push(&entry) };
            if pushed.is_err() {
                slots[i].state = State::Sent(0);
                continue;
            }
            queued += 1;
        }
    }
    let mut completed = 0;
    while completed < queued {
        match ring.submit_and_wait(queued - completed) {
            Ok(_) => {}
            // Interrupted, or the completion queue is momentarily full: what was queued is still
            // queued or in flight, and asking again submits or waits for it.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)) => {
                for completion in ring.completion() {
                    completed += record(&mut slots, completion);
                }
                continue;
            }
            Err(e) => return Err(e),
        }
        for completion in ring.completion() {
            completed += record(&mut slots, completion);
        }
    }
    Ok(())
}

fn record(slots: &mut [MutexGuard<'_, SlotInner>], completion: io_uring::cqueue::Entry) -> usize {
    let Some(slot) = slots.get_mut(completion.user_data() as usize) else {
        return 0;
    };
    let result = completion.result();
    slot.state = if result >= 0 {
        State::Sent(result as usize)
    } else if matches!(-result, libc::EAGAIN | libc::EINVAL | libc::EOPNOTSUPP) {
        // Nothing sent (a full socket, or an operation this kernel refuses after all): the
        // task writes the head itself.
        State::Sent(0)
    } else {
        State::Failed(-result)
    };
    1
}

/// Batches made on this thread and the heads they carried (None without batching).
pub fn stats() -> Option<(u64, u64)> {
    BATCHER.with(|b| b.borrow().as_ref().map(|b| (b.submissions, b.heads)))
}

/// A plain origin socket whose request heads may go out in a batch. Dropping it cancels a head
/// still held for it before the socket closes, so a held head never goes to whatever socket
/// reuses the descriptor, even if the future that held it was leaked rather than dropped.
pub struct BatchedStream {
    stream: TcpStream,
    held: Mutex<Option<Arc<Slot>>>,
}

impl BatchedStream {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            held: Mutex::new(None),
        }
    }

    fn hold(&self, slot: Option<Arc<Slot>>) -> Option<Arc<Slot>> {
        std::mem::replace(&mut *self.held.lock().unwrap_or_else(|p| p.into_inner()), slot)
    }
}

impl Drop for BatchedStream {
    fn drop(&mut self) {
        if let Some(slot) = self.hold(None) {
            cancel(&slot);
        }
    }
}

fn cancel(slot: &Slot) {
    let mut slot = slot.lock();
    if slot.state == State::Held {
        slot.state = State::Cancelled;
    }
}

impl tokio::io::AsyncRead for BatchedStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for BatchedStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Whether heads are batched on this thread.
pub(crate) fn active() -> bool {
    BATCHER.with(|b| b.borrow().is_some())
}

/// Writes `head` on `stream` with the batch at the end of this pass. Returns how many bytes
/// went out; the caller writes the rest (all of it when batching is off on this thread).
pub(crate) async fn send(stream: &BatchedStream, head: &[u8]) -> io::Result<usize> {
    if !active() {
        return Ok(0);
    }
    HeldSend {
        stream,
        head,
        slot: None,
    }
    .await
}

struct HeldSend<'a> {
    /// Borrowed while the head may be in a batch; the socket's drop cancels it besides.
    stream: &'a BatchedStream,
    head: &'a [u8],
    slot: Option<Arc<Slot>>,
}

impl std::future::Future for HeldSend<'_> {
    type Output = io::Result<usize>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(slot) = &self.slot {
            let mut inner = slot.lock();
            let done = match inner.state {
                State::Held | State::Cancelled => {
                    if !inner.waker.will_wake(cx.waker()) {
                        inner.waker = cx.waker().clone();
                    }
                    return Poll::Pending;
                }
                State::Sent(n) => Ok(n),
                State::Failed(errno) => Err(io::Error::from_raw_os_error(errno)),
            };
            drop(inner);
            self.stream.hold(None);
            self.slot = None;
            return Poll::Ready(done);
        }
        let slot = Arc::new(Slot {
            inner: Mutex::new(SlotInner {
                state: State::Held,
                waker: cx.waker().clone(),
            }),
        });
        let held = Held {
            fd: self.stream.stream.as_raw_fd(),
            // Owned by the batch: the caller's buffer may be gone before a leaked future's
            // head is cancelled (by its socket's drop).
            head: Bytes::copy_from_slice(self.head),
            slot: slot.clone(),
        };
        let queued = BATCHER.with(|b| {
            let mut b = b.borrow_mut();
            let batcher = b.as_mut()?;
            batcher.held.push(held);
            Some(batcher.flusher.take())
        });
        match queued {
            Some(flusher) => {
                if let Some(flusher) = flusher {
                    flusher.wake();
                }
                self.stream.hold(Some(slot.clone()));
                self.slot = Some(slot);
                Poll::Pending
            }
            // Batching was turned off on this thread since `send` looked: the caller sends it.
            None => Poll::Ready(Ok(0)),
        }
    }
}

impl Drop for HeldSend<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            cancel(&slot);
            self.stream.hold(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::Duration;

    fn runtime_with_batching() -> Option<tokio::runtime::Runtime> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        match install(&rt) {
            Ok(()) => Some(rt),
            Err(e) => {
                // A kernel or sandbox without io_uring: what these tests check cannot happen.
                eprintln!("io_uring unavailable here ({e}); skipping");
                None
            }
        }
    }

    fn uninstall() {
        BATCHER.with(|b| *b.borrow_mut() = None);
    }

    /// `n` connected pairs: the client sides as origin sockets, the accepted sides as std
    /// streams that give up reading after `wait`.
    async fn pairs(n: usize, wait: Duration) -> (Vec<BatchedStream>, Vec<std::net::TcpStream>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        let mut servers = Vec::new();
        for _ in 0..n {
            clients.push(BatchedStream::new(TcpStream::connect(addr).await.unwrap()));
            let (server, _) = listener.accept().unwrap();
            server.set_read_timeout(Some(wait)).unwrap();
            servers.push(server);
        }
        (clients, servers)
    }

    /// What arrived on `server` within its read timeout.
    fn received(server: &mut std::net::TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0; 256];
        loop {
            match server.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return got
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Polls `future` once, as a task of the runtime would before the flusher has run.
    fn poll_once<F: std::future::Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn heads_held_in_one_pass_go_out_together_and_each_arrives_whole() {
        let Some(rt) = runtime_with_batching() else { return };
        let (clients, mut servers) = rt.block_on(pairs(20, Duration::from_secs(5)));
        let heads: Vec<Bytes> = (0..20)
            .map(|i| Bytes::from(format!("GET /{i} HTTP/1.1\r\nhost: origin\r\n\r\n")))
            .collect();
        let sent = rt.block_on(async {
            let tasks: Vec<_> = clients
                .into_iter()
                .zip(heads.clone())
                .map(|(stream, head)| {
                    tokio::spawn(async move {
                        let n = send(&stream, &head).await.unwrap();
                        (n, stream)
                    })
                })
                .collect();
            let mut sent = Vec::new();
            for t in tasks {
                sent.push(t.await.unwrap());
            }
            sent
        });
        for (i, ((n, _stream), server)) in sent.iter().zip(servers.iter_mut()).enumerate() {
            assert_eq!(*n, heads[i].len(), "head {i} went out whole in the batch");
            let mut got = vec![0; heads[i].len()];
            server.read_exact(&mut got).unwrap();
            assert_eq!(got, heads[i]);
        }
        assert_eq!(
            stats(),
            Some((1, 20)),
            "the twenty heads went out in one submission"
        );
        uninstall();
    }

    #[test]
    fn a_head_whose_request_was_dropped_before_its_batch_is_never_sent() {
        let Some(rt) = runtime_with_batching() else { return };
        let (clients, mut servers) = rt.block_on(pairs(2, Duration::from_millis(300)));
        rt.block_on(async {
            let dropped = Bytes::from_static(b"GET /dropped HTTP/1.1\r\n\r\n");
            {
                let mut held = std::pin::pin!(send(&clients[0], &dropped));
                // Held: pending until the flusher runs, which it cannot while this task does.
                assert!(poll_once(held.as_mut()).is_pending());
            }
            // The dropped request's socket stays open through the batch below.
            let kept = Bytes::from_static(b"GET /kept HTTP/1.1\r\n\r\n");
            assert_eq!(send(&clients[1], &kept).await.unwrap(), kept.len());
        });
        assert_eq!(received(&mut servers[1]), b"GET /kept HTTP/1.1\r\n\r\n");
        assert_eq!(
            received(&mut servers[0]),
            b"",
            "nothing went out for the dropped request"
        );
        assert_eq!(stats(), Some((1, 2)), "both were in the batch; one was cancelled");
        uninstall();
    }

    #[test]
    fn a_head_left_behind_by_a_leaked_future_never_reaches_the_socket_that_reuses_its_descriptor() {
        let Some(rt) = runtime_with_batching() else { return };
        let (mut clients, _servers) = rt.block_on(pairs(1, Duration::from_millis(300)));
        let old = clients.pop().unwrap();
        let old_fd = old.stream.as_raw_fd();
        let secret = Bytes::from_static(b"GET /private HTTP/1.1\r\nauthorization: Bearer s3cret\r\n\r\n");
        rt.block_on(async {
            let mut held = Box::pin(send(&old, &secret));
            assert!(poll_once(held.as_mut()).is_pending());
            // Leaked, not dropped: its own drop never cancels the head.
            std::mem::forget(held);
        });
        drop(old);
        let (mut fresh, mut fresh_servers) = rt.block_on(pairs(1, Duration::from_millis(300)));
        assert_eq!(fresh[0].stream.as_raw_fd(), old_fd, "the descriptor was reused");
        rt.block_on(async {
            let head = Bytes::from_static(b"GET /next HTTP/1.1\r\n\r\n");
            assert_eq!(send(&fresh[0], &head).await.unwrap(), head.len());
        });
        assert_eq!(received(&mut fresh_servers[0]), b"GET /next HTTP/1.1\r\n\r\n");
        drop(fresh.pop());
        uninstall();
    }

    #[test]
    fn a_worker_that_never_runs_out_of_tasks_still_sends_held_heads() {
        let Some(rt) = runtime_with_batching() else { return };
        let (clients, mut servers) = rt.block_on(pairs(1, Duration::from_secs(5)));
        let spins = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let spun_when_sent = rt.block_on(async {
            // Always ready again: the worker never finds its queue empty while this runs.
            let busy = tokio::spawn({
                let spins = spins.clone();
                async move {
                    while spins.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 1_000_000 {
                        tokio::task::yield_now().await;
                    }
                }
            });
            let head = Bytes::from_static(b"GET /busy HTTP/1.1\r\n\r\n");
            assert_eq!(send(&clients[0], &head).await.unwrap(), head.len());
            let spun = spins.load(std::sync::atomic::Ordering::Relaxed);
            busy.abort();
            spun
        });
        assert!(
            spun_when_sent < 100,
            "sent within a pass or two, not after the busy task ({spun_when_sent} spins)"
        );
        let head = b"GET /busy HTTP/1.1\r\n\r\n";
        let mut got = vec![0; head.len()];
        servers[0].read_exact(&mut got).unwrap();
        assert_eq!(&got, head);
        uninstall();
    }

    #[test]
    fn batching_needs_a_current_thread_runtime() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let refused = install(&rt).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::Unsupported);
        assert!(!active());
    }

    #[test]
    fn without_batching_the_caller_sends_the_head_itself() {
        uninstall();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (clients, _servers) = pairs(1, Duration::from_secs(1)).await;
            let head = Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n");
            assert_eq!(send(&clients[0], &head).await.unwrap(), 0);
        });
    }
}
