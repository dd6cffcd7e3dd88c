//! Envoy's gRPC services end to end: ext_authz `Check`, rate limit
//! `ShouldRateLimit` and health, served on 127.0.0.1 and called with real tonic clients.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, HeaderValueOption, SocketAddress};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request as AttributesRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use ratethrottle::clock::SystemClock;
use ratethrottle::engine::Engine;
use ratethrottle::frontend::envoy_grpc;
use ratethrottle::store::MemoryStore;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const YAML: &str = r#"
global:
  header_style: both
lists:
  blacklist: [203.0.113.0/24]
rules:
  - { name: api, limit: 3, window: 60 }
  - { name: dry, limit: 1, window: 60, shadow: true }
  - name: per_ip
    limit: 2
    window: 1m
    descriptors: [{ domain: edge, entries: [{ key: remote_address }] }]
  - name: login
    limit: 2
    window: 1h
    descriptors: [{ domain: edge, entries: [{ key: path, value: /login }] }]
routes:
  - { name: api, match: { path_prefix: /api/ }, rules: [api] }
  - { name: dry, match: { path_prefix: /dry/ }, rules: [dry] }
"#;

/// A running gRPC listener; dropping it shuts the server down.
struct Server {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Server {
    async fn start() -> Server {
        let config = match ratethrottle::config::load_str(YAML, "t.yaml", &|_| None) {
            Ok(loaded) => loaded.config,
            Err(errors) => panic!("config does not load:\n{errors}"),
        };
        let engine = Arc::new(Engine::new(
            config,
            Arc::new(MemoryStore::new()),
            Arc::new(SystemClock),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(envoy_grpc::serve(listener, engine, async {
            let _ = stopped.await;
        }));
        Server { addr, _stop: stop }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect to the gRPC listener")
    }

    async fn authz(&self) -> AuthorizationClient<Channel> {
        AuthorizationClient::new(self.channel().await)
    }

    async fn ratelimit(&self) -> RateLimitServiceClient<Channel> {
        RateLimitServiceClient::new(self.channel().await)
    }
}

fn check_request(source: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    let socket = SocketAddress {
        address: source.to_string(),
        port_specifier: Some(PortSpecifier::PortValue(54_321)),
        ..SocketAddress::default()
    };
    let http = HttpRequest {
        method: method.to_string(),
        path: path.to_string(),
        host: "api.example.com".to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
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

async fn check(client: &mut AuthorizationClient<Channel>, request: CheckRequest) -> CheckResponse {
    client.check(request).await.expect("check").into_inner()
}

fn headers(options: &[HeaderValueOption]) -> HashMap<String, String> {
    options
        .iter()
        .filter_map(|o| o.header.as_ref())
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect()
}

fn rpc_code(response: &CheckResponse) -> i32 {
    response.status.as_ref().map_or(-1, |s| s.code)
}

fn ok(response: &CheckResponse) -> &OkHttpResponse {
    match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok,
        other => panic!("expected an OK response, got {other:?}"),
    }
}

fn denied(response: &CheckResponse) -> &DeniedHttpResponse {
    match &response.http_response {
        Some(HttpResponse::DeniedResponse(denied)) => denied,
        other => panic!("expected a denied response, got {other:?}"),
    }
}

fn http_status(denied: &DeniedHttpResponse) -> i32 {
    denied.status.as_ref().map_or(0, |s| s.code)
}

#[tokio::test]
async fn check_allows_up_to_the_limit_then_denies_with_429_headers_and_json() {
    let server = Server::start().await;
    let mut client = server.authz().await;
    for remaining in ["2", "1", "0"] {
        let response = check(
            &mut client,
            check_request("192.0.2.10", "GET", "/api/items?page=2", &[]),
        )
        .await;
        assert_eq!(rpc_code(&response), 0);
        let ok = ok(&response);
        let to_client = headers(&ok.response_headers_to_add);
        assert_eq!(to_client["x-ratelimit-limit"], "3");
        assert_eq!(to_client["x-ratelimit-remaining"], remaining);
        assert_eq!(to_client["ratelimit-policy"], r#""api";q=3;w=60"#);
        assert_eq!(headers(&ok.headers)["x-ratelimit-remaining"], remaining);
    }

    let response = check(
        &mut client,
        check_request("192.0.2.10", "GET", "/api/items", &[]),
    )
    .await;
    assert_eq!(rpc_code(&response), 8, "RESOURCE_EXHAUSTED");
    let denied = denied(&response);
    assert_eq!(http_status(denied), 429);
    let sent = headers(&denied.headers);
    assert_eq!(sent["retry-after"], "60");
    assert_eq!(sent["content-type"], "application/json");
    assert_eq!(sent["x-ratelimit-remaining"], "0");
    let body: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"error": "rate_limited", "rule": "api", "retry_after": 60})
    );

    // Another client has its own quota; a path no route takes is Envoy's business.
    let other = check(
        &mut client,
        check_request("192.0.2.11", "GET", "/api/items", &[]),
    )
    .await;
    assert_eq!(rpc_code(&other), 0);
    let unrouted = check(
        &mut client,
        check_request("192.0.2.10", "GET", "/elsewhere", &[]),
    )
    .await;
    assert_eq!(rpc_code(&unrouted), 0);
    assert!(ok(&unrouted).response_headers_to_add.is_empty());
}

#[tokio::test]
async fn blacklisted_clients_get_403_and_the_external_address_is_the_client() {
    let server = Server::start().await;
    let mut client = server.authz().await;
    let blocked = check(
        &mut client,
        check_request("203.0.113.7", "GET", "/api/x", &[]),
    )
    .await;
    assert_eq!(rpc_code(&blocked), 7, "PERMISSION_DENIED");
    let denied = denied(&blocked);
    assert_eq!(http_status(denied), 403);
    let body: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"error": "blocked", "reason": "blacklist", "retry_after": null})
    );

    let external = [("x-envoy-external-address", "203.0.113.9")];
    let via_envoy = check(
        &mut client,
        check_request("10.0.0.1", "GET", "/api/x", &external),
    )
    .await;
    assert_eq!(rpc_code(&via_envoy), 7);

    let trusted = [("x-envoy-external-address", "192.0.2.50")];
    let allowed = check(
        &mut client,
        check_request("203.0.113.7", "GET", "/api/x", &trusted),
    )
    .await;
    assert_eq!(rpc_code(&allowed), 0);
    // An unparsable header falls back to the source address.
    let garbage = [("x-envoy-external-address", "not an address")];
    let fallback = check(
        &mut client,
        check_request("203.0.113.7", "GET", "/api/x", &garbage),
    )
    .await;
    assert_eq!(rpc_code(&fallback), 7);
}

