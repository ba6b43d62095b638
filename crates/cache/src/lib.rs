//! Outpost's HTTP cache: what a shared cache may store and reuse (RFC 9111, RFC 5861), the
//! storage tiers, request collapsing and purge.
//!
//! It owns cache keys, freshness, validation, Vary, storage and purge rules. It knows nothing of
//! sockets, origin pools or the proxy's request phases: the edge asks it questions (may this be
//! stored? may this answer that request?) and hands it complete responses to keep.

pub mod collapse;
pub mod conditional;
pub mod directives;
mod disk;
pub mod fields;
pub mod fill;
pub mod freshness;
mod journal;
pub mod key;
mod memory;
pub mod object;
pub mod pages;
pub mod purge;
pub mod range;
pub mod reuse;
#[cfg(test)]
mod scratch;
pub mod storable;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;

pub use collapse::{Collapser, Join, Pending};
pub use directives::{RequestDirectives, ResponseDirectives};
pub use fill::{Fill, FillReader};
pub use freshness::{Freshness, LifetimePolicy};
pub use key::{CacheKey, KeyPolicy, QueryMode};
pub use object::Object;
pub use purge::{Purge, PurgeRequest, Target, Verdict};
pub use storable::{may_store_set_cookie, NotStored, StorePolicy};

use memory::MemoryTier;
use purge::Purges;

/// A fill that takes longer than this is not stored: purge rules are retired on the assumption
/// that no fetch older than this can still land (see `purge`).
pub const MAX_FILL: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub memory_bytes: u64,
    /// The disk tier's directory and byte budget, if there is one.
    pub disk: Option<(std::path::PathBuf, u64)>,
}

pub struct Cache {
    memory: MemoryTier,
    disk: Option<Arc<disk::DiskTier>>,
    purges: Purges,
    pub collapse: Arc<Collapser>,
}

/// Sizes of the tiers, for metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct TierStats {
    pub memory_bytes: u64,
    pub memory_objects: u64,
    pub memory_evictions: u64,
    pub disk_bytes: u64,
    pub disk_objects: u64,
    pub disk_evictions: u64,
    pub in_flight_fills: usize,
    pub live_purge_rules: usize,
}

impl Cache {
    /// Fails only when the disk tier's directory cannot be created or written.
    pub fn new(config: &CacheConfig) -> std::io::Result<Self> {
        let disk = match &config.disk {
            Some((dir, budget)) => Some(disk::DiskTier::open(dir, *budget)?),
            None => None,
        };
        Ok(Self {
            memory: MemoryTier::new(config.memory_bytes),
            disk,
            purges: Purges::default(),
            collapse: Arc::new(Collapser::default()),
        })
    }

    pub fn has_disk(&self) -> bool {
        self.disk.is_some()
    }

    /// The disk tier's copy for this request, read off the runtime and promoted to memory.
    pub async fn lookup_disk(&self, key: &CacheKey, request: &HeaderMap) -> Option<Arc<Object>> {
        let disk = self.disk.as_ref()?;
        let id = disk.find(key, request)?;
        let (tier, k) = (disk.clone(), key.clone());
        let obj = tokio::task::spawn_blocking(move || tier.read(&k, id))
            .await
            .ok()??;
        match self.purges.verdict(&obj) {
            Verdict::Gone => {
                disk.remove(key.hash);
                return None;
            }
            Verdict::Stale => obj.mark_soft_purged(),
            Verdict::Keep => {}
        }
        let obj = Arc::new(obj);
        self.memory.put(key.hash, obj.clone());
        Some(obj)
    }

    /// The sequence number a fetch records when it starts (see `Object::stored_seq`).
    pub fn fetch_seq(&self) -> u64 {
        self.purges.current_seq()
    }

