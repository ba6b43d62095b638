//! Decides which endpoint of an origin pool serves a request: smooth weighted round robin,
//! power-of-two-choices least requests, or a ketama-style consistent-hash ring.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use outpost_config::BalancePolicy;

/// Bounds the round-robin schedule's memory and build time when weights are huge or coprime.
const MAX_SCHEDULE_LEN: u64 = 65_536;
/// Ketama's figure: enough points that each endpoint's share of the key space stays within a
/// few percent of its weight.
const RING_POINTS_PER_WEIGHT: u64 = 160;
/// Bounds ring memory and build time for large pools or weights; shares degrade gracefully
/// because each endpoint still gets points in proportion to its weight.
const MAX_RING_POINTS: u64 = 40_960;
/// Random draws before least-requests falls back to an exact scan: O(1) while most endpoints
/// are eligible, still correct when almost none are.
const SAMPLE_ATTEMPTS: usize = 4;

/// Picks endpoints for one pool under one config version.
///
/// Endpoints are identified by their index into the `weights` slice given to [`Balancer::new`];
/// the ring points for consistent hashing are derived from those indexes, so keeping endpoint
/// order stable across config versions keeps keys on the same endpoints.
pub struct Balancer {
    policy: BalancePolicy,
    weights: Box<[u32]>,
    /// Smooth weighted round-robin order; used by `RoundRobin` and by `ConsistentHash` when a
    /// request has no hash key.
    schedule: Box<[u32]>,
    cursor: AtomicUsize,
    /// Sorted by `hash`; empty unless the policy is `ConsistentHash`.
    ring: Box<[RingPoint]>,
}

#[derive(Clone, Copy)]
struct RingPoint {
    hash: u64,
    endpoint: u32,
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The schedule and ring can hold tens of thousands of entries; their sizes are what
        // matter when debugging.
        f.debug_struct("Balancer")
            .field("policy", &self.policy)
            .field("weights", &self.weights)
            .field("schedule_len", &self.schedule.len())
            .field("ring_points", &self.ring.len())
            .finish()
    }
}

impl Balancer {
    /// `weights[i] >= 1` is endpoint i's weight; a weight of 0 is treated as 1 so that no
    /// configured endpoint is silently unreachable.
    pub fn new(policy: BalancePolicy, weights: &[u32]) -> Self {
        let weights: Box<[u32]> = weights.iter().map(|&w| w.max(1)).collect();
        let schedule = match policy {
            BalancePolicy::RoundRobin | BalancePolicy::ConsistentHash => build_schedule(&weights),
            BalancePolicy::LeastRequests => Box::default(),
        };
        let ring = match policy {
            BalancePolicy::ConsistentHash => build_ring(&weights),
            BalancePolicy::RoundRobin | BalancePolicy::LeastRequests => Box::default(),
        };
        Self {
            policy,
            weights,
            schedule,
            cursor: AtomicUsize::new(0),
            ring,
        }
    }

    /// Picks an endpoint index among those for which `eligible(i)` is true.
    /// `in_flight(i)` is endpoint i's outstanding request count (for LeastRequests).
    /// `hash` is the request key's hash (ConsistentHash; when None, fall back to round robin).
    /// Returns None when no endpoint is eligible.
    pub fn pick(
        &self,
        eligible: &dyn Fn(usize) -> bool,
        in_flight: &dyn Fn(usize) -> u64,
        hash: Option<u64>,
    ) -> Option<usize> {
        match self.policy {
            BalancePolicy::RoundRobin => self.pick_round_robin(eligible),
            BalancePolicy::LeastRequests => self.pick_least_requests(eligible, in_flight),
            BalancePolicy::ConsistentHash => match hash {
                Some(hash) => self.pick_hashed(hash, eligible),
                None => self.pick_round_robin(eligible),
            },
        }
    }

