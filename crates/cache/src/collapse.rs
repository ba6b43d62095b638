//! Request collapsing: concurrent misses for one URL make one origin request.
//!
//! The first request becomes the leader and fetches; the others wait for its response head.
//! A storable answer is shared as a `Fill` that every waiter streams as it arrives; an
//! uncacheable one releases the waiters at once (each then goes to the origin itself) and
//! marks the URL "pass" for a while so later requests do not queue behind each other
//! (Varnish's hit-for-miss). A purge ends the sharing of fetches that started before it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::watch;

use crate::fill::Fill;

/// How long an uncacheable answer keeps a URL out of collapsing.
pub const PASS_FOR: Duration = Duration::from_secs(60);

/// Pass entries added before the first pass over them for expired ones.
const PRUNE_AFTER: usize = 4096;

#[derive(Debug, Clone)]
pub enum Pending {
    Waiting,
    Ready(Arc<Fill>),
    /// Not shared: fetch it yourself.
    Pass,
}

#[derive(Debug)]
struct Slot {
    /// Purge sequence when the fetch started; a later purge makes it unjoinable.
    seq: u64,
    tx: Arc<watch::Sender<Pending>>,
}

#[derive(Debug)]
pub struct Collapser {
    slots: DashMap<u64, Slot>,
    pass: DashMap<u64, Instant>,
    pass_for: Duration,
    /// Pass entries added since expired ones were last dropped, and how many more may be added
    /// before they are dropped again: as many as were left then, so that the pass over them
    /// costs O(1) per entry added and the map holds at most about twice the live entries.
    pass_added: AtomicUsize,
    prune_after: AtomicUsize,
}

impl Default for Collapser {
    fn default() -> Self {
        Self::with_pass_for(PASS_FOR)
    }
}

pub enum Join {
    Leader(Leader),
    Wait(watch::Receiver<Pending>),
    /// The URL recently answered uncacheable: go straight to the origin.
    Pass,
}

impl Collapser {
    fn with_pass_for(pass_for: Duration) -> Self {
        Self {
            slots: DashMap::default(),
            pass: DashMap::default(),
            pass_for,
            pass_added: AtomicUsize::new(0),
            prune_after: AtomicUsize::new(PRUNE_AFTER),
        }
    }

    pub fn join(self: &Arc<Self>, hash: u64, seq: u64) -> Join {
        if let Some(until) = self.pass.get(&hash).map(|u| *u) {
            if until > Instant::now() {
                return Join::Pass;
            }
            self.pass.remove_if(&hash, |_, u| *u <= Instant::now());
        }
        let mut slot = self.slots.entry(hash).or_insert_with(|| Slot {
            seq,
            tx: Arc::new(watch::channel(Pending::Waiting).0),
        });
        if slot.seq == seq && Arc::strong_count(&slot.tx) > 1 {
            return Join::Wait(slot.tx.subscribe());
        }
        // A fresh slot, or one a purge made stale: this request leads a new fetch.
        let tx = Arc::new(watch::channel(Pending::Waiting).0);
        *slot = Slot { seq, tx: tx.clone() };
        Join::Leader(Leader {
            collapser: self.clone(),
            hash,
            tx: Some(tx),
        })
    }

    pub fn in_flight(&self) -> usize {
        self.slots.len()
    }

    fn release(&self, hash: u64, tx: &Arc<watch::Sender<Pending>>) {
        self.slots.remove_if(&hash, |_, slot| Arc::ptr_eq(&slot.tx, tx));
    }

    /// Marks a URL "pass", dropping expired entries now and then: `join` drops one only when
    /// its URL comes back, and URLs that never do (unique query strings) would stay forever.
    fn remember_pass(&self, hash: u64) {
        let now = Instant::now();
        self.pass.insert(hash, now + self.pass_for);
        let added = self.pass_added.fetch_add(1, Ordering::Relaxed) + 1;
        let after = self.prune_after.load(Ordering::Relaxed);
        // Whoever takes the count prunes; the others go on.
        if added >= after && self.pass_added.swap(0, Ordering::Relaxed) >= after {
            self.pass.retain(|_, until| *until > now);
            self.prune_after
                .store(self.pass.len().max(PRUNE_AFTER), Ordering::Relaxed);
        }
    }
}

/// The request that fetches for everyone waiting on its URL.
pub struct Leader {
    collapser: Arc<Collapser>,
    hash: u64,
    tx: Option<Arc<watch::Sender<Pending>>>,
}