#[tokio::test]
async fn a_shadow_rule_never_denies() {
    let server = Server::start().await;
    let mut client = server.authz().await;
    for _ in 0..4 {
        let response = check(
            &mut client,
            check_request("192.0.2.10", "POST", "/dry/run", &[]),
        )
        .await;
        assert_eq!(rpc_code(&response), 0);
    }
}

#[tokio::test]
async fn malformed_attributes_are_invalid_arguments() {
    let server = Server::start().await;
    let mut client = server.authz().await;
    let no_http = {
        let mut request = check_request("192.0.2.10", "GET", "/api/x", &[]);
        if let Some(attributes) = request.attributes.as_mut() {
            attributes.request = None;
        }
        request
    };
    for (request, needle) in [
        (CheckRequest { attributes: None }, "no attributes"),
        (no_http, "attributes.request.http"),
        (check_request("192.0.2.10", "GE T", "/api/x", &[]), "method"),
        (check_request("192.0.2.10", "GET", "", &[]), "path"),
        (
            check_request("somewhere", "GET", "/api/x", &[]),
            "not an IP address",
        ),
    ] {
        let status = client.check(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains(needle), "{}", status.message());
    }
}

#[tokio::test]
async fn raw_headers_in_header_map_are_read_as_text_or_bytes() {
    use envoy_types::pb::envoy::config::core::v3::{HeaderMap as PbHeaderMap, HeaderValue};
    let server = Server::start().await;
    let mut client = server.authz().await;
    // The external address is on the blacklist: only read from `header_map`
    // does it turn the allowed source address into a 403.
    for (value, raw_value) in [("203.0.113.9", Vec::new()), ("", b"203.0.113.9".to_vec())] {
        let mut request = check_request("192.0.2.10", "GET", "/api/x", &[]);
        let http = request
            .attributes
            .as_mut()
            .and_then(|a| a.request.as_mut())
            .and_then(|r| r.http.as_mut())
            .expect("http attributes");
        http.header_map = Some(PbHeaderMap {
            headers: vec![HeaderValue {
                key: "x-envoy-external-address".into(),
                value: value.into(),
                raw_value,
            }],
        });
        let response = check(&mut client, request).await;
        assert_eq!(rpc_code(&response), 7, "{value:?}");
        assert_eq!(http_status(denied(&response)), 403);
    }
}

fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(key, value)| Entry {
                key: key.to_string(),
                value: value.to_string(),
            })
            .collect(),
        ..RateLimitDescriptor::default()
    }
}

async fn should_rate_limit(
    client: &mut RateLimitServiceClient<Channel>,
    descriptors: &[&[(&str, &str)]],
    hits_addend: u32,
) -> RateLimitResponse {
    let request = RateLimitRequest {
        domain: "edge".into(),
        descriptors: descriptors.iter().map(|d| descriptor(d)).collect(),
        hits_addend,
    };
    client
        .should_rate_limit(request)
        .await
        .expect("should_rate_limit")
        .into_inner()
}

