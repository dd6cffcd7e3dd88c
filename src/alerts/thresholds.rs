//! `alerting.thresholds`: turns successive samples of the gateway's totals
//! into warning and critical alerts, at most one per metric and level per
//! `cooldown`. Pure: time is passed in, so tests need no sleeps.

use std::collections::VecDeque;
use std::time::Duration;

use super::payload::{Alert, Level, Metric};
use crate::config::AlertThresholds;

/// Rates are taken over this much history.
pub const WINDOW: Duration = Duration::from_secs(60);

/// A block rate over fewer requests than this says nothing (one rejected
/// request out of two is not an attack), so it raises no alert.
pub const MIN_REQUESTS_FOR_BLOCK_RATE: u64 = 20;

/// Samples kept at most, whatever the tick: bounds memory.
const MAX_SAMPLES: usize = 600;

/// The gateway's totals at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Monotonic time since any fixed origin.
    pub at: Duration,
    pub total: u64,
    pub blocked: u64,
    /// Enforced violations since start.
    pub violations: u64,
    /// The DDoS score (0–1) once the gateway publishes one; `None` until then.
    pub ddos_score: Option<f64>,
}

pub struct Evaluator {
    thresholds: AlertThresholds,
    cooldown: Duration,
    samples: VecDeque<Sample>,
    /// Per metric: when an alert was last raised, and at which level.
    last: [Option<(Duration, Level)>; 3],
}

impl Evaluator {
    pub fn new(thresholds: AlertThresholds, cooldown: Duration) -> Evaluator {
        Evaluator {
            thresholds,
            cooldown,
            samples: VecDeque::new(),
            last: [None; 3],
        }
    }

    /// New thresholds after a reload; the history and cooldowns stay.
    pub fn configure(&mut self, thresholds: AlertThresholds, cooldown: Duration) {
        self.thresholds = thresholds;
        self.cooldown = cooldown;
    }

    /// Adds a sample and returns the alerts it raises. `unix_now` only
    /// stamps the alerts.
    pub fn observe(&mut self, sample: Sample, unix_now: f64) -> Vec<Alert> {
        // Totals going down mean the statistics were reset: start over.
        if let Some(prev) = self.samples.back()
            && (sample.total < prev.total || sample.violations < prev.violations)
        {
            self.samples.clear();
        }
        self.samples.push_back(sample);
        // Keep the newest sample at least WINDOW old as the baseline.
        while (self.samples.len() > 2 && self.samples[1].at + WINDOW <= sample.at)
            || self.samples.len() > MAX_SAMPLES
        {
            self.samples.pop_front();
        }
        let Some(base) = self.samples.front().copied() else {
            return Vec::new();
        };
        let t = self.thresholds.clone();
        let mut alerts = Vec::new();

        let requests = sample.total - base.total;
        if requests >= MIN_REQUESTS_FOR_BLOCK_RATE {
            let rate =
                (sample.blocked.saturating_sub(base.blocked)) as f64 * 100.0 / requests as f64;
            let levels = (t.block_rate_warning, t.block_rate_critical);
            self.check(
                &mut alerts,
                Metric::BlockRate,
                rate,
                levels,
                sample.at,
                unix_now,
            );
        }
        let per_minute = (sample.violations - base.violations) as f64;
        let levels = (
            t.violations_per_minute_warning as f64,
            t.violations_per_minute_critical as f64,
        );
        self.check(
            &mut alerts,
            Metric::ViolationsPerMinute,
            per_minute,
            levels,
            sample.at,
            unix_now,
        );
        if let Some(score) = sample.ddos_score {
            let levels = (t.ddos_score_warning, t.ddos_score_critical);
            self.check(
                &mut alerts,
                Metric::DdosScore,
                score,
                levels,
                sample.at,
                unix_now,
            );
        }
        alerts
    }