    fn pick_round_robin(&self, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        let len = self.schedule.len();
        if len == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        for skipped in 0..len {
            let endpoint = self.schedule[start.wrapping_add(skipped) % len] as usize;
            if eligible(endpoint) {
                if skipped > 0 {
                    // Without this the endpoint just after an ineligible run would also take
                    // the run's share; moving the shared cursor past the run keeps eligible
                    // endpoints in their weighted proportions.
                    self.cursor.fetch_add(skipped, Ordering::Relaxed);
                }
                return Some(endpoint);
            }
        }
        None
    }

    fn pick_least_requests(
        &self,
        eligible: &dyn Fn(usize) -> bool,
        in_flight: &dyn Fn(usize) -> u64,
    ) -> Option<usize> {
        let n = self.weights.len();
        let first = sample_eligible(n, eligible, None)?;
        let Some(second) = sample_eligible(n, eligible, Some(first)) else {
            return Some(first);
        };
        // Cross-multiplying compares in_flight/weight without division or rounding; u128
        // cannot overflow (u64 * u32).
        let first_load = u128::from(in_flight(first)) * u128::from(self.weights[second]);
        let second_load = u128::from(in_flight(second)) * u128::from(self.weights[first]);
        // Ties go to `first`, which is itself a uniform random draw.
        Some(if second_load < first_load { second } else { first })
    }

    fn pick_hashed(&self, hash: u64, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        let len = self.ring.len();
        if len == 0 {
            return None;
        }
        let start = self.ring.partition_point(|point| point.hash < hash);
        // An endpoint often owns several adjacent points; asking about it once per run keeps
        // the walk cheap when it is down.
        let mut rejected = usize::MAX;
        for step in 0..len {
            let endpoint = self.ring[(start + step) % len].endpoint as usize;
            if endpoint == rejected {
                continue;
            }
            if eligible(endpoint) {
                return Some(endpoint);
            }
            rejected = endpoint;
        }
        None
    }
}

/// Draws an eligible endpoint uniformly at random, other than `exclude`.
fn sample_eligible(n: usize, eligible: &dyn Fn(usize) -> bool, exclude: Option<usize>) -> Option<usize> {
    let candidates = n.saturating_sub(usize::from(exclude.is_some()));
    if candidates == 0 {
        return None;
    }
    // Drawing from 0..candidates and stepping over `exclude` keeps the draw uniform over the
    // others without retrying on a collision.
    let skip_excluded = |i: usize| match exclude {
        Some(x) if i >= x => i + 1,
        _ => i,
    };
    for _ in 0..SAMPLE_ATTEMPTS {
        let i = skip_excluded(fastrand::usize(..candidates));
        if eligible(i) {
            return Some(i);
        }
    }
    // Rejection sampling failed, so most endpoints are ineligible: pick uniformly among the
    // eligible ones by rank. Both paths are uniform, so their mixture is too.
    let is_candidate = |i: &usize| Some(*i) != exclude && eligible(*i);
    let count = (0..n).filter(is_candidate).count();
    if count == 0 {
        return None;
    }
    let rank = fastrand::usize(..count);
    (0..n)
        .filter(is_candidate)
        .nth(rank)
        // Eligibility may change between the two scans; any eligible endpoint will do.
        .or_else(|| (0..n).find(is_candidate))
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Expands weights into nginx's smooth weighted round-robin order, so heavy endpoints are
/// interleaved with light ones instead of served in bursts (5,1,1 gives a,a,b,a,c,a,a).
fn build_schedule(weights: &[u32]) -> Box<[u32]> {
    let divisor = weights.iter().fold(0, |g, &w| gcd(g, u64::from(w))).max(1);
    let mut scaled: Vec<u64> = weights.iter().map(|&w| u64::from(w) / divisor).collect();
    let total: u64 = scaled.iter().sum();
    if total > MAX_SCHEDULE_LEN {
        // Proportional scaling keeps ratios approximately; max(1) keeps every endpoint in the
        // rotation even if its share rounds to zero.
        for w in &mut scaled {
            *w = (*w * MAX_SCHEDULE_LEN / total).max(1);
        }
    }
    let total: u64 = scaled.iter().sum();
    // After scaling, total is at most MAX_SCHEDULE_LEN plus the endpoint count, so this
    // cannot fail; it only avoids a lossy cast.
    let Ok(total_signed) = i64::try_from(total) else {
        return Box::default();
    };
    let mut current = vec![0i64; scaled.len()];
    let mut schedule = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        let mut best_value = i64::MIN;
        for (i, (cur, &w)) in current.iter_mut().zip(&scaled).enumerate() {
            // Each scaled weight is at most a u32, so it fits in i64.
            *cur += w as i64;
            // Strict comparison breaks ties towards the lowest index, as nginx does.
            if *cur > best_value {
                best = i;
                best_value = *cur;
            }
        }
        current[best] -= total_signed;
        schedule.push(best as u32);
    }
    schedule.into_boxed_slice()
}

