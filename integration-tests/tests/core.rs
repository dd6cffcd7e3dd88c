//! The core engine end to end from YAML: rules, how they combine, lists,
//! blocks, shadow rules, violations, statistics, reload and exactness.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use integration_tests::{Req, block_on, config_from, decide, engine};
use parking_lot::Mutex;
use ratethrottle::decision::{BlockedBy, Decision};
use ratethrottle::protect::lists::{ListKind, parse_entry};
use ratethrottle::violations::Violation;

const ROUTED: &str = r#"
rules:
  - { name: api_default, limit: 100, window: 1h, strategy: token_bucket }
  - { name: auth_strict, limit: 5, window: 60, strategy: sliding_window, block_duration: 900 }
  - { name: writes, limit: 3, window: 1m, strategy: fixed_window, methods: [POST], paths: [/api/items] }
routes:
  - name: login
    match: { path_prefix: /api/auth, methods: [POST] }
    rules: [auth_strict, api_default]
  - name: api
    match: { path_prefix: /api/ }
    rules: [api_default, writes]
"#;

fn rate_limited_rule(decision: &Decision) -> Option<&str> {
    match decision {
        Decision::RateLimited { quota, .. } => Some(&quota.rule),
        _ => None,
    }
}

#[test]
fn the_most_restrictive_rule_wins_and_a_denial_consumes_no_other_quota() {
    // Without the block, so that the same client can be asked again.
    let (engine, _clock) = engine(&ROUTED.replace("block_duration: 900", "block_duration: 0"));
    let login = Req::post("/api/auth/login");
    for expected_remaining in (0..5).rev() {
        let decision = decide(&engine, &login);
        let quota = decision.quota().expect("quota");
        assert!(decision.is_allowed());
        assert_eq!(
            (&*quota.rule, quota.remaining),
            ("auth_strict", expected_remaining)
        );
    }
    let denied = decide(&engine, &login);
    assert_eq!(rate_limited_rule(&denied), Some("auth_strict"));
    let Decision::RateLimited { retry_after, .. } = denied else {
        unreachable!()
    };
    assert_eq!(retry_after, Duration::from_secs(60));

    // api_default saw exactly the five admitted requests.
    let other = decide(&engine, &Req::get("/api/things"));
    let quota = other.quota().expect("quota");
    assert_eq!((&*quota.rule, quota.remaining), ("api_default", 94));
}

#[test]
fn block_duration_turns_the_next_requests_into_403_until_it_ends() {
    let (engine, clock) = engine(ROUTED);
    let login = Req::post("/api/auth/login");
    for _ in 0..5 {
        assert!(decide(&engine, &login).is_allowed());
    }
    assert_eq!(
        rate_limited_rule(&decide(&engine, &login)),
        Some("auth_strict")
    );
    // Blocked everywhere now, for 900 s, and retrying does not extend it.
    for path in ["/api/auth/login", "/api/things"] {
        let req = if path.contains("auth") {
            login.clone()
        } else {
            Req::get(path)
        };
        match decide(&engine, &req) {
            Decision::Blocked { by, retry_after } => {
                assert_eq!(by, BlockedBy::Violation);
                assert_eq!(retry_after, Some(Duration::from_secs(900)));
            }
            other => panic!("expected a block, got {other:?}"),
        }
    }
    clock.advance(Duration::from_secs(899));
    assert!(matches!(decide(&engine, &login), Decision::Blocked { .. }));
    clock.advance(Duration::from_secs(1));
    assert!(
        decide(&engine, &login).is_allowed(),
        "the block ended and the window slid"
    );
    // Another client was never affected.
    assert!(decide(&engine, &login.clone().from("198.51.100.1")).is_allowed());
}

#[test]
fn rule_paths_and_methods_narrow_where_a_rule_counts() {
    let (engine, _clock) = engine(ROUTED);
    for _ in 0..3 {
        assert!(decide(&engine, &Req::post("/api/items")).is_allowed());
    }
    assert_eq!(
        rate_limited_rule(&decide(&engine, &Req::post("/api/items/7"))),
        Some("writes")
    );
    // GET and other paths are not counted by `writes`.
    assert!(decide(&engine, &Req::get("/api/items")).is_allowed());
    assert!(decide(&engine, &Req::post("/api/orders")).is_allowed());
}