    fn check(
        &mut self,
        alerts: &mut Vec<Alert>,
        metric: Metric,
        value: f64,
        (warning, critical): (f64, f64),
        at: Duration,
        unix_now: f64,
    ) {
        let crossed = |threshold: f64| value > 0.0 && value >= threshold;
        let (level, threshold) = if crossed(critical) {
            (Level::Critical, critical)
        } else if crossed(warning) {
            (Level::Warning, warning)
        } else {
            return;
        };
        let slot = &mut self.last[metric as usize];
        // A higher level is news at once; the same or a lower one waits out the cooldown.
        let quiet = matches!(*slot, Some((when, was)) if level <= was && at < when + self.cooldown);
        if quiet {
            return;
        }
        *slot = Some((at, level));
        let level_name = match level {
            Level::Warning => "warning",
            Level::Critical => "critical",
        };
        let message = match metric {
            Metric::BlockRate => format!(
                "{level_name}: block rate {value:.1}% over the last minute (threshold {threshold}%)"
            ),
            Metric::ViolationsPerMinute => format!(
                "{level_name}: {value:.0} violations in the last minute (threshold {threshold})"
            ),
            Metric::DdosScore => {
                format!("{level_name}: DDoS score {value:.2} (threshold {threshold})")
            }
        };
        alerts.push(Alert {
            time: unix_now,
            level,
            metric,
            value,
            threshold,
            message,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thresholds() -> AlertThresholds {
        AlertThresholds {
            block_rate_warning: 10.0,
            block_rate_critical: 50.0,
            violations_per_minute_warning: 100,
            violations_per_minute_critical: 500,
            ddos_score_warning: 0.5,
            ddos_score_critical: 0.8,
        }
    }

    fn at(secs: u64, total: u64, blocked: u64, violations: u64) -> Sample {
        Sample {
            at: Duration::from_secs(secs),
            total,
            blocked,
            violations,
            ddos_score: None,
        }
    }

    #[test]
    fn warning_then_cooldown_then_critical_at_once_then_again_after_cooldown() {
        let mut e = Evaluator::new(thresholds(), Duration::from_secs(300));
        assert!(e.observe(at(0, 0, 0, 0), 0.0).is_empty());
        // 20% blocked: warning.
        let a = e.observe(at(1, 100, 20, 0), 1.0);
        assert_eq!(a.len(), 1);
        assert_eq!(
            (a[0].metric, a[0].level),
            (Metric::BlockRate, Level::Warning)
        );
        // Still 20%: quiet during the cooldown.
        assert!(e.observe(at(2, 200, 40, 0), 2.0).is_empty());
        // Escalation to critical is raised at once.
        let a = e.observe(at(3, 1000, 800, 0), 3.0);
        assert_eq!(a[0].level, Level::Critical);
        assert!(e.observe(at(4, 1100, 900, 0), 4.0).is_empty());
        // After the cooldown the same level is raised again.
        let mut total = 1100;
        let mut blocked = 900;
        let mut raised = Vec::new();
        for s in 5..=303 {
            total += 10;
            blocked += 9;
            raised.extend(e.observe(at(s, total, blocked, 0), s as f64));
        }
        assert_eq!(raised.len(), 1, "{raised:?}");
        assert_eq!(raised[0].time, 303.0);
    }

    #[test]
    fn a_few_requests_raise_no_block_rate_alert() {
        let mut e = Evaluator::new(thresholds(), Duration::from_secs(60));
        e.observe(at(0, 0, 0, 0), 0.0);
        assert!(e.observe(at(1, 10, 10, 0), 1.0).is_empty());
    }

    #[test]
    fn violations_per_minute_use_the_last_minute_only() {
        let mut e = Evaluator::new(thresholds(), Duration::from_secs(1));
        e.observe(at(0, 0, 0, 0), 0.0);
        // 90 violations in the first minute: below the warning.
        for s in 1..=60 {
            assert!(e.observe(at(s, 0, 0, s * 3 / 2), 0.0).is_empty());
        }
        // A burst of 150 more: 150+ in the last minute.
        let a = e.observe(at(61, 0, 0, 90 + 150), 0.0);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].metric, Metric::ViolationsPerMinute);
        assert_eq!(a[0].level, Level::Warning);
    }

    #[test]
    fn a_reset_of_the_statistics_starts_over() {
        let mut e = Evaluator::new(thresholds(), Duration::from_secs(1));
        e.observe(at(0, 1000, 0, 0), 0.0);
        assert!(e.observe(at(1, 10, 0, 0), 0.0).is_empty());
    }

    #[test]
    fn the_ddos_threshold_applies_once_a_score_is_published() {
        let mut e = Evaluator::new(thresholds(), Duration::from_secs(60));
        let mut s = at(0, 0, 0, 0);
        assert!(e.observe(s, 0.0).is_empty());
        s.at = Duration::from_secs(1);
        s.ddos_score = Some(0.9);
        let a = e.observe(s, 0.0);
        assert_eq!(
            (a[0].metric, a[0].level),
            (Metric::DdosScore, Level::Critical)
        );
    }

    #[test]
    fn memory_stays_bounded_with_a_fast_tick() {
        let mut e = Evaluator::new(thresholds(), Duration::from_secs(60));
        for i in 0..5000u64 {
            e.observe(
                Sample {
                    at: Duration::from_millis(i),
                    total: i,
                    blocked: 0,
                    violations: 0,
                    ddos_score: None,
                },
                0.0,
            );
        }
        assert!(e.samples.len() <= MAX_SAMPLES);
    }
}
