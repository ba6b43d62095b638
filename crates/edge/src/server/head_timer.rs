//! hyper's HTTP/1.1 header-read timeout (`timeouts.header`, slowloris protection), on the
//! connection's own housekeeping tick instead of tokio's timer wheel.
//!
//! hyper starts a head timer each time it waits for a request head and drops it once the head
//! is read: on a keep-alive connection that is one timer per request, and a tokio timer that is
//! created, registered in the wheel, deregistered and freed costs about 750 instructions, more
//! than a tenth of a cache hit's own work. hyper still decides when a head timer runs; this
//! timer only records its deadline, and the connection task's tick (which runs anyway for the
//! idle timeout) declares it expired. The price is precision: a head that never completes is
//! cut off between one timeout and one timeout plus a tick (a quarter of the timeout) after
//! hyper started waiting for it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The connection's head timers: hyper's side (`Timer`) and the tick's side (`check`).
#[derive(Clone)]
pub struct HeadTimer(Arc<State>);

struct State {
    /// Deadlines are kept as nanoseconds since this instant, to fit in an atomic.
    origin: Instant,
    /// Generation of the running head timer, 0 when none runs. hyper replaces a timer by
    /// creating the new one before dropping the old one: the generation keeps the old one's
    /// drop from disarming the new one.
    running: AtomicU64,
    deadline_ns: AtomicU64,
    /// The generation the tick found past its deadline.
    expired: AtomicU64,
    next_generation: AtomicU64,
}

impl Default for HeadTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl HeadTimer {
    pub fn new() -> Self {
        Self(Arc::new(State {
            origin: Instant::now(),
            running: AtomicU64::new(0),
            deadline_ns: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            next_generation: AtomicU64::new(1),
        }))
    }

    /// Called by the connection's tick: expires the running head timer if its deadline has
    /// passed. True when it did (the connection must be polled, and then ends with hyper's
    /// header-timeout error).
    pub fn check(&self, now: Instant) -> bool {
        let state = &*self.0;
        let running = state.running.load(Ordering::Acquire);
        if running == 0 || state.expired.load(Ordering::Relaxed) == running {
            return false;
        }
        if nanos_since(state.origin, now) < state.deadline_ns.load(Ordering::Relaxed) {
            return false;
        }
        state.expired.store(running, Ordering::Release);
        true
    }
}

fn nanos_since(origin: Instant, t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(origin).as_nanos()).unwrap_or(u64::MAX)
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let state = &*self.0;
        let generation = state.next_generation.fetch_add(1, Ordering::Relaxed);
        state
            .deadline_ns
            .store(nanos_since(state.origin, deadline), Ordering::Relaxed);
        state.running.store(generation, Ordering::Release);
        Box::pin(HeadSleep {
            timer: self.clone(),
            generation,
        })
    }
}

/// One head timer. It wakes no one when it expires: the tick that expires it runs in the
/// connection's own task, which polls the connection (and so this timer) right after.
struct HeadSleep {
    timer: HeadTimer,
    generation: u64,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        if self.timer.0.expired.load(Ordering::Acquire) == self.generation {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl hyper::rt::Sleep for HeadSleep {}

impl Drop for HeadSleep {
    fn drop(&mut self) {
        let _ =
            self.timer
                .0
                .running
                .compare_exchange(self.generation, 0, Ordering::AcqRel, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use hyper::rt::Timer;

    use super::*;

    fn poll(sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>) -> Poll<()> {
        sleep.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_head_timer_expires_at_the_first_tick_past_its_deadline() {
        let timer = HeadTimer::new();
        let start = Instant::now();
        let mut sleep = timer.sleep_until(start + Duration::from_secs(10));
        assert_eq!(poll(&mut sleep), Poll::Pending);
        assert!(!timer.check(start + Duration::from_secs(9)));
        assert_eq!(poll(&mut sleep), Poll::Pending);
        assert!(timer.check(start + Duration::from_secs(11)));
        assert_eq!(poll(&mut sleep), Poll::Ready(()));
        assert!(!timer.check(start + Duration::from_secs(12)), "expired once");
    }

    #[test]
    fn a_finished_head_disarms_its_timer_and_a_replaced_one_keeps_the_new_deadline() {
        let timer = HeadTimer::new();
        let start = Instant::now();
        let sleep = timer.sleep_until(start + Duration::from_secs(1));
        drop(sleep);
        assert!(
            !timer.check(start + Duration::from_secs(5)),
            "dropped: nothing runs"
        );

        // hyper's `reset`: the new timer is made before the old one is dropped.
        let mut sleep = timer.sleep_until(start + Duration::from_secs(1));
        let mut replaced = timer.sleep_until(start + Duration::from_secs(20));
        std::mem::swap(&mut sleep, &mut replaced);
        drop(replaced);
        assert!(!timer.check(start + Duration::from_secs(5)));
        assert_eq!(poll(&mut sleep), Poll::Pending);
        assert!(timer.check(start + Duration::from_secs(21)));
        assert_eq!(poll(&mut sleep), Poll::Ready(()));
    }
}
