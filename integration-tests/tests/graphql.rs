//! GraphQL routes over real sockets: the proxy reads, prices and charges
//! queries and forwards them unchanged; the Envoy ext_authz modes (HTTP and
//! gRPC) run the same analysis on the body Envoy sends.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request as AttributesRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use http::Request;
use http_body_util::Full;
use integration_tests::graphql::{error_code, extensions, json_post, query_post};
use integration_tests::net::{get, http1_client, send, start_gateway, start_upstream};
use serde_json::json;

const GATEWAY: &str = r#"
server: { listen: 127.0.0.1:0, max_body_bytes: 2MiB }
admin: { listen: 127.0.0.1:0 }
upstreams:
  default: { url: "http://{upstream}", request_timeout: 5s }
rules:
  - { name: api_default, limit: 1000, window: 1h, strategy: token_bucket }
  - { name: tight, limit: 5, window: 1h, strategy: fixed_window }
routes:
  - name: graphql
    match: { path: /graphql }
    rules: [api_default]
    graphql:
      max_depth: 5
      max_complexity: 200
      default_list_size: 10
      max_list_size: 50
      field_costs: { "Query.search": 10 }
      budget: { limit: 300, window: 1h }
      queries_per_minute: 1000
      mutations_per_minute: 2
      field_limits: { "Mutation.login": 3 }
  - name: tight
    match: { path: /tight }
    rules: [tight]
    graphql: { budget: { limit: 100, window: 1h }, max_complexity: 1000 }
  - name: closed
    match: { path: /closed }
    graphql: { introspection: false }
  - name: rest
    match: { path_prefix: / }
    rules: [api_default]
"#;

#[tokio::test]
async fn an_allowed_query_is_forwarded_unchanged_with_its_cost_in_headers() {
    let upstream = start_upstream().await;
    let gateway = start_gateway(GATEWAY, Some(upstream.addr)).await;
    let client = http1_client();
    let query = "{ users(first: 5) { name } }";
    let got = send(&client, query_post(&gateway.url("/graphql"), query, None)).await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    let sent = json!({ "query": query }).to_string();
    assert_eq!(got.json()["body_bytes"], sent.len());
    assert_eq!(got.json()["headers"]["content-type"], "application/json");
    assert_eq!(got.header("x-graphql-cost"), Some("6"));
    assert_eq!(got.header("x-graphql-depth"), Some("2"));
    assert_eq!(got.header("x-graphql-budget-limit"), Some("300"));
    assert_eq!(got.header("x-graphql-budget-remaining"), Some("294"));
    // The route's own rule still counts requests.
    assert_eq!(got.header("x-ratelimit-remaining"), Some("999"));
}

