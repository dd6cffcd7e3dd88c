//! Running the gateway: the `monitor` dashboard against a live gateway,
//! violation and alert webhooks (JSON and Slack forms, retries, a burst that
//! must stay bounded), and the tower layer inside an axum service.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use integration_tests::hook::Receiver;
use integration_tests::net::{
    RunningGateway, Upstream, get, http1_client, send, start_gateway, start_upstream,
};
use integration_tests::{Req, cli, config_from, engine as make_engine};
use ratethrottle::alerts::{Dispatcher, Tuning};
use ratethrottle::cli::monitor::{Key, Link, MonitorState, Source, View, screen_text};
use ratethrottle::metrics::WebhookCounters;

const DASHBOARD: &str = r#"
server: { listen: 127.0.0.1:0 }
admin: { listen: 127.0.0.1:0 }
upstreams:
  default: { url: "http://{upstream}" }
rules:
  - { name: tight, limit: 3, window: 1h, block_duration: 10m }
  - { name: watch, limit: 1, window: 1h, shadow: true }
routes:
  - name: api
    match: { path_prefix: /api/ }
    rules: [tight, watch]
# Many requests back to back from one address: DDoS protection would block
# them and change the counts these tests assert.
ddos_protection: { enabled: false }
"#;

#[tokio::test]
async fn the_dashboard_shows_what_the_gateway_did() {
    let upstream = start_upstream().await;
    let gateway = start_gateway(DASHBOARD, Some(upstream.addr)).await;
    let source = Source::new(&format!("http://{}", gateway.admin()), None).expect("source");
    let mut state = MonitorState::new(source.url());
    state.apply(Duration::from_secs(0), source.read().await);

    // 3 allowed, the 4th rate limited (and blocked 10m), the 5th blocked.
    let client = http1_client();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            send(&client, get(&gateway.url("/api/items"), &[]))
                .await
                .status,
        );
    }
    assert_eq!(statuses[3], StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(statuses[4], StatusCode::FORBIDDEN);
    // One second later, as far as the rates are concerned.
    state.apply(Duration::from_secs(1), source.read().await);
    assert_eq!(state.link, Link::Up);

    let overview = screen_text(&state, 100, 30);
    println!("{overview}");
    for expected in [
        "● connected",
        "Requests/s  now 5.0",
        "Block rate  now 40.0%",
        "requests  5",
        "allowed   3",
        "blocked   2",
        "store ready",
        "reloads 0 ok, 0 failed",
        "ip:127.0.0.1",
    ] {
        assert!(
            overview.contains(expected),
            "{expected:?} missing:\n{overview}"
        );
    }

    state.key(Key::Char('2'));
    assert_eq!(state.view, View::Traffic);
    let traffic = screen_text(&state, 100, 30);
    // A table row as its words, borders left out.
    let row = |text: &str, starts: &str| {
        text.lines()
            .map(|l| {
                l.replace('│', " ")
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .find(|l| l.starts_with(starts))
            .unwrap_or_else(|| panic!("no row {starts:?}:\n{text}"))
    };
    assert_eq!(row(&traffic, "api tight"), "api tight 3 1 0", "{traffic}");
    // The blocked request was decided before any rule.
    assert_eq!(row(&traffic, "api -"), "api - 0 0 1", "{traffic}");
    assert_eq!(row(&traffic, "tight"), "tight 3 1 0", "{traffic}");
    assert!(row(&traffic, "watch").starts_with("watch 1 0"), "{traffic}");

    state.key(Key::Char('3'));
    let offenders = screen_text(&state, 100, 30);
    assert!(offenders.contains("Recent violations"), "{offenders}");
    assert!(offenders.contains("tight"), "{offenders}");
    let violations: Vec<String> = offenders
        .lines()
        .map(|l| {
            l.replace('│', " ")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    assert!(
        violations
            .iter()
            .any(|l| l.ends_with("ip:127.0.0.1 watch 2/1 yes")),
        "{offenders}"
    );
    assert!(
        violations
            .iter()
            .any(|l| l.ends_with("ip:127.0.0.1 tight 4/3")),
        "{offenders}"
    );

    state.key(Key::Char('4'));
    let blocks = screen_text(&state, 100, 30);
    assert!(blocks.contains("Active blocks (1)"), "{blocks}");
    let block = row(&blocks, "ip:127.0.0.1");
    assert!(
        block.starts_with("ip:127.0.0.1 violation tight 9m") || block.ends_with("tight 10m"),
        "{block}"
    );

    // A small terminal gets a sentence, not a mess.
    assert!(screen_text(&state, 30, 8).contains("terminal too small"));
}

#[tokio::test]
async fn the_dashboard_says_when_the_gateway_is_gone_and_comes_back() {
    let upstream = start_upstream().await;
    let gateway = start_gateway(DASHBOARD, Some(upstream.addr)).await;
    let admin = gateway.admin();
    let up = Source::new(&format!("http://{admin}"), None).expect("source");
    // A port nothing listens on stands for the gateway gone away.
    let gone = Source::new("http://127.0.0.1:1", None).expect("source");
    let mut state = MonitorState::new(up.url());
    state.apply(Duration::from_secs(0), up.read().await);
    state.apply(Duration::from_secs(1), gone.read().await);
    state.apply(Duration::from_secs(2), gone.read().await);
    let text = screen_text(&state, 120, 20);
    assert!(
        text.contains("✗ gateway unreachable, reconnecting (attempt 2;"),
        "{text}"
    );
    assert!(
        text.contains("requests  0"),
        "the last reading stays: {text}"
    );
    state.apply(Duration::from_secs(3), up.read().await);
    assert!(screen_text(&state, 120, 20).contains("● connected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_once_prints_a_screen_and_fails_when_nothing_answers() {
    let upstream = start_upstream().await;
    let gateway = start_gateway(DASHBOARD, Some(upstream.addr)).await;
    let admin = format!("http://{}", gateway.admin());
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        cli(&[
            "monitor", "--admin", &admin, "--once", "--width", "90", "--height", "24",
        ])
    })
    .await
    .expect("cli");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 Overview"), "{out}");
    assert_eq!(out.lines().count(), 24);
    let (code, out, _) = tokio::task::spawn_blocking(|| {
        cli(&["monitor", "--admin", "http://127.0.0.1:1", "--once"])
    })
    .await
    .expect("cli");
    assert_eq!(code, 1);
    assert!(out.contains("gateway unreachable"), "{out}");
}

fn webhook_yaml(hook: &str) -> String {
    DASHBOARD.replace("block_duration: 10m", "block_duration: 0")
        + &format!("violations:\n  webhook: {{ url: \"{hook}\", timeout: 2s }}\n")
}

/// A gateway with a webhook, after five requests to `tight` (limit 3): two
/// enforced violations on their way to the webhook.
async fn two_violations_for_a_webhook() -> (Receiver, Upstream, RunningGateway) {
    let hook = Receiver::start().await;
    let upstream = start_upstream().await;
    let gateway = start_gateway(&webhook_yaml(&hook.url()), Some(upstream.addr)).await;
    let client = http1_client();
    for _ in 0..5 {
        send(&client, get(&gateway.url("/api/items"), &[])).await;
    }
    (hook, upstream, gateway)
}

#[tokio::test]
async fn violations_reach_the_webhook_as_a_json_batch() {
    let (hook, _upstream, _gateway) = two_violations_for_a_webhook().await;
    let enforced = |bodies: &[serde_json::Value]| {
        bodies
            .iter()
            .filter_map(|b| b["events"].as_array())
            .flatten()
            .filter(|e| e["shadow"] == false)
            .count()
            >= 2
    };
    assert!(
        hook.wait_until(Duration::from_secs(10), enforced).await,
        "{:?}",
        hook.bodies()
    );
    let body = &hook.bodies()[0];
    assert_eq!(body["source"], "ratethrottle");
    let event = hook
        .events()
        .into_iter()
        .find(|e| e["rule"] == "tight")
        .expect("a tight violation");
    assert_eq!(event["type"], "violation");
    assert_eq!(event["identity"], "ip:127.0.0.1");
    assert_eq!(event["client_ip"], "127.0.0.1");
    assert_eq!(event["route"], "api");
    assert_eq!(event["limit"], 3);
    assert_eq!(event["requests_made"], 4);
    assert_eq!(event["shadow"], false);
    assert!(event["time"].as_f64().is_some_and(|t| t > 1.7e9));
}

/// Shutdown sends what the webhook sinks still hold (a batch would
/// otherwise wait a second for more events) before it returns.
#[tokio::test]
async fn shutdown_flushes_queued_webhook_events() {
    let (hook, _upstream, gateway) = two_violations_for_a_webhook().await;
    assert!(gateway.gateway.shutdown().await);
    // No waiting: the events are there when shutdown returns.
    let enforced = hook
        .events()
        .into_iter()
        .filter(|e| e["rule"] == "tight" && e["shadow"] == false)
        .count();
    assert_eq!(enforced, 2, "{:?}", hook.bodies());
}

#[tokio::test]
async fn thresholds_raise_alerts_through_the_json_and_slack_sinks() {
    let json = Receiver::start().await;
    let slack = Receiver::start().await;
    let upstream = start_upstream().await;
    let yaml = DASHBOARD.replace("block_duration: 10m", "block_duration: 0")
        + &format!(
            r#"alerting:
  enabled: true
  cooldown_seconds: 3600
  thresholds: {{ violations_per_minute_warning: 2, violations_per_minute_critical: 100000 }}
  webhook: {{ url: "{}" }}
  slack: {{ webhook_url: "{}" }}
"#,
            json.url(),
            slack.url()
        );
    let gateway = start_gateway(&yaml, Some(upstream.addr)).await;
    let client = http1_client();
    for _ in 0..6 {
        send(&client, get(&gateway.url("/api/items"), &[])).await;
    }
    let alerted = |bodies: &[serde_json::Value]| {
        bodies
            .iter()
            .filter_map(|b| b["events"].as_array())
            .flatten()
            .any(|e| e["type"] == "alert")
    };
    assert!(
        json.wait_until(Duration::from_secs(10), alerted).await,
        "{:?}",
        json.bodies()
    );
    let alert = json
        .events()
        .into_iter()
        .find(|e| e["type"] == "alert")
        .expect("alert");
    assert_eq!(alert["level"], "warning");
    assert_eq!(alert["metric"], "violations_per_minute");
    assert_eq!(alert["threshold"], 2.0);
    assert!(alert["value"].as_f64().is_some_and(|v| v >= 3.0), "{alert}");

    let texts = |bodies: &[serde_json::Value]| -> Vec<String> {
        bodies
            .iter()
            .filter_map(|b| b["text"].as_str().map(str::to_string))
            .collect()
    };
    let slack_alerted = |b: &[serde_json::Value]| {
        texts(b)
            .iter()
            .any(|t| t.contains("violations in the last minute"))
    };
    assert!(
        slack
            .wait_until(Duration::from_secs(10), slack_alerted)
            .await,
        "{:?}",
        slack.bodies()
    );
    assert!(
        texts(&slack.bodies())
            .iter()
            .any(|t| t.contains("rate limit violation(s)") && t.contains("tight")),
        "{:?}",
        slack.bodies()
    );
    // One alert for the whole burst: the cooldown holds the rest back.
    let alerts = json
        .events()
        .into_iter()
        .filter(|e| e["type"] == "alert")
        .count();
    assert_eq!(alerts, 1);
}

const BURST: &str = r#"
rules:
  - { name: one, limit: 1, window: 1h }
violations:
  log: false
  webhook: { url: "{hook}", timeout: 2s }
# Many requests back to back from one address: DDoS protection would block
# them and change the counts these tests assert.
ddos_protection: { enabled: false }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_10000_violations_is_bounded_and_never_slows_requests() {
    // A receiver that takes 100 ms per batch: far slower than the burst.
    let hook = Receiver::start_with(Duration::from_millis(100), Vec::new()).await;
    let (engine, _clock) = make_engine(&BURST.replace("{hook}", &hook.url()));
    let counters = Arc::new(WebhookCounters::default());
    let tuning = Tuning {
        batch_size: 100,
        batch_delay: Duration::from_millis(20),
        attempts: 2,
        first_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(10),
    };
    let _dispatcher = Dispatcher::install_with(&engine, tuning, Arc::clone(&counters));
    let request = Req::get("/x");
    let started = Instant::now();
    assert!(engine.decide(&request.facts()).await.is_allowed());
    for _ in 0..10_000 {
        assert!(!engine.decide(&request.facts()).await.is_allowed());
    }
    let burst = started.elapsed();
    // Deciding never waits on the webhook: delivering all 10,000 at 100 ms
    // a batch of 100 would take 10 s; the burst itself takes well under that
    // (the bound leaves room for a loaded debug build).
    assert!(burst < Duration::from_secs(8), "{burst:?}");

    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let settled = async {
        loop {
            let accounted = load(&counters.sent)
                + load(&counters.failed)
                + load(&counters.dropped)
                + engine.violation_hub().dropped();
            if accounted == 10_000 {
                return;
            }
            assert!(accounted < 10_000);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), settled)
        .await
        .expect("every event sent, failed or dropped");
    let dropped = load(&counters.dropped) + engine.violation_hub().dropped();
    assert!(
        dropped > 0,
        "a slow webhook must shed load, not queue it all"
    );
    let sent = load(&counters.sent);
    assert!(sent >= 100, "{sent}");
    // The receiver answers well within the timeout: nothing fails, and it
    // saw exactly what was counted as sent.
    assert_eq!(load(&counters.failed), 0);
    assert_eq!(hook.events().len() as u64, sent);
    assert!(
        hook.bodies()
            .iter()
            .all(|b| b["events"].as_array().is_some_and(|e| e.len() <= 100))
    );
}

#[tokio::test]
async fn failed_deliveries_are_retried_and_a_refusal_is_not() {
    let hook = Receiver::start_with(
        Duration::ZERO,
        vec![
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::SERVICE_UNAVAILABLE,
        ],
    )
    .await;
    let (engine, _clock) = make_engine(&BURST.replace("{hook}", &hook.url()));
    let counters = Arc::new(WebhookCounters::default());
    let tuning = Tuning {
        batch_size: 100,
        batch_delay: Duration::from_millis(10),
        attempts: 5,
        first_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
    };
    let _dispatcher = Dispatcher::install_with(&engine, tuning, Arc::clone(&counters));
    let request = Req::get("/x");
    engine.decide(&request.facts()).await;
    engine.decide(&request.facts()).await;
    assert!(
        hook.wait_until(Duration::from_secs(10), |b| b.len() == 3)
            .await
    );
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let sent = async {
        while load(&counters.sent) == 0 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), sent)
        .await
        .expect("sent");
    assert_eq!((load(&counters.sent), load(&counters.retries)), (1, 2));

    let refusing = Receiver::start_with(Duration::ZERO, vec![StatusCode::BAD_REQUEST]).await;
    let (engine, _clock) = make_engine(&BURST.replace("{hook}", &refusing.url()));
    let counters = Arc::new(WebhookCounters::default());
    let _dispatcher = Dispatcher::install_with(&engine, tuning, Arc::clone(&counters));
    engine.decide(&request.facts()).await;
    engine.decide(&request.facts()).await;
    let failed = async {
        while load(&counters.failed) == 0 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), failed)
        .await
        .expect("failed");
    assert_eq!(refusing.bodies().len(), 1, "a 400 is not retried");
    assert_eq!(load(&counters.retries), 0);
}

#[tokio::test]
async fn the_tower_layer_limits_an_axum_service() {
    use axum::Router;
    use axum::extract::ConnectInfo;
    use axum::routing::get as route_get;
    use ratethrottle::tower_layer::RateLimitLayer;

    let config = config_from(
        r#"
rules:
  - { name: per_client, limit: 2, window: 1h }
"#,
    );
    let layer = RateLimitLayer::from_config(config)
        .with_peer(|e| e.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()));
    let engine = Arc::clone(layer.engine());
    let app = Router::new()
        .route("/hello", route_get(|| async { "hello" }))
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    let client = http1_client();
    let url = format!("http://{addr}/hello");
    let first = send(&client, get(&url, &[])).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(&first.body[..], b"hello");
    assert_eq!(first.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(first.header("x-ratelimit-remaining"), Some("1"));
    send(&client, get(&url, &[])).await;
    let third = send(&client, get(&url, &[])).await;
    assert_eq!(third.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(third.header("retry-after").is_some());
    assert_eq!(third.json()["error"], "rate_limited");
    // The same engine, stats included, as the gateway would keep them.
    let stats = engine.stats().snapshot();
    assert_eq!((stats.allowed_requests, stats.blocked_requests), (2, 1));
    assert_eq!(
        stats.top_offenders.first().map(|o| o.identity.as_str()),
        Some("ip:127.0.0.1")
    );
    server.abort();
}

const ALERTING: &str = r#"
rules:
  - { name: one, limit: 1, window: 1h, key: "header:x-user" }
violations: { log: false }
alerting:
  enabled: true
  cooldown: 60s
  thresholds:
    violations_per_minute_warning: 5
    violations_per_minute_critical: 1000
    block_rate_warning: 50
    block_rate_critical: 90
# Many requests back to back from one address: DDoS protection would block
# them and change the counts these tests assert.
ddos_protection: { enabled: false }
"#;

/// Lets the violation thread and the threshold task catch up, without
/// moving the (paused) clock.
async fn settle(engine: &ratethrottle::engine::Engine, published: u64) {
    while engine.violation_hub().delivered() + engine.violation_hub().dropped() < published {
        tokio::task::yield_now().await;
        std::thread::yield_now();
    }
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn an_alert_is_repeated_only_after_its_cooldown() {
    let (engine, _clock) = make_engine(ALERTING);
    let counters = Arc::new(WebhookCounters::default());
    let _dispatcher = Dispatcher::install_with(&engine, Tuning::default(), Arc::clone(&counters));
    let request = Req::get("/x").header("x-user", "flooder");
    engine.decide(&request.facts()).await;
    let mut users = 0u64;
    let warnings = || {
        counters
            .alerts_warning
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let mut published = 0;
    let mut raised_at = Vec::new();
    // 10 violations every second for 130 seconds: always over the warning;
    // 90 other users' requests keep the block rate at 10%, below its warning.
    for second in 0..130u64 {
        for _ in 0..10 {
            engine.decide(&request.facts()).await;
        }
        for _ in 0..90 {
            users += 1;
            let user = Req::get("/x").header("x-user", &format!("user-{users}"));
            assert!(engine.decide(&user.facts()).await.is_allowed());
        }
        published += 10;
        settle(&engine, published).await;
        let before = warnings();
        tokio::time::advance(ratethrottle::alerts::ALERT_TICK).await;
        settle(&engine, published).await;
        if warnings() > before {
            raised_at.push(second);
        }
    }
    // Raised at once, then once per 60 s cooldown.
    assert_eq!(raised_at.len(), 3, "{raised_at:?}");
    assert!(raised_at[1] - raised_at[0] >= 60, "{raised_at:?}");
    assert!(raised_at[2] - raised_at[1] >= 60, "{raised_at:?}");
    assert_eq!(
        counters
            .alerts_critical
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test]
async fn a_reload_sends_violations_to_the_new_webhook() {
    let first = Receiver::start().await;
    let second = Receiver::start().await;
    let upstream = start_upstream().await;
    let gateway = start_gateway(&webhook_yaml(&first.url()), Some(upstream.addr)).await;
    let client = http1_client();
    let tight = |b: &[serde_json::Value]| {
        b.iter()
            .filter_map(|b| b["events"].as_array())
            .flatten()
            .any(|e| e["rule"] == "tight")
    };
    for _ in 0..4 {
        send(&client, get(&gateway.url("/api/items"), &[])).await;
    }
    assert!(first.wait_until(Duration::from_secs(10), tight).await);

    gateway.write_config(
        &webhook_yaml(&second.url()).replace("{upstream}", &upstream.addr.to_string()),
    );
    gateway
        .gateway
        .reload(ratethrottle::reload::ReloadTrigger::Signal)
        .expect("reload");
    // The rule's counters carry over: the next request is over the limit.
    send(&client, get(&gateway.url("/api/items"), &[])).await;
    assert!(second.wait_until(Duration::from_secs(10), tight).await);
    let to_first = first
        .events()
        .iter()
        .filter(|e| e["rule"] == "tight")
        .count();
    assert_eq!(to_first, 1, "the old webhook gets nothing after the reload");
}

const BUSY: &str = r#"
global: { trusted_proxies: [127.0.0.1/32] }
server: { listen: 127.0.0.1:0 }
admin: { listen: 127.0.0.1:0 }
upstreams:
  default: { url: "http://{upstream}" }
rules:
  - { name: api_per_ip, limit: 20, window: 1h, block_duration: 5m }
  - { name: login_strict, limit: 3, window: 1h }
  - { name: login_watch, limit: 1, window: 1h, shadow: true }
routes:
  - name: login
    match: { path_prefix: /login }
    rules: [login_strict, login_watch]
  - name: api
    match: { path_prefix: /api/ }
    rules: [api_per_ip]
"#;

/// Twenty polls of varied traffic from several clients (behind a trusted
/// proxy): the screens that docs/operations.md shows.
#[tokio::test]
async fn the_dashboard_over_twenty_polls_of_traffic() {
    let upstream = start_upstream().await;
    let gateway = start_gateway(BUSY, Some(upstream.addr)).await;
    let source = Source::new(&format!("http://{}", gateway.admin()), None).expect("source");
    let mut state = MonitorState::new("http://127.0.0.1:9090");
    let client = http1_client();
    let mut sent = 0u64;
    for poll in 0..20u64 {
        state.apply(Duration::from_secs(poll), source.read().await);
        for i in 0..(4 + poll * 7 % 11) {
            let ip = format!("198.51.100.{}", (i + poll) % 5);
            let path = if i % 3 == 0 { "/login" } else { "/api/items" };
            send(
                &client,
                get(&gateway.url(path), &[("x-forwarded-for", &ip)]),
            )
            .await;
            sent += 1;
        }
    }
    state.apply(Duration::from_secs(20), source.read().await);
    let reading = state.reading.as_ref().expect("reading");
    assert_eq!(reading.total, sent);
    assert_eq!(state.rps.len(), 20);
    for view in ['1', '2', '3', '4'] {
        state.key(Key::Char(view));
        let text = screen_text(&state, 100, 30);
        println!("{text}");
        assert!(!text.contains("terminal too small"));
    }
    state.key(Key::Char('2'));
    assert!(screen_text(&state, 100, 30).contains("login_watch"));
    state.key(Key::Char('3'));
    assert!(screen_text(&state, 100, 30).contains("ip:198.51.100."));
}
