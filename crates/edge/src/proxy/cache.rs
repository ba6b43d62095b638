//! The cache phase of the request path, for GET and HEAD on sites that cache.
//!
//! `outpost_cache` decides (may this be stored, may that answer this request); this module does
//! the I/O around those decisions: lookups, conditional requests to the origin, the task that
//! fills the cache while clients stream the response, background revalidation, and the
//! `Age` / `Cache-Status` headers on what leaves the PoP.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::time::Instant;

use outpost_cache::collapse::{self, FillDone, Leader};
use outpost_cache::directives::strip_for_this_cache_only;
use outpost_cache::freshness::{now_secs, stamp_date};
use outpost_cache::object::vary_values;
use outpost_cache::reuse::{self, Reuse};
use outpost_cache::{
    conditional, range, storable, Cache, CacheKey, Fill, Freshness, Join, NotStored, Object, Pending,
    RequestDirectives, ResponseDirectives,
};

use super::body::OutBody;
use super::error::ProxyError;
use super::hit_headers::{self, CACHE_STATUS};
use super::{headers as hop, Attempts, RequestLog, Upstream};
use crate::state::{SiteCache, Snapshot};
use crate::upstream::OriginBody;

/// Cache identifier in `Cache-Status` (RFC 9211).
const CACHE_NAME: &str = "Outpost";

/// The largest magnitude of a structured field Integer (RFC 8941 §3.3.1: 15 digits), which
/// `ttl=` is: a huge max-age or an invalid Age would otherwise make it an i64 extreme.
const SF_INTEGER_MAX: i64 = 999_999_999_999_999;

pub(super) struct CacheRequest<'a> {
    pub method: Method,
    pub scheme: &'static str,
    pub host: &'a str,
    pub path_and_query: Option<PathAndQuery>,
    /// The client's request fields.
    pub headers: HeaderMap,
    /// How they change on the way to the origin (applied only when a request goes there).
    pub forward: super::ForwardHeaders,
}

/// Everything one cacheable request needs, owned where a background task needs it.
pub(super) struct Ctx<'a> {
    cache: &'a Arc<Cache>,
    policy: &'a Arc<SiteCache>,
    snapshot: &'a Arc<Snapshot>,
    upstream: &'a Upstream,
    key: CacheKey,
    directives: RequestDirectives,
    head: bool,
    path_and_query: Option<PathAndQuery>,
    /// The client's request fields (the cache key, Vary, conditionals).
    headers: HeaderMap,
    forward: super::ForwardHeaders,
}

/// What the cache phase's synchronous start found.
pub(super) enum Step<'a> {
    /// Answered from memory (or refused: `only-if-cached`), with no I/O.
    Done(Result<Response<OutBody>, ProxyError>),
    /// Needs I/O (the disk tier, the origin): continue with [`finish`], with the object found in
    /// memory if any.
    Continue(Box<Ctx<'a>>, Option<Arc<Object>>),
}

/// The cache phase up to the memory lookup, without a future: a memory hit (most of a PoP's
/// answers) is served from here, and only what needs I/O builds `finish`'s future.
pub(super) fn start<'a>(
    cache: &'a Arc<Cache>,
    policy: &'a Arc<SiteCache>,
    snapshot: &'a Arc<Snapshot>,
    upstream: &'a Upstream,
    req: CacheRequest<'_>,
    log: &mut RequestLog,
) -> Step<'a> {
    let target = req.path_and_query.as_ref().map_or("/", PathAndQuery::as_str);
    let key = CacheKey::new(req.scheme, req.host, target, &req.headers, &policy.key);
    let directives =
        if req.headers.contains_key(header::CACHE_CONTROL) || req.headers.contains_key(header::PRAGMA) {
            RequestDirectives::parse(&req.headers)
        } else {
            RequestDirectives::default()
        };
    let ctx = Ctx {
        cache,
        policy,
        snapshot,
        upstream,
        key,
        directives,
        head: req.method == Method::HEAD,
        path_and_query: req.path_and_query,
        headers: req.headers,
        forward: req.forward,
    };
    match cache.lookup(&ctx.key, &ctx.headers) {
        Some(obj) => match ctx.answer_stored(&obj, log) {
            Some(answered) => Step::Done(answered),
            None => Step::Continue(Box::new(ctx), Some(obj)),
        },
        None => Step::Continue(Box::new(ctx), None),
    }
}

