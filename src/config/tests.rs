//! Loads the shipped files and the bad-config fixtures in testdata/, one
//! fixture per mistake, each asserting the exact lines a user would see.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::limit::StrategyKind;

fn no_env(_: &str) -> Option<String> {
    None
}

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

fn load(path: &str) -> Loaded {
    load_str(&read(path), path, &no_env).unwrap_or_else(|e| panic!("{path}:\n{e}"))
}

fn load_text(text: &str) -> Config {
    load_str(text, "t.yaml", &no_env)
        .unwrap_or_else(|e| panic!("{e}"))
        .config
}

fn errors_of(text: &str) -> Vec<String> {
    match load_str(text, "t.yaml", &no_env) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

/// Loads `src/config/testdata/NAME` and compares every reported line.
fn fixture(name: &str, expected: &[&str]) {
    let text = read(&format!("src/config/testdata/{name}"));
    let got: Vec<String> = match load_str(&text, name, &no_env) {
        Ok(_) => panic!("{name} loaded without errors"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    };
    assert_eq!(got, expected, "{name}");
}

#[test]
fn fixture_typo_key() {
    fixture(
        "typo_key.yaml",
        &[
            "typo_key.yaml:2:5: rules[0]: missing key \"window\"",
            "typo_key.yaml:4:5: rules[0].windw: unknown key \"windw\", did you mean \"window\"? (expected one of: name, limit, window, strategy, burst, key, scope, block_duration, shadow, paths, methods, descriptors)",
        ],
    );
}

#[test]
fn fixture_unknown_strategy() {
    fixture(
        "unknown_strategy.yaml",
        &[
            "unknown_strategy.yaml:5:15: rules[0].strategy: unknown strategy \"tokenbucket\"; expected one of sliding_window, sliding_window_counter, token_bucket, leaky_bucket, fixed_window",
        ],
    );
}

#[test]
fn fixture_bad_duration() {
    fixture(
        "bad_duration.yaml",
        &[
            "bad_duration.yaml:4:13: rules[0].window: expected a duration like 60, \"90s\", \"1m\", \"1h\"",
        ],
    );
}

#[test]
fn fixture_bad_size() {
    fixture(
        "bad_size.yaml",
        &[
            "bad_size.yaml:3:19: server.max_body_bytes: expected a size like 65536, \"16KiB\", \"10MiB\"",
        ],
    );
}

#[test]
fn fixture_limit_zero() {
    fixture(
        "limit_zero.yaml",
        &["limit_zero.yaml:3:12: rules[0].limit: expected an integer from 1 to 1000000000, got 0"],
    );
}

#[test]
fn fixture_unknown_rule_in_route() {
    fixture(
        "unknown_rule_in_route.yaml",
        &[
            "unknown_rule_in_route.yaml:8:18: routes[0].rules[1]: unknown rule \"apii\" (defined: api)",
        ],
    );
}

#[test]
fn fixture_unknown_upstream() {
    fixture(
        "unknown_upstream.yaml",
        &[
            "unknown_upstream.yaml:7:15: routes[0].upstream: unknown upstream \"apii\" (defined: api, grpc_backend)",
        ],
    );
}

#[test]
fn fixture_duplicate_rule() {
    fixture(
        "duplicate_rule.yaml",
        &[
            "duplicate_rule.yaml:5:11: rules[1].name: duplicate rule name \"api\" (first defined at rules[0])",
        ],
    );
}

#[test]
fn fixture_bad_cidr() {
    fixture(
        "bad_cidr.yaml",
        &[
            "bad_cidr.yaml:2:25: lists.whitelist[1]: expected an IP address or CIDR block like 10.0.0.0/8 or 2001:db8::/32, got \"10.0.0.0/33\"",
            "bad_cidr.yaml:3:15: lists.blacklist[0]: expected an IP address or CIDR block like 10.0.0.0/8 or 2001:db8::/32, got \"not-an-ip\"",
        ],
    );
}

#[test]
fn fixture_bad_listen() {
    fixture(
        "bad_listen.yaml",
        &[
            "bad_listen.yaml:2:11: admin.listen: expected an address like 0.0.0.0:8080 or [::]:8080, got \"localhost:9090\"",
        ],
    );
}

#[test]
fn fixture_bad_method() {
    fixture(
        "bad_method.yaml",
        &[
            "bad_method.yaml:5:20: rules[0].methods[1]: unknown HTTP method \"GTE\" (expected one of GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH)",
        ],
    );
}

#[test]
fn fixture_scope_and_key() {
    fixture(
        "scope_and_key.yaml",
        &["scope_and_key.yaml:6:5: rules[0].scope: give either key or scope, not both"],
    );
}

#[test]
fn fixture_bad_key_spec() {
    fixture(
        "bad_key_spec.yaml",
        &[
            "bad_key_spec.yaml:5:10: rules[0].key: invalid identity key: unknown key \"heder:x-api-key\" (expected ip, header:NAME, query:NAME, cookie:NAME, path, method or route, joined with +)",
        ],
    );
}

#[test]
fn fixture_syntax_error() {
    fixture(
        "syntax_error.yaml",
        &["syntax_error.yaml:4:11: YAML syntax error: illegal placement of ':' indicator"],
    );
}

#[test]
fn fixture_wrong_type() {
    fixture(
        "wrong_type.yaml",
        &["wrong_type.yaml:2:3: storage: expected a mapping, got a list"],
    );
}

#[test]
fn fixture_many_mistakes_are_all_reported() {
    fixture(
        "many_mistakes.yaml",
        &[
            "many_mistakes.yaml:2:11: server.listen: expected an address like 0.0.0.0:8080 or [::]:8080, got \"0.0.0.0:99999\"",
            "many_mistakes.yaml:4:9: storage.type: expected one of memory, redis, got \"mongo\"",
            "many_mistakes.yaml:6:17: global.header_style: expected one of legacy, ietf, both, got \"modern\"",
            "many_mistakes.yaml:7:12: global.enabled: expected a boolean (true/false, yes/no, on/off), got \"maybe\"",
            "many_mistakes.yaml:9:15: upstreams.api.url: expected an upstream URL like http://127.0.0.1:3000 (http or https, a host, an optional port, no path), got \"ftp://files.example.com\"",
            "many_mistakes.yaml:12:12: rules[0].limit: expected an integer from 1 to 1000000000, got 2000000000",
            "many_mistakes.yaml:13:13: rules[0].window: must be at most 366 days",
            "many_mistakes.yaml:14:12: rules[0].burst: expected an integer from 1 to 1000000000, got 0",
            "many_mistakes.yaml:15:5: rules[1]: missing key \"name\"",
            "many_mistakes.yaml:19:27: routes[0].match.path_prefix: a path must start with \"/\", got \"api/\"",
            "many_mistakes.yaml:22:25: ddos_protection.suspicious_threshold: expected a number in [0, 1], got 1.5",
            "many_mistakes.yaml:23:16: ddos_protection.ipv6_prefix: expected an integer from 0 to 128, got 129",
            "many_mistakes.yaml:24:59: ddos_protection.under_attack.limit_factor: expected a number in (0, 1], got 0",
        ],
    );
}

#[test]
fn every_fixture_has_a_test() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config/testdata");
    let source = read("src/config/tests.rs");
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            source.contains(&format!("\"{name}\"")),
            "{name} has no test"
        );
    }
}

