//! Decides when passive outlier detection ejects an origin after consecutive failures, and for
//! how long (exponential backoff per consecutive ejection, like Envoy's consecutive_5xx).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct OutlierPolicy {
    /// Consecutive failures that eject the origin; 0 disables ejection.
    pub consecutive_failures: u32,
    /// Length of the first ejection; each consecutive one doubles it.
    pub base_ejection: Duration,
    /// Cap on an ejection's length, and how long an origin must stay in rotation before its
    /// next ejection starts again from `base_ejection`.
    pub max_ejection: Duration,
}

/// Low bits of the packed word hold the ejection count; the rest hold the deadline.
const COUNT_BITS: u32 = 16;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
/// Largest storable deadline: about 8,900 years of milliseconds.
const MAX_MILLIS: u64 = u64::MAX >> COUNT_BITS;

/// Outlier state of one origin.
#[derive(Debug)]
pub struct OutlierState {
    epoch: Instant,
    consecutive_failures: AtomicU32,
    /// `(ejected_until_ms << COUNT_BITS) | ejection_count`. One word, so an ejection (new
    /// deadline plus incremented multiplier) is a single compare_exchange: concurrent failures
    /// cannot both eject, and readers never see a deadline paired with the wrong count.
    ejection: AtomicU64,
}