/// The rest of the cache phase: the disk tier, revalidation, or a miss.
pub(super) async fn finish(
    ctx: Box<Ctx<'_>>,
    in_memory: Option<Arc<Object>>,
    log: &mut RequestLog,
) -> Result<Response<OutBody>, ProxyError> {
    let found = match in_memory {
        Some(obj) => Some(obj),
        None if ctx.cache.has_disk() => ctx.cache.lookup_disk(&ctx.key, &ctx.headers).await,
        None => None,
    };
    if let Some(obj) = found {
        if let Some(answered) = ctx.answer_stored(&obj, log) {
            return answered;
        }
        return ctx.revalidate(obj, log).await;
    }
    if ctx.directives.only_if_cached {
        return Err(ProxyError::NotCached);
    }
    // A HEAD miss fetches the whole response with GET, like nginx's proxy_cache_convert_head:
    // it answers the HEAD with the response's fields and warms the cache for the GETs.
    ctx.miss(log).await
}

impl Ctx<'_> {
    /// Answers from a stored object when it may be reused as it is; None when it must be
    /// revalidated with the origin first.
    fn answer_stored(
        &self,
        obj: &Arc<Object>,
        log: &mut RequestLog,
    ) -> Option<Result<Response<OutBody>, ProxyError>> {
        let m = &self.policy.metrics;
        let now = now_secs();
        Some(match reuse::decide(obj, &self.directives, now) {
            Reuse::Fresh => {
                m.hit.inc();
                log.cache = Some("hit");
                Ok(self.answer_from_object(obj, now, "hit"))
            }
            Reuse::StaleAccepted => {
                m.stale_max_stale.inc();
                log.cache = Some("stale");
                Ok(self.answer_from_object(obj, now, "hit; detail=max-stale"))
            }
            Reuse::StaleWhileRevalidate => {
                m.stale_swr.inc();
                log.cache = Some("stale");
                self.spawn_revalidation(obj.clone());
                Ok(self.answer_from_object(obj, now, "hit; detail=stale-while-revalidate"))
            }
            Reuse::Revalidate if self.directives.only_if_cached => Err(ProxyError::NotCached),
            Reuse::Revalidate => return None,
        })
    }
}

