//! The request path. `handle` runs the phases in order, each a plain function that either
//! continues or answers:
//!
//! 1. admit: limits on the request target and declared body size (414, 413);
//! 2. route: Host/:authority to a site (400 without a host, 404 for an unknown one,
//!    421 when the host does not fit the TLS connection's certificate);
//! 3. protect: the site's WAF rules, bodies included where the WAF inspects them (block with
//!    the rule's status, or only log), then its rate limits (429 with Retry-After, or only
//!    counted in log mode);
//! 4. cache: GET and HEAD on caching sites go through `cache` (answered from the store, or
//!    fetched once for everyone asking and stored);
//! 5. forward: choose an origin, rewrite headers, send; retry idempotent bodiless requests
//!    on another origin within the pool's retry budget;
//! 6. respond: strip hop-by-hop headers, add Via, stream the body back (none for HEAD, whoever
//!    answered); metrics and the access log are written when the body ends (`body::Completion`).

pub mod body;
mod cache;
pub mod error;
mod forward;
pub mod headers;
mod hit_headers;
pub mod trace;
mod upgrade;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use self::body::{Completion, OutBody, RequestBody, ResponseBody};
use self::error::ProxyError;
pub(crate) use self::forward::ForwardHeaders;
use self::trace::TraceContext;
use crate::metrics::SiteMetrics;
use crate::router::normalize_host;
use crate::state::Snapshot;
use crate::upstream::pool::Pool;
use crate::upstream::{OriginBody, SendError};
use crate::Shared;

/// Upper bound on attempts per request (first try plus retries), whatever the config says.
const MAX_ATTEMPTS: usize = 8;

/// What the request path knows about the client connection.
pub struct ConnInfo {
    pub shared: Arc<Shared>,
    pub listener: Arc<str>,
    pub client: SocketAddr,
    pub client_addr: headers::ClientAddr,
    pub tls: bool,
    pub sni: Option<String>,
    /// Requests on this connection whose response has not finished.
    pub in_flight: Arc<InFlight>,
}

/// The requests a connection is serving: how many (the idle timer waits for none), and the
/// deadlines of the responses it is streaming. A response whose client stops reading is never
/// polled again once the socket (or, over HTTP/2, the stream's flow-control window) is full,
/// so its body's own deadline timer never fires; the connection's tick finds it here instead.
#[derive(Default)]
pub struct InFlight {
    count: AtomicUsize,
    /// One entry per streaming response (a multiset: HTTP/1.1 entries with equal deadlines are
    /// interchangeable).
    streaming: std::sync::Mutex<Vec<Streaming>>,
    /// Entries added so far: the connection looks at `next_due` again when this moved.
    added: AtomicUsize,
}

/// A response being streamed: its deadline, and over HTTP/2 the task of its stream.
#[derive(Clone)]
pub(crate) struct Streaming {
    deadline: Instant,
    stream: Option<Arc<StreamTask>>,
}

impl PartialEq for Streaming {
    fn eq(&self, other: &Self) -> bool {
        self.deadline == other.deadline
            && match (&self.stream, &other.stream) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
    }
}

/// The task of one HTTP/2 stream, as the connection's executor spawned it (hyper runs each
/// stream's request and response in a task of its own; HTTP/1.1 requests run in their
/// connection's task). Aborting it drops the stream's response, and hyper then resets that
/// stream alone (RST_STREAM with CANCEL).
#[derive(Default)]
pub struct StreamTask(std::sync::OnceLock<tokio::task::AbortHandle>);

impl StreamTask {
    pub fn set(&self, task: tokio::task::AbortHandle) {
        let _ = self.0.set(task);
    }
}

tokio::task_local! {
    /// The HTTP/2 stream whose task is running (unset for HTTP/1.1).
    pub static STREAM_TASK: Arc<StreamTask>;
}

/// How long a streaming response may outlive its deadline before it is ended for it: one still
/// being polled is cut off at the deadline by its body (an HTTP/2 stream alone), and is given
/// the time to be.
const OVERDUE_GRACE: Duration = Duration::from_secs(1);

impl InFlight {
    pub fn is_busy(&self) -> bool {
        self.count.load(Ordering::Relaxed) > 0
    }

    /// Ends what is still streaming well past its deadline: its client has stopped reading.
    /// An HTTP/2 stream is ended alone, by aborting its task (its response, and with it the
    /// origin's connection, is dropped and the stream reset); the connection's other streams
    /// go on. True when an HTTP/1.1 response is overdue: only closing the connection ends it
    /// (as nginx's send_timeout does), and lets go of its origin connection.
    pub fn end_overdue(&self, now: Instant) -> bool {
        let mut close = false;
        let mut abort = Vec::new();
        if let Ok(s) = self.streaming.lock() {
            for entry in s.iter().filter(|e| e.deadline + OVERDUE_GRACE <= now) {
                match &entry.stream {
                    // Its handle is set as soon as the task is spawned, long before this.
                    Some(stream) => abort.extend(stream.0.get().cloned()),
                    None => close = true,
                }
            }
        }
        // Outside the lock: a stream's end removes its entry. Aborting again on a later tick,
        // before that, does nothing more.
        for task in abort {
            tracing::debug!("an HTTP/2 response outlived its request timeout unread: stream reset");
            task.abort();
        }
        close
    }

