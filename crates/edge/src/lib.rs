//! `outpost-edge`: the PoP data plane.
//!
//! Owns everything between a client's socket and an origin's: listeners, TLS termination,
//! host routing, origin pools (balancing, health checks, outlier ejection, retries), proxying,
//! the admin listener and the PoP's telemetry. It reads configuration only as a validated
//! `outpost_config::LoadedConfig` and applies it atomically (`Edge::apply`), whoever supplies it
//! (a file, the command line, later the control plane). It must not know about the control
//! plane's protocol, its store, or the file format.

pub mod access_log;
pub mod admin;
mod hop_by_hop;
pub mod metrics;
pub mod proxy;
pub mod router;
pub mod server;
pub mod state;
pub mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use outpost_config::{ConfigErrors, LoadedConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::{Metrics, ResultLabels};
use crate::server::listener::{self, RunningListener};
use crate::server::tls::CertStore;
use crate::state::Snapshot;

/// State shared by every task of one running PoP.
pub struct Shared {
    pub pop_id: String,
    pub metrics: Metrics,
    pub snapshot: ArcSwap<Snapshot>,
    pub cert_store: Arc<ArcSwap<CertStore>>,
    /// Every accept loop and client connection, so a drain can wait for them.
    pub connections: TaskTracker,
    pub draining: CancellationToken,
    /// Ends everything, the admin listener included (the `Edge` was dropped or failed to start).
    pub stopped: CancellationToken,
    epoch: Instant,
    config_path: Option<PathBuf>,
    /// Serializes config changes and owns the running listeners.
    control: tokio::sync::Mutex<Vec<RunningListener>>,
    last_reload: Mutex<Option<ReloadRecord>>,
    /// Open client connections per IP, for `limits.max_connections_per_ip`.
    pub connections_per_ip: Mutex<std::collections::HashMap<std::net::IpAddr, u32>>,
    /// The HTTP cache, shared by every site and kept across reloads; None when
    /// `cache.memory` is 0.
    pub cache: Option<Arc<outpost_cache::Cache>>,
    /// While set, requests bypass the cache (neither read nor stored): a managed PoP restarted
    /// without its control plane must not serve disk objects purged while it was away.
    cache_held: std::sync::atomic::AtomicBool,
}

/// The outcome of the latest reload attempt, shown by the admin API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadRecord {
    pub result: &'static str,
    pub at: String,
    pub version: Option<String>,
    pub errors: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The config itself is wrong: file, line, field and reason for each problem.
    #[error("{0}")]
    Invalid(ConfigErrors),
    /// The config is valid but cannot be applied here (a certificate that does not load, an
    /// address that cannot be bound, a setting that needs a restart).
    #[error("{0}")]
    Refused(String),
}

impl ApplyError {
    pub fn messages(&self) -> Vec<String> {
        match self {
            Self::Invalid(errors) => errors.0.iter().map(ToString::to_string).collect(),
            Self::Refused(msg) => vec![msg.clone()],
        }
    }
}

/// A purge that took effect on this PoP.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Purged {
    pub kind: &'static str,
    pub soft: bool,
    /// The purge's sequence number on this PoP.
    pub seq: u64,
    pub duration_ms: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    #[error("{0}")]
    Invalid(String),
    #[error("this PoP runs without a cache")]
    NoCache,
}

/// What a successful apply changed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Applied {
    pub version: String,
    pub hash: String,
    pub generation: u64,
    pub unchanged: bool,
}

/// A running PoP.
pub struct Edge {
    shared: Arc<Shared>,
    admin_addr: Option<SocketAddr>,
}