    /// The stored response for this request, if any: the variant its headers select, with
    /// purges applied (a hard-purged object is gone, a soft-purged one comes back stale).
    pub fn lookup(&self, key: &CacheKey, request: &HeaderMap) -> Option<Arc<Object>> {
        let variants = self.memory.get(key.hash)?;
        let obj = variants
            .iter()
            .rev()
            .find(|o| o.url() == key.url && o.matches(request, key.extra.as_deref()))?;
        match self.purges.verdict(obj) {
            Verdict::Keep => Some(obj.clone()),
            Verdict::Stale => {
                obj.mark_soft_purged();
                Some(obj.clone())
            }
            Verdict::Gone => {
                self.memory.remove_object(key.hash, obj);
                None
            }
        }
    }

    /// Keeps a complete response. Purges that arrived while it was fetched still apply.
    pub fn store(&self, key: &CacheKey, obj: Object) -> Option<Arc<Object>> {
        match self.purges.verdict(&obj) {
            Verdict::Gone => return None,
            Verdict::Stale => obj.mark_soft_purged(),
            Verdict::Keep => {}
        }
        let obj = Arc::new(obj);
        self.memory.put(key.hash, obj.clone());
        if let Some(disk) = &self.disk {
            disk.store(key.hash, &obj);
        }
        Some(obj)
    }

    /// Drops one stored variant of a URL, in both tiers.
    pub fn remove(&self, key: &CacheKey, obj: &Arc<Object>) {
        self.memory.remove_object(key.hash, obj);
        if let Some(disk) = &self.disk {
            disk.remove_variant(key.hash, obj);
        }
    }

    /// Drops every variant stored for a URL (after a successful unsafe request, §4.4).
    pub fn invalidate(&self, key: &CacheKey) {
        self.memory.remove(key.hash);
        if let Some(disk) = &self.disk {
            disk.remove(key.hash);
        }
    }

    /// Applies a purge: effective for every lookup that starts after this returns. Returns the
    /// purge's sequence number.
    pub fn purge(&self, purge: Purge) -> u64 {
        if let (Target::Url(url), false) = (&purge.target, purge.soft) {
            for scheme in ["http://", "https://"] {
                let hash = key::hash_url(&format!("{scheme}{url}"));
                self.memory.remove(hash);
                if let Some(disk) = &self.disk {
                    disk.remove(hash);
                }
            }
        }
        let target = purge.target.clone();
        let seq = self.purges.add(purge);
        if let Some(disk) = &self.disk {
            disk.record_purge(seq, &target);
        }
        seq
    }

    /// One pass over the store applying live purge rules, then retiring the rules the pass
    /// covered. Meant for a background thread: it never blocks lookups.
    pub fn sweep(&self) {
        let started = Instant::now();
        if self.purges.live_rules() > 0 {
            let mut gone = Vec::new();
            self.memory.for_each(|hash, variants| {
                for obj in variants.iter() {
                    match self.purges.verdict(obj) {
                        Verdict::Keep => {}
                        Verdict::Stale => obj.mark_soft_purged(),
                        Verdict::Gone => gone.push((hash, obj.clone())),
                    }
                }
            });
            for (hash, obj) in gone {
                self.memory.remove_object(hash, &obj);
            }
            // On disk a soft purge removes too: the stale mark lives only in memory, and it
            // must not be lost when the rule retires.
            if let Some(disk) = &self.disk {
                disk.sweep(|url, site, tags, seq| {
                    self.purges.verdict_for(url, site, tags, seq) != Verdict::Keep
                });
            }
            // Rules stay while the disk's start-up scan runs: files it indexes later are swept
            // only by later sweeps.
            let scanned = self.disk.as_ref().is_none_or(|d| d.scanned());
            if let (Some(before), true) = (started.checked_sub(MAX_FILL), scanned) {
                if let (Some(live_from), Some(disk)) = (self.purges.retire(before), &self.disk) {
                    disk.forget_purges_before(live_from);
                }
            }
        }
    }