    /// When the earliest response still streaming becomes overdue (its deadline plus the
    /// grace), if one is streaming.
    pub fn next_due(&self) -> Option<Instant> {
        let s = self.streaming.lock().ok()?;
        s.iter().map(|e| e.deadline + OVERDUE_GRACE).min()
    }

    /// Streaming responses registered so far (see `next_due`).
    pub fn added(&self) -> usize {
        self.added.load(Ordering::Relaxed)
    }

    fn stream(&self, entry: Streaming) {
        if let Ok(mut s) = self.streaming.lock() {
            s.push(entry);
        }
        self.added.fetch_add(1, Ordering::Relaxed);
    }

    fn streamed(&self, entry: &Streaming) {
        if let Ok(mut s) = self.streaming.lock() {
            if let Some(i) = s.iter().position(|e| e == entry) {
                s.swap_remove(i);
            }
        }
    }
}

pub(crate) async fn handle(
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody<RequestLog>>, Infallible> {
    let start = Instant::now();
    let snapshot = conn.shared.snapshot.load_full();
    conn.in_flight.count.fetch_add(1, Ordering::Relaxed);
    let trace = TraceContext::from_header(req.headers().get(&trace::TRACEPARENT));
    let mut log = RequestLog::new(&conn, &snapshot, &req, trace, start);
    let response = match proxy(&conn, &snapshot, req, trace, &mut log).await {
        Ok(resp) => resp,
        Err(err) => {
            log.error = Some(err.reason());
            // Refusals by the PoP's own limits are counted by reason: everything before routing,
            // and the body limits after it.
            let body_limit = matches!(
                err,
                ProxyError::BodyTooLarge { .. }
                    | ProxyError::ClientBodyTimeout
                    | ProxyError::ClientBodyTooSlow
            );
            if log.site.is_none() || body_limit {
                conn.shared.metrics.reject(err.reason());
            }
            match err.side() {
                error::Side::Origin => tracing::info!(error = %err, "request failed at the origin"),
                _ => tracing::trace!(error = %err, "request refused"),
            }
            error_response(&err, &snapshot)
        }
    };
    let (mut parts, mut body) = response.into_parts();
    if log.method == Method::HEAD {
        body = body.drop_for_head(&mut parts.headers);
    }
    log.status = parts.status.as_u16();
    let deadline = log.deadline;
    if let Some(deadline) = deadline.filter(|_| !body.is_end_stream()) {
        let entry = Streaming {
            deadline,
            stream: STREAM_TASK.try_with(Arc::clone).ok(),
        };
        conn.in_flight.stream(entry.clone());
        log.streaming = Some(entry);
    }
    Ok(Response::from_parts(
        parts,
        ResponseBody::new(body, deadline, log),
    ))
}

async fn proxy(
    conn: &ConnInfo,
    snapshot: &Arc<Snapshot>,
    req: Request<Incoming>,
    trace: TraceContext,
    log: &mut RequestLog,
) -> Result<Response<OutBody>, ProxyError> {
    // 1. admit
    let target_len = req.uri().path_and_query().map_or(1, |pq| pq.as_str().len());
    if target_len > snapshot.limits.max_uri_bytes {
        return Err(ProxyError::UriTooLong {
            len: target_len,
            limit: snapshot.limits.max_uri_bytes,
        });
    }
    let max_body = snapshot.limits.max_body_bytes;
    if max_body > 0 {
        let declared = req
            .body()
            .size_hint()
            .exact()
            .or_else(|| content_length(req.headers()));
        if declared.is_some_and(|len| len > max_body) {
            return Err(ProxyError::BodyTooLarge { limit: max_body });
        }
    }

    // 2. route
    // HTTP/2 carries the host in :authority, HTTP/1.1 in Host (absolute-form targets too).
    let host_value = match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).map_err(|_| ProxyError::MissingHost)?,
        None => req
            .headers()
            .get(header::HOST)
            .filter(|h| !h.is_empty())
            .ok_or(ProxyError::MissingHost)?
            .clone(),
    };
    let raw_host = host_value.to_str().map_err(|_| ProxyError::MissingHost)?;
    let host = normalize_host(raw_host);
    let site_index = snapshot
        .routers
        .get(&*conn.listener)
        .and_then(|r| r.route(&host))
        .ok_or_else(|| ProxyError::UnknownHost(host.to_string()))?;
    if let Some(sni) = &conn.sni {
        if !sni.eq_ignore_ascii_case(&host) && !same_certificate(&conn.shared.cert_store.load(), sni, &host) {
            return Err(ProxyError::Misdirected {
                host: host.to_string(),
                sni: sni.clone(),
            });
        }
    }
    let site = &snapshot.sites[site_index];
    log.site = Some(site.metrics.clone());
    log.site_name = Some(site.name.clone());
    // 3. protect
    let rate = (
        snapshot.timeouts.body_min_rate,
        snapshot.timeouts.body_rate_window,
    );
    let mut req = req.map(ClientBody::Streaming);
    if site.waf.is_some() || !site.rate_limits.is_empty() {
        // Urlencoded, JSON and multipart bodies are buffered (up to the WAF's body limit) and
        // parsed when a rule looks at bodies; the bytes then go to the origin unchanged.
        let mut inspected = None;
        if let Some(waf) = &site.waf {
            // Boxed, like the cache phase below: a phase's future inlined here would make every
            // request's future (moved by value into hyper's connection) that much larger.
            (req, inspected) =
                Box::pin(inspect_body(req, waf, max_body, snapshot.timeouts.body, rate)).await?;
        }
        // Rules see the path as the origin will (`//admin`, `/./admin`, `/%61dmin` are `/admin`).
        let path = outpost_protect::path::normalize(req.uri().path());
        let facts = outpost_protect::rate_limit::RequestFacts {
            client_ip: log.client_ip,
            method: req.method(),
            path: &path,
            query: req.uri().query(),
            headers: req.headers(),
            body: inspected.as_ref(),
        };
        if let Some(waf) = &site.waf {
            let count = |hit: &outpost_protect::waf::Hit| {
                if let Some(c) = site.waf_hits.get(&hit.rule) {
                    c.inc();
                }
            };
            match waf.evaluate(&facts) {
                outpost_protect::waf::Verdict::Pass { logged } => {
                    logged.iter().for_each(count);
                    log.waf = logged.into_iter().next();
                }
                outpost_protect::waf::Verdict::Block {
                    hit,
                    status,
                    body,
                    logged,
                } => {
                    logged.iter().for_each(count);
                    count(&hit);
                    let rule = hit.rule.clone();
                    log.waf = Some(hit);
                    return Err(ProxyError::WafBlocked { rule, status, body });
                }
            }
        }
        for l in &site.rate_limits {
            if let outpost_protect::rate_limit::Decision::Deny { retry_after, enforce } =
                l.limit.check(&facts)
            {
                if enforce {
                    l.blocked.inc();
                    return Err(ProxyError::RateLimited {
                        limit: l.limit.name.clone(),
                        retry_after,
                        policy: l.limit.policy_header(),
                    });
                }
                l.logged.inc();
                log.rate_limited = Some(l.limit.name.clone());
            }
        }
    }
    let pool = site.pool.clone();
    log.deadline = Some(log.start + pool.config.request_timeout);

    // 4. cache (GET and HEAD on caching sites): looked up with the client's own fields, so a
    // hit never pays for the upstream rewriting below.
    let upgrade = headers::is_upgrade_request(req.headers()) && req.version() == Version::HTTP_11;
    let proto = if conn.tls { "https" } else { "http" };
    let forward = ForwardHeaders {
        client_addr: conn.client_addr.clone(),
        proto,
        host: host_value.clone(),
        trace,
        via: snapshot.via(req.version()).clone(),
        forwarded: site.forwarded_headers,
        join_cookies: req.version() == Version::HTTP_2
            && pool.config.protocol == outpost_config::UpstreamProtocol::Http1,
        h2_upstream: pool.is_http2(),
    };
    let site_authority: Option<http::uri::Authority> = if pool.is_http2() {
        raw_host.parse().ok()
    } else {
        None
    };
    let cache = match (&conn.shared.cache, &site.cache) {
        (Some(cache), Some(policy)) if !upgrade && conn.shared.cache_in_use() => Some((cache, policy)),
        _ => None,
    };
    if let Some((cache, policy)) = cache {
        let cacheable_method = matches!(*req.method(), Method::GET | Method::HEAD);
        if cacheable_method && req.body().is_end_stream() {
            let (parts, _) = req.into_parts();
            let upstream = Upstream {
                pool: pool.clone(),
                site_authority,
                hash: pool.request_hash(&parts.uri, &parts.headers, &host, log.client_ip),
                deadline: log.deadline,
                body_limit: max_body,
            };
            let request = cache::CacheRequest {
                method: parts.method,
                scheme: proto,
                host: &host,
                path_and_query: parts.uri.path_and_query().cloned(),
                headers: parts.headers,
                forward,
            };
            return match cache::start(cache, policy, snapshot, &upstream, request, log) {
                cache::Step::Done(answered) => answered,
                // Boxed: the rest of the cache phase is a future of several kilobytes; inlined
                // it would be part of every request's future, hits and pass-through included.
                cache::Step::Continue(ctx, in_memory) => Box::pin(cache::finish(ctx, in_memory, log)).await,
            };
        }
    }

    // 5. forward
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, incoming) = req.into_parts();
    let hash = pool.request_hash(&parts.uri, &parts.headers, &host, log.client_ip);
    let headers = forward.strip(parts.headers, upgrade);
    let body_empty = incoming.is_end_stream();
    let path_and_query = parts.uri.path_and_query().cloned();
    let upstream = Upstream {
        pool: pool.clone(),
        site_authority,
        hash,
        deadline: log.deadline,
        body_limit: max_body,
    };

    let retryable = body_empty && !upgrade && is_idempotent(&parts.method);
    let body = match incoming {
        _ if body_empty => body::empty(),
        ClientBody::Streaming(incoming) => {
            let counted = RequestBody::new(incoming, max_body, snapshot.timeouts.body, rate);
            log.request_bytes = Some(counted.bytes.clone());
            log.request_body_done = Some(counted.done.clone());
            counted.boxed()
        }
        ClientBody::Buffered(replayed) => {
            log.request_bytes = Some(replayed.rest().bytes.clone());
            log.request_body_done = Some(replayed.rest().done.clone());
            replayed.boxed()
        }
    };
    let attempts = if retryable {
        (1 + pool.config.retry.attempts as usize).min(MAX_ATTEMPTS)
    } else {
        1
    };
    let target = path_and_query.clone();
    let mut rec = Attempts::default();
    let result = upstream
        .exchange(
            &parts.method,
            path_and_query,
            headers,
            &forward,
            body,
            attempts,
            log.request_body_done.as_ref(),
            &mut rec,
        )
        .await;
    log.record(rec);
    let mut resp = result?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            upgrade::splice(&conn.shared, client_upgrade, hyper::upgrade::on(&mut resp));
            let (mut p, _) = resp.into_parts();
            headers::remove_hop_by_hop(&mut p.headers, true);
            p.headers
                .append(header::VIA, snapshot.via(Version::HTTP_11).clone());
            return Ok(Response::from_parts(p, OutBody::empty()));
        }
    }
    if let Some((cache, policy)) = cache {
        // RFC 9111 §4.4: a successful unsafe request invalidates what the cache holds for
        // its target and for the Location / Content-Location it names on the same host.
        if !parts.method.is_safe() && (resp.status().is_success() || resp.status().is_redirection()) {
            cache::invalidate_after_unsafe(cache, policy, proto, &host, target.as_ref(), resp.headers());
        }
    }
    log.from_origin = true;
    // Bodiless, non-upgrade requests to a plain-HTTP/1.1 origin go inline, their heads in a
    // batch where this thread batches them.
    let head_batched = crate::upstream::send_batch::active()
        && body_empty
        && !upgrade
        && !pool.is_http2()
        && log.origin.as_ref().is_some_and(|(p, i)| {
            p.origins
                .get(*i)
                .is_some_and(|o| o.scheme == http::uri::Scheme::HTTP)
        });
    if parts.version != Version::HTTP_2 && !head_batched {
        // An HTTP/1.x client's response is relayed once the tasks that are ready now have run
        // (tokio 1.54 wakes a yielded task after its next I/O poll), so requests that came in
        // meanwhile go to their origins first and an origin finds them together when it next
        // runs: see "Relaying after forwarding" in docs/architecture.md. HTTP/2 streams
        // measured slower with it, and where origin heads go out in batches the batch does
        // this job (the yield then only added to the tail latency).
        tokio::task::yield_now().await;
    }
    Ok(respond(resp, snapshot, upgrade))
}

