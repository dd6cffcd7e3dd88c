//! The Redis store against a real Redis: the same decisions as the memory
//! store, exact shared limits across gateway instances, the on_error policy
//! and recovery when Redis dies, the Python package's Redis defects, and
//! Redis Cluster. Skips (loudly) without Redis unless RATETHROTTLE_REQUIRE_REDIS=1.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::StatusCode;
use integration_tests::net::{get, http1_client, send, start_gateway, start_upstream};
use integration_tests::redis::{
    RedisCluster, RedisServer, delete_prefix, query, redis_available, redis_binaries, redis_config,
    redis_url, store, unique_prefix,
};
use proptest::prelude::*;
use ratethrottle::limit::{Limit, StrategyKind, Verdict};
use ratethrottle::store::{CounterKey, LimitCheck, MemoryStore, RedisStoreOptions, Store};

const T0_MICROS: u64 = 1_700_000_000_000_000;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fn test_clock() -> RedisStoreOptions {
    RedisStoreOptions {
        caller_clock: true,
        deny_cache: false,
        ..RedisStoreOptions::default()
    }
}

// ---------------------------------------------------------------------------
// Memory and Redis decide identically (fake clock, every strategy).

#[derive(Debug, Clone)]
struct RuleSpec {
    strategy: StrategyKind,
    limit: u64,
    window_us: u64,
    burst: u64,
    shadow: bool,
}

#[derive(Debug, Clone)]
struct Step {
    advance_us: u64,
    cost: u64,
    /// Which rules the request checks (a non-empty subset, as a bit mask).
    rules: u8,
}

fn rule_spec(max_limit: u64, windows: Vec<u64>) -> impl Strategy<Value = RuleSpec> {
    (
        prop::sample::select(StrategyKind::ALL.to_vec()),
        1..=max_limit,
        prop::sample::select(windows),
        0u64..=3,
        prop::bool::weighted(0.2),
    )
        .prop_map(|(strategy, limit, window_us, extra, shadow)| RuleSpec {
            strategy,
            limit,
            window_us,
            burst: limit + extra * limit / 2,
            shadow,
        })
}

fn steps(max_advance: u64, max_cost: u64) -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (
            prop_oneof![Just(0u64), 0..2_000u64, 0..max_advance],
            prop_oneof![4 => Just(1u64), 1 => 1..=max_cost],
            1u8..8,
        )
            .prop_map(|(advance_us, cost, rules)| Step {
                advance_us,
                cost,
                rules,
            }),
        1..40,
    )
}

fn limit_of(spec: &RuleSpec, unit: u64) -> Limit {
    Limit::new(
        spec.strategy,
        spec.limit,
        spec.window_us * unit,
        Some(spec.burst),
    )
}

fn checks<'a>(
    specs: &[RuleSpec],
    step: &Step,
    identity: &'a str,
    unit: u64,
) -> Vec<LimitCheck<'a>> {
    const NAMES: [&str; 3] = ["r0", "r1", "r2"];
    specs
        .iter()
        .enumerate()
        .filter(|(i, _)| step.rules & (1 << i) != 0)
        .map(|(i, spec)| LimitCheck {
            key: CounterKey {
                rule: NAMES[i],
                rule_seed: i as u64 + 1,
                identity,
            },
            limit: limit_of(spec, unit),
            cost: step.cost,
            enforce: !spec.shadow,
        })
        .collect()
}

/// A memory verdict in microsecond units, widened to nanoseconds.
fn widened(v: Verdict) -> Verdict {
    Verdict {
        reset_after: v.reset_after * 1_000,
        retry_after: v.retry_after.map(|r| r * 1_000),
        ..v
    }
}

/// Runs the same requests through the memory store (in microsecond units,
/// the Redis store's resolution) and the Redis store (nanoseconds from a
/// fake clock), and expects every verdict field to match.
fn compare(specs: &[RuleSpec], steps: &[Step], start_offset: u64) -> Result<(), TestCaseError> {
    compare_with(specs, steps, start_offset, false)
}

