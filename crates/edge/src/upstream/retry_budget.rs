//! Decides whether a retry may be sent: retries are capped at a fraction of recent traffic plus
//! a small floor (a retry budget, as in linkerd and Finagle), so retries cannot multiply load on
//! an origin that is already failing.

use std::cmp::Ordering as CmpOrdering;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Length of the sliding window, in one-second buckets.
const WINDOW_SECS: u32 = 10;
const BUCKETS: usize = WINDOW_SECS as usize;
/// Absorbs float error so that e.g. 0.29 * 100 requests buys 29 retries, not 28.
const EPSILON: f64 = 1e-9;

/// Retry budget of one pool (or route).
///
/// Each bucket is one `AtomicU64` packing `(second << 32) | count`, so that claiming a bucket
/// for a new second and counting into it is one compare_exchange: no lock on the per-request
/// path, and no count lost to a concurrent reset.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    /// Retries allowed per window with no traffic at all (`min_per_second * WINDOW_SECS`).
    reserve: f64,
    epoch: Instant,
    requests: [AtomicU64; BUCKETS],
    retries: [AtomicU64; BUCKETS],
}

impl RetryBudget {
    /// Each original request deposits `ratio` retries (negative or non-finite ratios count as
    /// 0), on top of `min_per_second` retries per second, over a 10 s sliding window.
    pub fn new(ratio: f64, min_per_second: u32, epoch: Instant) -> Self {
        let ratio = if ratio.is_finite() && ratio > 0.0 {
            ratio
        } else {
            0.0
        };
        Self {
            ratio,
            reserve: f64::from(min_per_second) * f64::from(WINDOW_SECS),
            epoch,
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            retries: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Counts one original request (not a retry) towards the budget.
    pub fn record_request(&self, now: Instant) {
        let second = self.second(now);
        let slot = &self.requests[slot_index(second)];
        let mut word = slot.load(Ordering::Relaxed);
        loop {
            let next = match stamp(word).cmp(&second) {
                CmpOrdering::Equal => pack(second, count(word).saturating_add(1)),
                CmpOrdering::Less => pack(second, 1),
                // The slot already holds a second at least a window later, so this request
                // could not count in any window from now on.
                CmpOrdering::Greater => return,
            };
            match slot.compare_exchange_weak(word, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => word = actual,
            }
        }
    }

    /// A retry may be sent only if this returns true; it consumes one retry from the budget.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let second = self.second(now);
        let allowed = self.reserve + self.ratio * window_sum(&self.requests, second) as f64;
        let current = slot_index(second);
        let withdrawn_earlier: u64 = self
            .retries
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != current)
            .map(|(_, slot)| counted(slot.load(Ordering::Relaxed), second))
            .sum();
        let slot = &self.retries[current];
        let mut word = slot.load(Ordering::Relaxed);
        loop {
            let this_second = match stamp(word).cmp(&second) {
                CmpOrdering::Equal => count(word),
                CmpOrdering::Less => 0,
                // Our clock lags another thread's by a whole window; refusing is the safe
                // answer.
                CmpOrdering::Greater => return false,
            };
            let after = withdrawn_earlier + u64::from(this_second) + 1;
            if after as f64 > allowed + EPSILON {
                return false;
            }
            // Compare-exchange on the current bucket serialises concurrent withdrawals, so
            // the budget is never overdrawn by a race within a second.
            let next = pack(second, this_second.saturating_add(1));
            match slot.compare_exchange_weak(word, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(actual) => word = actual,
            }
        }
    }

    fn second(&self, now: Instant) -> u32 {
        let secs = now.saturating_duration_since(self.epoch).as_secs();
        u32::try_from(secs).unwrap_or(u32::MAX)
    }
}

fn slot_index(second: u32) -> usize {
    (second % WINDOW_SECS) as usize
}

fn pack(second: u32, count: u32) -> u64 {
    (u64::from(second) << 32) | u64::from(count)
}

fn stamp(word: u64) -> u32 {
    (word >> 32) as u32
}

fn count(word: u64) -> u32 {
    word as u32
}

/// The bucket's count if its second lies in the window ending at `second`, else 0.
fn counted(word: u64, second: u32) -> u64 {
    let stamp = stamp(word);
    if stamp <= second && second - stamp < WINDOW_SECS {
        u64::from(count(word))
    } else {
        0
    }
}