#[tokio::test]
async fn over_depth_complexity_or_unparsable_is_400_with_a_graphql_error_and_never_upstream() {
    let upstream = start_upstream().await;
    let gateway = start_gateway(GATEWAY, Some(upstream.addr)).await;
    let client = http1_client();
    let url = gateway.url("/graphql");

    let got = send(
        &client,
        query_post(&url, "{ a { b { c { d { e { f } } } } } }", None),
    )
    .await;
    assert_eq!(got.status, 400);
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(error_code(&got), "DEPTH_LIMIT_EXCEEDED");
    assert_eq!(extensions(&got)["depth"], 6);
    assert_eq!(extensions(&got)["max_depth"], 5);

    let got = send(
        &client,
        query_post(&url, "{ a(first: 50) { b(first: 50) { c } } }", None),
    )
    .await;
    assert_eq!(got.status, 400);
    assert_eq!(
        got.json()["errors"][0]["extensions"],
        json!({"code": "COMPLEXITY_LIMIT_EXCEEDED", "complexity": 2551, "max_complexity": 200})
    );
    assert!(got.json()["errors"][0]["message"].is_string());

    for body in ["{ a(", "not json"] {
        let request = Request::post(&url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        let got = send(&client, request).await;
        assert_eq!(got.status, 400);
        assert_eq!(error_code(&got), "GRAPHQL_PARSE_FAILED");
    }
    let got = send(&client, query_post(&url, "{ a(", None)).await;
    assert_eq!(error_code(&got), "GRAPHQL_PARSE_FAILED");
    assert_eq!(upstream.requests.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn the_budget_is_charged_by_complexity_and_a_rejected_query_consumes_nothing() {
    let upstream = start_upstream().await;
    let gateway = start_gateway(GATEWAY, Some(upstream.addr)).await;
    let client = http1_client();
    let url = gateway.url("/graphql");
    // 1 + 10 × (1 + 10 × 1) = 111 points.
    let expensive = "{ a(first: 10) { b(first: 10) { c } } }";
    for remaining in ["189", "78"] {
        let got = send(&client, query_post(&url, expensive, None)).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.header("x-graphql-budget-remaining"), Some(remaining));
    }
    // Over max_complexity: 400 and nothing counted.
    let got = send(
        &client,
        query_post(&url, "{ a(first: 50) { b(first: 50) { c } } }", None),
    )
    .await;
    assert_eq!(got.status, 400);
    let got = send(&client, query_post(&url, expensive, None)).await;
    assert_eq!(got.status, 429);
    assert_eq!(error_code(&got), "RATE_LIMIT_EXCEEDED");
    let retry = extensions(&got)["retry_after"]
        .as_u64()
        .expect("retry_after");
    assert!(retry >= 1);
    assert_eq!(got.header("retry-after"), Some(retry.to_string().as_str()));
    assert_eq!(extensions(&got)["cost"], 111);
    // The denied query used neither budget nor the route's rule: a cheap one still fits.
    let got = send(&client, query_post(&url, "{ me }", None)).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-graphql-budget-remaining"), Some("77"));
    // Three allowed requests so far: the 400 and the 429 took nothing from the rule.
    assert_eq!(got.header("x-ratelimit-remaining"), Some("997"));
    assert_eq!(upstream.requests.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn a_rule_denial_leaves_the_budget_whole_and_a_budget_denial_leaves_the_rule_whole() {
    let upstream = start_upstream().await;
    let gateway = start_gateway(GATEWAY, Some(upstream.addr)).await;
    let client = http1_client();
    let url = gateway.url("/tight");
    // 60 points: the budget of 100 allows one.
    let query = "{ a(first: 59) { b } }";
    let got = send(&client, query_post(&url, "{ a(first: 49) { b } }", None)).await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    assert_eq!(got.header("x-graphql-budget-remaining"), Some("50"));
    assert_eq!(got.header("x-ratelimit-remaining"), Some("4"));
    let got = send(&client, query_post(&url, query, None)).await;
    assert_eq!(got.status, 429);
    assert_eq!(error_code(&got), "RATE_LIMIT_EXCEEDED");
    // The rule `tight` was not charged for the denied query.
    for remaining in ["3", "2", "1", "0"] {
        let got = send(&client, query_post(&url, "{ me }", None)).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.header("x-ratelimit-remaining"), Some(remaining));
    }
    // Now the rule denies (the usual JSON answer), and the budget is not charged.
    let got = send(&client, query_post(&url, "{ me }", None)).await;
    assert_eq!(got.status, 429);
    assert_eq!(got.json()["error"], "rate_limited");
}

#[tokio::test]
async fn mutations_and_field_limits_have_their_own_rates() {
    let upstream = start_upstream().await;
    let gateway = start_gateway(GATEWAY, Some(upstream.addr)).await;
    let client = http1_client();
    let url = gateway.url("/graphql");
    // Three aliased calls of a field limited to three a minute: allowed once.
    let logins = "mutation { a: login(u: 1) { t } b: login(u: 2) { t } c: login(u: 3) { t } }";
    let got = send(&client, query_post(&url, logins, None)).await;
    assert_eq!(got.status, 200);
    let got = send(
        &client,
        query_post(&url, "mutation { login(u: 4) { t } }", None),
    )
    .await;
    assert_eq!(got.status, 429);
    assert_eq!(error_code(&got), "FIELD_RATE_LIMIT_EXCEEDED");
    assert_eq!(extensions(&got)["field"], "Mutation.login");
    // Mutations: two a minute; the denied login above did not count.
    let got = send(&client, query_post(&url, "mutation { other { t } }", None)).await;
    assert_eq!(got.status, 200);
    let got = send(&client, query_post(&url, "mutation { other { t } }", None)).await;
    assert_eq!(got.status, 429);
    assert_eq!(error_code(&got), "RATE_LIMIT_EXCEEDED");
    // Queries are counted apart.
    let got = send(&client, query_post(&url, "{ me }", None)).await;
    assert_eq!(got.status, 200);
}

#[tokio::test]
async fn batches_get_and_application_graphql_are_read() {
    let upstream = start_upstream().await;
    let gateway = start_gateway(GATEWAY, Some(upstream.addr)).await;
    let client = http1_client();
    let url = gateway.url("/graphql");
    let batch = json!([{ "query": "{ me }" }, { "query": "{ users(first: 3) { name } }" }]);
    let got = send(&client, json_post(&url, &batch)).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-graphql-cost"), Some("5"));
    // One failing operation fails the whole batch.
    let batch = json!([{ "query": "{ me }" }, { "query": "{ a { b { c { d { e { f } } } } } }" }]);
    let got = send(&client, json_post(&url, &batch)).await;
    assert_eq!(got.status, 400);
    assert_eq!(error_code(&got), "DEPTH_LIMIT_EXCEEDED");

    let got = send(
        &client,
        get(
            &format!(
                "{url}?query=%7B+users(first%3A+%24n)+%7B+name+%7D+%7D&variables=%7B%22n%22%3A7%7D"
            ),
            &[],
        ),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-graphql-cost"), Some("8"));
    // A GET without a query (a GraphiQL page) goes on uncharged.
    let got = send(&client, get(&url, &[])).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-graphql-cost"), None);

    let request = Request::post(&url)
        .header("content-type", "application/graphql")
        .body(Full::new(Bytes::from_static(
            b"{ search(q: \"x\") { id } }",
        )))
        .expect("request");
    let got = send(&client, request).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-graphql-cost"), Some("11"));
    assert_eq!(
        got.json()["body_bytes"],
        b"{ search(q: \"x\") { id } }".len()
    );
    let request = Request::post(&url)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(b"{ me }")))
        .expect("request");
    assert_eq!(send(&client, request).await.status, 400);
}

#[tokio::test]
async fn hostile_bodies_are_answered_quickly() {
    let upstream = start_upstream().await;
    let gateway = start_gateway(GATEWAY, Some(upstream.addr)).await;
    let client = http1_client();
    let url = gateway.url("/graphql");
    let mut bomb = String::from("{ ...F40 } fragment F0 on Query { a }");
    for i in 1..=40 {
        bomb.push_str(&format!(
            " fragment F{i} on Query {{ ...F{p} ...F{p} }}",
            p = i - 1
        ));
    }
    for query in ["{".repeat(1 << 20), "{a".repeat(500_000), bomb] {
        let started = Instant::now();
        let got = send(&client, query_post(&url, &query, None)).await;
        assert_eq!(got.status, 400);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
    }
    // Over max_body_bytes: 413.
    let big = "x".repeat(3 << 20);
    let got = send(&client, query_post(&url, &big, None)).await;
    assert_eq!(got.status, 413);
    // Other routes are not buffered or analysed.
    let got = send(&client, query_post(&gateway.url("/rest"), "{ a(", None)).await;
    assert_eq!(got.status, 200);
    assert_eq!(upstream.requests.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn introspection_can_be_closed_per_route() {
    let upstream = start_upstream().await;
    let gateway = start_gateway(GATEWAY, Some(upstream.addr)).await;
    let client = http1_client();
    let introspect = "{ __schema { types { name } } }";
    let got = send(
        &client,
        query_post(&gateway.url("/closed"), introspect, None),
    )
    .await;
    assert_eq!(got.status, 400);
    assert_eq!(error_code(&got), "INTROSPECTION_DISABLED");
    let got = send(
        &client,
        query_post(&gateway.url("/graphql"), introspect, None),
    )
    .await;
    assert_eq!(got.status, 200);
}

const ENVOY: &str = r#"
admin: { listen: 127.0.0.1:0 }
ext_authz: { http_listen: 127.0.0.1:0, grpc_listen: 127.0.0.1:0, path_prefix: /authz }
rules:
  - { name: api_default, limit: 100, window: 1h }
routes:
  - name: graphql
    match: { path: /graphql }
    rules: [api_default]
    graphql: { max_depth: 3, budget: { limit: 20, window: 1h } }
"#;

fn envoy_check(port: u16, body: &str) -> Request<Full<Bytes>> {
    Request::post(format!("http://127.0.0.1:{port}/authz/graphql"))
        .header("content-type", "application/json")
        .header("x-envoy-external-address", "198.51.100.9")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request")
}

#[tokio::test]
async fn envoy_http_mode_analyses_the_body_envoy_sends() {
    let gateway = start_gateway(ENVOY, None).await;
    let port = gateway
        .gateway
        .addrs()
        .envoy_http
        .expect("ext_authz")
        .port();
    let client = http1_client();
    let deep = json!({ "query": "{ a { b { c { d } } } }" }).to_string();
    let got = send(&client, envoy_check(port, &deep)).await;
    assert_eq!(got.status, 400);
    assert_eq!(error_code(&got), "DEPTH_LIMIT_EXCEEDED");

    let paged = json!({ "query": "{ a(first: 9) { b } }" }).to_string();
    let got = send(&client, envoy_check(port, &paged)).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-graphql-cost"), Some("10"));
    assert_eq!(got.header("x-graphql-budget-remaining"), Some("10"));
    let got = send(&client, envoy_check(port, &paged)).await;
    assert_eq!(got.status, 200);
    let got = send(&client, envoy_check(port, &paged)).await;
    assert_eq!(got.status, 429);
    assert_eq!(error_code(&got), "RATE_LIMIT_EXCEEDED");
    // Without the body (Envoy not configured to send it), only the rules count.
    let got = send(&client, envoy_check(port, "")).await;
    assert_eq!(got.status, 200);
}

fn grpc_check(body: &str) -> CheckRequest {
    let socket = SocketAddress {
        address: "198.51.100.9".to_string(),
        port_specifier: Some(PortSpecifier::PortValue(54_321)),
        ..SocketAddress::default()
    };
    let http = HttpRequest {
        method: "POST".to_string(),
        path: "/graphql".to_string(),
        host: "api.example.com".to_string(),
        headers: HashMap::from([("content-type".to_string(), "application/json".to_string())]),
        body: body.to_string(),
        ..HttpRequest::default()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(AddressKind::SocketAddress(socket)),
                }),
                ..Peer::default()
            }),
            request: Some(AttributesRequest {
                http: Some(http),
                ..AttributesRequest::default()
            }),
            ..AttributeContext::default()
        }),
    }
}

