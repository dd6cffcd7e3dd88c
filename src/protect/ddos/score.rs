//! The suspicion score: one number in [0, 1] from an identity's signals.
//!
//! ```text
//! score = 1 - (1 - min(rate, 1)) * Π (1 - weight_i * min(x_i, 1))
//! ```
//!
//! `rate` is the requests in the window divided by `threshold`, so
//! `threshold` requests per `window` is a score of 1 whatever else is seen.
//! Every other signal `x_i` is a ratio to its own configured level (or a
//! share), capped at 1, with the weights of [`WEIGHTS`]. The burst counts in
//! full only at twice `burst_threshold`: a client pacing itself right at the
//! threshold is busy, not yet attacking. Each factor shrinks
//! as its signal grows, so the score rises monotonically with every signal
//! and never falls when one of them rises (the old scorer dipped just above
//! its threshold). Shares (errors, rate-limit hits) are taken over
//! `requests + SHARE_PRIOR`, so a client's first few requests cannot make a
//! share of 100% on their own.

/// Requests added to the denominator of the shares.
pub const SHARE_PRIOR: f64 = 20.0;

/// Guard events (slow headers, oversized requests, refused connections)
/// that count as a full signal.
pub const GUARD_EVENTS_FULL: f64 = 5.0;

/// The weight of each signal other than the rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    pub burst: f64,
    pub endpoints: f64,
    pub fast_requests: f64,
    pub errors: f64,
    pub rate_limited: f64,
    pub guard_events: f64,
}

pub const WEIGHTS: Weights = Weights {
    burst: 0.5,
    endpoints: 0.25,
    fast_requests: 0.2,
    errors: 0.2,
    rate_limited: 0.4,
    guard_events: 0.5,
};

/// What was seen of one identity, as ratios to the configured levels.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Signals {
    /// Requests in the window ÷ `threshold`.
    pub rate: f64,
    /// Requests in the burst window ÷ `burst_threshold`.
    pub burst: f64,
    /// Distinct endpoints in the window ÷ `max_unique_endpoints`.
    pub endpoints: f64,
    /// Share of recent requests that came sooner than `min_interval_threshold`
    /// after the previous one (0 to 1).
    pub fast_requests: f64,
    /// Upstream 4xx/5xx answers in the window.
    pub errors: f64,
    /// Requests a rate limit refused in the window.
    pub rate_limited: f64,
    /// Slow-header, oversized-request and refused-connection events in the window.
    pub guard_events: f64,
    /// Requests in the window (the shares' denominator).
    pub requests: f64,
}

impl Signals {
    pub fn score(&self) -> f64 {
        let w = WEIGHTS;
        let share = |n: f64| n / (self.requests + SHARE_PRIOR);
        let keep = |weight: f64, x: f64| 1.0 - weight * unit(x);
        let innocence = (1.0 - unit(self.rate))
            * keep(w.burst, self.burst / 2.0)
            * keep(w.endpoints, self.endpoints)
            * keep(w.fast_requests, self.fast_requests)
            * keep(w.errors, share(self.errors))
            * keep(w.rate_limited, share(self.rate_limited))
            * keep(w.guard_events, self.guard_events / GUARD_EVENTS_FULL);
        unit(1.0 - innocence)
    }
}

/// `x` clamped to [0, 1]; NaN counts as 0.
fn unit(x: f64) -> f64 {
    if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nothing_seen_is_zero_and_the_threshold_rate_is_one() {
        assert_eq!(Signals::default().score(), 0.0);
        let at_threshold = Signals {
            rate: 1.0,
            requests: 10_000.0,
            ..Signals::default()
        };
        assert_eq!(at_threshold.score(), 1.0);
        let beyond = Signals {
            rate: 7.0,
            ..Signals::default()
        };
        assert_eq!(beyond.score(), 1.0);
    }

    #[test]
    fn a_few_requests_cannot_make_a_full_share() {
        // Two requests, both refused: the share is 2/22, not 100%.
        let signals = Signals {
            rate_limited: 2.0,
            requests: 2.0,
            ..Signals::default()
        };
        assert!(signals.score() < 0.05, "{}", signals.score());
    }

    fn signals() -> impl Strategy<Value = Signals> {
        (
            0.0..2.0f64,
            0.0..3.0f64,
            0.0..3.0f64,
            0.0..1.0f64,
            0.0..500.0f64,
            0.0..500.0f64,
            0.0..20.0f64,
            0.0..1000.0f64,
        )
            .prop_map(
                |(rate, burst, endpoints, fast, errors, limited, guard, requests)| Signals {
                    rate,
                    burst,
                    endpoints,
                    fast_requests: fast,
                    errors: errors.min(requests),
                    rate_limited: limited.min(requests),
                    guard_events: guard,
                    requests,
                },
            )
    }

    proptest! {
        #[test]
        fn the_score_stays_in_the_unit_interval(s in signals()) {
            let score = s.score();
            prop_assert!((0.0..=1.0).contains(&score));
        }

        /// Raising any one signal never lowers the score.
        #[test]
        fn the_score_is_monotonic_in_every_signal(s in signals(), by in 0.0..5.0f64, which in 0usize..7) {
            let mut more = s;
            match which {
                0 => more.rate += by,
                1 => more.burst += by,
                2 => more.endpoints += by,
                3 => more.fast_requests = (more.fast_requests + by).min(1.0),
                4 => more.errors += by,
                5 => more.rate_limited += by,
                _ => more.guard_events += by,
            }
            prop_assert!(more.score() >= s.score(), "{more:?} scored below {s:?}");
        }
    }
}