#[test]
fn without_routes_every_rule_applies_and_with_routes_an_unmatched_request_has_no_route() {
    let (engine, _clock) = engine(
        "rules:\n  - { name: a, limit: 1, window: 60 }\n  - { name: b, limit: 5, window: 60, paths: [/x] }\n",
    );
    assert_eq!(
        decide(&engine, &Req::get("/x"))
            .quota()
            .map(|q| q.remaining),
        Some(0)
    );
    assert_eq!(
        rate_limited_rule(&decide(&engine, &Req::get("/y"))),
        Some("a")
    );

    let (routed, _clock) = integration_tests::engine(ROUTED);
    assert!(matches!(
        decide(&routed, &Req::get("/elsewhere")),
        Decision::NoRoute
    ));
}

#[test]
fn whitelist_bypasses_and_blacklist_blocks_with_the_most_specific_entry_winning() {
    let (engine, clock) = engine(
        r#"
rules: [{ name: one, limit: 1, window: 60 }]
lists:
  whitelist: [192.168.0.0/16, "2001:db8::/32"]
  blacklist: [192.168.66.0/24, 203.0.113.0/24]
"#,
    );
    for _ in 0..10 {
        let d = decide(&engine, &Req::get("/").from("192.168.1.1"));
        assert!(matches!(
            d,
            Decision::Allow {
                whitelisted: true,
                ..
            }
        ));
        assert!(decide(&engine, &Req::get("/").from("2001:db8::5")).is_allowed());
    }
    let blocked = decide(&engine, &Req::get("/").from("192.168.66.6"));
    assert!(matches!(
        blocked,
        Decision::Blocked {
            by: BlockedBy::Blacklist,
            retry_after: None
        }
    ));
    assert!(matches!(
        decide(&engine, &Req::get("/").from("203.0.113.9")),
        Decision::Blocked { .. }
    ));

    // A run-time entry with a duration expires on time.
    engine.lists().add(
        parse_entry("198.51.100.7").unwrap(),
        ListKind::Blacklist,
        Some(engine.now() + 60_000_000_000),
    );
    match decide(&engine, &Req::get("/").from("198.51.100.7")) {
        Decision::Blocked {
            by: BlockedBy::Blacklist,
            retry_after,
        } => {
            assert_eq!(retry_after, Some(Duration::from_secs(60)))
        }
        other => panic!("expected blacklist, got {other:?}"),
    }
    clock.advance(Duration::from_secs(60));
    assert!(decide(&engine, &Req::get("/").from("198.51.100.7")).is_allowed());
}

#[test]
fn the_whitelist_beats_an_earned_block() {
    let (engine, _clock) = engine(
        "rules: [{ name: one, limit: 1, window: 60, block_duration: 600 }]\nlists: { whitelist: [10.1.1.1] }\n",
    );
    engine.blocks().block(
        "ip:10.1.1.1",
        ratethrottle::protect::blocks::BlockReason::Ddos,
        None,
        0,
        u64::MAX,
    );
    assert!(decide(&engine, &Req::get("/").from("10.1.1.1")).is_allowed());
}

#[test]
fn shadow_rules_report_without_rejecting() {
    let (engine, _clock) = engine(
        "rules:\n  - { name: real, limit: 100, window: 60 }\n  - { name: dry, limit: 2, window: 60, shadow: true }\n",
    );
    let mut shadow_hits = 0;
    for _ in 0..5 {
        match decide(&engine, &Req::get("/")) {
            Decision::Allow {
                shadow_denied,
                quota,
                ..
            } => {
                shadow_hits += shadow_denied.len();
                assert_eq!(quota.map(|q| q.rule.to_string()), Some("real".into()));
            }
            other => panic!("a shadow rule rejected: {other:?}"),
        }
    }
    assert_eq!(shadow_hits, 3);
    let stats = engine.stats().snapshot();
    assert_eq!(stats.rules["dry"].shadow_blocked, 3);
    assert_eq!(stats.blocked_requests, 0);
    assert!(
        stats
            .recent_violations
            .iter()
            .all(|v| v.shadow && v.rule == "dry")
    );
}