impl Leader {
    /// Shares the fill with waiters and with requests that arrive until `FillDone` drops.
    pub fn share(mut self, fill: Arc<Fill>) -> FillDone {
        let tx = self.tx.take();
        if let Some(tx) = &tx {
            tx.send_replace(Pending::Ready(fill));
        }
        FillDone {
            collapser: self.collapser.clone(),
            hash: self.hash,
            tx,
        }
    }

    /// The answer is not shared; with `remember`, the URL skips collapsing for `PASS_FOR`.
    pub fn pass(mut self, remember: bool) {
        if remember {
            self.collapser.remember_pass(self.hash);
        }
        self.abandon();
    }

    fn abandon(&mut self) {
        if let Some(tx) = self.tx.take() {
            tx.send_replace(Pending::Pass);
            self.collapser.release(self.hash, &tx);
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.abandon();
    }
}

/// Held by the task filling the cache; dropping it stops new requests joining the fill (they
/// find the stored object instead, or start their own fetch if it was not stored).
pub struct FillDone {
    collapser: Arc<Collapser>,
    hash: u64,
    tx: Option<Arc<watch::Sender<Pending>>>,
}

impl Drop for FillDone {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            self.collapser.release(self.hash, &tx);
        }
    }
}

/// Waits (bounded) for the leader's outcome; `Pass` when it gave up, went away or took too long.
pub async fn wait(mut rx: watch::Receiver<Pending>, limit: Duration) -> Pending {
    let outcome = tokio::time::timeout(limit, rx.wait_for(|p| !matches!(p, Pending::Waiting))).await;
    match outcome {
        Ok(Ok(p)) => p.clone(),
        _ => Pending::Pass,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_leader_then_waiters_share_its_fill() {
        let c = Arc::new(Collapser::default());
        let Join::Leader(leader) = c.join(1, 0) else {
            panic!("first is leader")
        };
        let Join::Wait(rx) = c.join(1, 0) else {
            panic!("second waits")
        };
        let fill = Fill::new(
            http::StatusCode::OK,
            http::HeaderMap::new(),
            Box::new([]),
            None,
            u64::MAX,
        );
        let done = leader.share(fill.clone());
        assert!(
            matches!(wait(rx, Duration::from_secs(1)).await, Pending::Ready(f) if Arc::ptr_eq(&f, &fill))
        );
        let Join::Wait(_) = c.join(1, 0) else {
            panic!("joins the fill while it runs")
        };
        drop(done);
        assert!(
            matches!(c.join(1, 0), Join::Leader(_)),
            "after the fill, a new fetch leads"
        );
    }

    #[tokio::test]
    async fn uncacheable_releases_waiters_and_passes_for_a_while() {
        let c = Arc::new(Collapser::default());
        let Join::Leader(leader) = c.join(7, 0) else {
            panic!()
        };
        let Join::Wait(rx) = c.join(7, 0) else { panic!() };
        leader.pass(true);
        assert!(matches!(wait(rx, Duration::from_secs(1)).await, Pending::Pass));
        assert!(matches!(c.join(7, 0), Join::Pass));
    }

    #[test]
    fn expired_pass_entries_of_urls_never_requested_again_are_dropped() {
        let pass_all = |c: &Arc<Collapser>| {
            for hash in 0..100_000 {
                let Join::Leader(leader) = c.join(hash, 0) else {
                    panic!("{hash} is new")
                };
                leader.pass(true);
            }
        };
        // Expired as soon as made: every prune empties the map.
        let c = Arc::new(Collapser::with_pass_for(Duration::ZERO));
        pass_all(&c);
        assert!(c.pass.len() < PRUNE_AFTER, "{} entries", c.pass.len());
        // Live entries all stay.
        let c = Arc::new(Collapser::default());
        pass_all(&c);
        assert_eq!(c.pass.len(), 100_000);
        assert!(matches!(c.join(0, 0), Join::Pass) && matches!(c.join(99_999, 0), Join::Pass));
    }

    #[tokio::test]
    async fn a_purge_makes_running_fetches_unjoinable_and_a_gone_leader_releases() {
        let c = Arc::new(Collapser::default());
        let Join::Leader(first) = c.join(3, 0) else {
            panic!()
        };
        let Join::Leader(second) = c.join(3, 1) else {
            panic!("after a purge (seq 1) a new leader")
        };
        let Join::Wait(rx) = c.join(3, 1) else { panic!() };
        drop(second);
        assert!(matches!(wait(rx, Duration::from_secs(1)).await, Pending::Pass));
        drop(first);
    }
}