#[test]
fn the_default_config_runs_without_redis() {
    let loaded = load("config/ratethrottle.yaml");
    let c = &loaded.config;
    assert_eq!(c.storage.kind, StorageType::Memory);
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9090");
    assert_eq!(c.admin.token, None, "an unset token is no token");
    assert_eq!(
        c.server.as_ref().unwrap().listen.to_string(),
        "0.0.0.0:8080"
    );
    assert_eq!(c.upstreams[0].name, "default");
    assert_eq!(c.upstreams[0].url, "http://127.0.0.1:3000");
    let strict = c.rules.iter().find(|r| r.name == "auth_strict").unwrap();
    assert_eq!(strict.limit, 5);
    assert_eq!(strict.window, Duration::from_secs(60));
    assert_eq!(strict.strategy, StrategyKind::SlidingWindow);
    assert_eq!(strict.block_duration, Duration::from_secs(900));
    let api = c.rules.iter().find(|r| r.name == "api_default").unwrap();
    assert_eq!(api.strategy, StrategyKind::TokenBucket);
    let routes = c.routes.as_ref().unwrap();
    assert_eq!(routes[0].rules, ["auth_strict", "api_default"]);
    assert_eq!(routes[0].matcher.methods, [http::Method::POST]);
    assert_eq!(
        summary(c),
        "ok: 2 rules, 2 routes, 1 upstream, storage memory, proxy 0.0.0.0:8080, admin 127.0.0.1:9090"
    );
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(
        loaded.warnings[0]
            .message
            .contains("RATETHROTTLE_ADMIN_TOKEN")
    );
    let with_token = load_str(
        &read("config/ratethrottle.yaml"),
        "ratethrottle.yaml",
        &|v| (v == "RATETHROTTLE_ADMIN_TOKEN").then(|| "s3cret".to_string()),
    )
    .unwrap();
    assert_eq!(with_token.config.admin.token.as_deref(), Some("s3cret"));
    assert!(with_token.warnings.is_empty());
}