/// The client's request body: as it arrives, or with its beginning already read by the WAF.
enum ClientBody {
    Streaming(Incoming),
    Buffered(Box<body::Replayed>),
}

impl ClientBody {
    fn is_end_stream(&self) -> bool {
        match self {
            Self::Streaming(b) => b.is_end_stream(),
            Self::Buffered(b) => b.is_end_stream(),
        }
    }
}

/// Reads and parses the beginning of the request body when the site's WAF inspects bodies and
/// the body is urlencoded, JSON or multipart: at most the WAF's body limit is inspected (a
/// frame may carry a little more, which is kept for the origin). A longer body is inspected in
/// part, or refused with 413 when the site says so. The request keeps every byte read, to be
/// replayed to the origin unchanged.
async fn inspect_body(
    req: Request<ClientBody>,
    waf: &outpost_protect::waf::Waf,
    max_body: u64,
    pause: Duration,
    rate: (u64, Duration),
) -> Result<(Request<ClientBody>, Option<outpost_protect::body::RequestBody>), ProxyError> {
    let Some(limit) = waf.body_limit() else {
        return Ok((req, None));
    };
    if req.body().is_end_stream() {
        return Ok((req, None));
    }
    let Some(kind) = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|ct| outpost_protect::body::BodyKind::from_content_type(ct.as_bytes()))
    else {
        return Ok((req, None));
    };
    let declared = content_length(req.headers());
    if waf.body_oversize_blocks() && declared.is_some_and(|len| len > limit) {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    let (parts, incoming) = match req.into_parts() {
        (parts, ClientBody::Streaming(incoming)) => (parts, incoming),
        (parts, buffered) => return Ok((Request::from_parts(parts, buffered), None)),
    };
    let mut rest = RequestBody::new(incoming, max_body, pause, rate);
    let mut buffer = bytes::BytesMut::new();
    let mut trailers = None;
    while buffer.len() as u64 <= limit && trailers.is_none() {
        match rest.frame().await {
            None => break,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => buffer.extend_from_slice(&data),
                Err(frame) => trailers = frame.into_trailers().ok(),
            },
            Some(Err(e)) => {
                return Err(if is_body_limit(e.as_ref()) {
                    ProxyError::BodyTooLarge { limit: max_body }
                } else {
                    client_body_failure(e.as_ref())
                        .unwrap_or_else(|| ProxyError::ClientBody(error_chain(e.as_ref())))
                });
            }
        }
    }
    let truncated = buffer.len() as u64 > limit;
    if truncated && waf.body_oversize_blocks() {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    let bytes = buffer.freeze();
    let inspect = &bytes[..bytes.len().min(usize::try_from(limit).unwrap_or(usize::MAX))];
    let parsed = outpost_protect::body::RequestBody::parse(&kind, inspect, truncated);
    let body = ClientBody::Buffered(Box::new(body::Replayed::new(bytes, trailers, rest)));
    Ok((Request::from_parts(parts, body), Some(parsed)))
}