    pub fn stats(&self) -> TierStats {
        TierStats {
            memory_bytes: self.memory.bytes(),
            memory_objects: self.memory.objects(),
            memory_evictions: self.memory.evictions(),
            disk_bytes: self.disk.as_ref().map_or(0, |d| d.bytes()),
            disk_objects: self.disk.as_ref().map_or(0, |d| d.objects()),
            disk_evictions: self.disk.as_ref().map_or(0, |d| d.evictions()),
            in_flight_fills: self.collapse.in_flight(),
            live_purge_rules: self.purges.live_rules(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn object(cache: &Cache, url: &str, tags: &str, site: &str) -> (CacheKey, Object) {
        let mut h = HeaderMap::new();
        h.insert("surrogate-key", tags.parse().unwrap());
        object::tests_support::stored(
            url,
            site,
            h,
            Bytes::from_static(b"x"),
            Box::new([]),
            cache.fetch_seq(),
        )
    }

    #[test]
    fn purges_by_each_target() {
        let cache = Cache::new(&CacheConfig {
            memory_bytes: 1 << 20,
            disk: None,
        })
        .unwrap();
        let none = HeaderMap::new();
        for (url, tags, site) in [
            ("http://a.test/img/1", "t1", "a"),
            ("http://a.test/img/2", "t2", "a"),
            ("https://a.test/css/1", "t1", "a"),
            ("http://b.test/x", "t3", "b"),
        ] {
            let (k, o) = object(&cache, url, tags, site);
            cache.store(&k, o);
        }
        let key = |u: &str| CacheKey::for_url(u).unwrap();
        let p = |json: &str| {
            serde_json::from_str::<PurgeRequest>(json)
                .unwrap()
                .into_purge()
                .unwrap()
        };

        cache.purge(p(r#"{"url":"https://a.test/img/2"}"#));
        assert!(
            cache.lookup(&key("http://a.test/img/2"), &none).is_none(),
            "scheme does not matter"
        );
        cache.purge(p(r#"{"tag":"t1","soft":true}"#));
        let soft = cache.lookup(&key("http://a.test/img/1"), &none).unwrap();
        assert!(soft.is_soft_purged());
        cache.purge(p(r#"{"prefix":"http://a.test/css/"}"#));
        assert!(cache.lookup(&key("https://a.test/css/1"), &none).is_none());
        cache.purge(p(r#"{"site":"b"}"#));
        assert!(cache.lookup(&key("http://b.test/x"), &none).is_none());
        assert!(cache.lookup(&key("http://a.test/img/1"), &none).is_some());
    }

    #[test]
    fn a_fetch_that_started_before_a_purge_is_not_served_after_it() {
        let cache = Cache::new(&CacheConfig {
            memory_bytes: 1 << 20,
            disk: None,
        })
        .unwrap();
        let (k, o) = object(&cache, "http://a.test/slow", "t", "a");
        cache.purge(
            serde_json::from_str::<PurgeRequest>(r#"{"tag":"t"}"#)
                .unwrap()
                .into_purge()
                .unwrap(),
        );
        assert!(cache.store(&k, o).is_none());
    }

    /// A cache with a disk tier in `dir` whose background scan has indexed every file there.
    fn with_disk(dir: &std::path::Path, files: usize) -> Cache {
        let cache = Cache::new(&CacheConfig {
            memory_bytes: 1 << 20,
            disk: Some((dir.to_owned(), 1 << 30)),
        })
        .unwrap();
        for _ in 0..500 {
            if cache.stats().disk_objects as usize >= files {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        cache
    }

    #[test]
    fn a_purge_holds_across_a_restart_that_came_before_its_sweep() {
        let dir = crate::scratch::ScratchDir::new("purge-restart");
        let urls = [
            ("http://a.test/img/1", "t1", "a"),
            ("http://a.test/img/2", "t2", "a"),
            ("http://a.test/tagged", "t3", "a"),
            ("http://a.test/exact", "t2", "a"),
            ("http://a.test/kept", "t2", "a"),
            ("http://b.test/x", "t2", "b"),
        ];
        {
            let cache = with_disk(&dir, 0);
            for (url, tags, site) in urls {
                let (k, o) = object(&cache, url, tags, site);
                cache.store(&k, o);
            }
            for _ in 0..500 {
                if disk::object_files(&dir) == urls.len() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            assert_eq!(disk::object_files(&dir), urls.len(), "written to disk");
            let p = |json: &str| {
                serde_json::from_str::<PurgeRequest>(json)
                    .unwrap()
                    .into_purge()
                    .unwrap()
            };
            cache.purge(p(r#"{"prefix":"http://a.test/img/"}"#));
            cache.purge(p(r#"{"tag":"t3","soft":true}"#));
            cache.purge(p(r#"{"site":"b"}"#));
            // The process stops here: no sweep has run, the files are still on disk.
            cache.purge(p(r#"{"url":"http://a.test/exact"}"#));
        }
        let cache = with_disk(&dir, 1);
        let journal = || std::fs::read_to_string(dir.join("purges.jsonl")).unwrap();
        // The scan deletes what the journal condemns, then empties the journal of those purges.
        for _ in 0..500 {
            if disk::object_files(&dir) == 1 && journal().is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(disk::object_files(&dir), 1, "the condemned files were deleted");
        assert_eq!(journal(), "", "a third start does not carry those purges");
        let none = HeaderMap::new();
        let on_disk = |url: &str| {
            let key = CacheKey::for_url(url).unwrap();
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(cache.lookup_disk(&key, &none))
                .is_some()
        };
        for (url, ..) in urls {
            assert_eq!(on_disk(url), url == "http://a.test/kept", "{url}");
        }
        // A purge in this run is kept until it retires.
        cache.purge(
            serde_json::from_str::<PurgeRequest>(r#"{"tag":"t2"}"#)
                .unwrap()
                .into_purge()
                .unwrap(),
        );
        assert_eq!(journal().lines().count(), 1, "{}", journal());
    }

    #[test]
    fn remove_drops_one_variant_from_both_tiers() {
        let dir = crate::scratch::ScratchDir::new("remove-variant");
        let cache = with_disk(&dir, 0);
        let url = "http://a.test/v";
        let lang = |l: &str| object::tests_support::headers(&[("accept-language", l)]);
        for l in ["en", "fr"] {
            let vary: object::VaryValues = Box::new([(http::header::ACCEPT_LANGUAGE, Some(l.into()))]);
            let (k, o) =
                object::tests_support::stored(url, "a", HeaderMap::new(), Bytes::from_static(b"x"), vary, 0);
            cache.store(&k, o);
        }
        let key = CacheKey::for_url(url).unwrap();
        let disk = cache.disk.as_ref().unwrap();
        assert!(disk.find(&key, &lang("en")).is_some() && disk.find(&key, &lang("fr")).is_some());
        let en = cache.lookup(&key, &lang("en")).unwrap();
        cache.remove(&key, &en);
        assert!(cache.lookup(&key, &lang("en")).is_none());
        assert!(disk.find(&key, &lang("en")).is_none());
        assert!(
            cache.lookup(&key, &lang("fr")).is_some(),
            "the other variant stays"
        );
        assert!(disk.find(&key, &lang("fr")).is_some());
    }

    #[test]
    fn sweep_removes_hard_purged_objects_and_keeps_memory_within_budget() {
        let cache = Cache::new(&CacheConfig {
            memory_bytes: 64 * 1024,
            disk: None,
        })
        .unwrap();
        for i in 0..1000 {
            let (k, o) = object(&cache, &format!("http://a.test/{i}"), "t", "a");
            cache.store(&k, o);
        }
        cache.sweep();
        let s = cache.stats();
        assert!(s.memory_bytes <= 64 * 1024, "{s:?}");
        assert!(s.memory_evictions > 0);
        cache.purge(
            serde_json::from_str::<PurgeRequest>(r#"{"site":"a"}"#)
                .unwrap()
                .into_purge()
                .unwrap(),
        );
        cache.sweep();
        assert_eq!(cache.stats().memory_objects, 0);
    }
}
