//! One accept loop per configured listener and one task per client connection.
//!
//! Plain listeners speak HTTP/1.1 and HTTP/2 with prior knowledge (h2c), told apart by the
//! connection preface; TLS listeners pick the protocol by ALPN. Each connection ends gracefully
//! (in-flight requests finish) when it idles out, when its listener is removed by a reload, or
//! when the PoP drains.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::head_timer::HeadTimer;
use super::housekeeping::Housekeeping;
use super::idle::{Activity, IdleIo, IdleWatch};
use super::tls::classify_handshake_error;
use crate::metrics::{HandshakeLabels, ListenerLabels, RefusedLabels};
use crate::proxy::headers::ClientAddr;
use crate::proxy::{self, ConnInfo};
use crate::Shared;

/// A bound listener and the means to stop it.
pub struct RunningListener {
    pub name: String,
    pub configured: SocketAddr,
    pub local_addr: SocketAddr,
    pub tls: bool,
    pub stop: CancellationToken,
}

pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

pub fn spawn(shared: Arc<Shared>, listener: TcpListener, name: String, stop: CancellationToken) {
    let name: Arc<str> = name.into();
    let tracker = shared.connections.clone();
    tracker.clone().spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
                r = listener.accept() => r,
            };
            match accepted {
                Ok((stream, client)) => {
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    let name = name.clone();
                    let stop = stop.clone();
                    tracker.spawn(async move { serve(shared, stream, client, name, stop).await });
                }
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
}

async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    client: SocketAddr,
    listener: Arc<str>,
    stop: CancellationToken,
) {
    let snapshot = shared.snapshot.load_full();
    let refuse = |reason: &'static str| {
        let labels = RefusedLabels {
            listener: listener.to_string(),
            reason,
        };
        shared.metrics.connections_refused.get_or_create(&labels).inc();
    };
    // Dual-stack sockets report IPv4 clients as ::ffff:a.b.c.d; every decision wants a.b.c.d.
    let mut client = SocketAddr::new(client.ip().to_canonical(), client.port());
    let mut stream = stream;
    let mut early_bytes = Vec::new();
    if snapshot.proxy_protocol.contains(&*listener) {
        if !snapshot.client_ip.is_trusted(client.ip()) {
            refuse("untrusted_proxy");
            return;
        }
        match super::proxy_protocol::read_header(&mut stream, snapshot.timeouts.header).await {
            Ok((source, rest)) => {
                // LOCAL/UNKNOWN (the balancer's own checks) keep the peer address.
                if let Some(source) = source {
                    client = SocketAddr::new(source.ip().to_canonical(), source.port());
                }
                early_bytes = rest;
            }
            Err(e) => {
                tracing::debug!(peer = %client, error = %e, "PROXY header refused");
                refuse("proxy_protocol");
                return;
            }
        }
    }
    let Some(_slot) = IpSlot::take(&shared, client) else {
        refuse("per_ip_limit");
        return;
    };
    let gauge = shared
        .metrics
        .active_connections
        .get_or_create(&ListenerLabels {
            listener: listener.to_string(),
        })
        .clone();
    gauge.inc();
    let activity = Activity::default();
    let io = IdleIo::new(stream, activity.clone(), early_bytes);
    let tls_config = snapshot.tls.get(&*listener).cloned();
    match tls_config {
        None => {
            let conn = Arc::new(ConnInfo {
                shared: shared.clone(),
                listener,
                client,
                client_addr: ClientAddr::new(client.ip()),
                tls: false,
                sni: None,
                in_flight: Arc::default(),
            });
            drive(conn, io, None, activity, stop).await;
        }
        Some(config) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let handshake = tokio::time::timeout(snapshot.timeouts.tls_handshake, acceptor.accept(io)).await;
            let result = |result| HandshakeLabels {
                listener: listener.to_string(),
                result,
            };
            match handshake {
                Ok(Ok(tls)) => {
                    shared
                        .metrics
                        .tls_handshakes
                        .get_or_create(&result("success"))
                        .inc();
                    let (_, session) = tls.get_ref();
                    let sni = session.server_name().map(str::to_owned);
                    let h2 = session.alpn_protocol() == Some(b"h2");
                    let conn = Arc::new(ConnInfo {
                        shared: shared.clone(),
                        listener,
                        client,
                        client_addr: ClientAddr::new(client.ip()),
                        tls: true,
                        sni,
                        in_flight: Arc::default(),
                    });
                    drive(conn, tls, Some(h2), activity, stop).await;
                }
                Ok(Err(e)) => {
                    let reason = classify_handshake_error(&e);
                    shared.metrics.tls_handshakes.get_or_create(&result(reason)).inc();
                    tracing::debug!(%client, reason, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    shared
                        .metrics
                        .tls_handshakes
                        .get_or_create(&result("timeout"))
                        .inc();
                }
            }
        }
    }
    gauge.dec();
}