/// Where and how a request goes upstream: owned, so a background revalidation can use it
/// after the client's request is gone.
#[derive(Clone)]
pub(crate) struct Upstream {
    pub pool: Arc<Pool>,
    /// For HTTP/2 origins, the site in `:authority` (the connection already goes to the origin).
    pub site_authority: Option<http::uri::Authority>,
    /// Balancing hash (consistent hashing pools).
    pub hash: Option<u64>,
    pub deadline: Option<Instant>,
    pub body_limit: u64,
}

impl Upstream {
    /// Sends the request to an origin of the pool, retrying on another origin (within the retry
    /// budget) when an idempotent bodiless request meets a gateway error or a broken exchange.
    /// `headers` are the client's, [`ForwardHeaders::strip`]ped; the fields `added` adds go
    /// into the request head where the pool writes one, else into the map.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn exchange(
        &self,
        method: &Method,
        path_and_query: Option<http::uri::PathAndQuery>,
        mut headers: HeaderMap,
        added: &ForwardHeaders,
        body: body::ProxyBody,
        attempts: usize,
        request_body_done: Option<&Arc<body::BodySent>>,
        rec: &mut Attempts,
    ) -> Result<Response<OriginBody>, ProxyError> {
        let pool = &self.pool;
        let added = if added.writes_into_head(&headers) && pool.gives_fields_back(&body, &headers) {
            Some(added as &dyn crate::upstream::AddedFields)
        } else {
            added.add_to(&mut headers);
            None
        };
        // Each attempt goes to an origin not tried yet, so there are no more than origins.
        let attempts = attempts.min(pool.origins.len()).max(1);
        let mut body = Some(body);
        // One clock read before the first attempt and one as each attempt ends (`send` takes it,
        // and it starts the next attempt) serve the retry budget, origin selection, the upstream
        // latency and the outlier bookkeeping.
        let mut now = Instant::now();
        pool.retry_budget.record_request(now.into_std());
        // Origins already tried for this request; attempts are capped at MAX_ATTEMPTS.
        let mut tried = [usize::MAX; MAX_ATTEMPTS];
        let mut previous: Option<Result<Response<OriginBody>, ProxyError>> = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let selected = pool.select(self.hash, &tried[..attempt - 1], now.into_std());
            let index = match (selected, previous.take()) {
                // Only another origin may do better: the one that just failed is not asked twice
                // (a pooled connection found closed before the request went out is
                // already replaced by the connection layer).
                (Ok(index), Some(previous)) if tried[..attempt - 1].contains(&index) => return previous,
                (Ok(index), _) => index,
                // A retry found no origin left: the previous answer is more useful than a 503.
                (Err(_), Some(previous)) => return previous,
                (Err(e), None) => return Err(e),
            };
            tried[attempt - 1] = index;
            let origin = &pool.origins[index];
            rec.origin = Some((pool.clone(), index));
            let uri = if pool.is_http2() {
                // HTTP/2 names the site in :authority (the connection already goes to the
                // origin).
                let authority = self
                    .site_authority
                    .clone()
                    .unwrap_or_else(|| origin.authority.clone());
                let mut b = Uri::builder().scheme(origin.scheme.clone()).authority(authority);
                if let Some(pq) = &path_and_query {
                    b = b.path_and_query(pq.clone());
                }
                b.build().map_err(|e| ProxyError::OriginProtocol {
                    origin: origin.url.clone(),
                    reason: e.to_string(),
                })?
            } else {
                // HTTP/1.1: origin-form; the site is in Host.
                let pq = path_and_query
                    .clone()
                    .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
                Uri::from(pq)
            };
            let last_attempt = attempt >= attempts;
            let req_body = if last_attempt {
                body.take().unwrap_or_else(body::empty)
            } else {
                body::empty()
            };
            // Another attempt may follow: the fields go with a copy, unless the pool hands them
            // back once written (the HTTP/1.1 path that retryable, bodiless requests take).
            let gives_back = !last_attempt && pool.gives_fields_back(&req_body, &headers);
            let req_headers = if last_attempt || gives_back {
                std::mem::take(&mut headers)
            } else {
                headers.clone()
            };
            let mut upstream_req = Request::new(req_body);
            *upstream_req.method_mut() = method.clone();
            *upstream_req.uri_mut() = uri;
            *upstream_req.version_mut() = if pool.is_http2() {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            };
            *upstream_req.headers_mut() = req_headers;

            let mut fields_back = None;
            let outcome = send(
                pool,
                index,
                upstream_req,
                &mut now,
                self.deadline,
                self.body_limit,
                request_body_done,
                added,
                &mut fields_back,
            )
            .await;
            rec.done = Some(now);
            let handed_back = match fields_back {
                Some(fields) => {
                    headers = fields;
                    true
                }
                None => false,
            };
            // Retry what another origin may answer better: failed connections, exchanges that
            // broke before a response and the statuses the pool lists; never a timeout (the
            // origin may be working).
            let should_retry = match &outcome {
                Ok(resp) => pool.config.retry.on_status.contains(&resp.status().as_u16()),
                Err(e) => matches!(
                    e,
                    ProxyError::OriginConnect { .. } | ProxyError::OriginProtocol { .. }
                ),
            };
            // Fields moved out and not handed back could not go again (the pool hands back what
            // it says it will: a guard, not a path).
            if !should_retry || last_attempt || (gives_back && !handed_back) {
                return outcome;
            }
            if !pool.retry_budget.try_withdraw(now.into_std()) {
                pool.retries_budget_exhausted.inc();
                return outcome;
            }
            pool.retries_attempted.inc();
            rec.retries += 1;
            previous = Some(outcome);
        }
    }

    /// `exchange` for a bodiless idempotent request, with the pool's retry policy.
    pub(crate) async fn fetch(
        &self,
        method: &Method,
        path_and_query: Option<http::uri::PathAndQuery>,
        headers: HeaderMap,
        added: &ForwardHeaders,
        rec: &mut Attempts,
    ) -> Result<Response<OriginBody>, ProxyError> {
        let attempts = (1 + self.pool.config.retry.attempts as usize).min(MAX_ATTEMPTS);
        self.exchange(
            method,
            path_and_query,
            headers,
            added,
            body::empty(),
            attempts,
            None,
            rec,
        )
        .await
    }
}