#[test]
fn violation_handlers_receive_each_violation_off_the_request_path() {
    let (engine, clock) =
        engine("rules: [{ name: tight, limit: 2, window: 10s, strategy: fixed_window }]\n");
    let seen: Arc<Mutex<Vec<Violation>>> = Arc::default();
    let sink = Arc::clone(&seen);
    engine.on_violation(move |v| sink.lock().push(v.clone()));
    for _ in 0..4 {
        decide(&engine, &Req::get("/").from("203.0.113.50"));
    }
    // Handlers run on their own thread; wait for delivery, not for time.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while engine.violation_hub().delivered() < 2 && std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
    let seen = seen.lock();
    assert_eq!(seen.len(), 2);
    let first = &seen[0];
    assert_eq!(first.identity, "ip:203.0.113.50");
    assert_eq!(first.rule, "tight");
    assert_eq!((first.requests_made, first.limit), (3, 2));
    assert_eq!(first.time_nanos() / 1_000_000_000, clock_secs(&clock));
    assert!(!first.shadow);
}

fn clock_secs(clock: &ratethrottle::clock::ManualClock) -> u64 {
    use ratethrottle::clock::Clock;
    clock.now() / 1_000_000_000
}

#[test]
fn a_slow_violation_handler_never_blocks_requests() {
    // DDoS protection would block this flood from one address after a few
    // dozen requests, and blocked requests make no violations.
    let (engine, _clock) = engine(
        "rules: [{ name: tight, limit: 1, window: 1h }]\nddos_protection: { enabled: false }\n",
    );
    let release = Arc::new(std::sync::Barrier::new(2));
    let gate = Arc::clone(&release);
    engine.on_violation(move |_| {
        gate.wait();
    });
    // The handler is stuck on the first event; 10,000 more violations still return at once.
    for _ in 0..10_001 {
        decide(&engine, &Req::get("/"));
    }
    assert!(
        engine.violation_hub().dropped() > 0,
        "the bounded queue dropped the excess"
    );
    release.wait();
}

#[test]
fn statistics_count_requests_violations_and_offenders() {
    let (engine, _clock) = engine("rules: [{ name: r, limit: 3, window: 60 }]\n");
    for _ in 0..10 {
        decide(&engine, &Req::get("/").from("203.0.113.1"));
    }
    decide(&engine, &Req::get("/").from("203.0.113.2"));
    let stats = engine.stats().snapshot();
    assert_eq!(
        (
            stats.total_requests,
            stats.allowed_requests,
            stats.blocked_requests
        ),
        (11, 4, 7)
    );
    assert!(
        (stats.block_rate - 63.64).abs() < 0.01,
        "{}",
        stats.block_rate
    );
    assert_eq!(stats.top_offenders[0].identity, "ip:203.0.113.1");
    assert_eq!(stats.top_offenders[0].violations, 7);
    assert_eq!((stats.rules["r"].allowed, stats.rules["r"].blocked), (4, 7));
    engine.stats().reset();
    assert_eq!(engine.stats().snapshot().total_requests, 0);
}

#[test]
fn forwarded_for_counts_the_real_client_only_behind_a_trusted_proxy() {
    let yaml =
        "global: { trusted_proxies: [10.0.0.0/8] }\nrules: [{ name: r, limit: 1, window: 60 }]\n";
    let (engine, _clock) = engine(yaml);
    // Two clients behind our proxy are counted apart.
    let via_proxy = |client: &str| {
        Req::get("/")
            .from("10.0.0.2")
            .header("x-forwarded-for", client)
    };
    assert!(decide(&engine, &via_proxy("198.51.100.1")).is_allowed());
    assert!(decide(&engine, &via_proxy("198.51.100.2")).is_allowed());
    assert!(!decide(&engine, &via_proxy("198.51.100.1")).is_allowed());
    // A direct client cannot dodge its limit by inventing X-Forwarded-For.
    let direct = |spoof: &str| {
        Req::get("/")
            .from("203.0.113.3")
            .header("x-forwarded-for", spoof)
    };
    assert!(decide(&engine, &direct("1.1.1.1")).is_allowed());
    assert!(!decide(&engine, &direct("2.2.2.2")).is_allowed());
}

