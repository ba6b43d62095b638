//! Every metric the PoP exports, declared in one place.
//!
//! Labels are bounded by the config (site, pool, origin and listener names) or by small enums
//! (status class, result): never raw paths or client addresses. The request path never looks a
//! series up by label: handles are resolved once per config version (`SiteMetrics`,
//! `OriginMetrics`) and cloned into the snapshot, so recording is a few atomic adds.

use std::borrow::Cow;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SiteClassLabels {
    pub site: String,
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitLabels {
    pub site: String,
    pub limit: String,
    pub action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WafLabels {
    pub site: String,
    pub rule: String,
    pub action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SiteLabels {
    pub site: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SiteResultLabels {
    pub site: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabels {
    pub tier: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OriginLabels {
    pub pool: String,
    pub origin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OriginResultLabels {
    pub pool: String,
    pub origin: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolOutcomeLabels {
    pub pool: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub listener: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    pub listener: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConfigInfoLabels {
    pub version: String,
    pub hash: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs .. ~52 s: covers cache hits on loopback up to slow origins.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// The PoP's metric families. Cheap to share: every family is reference-counted inside.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<SiteClassLabels, Counter>,
    pub request_duration: HistogramFamily<SiteLabels>,
    pub request_bytes: Family<SiteLabels, Counter>,
    pub response_bytes: Family<SiteLabels, Counter>,
    /// Requests answered before reaching a site (unknown host, limits, bad requests).
    pub rejected: Family<RejectLabels, Counter>,
    pub upstream_requests: Family<OriginResultLabels, Counter>,
    pub upstream_duration: HistogramFamily<OriginLabels>,
    pub origin_healthy: Family<OriginLabels, Gauge>,
    pub origin_ejections: Family<OriginLabels, Counter>,
    pub no_healthy_origin: Family<PoolLabels, Counter>,
    pub retries: Family<PoolOutcomeLabels, Counter>,
    pub tls_handshakes: Family<HandshakeLabels, Counter>,
    pub tls_cert_reloads: Family<ResultLabels, Counter>,
    pub active_connections: Family<ListenerLabels, Gauge>,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub config_info: Family<ConfigInfoLabels, Gauge>,
    pub access_log_dropped: Counter,
    pub rate_limited: Family<RateLimitLabels, Counter>,
    pub waf_hits: Family<WafLabels, Counter>,
    pub connections_refused: Family<RefusedLabels, Counter>,
    /// Cache lookups by site and result: hit, miss, stale (served stale, by reason), pass.
    pub cache_requests: Family<SiteResultLabels, Counter>,
    /// Revalidations with the origin by result (304, 200 = replaced, error).
    pub cache_revalidations: Family<SiteResultLabels, Counter>,
    /// Requests that waited for another request's origin fetch instead of making their own.
    pub cache_collapsed: Family<SiteLabels, Counter>,
    /// Response body bytes received from origins (the backhaul), by site.
    pub origin_bytes: Family<SiteLabels, Counter>,
    pub cache_bytes: Family<TierLabels, Gauge>,
    pub cache_objects: Family<TierLabels, Gauge>,
    pub cache_evictions: Family<TierLabels, Counter>,
    pub cache_purges: Family<KindLabels, Counter>,
    pub cache_purge_duration: Histogram,
    pub cache_purge_rules: Gauge,
    /// Response bytes handed to the kernel by reference from the cache's pages (see
    /// `server::splice`) instead of copied.
    pub spliced_bytes: Counter,
    /// Large stored bodies copied although they could have been spliced, by reason: `no_pipe`
    /// (the pipe bound or the kernel's pipe limits), `error` (the connection copies from then on).
    pub splice_fallbacks: Family<RejectLabels, Counter>,
    /// `splice_fallbacks` by reason, made once: every connection's writer holds them.
    pub splice_no_pipe: Counter,
    pub splice_failed: Counter,
}

impl Metrics {
    pub fn new(pop_id: &str) -> Self {
        let labels = [(Cow::Borrowed("pop"), Cow::Owned(pop_id.to_owned()))];
        let mut registry = Registry::with_prefix_and_labels("outpost", labels.into_iter());
        let splice_fallbacks: Family<RejectLabels, Counter> = Family::default();
        let splice_reason = |reason| splice_fallbacks.get_or_create(&RejectLabels { reason }).clone();
        let (splice_no_pipe, splice_failed) = (splice_reason("no_pipe"), splice_reason("error"));
        let m = Self {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            request_bytes: Family::default(),
            response_bytes: Family::default(),
            rejected: Family::default(),
            upstream_requests: Family::default(),
            upstream_duration: Family::new_with_constructor(latency_histogram),
            origin_healthy: Family::default(),
            origin_ejections: Family::default(),
            no_healthy_origin: Family::default(),
            retries: Family::default(),
            tls_handshakes: Family::default(),
            tls_cert_reloads: Family::default(),
            active_connections: Family::default(),
            config_reloads: Family::default(),
            config_info: Family::default(),
            access_log_dropped: Counter::default(),
            rate_limited: Family::default(),
            waf_hits: Family::default(),
            connections_refused: Family::default(),
            cache_requests: Family::default(),
            cache_revalidations: Family::default(),
            cache_collapsed: Family::default(),
            origin_bytes: Family::default(),
            cache_bytes: Family::default(),
            cache_objects: Family::default(),
            cache_evictions: Family::default(),
            cache_purges: Family::default(),
            cache_purge_duration: Histogram::new(exponential_buckets(0.000_01, 4.0, 10)),
            cache_purge_rules: Gauge::default(),
            spliced_bytes: Counter::default(),
            splice_fallbacks,
            splice_no_pipe,
            splice_failed,
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "requests",
            "Requests answered, by site and status class",
            m.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time from request head to last response byte, by site",
            m.request_duration.clone(),
        );
        r.register(
            "request_bytes",
            "Request body bytes received from clients",
            m.request_bytes.clone(),
        );
        r.register(
            "response_bytes",
            "Response body bytes sent to clients",
            m.response_bytes.clone(),
        );
        r.register(
            "rejected_requests",
            "Requests refused by the PoP itself: before routing, or for a body too large, stalled or too slow, by reason",
            m.rejected.clone(),
        );
        r.register(
            "upstream_requests",
            "Requests sent to origins, by result (status class or error kind)",
            m.upstream_requests.clone(),
        );
        r.register(
            "upstream_duration_seconds",
            "Time from sending a request to an origin to its response head",
            m.upstream_duration.clone(),
        );
        r.register(
            "origin_healthy",
            "1 when the origin may take traffic (healthy and not ejected)",
            m.origin_healthy.clone(),
        );
        r.register(
            "origin_ejections",
            "Passive outlier ejections",
            m.origin_ejections.clone(),
        );
        r.register(
            "no_healthy_origin",
            "Requests answered 503 because no origin of the pool could take them",
            m.no_healthy_origin.clone(),
        );
        r.register("retries", "Retry decisions, by outcome", m.retries.clone());
        r.register(
            "tls_handshakes",
            "TLS handshakes by listener and result",
            m.tls_handshakes.clone(),
        );
        r.register(
            "tls_certificate_reloads",
            "Certificate file reloads by result",
            m.tls_cert_reloads.clone(),
        );
        r.register(
            "active_connections",
            "Open client connections",
            m.active_connections.clone(),
        );
        r.register(
            "config_reloads",
            "Config reloads by result",
            m.config_reloads.clone(),
        );
        r.register(
            "config_info",
            "The active config's version and hash (value 1)",
            m.config_info.clone(),
        );
        r.register(
            "access_log_dropped",
            "Access log lines dropped because the writer fell behind",
            m.access_log_dropped.clone(),
        );
        r.register(
            "rate_limited",
            "Requests over a rate limit, by site, limit and action (blocked or logged)",
            m.rate_limited.clone(),
        );
        r.register(
            "waf_rule_hits",
            "WAF rule matches, by site, rule and action",
            m.waf_hits.clone(),
        );
        r.register(
            "connections_refused",
            "Client connections closed at accept, by reason (per-IP limit, untrusted or invalid PROXY header)",
            m.connections_refused.clone(),
        );
        r.register(
            "cache_requests",
            "Cacheable requests by site and result (hit, miss, stale_swr, stale_if_error, stale_max_stale, revalidated; pass: a URL that recently answered uncacheable goes to the origin without collapsing)",
            m.cache_requests.clone(),
        );
        r.register(
            "cache_revalidations",
            "Conditional requests to origins by result (not_modified, replaced, error)",
            m.cache_revalidations.clone(),
        );
        r.register(
            "cache_collapsed",
            "Requests served from another request's origin fetch (request collapsing)",
            m.cache_collapsed.clone(),
        );
        r.register(
            "origin_bytes",
            "Response body bytes fetched from origins (backhaul), by site",
            m.origin_bytes.clone(),
        );
        r.register(
            "cache_bytes",
            "Bytes held by each cache tier",
            m.cache_bytes.clone(),
        );
        r.register(
            "cache_objects",
            "URLs held by each cache tier (a URL may hold several Vary variants)",
            m.cache_objects.clone(),
        );
        r.register(
            "cache_evictions",
            "Objects evicted from a tier to stay within its budget",
            m.cache_evictions.clone(),
        );
        r.register(
            "cache_purges",
            "Purges by kind (url, prefix, tag, site)",
            m.cache_purges.clone(),
        );
        r.register(
            "cache_purge_duration_seconds",
            "Time a purge call took to become effective",
            m.cache_purge_duration.clone(),
        );
        r.register(
            "cache_purge_rules",
            "Prefix, tag and site purges not yet swept through the store",
            m.cache_purge_rules.clone(),
        );
        r.register(
            "spliced_bytes",
            "Response bytes sent from the cache's pages by reference (splice), not copied",
            m.spliced_bytes.clone(),
        );
        r.register(
            "splice_fallbacks",
            "Large stored bodies copied instead of spliced, by reason (no_pipe, error)",
            m.splice_fallbacks.clone(),
        );
        Self { registry, ..m }
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn site(&self, site: &str) -> SiteMetrics {
        let class = |class: &'static str| {
            self.requests
                .get_or_create(&SiteClassLabels {
                    site: site.to_owned(),
                    class,
                })
                .clone()
        };
        let labels = SiteLabels {
            site: site.to_owned(),
        };
        SiteMetrics {
            by_class: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            duration: self.request_duration.get_or_create(&labels).clone(),
            request_bytes: self.request_bytes.get_or_create(&labels).clone(),
            response_bytes: self.response_bytes.get_or_create(&labels).clone(),
            origin_bytes: self.origin_bytes.get_or_create(&labels).clone(),
        }
    }

    pub fn site_cache(&self, site: &str) -> CacheMetrics {
        let result = |result: &'static str| {
            self.cache_requests
                .get_or_create(&SiteResultLabels {
                    site: site.to_owned(),
                    result,
                })
                .clone()
        };
        let revalidation = |result: &'static str| {
            self.cache_revalidations
                .get_or_create(&SiteResultLabels {
                    site: site.to_owned(),
                    result,
                })
                .clone()
        };
        let labels = SiteLabels {
            site: site.to_owned(),
        };
        CacheMetrics {
            hit: result("hit"),
            miss: result("miss"),
            stale_swr: result("stale_swr"),
            stale_if_error: result("stale_if_error"),
            stale_max_stale: result("stale_max_stale"),
            revalidated: result("revalidated"),
            pass: result("pass"),
            not_modified: revalidation("not_modified"),
            replaced: revalidation("replaced"),
            revalidation_error: revalidation("error"),
            collapsed: self.cache_collapsed.get_or_create(&labels).clone(),
        }
    }

    pub fn origin(&self, pool: &str, origin: &str) -> OriginMetrics {
        let result = |result: &'static str| {
            self.upstream_requests
                .get_or_create(&OriginResultLabels {
                    pool: pool.to_owned(),
                    origin: origin.to_owned(),
                    result,
                })
                .clone()
        };
        let labels = OriginLabels {
            pool: pool.to_owned(),
            origin: origin.to_owned(),
        };
        OriginMetrics {
            by_class: [
                result("1xx"),
                result("2xx"),
                result("3xx"),
                result("4xx"),
                result("5xx"),
            ],
            connect_error: result("connect_error"),
            timeout: result("timeout"),
            protocol_error: result("protocol_error"),
            duration: self.upstream_duration.get_or_create(&labels).clone(),
            healthy: self.origin_healthy.get_or_create(&labels).clone(),
            ejections: self.origin_ejections.get_or_create(&labels).clone(),
        }
    }

    pub fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&RejectLabels { reason }).inc();
    }

    pub fn set_config_info(&self, version: &str, hash: &str) {
        self.config_info.clear();
        self.config_info
            .get_or_create(&ConfigInfoLabels {
                version: version.to_owned(),
                hash: hash.to_owned(),
            })
            .set(1);
    }
}

fn class_index(status: u16) -> usize {
    usize::from((status / 100).clamp(1, 5) - 1)
}

/// Pre-resolved series for one site.
#[derive(Clone)]
pub struct SiteMetrics {
    by_class: [Counter; 5],
    pub duration: Histogram,
    pub request_bytes: Counter,
    pub response_bytes: Counter,
    pub origin_bytes: Counter,
}

impl SiteMetrics {
    pub fn count_status(&self, status: u16) {
        self.by_class[class_index(status)].inc();
    }
}

/// Pre-resolved cache series for one site.
#[derive(Clone)]
pub struct CacheMetrics {
    pub hit: Counter,
    pub miss: Counter,
    pub stale_swr: Counter,
    pub stale_if_error: Counter,
    pub stale_max_stale: Counter,
    pub revalidated: Counter,
    pub pass: Counter,
    pub not_modified: Counter,
    pub replaced: Counter,
    pub revalidation_error: Counter,
    pub collapsed: Counter,
}

/// Pre-resolved series for one origin of one pool.
#[derive(Clone)]
pub struct OriginMetrics {
    by_class: [Counter; 5],
    pub connect_error: Counter,
    pub timeout: Counter,
    pub protocol_error: Counter,
    pub duration: Histogram,
    pub healthy: Gauge,
    pub ejections: Counter,
}

impl OriginMetrics {
    pub fn count_status(&self, status: u16) {
        self.by_class[class_index(status)].inc();
    }
}
