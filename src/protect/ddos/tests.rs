//! The analysis against the traffic it must tell apart: a flood, many
//! normal bursty clients, a distributed attack, a million one-off addresses.

use super::*;
use crate::config::{DdosConfig, UnderAttackConfig};
use crate::limit::NANOS_PER_SEC;

const S: Nanos = NANOS_PER_SEC;
const MS: Nanos = S / 1000;
const T0: Nanos = 1_000_000 * S;

/// The SPEC.md defaults.
fn config() -> DdosConfig {
    DdosConfig {
        enabled: true,
        threshold: 10_000,
        window: Duration::from_secs(60),
        auto_block: true,
        block_duration: Duration::from_secs(3600),
        max_block_duration: Duration::from_secs(24 * 3600),
        suspicious_threshold: 0.5,
        max_unique_endpoints: 50,
        burst_threshold: 100,
        burst_window: Duration::from_secs(10),
        min_interval_threshold: Duration::from_millis(100),
        max_tracked_identifiers: 100_000,
        ipv6_prefix: 64,
        under_attack: Some(UnderAttackConfig {
            requests_per_second: 5_000,
            limit_factor: 0.5,
        }),
    }
}

/// A small deterministic generator: the simulation is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

/// Requests of one address flooding at 20× a per-IP rule of 100 a minute
/// (one request every 30 ms), with the rule's refusals fed back.
#[test]
fn a_flood_at_twenty_times_its_limit_is_suspicious_within_150_requests() {
    let analyzer = DdosAnalyzer::new(&config());
    let limit = 100;
    let mut first_suspicious = None;
    for n in 1..=1000u64 {
        let now = T0 + n * 30 * MS;
        let pattern = analyzer.observe("ip:198.51.100.7", "/api/items", now);
        if n > limit {
            analyzer.record("ip:198.51.100.7", Event::RateLimited, now);
        }
        if pattern.is_suspicious {
            first_suspicious = Some(n);
            break;
        }
    }
    let n = first_suspicious.expect("the flood was never suspicious");
    // 130 with these defaults: the burst, the back-to-back pace and the
    // refusals once the limit is spent.
    assert!(n <= 150, "suspicious only after {n} requests");
}

/// An API client polling one endpoint ten times a second for ten minutes,
/// with jitter: right at the burst threshold, never past it.
#[test]
fn a_steady_client_at_the_burst_threshold_is_never_suspicious() {
    let analyzer = DdosAnalyzer::new(&config());
    let mut rng = Rng(7);
    let mut now = T0;
    for _ in 0..6000 {
        now += rng.between(80, 120) * MS;
        let pattern = analyzer.observe("ip:192.0.2.50", "/api/status", now);
        assert!(!pattern.is_suspicious, "{pattern:?}");
    }
}

/// The certain case: `threshold` requests in the window score 1.
#[test]
fn threshold_requests_in_the_window_score_one() {
    let mut config = config();
    config.threshold = 500;
    let analyzer = DdosAnalyzer::new(&config);
    let mut last = None;
    // Slow and steady, one endpoint: nothing but the rate stands out. The
    // window count is a sliding-window-counter estimate, exact within one
    // aligned window.
    let start = T0 / (60 * S) * (60 * S);
    for n in 0..500u64 {
        last = Some(analyzer.observe("ip:1", "/", start + n * 110 * MS));
    }
    assert_eq!(last.unwrap().score, 1.0);
}

/// 100 simulated people: page loads of 5 to 30 requests a few tens of
/// milliseconds apart over the site's 40 endpoints, then 5 to 60 seconds of
/// reading. Over 100,000 requests, none of them may look like an attack.
#[test]
fn a_hundred_bursty_normal_clients_are_never_suspicious() {
    let analyzer = DdosAnalyzer::new(&config());
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    // (next request time, requests left in this page load)
    let mut clients: Vec<(Nanos, u64)> =
        (0..100).map(|_| (T0 + rng.between(0, 60) * S, 0)).collect();
    let mut highest: f64 = 0.0;
    let mut suspicious = 0;
    for _ in 0..100_000 {
        let (i, _) = clients.iter().enumerate().min_by_key(|(_, c)| c.0).unwrap();
        let (now, left) = clients[i];
        let endpoint = format!("/page/{}", rng.between(0, 39));
        let pattern = analyzer.observe(&format!("ip:10.0.0.{i}"), &endpoint, now);
        highest = highest.max(pattern.score);
        suspicious += usize::from(pattern.is_suspicious);
        clients[i] = if left == 0 {
            // A new page load starts after a pause for reading.
            let burst = rng.between(5, 30);
            (now + rng.between(5, 60) * S, burst)
        } else {
            (now + rng.between(10, 300) * MS, left - 1)
        };
    }
    assert_eq!(suspicious, 0, "highest score {highest}");
    assert!(highest < 0.45, "highest score {highest}");
}