impl Edge {
    /// Binds every listener and the admin listener, then starts serving `loaded`.
    /// `config_path` is where `reload` re-reads the config from (None for command-line configs).
    pub async fn start(loaded: LoadedConfig, config_path: Option<PathBuf>) -> Result<Self, ApplyError> {
        let pop_id = loaded.config.pop.id.clone();
        let metrics = Metrics::new(&pop_id);
        let epoch = Instant::now();
        let cert_store = Arc::new(ArcSwap::from_pointee(CertStore::default()));
        let first =
            Snapshot::build(loaded, None, &metrics, &cert_store, epoch).map_err(ApplyError::Refused)?;
        let admin_cfg = first.loaded.config.admin.clone();
        let cache = open_cache(&first.loaded.config).map_err(ApplyError::Refused)?;
        let shared = Arc::new(Shared {
            pop_id,
            metrics,
            snapshot: ArcSwap::from_pointee(first),
            cert_store,
            connections: TaskTracker::new(),
            draining: CancellationToken::new(),
            stopped: CancellationToken::new(),
            epoch,
            config_path,
            control: tokio::sync::Mutex::new(Vec::new()),
            last_reload: Mutex::new(None),
            connections_per_ip: Mutex::default(),
            cache,
            cache_held: Default::default(),
        });
        // The admin listener first: if it cannot bind, nothing else has started.
        let admin_addr = match admin_cfg.listen {
            Some(addr) => Some(
                admin::spawn(shared.clone(), addr)
                    .map_err(|e| ApplyError::Refused(format!("admin.listen: cannot bind {addr}: {e}")))?,
            ),
            None => None,
        };
        // Bind through the same path as a reload, with the initial snapshot as the target.
        {
            let snapshot = shared.snapshot.load_full();
            let mut running = shared.control.lock().await;
            let bound = match bind_new(&running, &snapshot.loaded) {
                Ok(bound) => bound,
                Err(e) => {
                    shared.stopped.cancel();
                    return Err(e);
                }
            };
            commit(&shared, &mut running, None, snapshot, bound);
        }
        spawn_certificate_watcher(&shared);
        spawn_cache_sweeper(&shared);
        Ok(Self { shared, admin_addr })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The address a listener actually bound (differs from the config when it asked for port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.shared.listener_addr(name)
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub async fn reload(&self) -> Result<Applied, ApplyError> {
        self.shared.reload_from_file().await
    }

    pub async fn apply(&self, loaded: LoadedConfig) -> Result<Applied, ApplyError> {
        self.shared.apply(loaded).await
    }

    /// Stops accepting, lets in-flight requests finish within the drain timeout, then returns
    /// whether every connection closed in time.
    pub async fn drain(&self) -> bool {
        self.shared.drain().await
    }
}

impl Drop for Edge {
    /// A dropped PoP stops accepting and lets its connections finish, like a drain that nobody
    /// waits for; the admin listener closes.
    fn drop(&mut self) {
        self.shared.draining.cancel();
        self.shared.stopped.cancel();
    }
}

impl Shared {
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.control
            .try_lock()
            .ok()?
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.local_addr)
    }

    pub fn last_reload(&self) -> Option<ReloadRecord> {
        self.last_reload.lock().ok()?.clone()
    }

    /// Holds (true) or releases the cache: while held, requests go to the origin as if the PoP
    /// had no cache. A managed PoP holds its disk cache until it has the purges it missed.
    pub fn hold_cache(&self, held: bool) {
        let was = self.cache_held.swap(held, std::sync::atomic::Ordering::Relaxed);
        if was != held {
            tracing::info!(
                held,
                "cache {}",
                if held {
                    "held: requests bypass it"
                } else {
                    "in use"
                }
            );
        }
    }

