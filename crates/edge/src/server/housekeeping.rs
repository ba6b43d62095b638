//! A connection task's housekeeping (its idle tick and its stop signal) polled only when it
//! asked to be.
//!
//! `tokio::select!` over the connection, a timer and a cancellation future polls all three on
//! every wake-up of the task, and a busy keep-alive connection wakes a few times per request: a
//! timer poll and a cancellation poll (which takes the token's mutex) cost several hundred
//! instructions per request, more than some whole proxy phases. Polled with a waker of their
//! own, they run only after one of them fired; the connection itself keeps the task's waker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Wake, Waker};

use futures_util::task::AtomicWaker;

/// The waker housekeeping futures are polled with: it notes that one of them fired and wakes
/// the connection task.
pub struct Housekeeping {
    due: AtomicBool,
    task: AtomicWaker,
}

impl Housekeeping {
    /// A new tracker and the waker to poll housekeeping futures with. The first `take_due`
    /// returns true, so they are polled (and registered) once at the start.
    pub fn new() -> (Arc<Self>, Waker) {
        let this = Arc::new(Self {
            due: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(this.clone());
        (this, waker)
    }

    /// Whether a housekeeping future woke since the last call. When it did, the housekeeping
    /// futures must be polled now (with the housekeeping waker), and `cx`'s waker is the one a
    /// later firing wakes.
    pub fn take_due(&self, cx: &Context<'_>) -> bool {
        if !self.due.load(Ordering::Acquire) {
            return false;
        }
        // Registered before the futures are polled: one that fires in between finds the task's
        // waker, and `due` stays set, so the next poll looks again (at worst once for nothing).
        self.due.store(false, Ordering::Release);
        self.task.register(cx.waker());
        true
    }
}

impl Wake for Housekeeping {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.due.store(true, Ordering::Release);
        self.task.wake();
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::sync::atomic::AtomicUsize;
    use std::task::Poll;
    use std::time::Duration;

    use super::*;

    /// The task's waker, counting its wake-ups.
    struct Counting(AtomicUsize);
    impl Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn housekeeping_is_due_first_then_only_after_its_future_fires() {
        let task = Arc::new(Counting(AtomicUsize::new(0)));
        let task_waker = Waker::from(task.clone());
        let cx = Context::from_waker(&task_waker);
        let (hk, hk_waker) = Housekeeping::new();
        let mut hcx = Context::from_waker(&hk_waker);
        let mut timer = pin!(tokio::time::sleep(Duration::from_secs(1)));

        assert!(hk.take_due(&cx), "due on the first poll");
        assert_eq!(timer.as_mut().poll(&mut hcx), Poll::Pending);
        assert!(!hk.take_due(&cx), "nothing fired yet");

        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            task.0.load(Ordering::SeqCst),
            1,
            "the firing woke the connection task"
        );
        assert!(hk.take_due(&cx));
        assert_eq!(timer.as_mut().poll(&mut hcx), Poll::Ready(()));
        assert!(!hk.take_due(&cx));
    }
}
