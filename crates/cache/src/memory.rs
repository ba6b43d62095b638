//! The memory tier: objects by URL hash, each URL holding its variants, within a byte budget.
//!
//! moka gives the admission and eviction policy (TinyLFU admission, LRU eviction, weighted by
//! bytes) and, unlike TinyUFO, iteration, which the purge sweep needs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use moka::notification::RemovalCause;

use crate::object::Object;

/// At most this many variants per URL; a new one beyond it replaces the oldest.
const MAX_VARIANTS: usize = 16;

/// The variants stored for one URL. Almost every URL has one, held without a list: a list is
/// one more allocation per URL. Both arms are thin pointers, so the value moka stores stays
/// 16 bytes.
#[derive(Clone)]
pub enum Variants {
    One(Arc<Object>),
    Many(Arc<Vec<Arc<Object>>>),
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

pub struct MemoryTier {
    cache: moka::sync::Cache<u64, Variants>,
    evictions: Arc<AtomicU64>,
}

impl MemoryTier {
    pub fn new(budget_bytes: u64) -> Self {
        let evictions = Arc::new(AtomicU64::new(0));
        let counted = evictions.clone();
        let cache = moka::sync::Cache::builder()
            .max_capacity(budget_bytes)
            .weigher(|_k: &u64, v: &Variants| v.iter().map(|o| o.weight()).fold(0u32, u32::saturating_add))
            .eviction_listener(move |_k, _v, cause| {
                if cause == RemovalCause::Size {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        Self { cache, evictions }
    }

    pub fn get(&self, hash: u64) -> Option<Variants> {
        self.cache.get(&hash)
    }

    /// Adds `obj`, replacing the variant it is a newer copy of.
    pub fn put(&self, hash: u64, obj: Arc<Object>) {
        let mut list: Vec<Arc<Object>> = match self.cache.get(&hash) {
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
        self.cache.insert(hash, list.into());
    }

    /// Removes one variant (a purged or replaced object), keeping the others.
    pub fn remove_object(&self, hash: u64, obj: &Arc<Object>) {
        if let Some(v) = self.cache.get(&hash) {
            let rest: Vec<Arc<Object>> = v.iter().filter(|o| !Arc::ptr_eq(o, obj)).cloned().collect();
            if rest.is_empty() {
                self.cache.invalidate(&hash);
            } else if rest.len() != v.len() {
                self.cache.insert(hash, rest.into());
            }
        }
    }

    pub fn remove(&self, hash: u64) {
        self.cache.invalidate(&hash);
    }

    pub fn for_each(&self, mut f: impl FnMut(u64, &Variants)) {
        for (k, v) in self.cache.iter() {
            f(*k, &v);
        }
    }

    /// Runs moka's deferred bookkeeping (evictions, size) now; the sweep calls it.
    pub fn maintain(&self) {
        self.cache.run_pending_tasks();
    }

    pub fn bytes(&self) -> u64 {
        self.cache.weighted_size()
    }

    pub fn objects(&self) -> u64 {
        self.cache.entry_count()
    }

    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}