    pub fn cache_in_use(&self) -> bool {
        self.cache.is_some() && !self.cache_held.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Purges the cache: effective for every request that starts after this returns (objects
    /// being fetched when it arrives included). A URL is matched as the cache keys it, with the
    /// query policy of the site that serves its host.
    pub fn purge(&self, request: outpost_cache::PurgeRequest) -> Result<Purged, PurgeError> {
        let started = Instant::now();
        let cache = self.cache.as_ref().ok_or(PurgeError::NoCache)?;
        let mut purge = request.into_purge().map_err(PurgeError::Invalid)?;
        if let outpost_cache::Target::Url(url) = &purge.target {
            let (host, pq) = url.split_at(url.find('/').unwrap_or(url.len()));
            let snapshot = self.snapshot.load();
            let site = snapshot
                .routers
                .values()
                .find_map(|r| r.route(host))
                .and_then(|i| snapshot.sites[i].cache.clone());
            if let Some(site) = site {
                let pq = if pq.is_empty() { "/" } else { pq };
                let key = outpost_cache::CacheKey::new("http", host, pq, &http::HeaderMap::new(), &site.key);
                purge.target =
                    outpost_cache::Target::Url(outpost_cache::purge::strip_scheme(&key.url).to_owned());
            }
        }
        let kind = purge.target.kind();
        let soft = purge.soft;
        let seq = cache.purge(purge);
        let took = started.elapsed();
        self.metrics
            .cache_purges
            .get_or_create(&metrics::KindLabels { kind })
            .inc();
        self.metrics.cache_purge_duration.observe(took.as_secs_f64());
        tracing::info!(kind, soft, seq, "cache purged");
        Ok(Purged {
            kind,
            soft,
            seq,
            duration_ms: took.as_secs_f64() * 1e3,
        })
    }

    pub fn is_ready(&self) -> bool {
        !self.draining.is_cancelled()
    }

    pub async fn reload_from_file(self: &Arc<Self>) -> Result<Applied, ApplyError> {
        let Some(path) = &self.config_path else {
            let err =
                ApplyError::Refused("this PoP was started without a config file; nothing to reload".into());
            self.record_reload(Err(&err));
            return Err(err);
        };
        match outpost_config::load_file(path) {
            Ok(loaded) => self.apply(loaded).await,
            Err(errors) => {
                let err = ApplyError::Invalid(errors);
                self.record_reload(Err(&err));
                Err(err)
            }
        }
    }

    /// Validates and applies a new config atomically; on any error the running config stays.
    pub async fn apply(self: &Arc<Self>, loaded: LoadedConfig) -> Result<Applied, ApplyError> {
        let result = self.apply_inner(loaded).await;
        self.record_reload(result.as_ref());
        result
    }

    async fn apply_inner(self: &Arc<Self>, loaded: LoadedConfig) -> Result<Applied, ApplyError> {
        let mut running = self.control.lock().await;
        let current = self.snapshot.load_full();
        if loaded.hash == current.loaded.hash {
            return Ok(Applied {
                version: current.version().to_owned(),
                hash: current.loaded.hash.clone(),
                generation: current.generation,
                unchanged: true,
            });
        }
        let old_cfg = &current.loaded.config;
        let new_cfg = &loaded.config;
        if old_cfg.pop.id != new_cfg.pop.id {
            return Err(ApplyError::Refused(format!(
                "pop.id changed from \"{}\" to \"{}\": the PoP's identity needs a restart",
                old_cfg.pop.id, new_cfg.pop.id
            )));
        }
        if old_cfg.admin.listen != new_cfg.admin.listen {
            return Err(ApplyError::Refused(
                "admin.listen changed: moving the admin listener needs a restart".into(),
            ));
        }
        if old_cfg.cache != new_cfg.cache
            || (new_cfg.cache.dir.is_none()
                && old_cfg.pop.state_dir != new_cfg.pop.state_dir
                && new_cfg.cache.disk > 0)
        {
            return Err(ApplyError::Refused(
                "[cache] changed: the cache's budgets and directory take effect at a restart (what is stored is kept until then)".into(),
            ));
        }
        let next = Snapshot::build(
            loaded,
            Some(&current),
            &self.metrics,
            &self.cert_store,
            self.epoch,
        )
        .map_err(ApplyError::Refused)?;
        let bound = bind_new(&running, &next.loaded)?;
        let next = Arc::new(next);
        let applied = Applied {
            version: next.version().to_owned(),
            hash: next.loaded.hash.clone(),
            generation: next.generation,
            unchanged: false,
        };
        commit(self, &mut running, Some(&current), next, bound);
        tracing::info!(version = %applied.version, generation = applied.generation, "config applied");
        Ok(applied)
    }

    fn record_reload(&self, result: Result<&Applied, &ApplyError>) {
        let (label, record) = match result {
            Ok(a) => (
                "success",
                ReloadRecord {
                    result: "success",
                    at: now(),
                    version: Some(a.version.clone()),
                    errors: vec![],
                },
            ),
            Err(e) => {
                let label = if matches!(e, ApplyError::Invalid(_)) {
                    "invalid"
                } else {
                    "refused"
                };
                tracing::error!(errors = %e, "config refused; the previous config keeps serving");
                (
                    label,
                    ReloadRecord {
                        result: label,
                        at: now(),
                        version: None,
                        errors: e.messages(),
                    },
                )
            }
        };
        self.metrics
            .config_reloads
            .get_or_create(&ResultLabels { result: label })
            .inc();
        if let Ok(mut last) = self.last_reload.lock() {
            *last = Some(record);
        }
    }

    pub async fn drain(&self) -> bool {
        let timeout = self.snapshot.load().timeouts.drain;
        tracing::info!(
            ?timeout,
            "draining: no new connections, waiting for in-flight requests"
        );
        self.draining.cancel();
        for l in self.control.lock().await.iter() {
            l.stop.cancel();
        }
        self.connections.close();
        let done = tokio::time::timeout(timeout, self.connections.wait())
            .await
            .is_ok();
        if !done {
            tracing::warn!("drain deadline passed with requests still in flight");
        }
        done
    }
}

/// Binds the listeners `loaded` adds, before anything is committed, so a bind error refuses the
/// whole config.
fn bind_new(
    running: &[RunningListener],
    loaded: &LoadedConfig,
) -> Result<Vec<(String, SocketAddr, bool, tokio::net::TcpListener)>, ApplyError> {
    let mut bound = Vec::new();
    for l in &loaded.config.listeners {
        let keep = running
            .iter()
            .any(|r| r.name == l.name && r.configured == l.address && r.tls == l.tls.is_some());
        if keep {
            continue;
        }
        // A listener that moves between names or TLS modes on the same address is rebound:
        // release happens at commit, so bind only addresses nobody else holds.
        let taken = running
            .iter()
            .any(|r| r.configured == l.address && l.address.port() != 0);
        if taken {
            return Err(ApplyError::Refused(format!(
                "listener \"{}\": {} is held by another listener of the running config; change one reload at a time",
                l.name, l.address
            )));
        }
        let socket = listener::bind(l.address).map_err(|e| {
            ApplyError::Refused(format!("listener \"{}\": cannot bind {}: {e}", l.name, l.address))
        })?;
        bound.push((l.name.clone(), l.address, l.tls.is_some(), socket));
    }
    Ok(bound)
}

/// Makes `next` the serving config: swap the snapshot, start what is new, stop what is gone.
fn commit(
    shared: &Arc<Shared>,
    running: &mut Vec<RunningListener>,
    previous: Option<&Arc<Snapshot>>,
    next: Arc<Snapshot>,
    bound: Vec<(String, SocketAddr, bool, tokio::net::TcpListener)>,
) {
    shared.cert_store.store(next.certs.clone());
    shared.snapshot.store(next.clone());
    if let Some(prev) = previous {
        prev.tasks.cancel();
    }
    for pool in &next.pools {
        pool.activate();
    }
    upstream::health::spawn_checks(&next.pools, &next.tasks);
    spawn_rate_limit_sweeper(&next);
    shared.metrics.set_config_info(next.version(), &next.loaded.hash);

    let wanted = &next.loaded.config.listeners;
    running.retain(|r| {
        let keep = wanted.iter().any(|l| l.name == r.name && l.address == r.configured && l.tls.is_some() == r.tls);
        if !keep {
            tracing::info!(listener = %r.name, address = %r.local_addr, "listener removed; its connections finish their requests");
            r.stop.cancel();
        }
        keep
    });
    for (name, configured, tls, socket) in bound {
        let local_addr = socket.local_addr().unwrap_or(configured);
        let stop = shared.draining.child_token();
        tracing::info!(listener = %name, address = %local_addr, tls, "listening");
        listener::spawn(shared.clone(), socket, name.clone(), stop.clone());
        running.push(RunningListener {
            name,
            configured,
            local_addr,
            tls,
            stop,
        });
    }
}

/// Drops idle rate-limit buckets every few seconds so memory follows the active clients.
fn spawn_rate_limit_sweeper(snapshot: &Snapshot) {
    let limits: Vec<_> = snapshot
        .sites
        .iter()
        .flat_map(|s| s.rate_limits.iter().map(|l| l.limit.clone()))
        .collect();
    if limits.is_empty() {
        return;
    }
    let tasks = snapshot.tasks.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tasks.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(10)) => {
                    for limit in &limits {
                        limit.sweep();
                    }
                }
            }
        }
    });
}

