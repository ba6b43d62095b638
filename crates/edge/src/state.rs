//! The config snapshot the request path reads: one immutable value per config version, swapped
//! atomically on reload. A request loads it once and finishes on it, whatever reloads happen
//! meanwhile.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::HeaderValue;
use outpost_config::{ClientTimeouts, Limits, LoadedConfig};
use rustls::ServerConfig;
use tokio_util::sync::CancellationToken;

use outpost_protect::rate_limit::RateLimit;

use crate::access_log::AccessLog;
use crate::metrics::{Metrics, SiteMetrics};
use crate::router::Router;
use crate::server::tls::{self, CertStore};
use crate::upstream::pool::Pool;

pub struct Site {
    pub name: Arc<str>,
    pub pool: Arc<Pool>,
    pub metrics: Arc<SiteMetrics>,
    pub rate_limits: Vec<SiteLimit>,
    /// Custom WAF rules; None when the site has none.
    pub waf: Option<outpost_protect::waf::Waf>,
    /// Hit counters by rule id.
    pub waf_hits: HashMap<Arc<str>, prometheus_client::metrics::counter::Counter>,
    /// The site's cache policy; None when the site (or the PoP) does not cache.
    pub cache: Option<Arc<SiteCache>>,
    pub forwarded_headers: outpost_config::ForwardedHeaders,
}

/// How one site uses the PoP's cache, resolved from `[site.cache]`.
pub struct SiteCache {
    pub site: Arc<str>,
    pub key: outpost_cache::KeyPolicy,
    pub lifetime: outpost_cache::LifetimePolicy,
    pub store: outpost_cache::StorePolicy,
    /// Seconds past its lifetime a stored response may answer when the origin fails.
    pub grace_secs: u64,
    pub metrics: crate::metrics::CacheMetrics,
    /// The site's backhaul counter, for bytes that fills pull from origins.
    pub origin_bytes: prometheus_client::metrics::counter::Counter,
}

impl SiteCache {
    fn build(site: &outpost_config::SiteConfig, metrics: &Metrics) -> Result<Self, String> {
        let c = &site.cache;
        let headers = c
            .key_headers
            .iter()
            .map(|h| http::HeaderName::from_bytes(h.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("site \"{}\" cache.key_headers: {e}", site.name))?;
        Ok(Self {
            site: site.name.as_str().into(),
            key: outpost_cache::KeyPolicy {
                query: match c.query {
                    outpost_config::CacheQuery::Keep => outpost_cache::QueryMode::Keep,
                    outpost_config::CacheQuery::Sort => outpost_cache::QueryMode::Sort,
                    outpost_config::CacheQuery::Ignore => outpost_cache::QueryMode::Ignore,
                },
                ignore_params: c.ignore_params.clone(),
                headers,
                cookies: c.key_cookies.clone(),
            },
            lifetime: outpost_cache::LifetimePolicy {
                default_ttl: c.default_ttl,
                ttl_override: c.ttl,
            },
            store: outpost_cache::StorePolicy {
                cache_everything: c.cache_everything,
                store_set_cookie: c.store_set_cookie,
                has_default_ttl: c.default_ttl.is_some() || c.ttl.is_some(),
                max_object_bytes: c.max_object_size,
            },
            grace_secs: c.stale_if_error.as_secs(),
            metrics: metrics.site_cache(&site.name),
            origin_bytes: metrics.site(&site.name).origin_bytes,
        })
    }
}

/// A rate limit of one site with its pre-resolved counters.
pub struct SiteLimit {
    pub limit: Arc<RateLimit>,
    pub blocked: prometheus_client::metrics::counter::Counter,
    pub logged: prometheus_client::metrics::counter::Counter,
}

/// Whom the PoP believes about the client's address.
pub struct ClientIpPolicy {
    pub trusted: Vec<ipnet::IpNet>,
    pub header: Option<http::HeaderName>,
}

impl ClientIpPolicy {
    pub fn is_trusted(&self, ip: std::net::IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client of a request that arrived from `peer`: when the peer is a trusted proxy and
    /// a client header is configured, the right-most address in it that is not a trusted
    /// proxy itself (addresses further left were written by the client and prove nothing).
    pub fn client_of(&self, peer: std::net::IpAddr, headers: &http::HeaderMap) -> std::net::IpAddr {
        let Some(name) = &self.header else { return peer };
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut hops: Vec<&str> = Vec::new();
        for value in headers.get_all(name) {
            let Ok(value) = value.to_str() else { return peer };
            hops.extend(value.split(',').map(str::trim));
        }
        for hop in hops.iter().rev() {
            match hop.parse::<std::net::IpAddr>().map(|ip| ip.to_canonical()) {
                Ok(ip) if self.is_trusted(ip) => continue,
                Ok(ip) => return ip,
                // A malformed entry ends the chain we can believe.
                Err(_) => return peer,
            }
        }
        peer
    }
}

pub struct Snapshot {
    pub loaded: LoadedConfig,
    /// Increments with every applied config; 1 is the config the PoP started with.
    pub generation: u64,
    pub applied_at: std::time::SystemTime,
    pub sites: Vec<Site>,
    pub pools: Vec<Arc<Pool>>,
    pub routers: HashMap<String, Router>,
    pub tls: HashMap<String, Arc<ServerConfig>>,
    pub certs: Arc<CertStore>,
    /// `Via` values for HTTP/1.0, HTTP/1.1 and HTTP/2 messages.
    via: [HeaderValue; 3],
    pub limits: Limits,
    pub timeouts: ClientTimeouts,
    pub access_log: Arc<AccessLog>,
    pub client_ip: ClientIpPolicy,
    /// Listeners whose connections start with a PROXY protocol header.
    pub proxy_protocol: std::collections::HashSet<String>,
    /// Stops this version's background tasks (health checks) once it is replaced.
    pub tasks: CancellationToken,
}

impl Snapshot {
    pub fn via(&self, version: http::Version) -> &HeaderValue {
        match version {
            http::Version::HTTP_10 | http::Version::HTTP_09 => &self.via[0],
            http::Version::HTTP_2 => &self.via[2],
            _ => &self.via[1],
        }
    }