impl Ctx<'_> {
    async fn miss(&self, log: &mut RequestLog) -> Result<Response<OutBody>, ProxyError> {
        let m = &self.policy.metrics;
        let leader = match self.cache.collapse.join(self.key.hash, self.cache.fetch_seq()) {
            Join::Leader(leader) => Some(leader),
            Join::Pass => {
                m.pass.inc();
                None
            }
            Join::Wait(rx) => {
                let limit = self.upstream.pool.config.response_header_timeout;
                if let Pending::Ready(fill) = collapse::wait(rx, limit).await {
                    if fill.matches(&self.headers, self.key.extra.as_deref()) {
                        // None: the fill grew past the size limit and no longer has its start.
                        if let Some(answer) = self.answer_from_fill(&fill, None, "fwd=miss; collapsed") {
                            m.miss.inc();
                            m.collapsed.inc();
                            log.cache = Some("collapsed");
                            return Ok(answer);
                        }
                    }
                }
                None
            }
        };
        m.miss.inc();
        log.cache = Some("miss");
        let request_time = now_secs();
        let seq = self.cache.fetch_seq();
        let resp = self.fetch_logged(None, log).await?;
        Ok(self.admit_logged(resp, request_time, seq, leader, "fwd=miss", log))
    }

    /// A stale or must-revalidate object: ask the origin whether it is still current.
    async fn revalidate(
        &self,
        obj: Arc<Object>,
        log: &mut RequestLog,
    ) -> Result<Response<OutBody>, ProxyError> {
        let m = &self.policy.metrics;
        let request_time = now_secs();
        let seq = self.cache.fetch_seq();
        let result = self.fetch_logged(Some(&obj), log).await;
        let now = now_secs();
        match result {
            // The 304 answers the validators of this very object (the only ones sent), so it
            // refreshes it, whatever validator the 304 itself carries (RFC 9110 §13.1.2).
            Ok(resp) if resp.status() == StatusCode::NOT_MODIFIED => {
                m.not_modified.inc();
                m.revalidated.inc();
                log.cache = Some("revalidated");
                let current = self.refresh(obj, resp.headers(), request_time, now, seq);
                let mut answer = self.answer_from_object(&current, now, "fwd=stale; fwd-status=304");
                // A cookie the 304 set for this client but that is not stored still reaches it.
                if resp.headers().contains_key(header::SET_COOKIE)
                    && !current.headers().contains_key(header::SET_COOKIE)
                {
                    for cookie in resp.headers().get_all(header::SET_COOKIE) {
                        answer.headers_mut().append(header::SET_COOKIE, cookie.clone());
                    }
                }
                Ok(answer)
            }
            Ok(resp)
                if resp.status().is_server_error()
                    && reuse::stale_on_error(&obj, &self.directives, self.policy.grace_secs, now, false) =>
            {
                m.stale_if_error.inc();
                m.revalidation_error.inc();
                log.cache = Some("stale");
                Ok(self.answer_from_object(&obj, now, "hit; detail=stale-if-error"))
            }
            Ok(resp) => {
                m.replaced.inc();
                log.cache = Some("miss");
                Ok(self.admit_logged(resp, request_time, seq, None, "fwd=stale", log))
            }
            Err(e)
                if reuse::stale_on_error(
                    &obj,
                    &self.directives,
                    self.policy.grace_secs,
                    now,
                    unreachable(&e),
                ) =>
            {
                m.stale_if_error.inc();
                m.revalidation_error.inc();
                log.cache = Some("stale");
                tracing::debug!(error = %e, "origin failed; serving stale");
                Ok(self.answer_from_object(&obj, now, "hit; detail=stale-if-error"))
            }
            Err(e) => {
                m.revalidation_error.inc();
                Err(e)
            }
        }
    }

    /// The stored object updated by a 304 (merged fields, new freshness, same body), stored in
    /// its place when it may still be stored; what answers the request either way.
    fn refresh(
        &self,
        obj: Arc<Object>,
        not_modified: &HeaderMap,
        request_time: f64,
        response_time: f64,
        seq: u64,
    ) -> Arc<Object> {
        let mut update = not_modified.clone();
        hop::remove_hop_by_hop(&mut update, false);
        let mut headers = conditional::merge(&obj.headers(), &update);
        let dirs = ResponseDirectives::parse(&headers);
        // What admission keeps out of a stored copy stays out when a 304 brings it.
        for field in dirs.private_fields.iter().chain(&dirs.no_cache_fields) {
            headers.remove(field);
        }
        if !outpost_cache::may_store_set_cookie(&headers, &dirs, &self.policy.store) {
            headers.remove(header::SET_COOKIE);
        }
        // The 304's fields may forbid storing the response now (no-store, private) or change
        // what it varies on: admission's rules apply to the merged response as to a new one.
        let verdict = storable::check(
            &Method::GET,
            &self.headers,
            &self.directives,
            obj.status,
            &headers,
            &dirs,
            &self.policy.store,
        )
        .and_then(|()| vary_values(&headers, &self.headers).ok_or(NotStored::VaryStar));
        let freshness = Freshness::compute(
            request_time,
            response_time,
            obj.status,
            &headers,
            &dirs,
            &self.policy.lifetime,
        );
        // A 304 without a Date was made when it arrived (merge dropped the stored one).
        stamp_date(&mut headers, response_time);
        let mut key = self.key.clone();
        key.extra = obj.extra().map(Into::into);
        let (vary, not_stored) = match verdict {
            Ok(vary) => (vary, None),
            Err(reason) => (obj.vary().into(), Some(reason)),
        };
        let revaried = *vary != *obj.vary();
        let fresh = Object::new(
            &key,
            obj.site.clone(),
            obj.status,
            headers,
            obj.body_for_copy(),
            freshness,
            vary,
            seq,
        );
        match not_stored {
            None => {
                if revaried {
                    // Stored under other Vary values, the old copy would not be replaced.
                    self.cache.remove(&self.key, &obj);
                }
                self.cache.store(&self.key, fresh).unwrap_or(obj)
            }
            Some(reason) => {
                // The request's own reasons (its no-store, its Authorization) keep this copy
                // out of the cache but say nothing against the one stored; the response's
                // reasons now forbid keeping that one too.
                if !matches!(reason, NotStored::RequestNoStore | NotStored::Authorization) {
                    self.cache.remove(&self.key, &obj);
                }
                Arc::new(fresh)
            }
        }
    }

    /// A GET to the origin without the client's own validators and ranges (the cache wants the
    /// whole current response), with the stored object's validators when revalidating.
    async fn fetch_for_cache(
        &self,
        revalidating: Option<&Object>,
        rec: &mut Attempts,
    ) -> Result<Response<OriginBody>, ProxyError> {
        let mut headers = self.forward.strip(self.headers.clone(), false);
        for name in [
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::IF_MATCH,
            header::IF_UNMODIFIED_SINCE,
            header::IF_RANGE,
            header::RANGE,
        ] {
            headers.remove(name);
        }
        headers.insert(
            "surrogate-capability",
            HeaderValue::from_static(outpost_cache::directives::SURROGATE_CAPABILITY),
        );
        if let Some(obj) = revalidating {
            for (name, value) in conditional::validators(&obj.headers()) {
                headers.insert(name, value);
            }
        }
        self.upstream
            .fetch(
                &Method::GET,
                self.path_and_query.clone(),
                headers,
                &self.forward,
                rec,
            )
            .await
    }

    /// `fetch_for_cache` on behalf of a client request, recorded in its log.
    async fn fetch_logged(
        &self,
        revalidating: Option<&Object>,
        log: &mut RequestLog,
    ) -> Result<Response<OriginBody>, ProxyError> {
        let mut rec = Attempts::default();
        let result = self.fetch_for_cache(revalidating, &mut rec).await;
        log.record(rec);
        result
    }

    /// Decides whether the origin's answer is stored; a storable one is filled into the cache
    /// by its own task while this client (and any that collapse onto it) stream it.
    fn admit(
        &self,
        resp: Response<OriginBody>,
        request_time: f64,
        seq: u64,
        leader: Option<Leader>,
        fwd: &str,
    ) -> (Response<OutBody>, Delivery) {
        let (mut parts, body) = resp.into_parts();
        if !body.hop_by_hop_removed() {
            hop::remove_hop_by_hop(&mut parts.headers, false);
        }
        let response_time = now_secs();
        let res_dirs = ResponseDirectives::parse(&parts.headers);
        let verdict = storable::check(
            &Method::GET,
            &self.headers,
            &self.directives,
            parts.status,
            &parts.headers,
            &res_dirs,
            &self.policy.store,
        )
        .and_then(|()| vary_values(&parts.headers, &self.headers).ok_or(NotStored::VaryStar));
        let vary = match verdict {
            Ok(vary) => vary,
            Err(reason) => {
                if let Some(leader) = leader {
                    // Only the response's own reasons say the URL is uncacheable for everyone.
                    let about_the_url =
                        !matches!(reason, NotStored::RequestNoStore | NotStored::Authorization);
                    leader.pass(about_the_url);
                }
                let status = format!("{fwd}; detail={}", reason.as_str());
                return (self.forwarded(parts, body, &status), Delivery::FromOrigin);
            }
        };
        // Fields under private="..." must not be stored by a shared cache; fields under
        // no-cache="..." must not be reused without revalidation: neither is kept, but the
        // request that fetched the response gets them.
        let mut own = None;
        for field in res_dirs.private_fields.iter().chain(&res_dirs.no_cache_fields) {
            if parts.headers.contains_key(field) {
                own.get_or_insert_with(|| parts.headers.clone());
                parts.headers.remove(field);
            }
        }
        let freshness = Freshness::compute(
            request_time,
            response_time,
            parts.status,
            &parts.headers,
            &res_dirs,
            &self.policy.lifetime,
        );
        let worthless = freshness.lifetime <= 0.0
            && freshness.stale_if_error == 0
            && self.policy.grace_secs == 0
            && !parts.headers.contains_key(header::ETAG)
            && !parts.headers.contains_key(header::LAST_MODIFIED);
        if worthless {
            // Stale on arrival and nothing to revalidate it with: storing it would help nobody.
            if let Some(leader) = leader {
                leader.pass(true);
            }
            let status = format!("{fwd}; detail={}", NotStored::NoLifetime.as_str());
            return (self.forwarded(parts, body, &status), Delivery::FromOrigin);
        }
        // A stored copy without a Date would be dated by each hit instead.
        stamp_date(&mut parts.headers, response_time);
        let max_bytes = self.policy.store.max_object_bytes;
        let fill = Fill::new(
            parts.status,
            parts.headers,
            vary,
            self.key.extra.clone(),
            max_bytes,
        );
        // This request's reader joins before the fill task starts, so the fill cannot have
        // outgrown its limit and dropped its start yet.
        let answer = self.answer_from_fill(&fill, own, &format!("{fwd}; stored"));
        let done = leader.map(|l| l.share(fill.clone()));
        let job = FillJob {
            cache: self.cache.clone(),
            key: self.key.clone(),
            site: self.policy.site.clone(),
            fill: fill.clone(),
            freshness,
            seq,
            deadline: self.upstream.deadline,
            origin_bytes: self.policy.origin_bytes.clone(),
            _done: done,
        };
        tokio::spawn(job.run(body));
        let answer = answer.expect("a fill nothing was pushed to has its start");
        (answer, Delivery::Filled)
    }

    /// `admit` for a client request: its log learns whether the body comes straight from the
    /// origin (then it counts as backhaul when it ends) or through a fill (counted there).
    fn admit_logged(
        &self,
        resp: Response<OriginBody>,
        request_time: f64,
        seq: u64,
        leader: Option<Leader>,
        fwd: &str,
        log: &mut RequestLog,
    ) -> Response<OutBody> {
        let (resp, delivery) = self.admit(resp, request_time, seq, leader, fwd);
        log.from_origin = delivery == Delivery::FromOrigin;
        resp
    }

    fn spawn_revalidation(&self, obj: Arc<Object>) {
        // One background refresh per URL at a time: it holds the URL's collapse slot.
        let Join::Leader(leader) = self.cache.collapse.join(self.key.hash, self.cache.fetch_seq()) else {
            return;
        };
        let cache = self.cache.clone();
        let policy = self.policy.clone();
        let snapshot = self.snapshot.clone();
        let upstream = self.upstream.clone();
        let key = self.key.clone();
        let path_and_query = self.path_and_query.clone();
        let headers = self.headers.clone();
        let forward = self.forward.clone();
        tokio::spawn(async move {
            let ctx = Ctx {
                cache: &cache,
                policy: &policy,
                snapshot: &snapshot,
                upstream: &upstream,
                key,
                directives: RequestDirectives::default(),
                head: false,
                path_and_query,
                headers,
                forward,
            };
            let request_time = now_secs();
            let seq = cache.fetch_seq();
            let m = &policy.metrics;
            match ctx.fetch_for_cache(Some(&obj), &mut Attempts::default()).await {
                Ok(resp) if resp.status() == StatusCode::NOT_MODIFIED => {
                    m.not_modified.inc();
                    ctx.refresh(obj, resp.headers(), request_time, now_secs(), seq);
                    drop(leader);
                }
                Ok(resp) if resp.status().is_server_error() => {
                    m.revalidation_error.inc();
                    drop(leader);
                }
                Ok(resp) => {
                    m.replaced.inc();
                    // Stored by the fill task; nobody reads this copy.
                    let _ = ctx.admit(resp, request_time, seq, Some(leader), "fwd=stale");
                }
                Err(e) => {
                    m.revalidation_error.inc();
                    tracing::debug!(error = %e, "background revalidation failed");
                    drop(leader);
                }
            }
        });
    }

    /// An answer made from a stored object: 304 to a client whose copy is current, 206 or 416
    /// for a range, otherwise the object, with `Age`.
    fn answer_from_object(&self, obj: &Arc<Object>, now: f64, status: &'static str) -> Response<OutBody> {
        let current_age = obj.freshness.age(now);
        let age = current_age.max(0.0) as u64;
        let ttl = if obj.is_soft_purged() {
            -(current_age as i64)
        } else {
            obj.freshness.ttl(now)
        };
        let cache_status = hit_headers::status_value(status, ttl, || cache_status_value(status, Some(ttl)));
        let via = self.snapshot.via(http::Version::HTTP_11);
        let mut headers = hit_headers::for_hit(obj.header_block(), via);
        if obj.status == StatusCode::OK && conditional::client_has_current(&self.headers, &headers) {
            let mut headers = conditional::not_modified_headers(&headers);
            hit_headers::stamp(&mut headers, age, cache_status);
            return build(StatusCode::NOT_MODIFIED, headers, OutBody::empty());
        }
        let len = obj.body().len() as u64;
        let range = range::answer(&self.headers, &headers, len);
        hit_headers::stamp(&mut headers, age, cache_status);
        let (status, body) = match (obj.status, range) {
            (StatusCode::OK, range::RangeAnswer::Partial { start, end }) => {
                headers.insert(
                    header::CONTENT_RANGE,
                    header_value(&format!("bytes {start}-{end}/{len}")),
                );
                let slice = obj.body_bytes().slice(start as usize..=end as usize);
                (StatusCode::PARTIAL_CONTENT, slice)
            }
            (StatusCode::OK, range::RangeAnswer::Unsatisfiable) => {
                headers.insert(header::CONTENT_RANGE, header_value(&format!("bytes */{len}")));
                (StatusCode::RANGE_NOT_SATISFIABLE, Bytes::new())
            }
            _ => (obj.status, obj.body_bytes()),
        };
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let body = if self.head || body.is_empty() {
            OutBody::empty()
        } else {
            OutBody::Local(Some(body))
        };
        build(status, headers, body)
    }

    /// A response streamed from a fill (this request's own fetch, or one it collapsed onto).
    /// `own` is the origin's full header set for the request that fetched it; requests that
    /// collapse onto the fill get what is stored. None when the body is needed and the fill,
    /// past the size limit, no longer holds its start.
    fn answer_from_fill(
        &self,
        fill: &Arc<Fill>,
        own: Option<HeaderMap>,
        status: &str,
    ) -> Option<Response<OutBody>> {
        let cache_status = cache_status_value(status, None);
        let mut headers = own.unwrap_or_else(|| fill.headers.clone());
        strip_for_this_cache_only(&mut headers);
        if fill.status == StatusCode::OK && conditional::client_has_current(&self.headers, &headers) {
            let mut headers = conditional::not_modified_headers(&headers);
            finish_headers(&mut headers, cache_status, self.snapshot);
            return Some(build(StatusCode::NOT_MODIFIED, headers, OutBody::empty()));
        }
        // A range of a response still arriving: answered from the fill when its length is
        // known (otherwise the whole response, which RFC 9110 §14.2 allows).
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let (StatusCode::OK, Some(len)) = (fill.status, declared) {
            match range::answer(&self.headers, &headers, len) {
                range::RangeAnswer::Partial { start, end } => {
                    headers.insert(
                        header::CONTENT_RANGE,
                        header_value(&format!("bytes {start}-{end}/{len}")),
                    );
                    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start + 1));
                    finish_headers(&mut headers, cache_status, self.snapshot);
                    let body = OutBody::Fill(fill.range_reader(start, end - start + 1)?);
                    return Some(build(StatusCode::PARTIAL_CONTENT, headers, body));
                }
                range::RangeAnswer::Unsatisfiable => {
                    headers.insert(header::CONTENT_RANGE, header_value(&format!("bytes */{len}")));
                    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
                    finish_headers(&mut headers, cache_status, self.snapshot);
                    return Some(build(
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        headers,
                        OutBody::empty(),
                    ));
                }
                range::RangeAnswer::Full => {}
            }
        }
        finish_headers(&mut headers, cache_status, self.snapshot);
        let body = if self.head {
            OutBody::empty()
        } else {
            OutBody::Fill(fill.reader()?)
        };
        Some(build(fill.status, headers, body))
    }

    /// The origin's response passed through, with `Cache-Status` saying why it was not stored.
    /// `admit`, its only caller, has already stripped the hop-by-hop fields.
    fn forwarded(
        &self,
        mut parts: http::response::Parts,
        body: OriginBody,
        status: &str,
    ) -> Response<OutBody> {
        // A head the inline parser found clean holds none of them (`hop_by_hop_removed`).
        if !body.hop_by_hop_removed() {
            strip_for_this_cache_only(&mut parts.headers);
        }
        let cache_status = cache_status_value(status, None);
        finish_headers(&mut parts.headers, cache_status, self.snapshot);
        parts.version = http::Version::HTTP_11;
        Response::from_parts(parts, OutBody::Origin(body))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    FromOrigin,
    Filled,
}