/// The PoP's cache from `[cache]`: None when its memory budget is 0. The disk tier lives in
/// `cache.dir`, or `cache` under `pop.state_dir`.
fn open_cache(config: &outpost_config::Config) -> Result<Option<Arc<outpost_cache::Cache>>, String> {
    let c = &config.cache;
    if c.memory == 0 {
        return Ok(None);
    }
    let disk = if c.disk > 0 {
        let dir = c
            .dir
            .clone()
            .or_else(|| config.pop.state_dir.as_ref().map(|d| d.join("cache")))
            .ok_or("cache.disk needs cache.dir or pop.state_dir")?;
        Some((dir, c.disk))
    } else {
        None
    };
    let cache = outpost_cache::Cache::new(&outpost_cache::CacheConfig {
        memory_bytes: c.memory,
        disk: disk.clone(),
    })
    .map_err(|e| {
        let dir = disk.map(|(d, _)| d.display().to_string()).unwrap_or_default();
        format!("cache.dir: cannot use \"{dir}\" for the disk cache: {e}")
    })?;
    Ok(Some(Arc::new(cache)))
}

/// Applies purge rules to stored objects and publishes the tiers' sizes, once a second, on a
/// blocking thread: a sweep over millions of objects must not hold up a request.
fn spawn_cache_sweeper(shared: &Arc<Shared>) {
    let Some(cache) = shared.cache.clone() else { return };
    let weak = Arc::downgrade(shared);
    tokio::spawn(async move {
        let (mut evictions, mut disk_evictions) = (0, 0);
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let Some(shared) = weak.upgrade() else { return };
            if shared.stopped.is_cancelled() {
                return;
            }
            let c = cache.clone();
            let stats = match tokio::task::spawn_blocking(move || {
                c.sweep();
                c.stats()
            })
            .await
            {
                Ok(stats) => stats,
                Err(_) => return,
            };
            let m = &shared.metrics;
            publish_tier(
                m,
                "memory",
                stats.memory_bytes,
                stats.memory_objects,
                stats.memory_evictions,
                &mut evictions,
            );
            publish_tier(
                m,
                "disk",
                stats.disk_bytes,
                stats.disk_objects,
                stats.disk_evictions,
                &mut disk_evictions,
            );
            m.cache_purge_rules.set(stats.live_purge_rules as i64);
        }
    });
}