#[test]
fn every_example_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples");
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        load(&format!("config/examples/{name}"));
        count += 1;
    }
    assert!(count >= 5);
    assert_eq!(load("config/examples/minimal.yaml").config.rules.len(), 1);
}

#[test]
fn the_full_example_has_every_section() {
    let c = load("config/examples/full.yaml").config;
    let server = c.server.as_ref().unwrap();
    assert_eq!(server.max_header_bytes, 16 * 1024);
    assert_eq!(server.max_body_bytes, 10 * 1024 * 1024);
    assert!(server.tls.is_some());
    assert_eq!(
        c.ext_authz.as_ref().unwrap().grpc_listen.unwrap().port(),
        9192
    );
    assert_eq!(c.rules.len(), 5);
    assert_eq!(c.rules[0].burst, Some(1500));
    assert_eq!(c.rules[0].descriptors[0].entries[0].key, "remote_address");
    let routes = c.routes.as_ref().unwrap();
    let graphql = routes[1].graphql.as_ref().unwrap();
    assert_eq!(graphql.field_costs["Query.search"], 10);
    assert_eq!(
        graphql.budget.as_ref().unwrap().window,
        Duration::from_secs(60)
    );
    let ws = routes[2].websocket.as_ref().unwrap();
    assert_eq!(ws.bytes_per_minute, Some(1 << 20));
    assert_eq!(routes[4].matcher.host.as_deref(), Some("*.example.com"));
    assert_eq!(routes[4].matcher.headers["x-tenant"], "gold");
    assert_eq!(c.ddos.under_attack.as_ref().unwrap().limit_factor, 0.5);
    assert_eq!(c.ddos.min_interval_threshold, Duration::from_millis(100));
    assert_eq!(
        c.violations.webhooks[0].headers["Authorization"],
        "Bearer changeme"
    );
    assert_eq!(
        c.websocket_defaults.bytes_per_minute, None,
        "0 means no limit"
    );
}

