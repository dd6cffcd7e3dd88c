//! hyper's `header_read_timeout`, kept by the connection's [`TimedIo`]
//! timer instead of a tokio timer of its own per request.
//!
//! hyper asks its `Timer` for a sleep each time it starts reading a request
//! head (right after the previous response, so the wait for the next request
//! counts too) and drops it once the head is parsed. A tokio sleep there
//! costs an allocation, a timer-wheel insert and a removal on every request.
//! [`HeadTimer`]'s sleep only writes its deadline into the connection's
//! [`HeadDeadline`] and clears it when dropped; [`TimedIo`], whose one timer
//! already wakes the connection for its idle deadline, cuts the connection
//! when a head deadline passes.
//!
//! [`TimedIo`]: super::TimedIo

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

/// The deadline of the request head being read on one connection, if any.
#[derive(Debug)]
pub struct HeadDeadline {
    origin: Instant,
    /// Nanoseconds after `origin`, plus one; 0 while no head is being read.
    deadline: AtomicU64,
}

impl HeadDeadline {
    pub fn new() -> Arc<HeadDeadline> {
        Arc::new(HeadDeadline {
            origin: Instant::now(),
            deadline: AtomicU64::new(0),
        })
    }

    /// When the head being read must be complete; `None` between heads.
    pub fn get(&self) -> Option<Instant> {
        match self.deadline.load(Ordering::Relaxed) {
            0 => None,
            n => Some(self.origin + Duration::from_nanos(n - 1)),
        }
    }

    fn set(&self, deadline: Instant) {
        let after_origin = deadline.saturating_duration_since(self.origin).as_nanos();
        let n = u64::try_from(after_origin).unwrap_or(u64::MAX - 1) + 1;
        self.deadline.store(n, Ordering::Relaxed);
    }

    fn clear(&self) {
        self.deadline.store(0, Ordering::Relaxed);
    }
}

/// The `hyper::rt::Timer` of one HTTP/1 connection; hyper uses it only for
/// `header_read_timeout`.
#[derive(Debug, Clone)]
pub struct HeadTimer {
    head: Arc<HeadDeadline>,
}

impl HeadTimer {
    pub fn new(head: Arc<HeadDeadline>) -> HeadTimer {
        HeadTimer { head }
    }

    fn sleep_to(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.head.set(deadline);
        Box::pin(HeadSleep {
            head: Arc::clone(&self.head),
        })
    }
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_to(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_to(Instant::from_std(deadline))
    }

    /// Moves the deadline; the default would make a new sleep and drop the
    /// old one, whose drop would clear the new deadline.
    fn reset(&self, _sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: std::time::Instant) {
        self.head.set(Instant::from_std(new_deadline));
    }

    /// tokio's clock, so that tests with paused time see one clock.
    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }
}

/// Never ready by itself: hyper polls it only after a read came back
/// pending, and that read armed [`TimedIo`](super::TimedIo)'s timer, which
/// cuts the connection (and counts the timeout) once the deadline passes.
/// Checking the clock here as well would cost a clock read per request and
/// race `TimedIo` to the same deadline.
struct HeadSleep {
    head: Arc<HeadDeadline>,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}

impl hyper::rt::Sleep for HeadSleep {}

impl Drop for HeadSleep {
    fn drop(&mut self) {
        self.head.clear();
    }
}

#[cfg(test)]
mod tests {
    use hyper::rt::Timer as _;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_sleep_publishes_its_deadline_until_dropped() {
        let head = HeadDeadline::new();
        let timer = HeadTimer::new(Arc::clone(&head));
        assert_eq!(head.get(), None);
        let start = Instant::now();
        let mut sleep = timer.sleep_until(timer.now() + Duration::from_secs(10));
        assert_eq!(head.get(), Some(start + Duration::from_secs(10)));
        timer.reset(&mut sleep, timer.now() + Duration::from_secs(20));
        assert_eq!(head.get(), Some(start + Duration::from_secs(20)));
        // Past its deadline it still waits: the connection's TimedIo cuts.
        tokio::time::advance(Duration::from_secs(30)).await;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        drop(sleep);
        assert_eq!(head.get(), None);
    }
}
