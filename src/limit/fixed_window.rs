//! fixed_window: at most `limit` per window aligned to multiples of `window`
//! since the Unix epoch, so every instance and the Redis store agree on the
//! boundaries. Cheapest of all; allows up to 2×limit across a boundary.
//!
//! State: `[window_index + 1 (0 = fresh), count]`.

use super::{CompactState, Limit, Nanos, Verdict};

pub(super) fn check(limit: &Limit, state: &mut CompactState, now: Nanos, cost: u64) -> Verdict {
    let index = now / limit.window;
    if state[0] != index + 1 {
        state[0] = index + 1;
        state[1] = 0;
    }
    let count = state[1];
    let window_end = (index + 1).saturating_mul(limit.window);
    let until_next_window = window_end.saturating_sub(now).max(1);
    if cost > limit.limit {
        return Verdict::denied_forever(limit);
    }
    let after = count + cost;
    if after <= limit.limit {
        Verdict::allow(limit, limit.limit - after, until_next_window)
    } else {
        let reset_after = if count > 0 { until_next_window } else { 0 };
        Verdict::deny(
            limit,
            limit.limit.saturating_sub(count),
            reset_after,
            until_next_window,
        )
    }
}

pub(super) fn consume(state: &mut CompactState, cost: u64) {
    state[1] += cost;
}

#[cfg(test)]
mod tests {
    use super::super::{Limit, NANOS_PER_SEC, StrategyKind};

    #[test]
    fn windows_align_to_the_epoch() {
        let limit = Limit::new(StrategyKind::FixedWindow, 3, 60 * NANOS_PER_SEC, None);
        let mut state = [0; 2];
        // 10 s into the window starting at 1_700_000_040 s.
        let t = 1_700_000_050 * NANOS_PER_SEC;
        for remaining in [2, 1, 0] {
            let v = limit.step_compact(&mut state, t, 1);
            assert!(v.allowed);
            assert_eq!(v.remaining, remaining);
            assert_eq!(v.reset_after, 50 * NANOS_PER_SEC);
        }
        let denied = limit.step_compact(&mut state, t, 1);
        assert_eq!(denied.retry_after, Some(50 * NANOS_PER_SEC));
        // The last nanosecond of the window is still in it; the next is a new window.
        assert!(
            !limit
                .step_compact(&mut state, 1_700_000_100 * NANOS_PER_SEC - 1, 1)
                .allowed
        );
        let v = limit.step_compact(&mut state, 1_700_000_100 * NANOS_PER_SEC, 1);
        assert!(v.allowed);
        assert_eq!(v.remaining, 2);
    }

    #[test]
    fn cost_counts_as_several_requests() {
        let limit = Limit::new(StrategyKind::FixedWindow, 10, NANOS_PER_SEC, None);
        let mut state = [0; 2];
        let t = 5 * NANOS_PER_SEC;
        assert_eq!(limit.step_compact(&mut state, t, 8).remaining, 2);
        assert!(!limit.step_compact(&mut state, t, 3).allowed);
        assert!(limit.step_compact(&mut state, t, 2).allowed);
        assert!(!limit.step_compact(&mut state, t, 11).allowed);
    }
}
