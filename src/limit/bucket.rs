//! token_bucket and leaky_bucket: one bucket whose level drains at `limit / window`
//! per second. A request of cost `c` fits while `level + c <= capacity`.
//!
//! Seen from the client the two are mirror images: a token bucket holding `t`
//! tokens is a leaky bucket filled to `capacity - t`. token_bucket's capacity
//! is `burst`; leaky_bucket's is `limit`.
//!
//! Rather than the level we keep the instant the bucket will be empty (as
//! GCRA does): `level = (empty_at - now) * limit / window`. Decisions compare
//! `(empty_at - now) * limit` with multiples of `window` in integers, so they
//! are exact; only the stored instant is rounded, up, to whole nanoseconds
//! (conservative by at most a nanosecond per request). The state means the
//! same thing whatever the limit, so a reload that changes a rule's limit
//! keeps a sensible bucket, and an all-zero state is an empty bucket (a fresh
//! key).
//!
//! State: `[empty_at in Unix nanoseconds, 0]`.

use super::{CompactState, Limit, Nanos, Verdict};

/// Nanoseconds, rounded up, that `units` (nanoseconds × limit) stand for.
fn to_nanos(units: u128, limit: &Limit) -> Nanos {
    units.div_ceil(limit.limit as u128).min(u64::MAX as u128) as Nanos
}

pub(super) fn check(limit: &Limit, state: &mut CompactState, now: Nanos, cost: u64) -> Verdict {
    let window = limit.window as u128;
    // A clock that stepped back drains nothing.
    let empty_at = state[0].max(now);
    state[0] = empty_at;

    // The level, in units of nanoseconds × limit: one request is `window` units.
    let level = (empty_at - now) as u128 * limit.limit as u128;
    let capacity = limit.capacity() as u128 * window;
    let remaining = |level: u128| (capacity.saturating_sub(level) / window) as u64;
    if cost > limit.capacity() {
        return Verdict::deny(
            limit,
            remaining(level),
            to_nanos(level, limit),
            to_nanos(capacity, limit).max(limit.window),
        );
    }
    let after = level + cost as u128 * window;
    if after <= capacity {
        Verdict::allow(limit, remaining(after), to_nanos(after, limit))
    } else {
        Verdict::deny(
            limit,
            remaining(level),
            to_nanos(level, limit),
            to_nanos(after - capacity, limit),
        )
    }
}

/// Admits a request of `cost`: the bucket stays non-empty `cost` drain-times
/// longer, rounded up to the nanosecond.
pub(super) fn consume(limit: &Limit, state: &mut CompactState, cost: u64) {
    let drain = (cost as u128 * limit.window as u128).div_ceil(limit.limit as u128);
    state[0] = state[0].saturating_add(drain.min(u64::MAX as u128) as u64);
}

#[cfg(test)]
mod tests {
    use super::super::{Limit, NANOS_PER_SEC, StrategyKind};

    const T0: u64 = 1_700_000_000 * NANOS_PER_SEC;

    fn token(limit: u64, window_s: u64, burst: u64) -> Limit {
        Limit::new(
            StrategyKind::TokenBucket,
            limit,
            window_s * NANOS_PER_SEC,
            Some(burst),
        )
    }

    #[test]
    fn token_bucket_spends_its_burst_then_refills_at_the_rate() {
        // 10 per 10 s = one token a second, bucket of 3.
        let limit = token(10, 10, 3);
        let mut state = [0; 2];
        for expected_remaining in [2, 1, 0] {
            let v = limit.step_compact(&mut state, T0, 1);
            assert!(v.allowed);
            assert_eq!(v.remaining, expected_remaining);
        }
        let denied = limit.step_compact(&mut state, T0, 1);
        assert!(!denied.allowed);
        assert_eq!(denied.retry_after, Some(NANOS_PER_SEC));
        assert_eq!(denied.reset_after, 3 * NANOS_PER_SEC);
        // Just before the retry-after: still denied; at it: allowed.
        assert!(
            !limit
                .step_compact(&mut state, T0 + NANOS_PER_SEC - 1, 1)
                .allowed
        );
        assert!(
            limit
                .step_compact(&mut state, T0 + NANOS_PER_SEC, 1)
                .allowed
        );
        // A long pause refills to the burst, never beyond.
        let later = T0 + 3600 * NANOS_PER_SEC;
        let v = limit.step_compact(&mut state, later, 1);
        assert_eq!(v.remaining, 2);
    }

    #[test]
    fn token_bucket_cost_above_one_takes_several_tokens() {
        let limit = token(60, 60, 10);
        let mut state = [0; 2];
        assert_eq!(limit.step_compact(&mut state, T0, 7).remaining, 3);
        let denied = limit.step_compact(&mut state, T0, 4);
        assert!(!denied.allowed);
        assert_eq!(denied.remaining, 3);
        assert_eq!(denied.retry_after, Some(NANOS_PER_SEC));
        assert!(
            limit
                .step_compact(&mut state, T0 + NANOS_PER_SEC, 4)
                .allowed
        );
    }

    #[test]
    fn a_cost_above_capacity_is_never_allowed() {
        let limit = token(5, 1, 5);
        let mut state = [0; 2];
        let v = limit.step_compact(&mut state, T0, 6);
        assert!(!v.allowed);
        assert!(v.retry_after.unwrap() >= NANOS_PER_SEC);
        assert_eq!(v.remaining, 5, "a refused request consumes nothing");
    }

    #[test]
    fn leaky_bucket_drains_continuously() {
        // 4 per 2 s: drains 2 a second, capacity 4.
        let limit = Limit::new(StrategyKind::LeakyBucket, 4, 2 * NANOS_PER_SEC, Some(99));
        assert_eq!(limit.burst, 4, "burst is a token_bucket setting");
        let mut state = [0; 2];
        for _ in 0..4 {
            assert!(limit.step_compact(&mut state, T0, 1).allowed);
        }
        let denied = limit.step_compact(&mut state, T0, 1);
        assert_eq!(denied.retry_after, Some(NANOS_PER_SEC / 2));
        assert_eq!(denied.reset_after, 2 * NANOS_PER_SEC);
        // Half a second drains exactly one request.
        let v = limit.step_compact(&mut state, T0 + NANOS_PER_SEC / 2, 1);
        assert!(v.allowed);
        assert_eq!(v.remaining, 0);
        // A full second later, two more fit.
        let t = T0 + 3 * NANOS_PER_SEC / 2;
        assert!(limit.step_compact(&mut state, t, 2).allowed);
        assert!(!limit.step_compact(&mut state, t, 1).allowed);
    }

    #[test]
    fn a_clock_stepping_back_frees_nothing() {
        let limit = token(2, 1, 2);
        let mut state = [0; 2];
        assert!(limit.step_compact(&mut state, T0, 2).allowed);
        assert!(
            !limit
                .step_compact(&mut state, T0 - 10 * NANOS_PER_SEC, 1)
                .allowed
        );
        assert!(!limit.step_compact(&mut state, T0, 1).allowed);
    }
}