fn remaining_and_code(status: &DescriptorStatus) -> (u32, i32) {
    (status.limit_remaining, status.code)
}

#[tokio::test]
async fn should_rate_limit_counts_each_value_up_to_the_limit() {
    let server = Server::start().await;
    let mut client = server.ratelimit().await;
    let ip = [("remote_address", "192.0.2.1")];
    for remaining in [1, 0] {
        let response = should_rate_limit(&mut client, &[&ip], 0).await;
        assert_eq!(response.overall_code, Code::Ok as i32);
        assert_eq!(
            remaining_and_code(&response.statuses[0]),
            (remaining, Code::Ok as i32)
        );
    }
    let over = should_rate_limit(&mut client, &[&ip], 1).await;
    assert_eq!(over.overall_code, Code::OverLimit as i32);
    let status = &over.statuses[0];
    assert_eq!(remaining_and_code(status), (0, Code::OverLimit as i32));
    let limit = status.current_limit.as_ref().unwrap();
    assert_eq!(
        (limit.name.as_str(), limit.requests_per_unit),
        ("per_ip", 2)
    );
    assert_eq!(limit.unit, Unit::Minute as i32);
    let reset = status.duration_until_reset.unwrap();
    assert!((1..=60).contains(&reset.seconds), "{reset:?}");
    let sent: HashMap<_, _> = over
        .response_headers_to_add
        .iter()
        .map(|h| (h.key.as_str(), h.value.as_str()))
        .collect();
    assert_eq!(sent["x-ratelimit-limit"], "2");
    assert_eq!(sent["x-ratelimit-remaining"], "0");
    assert!(sent.contains_key("ratelimit"));

    // A key-only entry: another address has its own count.
    let other = should_rate_limit(&mut client, &[&[("remote_address", "192.0.2.2")]], 1).await;
    assert_eq!(remaining_and_code(&other.statuses[0]), (1, Code::Ok as i32));
}

#[tokio::test]
async fn hits_addend_is_the_cost_and_unknown_descriptors_are_ok() {
    let server = Server::start().await;
    let mut client = server.ratelimit().await;
    let login = [("path", "/login")];
    let first = should_rate_limit(&mut client, &[&login], 2).await;
    assert_eq!(remaining_and_code(&first.statuses[0]), (0, Code::Ok as i32));
    let limit = first.statuses[0].current_limit.as_ref().unwrap();
    assert_eq!(
        (limit.name.as_str(), limit.unit),
        ("login", Unit::Hour as i32)
    );

    let unknown = [("tenant", "acme")];
    let mixed = should_rate_limit(&mut client, &[&unknown, &login], 1).await;
    assert_eq!(mixed.overall_code, Code::OverLimit as i32);
    assert_eq!(mixed.statuses.len(), 2);
    assert_eq!(mixed.statuses[0].code, Code::Ok as i32);
    assert!(mixed.statuses[0].current_limit.is_none());
    assert_eq!(mixed.statuses[1].code, Code::OverLimit as i32);

    let alone = should_rate_limit(&mut client, &[&unknown], 1).await;
    assert_eq!(alone.overall_code, Code::Ok as i32);
    assert!(alone.response_headers_to_add.is_empty());

    let empty_domain = client
        .should_rate_limit(RateLimitRequest::default())
        .await
        .unwrap_err();
    assert_eq!(empty_domain.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn health_reports_serving() {
    let server = Server::start().await;
    let mut health = HealthClient::new(server.channel().await);
    for service in [
        "",
        "envoy.service.auth.v3.Authorization",
        "envoy.service.ratelimit.v3.RateLimitService",
    ] {
        let response = health
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            response.status,
            ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
}

/// The same services through `ratethrottle serve`'s own wiring: the gateway
/// opens `ext_authz.grpc_listen` from the config and drains it on shutdown.
#[tokio::test]
async fn the_gateway_serves_check_on_its_configured_grpc_listener() {
    let yaml = "admin: { listen: 127.0.0.1:0 }\next_authz: { grpc_listen: 127.0.0.1:0 }\nrules: [{ name: r, limit: 1, window: 60 }]\n";
    let running = integration_tests::net::start_gateway(yaml, None).await;
    let addr = running.gateway.addrs().envoy_grpc.expect("gRPC listener");
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = AuthorizationClient::new(channel);
    let allowed = check(
        &mut client,
        check_request("198.51.100.77", "GET", "/a", &[]),
    )
    .await;
    assert_eq!(allowed.status.expect("status").code, 0);
    let denied = check(
        &mut client,
        check_request("198.51.100.77", "GET", "/a", &[]),
    )
    .await;
    assert_eq!(denied.status.expect("status").code, 8, "RESOURCE_EXHAUSTED");
    assert!(running.gateway.shutdown().await, "drained");
}