#[tokio::test]
async fn envoy_grpc_mode_analyses_the_body_envoy_sends() {
    let gateway = start_gateway(ENVOY, None).await;
    let addr = gateway.gateway.addrs().envoy_grpc.expect("grpc listener");
    let mut client = AuthorizationClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let check = |body: String| grpc_check(&body);
    let deep = json!({ "query": "{ a { b { c { d } } } }" }).to_string();
    let response: CheckResponse = client.check(check(deep)).await.expect("check").into_inner();
    let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
        panic!("expected a denial: {response:?}");
    };
    assert_eq!(denied.status.as_ref().map(|s| s.code), Some(400));
    let body: serde_json::Value = serde_json::from_str(&denied.body).expect("json");
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        "DEPTH_LIMIT_EXCEEDED"
    );
    assert_ne!(response.status.as_ref().map(|s| s.code), Some(0));

    let paged = json!({ "query": "{ a(first: 9) { b } }" }).to_string();
    let response = client
        .check(check(paged.clone()))
        .await
        .expect("check")
        .into_inner();
    let Some(HttpResponse::OkResponse(ok)) = &response.http_response else {
        panic!("expected OK: {response:?}");
    };
    let cost = ok
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "x-graphql-cost")
        .map(|h| h.value.clone());
    assert_eq!(cost.as_deref(), Some("10"));
    client.check(check(paged.clone())).await.expect("check");
    let response = client
        .check(check(paged))
        .await
        .expect("check")
        .into_inner();
    let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
        panic!("expected a denial: {response:?}");
    };
    assert_eq!(denied.status.as_ref().map(|s| s.code), Some(429));
    assert!(denied.body.contains("RATE_LIMIT_EXCEEDED"));
    assert_eq!(response.status.as_ref().map(|s| s.code), Some(8));
}