/// With `cached`, the local cache of denials is on, and what must match is
/// each batch's decision (the cached verdicts of a batch's other checks are
/// those of the denial, by design).
fn compare_with(
    specs: &[RuleSpec],
    steps: &[Step],
    start_offset: u64,
    cached: bool,
) -> Result<(), TestCaseError> {
    let prefix = unique_prefix("compare");
    let url = redis_url();
    let options = RedisStoreOptions {
        deny_cache: cached,
        ..test_clock()
    };
    let result = runtime().block_on(async {
        let redis = store(&redis_config(&url, &prefix), options);
        let memory = MemoryStore::new();
        let mut now_us = T0_MICROS + start_offset;
        for (n, step) in steps.iter().enumerate() {
            now_us += step.advance_us;
            let identity = "ip:192.0.2.1";
            let mem_checks = checks(specs, step, identity, 1);
            let redis_checks = checks(specs, step, identity, 1_000);
            if mem_checks.is_empty() {
                continue;
            }
            let expected: Vec<Verdict> = memory
                .check_now(&mem_checks, now_us)
                .into_iter()
                .map(widened)
                .collect();
            let got = redis
                .check(&redis_checks, now_us * 1_000)
                .await
                .map_err(|e| TestCaseError::fail(format!("redis: {e}")))?;
            if cached {
                let decision = |v: &[Verdict]| {
                    mem_checks
                        .iter()
                        .zip(v)
                        .all(|(c, v)| !c.enforce || v.allowed)
                };
                prop_assert_eq!(
                    decision(&got),
                    decision(&expected),
                    "step {} of {:?}",
                    n,
                    steps
                );
            } else {
                prop_assert_eq!(got.to_vec(), expected, "step {} of {:?}", n, steps);
            }
        }
        Ok(())
    });
    delete_prefix(&url, &prefix);
    result
}

const WINDOWS_US: [u64; 7] = [1, 999, 1_000, 7_000, 250_000, 1_000_000, 3_000_000];

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn memory_and_redis_decide_identically(
        specs in prop::collection::vec(rule_spec(12, WINDOWS_US.to_vec()), 1..=3),
        steps in steps(4_000_000, 5),
        offset in 0u64..10_000_000,
    ) {
        if !redis_available("memory_and_redis_decide_identically") {
            return Ok(());
        }
        compare(&specs, &steps, offset)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, failure_persistence: None, ..ProptestConfig::default() })]

    /// The local cache of denials never changes a decision.
    #[test]
    fn the_cache_of_denials_never_changes_a_decision(
        specs in prop::collection::vec(rule_spec(6, WINDOWS_US.to_vec()), 1..=3),
        steps in steps(2_000_000, 3),
        offset in 0u64..10_000_000,
    ) {
        if !redis_available("the_cache_of_denials_never_changes_a_decision") {
            return Ok(());
        }
        compare_with(&specs, &steps, offset, true)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 60, failure_persistence: None, ..ProptestConfig::default() })]

    /// Limits up to 2^31 and windows up to a year: products beyond 2^53 take
    /// the script's exact slow path and must still match to the microsecond.
    #[test]
    fn memory_and_redis_agree_on_huge_limits_and_windows(
        specs in prop::collection::vec(
            rule_spec(1 << 31, vec![1, 3_600_000_000, 86_400_000_000, 31_622_400_000_000])
                .prop_filter("the log holds one entry per request", |s| {
                    s.strategy != StrategyKind::SlidingWindow || s.limit <= 1_000
                }),
            1..=3,
        ),
        steps in steps(40_000_000_000_000, 1 << 20)
            .prop_map(|steps| steps.into_iter().map(|s| Step { cost: s.cost.min(100), ..s }).collect::<Vec<_>>()),
        offset in 0u64..1_000_000_000_000,
    ) {
        if !redis_available("memory_and_redis_agree_on_huge_limits_and_windows") {
            return Ok(());
        }
        compare(&specs, &steps, offset)?;
    }
}

// ---------------------------------------------------------------------------
// The Python package's Redis defects (seed-compat.md).