/// Places `RING_POINTS_PER_WEIGHT` points per unit of weight (scaled down to
/// `MAX_RING_POINTS` in total) for each endpoint, keyed by `"{index}#{replica}"`. Each point
/// depends only on its own endpoint, so taking an endpoint out moves only that endpoint's keys.
fn build_ring(weights: &[u32]) -> Box<[RingPoint]> {
    use std::fmt::Write as _;

    let total_weight: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let scale_down = total_weight.saturating_mul(RING_POINTS_PER_WEIGHT) > MAX_RING_POINTS;
    let mut ring = Vec::new();
    let mut key = String::new();
    for (endpoint, &weight) in weights.iter().enumerate() {
        let points = if scale_down {
            (u64::from(weight) * MAX_RING_POINTS / total_weight).max(1)
        } else {
            u64::from(weight) * RING_POINTS_PER_WEIGHT
        };
        for replica in 0..points {
            key.clear();
            // Formatting into a String cannot fail.
            let _ = write!(key, "{endpoint}#{replica}");
            ring.push(RingPoint {
                hash: hash_key(key.as_bytes()),
                endpoint: endpoint as u32,
            });
        }
    }
    // Ordering colliding hashes by endpoint keeps the ring identical across processes.
    ring.sort_unstable_by_key(|point| (point.hash, point.endpoint));
    ring.into_boxed_slice()
}