#[tokio::test]
async fn without_routes_an_enabled_top_level_section_applies_to_every_request() {
    let upstream = start_upstream().await;
    let yaml = r#"
server: { listen: 127.0.0.1:0 }
admin: { listen: 127.0.0.1:0 }
upstreams:
  default: { url: "http://{upstream}" }
graphql: { enabled: true, max_depth: 2 }
"#;
    let gateway = start_gateway(yaml, Some(upstream.addr)).await;
    let client = http1_client();
    let got = send(
        &client,
        query_post(&gateway.url("/any"), "{ a { b { c } } }", None),
    )
    .await;
    assert_eq!(got.status, 400);
    assert_eq!(error_code(&got), "DEPTH_LIMIT_EXCEEDED");
    let got = send(
        &client,
        query_post(&gateway.url("/any"), "{ a { b } }", None),
    )
    .await;
    assert_eq!(got.status, 200);
}

/// Waits until the gateway's store answers (`/readyz` is 200).
async fn wait_ready(gateway: &integration_tests::net::RunningGateway) {
    let client = http1_client();
    let url = format!("http://{}/readyz", gateway.admin());
    for _ in 0..100 {
        if send(&client, get(&url, &[])).await.status == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the gateway never became ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_budget_through_redis() {
    use integration_tests::redis::{redis_available, redis_url, unique_prefix};
    if !redis_available("two_gateways_share_one_budget_through_redis") {
        return;
    }
    let upstream = start_upstream().await;
    let yaml = format!(
        r#"
server: {{ listen: 127.0.0.1:0 }}
admin: {{ listen: 127.0.0.1:0 }}
storage:
  type: redis
  redis: {{ url: "{}", key_prefix: "{}", timeout: 2s }}
upstreams:
  default: {{ url: "http://{{upstream}}" }}
routes:
  - name: graphql
    match: {{ path: /graphql }}
    graphql: {{ budget: {{ limit: 100, window: 1h }}, mutations_per_minute: 1 }}
"#,
        redis_url(),
        unique_prefix("graphql")
    );
    let a = start_gateway(&yaml, Some(upstream.addr)).await;
    let b = start_gateway(&yaml, Some(upstream.addr)).await;
    wait_ready(&a).await;
    wait_ready(&b).await;
    let client = http1_client();
    // 40 points each: two fit in the shared 100, the third does not, whichever gateway gets it.
    let query = "{ a(first: 39) { b } }";
    for (gateway, status, remaining) in [
        (&a, 200, Some("60")),
        (&b, 200, Some("20")),
        (&a, 429, None),
    ] {
        let got = send(&client, query_post(&gateway.url("/graphql"), query, None)).await;
        assert_eq!(got.status, status, "{:?}", got.body);
        assert_eq!(got.header("x-graphql-budget-remaining"), remaining);
    }
    let got = send(
        &client,
        query_post(&b.url("/graphql"), "mutation { m { id } }", None),
    )
    .await;
    assert_eq!(got.status, 200);
    let got = send(
        &client,
        query_post(&a.url("/graphql"), "mutation { m { id } }", None),
    )
    .await;
    assert_eq!(got.status, 429);
    assert_eq!(error_code(&got), "RATE_LIMIT_EXCEEDED");
}