/// Its strategies read, then wrote: 8 threads against 1,000 let 2,000-5,000
/// through. Every decision must be one atomic script call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_allow_exactly_the_limit_for_every_strategy() {
    if !redis_available("concurrent_requests_allow_exactly_the_limit_for_every_strategy") {
        return;
    }
    const LIMIT: u64 = 300;
    let prefix = unique_prefix("atomic");
    let redis = store(
        &redis_config(&redis_url(), &prefix),
        RedisStoreOptions::default(),
    );
    for strategy in StrategyKind::ALL {
        let allowed = Arc::new(AtomicU64::new(0));
        let limit = Limit::new(strategy, LIMIT, 3_600_000_000_000, None);
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (redis, allowed) = (Arc::clone(&redis), Arc::clone(&allowed));
                tokio::spawn(async move {
                    for _ in 0..(LIMIT / 4) {
                        let checks = [LimitCheck {
                            key: CounterKey {
                                rule: strategy.as_str(),
                                rule_seed: 7,
                                identity: "ip:192.0.2.7",
                            },
                            limit,
                            cost: 1,
                            enforce: true,
                        }];
                        if redis.check(&checks, 0).await.expect("redis")[0].allowed {
                            allowed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
        assert_eq!(allowed.load(Ordering::Relaxed), LIMIT, "{strategy}");
    }
    delete_prefix(&redis_url(), &prefix);
}

/// Its scripts returned a table holding a nil, which Redis cuts short, and
/// every request was then denied. Ours answer every field of every check, in
/// every state, through the real script.
#[tokio::test]
async fn every_check_of_a_batch_gets_a_full_answer_allowed_or_not() {
    if !redis_available("every_check_of_a_batch_gets_a_full_answer_allowed_or_not") {
        return;
    }
    let prefix = unique_prefix("nil");
    let redis = store(&redis_config(&redis_url(), &prefix), test_clock());
    let now = T0_MICROS * 1_000;
    for strategy in StrategyKind::ALL {
        let limit = Limit::new(strategy, 2, 60_000_000_000, None);
        let check = |rule, enforce| LimitCheck {
            key: CounterKey {
                rule,
                rule_seed: 1,
                identity: strategy.as_str(),
            },
            limit,
            cost: 1,
            enforce,
        };
        let batch = [check("a", true), check("b", false)];
        let first = redis.check(&batch, now).await.expect("redis");
        assert_eq!(first.len(), 2);
        assert!(first[0].allowed, "{strategy}: a fresh key is allowed");
        assert_eq!(first[0].remaining, 1);
        let _ = redis.check(&batch, now).await.expect("redis");
        let denied = redis.check(&batch, now).await.expect("redis");
        assert_eq!(denied.len(), 2, "{strategy}");
        assert!(!denied[0].allowed && !denied[1].allowed);
        assert_eq!(denied[0].remaining, 0);
        assert!(denied[0].retry_after.is_some_and(|r| r > 0));
        assert!(denied[0].reset_after > 0);
        // A later, fresh identity is not denied by the other's state.
        let other = [LimitCheck {
            key: CounterKey {
                rule: "a",
                rule_seed: 1,
                identity: "someone-else",
            },
            ..batch[0]
        }];
        assert!(redis.check(&other, now).await.expect("redis")[0].allowed);
        delete_prefix(&redis_url(), &prefix);
    }
}

/// Keys are `{prefix}{identity}:{rule}:{seed}` and always carry a TTL.
#[tokio::test]
async fn keys_are_tagged_by_identity_and_always_expire() {
    if !redis_available("keys_are_tagged_by_identity_and_always_expire") {
        return;
    }
    let prefix = unique_prefix("ttl");
    let url = redis_url();
    let redis = store(&redis_config(&url, &prefix), RedisStoreOptions::default());
    for strategy in StrategyKind::ALL {
        let limit = Limit::new(strategy, 5, 10_000_000_000, None);
        let checks = [LimitCheck {
            key: CounterKey {
                rule: strategy.as_str(),
                rule_seed: 0xab,
                identity: "ip:198.51.100.1",
            },
            limit,
            cost: 1,
            enforce: true,
        }];
        assert!(redis.check(&checks, 0).await.expect("redis")[0].allowed);
        let key = format!("{prefix}{{ip:198.51.100.1}}:{strategy}:00000000000000ab");
        let ttl: i64 = query(&url, redis::cmd("PTTL").arg(&key)).expect("pttl");
        assert!(
            (1..=21_000).contains(&ttl),
            "{strategy}: {key} has TTL {ttl} ms"
        );
    }
    delete_prefix(&url, &prefix);
}

/// A client flooding past its limit is answered locally until its
/// retry-after: no Redis call per request.
#[tokio::test]
async fn a_flood_from_one_client_costs_no_redis_calls() {
    if !redis_available("a_flood_from_one_client_costs_no_redis_calls") {
        return;
    }
    let prefix = unique_prefix("flood");
    let redis = store(
        &redis_config(&redis_url(), &prefix),
        RedisStoreOptions::default(),
    );
    let limit = Limit::new(StrategyKind::FixedWindow, 3, 3_600_000_000_000, None);
    let checks = [LimitCheck {
        key: CounterKey {
            rule: "flood",
            rule_seed: 1,
            identity: "ip:203.0.113.9",
        },
        limit,
        cost: 1,
        enforce: true,
    }];
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    };
    for _ in 0..4 {
        redis.check(&checks, now()).await.expect("redis");
    }
    let metrics = redis.metrics().expect("redis metrics");
    let calls = metrics.call_duration.count();
    for _ in 0..1_000 {
        let v = redis.check(&checks, now()).await.expect("redis");
        assert!(!v[0].allowed && v[0].retry_after.is_some());
    }
    assert!(
        metrics.call_duration.count() <= calls + 2,
        "the flood reached Redis"
    );
    assert!(metrics.local_denials.load(Ordering::Relaxed) >= 998);
    delete_prefix(&redis_url(), &prefix);
}

/// A Redis that accepts connections and never answers (a hung node, a cut
/// network path): calls time out, then the breaker opens and answers at once,
/// so the dead server costs one timeout per probe interval, not per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_redis_costs_one_timeout_per_probe_not_per_request() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket); // read nothing, answer nothing
        }
    });
    let mut config = redis_config(&format!("redis://{addr}"), "silent:");
    config.timeout = Duration::from_millis(100);
    let redis = store(&config, RedisStoreOptions::default());
    let limit = Limit::new(StrategyKind::FixedWindow, 10, 60_000_000_000, None);
    let requests = Arc::new(AtomicU64::new(0));
    let slowest = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_millis(1_600);
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (redis, requests, slowest) = (
                Arc::clone(&redis),
                Arc::clone(&requests),
                Arc::clone(&slowest),
            );
            tokio::spawn(async move {
                let identity = format!("ip:192.0.2.{i}");
                while Instant::now() < until {
                    let checks = [LimitCheck {
                        key: CounterKey {
                            rule: "r",
                            rule_seed: 1,
                            identity: &identity,
                        },
                        limit,
                        cost: 1,
                        enforce: true,
                    }];
                    let started = Instant::now();
                    assert!(redis.check(&checks, 0).await.is_err());
                    slowest.fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                    requests.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    holder.abort();
    let calls = redis.metrics().expect("metrics").call_duration.count();
    let requests = requests.load(Ordering::Relaxed);
    // The first wave (16 in flight) times out; after that, about one probe
    // per 500 ms plus the idle health ping.
    assert!(
        calls <= 16 + 8,
        "{calls} Redis calls for {requests} requests"
    );
    assert!(requests > 1_000, "answered at once while open: {requests}");
    assert!(
        slowest.load(Ordering::Relaxed) < 400,
        "no request waits much longer than the timeout"
    );
    assert_ne!(
        redis.breaker_state(),
        ratethrottle::store::BreakerState::Closed
    );
}

// ---------------------------------------------------------------------------
// Gateways sharing one Redis.

fn gateway_yaml(redis: &str, prefix: &str, on_error: &str, timeout: &str, limit: u64) -> String {
    format!(
        r#"
server: {{ listen: 127.0.0.1:0 }}
admin: {{ listen: 127.0.0.1:0 }}
storage:
  type: redis
  redis: {{ url: "{redis}", key_prefix: "{prefix}", timeout: {timeout}, connect_timeout: 200ms }}
  on_error: {on_error}
upstreams:
  default: {{ url: "http://{{upstream}}", request_timeout: 5s }}
# Hundreds of requests from one address are the point here, not an attack.
ddos_protection: {{ enabled: false }}
rules:
  - {{ name: shared, limit: {limit}, window: 1h, strategy: sliding_window, key: "header:x-client" }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_exact_limit() {
    if !redis_available("two_gateways_share_one_exact_limit") {
        return;
    }
    let upstream = start_upstream().await;
    let prefix = unique_prefix("two");
    let yaml = gateway_yaml(&redis_url(), &prefix, "allow", "2s", 50);
    let a = start_gateway(&yaml, Some(upstream.addr)).await;
    let b = start_gateway(&yaml, Some(upstream.addr)).await;
    wait_ready(a.admin()).await;
    wait_ready(b.admin()).await;
    let client = http1_client();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let url = if i % 2 == 0 { a.url("/x") } else { b.url("/x") };
        let client = client.clone();
        tasks.spawn(async move { send(&client, get(&url, &[])).await.status });
    }
    let (mut ok, mut limited) = (0, 0);
    while let Some(status) = tasks.join_next().await {
        match status.expect("task") {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((ok, limited), (50, 150));
    assert_eq!(
        a.gateway.engine().store_errors() + b.gateway.engine().store_errors(),
        0
    );
    delete_prefix(&redis_url(), &prefix);
}

/// A reload applies a new key_prefix (and timeout) without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_a_new_key_prefix() {
    if !redis_available("a_reload_applies_a_new_key_prefix") {
        return;
    }
    let url = redis_url();
    let (first, second) = (unique_prefix("reload-a"), unique_prefix("reload-b"));
    let upstream = start_upstream().await;
    let gw = start_gateway(
        &gateway_yaml(&url, &first, "allow", "2s", 5),
        Some(upstream.addr),
    )
    .await;
    wait_ready(gw.admin()).await;
    let keys = |prefix: &str| -> Vec<String> {
        query(&url, redis::cmd("KEYS").arg(format!("{prefix}*"))).expect("keys")
    };
    assert_eq!(
        burst_as("r", &gw.url("/x"), 1, Duration::from_secs(5)).await,
        [StatusCode::OK]
    );
    assert_eq!(keys(&first).len(), 1);

    let yaml = gateway_yaml(&url, &second, "allow", "1s", 5)
        .replace("{upstream}", &upstream.addr.to_string());
    gw.write_config(&yaml);
    gw.gateway
        .reload(ratethrottle::reload::ReloadTrigger::Api)
        .expect("reload");
    assert_eq!(
        burst_as("r", &gw.url("/x"), 1, Duration::from_secs(5)).await,
        [StatusCode::OK]
    );
    assert_eq!(keys(&second).len(), 1, "counted under the new prefix");
    delete_prefix(&url, &first);
    delete_prefix(&url, &second);
}

/// Sends `n` requests at once as `who`; every one must be answered within `bound`.
async fn burst_as(who: &str, url: &str, n: usize, bound: Duration) -> Vec<StatusCode> {
    let client = http1_client();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (client, url, who) = (client.clone(), url.to_string(), who.to_string());
        tasks.spawn(async move {
            tokio::time::timeout(bound, send(&client, get(&url, &[("x-client", &who)])))
                .await
                .map(|got| got.status)
        });
    }
    let mut statuses = Vec::new();
    while let Some(result) = tasks.join_next().await {
        statuses.push(result.expect("task").expect("a request was stuck"));
    }
    statuses
}

async fn burst(url: &str, n: usize, bound: Duration) -> Vec<StatusCode> {
    burst_as("anyone", url, n, bound).await
}

/// Waits (real time: a connection is being made) until /readyz says ready.
async fn wait_ready(admin: std::net::SocketAddr) {
    let url = format!("http://{admin}/readyz");
    let client = http1_client();
    let deadline = Instant::now() + Duration::from_secs(5);
    while send(&client, get(&url, &[])).await.status != StatusCode::OK {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn outage(on_error: &str, during: StatusCode) {
    let test = format!("redis_outage_{on_error}");
    if !redis_binaries(&test) {
        return;
    }
    let mut server = RedisServer::start();
    let upstream = start_upstream().await;
    let yaml = gateway_yaml(&server.url(), "rt:", on_error, "100ms", 5);
    let gw = start_gateway(&yaml, Some(upstream.addr)).await;
    wait_ready(gw.admin()).await;
    let url = gw.url("/x");
    let bound = Duration::from_secs(2);

    let before = burst_as("before", &url, 20, bound).await;
    assert_eq!(before.iter().filter(|s| **s == StatusCode::OK).count(), 5);

    // A client that was denied stays denied from the local cache; a new
    // one meets the dead Redis and gets on_error.
    server.kill();
    let cached = burst_as("before", &url, 10, bound).await;
    assert!(cached.iter().all(|s| *s == StatusCode::TOO_MANY_REQUESTS));
    for _ in 0..5 {
        let statuses = burst_as("during", &url, 40, bound).await;
        assert!(statuses.iter().all(|s| *s == during), "{statuses:?}");
    }
    assert!(gw.gateway.engine().store().readiness().is_err());

    server.restart();
    let back = Instant::now();
    // The restarted Redis is empty: 5 allowed, then 429 — once it is used again.
    loop {
        let statuses = burst_as("after", &url, 10, bound).await;
        if statuses.contains(&StatusCode::TOO_MANY_REQUESTS) {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(2),
            "no Redis decision 2 s after Redis came back: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gw.gateway.engine().store_errors() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dying_mid_load_fails_open_with_on_error_allow_and_recovers() {
    outage("allow", StatusCode::OK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dying_mid_load_fails_closed_with_on_error_deny_and_recovers() {
    outage("deny", StatusCode::SERVICE_UNAVAILABLE).await;
}

/// The gateway comes up while Redis is down (on_error applies), /readyz says
/// why it is not ready, and /metrics shows the open circuit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_starts_while_redis_is_down_and_reports_not_ready() {
    let dead = format!(
        "redis://127.0.0.1:{}",
        integration_tests::redis::free_port(false)
    );
    let upstream = start_upstream().await;
    let gw = start_gateway(
        &gateway_yaml(&dead, "rt:", "deny", "50ms", 5),
        Some(upstream.addr),
    )
    .await;
    let statuses = burst(&gw.url("/x"), 20, Duration::from_secs(2)).await;
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::SERVICE_UNAVAILABLE)
    );
    let admin = format!("http://{}", gw.admin());
    let client = http1_client();
    let ready = send(&client, get(&format!("{admin}/readyz"), &[])).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let message = ready.json()["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.contains("redis store does not answer"), "{message}");
    let metrics = send(&client, get(&format!("{admin}/metrics"), &[])).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("ratethrottle_store_breaker_state{store=\"redis\",state=\"open\"} 1")
            || text.contains(
                "ratethrottle_store_breaker_state{store=\"redis\",state=\"half_open\"} 1"
            ),
        "{text}"
    );
    assert!(text.contains("ratethrottle_store_call_duration_seconds_count{store=\"redis\"}"));
}

/// The Python package's host/port/db form reaches the same Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_host_port_form_connects_and_readyz_turns_ready() {
    if !redis_available("the_seed_host_port_form_connects_and_readyz_turns_ready") {
        return;
    }
    let server = if redis_binaries("seed form") {
        RedisServer::start()
    } else {
        return;
    };
    let upstream = start_upstream().await;
    let yaml = format!(
        r#"
server: {{ listen: 127.0.0.1:0 }}
admin: {{ listen: 127.0.0.1:0 }}
storage:
  type: redis
  redis: {{ host: 127.0.0.1, port: {}, db: 2, key_prefix: "seed:" }}
upstreams:
  default: {{ url: "http://{{upstream}}" }}
ddos_protection: {{ enabled: false }}
rules:
  - {{ name: r, limit: 2, window: 60, strategy: fixed_window }}
"#,
        server.port
    );
    let gw = start_gateway(&yaml, Some(upstream.addr)).await;
    wait_ready(gw.admin()).await;
    let statuses = burst(&gw.url("/x"), 3, Duration::from_secs(5)).await;
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::OK).count(), 2);
    let keys: Vec<String> = query(
        &format!("{}/2", server.url()),
        redis::cmd("KEYS").arg("seed:*"),
    )
    .expect("keys");
    assert_eq!(keys.len(), 1, "{keys:?}");
    let admin = format!("http://{}/readyz", gw.admin());
    let ready = send(&http1_client(), get(&admin, &[])).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(gw.gateway.engine().store().readiness(), Ok(()),);
}

// ---------------------------------------------------------------------------
// Redis Cluster.

fn cluster_store(cluster: &RedisCluster, prefix: &str) -> Arc<ratethrottle::store::RedisStore> {
    let mut config = redis_config("redis://unused", prefix);
    config.cluster = cluster.urls();
    config.timeout = Duration::from_secs(2);
    store(
        &config,
        RedisStoreOptions {
            deny_cache: false,
            ..RedisStoreOptions::default()
        },
    )
}

/// Checks of several rules whose identities hash to different slots, from
/// many tasks at once: every limit holds exactly, none is exceeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_batches_across_slots_keep_every_limit() {
    if !redis_binaries("cluster_batches_across_slots_keep_every_limit") {
        return;
    }
    let cluster = RedisCluster::start();
    let redis = cluster_store(&cluster, "c:");
    // One rule per identity kind: ip, api key, tenant — three slots.
    let limits = [
        Limit::new(StrategyKind::SlidingWindow, 40, 3_600_000_000_000, None),
        Limit::new(StrategyKind::FixedWindow, 1_000, 3_600_000_000_000, None),
        Limit::new(StrategyKind::TokenBucket, 1_000, 3_600_000_000_000, None),
    ];
    let identities = ["ip:192.0.2.1", "header:key-1", "tenant:gold"];
    let allowed = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (redis, allowed) = (Arc::clone(&redis), Arc::clone(&allowed));
        tasks.spawn(async move {
            for _ in 0..20 {
                let checks: Vec<LimitCheck<'_>> = (0..3)
                    .map(|i| LimitCheck {
                        key: CounterKey {
                            rule: ["a", "b", "c"][i],
                            rule_seed: i as u64,
                            identity: identities[i],
                        },
                        limit: limits[i],
                        cost: 1,
                        enforce: true,
                    })
                    .collect();
                let v = redis.check(&checks, 0).await.expect("cluster");
                if v.iter().all(|v| v.allowed) {
                    allowed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("task");
    }
    assert_eq!(allowed.load(Ordering::Relaxed), 40);
    // Denied batches were refunded: the roomy rules counted only the 40.
    let probe = |i: usize| LimitCheck {
        key: CounterKey {
            rule: ["a", "b", "c"][i],
            rule_seed: i as u64,
            identity: identities[i],
        },
        limit: limits[i],
        cost: 1,
        enforce: true,
    };
    let b = redis.check(&[probe(1)], 0).await.expect("cluster");
    let c = redis.check(&[probe(2)], 0).await.expect("cluster");
    assert_eq!(b[0].remaining, 1_000 - 41);
    assert!(
        (1_000 - 42..=1_000 - 41).contains(&c[0].remaining),
        "{:?}",
        c[0]
    );
}

/// A master restarted without persistence or replica loses its counters:
/// the documented bound is one window's quota for the keys of that node.
/// Keys on the other nodes keep theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_restart_loses_at_most_its_own_counters() {
    if !redis_binaries("a_cluster_node_restart_loses_at_most_its_own_counters") {
        return;
    }
    let mut cluster = RedisCluster::start();
    let redis = cluster_store(&cluster, "n:");
    let limit = Limit::new(StrategyKind::FixedWindow, 5, 3_600_000_000_000, None);
    let ids: Vec<String> = (0..30).map(|i| format!("ip:10.0.0.{i}")).collect();
    fn check(id: &str, limit: Limit) -> [LimitCheck<'_>; 1] {
        [LimitCheck {
            key: CounterKey {
                rule: "r",
                rule_seed: 1,
                identity: id,
            },
            limit,
            cost: 1,
            enforce: true,
        }]
    }
    for id in &ids {
        for _ in 0..5 {
            assert!(redis.check(&check(id, limit), 0).await.expect("cluster")[0].allowed);
        }
    }
    let restarted = cluster.nodes[0].port;
    cluster.restart_node(0);
    assert!(
        cluster.wait_ok(Duration::from_secs(20)),
        "cluster did not recover"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut readmitted = 0;
    for id in &ids {
        let mut verdict = redis.check(&check(id, limit), 0).await;
        // The client notices the restart on first use and reconnects.
        while verdict.is_err() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            verdict = redis.check(&check(id, limit), 0).await;
        }
        if verdict.expect("cluster answers again")[0].allowed {
            readmitted += 1;
        }
    }
    // Only identities whose slot lives on the restarted node start over.
    let on_node = ids
        .iter()
        .filter(|id| {
            cluster.owner_port(&format!("n:{{{id}}}:r:0000000000000001")) == Some(restarted)
        })
        .count();
    assert_eq!(
        readmitted, on_node,
        "only the restarted node's counters start over"
    );
    assert!(on_node > 0 && on_node < ids.len());
}

/// Waits (polling, at most `within`) until `check` holds.
async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check().await
}

/// Lists and blocks changed on one instance apply on the other within the
/// refresh (1 s, plus a round trip), and so do their removals (on an
/// instance that made the change itself less than 2 s before, after that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_and_blocks_changed_on_one_gateway_apply_on_the_other() {
    if !redis_available("lists_and_blocks_changed_on_one_gateway_apply_on_the_other") {
        return;
    }
    let upstream = start_upstream().await;
    let prefix = unique_prefix("shared");
    let yaml = gateway_yaml(&redis_url(), &prefix, "allow", "2s", 3)
        .replace(
            "admin: { listen: 127.0.0.1:0 }",
            "admin: { listen: 127.0.0.1:0, token: s3cret }",
        )
        .replace(
            "key: \"header:x-client\" }",
            "key: \"header:x-client\", block_duration: 10m }",
        );
    let a = start_gateway(&yaml, Some(upstream.addr)).await;
    let b = start_gateway(&yaml, Some(upstream.addr)).await;
    let client = http1_client();
    // A new caller name for every probe of the lists, so that probing never
    // spends a rule's quota (3 an hour per caller).
    let probes = AtomicU64::new(0);
    let status_on = |gateway: &integration_tests::net::RunningGateway, who: &'static str| {
        let who = match who {
            "anyone" => format!("probe-{}", probes.fetch_add(1, Ordering::Relaxed)),
            named => named.to_string(),
        };
        let (client, url) = (client.clone(), gateway.url("/x"));
        async move { send(&client, get(&url, &[("x-client", &who)])).await.status }
    };
    let admin =
        |gateway: &integration_tests::net::RunningGateway, method: &str, path: &str, body: &str| {
            let request = http::Request::builder()
                .method(method)
                .uri(format!("http://{}{path}", gateway.admin()))
                .header("authorization", "Bearer s3cret")
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    body.to_string(),
                )))
                .expect("request");
            let client = client.clone();
            async move { send(&client, request).await.status }
        };
    let within = Duration::from_secs(5);

    // A blacklist entry added on A refuses the address on B.
    assert_eq!(status_on(&b, "anyone").await, StatusCode::OK);
    assert_eq!(
        admin(
            &a,
            "POST",
            "/lists/blacklist",
            r#"{"entry":"127.0.0.1","duration":"1h"}"#
        )
        .await,
        StatusCode::CREATED
    );
    assert!(
        eventually(within, async || status_on(&b, "anyone").await
            == StatusCode::FORBIDDEN)
        .await
    );
    // Removed on B, it is gone on A too.
    assert_eq!(
        admin(&b, "DELETE", "/lists/blacklist/127.0.0.1", "").await,
        StatusCode::OK
    );
    assert!(
        eventually(within, async || status_on(&a, "anyone").await
            == StatusCode::OK)
        .await
    );

    // A violation block earned on A holds on B.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(status_on(&a, "mallory").await);
    }
    assert_eq!(statuses[3], StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");
    assert!(
        eventually(within, async || status_on(&b, "mallory").await
            == StatusCode::FORBIDDEN)
        .await
    );
    // Lifted on B, A serves the caller again (its quota is still spent: 429, not 403).
    assert_eq!(
        admin(&b, "DELETE", "/blocks/header%3Ax-client%3Dmallory", "").await,
        StatusCode::OK
    );
    assert!(
        eventually(within, async || status_on(&a, "mallory").await
            == StatusCode::TOO_MANY_REQUESTS)
        .await
    );
    delete_prefix(&redis_url(), &prefix);
}
