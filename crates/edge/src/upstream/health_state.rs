//! Decides when active health-check results flip an origin between healthy and unhealthy,
//! using rise/fall thresholds so a single odd probe never flaps it.

use std::sync::atomic::{AtomicU64, Ordering};

/// Set while healthy; the low 32 bits count consecutive probes that disagree with the state.
const HEALTHY: u64 = 1 << 32;
const STREAK_MASK: u64 = u32::MAX as u64;

/// Active health of one origin.
///
/// State and streak share one word so that a probe result updates both in a single
/// compare_exchange: a flip is reported exactly once even if probes race.
#[derive(Debug)]
pub struct HealthState {
    word: AtomicU64,
}

impl HealthState {
    pub fn new(initially_healthy: bool) -> Self {
        Self {
            word: AtomicU64::new(if initially_healthy { HEALTHY } else { 0 }),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.word.load(Ordering::Relaxed) & HEALTHY != 0
    }

    /// Records one probe result; returns Some(new_state) when it flips the state.
    /// `fall` consecutive failures make a healthy origin unhealthy; `rise` consecutive
    /// successes make an unhealthy one healthy. A threshold of 0 acts as 1.
    pub fn record(&self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        let mut word = self.word.load(Ordering::Relaxed);
        loop {
            let healthy = word & HEALTHY != 0;
            let (next, flipped) = if ok == healthy {
                // A result agreeing with the state breaks any streak towards flipping.
                (word & HEALTHY, None)
            } else {
                let streak = ((word & STREAK_MASK) as u32).saturating_add(1);
                let threshold = if healthy { fall } else { rise }.max(1);
                if streak >= threshold {
                    (if ok { HEALTHY } else { 0 }, Some(ok))
                } else {
                    ((word & HEALTHY) | u64::from(streak), None)
                }
            };
            if next == word {
                return flipped;
            }
            match self
                .word
                .compare_exchange_weak(word, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return flipped,
                Err(actual) => word = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn starts_in_the_given_state() {
        assert!(HealthState::new(true).is_healthy());
        assert!(!HealthState::new(false).is_healthy());
    }

    #[test]
    fn fall_consecutive_failures_mark_unhealthy() {
        let state = HealthState::new(true);
        assert_eq!(state.record(false, 2, 3), None);
        assert_eq!(state.record(false, 2, 3), None);
        assert!(state.is_healthy());
        assert_eq!(state.record(false, 2, 3), Some(false));
        assert!(!state.is_healthy());
        // Further failures don't report again.
        assert_eq!(state.record(false, 2, 3), None);
    }

    #[test]
    fn rise_consecutive_successes_mark_healthy() {
        let state = HealthState::new(false);
        assert_eq!(state.record(true, 2, 3), None);
        assert!(!state.is_healthy());
        assert_eq!(state.record(true, 2, 3), Some(true));
        assert!(state.is_healthy());
        assert_eq!(state.record(true, 2, 3), None);
    }

    #[test]
    fn an_agreeing_result_restarts_the_streak() {
        let state = HealthState::new(true);
        assert_eq!(state.record(false, 2, 3), None);
        assert_eq!(state.record(false, 2, 3), None);
        assert_eq!(state.record(true, 2, 3), None);
        assert_eq!(state.record(false, 2, 3), None);
        assert_eq!(state.record(false, 2, 3), None);
        assert!(state.is_healthy());
        assert_eq!(state.record(false, 2, 3), Some(false));
    }

    #[test]
    fn alternating_results_never_flip() {
        for initially in [true, false] {
            let state = HealthState::new(initially);
            for i in 0..1000 {
                assert_eq!(state.record(i % 2 == 0, 2, 2), None);
            }
            assert_eq!(state.is_healthy(), initially);
        }
    }

    #[test]
    fn round_trip_flips_each_way_once() {
        let state = HealthState::new(true);
        let flips: Vec<_> = [false, false, true, true, true, false]
            .into_iter()
            .filter_map(|ok| state.record(ok, 3, 2))
            .collect();
        assert_eq!(flips, [false, true]);
    }

    #[test]
    fn zero_threshold_acts_as_one() {
        let state = HealthState::new(true);
        assert_eq!(state.record(false, 0, 0), Some(false));
        assert_eq!(state.record(true, 0, 0), Some(true));
        assert_eq!(state.record(false, 1, 1), Some(false));
    }

    #[test]
    fn concurrent_probes_report_a_flip_once() {
        let state = HealthState::new(true);
        let flips = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100 {
                        if state.record(false, 5, 50).is_some() {
                            flips.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(flips.load(Ordering::Relaxed), 1);
        assert!(!state.is_healthy());
    }
}
