//! Request statistics: totals, per-rule counts, the most recent violations in
//! a bounded ring and the top offenders in a bounded table. Everything here is
//! fixed-size whatever the traffic.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use serde::Serialize;

use crate::violations::Violation;

/// How many recent violations are kept.
pub const RECENT_CAPACITY: usize = 1000;
/// How many identities the offender table tracks (space-saving algorithm).
pub const OFFENDER_SLOTS: usize = 256;
/// How many offenders a snapshot reports.
pub const TOP_OFFENDERS: usize = 20;

#[derive(Debug, Default)]
pub struct RuleCounters {
    pub allowed: AtomicU64,
    pub blocked: AtomicU64,
    /// Requests a shadow rule would have rejected.
    pub shadow_blocked: AtomicU64,
}

#[derive(Debug, Default)]
pub struct Stats {
    total: AtomicU64,
    allowed: AtomicU64,
    blocked: AtomicU64,
    rules: RwLock<HashMap<String, Arc<RuleCounters>>>,
    recent: Mutex<VecDeque<Violation>>,
    offenders: Mutex<Offenders>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleStats {
    pub allowed: u64,
    pub blocked: u64,
    pub shadow_blocked: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Offender {
    pub identity: String,
    /// Violations counted; may overstate by at most `error`.
    pub violations: u64,
    pub error: u64,
}

/// What `GET /stats` answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatsSnapshot {
    pub total_requests: u64,
    pub allowed_requests: u64,
    pub blocked_requests: u64,
    /// Percentage, 0–100, as in the Python package.
    pub block_rate: f64,
    pub recent_violations: Vec<Violation>,
    pub top_offenders: Vec<Offender>,
    pub rules: BTreeMap<String, RuleStats>,
}

impl Stats {
    pub fn new() -> Stats {
        Stats::default()
    }

    /// The counters of a rule, created on first use and kept across reloads.
    pub fn rule(&self, name: &str) -> Arc<RuleCounters> {
        if let Some(counters) = self.rules.read().get(name) {
            return Arc::clone(counters);
        }
        Arc::clone(self.rules.write().entry(name.to_string()).or_default())
    }

    pub fn record_allowed(&self) {
        self.total.fetch_add(1, Ordering::Relaxed);
        self.allowed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_blocked(&self) {
        self.total.fetch_add(1, Ordering::Relaxed);
        self.blocked.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_violation(&self, violation: &Violation) {
        {
            let mut recent = self.recent.lock();
            if recent.len() == RECENT_CAPACITY {
                recent.pop_front();
            }
            recent.push_back(violation.clone());
        }
        if !violation.shadow {
            self.offenders.lock().count(&violation.identity);
        }
    }

    /// The most recent violations, newest first.
    pub fn recent_violations(&self, limit: usize) -> Vec<Violation> {
        self.recent
            .lock()
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect()
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let total = self.total.load(Ordering::Relaxed);
        let blocked = self.blocked.load(Ordering::Relaxed);
        let rules = self
            .rules
            .read()
            .iter()
            .map(|(name, c)| {
                let stats = RuleStats {
                    allowed: c.allowed.load(Ordering::Relaxed),
                    blocked: c.blocked.load(Ordering::Relaxed),
                    shadow_blocked: c.shadow_blocked.load(Ordering::Relaxed),
                };
                (name.clone(), stats)
            })
            .collect();
        StatsSnapshot {
            total_requests: total,
            allowed_requests: self.allowed.load(Ordering::Relaxed),
            blocked_requests: blocked,
            block_rate: if total == 0 {
                0.0
            } else {
                (blocked as f64 * 10_000.0 / total as f64).round() / 100.0
            },
            recent_violations: self.recent_violations(50),
            top_offenders: self.offenders.lock().top(TOP_OFFENDERS),
            rules,
        }
    }

    /// Zeroes every counter and forgets violations and offenders.
    pub fn reset(&self) {
        self.total.store(0, Ordering::Relaxed);
        self.allowed.store(0, Ordering::Relaxed);
        self.blocked.store(0, Ordering::Relaxed);
        for counters in self.rules.read().values() {
            counters.allowed.store(0, Ordering::Relaxed);
            counters.blocked.store(0, Ordering::Relaxed);
            counters.shadow_blocked.store(0, Ordering::Relaxed);
        }
        self.recent.lock().clear();
        *self.offenders.lock() = Offenders::default();
    }
}

/// The space-saving top-k summary: at most [`OFFENDER_SLOTS`] identities; a
/// newcomer replaces the smallest count and inherits it as its error bound, so
/// a heavy offender is never missed, however many identities pass through.
#[derive(Debug, Default)]
struct Offenders {
    slots: HashMap<String, (u64, u64)>,
}

impl Offenders {
    fn count(&mut self, identity: &str) {
        if let Some((count, _)) = self.slots.get_mut(identity) {
            *count += 1;
            return;
        }
        if self.slots.len() < OFFENDER_SLOTS {
            self.slots.insert(identity.to_string(), (1, 0));
            return;
        }
        let smallest = self
            .slots
            .iter()
            .min_by_key(|(_, (count, _))| *count)
            .map(|(id, (count, _))| (id.clone(), *count));
        if let Some((evicted, min)) = smallest {
            self.slots.remove(&evicted);
            self.slots.insert(identity.to_string(), (min + 1, min));
        }
    }

    fn top(&self, n: usize) -> Vec<Offender> {
        let mut all: Vec<Offender> = self
            .slots
            .iter()
            .map(|(identity, (violations, error))| Offender {
                identity: identity.clone(),
                violations: *violations,
                error: *error,
            })
            .collect();
        all.sort_by(|a, b| {
            b.violations
                .cmp(&a.violations)
                .then_with(|| a.identity.cmp(&b.identity))
        });
        all.truncate(n);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn violation(identity: &str) -> Violation {
        Violation {
            time: 0.0,
            identity: identity.to_string(),
            client_ip: "192.0.2.1".parse().unwrap(),
            rule: "r".into(),
            route: None,
            requests_made: 2,
            limit: 1,
            shadow: false,
        }
    }

    #[test]
    fn a_heavy_offender_surfaces_among_many_light_ones() {
        let stats = Stats::new();
        for i in 0..5_000 {
            stats.record_violation(&violation(&format!("ip:10.0.0.{i}")));
            if i % 10 == 0 {
                stats.record_violation(&violation("ip:203.0.113.66"));
            }
        }
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.top_offenders[0].identity, "ip:203.0.113.66");
        assert!(snapshot.top_offenders[0].violations >= 500);
        assert_eq!(snapshot.recent_violations.len(), 50);
        assert_eq!(stats.recent.lock().len(), RECENT_CAPACITY);
    }

    #[test]
    fn block_rate_is_a_percentage_and_reset_zeroes_it() {
        let stats = Stats::new();
        for _ in 0..3 {
            stats.record_allowed();
        }
        stats.record_blocked();
        assert_eq!(stats.snapshot().block_rate, 25.0);
        stats.reset();
        let after = stats.snapshot();
        assert_eq!((after.total_requests, after.block_rate), (0, 0.0));
    }
}
