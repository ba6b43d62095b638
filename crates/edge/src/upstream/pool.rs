//! An origin pool as the request path sees it: its origins with their live state, the
//! balancer, the retry budget and the connections. Built per config version; origin state
//! (health, ejections, in-flight counts, warm connections) carries over across reloads.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::header::HeaderName;
use http::uri::{Authority, Scheme};
use outpost_config::{BalancePolicy, PoolConfig};
use prometheus_client::metrics::counter::Counter;

use super::balance::{hash_key, Balancer};
use super::client::ClientSettings;
use super::connect::OriginTls;
use super::h1::{self, H1Conns, OriginBody};
use super::health_state::HealthState;
use super::outlier::{OutlierPolicy, OutlierState};
use super::retry_budget::RetryBudget;
use super::SendError;
use crate::metrics::{Metrics, OriginMetrics, PoolLabels, PoolOutcomeLabels};
use crate::proxy::error::ProxyError;

/// `Pool::outage` values.
const AVAILABLE: u8 = 0;
const ALL_EJECTED: u8 = 1;
const NONE_LEFT: u8 = 2;

/// Live state of one origin that must survive a config reload.
pub struct OriginState {
    pub health: HealthState,
    pub outlier: OutlierState,
    pub in_flight: AtomicU64,
    /// Idle keep-alive connections of HTTP/1.1 pools (`h1.rs`).
    pub h1: Arc<H1Conns>,
    /// The multiplexed connection of HTTP/2 pools (`h2.rs`).
    pub h2: super::h2::H2Conn,
}

/// One request an origin is answering, counted in its `in_flight` (what least-requests
/// balancing compares) from the moment it is sent until its response body has ended or been
/// dropped: a long download keeps its origin busy for as long as it streams.
pub struct Busy(Arc<OriginState>);