/// Which origin an exchange went to last and how many retries it took (for the access log).
#[derive(Default)]
pub(crate) struct Attempts {
    pub origin: Option<(Arc<Pool>, usize)>,
    pub retries: u32,
    /// When the last attempt's response head (or failure) came back.
    pub done: Option<Instant>,
}

impl RequestLog {
    pub(crate) fn record(&mut self, rec: Attempts) {
        if rec.origin.is_some() {
            self.origin = rec.origin;
        }
        self.retries += rec.retries;
        if rec.done.is_some() {
            self.upstream_done = rec.done;
        }
    }
}

/// One exchange with one origin, with the response-header deadline and outcome bookkeeping.
/// `clock` holds the attempt's start, as the caller read it, and on return the moment its answer
/// (or failure) came back: one reading serves the caller and this function's bookkeeping.
#[allow(clippy::too_many_arguments)]
async fn send(
    pool: &Arc<Pool>,
    index: usize,
    req: Request<body::ProxyBody>,
    clock: &mut Instant,
    request_deadline: Option<Instant>,
    body_limit: u64,
    request_body_done: Option<&Arc<body::BodySent>>,
    added: Option<&dyn crate::upstream::AddedFields>,
    fields_back: &mut Option<HeaderMap>,
) -> Result<Response<OriginBody>, ProxyError> {
    let origin = &pool.origins[index];
    let sent = *clock;
    let header_timeout = pool.config.response_header_timeout;
    let header_deadline = sent + header_timeout;
    let deadline = request_deadline.map_or(header_deadline, |d| d.min(header_deadline));
    // How long the origin had when a timeout fired (for the 504's text).
    let mut allowed = deadline - sent;
    // A timer of the origin's fired: its timeout, whatever the state of the upload.
    let mut origin_timer_fired = false;
    let busy = crate::upstream::pool::Busy::enter(&origin.state);
    let result = match request_body_done {
        // An origin may need the whole body before it can answer, so its time to answer starts
        // once the body has been sent (as nginx's proxy_read_timeout and Envoy count it); until
        // then the request's deadline bounds the exchange, a slow upload is for
        // `timeouts.body` and `body_min_rate` to judge, and an origin that stops taking the
        // body is judged by `response_header_timeout` too: the writer holding a piece of the
        // body that the origin has not taken for that long (no progress at all, while the
        // client may have more ready) is the origin's doing, as a head that long in coming
        // would be. An origin that reads slowly but steadily is not cut off by it: each piece
        // it takes starts the wait over (nginx's proxy_send_timeout counts the same way).
        Some(body_sent) if !body_sent.is_done() => {
            body_sent.origin_turn_from(sent);
            let bound = request_deadline.unwrap_or(sent + pool.config.request_timeout);
            let exchange = pool.send_to(index, req, bound, added, fields_back);
            // Boxed: only requests with a body carry these timers.
            let origin_timer = Box::pin(async move {
                tokio::select! {
                    () = async {
                        body_sent.wait().await;
                        tokio::time::sleep(header_timeout).await;
                    } => {}
                    () = body_sent.origin_stalled(header_timeout) => {}
                }
            });
            tokio::select! {
                biased;
                result = exchange => {
                    allowed = bound - sent;
                    result
                }
                () = origin_timer => {
                    allowed = header_timeout;
                    origin_timer_fired = true;
                    Err(SendError::Timeout)
                }
            }
        }
        _ => pool.send_to(index, req, deadline, added, fields_back).await,
    };
    let done = Instant::now();
    *clock = done;
    origin.metrics.duration.observe((done - sent).as_secs_f64());
    let done = done.into_std();
    match result {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            origin.metrics.count_status(status);
            pool.record_outcome(index, status >= 500, done);
            resp.body_mut().hold(busy);
            Ok(resp)
        }
        Err(SendError::Connect(reason)) => {
            pool.record_outcome(index, true, done);
            origin.metrics.connect_error.inc();
            Err(ProxyError::OriginConnect {
                origin: origin.url.clone(),
                reason,
            })
        }
        Err(SendError::Protocol(e)) => {
            // The client's own body failing (too large, aborted upload) says nothing about the
            // origin: no outlier strike, and the client is told what it did.
            if is_body_limit(&*e) {
                return Err(ProxyError::BodyTooLarge { limit: body_limit });
            }
            if let Some(err) = client_body_failure(&*e) {
                return Err(err);
            }
            pool.record_outcome(index, true, done);
            origin.metrics.protocol_error.inc();
            Err(ProxyError::OriginProtocol {
                origin: origin.url.clone(),
                reason: error_chain(&*e),
            })
        }
        Err(SendError::Timeout)
            if !origin_timer_fired
                && request_body_done
                    .is_some_and(|sent| !sent.is_done() && sent.origin_turn_since().is_none()) =>
        {
            // The request's deadline passed while the body waited for the client: a slow or
            // stalled upload, not a slow origin. 408, and no strike against the origin. (Had
            // the origin been holding it up then, the timeout is the origin's, below.)
            Err(ProxyError::ClientBodyTimeout)
        }
        Err(SendError::Timeout) => {
            origin.metrics.timeout.inc();
            pool.record_outcome(index, true, done);
            Err(ProxyError::OriginTimeout {
                origin: origin.url.clone(),
                secs: allowed.as_secs_f64(),
            })
        }
    }
}

