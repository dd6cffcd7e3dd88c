//! A circuit breaker in front of Redis: a dead Redis costs one timeout per
//! probe interval, not one per request.
//!
//! Closed (calls pass) → Open after `failure_threshold` consecutive failures
//! (calls fail at once) → HalfOpen once `probe_interval` has passed (one call,
//! the probe, goes through) → Closed when it succeeds, Open again when not.
//! A probe that never reports (its request was dropped) is replaced after
//! `probe_interval` more.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::metrics::StoreMetrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    pub failure_threshold: u32,
    pub probe_interval: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            probe_interval: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl BreakerState {
    pub fn label(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    fn from_u8(value: u8) -> BreakerState {
        match value {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }
}

#[derive(Debug)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_deadline: Instant },
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
    /// Holds a copy of the state for readers that must not take the lock.
    metrics: Arc<StoreMetrics>,
}

impl Breaker {
    pub fn new(config: BreakerConfig, metrics: Arc<StoreMetrics>) -> Breaker {
        metrics
            .breaker_state
            .store(BreakerState::Closed as u8, Ordering::Relaxed);
        Breaker {
            config,
            inner: Mutex::new(Inner::Closed { failures: 0 }),
            metrics,
        }
    }

    pub fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.metrics.breaker_state.load(Ordering::Relaxed))
    }

    /// Whether a call may go to Redis now.
    pub fn permit(&self) -> bool {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        match *inner {
            Inner::Closed { .. } => true,
            Inner::Open { until }
            | Inner::HalfOpen {
                probe_deadline: until,
            } if now >= until => {
                let was_open = matches!(*inner, Inner::Open { .. });
                *inner = Inner::HalfOpen {
                    probe_deadline: now + self.config.probe_interval,
                };
                self.set(BreakerState::HalfOpen);
                if was_open {
                    tracing::debug!(store = "redis", "circuit half-open: probing Redis");
                }
                true
            }
            Inner::Open { .. } | Inner::HalfOpen { .. } => false,
        }
    }

    pub fn record_success(&self) {
        let mut inner = self.inner.lock();
        if !matches!(*inner, Inner::Closed { .. }) {
            tracing::info!(store = "redis", "circuit closed: Redis answers again");
        }
        *inner = Inner::Closed { failures: 0 };
        self.set(BreakerState::Closed);
    }

    pub fn record_failure(&self) {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        match *inner {
            Inner::Closed { failures } if failures + 1 < self.config.failure_threshold => {
                *inner = Inner::Closed {
                    failures: failures + 1,
                };
            }
            Inner::Closed { .. } => {
                tracing::warn!(
                    store = "redis",
                    failures = self.config.failure_threshold,
                    retry_in = ?self.config.probe_interval,
                    "circuit open: Redis calls fail; storage.on_error applies until a probe succeeds"
                );
                self.open(&mut inner, now);
            }
            Inner::HalfOpen { .. } => {
                tracing::debug!(store = "redis", "probe failed; circuit open again");
                self.open(&mut inner, now);
            }
            // A late failure of a call started before the circuit opened.
            Inner::Open { .. } => {}
        }
    }

    fn open(&self, inner: &mut Inner, now: Instant) {
        *inner = Inner::Open {
            until: now + self.config.probe_interval,
        };
        self.set(BreakerState::Open);
    }

    fn set(&self, state: BreakerState) {
        self.metrics
            .breaker_state
            .store(state as u8, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(
            BreakerConfig {
                failure_threshold: 3,
                probe_interval: Duration::from_millis(500),
            },
            Arc::default(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_only() {
        let b = breaker();
        b.record_failure();
        b.record_failure();
        b.record_success();
        b.record_failure();
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.permit());
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.permit(), "open: calls fail at once");
    }

    #[tokio::test(start_paused = true)]
    async fn one_probe_per_interval_then_closes_on_success() {
        let b = breaker();
        for _ in 0..3 {
            b.record_failure();
        }
        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(!b.permit());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(b.permit(), "the probe goes through");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.permit(), "only one probe at a time");
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.permit());
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(b.permit());
        b.record_success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.permit() && b.permit());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_probe_is_replaced() {
        let b = breaker();
        for _ in 0..3 {
            b.record_failure();
        }
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(b.permit());
        // The probe's request was dropped and never reports.
        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(!b.permit());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(b.permit());
    }

    #[tokio::test(start_paused = true)]
    async fn late_failures_do_not_extend_an_open_circuit() {
        let b = breaker();
        for _ in 0..3 {
            b.record_failure();
        }
        tokio::time::advance(Duration::from_millis(400)).await;
        b.record_failure();
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(b.permit());
    }
}
