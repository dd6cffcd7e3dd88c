//! sliding_window_counter: the previous fixed window's count, weighted by how
//! much of it still overlaps the sliding window, plus the current count. O(1)
//! state; exact when traffic is even, approximate when it is bursty.
//!
//! State: `[window_index + 1 (0 = fresh), previous << 32 | current]`. Counts
//! fit in 32 bits because config validation caps `limit` below 2^32.

use super::{CompactState, Limit, Nanos, Verdict};

const LOW: u64 = 0xffff_ffff;

pub(super) fn check(limit: &Limit, state: &mut CompactState, now: Nanos, cost: u64) -> Verdict {
    let window = limit.window;
    let index = now / window;
    let elapsed = now % window;
    let (mut previous, mut current) = (state[1] >> 32, state[1] & LOW);
    let stored = state[0];
    if stored != index + 1 {
        // One window later the current count becomes the previous one;
        // further than that, both have slid out.
        (previous, current) = if stored != 0 && stored == index {
            (current, 0)
        } else {
            (0, 0)
        };
        state[0] = index + 1;
        state[1] = previous << 32 | current;
    }

    let until_next_window = window - elapsed;
    let reset_after = |current: u64, previous: u64| {
        if current > 0 {
            until_next_window + window
        } else if previous > 0 {
            until_next_window
        } else {
            0
        }
    };
    if cost > limit.limit {
        return Verdict::denied_forever(limit);
    }

    // The estimate is `previous * (window - elapsed) / window + current`.
    // Comparisons are made multiplied by `window`, in integers, so a request
    // exactly at its retry-after is never refused by rounding.
    let w = window as u128;
    let weighted = previous as u128 * (window - elapsed) as u128;
    let weighted_whole = weighted.div_ceil(w) as u64;
    let max = limit.limit;
    let fits =
        |extra: u64| current + extra <= max && weighted <= (max - current - extra) as u128 * w;
    if fits(cost) {
        let left = max.saturating_sub(current + cost + weighted_whole);
        return Verdict::allow(limit, left, reset_after(current + cost, previous));
    }

    let left = max.saturating_sub(current + weighted_whole);
    let retry_after = if current + cost <= max {
        // Later in this window, once the previous window's weight has shrunk:
        // previous * (window - t) <= (max - current - cost) * window.
        let room = ((max - current - cost) as u128 * w / previous as u128) as u64;
        (window - room.min(window)).saturating_sub(elapsed)
    } else {
        // In the next window, where this window's count is the one that fades:
        // current * (window - t) <= (max - cost) * window.
        let room = ((max - cost) as u128 * w / current as u128) as u64;
        until_next_window + (window - room.min(window))
    };
    Verdict::deny(limit, left, reset_after(current, previous), retry_after)
}

pub(super) fn consume(state: &mut CompactState, cost: u64) {
    state[1] += cost;
}

#[cfg(test)]
mod tests {
    use super::super::{Limit, NANOS_PER_SEC, StrategyKind};

    #[test]
    fn the_previous_window_fades_with_its_overlap() {
        let limit = Limit::new(
            StrategyKind::SlidingWindowCounter,
            10,
            10 * NANOS_PER_SEC,
            None,
        );
        let mut state = [0; 2];
        let w0 = 1_000_000 * 10 * NANOS_PER_SEC;
        assert!(limit.step_compact(&mut state, w0, 10).allowed);
        assert!(
            !limit
                .step_compact(&mut state, w0 + 9 * NANOS_PER_SEC, 1)
                .allowed
        );
        // 2 s into the next window the old ten weigh 8: two fit, a third does not.
        let t = w0 + 12 * NANOS_PER_SEC;
        let v = limit.step_compact(&mut state, t, 2);
        assert!(v.allowed, "{v:?}");
        assert_eq!(v.remaining, 0);
        let denied = limit.step_compact(&mut state, t, 1);
        assert!(!denied.allowed);
        // Estimate 10 now; one more fits once the old weight drops by one: 1 s.
        assert_eq!(denied.retry_after, Some(NANOS_PER_SEC));
        assert!(limit.step_compact(&mut state, t + NANOS_PER_SEC, 1).allowed);
        // Two windows later everything has slid out.
        let v = limit.step_compact(&mut state, w0 + 30 * NANOS_PER_SEC, 1);
        assert_eq!(v.remaining, 9);
    }

    #[test]
    fn a_full_current_window_waits_into_the_next() {
        let limit = Limit::new(
            StrategyKind::SlidingWindowCounter,
            4,
            4 * NANOS_PER_SEC,
            None,
        );
        let mut state = [0; 2];
        let w0 = 4_000 * NANOS_PER_SEC;
        assert!(
            limit
                .step_compact(&mut state, w0 + 2 * NANOS_PER_SEC, 4)
                .allowed
        );
        let denied = limit.step_compact(&mut state, w0 + 2 * NANOS_PER_SEC, 1);
        // Next window starts in 2 s; the 4 weigh 3 after another 1 s.
        assert_eq!(denied.retry_after, Some(3 * NANOS_PER_SEC));
        assert_eq!(denied.reset_after, 6 * NANOS_PER_SEC);
        assert!(
            !limit
                .step_compact(&mut state, w0 + 5 * NANOS_PER_SEC - 1, 1)
                .allowed
        );
        assert!(
            limit
                .step_compact(&mut state, w0 + 5 * NANOS_PER_SEC, 1)
                .allowed
        );
    }
}