fn respond(resp: Response<OriginBody>, snapshot: &Snapshot, upgrade_requested: bool) -> Response<OutBody> {
    let (mut parts, incoming) = resp.into_parts();
    if !incoming.hop_by_hop_removed() {
        headers::remove_hop_by_hop(
            &mut parts.headers,
            upgrade_requested && parts.status == StatusCode::SWITCHING_PROTOCOLS,
        );
        // Addressed to the PoP even where the cache takes no part (an unsafe method, a site
        // with caching off): never for the client. (An inline-parsed head that carries none
        // of these, nor a connection-specific field, has nothing to strip.)
        outpost_cache::directives::strip_for_this_cache_only(&mut parts.headers);
    }
    parts
        .headers
        .append(header::VIA, snapshot.via(parts.version).clone());
    parts.version = Version::HTTP_11;
    Response::from_parts(parts, OutBody::Origin(incoming))
}

fn error_response(err: &ProxyError, snapshot: &Snapshot) -> Response<OutBody> {
    let text = format!("outpost: {}\n", err.client_message());
    let mut resp = Response::new(OutBody::Local(Some(Bytes::from(text))));
    *resp.status_mut() = err.status();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let ProxyError::RateLimited {
        limit,
        retry_after,
        policy,
    } = err
    {
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        if let Ok(v) = HeaderValue::from_str(policy) {
            h.insert("ratelimit-policy", v);
        }
        if let Ok(v) = HeaderValue::from_str(&format!("\"{limit}\";r=0;t={secs}")) {
            h.insert("ratelimit", v);
        }
    }
    if matches!(
        err,
        ProxyError::Misdirected { .. } | ProxyError::ClientBodyTimeout | ProxyError::ClientBodyTooSlow
    ) {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    h.append(header::VIA, snapshot.via(Version::HTTP_11).clone());
    resp
}

fn same_certificate(certs: &crate::server::tls::CertStore, sni: &str, host: &str) -> bool {
    match (certs.lookup(sni), certs.lookup(host)) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        // No certificate names the host at all: the default certificate served it, so did SNI.
        (None, None) => true,
        _ => false,
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The error and each of its sources, outermost first.
fn causes<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    causes(e).map(ToString::to_string).collect::<Vec<_>>().join(": ")
}

/// A failure while reading the client's request body (hyper's HTTP/1.1 client flags those as
/// "user" errors; the HTTP/2 path says so itself).
fn is_client_body_error(e: &(dyn std::error::Error + 'static)) -> bool {
    causes(e).any(|c| {
        c.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_user)
            || c.is::<crate::upstream::h2::RequestBodyFailed>()
    })
}

fn has_cause<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    causes(e).any(|c| c.is::<T>())
}