impl Default for OutlierState {
    /// Measures time from now; `now` values passed later must not precede construction.
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

impl OutlierState {
    /// Times are stored as milliseconds since `epoch`; instants before it count as `epoch`.
    pub fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            consecutive_failures: AtomicU32::new(0),
            ejection: AtomicU64::new(0),
        }
    }

    pub fn record_success(&self, now: Instant, policy: &OutlierPolicy) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.settle_multiplier(self.millis(now), policy);
    }

    /// Returns Some(ejection duration) when this failure ejected the origin; exactly one of
    /// any number of concurrent failures gets it for a given ejection.
    pub fn record_failure(&self, now: Instant, policy: &OutlierPolicy) -> Option<Duration> {
        if policy.consecutive_failures == 0 {
            return None;
        }
        let now_ms = self.millis(now);
        if now_ms < until(self.ejection.load(Ordering::Relaxed)) {
            // Failures of requests sent before the ejection say nothing new; counting them
            // would re-eject the origin the moment it returns.
            return None;
        }
        self.settle_multiplier(now_ms, policy);
        let failures = self
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if failures < policy.consecutive_failures {
            return None;
        }
        let mut word = self.ejection.load(Ordering::Relaxed);
        loop {
            if now_ms < until(word) {
                // A concurrent failure won the race and already ejected.
                return None;
            }
            let count = effective_count(word, now_ms, policy)
                .saturating_add(1)
                .min(COUNT_MASK as u32);
            let duration = ejection_duration(policy, count);
            let until_ms = now_ms.saturating_add(ceil_millis(duration)).min(MAX_MILLIS);
            match self.ejection.compare_exchange_weak(
                word,
                pack(until_ms, count),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    // The origin starts its next stint in rotation with a clean slate.
                    self.consecutive_failures.store(0, Ordering::Relaxed);
                    return Some(duration);
                }
                Err(actual) => word = actual,
            }
        }
    }

    pub fn is_ejected(&self, now: Instant) -> bool {
        self.millis(now) < until(self.ejection.load(Ordering::Relaxed))
    }

    /// Consecutive ejections so far (the backoff multiplier). The reset after a long healthy
    /// stretch is applied when a success or failure is recorded, not by reading this.
    pub fn ejection_count(&self) -> u32 {
        count(self.ejection.load(Ordering::Relaxed))
    }

    fn millis(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.epoch).as_millis();
        u64::try_from(elapsed).unwrap_or(u64::MAX).min(MAX_MILLIS)
    }

    fn settle_multiplier(&self, now_ms: u64, policy: &OutlierPolicy) {
        let word = self.ejection.load(Ordering::Relaxed);
        if count(word) != 0 && effective_count(word, now_ms, policy) == 0 {
            // Losing this race means another thread reset it or ejected again; either way the
            // word is already current.
            let _ = self.ejection.compare_exchange(
                word,
                pack(until(word), 0),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }
}

fn pack(until_ms: u64, count: u32) -> u64 {
    (until_ms << COUNT_BITS) | (u64::from(count) & COUNT_MASK)
}

fn until(word: u64) -> u64 {
    word >> COUNT_BITS
}

fn count(word: u64) -> u32 {
    (word & COUNT_MASK) as u32
}

/// The stored count, or 0 once the origin has stayed in rotation for `max_ejection` since its
/// last ejection ended: it has earned a fresh start at `base_ejection`.
fn effective_count(word: u64, now_ms: u64, policy: &OutlierPolicy) -> u32 {
    let stored = count(word);
    let forgiven_at = until(word).saturating_add(ceil_millis(policy.max_ejection));
    if stored > 0 && now_ms >= forgiven_at {
        0
    } else {
        stored
    }
}

/// `base * 2^(count-1)`, capped at `max`.
fn ejection_duration(policy: &OutlierPolicy, count: u32) -> Duration {
    match 1u32.checked_shl(count.saturating_sub(1)) {
        Some(factor) => policy
            .base_ejection
            .saturating_mul(factor)
            .min(policy.max_ejection),
        None => policy.max_ejection,
    }
}

/// Rounds up so a sub-millisecond ejection still ejects, keeping `is_ejected` consistent with
/// `record_failure` having returned a non-zero duration.
fn ceil_millis(duration: Duration) -> u64 {
    let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    if duration.subsec_nanos().is_multiple_of(1_000_000) {
        millis
    } else {
        millis.saturating_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    const POLICY: OutlierPolicy = OutlierPolicy {
        consecutive_failures: 5,
        base_ejection: Duration::from_secs(10),
        max_ejection: Duration::from_secs(60),
    };

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Records `n` failures at `now`, returning what the last one returned and asserting the
    /// earlier ones returned None.
    fn fail_n(state: &OutlierState, now: Instant, n: u32, policy: &OutlierPolicy) -> Option<Duration> {
        for _ in 1..n {
            assert_eq!(state.record_failure(now, policy), None);
        }
        state.record_failure(now, policy)
    }

    #[test]
    fn ejects_after_consecutive_failures() {
        let t0 = Instant::now();
        let state = OutlierState::new(t0);
        assert!(!state.is_ejected(t0));
        assert_eq!(fail_n(&state, t0, 5, &POLICY), Some(secs(10)));
        assert!(state.is_ejected(t0));
        assert!(state.is_ejected(t0 + Duration::from_millis(9_999)));
        assert_eq!(state.ejection_count(), 1);
    }

    #[test]
    fn success_in_between_resets_the_count() {
        let t0 = Instant::now();
        let state = OutlierState::new(t0);
        assert_eq!(fail_n(&state, t0, 4, &POLICY), None);
        state.record_success(t0, &POLICY);
        assert_eq!(fail_n(&state, t0, 4, &POLICY), None);
        assert!(!state.is_ejected(t0));
        assert_eq!(state.record_failure(t0, &POLICY), Some(secs(10)));
    }

    #[test]
    fn returns_after_expiry_and_needs_a_fresh_run_of_failures() {
        let t0 = Instant::now();
        let state = OutlierState::new(t0);
        assert_eq!(fail_n(&state, t0, 5, &POLICY), Some(secs(10)));
        assert!(!state.is_ejected(t0 + secs(10)));
        let back = t0 + secs(10);
        assert_eq!(fail_n(&state, back, 4, &POLICY), None);
        assert!(!state.is_ejected(back));
        assert!(state.record_failure(back, &POLICY).is_some());
    }

    #[test]
    fn failures_while_ejected_neither_extend_nor_count() {
        let t0 = Instant::now();
        let state = OutlierState::new(t0);
        assert_eq!(fail_n(&state, t0, 5, &POLICY), Some(secs(10)));
        for _ in 0..100 {
            assert_eq!(state.record_failure(t0 + secs(5), &POLICY), None);
        }
        assert!(!state.is_ejected(t0 + secs(10)));
        assert_eq!(state.ejection_count(), 1);
        assert_eq!(fail_n(&state, t0 + secs(10), 4, &POLICY), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let t0 = Instant::now();
        let state = OutlierState::new(t0);
        let mut now = t0;
        for expected in [10, 20, 40, 60, 60, 60] {
            assert_eq!(fail_n(&state, now, 5, &POLICY), Some(secs(expected)));
            assert!(state.is_ejected(now + secs(expected) - Duration::from_millis(1)));
            now += secs(expected);
            assert!(!state.is_ejected(now));
        }
        assert_eq!(state.ejection_count(), 6);
    }

    #[test]
    fn multiplier_resets_after_a_long_healthy_stretch() {
        let t0 = Instant::now();
        let state = OutlierState::new(t0);
        assert_eq!(fail_n(&state, t0, 5, &POLICY), Some(secs(10)));
        assert_eq!(fail_n(&state, t0 + secs(10), 5, &POLICY), Some(secs(20)));
        let back = t0 + secs(30);

        // Just short of max_ejection in rotation: the backoff continues.
        let probe = OutlierState::new(t0);
        assert_eq!(fail_n(&probe, t0, 5, &POLICY), Some(secs(10)));
        assert_eq!(
            fail_n(&probe, t0 + secs(70) - Duration::from_millis(1), 5, &POLICY),
            Some(secs(20))
        );

        // A success after max_ejection in rotation resets the multiplier.
        state.record_success(back + secs(60), &POLICY);
        assert_eq!(state.ejection_count(), 0);
        assert_eq!(fail_n(&state, back + secs(61), 5, &POLICY), Some(secs(10)));
    }

    #[test]
    fn multiplier_reset_is_judged_at_failure_time_too() {
        let t0 = Instant::now();
        let state = OutlierState::new(t0);
        assert_eq!(fail_n(&state, t0, 5, &POLICY), Some(secs(10)));
        assert_eq!(fail_n(&state, t0 + secs(10), 5, &POLICY), Some(secs(20)));
        // Back at 30 s; no traffic until 100 s, then a burst of failures.
        let later = t0 + secs(100);
        assert_eq!(state.record_failure(later, &POLICY), None);
        assert_eq!(state.ejection_count(), 0);
        assert_eq!(fail_n(&state, later, 4, &POLICY), Some(secs(10)));
        assert_eq!(state.ejection_count(), 1);
    }

    #[test]
    fn disabled_when_threshold_is_zero() {
        let t0 = Instant::now();
        let state = OutlierState::new(t0);
        let policy = OutlierPolicy {
            consecutive_failures: 0,
            ..POLICY
        };
        for _ in 0..1000 {
            assert_eq!(state.record_failure(t0, &policy), None);
        }
        assert!(!state.is_ejected(t0));
        assert_eq!(state.ejection_count(), 0);
    }

    #[test]
    fn threshold_of_one_ejects_on_each_failure_in_rotation() {
        let t0 = Instant::now();
        let state = OutlierState::new(t0);
        let policy = OutlierPolicy {
            consecutive_failures: 1,
            ..POLICY
        };
        assert_eq!(state.record_failure(t0, &policy), Some(secs(10)));
        assert_eq!(state.record_failure(t0 + secs(1), &policy), None);
        assert_eq!(state.record_failure(t0 + secs(10), &policy), Some(secs(20)));
    }

    #[test]
    fn base_above_max_is_capped_and_sub_millisecond_ejections_still_eject() {
        let t0 = Instant::now();
        let state = OutlierState::new(t0);
        let policy = OutlierPolicy {
            consecutive_failures: 1,
            base_ejection: secs(100),
            max_ejection: secs(30),
        };
        assert_eq!(state.record_failure(t0, &policy), Some(secs(30)));

        let state = OutlierState::new(t0);
        let tiny = OutlierPolicy {
            consecutive_failures: 1,
            base_ejection: Duration::from_micros(10),
            max_ejection: secs(1),
        };
        assert_eq!(state.record_failure(t0, &tiny), Some(Duration::from_micros(10)));
        assert!(state.is_ejected(t0));
    }

    #[test]
    fn huge_ejection_counts_saturate_at_max() {
        let policy = OutlierPolicy {
            consecutive_failures: 1,
            base_ejection: secs(1),
            max_ejection: secs(3600),
        };
        assert_eq!(ejection_duration(&policy, 1), secs(1));
        assert_eq!(ejection_duration(&policy, 12), secs(2048));
        assert_eq!(ejection_duration(&policy, 13), secs(3600));
        assert_eq!(ejection_duration(&policy, 40), secs(3600));
        assert_eq!(ejection_duration(&policy, u32::MAX), secs(3600));
    }

    #[test]
    fn instants_before_the_epoch_count_as_the_epoch() {
        let t0 = Instant::now();
        let state = OutlierState::new(t0 + secs(5));
        assert_eq!(fail_n(&state, t0, 5, &POLICY), Some(secs(10)));
        assert!(state.is_ejected(t0 + secs(14)));
        assert!(!state.is_ejected(t0 + secs(15)));
    }

    #[test]
    fn concurrent_failures_eject_exactly_once() {
        let t0 = Instant::now();
        let state = OutlierState::new(t0);
        let ejections = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        if state.record_failure(t0, &POLICY).is_some() {
                            ejections.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(ejections.load(Ordering::Relaxed), 1);
        assert_eq!(state.ejection_count(), 1);
        assert!(state.is_ejected(t0));
    }

    #[test]
    fn default_starts_in_rotation() {
        let state = OutlierState::default();
        assert!(!state.is_ejected(Instant::now()));
        assert_eq!(state.ejection_count(), 0);
    }
}