    pub fn version(&self) -> &str {
        self.loaded
            .config
            .version
            .as_deref()
            .unwrap_or(&self.loaded.hash[..12])
    }

    /// Builds the next snapshot. Loads certificate files and builds clients; touches nothing
    /// that serves traffic, so an error here leaves the running config untouched.
    pub fn build(
        loaded: LoadedConfig,
        previous: Option<&Snapshot>,
        metrics: &Metrics,
        cert_store: &Arc<ArcSwap<CertStore>>,
        epoch: Instant,
    ) -> Result<Self, String> {
        let cfg = &loaded.config;
        let certs = Arc::new(CertStore::load(&cfg.certificates)?);

        let mut pools = Vec::with_capacity(cfg.pools.len());
        for p in &cfg.pools {
            let old = previous.and_then(|s| s.pools.iter().find(|o| o.name == p.name));
            pools.push(Arc::new(Pool::build(p, old.map(|a| a.as_ref()), metrics, epoch)?));
        }

        let mut sites = Vec::with_capacity(cfg.sites.len());
        let mut routers: HashMap<String, Router> = cfg
            .listeners
            .iter()
            .map(|l| (l.name.clone(), Router::default()))
            .collect();
        for (index, s) in cfg.sites.iter().enumerate() {
            let pool = pools
                .iter()
                .find(|p| p.name == s.pool)
                .ok_or_else(|| format!("site \"{}\": unknown pool \"{}\"", s.name, s.pool))?
                .clone();
            let mut rate_limits = Vec::with_capacity(s.rate_limits.len());
            for cfg in &s.rate_limits {
                // Same site, same limit, same settings: keep its buckets across the reload.
                let kept = previous
                    .and_then(|p| p.sites.iter().find(|old| *old.name == *s.name))
                    .and_then(|old| old.rate_limits.iter().find(|l| l.limit.same_config(cfg)))
                    .map(|l| l.limit.clone());
                let limit = match kept {
                    Some(limit) => limit,
                    None => Arc::new(
                        RateLimit::new(cfg)
                            .map_err(|e| format!("site \"{}\" rate_limit \"{}\": {e}", s.name, cfg.name))?,
                    ),
                };
                let counter = |action| {
                    metrics
                        .rate_limited
                        .get_or_create(&crate::metrics::RateLimitLabels {
                            site: s.name.clone(),
                            limit: cfg.name.clone(),
                            action,
                        })
                        .clone()
                };
                rate_limits.push(SiteLimit {
                    limit,
                    blocked: counter("blocked"),
                    logged: counter("logged"),
                });
            }
            let waf = outpost_protect::waf::Waf::compile(&s.waf_rules, &s.waf)
                .map_err(|e| format!("site \"{}\": {e}", s.name))?;
            let waf_hits = waf
                .rule_ids()
                .into_iter()
                .map(|(id, action)| {
                    let action = match action {
                        outpost_config::WafAction::Block => "block",
                        outpost_config::WafAction::Log => "log",
                        outpost_config::WafAction::Allow => "allow",
                    };
                    let labels = crate::metrics::WafLabels {
                        site: s.name.clone(),
                        rule: id.to_string(),
                        action,
                    };
                    (id, metrics.waf_hits.get_or_create(&labels).clone())
                })
                .collect();
            sites.push(Site {
                name: s.name.as_str().into(),
                pool,
                metrics: Arc::new(metrics.site(&s.name)),
                rate_limits,
                waf: (!waf.is_empty()).then_some(waf),
                waf_hits,
                cache: if s.cache.enabled && cfg.cache.memory > 0 {
                    Some(Arc::new(SiteCache::build(s, metrics)?))
                } else {
                    None
                },
                forwarded_headers: s.forwarded_headers,
            });
            for (listener, router) in routers.iter_mut() {
                if s.listeners.is_empty() || s.listeners.iter().any(|l| l == listener) {
                    for host in &s.hosts {
                        router.add(host, index);
                    }
                }
            }
        }

        let mut tls_configs = HashMap::new();
        for l in &cfg.listeners {
            if let Some(t) = &l.tls {
                if certs.certs().is_empty() {
                    return Err(format!(
                        "listener \"{}\" serves TLS but no certificate is configured",
                        l.name
                    ));
                }
                tls_configs.insert(
                    l.name.clone(),
                    tls::server_config(cert_store.clone(), t.default_certificate.clone()),
                );
            }
        }

        let access_log = match previous {
            Some(p) if p.access_log.spec() == cfg.log.access_log => p.access_log.clone(),
            _ => Arc::new(
                AccessLog::open(&cfg.log.access_log, metrics.access_log_dropped.clone())
                    .map_err(|e| format!("log.access_log: cannot open \"{}\": {e}", cfg.log.access_log))?,
            ),
        };

        let pseudonym = format!("outpost-{}", cfg.pop.id);
        let via = [
            crate::proxy::headers::via_value(http::Version::HTTP_10, &pseudonym),
            crate::proxy::headers::via_value(http::Version::HTTP_11, &pseudonym),
            crate::proxy::headers::via_value(http::Version::HTTP_2, &pseudonym),
        ];
        Ok(Self {
            generation: previous.map_or(1, |p| p.generation + 1),
            applied_at: std::time::SystemTime::now(),
            sites,
            pools,
            routers,
            tls: tls_configs,
            certs,
            via,
            limits: cfg.limits.clone(),
            timeouts: cfg.timeouts.clone(),
            access_log,
            client_ip: ClientIpPolicy {
                trusted: cfg.client_ip.trusted_proxies.clone(),
                header: cfg
                    .client_ip
                    .header
                    .as_deref()
                    .map(|h| http::HeaderName::from_bytes(h.as_bytes()))
                    .transpose()
                    .map_err(|e| format!("client_ip.header: {e}"))?,
            },
            proxy_protocol: cfg
                .listeners
                .iter()
                .filter(|l| l.proxy_protocol)
                .map(|l| l.name.clone())
                .collect(),
            tasks: CancellationToken::new(),
            loaded,
        })
    }
}
