//! Rate-limit strategies: each is a pure step over one key's small state, with `now` passed in.
//! The store (src/store/) decides where that state lives and makes each step atomic.

mod bucket;
mod fixed_window;
#[cfg(test)]
mod proptests;
mod sliding_counter;
mod sliding_log;

pub use sliding_log::SlidingLog;

use std::fmt;

/// Nanoseconds since the Unix epoch: the one time unit of the data path.
pub type Nanos = u64;

pub const NANOS_PER_SEC: u64 = 1_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StrategyKind {
    SlidingWindow,
    SlidingWindowCounter,
    TokenBucket,
    LeakyBucket,
    FixedWindow,
}

impl StrategyKind {
    pub const ALL: [StrategyKind; 5] = [
        StrategyKind::SlidingWindow,
        StrategyKind::SlidingWindowCounter,
        StrategyKind::TokenBucket,
        StrategyKind::LeakyBucket,
        StrategyKind::FixedWindow,
    ];

    /// Parses a strategy name; `sliding_counter` is the Python package's name
    /// for `sliding_window_counter`.
    pub fn parse(name: &str) -> Option<StrategyKind> {
        Some(match name {
            "sliding_window" => StrategyKind::SlidingWindow,
            "sliding_window_counter" | "sliding_counter" => StrategyKind::SlidingWindowCounter,
            "token_bucket" => StrategyKind::TokenBucket,
            "leaky_bucket" => StrategyKind::LeakyBucket,
            "fixed_window" => StrategyKind::FixedWindow,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::SlidingWindow => "sliding_window",
            StrategyKind::SlidingWindowCounter => "sliding_window_counter",
            StrategyKind::TokenBucket => "token_bucket",
            StrategyKind::LeakyBucket => "leaky_bucket",
            StrategyKind::FixedWindow => "fixed_window",
        }
    }

    /// Whether the per-key state is a fixed two words (everything but the exact log).
    pub fn is_compact(self) -> bool {
        !matches!(self, StrategyKind::SlidingWindow)
    }
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rule's arithmetic: how many requests per window, by which strategy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub strategy: StrategyKind,
    /// Requests allowed per window (for token_bucket: the refill per window).
    pub limit: u64,
    /// Window length in nanoseconds, never zero.
    pub window: Nanos,
    /// token_bucket capacity; equals `limit` for the other strategies.
    pub burst: u64,
}

impl Limit {
    /// This limit with its count and burst multiplied by `factor` (rounded,
    /// at least 1): how under-attack mode tightens every limit. `None`
    /// (the mode is off) leaves it as it is.
    pub fn scaled(&self, factor: Option<f64>) -> Limit {
        let Some(factor) = factor else {
            return *self;
        };
        let scale = |n: u64| ((n as f64 * factor).round() as u64).max(1);
        Limit {
            limit: scale(self.limit),
            burst: scale(self.burst),
            ..*self
        }
    }
}

/// The answer of one strategy step. All durations are nanoseconds from `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub limit: u64,
    /// Quota left after this request (when allowed) or now (when denied).
    pub remaining: u64,
    /// Time until the quota is whole again (zero when it already is).
    pub reset_after: Nanos,
    /// When denied: the wait after which this same request would be allowed.
    /// Never zero. `None` when allowed.
    pub retry_after: Option<Nanos>,
}

/// The fixed-size state of every strategy but the exact log. All-zero is a
/// fresh key, so a missing entry and a new one are the same thing.
pub type CompactState = [u64; 2];

impl Limit {
    pub fn new(strategy: StrategyKind, limit: u64, window: Nanos, burst: Option<u64>) -> Limit {
        let burst = match strategy {
            StrategyKind::TokenBucket => burst.unwrap_or(limit),
            _ => limit,
        };
        Limit {
            strategy,
            limit,
            window: window.max(1),
            burst,
        }
    }

    /// The most requests that can ever pass at once: a larger cost never does.
    pub fn capacity(&self) -> u64 {
        self.burst
    }

    /// Brings `state` forward to `now` (time passing only ever frees quota) and
    /// decides a request of `cost`. Consumes nothing: call [`Limit::consume_compact`]
    /// to admit it. The verdict of an allowed request already counts its cost.
    pub fn check_compact(&self, state: &mut CompactState, now: Nanos, cost: u64) -> Verdict {
        match self.strategy {
            StrategyKind::SlidingWindowCounter => sliding_counter::check(self, state, now, cost),
            StrategyKind::TokenBucket | StrategyKind::LeakyBucket => {
                bucket::check(self, state, now, cost)
            }
            StrategyKind::FixedWindow => fixed_window::check(self, state, now, cost),
            StrategyKind::SlidingWindow => {
                unreachable_log_strategy();
                Verdict::denied_forever(self)
            }
        }
    }

    /// Admits a request of `cost` that [`Limit::check_compact`] allowed at the same `now`.
    pub fn consume_compact(&self, state: &mut CompactState, now: Nanos, cost: u64) {
        match self.strategy {
            StrategyKind::SlidingWindowCounter => sliding_counter::consume(state, cost),
            StrategyKind::TokenBucket | StrategyKind::LeakyBucket => {
                bucket::consume(self, state, cost)
            }
            StrategyKind::FixedWindow => fixed_window::consume(state, cost),
            StrategyKind::SlidingWindow => {
                let _ = now;
                unreachable_log_strategy();
            }
        }
    }

    /// [`Limit::check_compact`] and, when allowed, [`Limit::consume_compact`].
    pub fn step_compact(&self, state: &mut CompactState, now: Nanos, cost: u64) -> Verdict {
        let verdict = self.check_compact(state, now, cost);
        if verdict.allowed {
            self.consume_compact(state, now, cost);
        }
        verdict
    }

    /// The exact sliding log's check (no consumption).
    pub fn check_log(&self, log: &mut SlidingLog, now: Nanos, cost: u64) -> Verdict {
        log.check(self, now, cost)
    }

    pub fn consume_log(&self, log: &mut SlidingLog, now: Nanos, cost: u64) {
        log.consume(now, cost)
    }

    pub fn step_log(&self, log: &mut SlidingLog, now: Nanos, cost: u64) -> Verdict {
        let verdict = log.check(self, now, cost);
        if verdict.allowed {
            log.consume(now, cost);
        }
        verdict
    }
}

// A compact call for the log strategy is a wiring mistake in the store, not
// input; it is reported rather than allowed to panic the data path.
fn unreachable_log_strategy() {
    debug_assert!(false, "sliding_window state is a log, not compact");
    tracing::error!("sliding_window checked as a compact state; request denied");
}

impl Verdict {
    pub(crate) fn allow(limit: &Limit, remaining: u64, reset_after: Nanos) -> Verdict {
        Verdict {
            allowed: true,
            limit: limit.limit,
            remaining,
            reset_after,
            retry_after: None,
        }
    }

    pub(crate) fn deny(
        limit: &Limit,
        remaining: u64,
        reset_after: Nanos,
        retry_after: Nanos,
    ) -> Verdict {
        Verdict {
            allowed: false,
            limit: limit.limit,
            remaining,
            reset_after,
            retry_after: Some(retry_after.max(1)),
        }
    }

    /// A request whose cost exceeds the whole quota can never pass; its
    /// retry-after is the time until the quota is whole (at least one window).
    pub(crate) fn denied_forever(limit: &Limit) -> Verdict {
        Verdict::deny(limit, 0, limit.window, limit.window)
    }
}
