//! The memory tier: objects by URL hash, each URL holding its variants, within a byte budget.
//!
//! quick_cache gives the admission and eviction policy (S3-FIFO-like: a small probation queue
//! that one-hit objects leave first, ghost keys that let a returning URL straight in, weighted by
//! bytes) and iteration, which the purge sweep needs. Its entries live in a slab inside the
//! table, about 60 bytes each; moka, used before, cost about 200 bytes in five allocations per
//! object and a few hundred instructions per look-up (docs/architecture.md, "Cache memory").

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::object::Object;

/// At most this many variants per URL; a new one beyond it replaces the oldest.
const MAX_VARIANTS: usize = 16;

/// The variants stored for one URL. Almost every URL has one, held without a list: a list is
/// one more allocation per URL. Both arms are thin pointers, so the value the table stores
/// stays 16 bytes.
#[derive(Clone)]
pub enum Variants {
    One(Arc<Object>),
    Many(Arc<Vec<Arc<Object>>>),
}

impl Variants {
    /// The same stored value (not an equal one).
    fn same(&self, other: &Variants) -> bool {
        match (self, other) {
            (Self::One(a), Self::One(b)) => Arc::ptr_eq(a, b),
            (Self::Many(a), Self::Many(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl std::ops::Deref for Variants {
    type Target = [Arc<Object>];

    fn deref(&self) -> &[Arc<Object>] {
        match self {
            Self::One(obj) => std::slice::from_ref(obj),
            Self::Many(list) => list,
        }
    }
}

impl From<Vec<Arc<Object>>> for Variants {
    fn from(list: Vec<Arc<Object>>) -> Self {
        match <[Arc<Object>; 1]>::try_from(list) {
            Ok([only]) => Self::One(only),
            Err(mut list) => {
                list.shrink_to_fit();
                Self::Many(Arc::new(list))
            }
        }
    }
}

/// The table is split into shards, each with its own lock and a share of the budget, but never
/// below this much per shard: an object larger than about its shard's budget is not kept in
/// memory, and the largest default object (`max_object_size`, 64 MiB) must fit with room.
const MIN_SHARD_BYTES: u64 = 256 << 20;
const MAX_SHARDS: u64 = 16;
/// For sizing the ghost-key allowance only (the table grows as objects arrive).
const TYPICAL_OBJECT_BYTES: u64 = 4096;

pub struct MemoryTier {
    cache: quick_cache::sync::Cache<u64, Variants, ByBytes, quick_cache::DefaultHashBuilder, Release>,
    evictions: AtomicU64,
}

/// An object's weight is the bytes it holds (`Object::weight`), fixed once stored.
#[derive(Clone)]
struct ByBytes;

impl quick_cache::Weighter<u64, Variants> for ByBytes {
    fn weight(&self, _hash: &u64, variants: &Variants) -> u64 {
        variants.iter().map(|o| u64::from(o.weight())).sum()
    }
}

/// Collects what an insertion pushed out, so it is dropped after the shard's lock is released
/// and counted: every value except the one a newer copy of the same URL replaced.
#[derive(Clone)]
struct Release;

#[derive(Default)]
struct Released {
    /// The value the insertion replaces, as read before it: it comes back once, not evicted.
    /// Told by identity, so a value another thread stored in between counts as pushed out.
    replacing: Option<Variants>,
    evicted: u64,
    values: Vec<Variants>,
}

impl quick_cache::Lifecycle<u64, Variants> for Release {
    type RequestState = Released;

    fn on_evict(&self, state: &mut Released, _hash: u64, variants: Variants) {
        if state.replacing.as_ref().is_some_and(|r| r.same(&variants)) {
            state.replacing = None;
        } else {
            state.evicted += 1;
        }
        state.values.push(variants);
    }
}

impl MemoryTier {
    pub fn new(budget_bytes: u64) -> Self {
        // A power of two (quick_cache would round up, below the minimum).
        let fit = (budget_bytes / MIN_SHARD_BYTES).clamp(1, MAX_SHARDS);
        let shards = 1u64 << fit.ilog2();
        let options = quick_cache::OptionsBuilder::new()
            .shards(usize::try_from(shards).unwrap_or(1))
            .weight_capacity(budget_bytes)
            .estimated_items_capacity(
                usize::try_from(budget_bytes / TYPICAL_OBJECT_BYTES)
                    .unwrap_or(usize::MAX)
                    .max(1),
            )
            .build()
            .expect("the memory tier's cache options are complete");
        let cache = quick_cache::sync::Cache::with_options(options, ByBytes, Default::default(), Release);
        Self {
            cache,
            evictions: AtomicU64::new(0),
        }
    }

    pub fn get(&self, hash: u64) -> Option<Variants> {
        self.cache.get(&hash)
    }

    /// Adds `obj`, replacing the variant it is a newer copy of.
    pub fn put(&self, hash: u64, obj: Arc<Object>) {
        let current = self.cache.get(&hash);
        let mut list: Vec<Arc<Object>> = match &current {
            Some(v) => v
                .iter()
                .filter(|o| !o.same_variant(&obj) && o.url() == obj.url())
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        if list.len() >= MAX_VARIANTS {
            list.remove(0);
        }
        list.push(obj);
        let mut released = Released {
            replacing: current,
            ..Released::default()
        };
        self.cache.insert_with_lifecycle(hash, list.into(), &mut released);
        self.count(&released);
    }

    fn count(&self, released: &Released) {
        if released.evicted > 0 {
            self.evictions.fetch_add(released.evicted, Ordering::Relaxed);
        }
    }

    /// Removes one variant (a purged or replaced object), keeping the others.
    pub fn remove_object(&self, hash: u64, obj: &Arc<Object>) {
        if let Some(v) = self.cache.get(&hash) {
            let rest: Vec<Arc<Object>> = v.iter().filter(|o| !Arc::ptr_eq(o, obj)).cloned().collect();
            if rest.is_empty() {
                self.cache.remove(&hash);
            } else if rest.len() != v.len() {
                // A soft replace: the URL gets no hotter for losing a variant, and one evicted
                // or removed meanwhile is not brought back.
                let mut released = Released {
                    replacing: Some(v),
                    ..Released::default()
                };
                let _ = self
                    .cache
                    .replace_with_lifecycle(hash, rest.into(), true, &mut released);
                self.count(&released);
            }
        }
    }

    pub fn remove(&self, hash: u64) {
        self.cache.remove(&hash);
    }

    /// Visits every URL's variants; the table is locked for one entry at a time, so lookups and
    /// stores go on during a sweep.
    pub fn for_each(&self, mut f: impl FnMut(u64, &Variants)) {
        for (k, v) in self.cache.iter() {
            f(k, &v);
        }
    }

    pub fn bytes(&self) -> u64 {
        self.cache.weight()
    }

    pub fn objects(&self) -> u64 {
        self.cache.len() as u64
    }

    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::tests_support::stored;
    use bytes::Bytes;
    use http::HeaderMap;

    fn object(url: &str, body_bytes: usize) -> (u64, Arc<Object>) {
        let body = Bytes::from(vec![b'x'; body_bytes]);
        let (key, obj) = stored(url, "a", HeaderMap::new(), body, Box::new([]), 0);
        (key.hash, Arc::new(obj))
    }

    #[test]
    fn every_shard_holds_at_least_the_minimum_budget() {
        for (budget, shards) in [
            (1 << 20, 1),
            (256 << 20, 1),
            (768 << 20, 2),
            (4 << 30, 16),
            (64 << 30, 16),
        ] {
            let tier = MemoryTier::new(budget);
            assert_eq!(tier.cache.num_shards(), shards, "{budget}");
            assert!(
                tier.cache.shard_capacity() >= MIN_SHARD_BYTES.min(budget),
                "{budget}"
            );
        }
    }

    #[test]
    fn a_newer_copy_of_a_url_replaces_it_without_counting_an_eviction() {
        let tier = MemoryTier::new(1 << 20);
        let (hash, old) = object("http://a.test/x", 100);
        let (_, new) = object("http://a.test/x", 200);
        tier.put(hash, old);
        tier.put(hash, new.clone());
        let kept = tier.get(hash).unwrap();
        assert_eq!(kept.len(), 1);
        assert!(Arc::ptr_eq(&kept[0], &new));
        assert_eq!(tier.bytes(), u64::from(new.weight()));
        assert_eq!((tier.objects(), tier.evictions()), (1, 0));
    }

    #[test]
    fn storing_past_the_budget_evicts_counts_and_stays_within_it() {
        let budget = 64 * 1024;
        let tier = MemoryTier::new(budget);
        for i in 0..200 {
            let (hash, obj) = object(&format!("http://a.test/{i}"), 1024);
            tier.put(hash, obj);
        }
        assert!(tier.bytes() <= budget, "{} bytes held", tier.bytes());
        assert!(tier.evictions() > 0);
        assert_eq!(tier.objects() + tier.evictions(), 200);
    }

    #[test]
    fn an_object_looked_up_again_outlives_a_scan_of_objects_seen_once() {
        // The budget holds about 45 of these objects. Filled first, so that `popular` arrives
        // as a newcomer, then a scan of one-off objects twice the budget: one-offs leave, an
        // object looked up after it was stored stays. An LRU would lose it after 45.
        let tier = MemoryTier::new(64 * 1024);
        let store = |name: String| {
            let (hash, obj) = object(&format!("http://a.test/{name}"), 1024);
            tier.put(hash, obj);
            hash
        };
        for i in 0..60 {
            store(format!("earlier/{i}"));
        }
        let popular = store("popular".into());
        assert!(tier.get(popular).is_some());
        for i in 0..90 {
            store(format!("once/{i}"));
        }
        assert!(tier.evictions() >= 90, "the scan went through the tier");
        assert!(tier.get(popular).is_some());
    }

    #[test]
    fn removing_one_variant_keeps_the_others_and_the_last_removes_the_url() {
        let tier = MemoryTier::new(1 << 20);
        let (hash, a) = object("http://a.test/v", 10);
        let french = Box::new([(http::header::ACCEPT_LANGUAGE, Some("fr".into()))]);
        let (_, b) = stored(
            "http://a.test/v",
            "a",
            HeaderMap::new(),
            Bytes::from_static(b"fr"),
            french,
            0,
        );
        let b = Arc::new(b);
        tier.put(hash, a.clone());
        tier.put(hash, b.clone());
        assert_eq!(tier.get(hash).unwrap().len(), 2);
        tier.remove_object(hash, &a);
        let left = tier.get(hash).unwrap();
        assert_eq!(left.len(), 1);
        assert!(Arc::ptr_eq(&left[0], &b));
        tier.remove_object(hash, &b);
        assert!(tier.get(hash).is_none());
        assert_eq!((tier.objects(), tier.bytes(), tier.evictions()), (0, 0, 0));
    }
}