fn build(status: StatusCode, headers: HeaderMap, body: OutBody) -> Response<OutBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// Whether the origin could not be reached or answered nothing usable (the cache is
/// "disconnected", RFC 9111 §4.2.4), as opposed to answering with an error.
fn unreachable(e: &ProxyError) -> bool {
    matches!(
        e,
        ProxyError::OriginConnect { .. }
            | ProxyError::OriginProtocol { .. }
            | ProxyError::OriginTimeout { .. }
            | ProxyError::NoHealthyOrigin { .. }
    )
}

/// The fields every response of the cache phase gets (hits get them from `hit_headers`).
/// Surrogate-Control and Outpost-CDN-Cache-Control, addressed to this cache, are already gone:
/// stored objects decode without them (`fields::decode_for_client`), and origin and fill
/// responses have them removed where they enter the response.
fn finish_headers(headers: &mut HeaderMap, cache_status: HeaderValue, snapshot: &Snapshot) {
    headers.append(CACHE_STATUS.clone(), cache_status);
    headers.append(header::VIA, snapshot.via(http::Version::HTTP_11).clone());
}

/// `Outpost; <status>[; ttl=<ttl>]` (RFC 9211), written straight into the value's buffer:
/// this runs for every hit, and `format!` machinery cost more than the rest of the header.
fn cache_status_value(status: &str, ttl: Option<i64>) -> HeaderValue {
    let mut text = bytes::BytesMut::with_capacity(CACHE_NAME.len() + status.len() + 28);
    text.extend_from_slice(CACHE_NAME.as_bytes());
    text.extend_from_slice(b"; ");
    text.extend_from_slice(status.as_bytes());
    if let Some(ttl) = ttl {
        let ttl = ttl.clamp(-SF_INTEGER_MAX, SF_INTEGER_MAX);
        text.extend_from_slice(b"; ttl=");
        text.extend_from_slice(itoa::Buffer::new().format(ttl).as_bytes());
    }
    HeaderValue::from_maybe_shared(text.freeze()).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// Pulls an origin body into a fill and, if it arrives whole and within the size limit,
/// stores it. Runs on its own task so the fill completes for every reader even when the
/// client that started it goes away; past the size limit it fetches only as fast as the
/// readers take the body, and not at all once they are gone.
struct FillJob {
    cache: Arc<Cache>,
    key: CacheKey,
    site: Arc<str>,
    fill: Arc<Fill>,
    freshness: Freshness,
    seq: u64,
    deadline: Option<Instant>,
    origin_bytes: prometheus_client::metrics::counter::Counter,
    /// Held until the fill ends: until then, requests for the URL join this fill.
    _done: Option<FillDone>,
}

impl FillJob {
    async fn run(mut self, mut body: OriginBody) {
        let started = Instant::now();
        let mut total: u64 = 0;
        let complete = loop {
            let next = async {
                if self.fill.room().await {
                    Some(body.frame().await)
                } else {
                    None
                }
            };
            let next = match self.deadline {
                Some(d) => match tokio::time::timeout_at(d, next).await {
                    Ok(f) => f,
                    Err(_) => break false,
                },
                None => next.await,
            };
            let Some(frame) = next else {
                // Too large to store and nobody left to relay to: dropping the body closes
                // the origin's stream instead of fetching the rest for nothing.
                break false;
            };
            match frame {
                None => break true,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, url = %self.key.url, "origin body failed while filling the cache");
                    break false;
                }
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue };
                    total += data.len() as u64;
                    if !self.fill.push(data) {
                        // Too large to keep: stream on, stop sharing with new requests.
                        self._done = None;
                    }
                }
            }
        };
        drop(body);
        self.origin_bytes.inc_by(total);
        let declared = self
            .fill
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let whole = complete && declared.is_none_or(|len| len == total);
        let kept = if whole && started.elapsed() < outpost_cache::MAX_FILL {
            self.fill.body()
        } else {
            None
        };
        if let Some(body) = kept {
            let mut headers = self.fill.headers.clone();
            if declared.is_none() {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(total));
            }
            let obj = Object::new(
                &self.key,
                self.site.clone(),
                self.fill.status,
                headers,
                body,
                self.freshness.clone(),
                self.fill.vary.clone(),
                self.seq,
            );
            self.cache.store(&self.key, obj);
        }
        self.fill.finish(whole);
    }
}

