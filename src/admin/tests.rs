//! In-process tests of `handle`: reads, the token, errors, reload and reset.
//! The lists and blocks are tested in `tests_lists.rs`.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;

use super::{AdminContext, handle};
use crate::clock::ManualClock;
use crate::config;
use crate::decision::Decision;
use crate::engine::{Engine, RequestFacts};
use crate::metrics::ServerMetrics;
use crate::store::MemoryStore;

pub const TOKEN: &str = "s3cret";

pub const YAML: &str = "
admin:
  token: s3cret
lists:
  whitelist: [10.0.0.0/8]
rules:
  - name: tight
    limit: 2
    window: 60
    block_duration: 120
";

pub struct Harness {
    pub context: AdminContext,
    pub clock: Arc<ManualClock>,
}

pub fn config_of(yaml: &str) -> config::Config {
    config::load_str(yaml, "t.yaml", &|_| None)
        .expect("the test config loads")
        .config
}

/// An engine over the memory store, a manual clock, and a reload that
/// applies `YAML` again.
pub fn harness(yaml: &str) -> Harness {
    let clock = ManualClock::at_test_epoch();
    let engine = Arc::new(Engine::new(
        config_of(yaml),
        Arc::new(MemoryStore::new()),
        clock.clone(),
    ));
    let reloading = Arc::downgrade(&engine);
    let text = yaml.to_string();
    let reload = Arc::new(move || {
        let engine = reloading.upgrade().ok_or("the engine is gone")?;
        let loaded = config::load_str(&text, "t.yaml", &|_| None).map_err(|e| e.to_string())?;
        let summary = config::summary(&loaded.config);
        engine.apply_config(loaded.config);
        Ok(summary)
    });
    Harness {
        context: AdminContext {
            engine,
            server_metrics: Arc::new(ServerMetrics::default()),
            reload,
            store_ready: Arc::new(|| true),
        },
        clock,
    }
}

/// Decides one GET / from `ip`, as a front end would.
pub async fn decide(engine: &Engine, ip: &str) -> Decision {
    let peer: IpAddr = ip.parse().expect("address");
    let headers = HeaderMap::new();
    engine
        .decide(&RequestFacts {
            peer,
            client_ip: None,
            method: &Method::GET,
            host: Some("api.example.com"),
            path: "/",
            query: None,
            headers: &headers,
            cost: 1,
        })
        .await
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a JSON answer")
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

pub async fn call(
    context: &AdminContext,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: &str,
) -> Answer {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request.body(body.to_string()).expect("a request");
    let response = handle(context, request).await;
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8(bytes.to_vec()).expect("UTF-8"),
    }
}

pub async fn get(context: &AdminContext, uri: &str) -> Answer {
    call(context, Method::GET, uri, None, "").await
}

/// Two allowed, one rate limited (and blocked for 120 s), from 192.0.2.10.
async fn traffic(engine: &Engine) {
    for _ in 0..3 {
        decide(engine, "192.0.2.10").await;
    }
}