#[test]
fn identity_keys_count_api_keys_apart_and_fall_back_to_the_address() {
    let (engine, _clock) =
        engine("rules: [{ name: r, limit: 1, window: 60, key: header:x-api-key }]\n");
    assert!(decide(&engine, &Req::get("/").header("x-api-key", "alpha")).is_allowed());
    assert!(decide(&engine, &Req::get("/").header("x-api-key", "beta")).is_allowed());
    assert!(!decide(&engine, &Req::get("/").header("x-api-key", "alpha")).is_allowed());
    assert!(
        decide(&engine, &Req::get("/")).is_allowed(),
        "no key: counted by address"
    );
    assert!(!decide(&engine, &Req::get("/")).is_allowed());
}

#[test]
fn a_disabled_gateway_decides_nothing() {
    let (engine, _clock) =
        engine("global: { enabled: false }\nrules: [{ name: r, limit: 1, window: 60 }]\n");
    for _ in 0..5 {
        assert!(decide(&engine, &Req::get("/")).is_allowed());
    }
}

#[test]
fn a_reload_keeps_counters_of_unchanged_rules_and_applies_new_limits() {
    let (engine, _clock) = engine(
        "rules:\n  - { name: kept, limit: 5, window: 60, strategy: fixed_window }\n  - { name: renamed, limit: 5, window: 60, paths: [/r] }\n",
    );
    for _ in 0..3 {
        decide(&engine, &Req::get("/"));
    }
    engine.apply_config(config_from(
        "rules:\n  - { name: kept, limit: 4, window: 60, strategy: fixed_window }\n  - { name: other, limit: 5, window: 60, paths: [/r] }\n",
    ));
    // `kept` carries its 3 and now allows 4: one left.
    assert_eq!(
        decide(&engine, &Req::get("/")).quota().map(|q| q.remaining),
        Some(0)
    );
    assert!(!decide(&engine, &Req::get("/")).is_allowed());
    // A rule under a new name starts afresh.
    let fresh = decide(&engine, &Req::get("/r"));
    assert!(!fresh.is_allowed(), "`kept` still applies to /r");
}