#[test]
fn the_python_seed_file_loads_with_its_warnings() {
    let env = |v: &str| (v == "UNUSED").then(String::new);
    let loaded = load_str(
        &read("config/examples/python-seed.yaml"),
        "python-seed.yaml",
        &env,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let c = &loaded.config;
    assert_eq!(c.storage.kind, StorageType::Redis);
    assert_eq!(
        c.storage.redis.url,
        "redis://:s3cret%2Fpa%20ss@localhost:6379/0"
    );
    assert_eq!(c.storage.redis.timeout, Duration::from_secs(5));
    assert_eq!(c.storage.redis.connect_timeout, Duration::from_secs(5));
    assert_eq!(
        c.global.default_strategy,
        StrategyKind::SlidingWindowCounter
    );
    assert_eq!(c.global.log_level.as_deref(), Some("info"));
    assert!(c.global.headers_enabled);
    let api = &c.rules[0];
    assert_eq!(api.strategy, StrategyKind::SlidingWindowCounter);
    assert_eq!(api.block_duration, Duration::from_secs(300));
    assert_eq!(api.methods, [http::Method::GET, http::Method::POST]);
    assert_eq!(api.paths, ["/api/"]);
    assert_eq!(
        c.rules[1].block_duration,
        Duration::ZERO,
        "our default, not the seed's 300 s"
    );
    assert!(c.websocket_enabled);
    assert!(!c.grpc_enabled);
    assert_eq!(c.graphql_defaults.max_depth, Some(15));
    assert!(c.monitoring.enabled);
    assert_eq!(c.monitoring.export_path, None, "export_json: no");
    assert!(c.alerting.enabled);
    assert_eq!(c.alerting.cooldown, Duration::from_secs(300));
    let formats: Vec<_> = c.violations.webhooks.iter().map(|w| w.format).collect();
    assert_eq!(formats, [WebhookFormat::Json, WebhookFormat::Slack]);
    assert_eq!(c.violations.webhooks[0].timeout, Duration::from_secs(5));
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "python-seed.yaml:14:5: storage.redis.retry_on_timeout: accepted but not acted on: a Redis call gets one attempt within `timeout`, then storage.on_error applies",
            "python-seed.yaml:15:5: storage.redis.health_check_interval: accepted but not acted on: connections are checked by use and re-established on failure",
            "python-seed.yaml:57:3: ddos_protection.whitelist_on_good_behavior: accepted but not acted on: an identity's past behaviour never exempts it",
            "python-seed.yaml:58:3: ddos_protection.good_behavior_threshold: accepted but not acted on: an identity's past behaviour never exempts it",
            "python-seed.yaml:84:1: adaptive: accepted but not acted on: adaptive limits are not implemented; rules keep their configured limits",
            "python-seed.yaml:96:1: analytics: accepted but not acted on: statistics are served by the admin API (/stats, /metrics)",
            "python-seed.yaml:122:5: alerting.slack.channel: accepted but not acted on: the incoming webhook's own channel and name are used",
            "python-seed.yaml:132:3: alerting.pagerduty: accepted but not acted on: PagerDuty alerts are not sent; use alerting.webhook",
        ]
    );
}

fn round_trip(c: &Config) -> Config {
    let yaml = to_yaml(c);
    load_str(&yaml, "show.yaml", &no_env)
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"))
        .config
}

#[test]
fn show_output_loads_back_to_the_same_config() {
    for path in [
        "config/ratethrottle.yaml",
        "config/examples/minimal.yaml",
        "config/examples/full.yaml",
        "config/examples/redis.yaml",
        "config/examples/envoy.yaml",
    ] {
        let c = load(path).config;
        assert_eq!(round_trip(&c), redacted(&c), "{path}");
    }
}

#[test]
fn show_redacts_secrets() {
    let env = |v: &str| (v == "RATETHROTTLE_ADMIN_TOKEN").then(|| "tok-123".to_string());
    let seed = load_str(&read("config/examples/python-seed.yaml"), "s.yaml", &env).unwrap();
    let yaml = to_yaml(&seed.config);
    for secret in ["s3cret", "Bearer abc123", "XXXX"] {
        assert!(!yaml.contains(secret), "{secret} leaked:\n{yaml}");
    }
    assert!(yaml.contains("redis://:<redacted>@localhost:6379/0"));
    let full = load_str(&read("config/examples/full.yaml"), "f.yaml", &env).unwrap();
    let yaml = to_yaml(&full.config);
    assert!(!yaml.contains("tok-123") && !yaml.contains("changeme"));
    let back = round_trip(&seed.config);
    assert_eq!(
        back.storage.redis.url,
        "redis://:<redacted>@localhost:6379/0"
    );
    assert_eq!(back, redacted(&seed.config));
    assert_eq!(back.rules, seed.config.rules);
}

