//! DDoS protection as the engine applies it to each request: analyse the
//! client, block it when it looks like an attack, and tell the engine how
//! much to tighten the limits while the gateway is under attack.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{DdosAnalyzer, Event, Transition};
use crate::config::DdosConfig;
use crate::limit::Nanos;

/// An identity that has just been found to be attacking.
#[derive(Debug, Clone, PartialEq)]
pub struct Offence {
    /// `ip:ADDRESS`, or `ip6net:PREFIX` for an IPv6 subnet.
    pub identity: String,
    pub score: f64,
    /// How long its block lasts (grows with repeat offences).
    pub block_for: Duration,
}

pub struct DdosGuard {
    config: DdosConfig,
    analyzer: DdosAnalyzer,
    blocks: AtomicU64,
    mode_changes: AtomicU64,
    /// The highest score seen since [`DdosGuard::take_highest_score`], as
    /// `f64` bits: for scores (never negative) the bits order as the values.
    highest_score: AtomicU64,
}

/// The identity DDoS protection counts a client address under: the same
/// `ip:ADDRESS` as a rule keyed on `ip`, so one block covers both.
pub fn ip_identity(ip: IpAddr) -> String {
    format!("ip:{ip}")
}

impl DdosGuard {
    /// `None` when `ddos_protection.enabled` is false.
    pub fn new(config: &DdosConfig) -> Option<DdosGuard> {
        config.enabled.then(|| DdosGuard {
            config: config.clone(),
            analyzer: DdosAnalyzer::new(config),
            blocks: AtomicU64::new(0),
            mode_changes: AtomicU64::new(0),
            highest_score: AtomicU64::new(0),
        })
    }

    pub fn config(&self) -> &DdosConfig {
        &self.config
    }

    pub fn analyzer(&self) -> &DdosAnalyzer {
        &self.analyzer
    }

    /// The identities a client is looked up and counted under: its address,
    /// and for IPv6 its prefix too.
    pub fn identities(&self, ip: IpAddr) -> (String, Option<String>) {
        (ip_identity(ip), self.analyzer.prefix_identity(ip))
    }

    /// Counts one request toward under-attack mode's level (the whole
    /// gateway's rate), logging when the mode turns on or off. [`observe`]
    /// does it for each client request; Envoy's rate limit service, whose
    /// calls name descriptors rather than clients, does it alone.
    ///
    /// [`observe`]: DdosGuard::observe
    pub fn count_request(&self, now: Nanos) {
        if let Some(mode) = self.analyzer.attack_mode()
            && let Some(transition) = mode.record(now)
        {
            self.mode_changes.fetch_add(1, Ordering::Relaxed);
            match transition {
                Transition::Entered {
                    requests_per_second,
                } => tracing::warn!(
                    requests_per_second,
                    limit_factor = self.limit_factor_configured(),
                    "under attack: limits tightened"
                ),
                Transition::Left {
                    requests_per_second,
                } => tracing::warn!(
                    requests_per_second,
                    "no longer under attack: limits restored"
                ),
            }
        }
    }

    /// Counts one request to `path` of the client known by `identities` (as
    /// [`DdosGuard::identities`] gives them; the caller has them already for
    /// its block check). Returns the offence to block when the client (or
    /// its IPv6 prefix) now looks like an attack and `auto_block` is on.
    pub fn observe(
        &self,
        identities: (String, Option<String>),
        path: &str,
        now: Nanos,
    ) -> Option<Offence> {
        self.count_request(now);
        let (address, prefix) = identities;
        let mut worst: Option<(String, f64)> = None;
        for identity in std::iter::once(address).chain(prefix) {
            let pattern = self.analyzer.observe(&identity, path, now);
            self.highest_score
                .fetch_max(pattern.score.to_bits(), Ordering::Relaxed);
            if pattern.is_suspicious && worst.as_ref().is_none_or(|(_, s)| pattern.score > *s) {
                worst = Some((identity, pattern.score));
            }
        }
        let (identity, score) = worst.filter(|_| self.config.auto_block)?;
        let block_for = self.analyzer.block_for_offence(&identity, now);
        self.blocks.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(identity = %identity, score, block_seconds = block_for.as_secs(), "ddos: blocking");
        Some(Offence {
            identity,
            score,
            block_for,
        })
    }

    /// Counts an upstream error, a rate-limit refusal or a guard event
    /// against the client at `ip` (and its prefix).
    pub fn record(&self, ip: IpAddr, event: Event, now: Nanos) {
        let (address, prefix) = self.identities(ip);
        for identity in std::iter::once(address).chain(prefix) {
            self.analyzer.record(&identity, event, now);
        }
    }

    /// The highest suspicion score any client reached since the last call
    /// (0 when nothing was seen): what the `ddos_score_*` alerts watch.
    pub fn take_highest_score(&self) -> f64 {
        f64::from_bits(self.highest_score.swap(0, Ordering::Relaxed))
    }

    fn limit_factor_configured(&self) -> f64 {
        self.config
            .under_attack
            .as_ref()
            .map_or(1.0, |u| u.limit_factor)
    }

    /// The factor every rule's limit is multiplied by right now: below 1
    /// while under attack, else `None`.
    pub fn limit_factor(&self) -> Option<f64> {
        let on = self.analyzer.attack_mode().is_some_and(|m| m.is_on());
        on.then(|| self.limit_factor_configured())
    }

    pub fn under_attack(&self) -> bool {
        self.limit_factor().is_some()
    }

    pub fn sweep(&self, now: Nanos) -> usize {
        self.analyzer.sweep(now)
    }

    /// The `ratethrottle_ddos_*` lines of the metrics exposition.
    pub fn render_metrics(&self, out: &mut String) {
        let mut line = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        line(
            "ratethrottle_ddos_blocks_total",
            "counter",
            "Identities blocked by DDoS protection.",
            self.blocks.load(Ordering::Relaxed),
        );
        line(
            "ratethrottle_ddos_under_attack",
            "gauge",
            "1 while the gateway is in under-attack mode.",
            u64::from(self.under_attack()),
        );
        line(
            "ratethrottle_ddos_mode_changes_total",
            "counter",
            "Times the gateway entered or left under-attack mode.",
            self.mode_changes.load(Ordering::Relaxed),
        );
        line(
            "ratethrottle_ddos_gateway_requests_per_second",
            "gauge",
            "Requests the gateway received in the last full second.",
            self.analyzer.attack_mode().map_or(0, |m| m.last_rate()),
        );
        line(
            "ratethrottle_ddos_tracked_identities",
            "gauge",
            "Identities DDoS protection holds traffic counts for.",
            self.analyzer.tracked() as u64,
        );
    }
}