/// One tier's size gauges, and its eviction counter advanced by what happened since `seen`.
fn publish_tier(m: &Metrics, tier: &'static str, bytes: u64, objects: u64, evictions: u64, seen: &mut u64) {
    let labels = metrics::TierLabels { tier };
    m.cache_bytes.get_or_create(&labels).set(bytes as i64);
    m.cache_objects.get_or_create(&labels).set(objects as i64);
    m.cache_evictions
        .get_or_create(&labels)
        .inc_by(evictions.saturating_sub(*seen));
    *seen = evictions;
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Re-reads certificate files that changed on disk; handshakes after that use the new ones.
fn spawn_certificate_watcher(shared: &Arc<Shared>) {
    let weak = Arc::downgrade(shared);
    tokio::spawn(async move {
        let mut last_error: Option<String> = None;
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let Some(shared) = weak.upgrade() else { return };
            if shared.draining.is_cancelled() {
                return;
            }
            if !shared.cert_store.load().files_changed() {
                continue;
            }
            let _guard = shared.control.lock().await;
            let certs = shared.snapshot.load().loaded.config.certificates.clone();
            let label = match CertStore::load(&certs) {
                Ok(store) => {
                    shared.cert_store.store(Arc::new(store));
                    tracing::info!("certificate files changed on disk: reloaded");
                    last_error = None;
                    "success"
                }
                Err(e) => {
                    if last_error.as_ref() != Some(&e) {
                        tracing::error!(error = %e, "certificate files changed but do not load; still serving the previous ones");
                        last_error = Some(e);
                        "failure"
                    } else {
                        continue;
                    }
                }
            };
            shared
                .metrics
                .tls_cert_reloads
                .get_or_create(&ResultLabels { result: label })
                .inc();
        }
    });
}