/// When a connection's next tick comes: a period after this one, or sooner when a streaming
/// response becomes overdue before that. One already overdue (an HTTP/2 stream aborted, whose
/// entry goes when its task is dropped) is looked at again a second later, not at once.
fn next_tick(
    now: tokio::time::Instant,
    tick: Duration,
    due: Option<tokio::time::Instant>,
) -> tokio::time::Instant {
    let next = now + tick;
    match due {
        Some(due) if due > now => next.min(due),
        Some(_) => next.min(now + Duration::from_secs(1)),
        None => next,
    }
}

/// How long a connection's task waits, after hyper is done with it, for the client to take
/// the bytes hyper's last pass left.
const FINISH_WRITES: Duration = Duration::from_secs(1);

/// Serves HTTP on an established connection until it ends, idles out, or is told to stop.
/// `alpn_h2`: Some(protocol) when ALPN decided, None to detect the h2 preface.
async fn drive<I>(
    conn: Arc<ConnInfo>,
    io: I,
    alpn_h2: Option<bool>,
    activity: Activity,
    stop: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + super::splice::SpliceOut + Unpin + Send + 'static,
{
    let snapshot = conn.shared.snapshot.load_full();
    let head_timer = HeadTimer::new();
    let mut builder = auto::Builder::new(SpawnBoxed);
    builder
        .http1()
        .timer(head_timer.clone())
        .header_read_timeout(snapshot.timeouts.header)
        .max_buf_size(snapshot.limits.max_header_bytes.max(8192))
        .keep_alive(true)
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(snapshot.limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .max_pending_accept_reset_streams(Some(64))
        .max_local_error_reset_streams(Some(256));
    let builder = match alpn_h2 {
        Some(true) => builder.http2_only(),
        Some(false) => builder.http1_only(),
        None => builder,
    };
    let idle = snapshot.timeouts.idle;
    let in_flight = conn.in_flight.clone();
    let shared = conn.shared.clone();
    let service = service_fn(move |req| proxy::handle(conn.clone(), req));
    let flood_shared = shared.clone();
    let io = super::h2_guard::H2Guard::new(io, alpn_h2, move || {
        tracing::info!("HTTP/2 SETTINGS/PING flood: connection closed");
        flood_shared.metrics.reject("h2_control_flood");
    });
    let splice_counters = super::splice::SpliceCounters::new(&shared.metrics);
    let (io, batcher) = super::write_batch::batched(io, splice_counters);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let mut connection = pin!(connection);
    // `stop` is a child of the PoP's drain token: it fires for a drain too.
    let mut stopped = pin!(stop.cancelled());
    // Four ticks per idle period (or head timeout, when shorter and HTTP/1 is possible): a
    // connection closes after between 1 and 1.25 idle periods of silence, a head that never
    // completes is cut off between 1 and 1.25 head timeouts after hyper started waiting for it.
    // HTTP/2 by ALPN has no head timer, so its idle connections wake less often.
    let period = if alpn_h2 == Some(true) {
        idle
    } else {
        idle.min(snapshot.timeouts.header)
    };
    let tick = (period / 4).max(Duration::from_millis(10));
    let mut ticker = pin!(tokio::time::sleep(tick));
    let mut last_tick = tokio::time::Instant::now();
    // A streaming response that becomes overdue (its client stopped reading) before the next
    // tick brings that tick forward to the moment it does: it is ended then, not up to a quarter
    // idle period later (15 s by default on an HTTP/2 connection chosen by ALPN).
    let mut streams_seen = 0;
    let (housekeeping, housekeeping_waker) = Housekeeping::new();
    let mut closing = false;
    // When a graceful shutdown began: an idle connection that has not finished it one period
    // later (at least a second) is dropped. An HTTP/2 shutdown needs the client to read (its
    // GOAWAY, the frames before it) and to answer a PING; a client that reads nothing at all
    // would otherwise keep the connection, and its buffers, for as long as it likes.
    let mut closing_since: Option<tokio::time::Instant> = None;
    let shutdown_grace = period.max(Duration::from_secs(1));
    let mut overdue = false;
    let mut idle_watch = IdleWatch::new(idle, &activity);
    let res = std::future::poll_fn(|cx| {
        if housekeeping.take_due(cx) {
            let mut hcx = Context::from_waker(&housekeeping_waker);
            if !closing && stopped.as_mut().poll(&mut hcx).is_ready() {
                closing = true;
                closing_since = Some(tokio::time::Instant::now());
                connection.as_mut().graceful_shutdown();
            }
            while ticker.as_mut().poll(&mut hcx).is_ready() {
                let now = tokio::time::Instant::now();
                let elapsed = now - last_tick;
                last_tick = now;
                ticker.as_mut().reset(next_tick(now, tick, in_flight.next_due()));
                // An expired head timer is seen by hyper when the connection is polled below.
                head_timer.check(std::time::Instant::now());
                let busy = in_flight.is_busy();
                if !closing && idle_watch.on_tick(elapsed, &activity, busy) {
                    closing = true;
                    closing_since = Some(tokio::time::Instant::now());
                    connection.as_mut().graceful_shutdown();
                }
                if !busy && closing_since.is_some_and(|since| since.elapsed() >= shutdown_grace) {
                    tracing::debug!("graceful shutdown not finished by an idle connection: dropped");
                    return Poll::Ready(Ok(()));
                }
                // A response past the pool's request timeout that hyper no longer polls: its
                // client stopped reading. An HTTP/2 stream is ended alone; an HTTP/1.1 response
                // only by dropping the connection, which lets go of its origin connection.
                if busy && in_flight.end_overdue(tokio::time::Instant::now()) {
                    overdue = true;
                    return Poll::Ready(Ok(()));
                }
            }
        }
        let polled = batcher.poll(cx, |cx| connection.as_mut().poll(cx));
        // A response started streaming: the tick comes no later than it could be overdue.
        if polled.is_pending() && in_flight.added() != streams_seen {
            streams_seen = in_flight.added();
            // (Not busy: what started has ended already, within this pass.)
            let due = in_flight.is_busy().then(|| in_flight.next_due()).flatten();
            if let Some(due) = due.filter(|due| *due < ticker.deadline()) {
                ticker.as_mut().reset(due);
                let _ = ticker
                    .as_mut()
                    .poll(&mut Context::from_waker(&housekeeping_waker));
            }
        }
        polled
    })
    .await;
    if overdue {
        tracing::debug!("a response outlived its request timeout unread: connection closed");
        return;
    }
    // What hyper's last pass left unsent (an upgrade's 101 on a full socket or in TLS's
    // buffer), bounded: a client that does not read is not waited for.
    if batcher.owes_writes() {
        let _ = tokio::time::timeout(FINISH_WRITES, std::future::poll_fn(|cx| batcher.poll_finish(cx))).await;
    }
    drop(batcher);
    if let Err(e) = res {
        // hyper answers an oversized head (431) itself and ends the connection with this error:
        // the request never reached the proxy, so it is counted here.
        let too_large =
            std::iter::successors(Some(&*e as &(dyn std::error::Error + 'static)), |e| e.source()).any(|c| {
                c.downcast_ref::<hyper::Error>()
                    .is_some_and(hyper::Error::is_parse_too_large)
            });
        if too_large {
            shared.metrics.reject("header_too_large");
        }
        tracing::trace!(error = %e, "client connection ended with an error");
    }
}

/// Runs what hyper spawns (a task per HTTP/2 stream): first in place, then, if it is not done,
/// as a task.
///
/// A stream whose response is ready at once (a cache hit, a refusal, an error page) finishes
/// in its first poll: its headers and body are queued in h2, and nothing is left to wait for.
/// Polling that first time here, inside the connection's pass that accepted the stream, saves
/// the task a stream would otherwise get (allocated, scheduled, polled once, freed) and the
/// wake-up of the connection it would then send from that task; the frames go out in the same
/// pass, and a cache hit over HTTP/2 costs ~1,300 fewer instructions (30.5k against 31.7k,
/// `bench/instructions.sh`) and h2load counted ~4 % more hits per second.
/// HAProxy and nginx answer a stream in the pass that read it, too.
///
/// A stream still waiting after that poll (a miss, an upload, a body bigger than the flow
/// control window) is spawned and its task polls it again, registering its own waker; the
/// first poll's waker is a no-op, which loses nothing because a spawned task is always polled.
///
/// The stream's future holds the request's whole future, kilobytes: it is boxed once and tokio
/// moves a pointer. It runs with its own abort handle in `proxy::STREAM_TASK`, so that the
/// connection can end one overdue stream without closing the others
/// (`proxy::InFlight::end_overdue`); a stream finished in its first poll has nothing to end.
#[derive(Clone, Copy)]
struct SpawnBoxed;

impl<F> hyper::rt::Executor<F> for SpawnBoxed
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        // Boxed on a line of its own: inside a call the future was copied once more on its way
        // into the box (~570 instructions per stream).
        let mut fut = Box::pin(fut);
        let stream = Arc::new(proxy::StreamTask::default());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // A panic in a stream's task ends that task alone; caught here, it ends this stream
        // alone too (its future is dropped and h2 resets the stream), not the connection.
        let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            proxy::STREAM_TASK.sync_scope(stream.clone(), || fut.as_mut().poll(&mut cx))
        }));
        match first {
            Ok(Poll::Pending) => {}
            Ok(Poll::Ready(_)) => return,
            Err(_) => {
                tracing::error!("an HTTP/2 stream panicked; it was reset");
                return;
            }
        }
        let task = tokio::spawn(proxy::STREAM_TASK.scope(stream.clone(), fut));
        stream.set(task.abort_handle());
    }
}