#[test]
fn eight_threads_through_the_engine_allow_exactly_the_limit() {
    for strategy in [
        "sliding_window",
        "sliding_window_counter",
        "token_bucket",
        "leaky_bucket",
        "fixed_window",
    ] {
        // One address hammering from 8 threads is a flood to DDoS protection:
        // off, so that only the rule decides.
        let yaml = format!(
            "rules: [{{ name: hot, limit: 500, window: 1h, strategy: {strategy} }}]\n\
             ddos_protection: {{ enabled: false }}\n"
        );
        let (engine, _clock) = engine(&yaml);
        let allowed = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (engine, allowed) = (Arc::clone(&engine), Arc::clone(&allowed));
                std::thread::spawn(move || {
                    let request = Req::get("/");
                    block_on(async {
                        for _ in 0..250 {
                            if engine.decide(&request.facts()).await.is_allowed() {
                                allowed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(allowed.load(Ordering::Relaxed), 500, "{strategy}");
    }
}

/// A store that is down, as a dead Redis would be.
struct DownStore {
    /// Whether it claims to answer without waiting (the engine's
    /// synchronous path).
    at_once: bool,
    /// Whether it then waits for ever instead of failing: the engine must
    /// treat that as a store error rather than block on it.
    waits: bool,
}

impl ratethrottle::store::Store for DownStore {
    fn check<'a>(
        &'a self,
        _checks: &'a [ratethrottle::store::LimitCheck<'a>],
        _now: u64,
    ) -> ratethrottle::store::StoreCall<'a> {
        if self.waits {
            return ratethrottle::store::StoreCall::later(std::future::pending());
        }
        ratethrottle::store::StoreCall::ready(Err(ratethrottle::store::StoreError::Unavailable(
            "connection refused".into(),
        )))
    }
    fn sweep(&self, _now: u64) -> usize {
        0
    }
    fn key_count(&self) -> Option<usize> {
        None
    }
    fn kind(&self) -> &'static str {
        "down"
    }
    fn answers_at_once(&self) -> bool {
        self.at_once
    }
}

#[test]
fn an_unreachable_store_follows_on_error() {
    use ratethrottle::clock::ManualClock;
    use ratethrottle::engine::Engine;
    let stores = [(false, false), (true, false), (true, true)];
    for (policy, expect_allowed) in [("allow", true), ("deny", false)] {
        for (at_once, waits) in stores {
            let yaml = format!(
                "storage: {{ on_error: {policy} }}\nrules: [{{ name: r, limit: 1, window: 60 }}]\n"
            );
            let store = Arc::new(DownStore { at_once, waits });
            let engine = Engine::new(config_from(&yaml), store, ManualClock::at_test_epoch());
            for _ in 0..3 {
                let decision = decide(&engine, &Req::get("/"));
                assert_eq!(decision.is_allowed(), expect_allowed, "{policy}");
                if !expect_allowed {
                    assert!(matches!(decision, Decision::Unavailable { .. }));
                }
            }
            assert_eq!(
                engine.store_errors(),
                3,
                "{policy}, at once {at_once}, waits {waits}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_sweeper_task_frees_idle_keys_on_its_interval() {
    let (engine, clock) =
        engine("rules: [{ name: r, limit: 10, window: 1s, strategy: token_bucket }]\n");
    for i in 0..100 {
        engine
            .decide(&Req::get("/").from(&format!("10.9.0.{i}")).facts())
            .await;
    }
    assert_eq!(engine.store().key_count(), Some(100));
    let sweeper = ratethrottle::engine::Engine::spawn_sweeper(&engine, Duration::from_secs(30));
    clock.advance(Duration::from_secs(5));
    tokio::time::sleep(Duration::from_secs(31)).await;
    // The paused runtime advanced its timer; let the blocking sweep finish.
    for _ in 0..100 {
        if engine.store().key_count() == Some(0) {
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(engine.store().key_count(), Some(0));
    sweeper.abort();
}

#[test]
fn request_counters_split_by_route_rule_and_decision() {
    use ratethrottle::metrics::DecisionKind;
    let (engine, _clock) = engine(&ROUTED.replace("block_duration: 900", "block_duration: 0"));
    for _ in 0..7 {
        decide(&engine, &Req::post("/api/auth/login"));
    }
    decide(&engine, &Req::get("/nowhere"));
    let counters = engine.request_counters();
    let login = counters.get("login", "auth_strict");
    assert_eq!(login.get(DecisionKind::Allowed), 5);
    assert_eq!(login.get(DecisionKind::RateLimited), 2);
    assert_eq!(counters.get("", "").get(DecisionKind::NoRoute), 1);
    assert_eq!(engine.decision_latency().count(), 8);
}

#[test]
fn a_reload_that_lowers_a_bucket_limit_keeps_a_sane_bucket() {
    // The bucket's state must mean the same thing under the new limit: after
    // 100/min becomes 3/min, at most 3 more pass and the wait is under a minute.
    for strategy in ["token_bucket", "leaky_bucket"] {
        let yaml = |limit: u64| {
            format!("rules: [{{ name: b, limit: {limit}, window: 1m, strategy: {strategy} }}]\n")
        };
        let (engine, _clock) = engine(&yaml(100));
        assert!(decide(&engine, &Req::get("/")).is_allowed());
        engine.apply_config(config_from(&yaml(3)));
        let mut allowed = 0;
        let mut waits = Vec::new();
        for _ in 0..5 {
            match decide(&engine, &Req::get("/")) {
                Decision::Allow { .. } => allowed += 1,
                Decision::RateLimited { retry_after, quota } => {
                    assert_eq!(quota.limit, 3);
                    waits.push(retry_after);
                }
                other => panic!("{other:?}"),
            }
        }
        assert!((2..=3).contains(&allowed), "{strategy}: {allowed}");
        assert!(
            waits.iter().all(|w| *w <= Duration::from_secs(60)),
            "{strategy}: {waits:?}"
        );
    }
}