/// The client's side of a failed body: stalled, too slow, or broken off.
fn client_body_failure(e: &(dyn std::error::Error + 'static)) -> Option<ProxyError> {
    if has_cause::<body::BodyStalled>(e) {
        Some(ProxyError::ClientBodyTimeout)
    } else if has_cause::<body::BodyTooSlow>(e) {
        Some(ProxyError::ClientBodyTooSlow)
    } else if is_client_body_error(e) {
        Some(ProxyError::ClientBody(error_chain(e)))
    } else {
        None
    }
}

fn is_body_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    has_cause::<body::BodyLimitExceeded>(e)
}

/// Everything recorded about one request, finished when its response body ends.
pub(crate) struct RequestLog {
    shared: Arc<Shared>,
    snapshot_log: Arc<crate::access_log::AccessLog>,
    conn_in_flight: Arc<InFlight>,
    /// How this request's response is registered with its connection while it streams.
    streaming: Option<Streaming>,
    start: Instant,
    deadline: Option<Instant>,
    upstream_done: Option<Instant>,
    trace: TraceContext,
    /// The client as far as the PoP can tell (see `ClientIpPolicy`).
    client_ip: std::net::IpAddr,
    method: Method,
    path: Option<String>,
    site: Option<Arc<SiteMetrics>>,
    site_name: Option<Arc<str>>,
    origin: Option<(Arc<Pool>, usize)>,
    status: u16,
    retries: u32,
    error: Option<&'static str>,
    /// A log-only rate limit this request exceeded.
    rate_limited: Option<Arc<str>>,
    /// The WAF rule that blocked the request, or the first detection-only match.
    waf: Option<outpost_protect::waf::Hit>,
    request_bytes: Option<Arc<std::sync::atomic::AtomicU64>>,
    request_body_done: Option<Arc<body::BodySent>>,
    /// The response body comes straight from an origin (counted as backhaul when it ends).
    from_origin: bool,
    /// `Cache-Status` outcome for the access log.
    cache: Option<&'static str>,
    finished: bool,
}