/// 1,000 addresses, each at a modest 10 requests a second: no single one is
/// suspicious, but together they switch the gateway into under-attack mode.
#[test]
fn a_distributed_attack_under_every_per_ip_limit_turns_on_under_attack_mode() {
    let analyzer = DdosAnalyzer::new(&config());
    let mode = analyzer.attack_mode().unwrap();
    let mut transitions = Vec::new();
    for second in 0..3u64 {
        for k in 0..10u64 {
            for ip in 0..1000u64 {
                let now = T0 + second * S + k * 100 * MS + ip * 1000;
                analyzer.observe(&format!("ip:203.0.{}.{}", ip / 256, ip % 256), "/", now);
                transitions.extend(mode.record(now));
            }
        }
    }
    assert!(mode.is_on());
    assert_eq!(
        transitions,
        [Transition::Entered {
            requests_per_second: 10_000
        }]
    );
}

#[test]
fn repeat_offenders_get_doubling_blocks_up_to_the_cap() {
    let analyzer = DdosAnalyzer::new(&config());
    let blocks: Vec<u64> = (0..8)
        .map(|i| analyzer.block_for_offence("ip:1", T0 + i * S).as_secs())
        .collect();
    assert_eq!(
        blocks,
        [3600, 7200, 14_400, 28_800, 57_600, 86_400, 86_400, 86_400]
    );
    // Another identity starts from the first block; a day later, so does this one.
    assert_eq!(analyzer.block_for_offence("ip:2", T0).as_secs(), 3600);
    let next_day = T0 + 8 * S + 24 * 3600 * S;
    assert_eq!(analyzer.block_for_offence("ip:1", next_day).as_secs(), 3600);
}

#[test]
fn ipv6_clients_are_also_counted_by_prefix() {
    let analyzer = DdosAnalyzer::new(&config());
    let a = analyzer.prefix_identity("2001:db8:1:2:aaaa::1".parse().unwrap());
    let b = analyzer.prefix_identity("2001:db8:1:2:ffff::9".parse().unwrap());
    assert_eq!(a.as_deref(), Some("ip6net:2001:db8:1:2::/64"));
    assert_eq!(a, b);
    assert_eq!(analyzer.prefix_identity("192.0.2.1".parse().unwrap()), None);
    // An IPv4 address written as IPv6 is IPv4.
    assert_eq!(
        analyzer.prefix_identity("::ffff:192.0.2.1".parse().unwrap()),
        None
    );
}

/// A million one-off addresses leave the table at its configured size.
#[test]
fn a_million_distinct_addresses_stay_within_the_configured_memory() {
    let mut config = config();
    config.max_tracked_identifiers = 100_000;
    let analyzer = DdosAnalyzer::new(&config);
    for i in 0..1_000_000u64 {
        analyzer.observe(&format!("ip:{i}"), "/", T0 + i * 1000);
    }
    assert!(analyzer.tracked() <= analyzer.tracker().capacity());
    assert!(analyzer.tracker().capacity() <= 100_000 + 64 * 8);
    // About 100 bytes an entry plus the tables' slack.
    let bytes = analyzer.tracker().memory_bytes();
    assert!(bytes < 32 << 20, "{bytes} bytes");
}

#[test]
fn nothing_seen_has_no_pattern_and_a_fresh_client_is_not_suspicious() {
    let analyzer = DdosAnalyzer::new(&config());
    assert!(analyzer.analyze("ip:1", T0).is_none());
    let first = analyzer.observe("ip:1", "/", T0);
    assert!(!first.is_suspicious);
    assert_eq!(
        analyzer.analyze("ip:1", T0).unwrap().requests_in_window,
        1.0
    );
}
