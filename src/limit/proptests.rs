//! Invariants every strategy must keep, over random request sequences.

use proptest::prelude::*;

use super::{Limit, NANOS_PER_SEC, Nanos, SlidingLog, StrategyKind};

const T0: Nanos = 1_700_000_000 * NANOS_PER_SEC;

/// A request: nanoseconds after the previous one, and its cost.
fn requests() -> impl Strategy<Value = Vec<(u64, u64)>> {
    prop::collection::vec((0u64..400_000_000, 1u64..4), 1..300)
}

fn run(limit: &Limit, requests: &[(u64, u64)]) -> Vec<(Nanos, u64, bool, Option<Nanos>)> {
    let mut compact = [0u64; 2];
    let mut log = SlidingLog::default();
    let mut now = T0;
    requests
        .iter()
        .map(|&(gap, cost)| {
            now += gap;
            let v = if limit.strategy.is_compact() {
                limit.step_compact(&mut compact, now, cost)
            } else {
                limit.step_log(&mut log, now, cost)
            };
            (now, cost, v.allowed, v.retry_after)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn sliding_window_never_admits_more_than_the_limit_in_any_window(
        limit in 1u64..20, window_ms in 1u64..3000, requests in requests()
    ) {
        let limit = Limit::new(StrategyKind::SlidingWindow, limit, window_ms * 1_000_000, None);
        let outcomes = run(&limit, &requests);
        let admitted: Vec<(Nanos, u64)> = outcomes.iter().filter(|o| o.2).map(|o| (o.0, o.1)).collect();
        for &(t, _) in &admitted {
            let in_window: u64 = admitted.iter()
                .filter(|(s, _)| *s <= t && t - *s < limit.window)
                .map(|(_, c)| c).sum();
            prop_assert!(in_window <= limit.limit, "{in_window} in the window ending at {t}");
        }
    }

    #[test]
    fn token_bucket_never_admits_more_than_burst_plus_rate_times_t(
        limit in 1u64..50, window_ms in 1u64..3000, burst in 1u64..80, requests in requests()
    ) {
        let limit = Limit::new(StrategyKind::TokenBucket, limit, window_ms * 1_000_000, Some(burst));
        let outcomes = run(&limit, &requests);
        let admitted: Vec<(Nanos, u64)> = outcomes.iter().filter(|o| o.2).map(|o| (o.0, o.1)).collect();
        for (i, &(start, _)) in admitted.iter().enumerate() {
            let mut total = 0u128;
            for &(end, cost) in &admitted[i..] {
                total += cost as u128;
                // total <= burst + (end - start) * limit / window, in integers.
                let bound = burst as u128 * limit.window as u128
                    + (end - start) as u128 * limit.limit as u128;
                prop_assert!(total * limit.window as u128 <= bound);
            }
        }
    }

    #[test]
    fn fixed_window_never_admits_more_than_the_limit_per_aligned_window(
        limit in 1u64..20, window_ms in 1u64..3000, requests in requests()
    ) {
        let limit = Limit::new(StrategyKind::FixedWindow, limit, window_ms * 1_000_000, None);
        let mut per_window = std::collections::HashMap::new();
        for (t, cost, allowed, _) in run(&limit, &requests) {
            if allowed {
                *per_window.entry(t / limit.window).or_insert(0) += cost;
            }
        }
        prop_assert!(per_window.values().all(|&n| n <= limit.limit));
    }

    #[test]
    fn sliding_counter_never_admits_more_than_the_limit_per_aligned_window(
        limit in 1u64..20, window_ms in 1u64..3000, requests in requests()
    ) {
        let limit = Limit::new(StrategyKind::SlidingWindowCounter, limit, window_ms * 1_000_000, None);
        let mut per_window = std::collections::HashMap::new();
        for (t, cost, allowed, _) in run(&limit, &requests) {
            if allowed {
                *per_window.entry(t / limit.window).or_insert(0) += cost;
            }
        }
        prop_assert!(per_window.values().all(|&n| n <= limit.limit));
    }

    #[test]
    fn leaky_bucket_is_a_token_bucket_with_burst_equal_to_limit(
        limit in 1u64..50, window_ms in 1u64..3000, requests in requests()
    ) {
        let leaky = Limit::new(StrategyKind::LeakyBucket, limit, window_ms * 1_000_000, None);
        let token = Limit::new(StrategyKind::TokenBucket, limit, window_ms * 1_000_000, Some(limit));
        prop_assert_eq!(run(&leaky, &requests), run(&token, &requests));
    }

    #[test]
    fn a_denied_request_is_allowed_exactly_at_its_retry_after(
        strategy in prop::sample::select(StrategyKind::ALL.to_vec()),
        limit in 1u64..20, window_ms in 1u64..3000, requests in requests(), cost in 1u64..4
    ) {
        let limit = Limit::new(strategy, limit, window_ms * 1_000_000, None);
        prop_assume!(cost <= limit.capacity());
        let mut compact = [0u64; 2];
        let mut log = SlidingLog::default();
        let mut now = T0;
        for &(gap, c) in &requests {
            now += gap;
            let v = if limit.strategy.is_compact() {
                limit.check_compact(&mut compact.clone(), now, cost)
            } else {
                limit.check_log(&mut log.clone(), now, cost)
            };
            if let Some(retry) = v.retry_after {
                prop_assert!(retry > 0);
                // Nothing else happens meanwhile: at `now + retry` it fits, a nanosecond before not.
                let (mut c1, mut l1) = (compact, log.clone());
                let later = if limit.strategy.is_compact() {
                    limit.check_compact(&mut c1, now + retry, cost)
                } else {
                    limit.check_log(&mut l1, now + retry, cost)
                };
                prop_assert!(later.allowed, "{strategy} retry {retry} at {now}");
                if retry > 1 {
                    let (mut c2, mut l2) = (compact, log.clone());
                    let early = if limit.strategy.is_compact() {
                        limit.check_compact(&mut c2, now + retry - 1, cost)
                    } else {
                        limit.check_log(&mut l2, now + retry - 1, cost)
                    };
                    prop_assert!(!early.allowed, "{strategy} allowed before its retry-after");
                }
            }
            if limit.strategy.is_compact() {
                limit.step_compact(&mut compact, now, c);
            } else {
                limit.step_log(&mut log, now, c);
            }
        }
    }
}