/// One open connection counted against its client IP's limit; released on drop.
struct IpSlot<'a> {
    shared: &'a Shared,
    ip: Option<std::net::IpAddr>,
}

impl<'a> IpSlot<'a> {
    /// None when the IP already has `limits.max_connections_per_ip` connections open.
    fn take(shared: &'a Shared, client: SocketAddr) -> Option<Self> {
        let limit = shared.snapshot.load().limits.max_connections_per_ip;
        if limit == 0 {
            return Some(Self { shared, ip: None });
        }
        let mut open = shared.connections_per_ip.lock().ok()?;
        let count = open.entry(client.ip()).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(Self {
            shared,
            ip: Some(client.ip()),
        })
    }
}

impl Drop for IpSlot<'_> {
    fn drop(&mut self) {
        let Some(ip) = self.ip else { return };
        if let Ok(mut open) = self.shared.connections_per_ip.lock() {
            if let Some(count) = open.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    open.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_tick_comes_when_a_streaming_response_becomes_overdue_if_that_is_sooner() {
        let now = tokio::time::Instant::now();
        let tick = Duration::from_secs(15);
        assert_eq!(next_tick(now, tick, None), now + tick, "nothing streaming");
        let due = now + Duration::from_secs(3);
        assert_eq!(next_tick(now, tick, Some(due)), due, "overdue in 3 s");
        let late = now + Duration::from_secs(40);
        assert_eq!(
            next_tick(now, tick, Some(late)),
            now + tick,
            "overdue after the tick"
        );
        let past = now - Duration::from_secs(1);
        assert_eq!(
            next_tick(now, tick, Some(past)),
            now + Duration::from_secs(1),
            "already overdue (being ended): looked at again a second later, not in a loop"
        );
    }
}
