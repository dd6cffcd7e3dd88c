//! Where the data path gets the time. Tests inject a [`ManualClock`]; nothing sleeps to make time pass.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::limit::Nanos;

pub trait Clock: Send + Sync + 'static {
    /// Nanoseconds since the Unix epoch.
    fn now(&self) -> Nanos;
}

/// The wall clock. Windows align to the Unix epoch, so this is wall time, not a monotonic clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Nanos {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos().min(u64::MAX as u128) as u64)
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicU64,
}

impl ManualClock {
    pub fn new(start: Nanos) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            now: AtomicU64::new(start),
        })
    }

    /// A clock at 2023-11-14T22:13:20Z, a round and realistic start for tests.
    pub fn at_test_epoch() -> Arc<ManualClock> {
        ManualClock::new(1_700_000_000 * crate::limit::NANOS_PER_SEC)
    }

    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
    }

    pub fn set(&self, to: Nanos) {
        self.now.store(to, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Nanos {
        self.now.load(Ordering::SeqCst)
    }
}