/// After a successful unsafe request, drop what the cache holds for its target and for the
/// Location / Content-Location it names on the same host (RFC 9111 §4.4).
pub(super) fn invalidate_after_unsafe(
    cache: &Cache,
    policy: &SiteCache,
    scheme: &str,
    host: &str,
    target: Option<&PathAndQuery>,
    response: &HeaderMap,
) {
    let pq = target.map_or("/", PathAndQuery::as_str);
    cache.invalidate(&CacheKey::new(scheme, host, pq, &HeaderMap::new(), &policy.key));
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let Some(value) = response.get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let url = if value.starts_with('/') {
            format!("{scheme}://{host}{value}")
        } else {
            value.to_owned()
        };
        let Ok(uri) = url.parse::<http::Uri>() else {
            continue;
        };
        if uri.host().is_some_and(|h| h.eq_ignore_ascii_case(host)) {
            let pq = uri.path_and_query().map_or("/", PathAndQuery::as_str);
            cache.invalidate(&CacheKey::new(scheme, host, pq, &HeaderMap::new(), &policy.key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_status_names_the_cache_the_outcome_and_the_remaining_ttl() {
        assert_eq!(cache_status_value("hit", Some(3599)), "Outpost; hit; ttl=3599");
        assert_eq!(cache_status_value("hit", Some(-12)), "Outpost; hit; ttl=-12");
        assert_eq!(
            cache_status_value("fwd=miss; stored", None),
            "Outpost; fwd=miss; stored"
        );
    }

    #[test]
    fn cache_status_ttl_stays_a_structured_field_integer() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=99999999999999999999"),
        );
        let d = ResponseDirectives::parse(&h);
        let f = Freshness::compute(0.0, 0.0, StatusCode::OK, &h, &d, &Default::default());
        assert_eq!(
            cache_status_value("hit", Some(f.ttl(0.0))),
            "Outpost; hit; ttl=999999999999999"
        );
        h.insert(header::AGE, HeaderValue::from_static("-1"));
        let f = Freshness::compute(0.0, 0.0, StatusCode::OK, &h, &d, &Default::default());
        assert_eq!(
            cache_status_value("hit", Some(f.ttl(0.0))),
            "Outpost; hit; ttl=-999999999999999",
            "an invalid Age is infinitely old"
        );
        assert_eq!(
            cache_status_value("hit", Some(999_999_999_999_999)),
            "Outpost; hit; ttl=999999999999999"
        );
    }
}