#[test]
fn env_substitution_and_defaults() {
    let env = |v: &str| match v {
        "PORT" => Some("8081".to_string()),
        "LIMIT" => Some("42".to_string()),
        _ => None,
    };
    let text = "server: { listen: \"0.0.0.0:${PORT}\" }\nupstreams: { default: { url: \"http://${UP_HOST:-127.0.0.1}:3000\" } }\nrules: [{ name: a, limit: \"${LIMIT}\", window: 60, key: \"header:${MISSING}x\" }]\n";
    let loaded = load_str(text, "e.yaml", &env).unwrap_or_else(|e| panic!("{e}"));
    let c = loaded.config;
    assert_eq!(c.server.unwrap().listen.port(), 8081);
    assert_eq!(c.upstreams[0].url, "http://127.0.0.1:3000");
    assert_eq!(c.rules[0].limit, 42);
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "e.yaml:3:56: rules[0].key: environment variable MISSING is not set; using an empty value"
        ]
    );
    assert_eq!(
        errors_of("admin: { token: \"${OOPS\" }\n"),
        ["t.yaml:1:17: admin.token: unterminated \"${\" in \"${OOPS\""]
    );
}

#[test]
fn rt_overrides_apply_after_the_file() {
    let vars: HashMap<&str, &str> = [
        ("RT_STORAGE_TYPE", "redis"),
        ("RT_REDIS_HOST", "cache.internal"),
        ("RT_REDIS_PORT", "6380"),
        ("RT_REDIS_PASSWORD", "p@ss"),
        ("RT_ENABLED", "off"),
        ("RT_HEADERS_ENABLED", "0"),
        ("RT_DDOS_THRESHOLD", "500"),
        ("RT_DDOS_BLOCK_DURATION", "10m"),
        ("RT_LOG_LEVEL", "WARNING"),
        ("RT_MONITORING_ENABLED", "yes"),
    ]
    .into_iter()
    .collect();
    let env = |v: &str| vars.get(v).map(|s| s.to_string());
    let text = "storage:\n  redis:\n    url: redis://old:6379/2\nrules: [{ name: a, limit: 1, window: 1 }]\n";
    let c = load_str(text, "o.yaml", &env)
        .unwrap_or_else(|e| panic!("{e}"))
        .config;
    assert_eq!(c.storage.kind, StorageType::Redis);
    assert_eq!(c.storage.redis.url, "redis://:p%40ss@cache.internal:6380/2");
    assert!(!c.global.enabled);
    assert!(!c.global.headers_enabled);
    assert_eq!(c.ddos.threshold, 500);
    assert_eq!(c.ddos.block_duration, Duration::from_secs(600));
    assert_eq!(c.global.log_level.as_deref(), Some("warn"));
    assert!(c.monitoring.enabled);

    let bad = |v: &str| match v {
        "RT_DDOS_ENABLED" => Some("maybe".to_string()),
        "RT_REDIS_PORT" => Some("http".to_string()),
        _ => None,
    };
    let errors: Vec<String> = load_str("{}", "o.yaml", &bad)
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errors,
        [
            "$RT_REDIS_PORT: storage.redis.port: expected an integer from 1 to 65535, got \"http\"",
            "$RT_DDOS_ENABLED: ddos_protection.enabled: expected a boolean (true/false, yes/no, on/off), got \"maybe\"",
        ]
    );
}

