//! DDoS protection's traffic analysis (`ddos_protection`): per-identity
//! signals in bounded memory ([`tracker`]), a suspicion score from them
//! ([`score`]), growing blocks for repeat offenders, and the whole gateway's
//! under-attack mode ([`attack`]). docs/ddos.md has the formula and the
//! figures.
//!
//! There is no "good behaviour" exemption: an identity's past never lowers
//! the score of what it does now.

pub mod attack;
pub mod guard;
pub mod score;
pub mod tracker;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use parking_lot::Mutex;

use crate::config::DdosConfig;
use crate::limit::Nanos;
pub use attack::{AttackMode, Transition};
pub use score::Signals;
pub use tracker::{Event, Levels, Tracker};

/// Repeat offences remembered at most; the oldest is forgotten first.
const MAX_OFFENDERS: usize = 10_000;

/// An offence is forgotten after this long without another.
const OFFENCE_MEMORY: Duration = Duration::from_secs(24 * 3600);

/// What the analysis says of one identity, as the Python package's
/// `analyze_traffic` returned it.
#[derive(Debug, Clone, PartialEq)]
pub struct TrafficPattern {
    /// Requests per second over the window.
    pub request_rate: f64,
    /// Requests in the sliding window.
    pub requests_in_window: f64,
    pub score: f64,
    pub is_suspicious: bool,
    pub signals: Signals,
}

pub struct DdosAnalyzer {
    levels: Levels,
    suspicious_threshold: f64,
    block_duration: Duration,
    max_block_duration: Duration,
    ipv6_prefix: u8,
    tracker: Tracker,
    /// Identity hash → (offences, last offence).
    offenders: Mutex<HashMap<u64, (u32, Nanos)>>,
    hasher: RandomState,
    attack: Option<AttackMode>,
}

impl DdosAnalyzer {
    pub fn new(config: &DdosConfig) -> DdosAnalyzer {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
        DdosAnalyzer {
            levels: Levels {
                window: nanos(config.window),
                threshold: config.threshold.max(1) as f64,
                burst_window: nanos(config.burst_window),
                burst_threshold: config.burst_threshold.max(1) as f64,
                max_unique_endpoints: config.max_unique_endpoints.max(1) as f64,
                min_interval: nanos(config.min_interval_threshold),
            },
            suspicious_threshold: config.suspicious_threshold,
            block_duration: config.block_duration,
            max_block_duration: config.max_block_duration.max(config.block_duration),
            ipv6_prefix: config.ipv6_prefix,
            tracker: Tracker::new(
                usize::try_from(config.max_tracked_identifiers).unwrap_or(usize::MAX),
            ),
            offenders: Mutex::new(HashMap::new()),
            hasher: RandomState::new(),
            attack: config
                .under_attack
                .as_ref()
                .map(|u| AttackMode::new(u.requests_per_second)),
        }
    }

    fn pattern(&self, signals: Signals) -> TrafficPattern {
        let score = signals.score();
        TrafficPattern {
            request_rate: signals.requests / (self.levels.window as f64 / 1e9),
            requests_in_window: signals.requests,
            score,
            is_suspicious: score >= self.suspicious_threshold,
            signals,
        }
    }

    /// Counts one request of `identity` to `endpoint` and analyses it.
    pub fn observe(&self, identity: &str, endpoint: &str, now: Nanos) -> TrafficPattern {
        self.pattern(self.tracker.request(identity, endpoint, now, &self.levels))
    }

    /// Counts an upstream error, a rate-limit refusal or a guard event.
    pub fn record(&self, identity: &str, event: Event, now: Nanos) {
        self.tracker.event(identity, event, now, &self.levels);
    }

    /// The analysis of `identity` at `now` without counting anything; `None`
    /// for an identity not seen in the window (or pushed out of the table).
    pub fn analyze(&self, identity: &str, now: Nanos) -> Option<TrafficPattern> {
        self.tracker
            .signals(identity, now, &self.levels)
            .map(|signals| self.pattern(signals))
    }

    /// The identity under which an IPv6 client's prefix is counted
    /// (`ip6net:2001:db8::/64`), so an attacker cannot rotate through the
    /// addresses of one subnet. `None` for IPv4.
    pub fn prefix_identity(&self, ip: IpAddr) -> Option<String> {
        let IpAddr::V6(v6) = ip.to_canonical() else {
            return None;
        };
        let net = IpNet::new(IpAddr::V6(v6), self.ipv6_prefix).ok()?.trunc();
        Some(format!("ip6net:{net}"))
    }

    /// The block an offence earns: `block_duration`, doubled for each
    /// offence remembered, capped at `max_block_duration`.
    pub fn block_for_offence(&self, identity: &str, now: Nanos) -> Duration {
        let key = self.hasher.hash_one(identity);
        let memory = u64::try_from(OFFENCE_MEMORY.as_nanos()).unwrap_or(u64::MAX);
        let mut offenders = self.offenders.lock();
        if offenders.len() >= MAX_OFFENDERS && !offenders.contains_key(&key) {
            offenders.retain(|_, (_, last)| now.saturating_sub(*last) < memory);
            if offenders.len() >= MAX_OFFENDERS {
                // Still full: forget the oldest offence.
                if let Some(oldest) = offenders
                    .iter()
                    .min_by_key(|(_, (_, last))| *last)
                    .map(|(k, _)| *k)
                {
                    offenders.remove(&oldest);
                }
            }
        }
        let (count, last) = offenders.entry(key).or_insert((0, now));
        if now.saturating_sub(*last) >= memory {
            *count = 0;
        }
        *count = count.saturating_add(1);
        *last = now;
        let doublings = (*count - 1).min(32);
        let grown = self
            .block_duration
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.max_block_duration);
        grown.min(self.max_block_duration)
    }

    /// The under-attack switch, when `under_attack` is configured.
    pub fn attack_mode(&self) -> Option<&AttackMode> {
        self.attack.as_ref()
    }

    pub fn tracked(&self) -> usize {
        self.tracker.len()
    }

    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// Frees identities idle for two windows.
    pub fn sweep(&self, now: Nanos) -> usize {
        self.tracker.sweep(now, &self.levels)
    }
}

#[cfg(test)]
mod tests;