#[tokio::test]
async fn health_and_readiness() {
    let mut h = harness(YAML);
    let ok = get(&h.context, "/healthz").await;
    assert_eq!((ok.status, ok.body.as_str()), (StatusCode::OK, "ok"));
    assert_eq!(ok.header("content-type"), "text/plain");
    let head = call(&h.context, Method::HEAD, "/healthz", None, "").await;
    assert_eq!(head.status, StatusCode::OK);
    let ready = get(&h.context, "/readyz").await;
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (StatusCode::OK, "ready")
    );

    h.context.store_ready = Arc::new(|| false);
    let not_ready = get(&h.context, "/readyz").await;
    assert_eq!(not_ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(not_ready.json()["error"], "not_ready");
    assert_eq!(
        not_ready.json()["message"],
        "the memory store does not answer"
    );
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_engine_gauges() {
    let h = harness(YAML);
    traffic(&h.context.engine).await;
    let metrics = get(&h.context, "/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert_eq!(metrics.header("content-type"), "text/plain; version=0.0.4");
    for line in [
        "ratethrottle_requests_total{route=\"\",rule=\"tight\",decision=\"allowed\"} 2",
        "ratethrottle_requests_total{route=\"\",rule=\"tight\",decision=\"rate_limited\"} 1",
        "ratethrottle_decision_duration_seconds_count 3",
        "ratethrottle_active_blocks 1",
        "ratethrottle_store_errors_total 0",
        "ratethrottle_store_keys 1",
        "ratethrottle_violation_events_dropped_total 0",
        "ratethrottle_config_reloads_total{result=\"success\"} 0",
    ] {
        assert!(
            metrics.body.contains(line),
            "{line} missing from\n{}",
            metrics.body
        );
    }
}

#[tokio::test]
async fn stats_report_totals_rate_violations_and_blocks() {
    let h = harness(YAML);
    traffic(&h.context.engine).await;
    let stats = get(&h.context, "/stats").await;
    assert_eq!(stats.status, StatusCode::OK);
    assert_eq!(stats.header("content-type"), "application/json");
    let s = stats.json();
    assert_eq!(s["total_requests"], 3);
    assert_eq!(s["allowed_requests"], 2);
    assert_eq!(s["blocked_requests"], 1);
    assert_eq!(s["block_rate"], 33.33, "a percentage");
    assert_eq!(s["recent_violations"][0]["identity"], "ip:192.0.2.10");
    assert_eq!(s["top_offenders"][0]["violations"], 1);
    assert_eq!(s["rules"]["tight"]["allowed"], 2);
    assert_eq!(s["rules"]["tight"]["blocked"], 1);
    assert_eq!(s["active_blocks"][0]["identity"], "ip:192.0.2.10");
    assert_eq!(s["active_blocks"][0]["retry_after"], 120);
    assert!(s["uptime_seconds"].is_u64());
}

#[tokio::test]
async fn violations_newest_first_with_a_checked_limit() {
    let h = harness(YAML);
    traffic(&h.context.engine).await;
    h.clock.advance(std::time::Duration::from_secs(1));
    for _ in 0..3 {
        decide(&h.context.engine, "192.0.2.11").await;
    }
    let all = get(&h.context, "/violations").await.json();
    assert_eq!(all["limit"], 100);
    let list = all["violations"].as_array().expect("a list");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["identity"], "ip:192.0.2.11", "newest first");
    assert_eq!(list[0]["rule"], "tight");
    assert_eq!(list[0]["requests_made"], 3);
    assert_eq!(list[0]["limit"], 2);
    let one = get(&h.context, "/violations?limit=1").await.json();
    assert_eq!(one["violations"].as_array().map(Vec::len), Some(1));
    let capped = get(&h.context, "/violations?limit=999999").await.json();
    assert_eq!(capped["limit"], 1000, "capped at the ring size");
    for bad in ["abc", "-1", "", "1.5", "%zz"] {
        let answer = get(&h.context, &format!("/violations?limit={bad}")).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "limit={bad}");
        assert!(
            answer.json()["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("limit:"))
        );
    }
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods() {
    let h = harness(YAML);
    for path in [
        "/",
        "/nope",
        "/lists/greylist",
        "/lists/",
        "/blocks/",
        "/stats/",
    ] {
        let answer = get(&h.context, path).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(answer.json()["error"], "not_found");
    }
    let cases = [
        (Method::POST, "/stats", "GET, HEAD"),
        (Method::DELETE, "/lists", "GET, HEAD"),
        (Method::GET, "/config/reload", "POST"),
        (Method::GET, "/stats/reset", "POST"),
        (Method::DELETE, "/lists/blacklist", "POST"),
        (Method::GET, "/lists/blacklist/1.2.3.4", "DELETE"),
        (Method::PUT, "/blocks/ip%3A1.2.3.4", "DELETE"),
    ];
    for (method, path, allow) in cases {
        let answer = call(&h.context, method.clone(), path, Some(TOKEN), "").await;
        assert_eq!(
            answer.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(answer.header("allow"), allow);
        assert_eq!(answer.json()["error"], "method_not_allowed");
    }
}

#[tokio::test]
async fn changes_need_the_configured_token() {
    let no_token = harness("rules: [{ name: r, limit: 1, window: 1 }]");
    let forbidden = call(
        &no_token.context,
        Method::POST,
        "/stats/reset",
        Some("x"),
        "",
    )
    .await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    assert_eq!(
        forbidden.json()["message"],
        "no admin.token is configured; set admin.token (e.g. ${RATETHROTTLE_ADMIN_TOKEN}) to enable changes"
    );

    let h = harness(YAML);
    let missing = call(&h.context, Method::POST, "/stats/reset", None, "").await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.header("www-authenticate"), "Bearer");
    assert_eq!(missing.json()["error"], "unauthorized");
    for wrong in ["s3cre", "s3cret!", "S3CRET", ""] {
        let answer = call(&h.context, Method::DELETE, "/blocks/x", Some(wrong), "").await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{wrong:?}");
        assert!(answer.header("www-authenticate").starts_with("Bearer"));
    }
    let ok = call(&h.context, Method::POST, "/stats/reset", Some(TOKEN), "").await;
    assert_eq!(ok.status, StatusCode::OK);

    // The token is read per request: a new config's token applies at once.
    h.context
        .engine
        .apply_config(config_of(&YAML.replace("s3cret", "n3w")));
    let old = call(&h.context, Method::POST, "/stats/reset", Some(TOKEN), "").await;
    assert_eq!(old.status, StatusCode::UNAUTHORIZED);
    let new = call(&h.context, Method::POST, "/stats/reset", Some("n3w"), "").await;
    assert_eq!(new.status, StatusCode::OK);
    // Reads stay open.
    assert_eq!(get(&h.context, "/lists").await.status, StatusCode::OK);
}

#[tokio::test]
async fn reload_answers_the_summary_or_every_error() {
    let mut h = harness(YAML);
    let ok = call(&h.context, Method::POST, "/config/reload", Some(TOKEN), "").await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.json()["reloaded"], true);
    assert!(
        ok.json()["summary"]
            .as_str()
            .is_some_and(|s| s.contains("1 rule"))
    );

    h.context.reload = Arc::new(|| {
        Err("t.yaml:3:5: rules[0].limit: expected a positive integer\nt.yaml:9:1: nope: unknown key\n".into())
    });
    let failed = call(&h.context, Method::POST, "/config/reload", Some(TOKEN), "").await;
    assert_eq!(failed.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        failed.json(),
        serde_json::json!({
            "reloaded": false,
            "errors": [
                "t.yaml:3:5: rules[0].limit: expected a positive integer",
                "t.yaml:9:1: nope: unknown key",
            ],
        })
    );
    let unauthorized = call(&h.context, Method::POST, "/config/reload", None, "").await;
    assert_eq!(unauthorized.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn stats_reset_zeroes_stats_but_not_prometheus_counters() {
    let h = harness(YAML);
    traffic(&h.context.engine).await;
    let reset = call(&h.context, Method::POST, "/stats/reset", Some(TOKEN), "").await;
    assert_eq!(
        (reset.status, reset.json()),
        (StatusCode::OK, serde_json::json!({"reset": true}))
    );
    let s = get(&h.context, "/stats").await.json();
    assert_eq!(
        (s["total_requests"].as_u64(), s["block_rate"].as_f64()),
        (Some(0), Some(0.0))
    );
    assert_eq!(s["recent_violations"], serde_json::json!([]));
    let metrics = get(&h.context, "/metrics").await.body;
    assert!(metrics.contains("decision=\"allowed\"} 2"));
}