impl Busy {
    pub fn enter(state: &Arc<OriginState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(state.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct Origin {
    pub url: String,
    pub scheme: Scheme,
    pub authority: Authority,
    pub weight: u32,
    pub backup: bool,
    pub state: Arc<OriginState>,
    pub metrics: OriginMetrics,
}

impl Origin {
    pub fn is_available(&self, now: Instant) -> bool {
        self.state.health.is_healthy() && !self.state.outlier.is_ejected(now)
    }
}

/// What a consistent-hash pool hashes.
#[derive(Debug, Clone)]
pub enum HashKey {
    Path,
    Uri,
    Host,
    ClientIp,
    Header(HeaderName),
}

impl HashKey {
    fn parse(spec: &str) -> Result<Self, String> {
        Ok(match spec {
            "path" => Self::Path,
            "uri" => Self::Uri,
            "host" => Self::Host,
            "client_ip" => Self::ClientIp,
            other => match other.strip_prefix("header:") {
                Some(name) => {
                    Self::Header(HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?)
                }
                None => return Err(format!("unknown hash_key \"{other}\"")),
            },
        })
    }
}

pub struct Pool {
    pub name: String,
    pub config: PoolConfig,
    pub origins: Vec<Origin>,
    primary: Vec<usize>,
    backup: Vec<usize>,
    primary_balancer: Balancer,
    backup_balancer: Balancer,
    hash_key: HashKey,
    pub client_settings: ClientSettings,
    /// TLS for `https://` origins, with the pool's HTTP version in ALPN.
    tls: Arc<OriginTls>,
    pub retry_budget: RetryBudget,
    pub outlier_policy: OutlierPolicy,
    pub epoch: Instant,
    /// What the pool last said about its origins (`AVAILABLE`, `ALL_EJECTED`, `NONE_LEFT`):
    /// an outage is logged when it starts or changes, not per request.
    outage: AtomicU8,
    no_healthy: Counter,
    pub retries_attempted: Counter,
    pub retries_budget_exhausted: Counter,
}

impl Pool {
    /// Builds a pool, reusing origin state and connections from `previous` where they still apply.
    pub fn build(
        cfg: &PoolConfig,
        previous: Option<&Pool>,
        metrics: &Metrics,
        epoch: Instant,
    ) -> Result<Self, String> {
        let settings = ClientSettings::of(cfg);
        let unchanged = previous.is_some_and(|p| p.client_settings == settings);
        let tls = match previous {
            Some(p) if unchanged => p.tls.clone(),
            _ => super::client::origin_tls(&settings).map_err(|e| format!("pool \"{}\": {e}", cfg.name))?,
        };
        let mut origins = Vec::with_capacity(cfg.origins.len());
        for o in &cfg.origins {
            let uri: http::Uri = o.url.parse().map_err(|e| format!("origin {}: {e}", o.url))?;
            let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTP);
            let authority = uri
                .authority()
                .cloned()
                .ok_or_else(|| format!("origin {} has no host", o.url))?;
            let state = previous
                .and_then(|p| p.origins.iter().find(|old| old.url == o.url))
                .map(|old| {
                    if !unchanged {
                        // New TLS, protocol or timeouts: the next request opens a connection
                        // with them.
                        old.state.h2.reset();
                        old.state.h1.clear();
                    }
                    old.state.clone()
                })
                .unwrap_or_else(|| {
                    Arc::new(OriginState {
                        health: HealthState::new(true),
                        outlier: OutlierState::new(epoch),
                        in_flight: AtomicU64::new(0),
                        h1: Default::default(),
                        h2: Default::default(),
                    })
                });
            let metrics = metrics.origin(&cfg.name, &o.url);
            metrics.healthy.set(i64::from(state.health.is_healthy()));
            origins.push(Origin {
                url: o.url.clone(),
                scheme,
                authority,
                weight: o.weight.max(1),
                backup: o.backup,
                state,
                metrics,
            });
        }
        let primary: Vec<usize> = (0..origins.len()).filter(|&i| !origins[i].backup).collect();
        let backup: Vec<usize> = (0..origins.len()).filter(|&i| origins[i].backup).collect();
        let weights = |idx: &[usize]| idx.iter().map(|&i| origins[i].weight).collect::<Vec<_>>();
        let primary_balancer = Balancer::new(cfg.balance, &weights(&primary));
        let backup_balancer = Balancer::new(cfg.balance, &weights(&backup));
        let outlier_policy = OutlierPolicy {
            consecutive_failures: cfg.outlier.consecutive_failures,
            base_ejection: cfg.outlier.base_ejection,
            max_ejection: cfg.outlier.max_ejection,
        };
        let pool_labels = PoolLabels {
            pool: cfg.name.clone(),
        };
        let outcome = |outcome| {
            metrics
                .retries
                .get_or_create(&PoolOutcomeLabels {
                    pool: cfg.name.clone(),
                    outcome,
                })
                .clone()
        };
        Ok(Self {
            name: cfg.name.clone(),
            hash_key: HashKey::parse(&cfg.hash_key).map_err(|e| format!("pool \"{}\": {e}", cfg.name))?,
            config: cfg.clone(),
            origins,
            primary,
            backup,
            primary_balancer,
            backup_balancer,
            client_settings: settings,
            tls,
            retry_budget: RetryBudget::new(cfg.retry.budget_ratio, cfg.retry.min_per_second, epoch),
            outlier_policy,
            epoch,
            outage: AtomicU8::new(previous.map_or(AVAILABLE, |p| p.outage.load(Ordering::Relaxed))),
            no_healthy: metrics.no_healthy_origin.get_or_create(&pool_labels).clone(),
            retries_attempted: outcome("attempted"),
            retries_budget_exhausted: outcome("budget_exhausted"),
        })
    }

    /// One exchange with one origin over the pool's HTTP version, which fails with
    /// `SendError::Timeout` when no response head came by `deadline`. The request carries the
    /// site in Host (HTTP/1.1, origin-form URI) or in the URI's authority (HTTP/2). Where
    /// [`Pool::gives_fields_back`] says so, the request's fields come back in `fields_back`,
    /// and `added` fields are written with them (the caller inserts them into any other
    /// request's map).
    pub async fn send_to(
        &self,
        index: usize,
        req: http::Request<crate::proxy::body::ProxyBody>,
        deadline: tokio::time::Instant,
        added: Option<&dyn super::AddedFields>,
        fields_back: &mut Option<http::HeaderMap>,
    ) -> Result<http::Response<OriginBody>, SendError> {
        let origin = &self.origins[index];
        let settings = &self.client_settings;
        match settings.protocol {
            outpost_config::UpstreamProtocol::Http1 => {
                let target = h1::Target {
                    conns: &origin.state.h1,
                    scheme: &origin.scheme,
                    authority: &origin.authority,
                    tls: &self.tls,
                    connect_timeout: settings.connect_timeout,
                    idle_timeout: settings.idle_timeout,
                    deadline,
                };
                h1::send(target, req, added, fields_back).await
            }
            // Boxed: the HTTP/2 connect path (TCP + TLS handshake) would otherwise make every
            // request's future several kilobytes larger, all of it copied on every move.
            outpost_config::UpstreamProtocol::Http2 => {
                debug_assert!(
                    added.is_none(),
                    "HTTP/2 requests carry their added fields in the map"
                );
                let exchange = Box::pin(super::h2::send(
                    &origin.state.h2,
                    &origin.scheme,
                    &origin.authority,
                    &self.tls,
                    settings.connect_timeout,
                    req,
                ));
                super::by_deadline(deadline, exchange).await
            }
        }
    }

    /// Whether [`Pool::send_to`] hands back the fields of a request with this body and these
    /// fields (the HTTP/1.1 inline path writes them into the request head first), so that a
    /// caller that may send it again need not copy them in advance.
    pub fn gives_fields_back(&self, body: &crate::proxy::body::ProxyBody, headers: &http::HeaderMap) -> bool {
        !self.is_http2() && h1::is_inline(body, headers)
    }

    pub fn is_http2(&self) -> bool {
        self.client_settings.protocol == outpost_config::UpstreamProtocol::Http2
    }

    /// The request's hash for consistent hashing, if this pool hashes.
    pub fn request_hash(
        &self,
        uri: &http::Uri,
        headers: &http::HeaderMap,
        host: &str,
        client_ip: IpAddr,
    ) -> Option<u64> {
        if self.config.balance != BalancePolicy::ConsistentHash {
            return None;
        }
        Some(match &self.hash_key {
            HashKey::Path => hash_key(uri.path().as_bytes()),
            HashKey::Uri => hash_key(uri.path_and_query().map_or("/", |pq| pq.as_str()).as_bytes()),
            HashKey::Host => hash_key(host.as_bytes()),
            HashKey::ClientIp => match client_ip {
                IpAddr::V4(v4) => hash_key(&v4.octets()),
                IpAddr::V6(v6) => hash_key(&v6.octets()),
            },
            HashKey::Header(name) => hash_key(headers.get(name).map_or(&[][..], |v| v.as_bytes())),
        })
    }

    /// Chooses an origin: primaries first, backups only when no primary is available.
    /// `avoid` lists origins already tried for this request; they are used only as a last resort.
    pub fn select(&self, hash: Option<u64>, avoid: &[usize], now: Instant) -> Result<usize, ProxyError> {
        for (set, balancer) in [
            (&self.primary, &self.primary_balancer),
            (&self.backup, &self.backup_balancer),
        ] {
            if set.is_empty() {
                continue;
            }
            let fresh = |i: usize| self.origins[set[i]].is_available(now) && !avoid.contains(&set[i]);
            let load = |i: usize| self.origins[set[i]].state.in_flight.load(Ordering::Relaxed);
            let picked = balancer
                .pick(&fresh, &load, hash)
                .or_else(|| balancer.pick(&|i| self.origins[set[i]].is_available(now), &load, hash));
            if let Some(i) = picked {
                if self.report(AVAILABLE, avoid) {
                    tracing::info!(pool = %self.name, origin = %self.origins[set[i]].url, "pool has an available origin again");
                }
                return Ok(set[i]);
            }
        }
        // Every origin that passes its health checks was ejected for errors: ejection then
        // protects nothing, and a 503 for everyone is worse than trying them (Envoy's panic
        // threshold does the same). Origins failing health checks stay out.
        for set in [&self.primary, &self.backup] {
            let passing = set
                .iter()
                .copied()
                .filter(|&i| self.origins[i].state.health.is_healthy() && !avoid.contains(&i));
            if let Some(i) = passing.min_by_key(|&i| self.origins[i].state.in_flight.load(Ordering::Relaxed))
            {
                if self.report(ALL_EJECTED, avoid) {
                    tracing::warn!(pool = %self.name, "every healthy origin is ejected for errors; sending traffic to them anyway");
                }
                return Ok(i);
            }
        }
        self.no_healthy.inc();
        let unhealthy = self
            .origins
            .iter()
            .filter(|o| !o.state.health.is_healthy())
            .count();
        let ejected = self
            .origins
            .iter()
            .filter(|o| o.state.outlier.is_ejected(now))
            .count();
        let detail = format!(
            "{} origins: {unhealthy} failing health checks, {ejected} ejected after errors",
            self.origins.len()
        );
        if self.report(NONE_LEFT, avoid) {
            tracing::error!(pool = %self.name, %detail, "no origin of the pool can take traffic; answering 503");
        }
        Err(ProxyError::NoHealthyOrigin {
            pool: self.name.clone(),
            detail,
        })
    }

    /// Records what a request's first pick found; true when that changes what the pool last
    /// reported, which is then logged. A retry's pick (origins to `avoid`) reports nothing: it
    /// can find none left where a first pick found one, and the log would flap per request.
    fn report(&self, outage: u8, avoid: &[usize]) -> bool {
        avoid.is_empty() && self.outage.swap(outage, Ordering::Relaxed) != outage
    }

    /// Records the outcome of one exchange with an origin for passive outlier detection.
    pub fn record_outcome(&self, origin: usize, failed: bool, now: Instant) {
        let o = &self.origins[origin];
        if failed {
            if let Some(ejected_for) = o.state.outlier.record_failure(now, &self.outlier_policy) {
                o.metrics.ejections.inc();
                o.metrics.healthy.set(0);
                tracing::warn!(pool = %self.name, origin = %o.url, ejected_for = ?ejected_for, "origin ejected after consecutive failures");
            }
        } else {
            o.state.outlier.record_success(now, &self.outlier_policy);
        }
    }

    /// Called when this pool's config starts serving: without active checks nothing would ever
    /// mark an origin healthy again, so an origin that failed checks under the previous config
    /// is trusted again (passive ejection still guards it).
    pub fn activate(&self) {
        if self.config.health_check.is_none() {
            for o in &self.origins {
                if !o.state.health.is_healthy() {
                    o.state.health.record(true, 1, 1);
                }
            }
        }
        self.refresh_gauges();
    }

    /// Refreshes the availability gauges (ejections expire without an event).
    pub fn refresh_gauges(&self) {
        let now = Instant::now();
        for o in &self.origins {
            o.metrics.healthy.set(i64::from(o.is_available(now)));
        }
    }
}