/// Hashes a request key for consistent hashing: 64-bit FNV-1a over the bytes, then the
/// splitmix64 finaliser.
///
/// FNV-1a alone leaves similar keys (`/a1`, `/a2`) close together in the high bits, which
/// would cluster them on the ring; the finaliser avalanches every input bit across the whole
/// output. There is no per-process seed, so the value is the same across runs, processes and
/// machines, which is what lets every PoP send a key to the same origin. Not DoS-resistant:
/// don't use it to key a hash table with attacker-controlled input.
pub fn hash_key(bytes: &[u8]) -> u64 {
    mix64(fnv1a64(bytes))
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

/// splitmix64's output function (Steele, Lea and Flood).
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    fn all(_: usize) -> bool {
        true
    }

    fn idle(_: usize) -> u64 {
        0
    }

    fn counts(balancer: &Balancer, n: usize, picks: usize, eligible: &dyn Fn(usize) -> bool) -> Vec<usize> {
        let mut counts = vec![0; n];
        for _ in 0..picks {
            counts[balancer.pick(eligible, &idle, None).unwrap()] += 1;
        }
        counts
    }

    fn assert_share(count: usize, expected: f64, tolerance: f64) {
        let c = count as f64;
        assert!(
            (c - expected).abs() <= expected * tolerance,
            "count {count} not within {tolerance} of {expected}"
        );
    }

    #[test]
    fn balancer_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Balancer>();
    }

    #[test]
    fn fnv_and_finaliser_match_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        // First output of splitmix64 seeded with 0.
        assert_eq!(mix64(0x9e37_79b9_7f4a_7c15), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn hash_key_is_stable_and_spreads_similar_keys() {
        assert_eq!(hash_key(b"/index.html"), hash_key(b"/index.html"));
        assert_eq!(hash_key(b"a"), mix64(0xaf63_dc4c_8601_ec8c));
        // Keys differing in one trailing byte should differ in about half the bits.
        let mut total_flipped = 0;
        for i in 0..100u8 {
            let a = hash_key(&[b'/', b'k', i]);
            let b = hash_key(&[b'/', b'k', i.wrapping_add(1)]);
            total_flipped += (a ^ b).count_ones();
        }
        let average = f64::from(total_flipped) / 100.0;
        assert!((26.0..38.0).contains(&average), "average flipped bits {average}");
    }

    #[test]
    fn round_robin_equal_weights_rotate_perfectly() {
        let b = Balancer::new(BalancePolicy::RoundRobin, &[1, 1, 1]);
        let picks: Vec<_> = (0..9).map(|_| b.pick(&all, &idle, None).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn round_robin_is_smooth_not_bursty() {
        let b = Balancer::new(BalancePolicy::RoundRobin, &[5, 1, 1]);
        let picks: Vec<_> = (0..14).map(|_| b.pick(&all, &idle, None).unwrap()).collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn round_robin_respects_weight_ratios_exactly() {
        let b = Balancer::new(BalancePolicy::RoundRobin, &[3, 2, 1]);
        assert_eq!(counts(&b, 3, 600, &all), [300, 200, 100]);
    }

    #[test]
    fn round_robin_reduces_weights_by_gcd() {
        let b = Balancer::new(BalancePolicy::RoundRobin, &[1000, 500, 1500]);
        assert_eq!(b.schedule.len(), 6);
        assert_eq!(counts(&b, 3, 600, &all), [200, 100, 300]);
    }

    #[test]
    fn round_robin_caps_huge_weights_but_keeps_every_endpoint() {
        let b = Balancer::new(BalancePolicy::RoundRobin, &[u32::MAX, 1, 7]);
        let len = b.schedule.len();
        assert!(len as u64 <= MAX_SCHEDULE_LEN + 3, "schedule len {len}");
        let c = counts(&b, 3, len, &all);
        assert!(c[1] >= 1 && c[2] >= 1, "{c:?}");
        assert!(c[0] > len - 3, "{c:?}");
    }

    #[test]
    fn round_robin_zero_weight_counts_as_one() {
        let b = Balancer::new(BalancePolicy::RoundRobin, &[0, 1]);
        assert_eq!(counts(&b, 2, 10, &all), [5, 5]);
    }

    #[test]
    fn round_robin_skips_ineligible_and_keeps_ratios_among_the_rest() {
        let b = Balancer::new(BalancePolicy::RoundRobin, &[1, 1, 1]);
        let not_1 = |i: usize| i != 1;
        assert_eq!(counts(&b, 3, 300, &not_1), [150, 0, 150]);

        let b = Balancer::new(BalancePolicy::RoundRobin, &[5, 1, 1]);
        let not_0 = |i: usize| i != 0;
        assert_eq!(counts(&b, 3, 100, &not_0), [0, 50, 50]);

        let b = Balancer::new(BalancePolicy::RoundRobin, &[4, 1, 2]);
        let not_1 = |i: usize| i != 1;
        assert_eq!(counts(&b, 3, 600, &not_1), [400, 0, 200]);
    }

    #[test]
    fn round_robin_none_when_nothing_eligible_or_empty() {
        let b = Balancer::new(BalancePolicy::RoundRobin, &[1, 2, 3]);
        assert_eq!(b.pick(&|_| false, &idle, None), None);
        let empty = Balancer::new(BalancePolicy::RoundRobin, &[]);
        assert_eq!(empty.pick(&all, &idle, None), None);
        // A pool recovering after a total outage resumes normally.
        assert!(b.pick(&all, &idle, None).is_some());
    }

    #[test]
    fn round_robin_is_exact_under_concurrency() {
        let b = Balancer::new(BalancePolicy::RoundRobin, &[3, 2, 1]);
        let tallies: [AtomicU64; 3] = Default::default();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..6000 {
                        let i = b.pick(&all, &idle, None).unwrap();
                        tallies[i].fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        let got: Vec<u64> = tallies.iter().map(|t| t.load(Ordering::Relaxed)).collect();
        assert_eq!(got, [12_000, 8_000, 4_000]);
    }

    #[test]
    fn least_requests_prefers_less_loaded() {
        fastrand::seed(7);
        let b = Balancer::new(BalancePolicy::LeastRequests, &[1, 1]);
        let load = |i: usize| if i == 0 { 10 } else { 0 };
        for _ in 0..100 {
            assert_eq!(b.pick(&all, &load, None), Some(1));
        }
    }

    #[test]
    fn least_requests_compares_load_per_weight() {
        fastrand::seed(7);
        let b = Balancer::new(BalancePolicy::LeastRequests, &[1, 4]);
        // 4/1 = 4 per unit of weight against 8/4 = 2: the heavier endpoint is less loaded.
        let load = |i: usize| if i == 0 { 4 } else { 8 };
        for _ in 0..100 {
            assert_eq!(b.pick(&all, &load, None), Some(1));
        }
    }

    #[test]
    fn least_requests_never_picks_the_most_loaded_of_three() {
        fastrand::seed(11);
        let b = Balancer::new(BalancePolicy::LeastRequests, &[1, 1, 1]);
        let load = |i: usize| [0, 5, 10][i];
        let mut c = [0usize; 3];
        for _ in 0..3000 {
            c[b.pick(&all, &load, None).unwrap()] += 1;
        }
        assert_eq!(c[2], 0);
        // Endpoint 0 wins every pair it is sampled into (2 of 3 pairs).
        assert_share(c[0], 2000.0, 0.1);
        assert_share(c[1], 1000.0, 0.15);
    }

    #[test]
    fn least_requests_samples_uniformly_when_loads_tie() {
        fastrand::seed(3);
        let b = Balancer::new(BalancePolicy::LeastRequests, &[1, 1, 1, 1]);
        let c = counts(&b, 4, 8000, &all);
        for count in c {
            assert_share(count, 2000.0, 0.1);
        }
    }

    #[test]
    fn least_requests_respects_weight_ratios_over_many_picks() {
        fastrand::seed(5);
        let weights = [1, 2, 3];
        let b = Balancer::new(BalancePolicy::LeastRequests, &weights);
        // Requests that never complete: the load each endpoint carries is its pick count.
        let in_flight: [AtomicU64; 3] = Default::default();
        let load = |i: usize| in_flight[i].load(Ordering::Relaxed);
        for _ in 0..6000 {
            let i = b.pick(&all, &load, None).unwrap();
            in_flight[i].fetch_add(1, Ordering::Relaxed);
        }
        for (i, w) in weights.iter().enumerate() {
            assert_share(load(i) as usize, 1000.0 * f64::from(*w), 0.05);
        }
    }

    #[test]
    fn least_requests_honours_eligibility() {
        fastrand::seed(9);
        let b = Balancer::new(BalancePolicy::LeastRequests, &[1; 8]);
        let only_5 = |i: usize| i == 5;
        for _ in 0..200 {
            assert_eq!(b.pick(&only_5, &idle, None), Some(5));
        }
        let evens = |i: usize| i.is_multiple_of(2);
        let c = counts(&b, 8, 4000, &evens);
        for (i, count) in c.iter().enumerate() {
            if i % 2 == 1 {
                assert_eq!(*count, 0);
            } else {
                assert_share(*count, 1000.0, 0.15);
            }
        }
        // Few eligible endpoints exercise the exact-scan fallback.
        let b = Balancer::new(BalancePolicy::LeastRequests, &[1; 64]);
        let two = |i: usize| i == 17 || i == 42;
        let c = counts(&b, 64, 2000, &two);
        assert_eq!(c[17] + c[42], 2000);
        assert_share(c[17], 1000.0, 0.15);
        assert_eq!(b.pick(&|_| false, &idle, None), None);
        let empty = Balancer::new(BalancePolicy::LeastRequests, &[]);
        assert_eq!(empty.pick(&all, &idle, None), None);
    }

    fn keys() -> impl Iterator<Item = u64> {
        (0..10_000).map(|i| hash_key(format!("/objects/{i}").as_bytes()))
    }

    #[test]
    fn consistent_hash_is_deterministic() {
        let a = Balancer::new(BalancePolicy::ConsistentHash, &[1, 1, 1, 1]);
        let b = Balancer::new(BalancePolicy::ConsistentHash, &[1, 1, 1, 1]);
        for key in keys().take(1000) {
            let first = a.pick(&all, &idle, Some(key));
            assert_eq!(first, a.pick(&all, &idle, Some(key)));
            assert_eq!(first, b.pick(&all, &idle, Some(key)));
        }
        assert_eq!(a.ring.len(), 640);
    }

    #[test]
    fn consistent_hash_spreads_keys_evenly() {
        let b = Balancer::new(BalancePolicy::ConsistentHash, &[1, 1, 1, 1]);
        let mut c = [0usize; 4];
        for key in keys() {
            c[b.pick(&all, &idle, Some(key)).unwrap()] += 1;
        }
        for count in c {
            assert_share(count, 2500.0, 0.25);
        }
    }

    #[test]
    fn consistent_hash_moves_only_the_lost_endpoints_keys() {
        let b = Balancer::new(BalancePolicy::ConsistentHash, &[1, 1, 1, 1]);
        let not_2 = |i: usize| i != 2;
        let mut moved_to = [0usize; 4];
        for key in keys() {
            let before = b.pick(&all, &idle, Some(key)).unwrap();
            let after = b.pick(&not_2, &idle, Some(key)).unwrap();
            assert_ne!(after, 2);
            if before == 2 {
                moved_to[after] += 1;
            } else {
                assert_eq!(before, after, "key {key:#x} moved off a healthy endpoint");
            }
        }
        // The orphaned keys spread over the survivors instead of piling onto one neighbour.
        for survivor in [0, 1, 3] {
            assert!(moved_to[survivor] > 0, "{moved_to:?}");
        }
    }

    #[test]
    fn consistent_hash_respects_weights() {
        let b = Balancer::new(BalancePolicy::ConsistentHash, &[1, 3]);
        let mut c = [0usize; 2];
        for key in keys() {
            c[b.pick(&all, &idle, Some(key)).unwrap()] += 1;
        }
        assert_share(c[0], 2500.0, 0.25);
        assert_share(c[1], 7500.0, 0.1);
    }

    #[test]
    fn consistent_hash_caps_ring_size() {
        let b = Balancer::new(BalancePolicy::ConsistentHash, &[1000, 1000, 1]);
        let points = b.ring.len() as u64;
        assert!(points <= MAX_RING_POINTS + 3, "{points}");
        assert!(b.ring.iter().any(|p| p.endpoint == 2));
    }

    #[test]
    fn consistent_hash_eligibility_and_fallback() {
        let b = Balancer::new(BalancePolicy::ConsistentHash, &[1, 1, 1]);
        let only_1 = |i: usize| i == 1;
        for key in keys().take(500) {
            assert_eq!(b.pick(&only_1, &idle, Some(key)), Some(1));
        }
        assert_eq!(b.pick(&|_| false, &idle, Some(42)), None);
        assert_eq!(b.pick(&|_| false, &idle, None), None);
        // Without a key it round-robins.
        let b = Balancer::new(BalancePolicy::ConsistentHash, &[1, 1, 1]);
        let picks: Vec<_> = (0..6).map(|_| b.pick(&all, &idle, None).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let empty = Balancer::new(BalancePolicy::ConsistentHash, &[]);
        assert_eq!(empty.pick(&all, &idle, Some(1)), None);
        assert_eq!(empty.pick(&all, &idle, None), None);
    }

    #[test]
    fn consistent_hash_handles_keys_past_the_last_point() {
        let b = Balancer::new(BalancePolicy::ConsistentHash, &[1, 1]);
        let first_owner = b.ring[0].endpoint as usize;
        assert_eq!(b.pick(&all, &idle, Some(u64::MAX)), Some(first_owner));
        assert_eq!(b.pick(&all, &idle, Some(0)), Some(first_owner));
    }
}