fn window_sum(buckets: &[AtomicU64; BUCKETS], second: u32) -> u64 {
    buckets
        .iter()
        .map(|slot| counted(slot.load(Ordering::Relaxed), second))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    fn withdrawals(budget: &RetryBudget, now: Instant, attempts: usize) -> usize {
        (0..attempts).filter(|_| budget.try_withdraw(now)).count()
    }

    #[test]
    fn ratio_allows_exactly_its_share_of_requests() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(0.2, 0, t0);
        for _ in 0..100 {
            budget.record_request(t0);
        }
        for _ in 0..20 {
            assert!(budget.try_withdraw(t0));
        }
        assert!(!budget.try_withdraw(t0));
        // Five more requests buy one more retry.
        for _ in 0..5 {
            budget.record_request(t0);
        }
        assert!(budget.try_withdraw(t0));
        assert!(!budget.try_withdraw(t0));
    }

    #[test]
    fn fractional_tokens_accumulate() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(0.25, 0, t0);
        for _ in 0..3 {
            budget.record_request(t0);
        }
        assert!(!budget.try_withdraw(t0));
        budget.record_request(t0);
        assert!(budget.try_withdraw(t0));
        assert!(!budget.try_withdraw(t0));
    }

    #[test]
    fn float_error_does_not_cost_a_retry() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(0.29, 0, t0);
        for _ in 0..100 {
            budget.record_request(t0);
        }
        assert_eq!(withdrawals(&budget, t0, 100), 29);
    }

    #[test]
    fn min_per_second_alone_allows_a_window_of_retries() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(0.2, 3, t0);
        assert_eq!(withdrawals(&budget, t0, 100), 30);
        // The reserve and the ratio add up.
        let budget = RetryBudget::new(0.5, 1, t0);
        for _ in 0..10 {
            budget.record_request(t0);
        }
        assert_eq!(withdrawals(&budget, t0, 100), 15);
    }

    #[test]
    fn requests_expire_after_the_window() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(0.5, 0, t0);
        for _ in 0..10 {
            budget.record_request(t0);
        }
        assert!(!budget.try_withdraw(t0 + Duration::from_secs(10)));
        assert!(budget.try_withdraw(t0 + Duration::from_millis(9_999)));
    }

    #[test]
    fn withdrawals_expire_after_the_window_too() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(0.0, 1, t0);
        assert_eq!(withdrawals(&budget, t0, 100), 10);
        assert_eq!(withdrawals(&budget, t0 + Duration::from_secs(9), 100), 0);
        assert_eq!(withdrawals(&budget, t0 + Duration::from_secs(10), 100), 10);
    }

    #[test]
    fn window_slides_one_second_at_a_time() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(1.0, 0, t0);
        for s in 0..5 {
            for _ in 0..10 {
                budget.record_request(t0 + Duration::from_secs(s));
            }
        }
        // At 12 s the requests of seconds 0..=2 have aged out: 20 tokens remain.
        assert_eq!(withdrawals(&budget, t0 + Duration::from_secs(12), 100), 20);
        // At 13 s second 4's 10 requests remain, but the 20 retries above already exceed them.
        let at_13 = t0 + Duration::from_secs(13);
        assert_eq!(withdrawals(&budget, at_13, 100), 0);
        for _ in 0..15 {
            budget.record_request(at_13);
        }
        assert_eq!(withdrawals(&budget, at_13, 100), 5);
        // At 22 s only second 13 is left: 15 tokens, 5 of them already withdrawn.
        assert_eq!(withdrawals(&budget, t0 + Duration::from_secs(22), 100), 10);
    }

    #[test]
    fn buckets_are_reused_across_windows() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(1.0, 0, t0);
        for _ in 0..7 {
            budget.record_request(t0 + Duration::from_secs(3));
        }
        // Second 13 maps onto the same bucket as second 3; the old count must not leak in.
        budget.record_request(t0 + Duration::from_secs(13));
        assert_eq!(withdrawals(&budget, t0 + Duration::from_secs(13), 100), 1);
    }

    #[test]
    fn zero_ratio_and_zero_minimum_never_allow() {
        let t0 = Instant::now();
        for ratio in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let budget = RetryBudget::new(ratio, 0, t0);
            for _ in 0..1000 {
                budget.record_request(t0);
            }
            assert!(!budget.try_withdraw(t0), "ratio {ratio}");
        }
    }

    #[test]
    fn lagging_clock_is_refused_not_overdrawn() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(0.0, 1, t0);
        assert!(budget.try_withdraw(t0 + Duration::from_secs(15)));
        // Second 5 shares a bucket with second 15, which is already newer.
        assert!(!budget.try_withdraw(t0 + Duration::from_secs(5)));
        budget.record_request(t0 + Duration::from_secs(5));
    }

    #[test]
    fn concurrent_withdrawals_never_overdraw() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(0.2, 0, t0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..250 {
                        budget.record_request(t0);
                    }
                });
            }
        });
        let granted = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let n = withdrawals(&budget, t0, 100);
                    granted.fetch_add(n, Ordering::Relaxed);
                });
            }
        });
        assert_eq!(granted.load(Ordering::Relaxed), 200);
    }

    #[test]
    fn retry_budget_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<RetryBudget>();
    }
}