impl RequestLog {
    fn new(
        conn: &ConnInfo,
        snapshot: &Snapshot,
        req: &Request<Incoming>,
        trace: TraceContext,
        start: Instant,
    ) -> Self {
        let logging = snapshot.access_log.enabled();
        Self {
            shared: conn.shared.clone(),
            snapshot_log: snapshot.access_log.clone(),
            conn_in_flight: conn.in_flight.clone(),
            streaming: None,
            start,
            deadline: None,
            upstream_done: None,
            trace,
            client_ip: snapshot.client_ip.client_of(conn.client.ip(), req.headers()),
            method: req.method().clone(),
            path: logging.then(|| req.uri().path().to_owned()),
            site: None,
            site_name: None,
            origin: None,
            // Until a response exists, the client is the one who went away (nginx's 499).
            status: 499,
            finished: false,
            retries: 0,
            error: None,
            rate_limited: None,
            waf: None,
            request_bytes: None,
            request_body_done: None,
            from_origin: false,
            cache: None,
        }
    }
}

impl Completion for RequestLog {
    fn complete(mut self, bytes: u64, completed: bool) {
        self.finish(bytes, completed);
    }
}

impl Drop for RequestLog {
    /// A request whose handler was cancelled (client reset or disconnect) never reaches a
    /// response body; it is still counted and logged, as not completed.
    fn drop(&mut self) {
        self.finish(0, false);
    }
}

impl RequestLog {
    fn finish(&mut self, bytes: u64, completed: bool) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        if let Some(entry) = self.streaming.take() {
            self.conn_in_flight.streamed(&entry);
        }
        self.conn_in_flight.count.fetch_sub(1, Ordering::Relaxed);
        let total = self.start.elapsed();
        let bytes_in = self
            .request_bytes
            .as_ref()
            .map_or(0, |b| b.load(Ordering::Relaxed));
        if let Some(site) = &self.site {
            site.count_status(self.status);
            site.duration.observe(total.as_secs_f64());
            site.response_bytes.inc_by(bytes);
            if self.from_origin {
                site.origin_bytes.inc_by(bytes);
            }
            if bytes_in > 0 {
                site.request_bytes.inc_by(bytes_in);
            }
        }
        if !self.snapshot_log.enabled() {
            return;
        }
        let line = crate::access_log::Line {
            bytes_in,
            bytes_out: bytes,
            cache: self.cache,
            client_ip: self.client_ip,
            completed,
            duration_ms: ms(total),
            error: self.error,
            method: self.method.as_str(),
            path: self.path.as_deref().unwrap_or(""),
            pop: &self.shared.pop_id,
            rate_limited: self.rate_limited.as_deref(),
            retries: self.retries,
            site: self.site_name.as_deref().unwrap_or("-"),
            status: self.status,
            time: std::time::SystemTime::now(),
            trace_id: self.trace.trace_id_hex(),
            upstream: self.origin.as_ref().map(|(p, i)| p.origins[*i].url.as_str()),
            upstream_ms: self.upstream_done.map(|d| ms(d.duration_since(self.start))),
            waf: self.waf.as_ref().map(|hit| crate::access_log::WafLine {
                action: hit.action,
                location: &hit.location,
                rule: &hit.rule,
                value: &hit.value,
            }),
        };
        self.snapshot_log.write(&line);
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}
