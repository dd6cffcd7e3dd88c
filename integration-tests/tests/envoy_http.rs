//! Envoy's ext_authz HTTP mode, sent what Envoy sends: the client's method,
//! path behind `path_prefix`, headers, `x-envoy-external-address`, bodies.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use integration_tests::net::{http1_client, send, start_gateway};

const ENVOY: &str = r#"
admin: { listen: 127.0.0.1:0 }
ext_authz: { http_listen: 127.0.0.1:0, path_prefix: /authz }
global: { trusted_proxies: [127.0.0.0/8] }
rules:
  - { name: auth_strict, limit: 2, window: 60, strategy: sliding_window }
  - { name: api_default, limit: 100, window: 1h, strategy: token_bucket }
routes:
  - { name: login, match: { path_prefix: /api/auth, methods: [POST] }, rules: [auth_strict, api_default] }
  - { name: api, match: { path_prefix: /api/ }, rules: [api_default] }
lists: { blacklist: [203.0.113.0/24] }
"#;

fn check(
    port: u16,
    method: &str,
    path: &str,
    client: &str,
    body: &'static str,
) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .header("host", "shop.example.com")
        .header("x-envoy-external-address", client)
        .header("x-request-id", "r-1")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("request")
}

#[tokio::test]
async fn check_requests_get_200_with_headers_then_the_proxy_s_429() {
    let gateway = start_gateway(ENVOY, None).await;
    let port = gateway
        .gateway
        .addrs()
        .envoy_http
        .expect("ext_authz listener")
        .port();
    let client = http1_client();
    for remaining in ["1", "0"] {
        let got = send(
            &client,
            check(
                port,
                "POST",
                "/authz/api/auth/login",
                "198.51.100.1",
                "{\"u\":1}",
            ),
        )
        .await;
        assert_eq!(got.status, 200);
        assert_eq!(got.header("x-ratelimit-remaining"), Some(remaining));
        assert!(
            got.header("ratelimit-policy")
                .unwrap()
                .starts_with("\"auth_strict\"")
        );
    }
    let got = send(
        &client,
        check(port, "POST", "/authz/api/auth/login", "198.51.100.1", ""),
    )
    .await;
    assert_eq!(got.status, 429);
    assert_eq!(got.header("retry-after"), Some("60"));
    assert_eq!(
        got.json(),
        serde_json::json!({"error": "rate_limited", "rule": "auth_strict", "retry_after": 60})
    );
    // Another client (by Envoy's external address) is counted apart.
    let got = send(
        &client,
        check(port, "POST", "/authz/api/auth/login", "198.51.100.2", ""),
    )
    .await;
    assert_eq!(got.status, 200);
}

#[tokio::test]
async fn any_method_is_accepted_and_unrouted_paths_are_allowed() {
    let gateway = start_gateway(ENVOY, None).await;
    let port = gateway.gateway.addrs().envoy_http.unwrap().port();
    let client = http1_client();
    for method in ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"] {
        let got = send(
            &client,
            check(port, method, "/authz/api/items?x=1", "198.51.100.9", ""),
        )
        .await;
        assert_eq!(got.status, 200, "{method}");
    }
    // No route matches: Envoy routes, the gateway only limits.
    let got = send(
        &client,
        check(port, "GET", "/authz/static/logo.png", "198.51.100.9", ""),
    )
    .await;
    assert_eq!(got.status, 200);
    assert!(got.header("x-ratelimit-limit").is_none());
}

#[tokio::test]
async fn blacklisted_clients_get_403_by_their_external_address() {
    let gateway = start_gateway(ENVOY, None).await;
    let port = gateway.gateway.addrs().envoy_http.unwrap().port();
    let got = send(
        &http1_client(),
        check(port, "GET", "/authz/api/items", "203.0.113.50", ""),
    )
    .await;
    assert_eq!(got.status, 403);
    assert_eq!(got.json()["reason"], "blacklist");
}

#[tokio::test]
async fn without_the_external_address_forwarded_for_from_a_trusted_peer_counts() {
    let gateway = start_gateway(&ENVOY.replace("limit: 2,", "limit: 1,"), None).await;
    let port = gateway.gateway.addrs().envoy_http.unwrap().port();
    let client = http1_client();
    let request = |xff: &str| {
        Request::post(format!("http://127.0.0.1:{port}/authz/api/auth/login"))
            .header("x-forwarded-for", xff)
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    assert_eq!(send(&client, request("198.51.100.30")).await.status, 200);
    assert_eq!(send(&client, request("198.51.100.31")).await.status, 200);
    assert_eq!(send(&client, request("198.51.100.30")).await.status, 429);
}