#[test]
fn yaml_11_booleans_and_a_bom() {
    let c =
        load_text("\u{feff}global:\n  enabled: NO\n  headers_enabled: On\n  log_violations: Off\n");
    assert!(!c.global.enabled);
    assert!(c.global.headers_enabled);
    assert!(!c.global.log_violations);
    assert!(
        !c.violations.log,
        "violations.log follows global.log_violations"
    );
}

#[test]
fn defaults_follow_the_spec() {
    let c = load_text(
        "server: {}\nupstreams: { default: { url: http://h:1 } }\nstorage: { type: redis }\n",
    );
    let s = c.server.as_ref().unwrap();
    assert_eq!(s.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(s.max_header_bytes, 16 << 10);
    assert_eq!(s.header_read_timeout, Duration::from_secs(10));
    assert_eq!(s.max_body_bytes, 10 << 20);
    assert_eq!(s.idle_timeout, Duration::from_secs(60));
    assert_eq!((s.max_connections, s.max_connections_per_ip), (10_000, 256));
    assert_eq!(c.storage.redis.url, "redis://127.0.0.1:6379/0");
    assert_eq!(c.storage.redis.timeout, Duration::from_millis(50));
    assert_eq!(c.storage.redis.key_prefix, "ratethrottle:");
    assert_eq!(c.storage.on_error, OnError::Allow);
    assert_eq!(c.global.default_strategy, StrategyKind::SlidingWindow);
    assert_eq!(c.global.header_style, HeaderStyle::Both);
    assert_eq!(c.ddos.max_block_duration, Duration::from_secs(24 * 3600));
    assert_eq!(c.ddos.ipv6_prefix, 64);
    assert_eq!(c.ddos.threshold, 10_000);
    assert_eq!(c.graphql_defaults.default_list_size, 10);
    assert_eq!(c.graphql_defaults.max_list_size, 1000);
    assert_eq!(c.websocket_defaults.max_message_size, Some(65_536));
    assert_eq!(c.grpc_defaults.concurrent_requests, Some(50));
    assert_eq!(c.routes, None);
}

#[test]
fn routes_resolve_their_upstream() {
    let c = load_text(
        "server: {}\nupstreams: { api: { url: http://a:1 }, default: { url: http://d:1 } }\nroutes: [{ name: r, match: { path_prefix: / } }]\n",
    );
    assert_eq!(c.routes.unwrap()[0].upstream.as_deref(), Some("default"));
    assert_eq!(
        errors_of(
            "server: {}\nupstreams: { a: { url: http://a:1 }, b: { url: http://b:1 } }\nroutes: [{ name: r }]\n"
        ),
        [
            "t.yaml:3:10: routes[0]: no upstream: name one, or define an upstream called \"default\" (or exactly one)"
        ]
    );
    assert_eq!(
        errors_of("server: {}\n"),
        [
            "t.yaml:1:1: server: the proxy needs an upstream: add one named \"default\" (or exactly one) under upstreams, or give routes an upstream"
        ]
    );
    // Without a proxy, routes need no upstream (ext_authz only).
    let c = load_text("routes: [{ name: r, match: { path: /x } }]\n");
    assert_eq!(c.routes.unwrap()[0].upstream, None);
}

#[test]
fn small_mistakes_get_clear_messages() {
    let cases: &[(&str, &str)] = &[
        (
            "rules: [{ name: a, limit: 1, window: 0 }]",
            "t.yaml:1:38: rules[0].window: must be greater than 0",
        ),
        (
            "rules: [{ name: a, limit: 1, window: 1, paths: [api] }]",
            "t.yaml:1:49: rules[0].paths[0]: a path must start with \"/\", got \"api\"",
        ),
        (
            "rules: [{ name: a, limit: 1, window: 1, descriptors: [{ domain: d, entries: [{ value: x }] }] }]",
            "t.yaml:1:78: rules[0].descriptors[0].entries[0]: missing key \"key\"",
        ),
        (
            "routes: [{ name: a }, { name: a }]",
            "t.yaml:1:31: routes[1].name: duplicate route name \"a\" (first defined at routes[0])",
        ),
        (
            "global: { trusted_proxies: [10.0.0.0/8, x] }",
            "t.yaml:1:41: global.trusted_proxies[1]: expected an IP address or CIDR block like 10.0.0.0/8 or 2001:db8::/32, got \"x\"",
        ),
        (
            "storage: { on_error: maybe }",
            "t.yaml:1:22: storage.on_error: expected one of allow, deny, got \"maybe\"",
        ),
        (
            "routes: [{ name: g, graphql: { field_costs: { \"Query.x\": 0 } } }]",
            "t.yaml:1:58: routes[0].graphql.field_costs[\"Query.x\"]: expected an integer from 1 to 1000000000, got 0",
        ),
        (
            "admin: {}\nadmin: {}",
            "t.yaml:2:1: admin: duplicate key \"admin\" (first given on line 1)",
        ),
        (
            "rules: 5",
            "t.yaml:1:8: rules[0]: expected a mapping, got a scalar",
        ),
        (
            "storage: { redis: { url: redis://a:1/0, host: b } }",
            "t.yaml:1:41: storage.redis.host: give either url or host/port/db/password, not both",
        ),
        (
            "servr: {}",
            "t.yaml:1:1: servr: unknown key \"servr\", did you mean \"server\"? (expected one of: server, admin, ext_authz, storage, global, upstreams, rules, routes, lists, ddos_protection, violations, alerting, monitoring, websocket, grpc, graphql, adaptive, analytics)",
        ),
        ("- a\n- b\n", "t.yaml:1:1: expected a mapping, got a list"),
        (
            "---\na: 1\n---\nb: 2\n",
            "t.yaml:3:1: only one YAML document is allowed per file",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(errors_of(text), [*expected], "{text}");
    }
}

#[test]
fn burst_is_only_for_token_bucket() {
    let loaded = load_str(
        "rules: [{ name: a, limit: 5, window: 1, strategy: leaky_bucket, burst: 9 }]",
        "t.yaml",
        &no_env,
    )
    .unwrap();
    assert_eq!(loaded.config.rules[0].burst, None);
    assert_eq!(
        loaded.warnings[0].to_string(),
        "t.yaml:1:65: rules[0].burst: burst applies only to token_bucket; ignored for leaky_bucket"
    );
}

#[test]
fn default_path_prefers_the_explicit_one() {
    assert_eq!(default_path(Some(Path::new("x.yaml"))), Path::new("x.yaml"));
}

#[test]
fn load_file_reports_missing_files_and_sets_the_source() {
    let err = load_file(Path::new("/nonexistent/rt.yaml")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/nonexistent/rt.yaml: cannot read the file")
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples/minimal.yaml");
    assert_eq!(load_file(&path).unwrap().source, path);
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn on_arbitrary_text(text in ".{0,400}") {
            let _ = load_str(&text, "p.yaml", &no_env);
        }

        #[test]
        fn on_yaml_shaped_text(lines in prop::collection::vec(
            "( {0,6})(rules|routes|server|storage|- name|limit|window|key|match|redis|url|[a-z_]{1,8})(:| :|: \\[|: \\{|)( ?)([0-9a-z_./:${}*&!|>-]{0,12})(\\]|\\}|)",
            0..24,
        )) {
            let _ = load_str(&lines.join("\n"), "p.yaml", &no_env);
        }
    }
}

#[test]
fn a_broken_rule_is_reported_once_not_again_by_every_route_naming_it() {
    let errors = errors_of(
        "rules:\n  - { name: api, limit: 5, window: soon }\nroutes:\n  - { name: a, match: { path_prefix: / }, rules: [api] }\n  - { name: b, match: { path: /x }, rules: [api, nope] }\n",
    );
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].contains("rules[0].window"), "{errors:#?}");
    assert!(errors[1].contains("unknown rule \"nope\""), "{errors:#?}");
}
