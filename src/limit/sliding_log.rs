//! sliding_window: the exact strategy. It remembers when each accepted request
//! arrived (at most `limit` of them) and admits a request only if fewer than
//! `limit` arrived in the last `window`. Exact at every instant, at the price
//! of up to `limit` timestamps per key.

use std::collections::VecDeque;

use super::{Limit, Nanos, Verdict};

/// Arrival times of the accepted requests still inside the window, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlidingLog {
    stamps: VecDeque<Nanos>,
}

impl SlidingLog {
    pub fn len(&self) -> usize {
        self.stamps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stamps.is_empty()
    }

    /// Bytes held on the heap, for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        self.stamps.capacity() * std::mem::size_of::<Nanos>()
    }

    pub(super) fn check(&mut self, limit: &Limit, now: Nanos, cost: u64) -> Verdict {
        // A stamp counts while `now - stamp < window`.
        while let Some(&oldest) = self.stamps.front() {
            if now.saturating_sub(oldest) >= limit.window {
                self.stamps.pop_front();
            } else {
                break;
            }
        }
        if self.stamps.is_empty() && self.stamps.capacity() > 64 {
            self.stamps.shrink_to(8);
        }
        let count = self.stamps.len() as u64;
        let expiry = |stamp: Nanos| (stamp + limit.window).saturating_sub(now).max(1);
        if cost > limit.limit {
            return Verdict::denied_forever(limit);
        }
        if count + cost <= limit.limit {
            // The newest stamp would be this request's.
            return Verdict::allow(limit, limit.limit - count - cost, limit.window);
        }
        // The request fits once `count + cost - limit` of the oldest stamps expire.
        let must_expire = (count + cost - limit.limit) as usize;
        let freeing_stamp = self.stamps[must_expire - 1];
        let newest = self.stamps.back().copied().unwrap_or(now);
        Verdict::deny(
            limit,
            limit.limit.saturating_sub(count),
            expiry(newest),
            expiry(freeing_stamp),
        )
    }

    pub(super) fn consume(&mut self, now: Nanos, cost: u64) {
        // Keep the log ordered even if the clock stepped back.
        let stamp = self.stamps.back().map_or(now, |&newest| newest.max(now));
        for _ in 0..cost {
            self.stamps.push_back(stamp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Limit, NANOS_PER_SEC, StrategyKind};
    use super::SlidingLog;

    #[test]
    fn each_request_frees_its_slot_exactly_one_window_later() {
        let limit = Limit::new(StrategyKind::SlidingWindow, 3, 10 * NANOS_PER_SEC, None);
        let mut log = SlidingLog::default();
        let t0 = 1_700_000_000 * NANOS_PER_SEC;
        for (offset, remaining) in [(0, 2), (4, 1), (6, 0)] {
            let v = limit.step_log(&mut log, t0 + offset * NANOS_PER_SEC, 1);
            assert!(v.allowed);
            assert_eq!(v.remaining, remaining);
            assert_eq!(v.reset_after, 10 * NANOS_PER_SEC);
        }
        let t = t0 + 7 * NANOS_PER_SEC;
        let denied = limit.step_log(&mut log, t, 1);
        assert_eq!(denied.retry_after, Some(3 * NANOS_PER_SEC));
        assert_eq!(denied.reset_after, 9 * NANOS_PER_SEC);
        // Cost 2 must wait for the second-oldest stamp (t0 + 4 s).
        assert_eq!(
            limit.step_log(&mut log, t, 2).retry_after,
            Some(7 * NANOS_PER_SEC)
        );
        assert!(
            !limit
                .step_log(&mut log, t0 + 10 * NANOS_PER_SEC - 1, 1)
                .allowed
        );
        assert!(limit.step_log(&mut log, t0 + 10 * NANOS_PER_SEC, 1).allowed);
        assert_eq!(log.len(), 3);
    }

    #[test]
    fn the_log_never_holds_more_than_the_limit() {
        let limit = Limit::new(StrategyKind::SlidingWindow, 5, NANOS_PER_SEC, None);
        let mut log = SlidingLog::default();
        for i in 0..1000 {
            limit.step_log(&mut log, i * NANOS_PER_SEC / 100, 1);
            assert!(log.len() <= 5);
        }
    }
}
