//! Envoy's gRPC APIs over the engine: ext_authz v3 `Check`, rate limit v3
//! `ShouldRateLimit` and `grpc.health.v1.Health`, served as h2c on one listener.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue as PbHeader, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus as PbDescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use http::header::RETRY_AFTER;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;

use super::quota_text::QuotaText;
use super::unvectored::Unvectored;
use tonic::{Code as GrpcCode, Request, Response, Status};

use crate::config::OnError;
use crate::decision::{Decision, retry_after_secs};
use crate::descriptors::{DescriptorStatus, most_restrictive};
use crate::engine::{Engine, RequestFacts};
use crate::frontend::respond::{self, HeaderOptions};

/// Both Envoy services over one engine.
#[derive(Clone)]
pub struct EnvoyGrpc {
    engine: Arc<Engine>,
}

impl EnvoyGrpc {
    pub fn new(engine: Arc<Engine>) -> EnvoyGrpc {
        EnvoyGrpc { engine }
    }
}

/// The ext_authz, rate limit and health services, ready to serve. Health
/// reports the whole server and both Envoy services as SERVING.
pub async fn router(engine: Arc<Engine>) -> Routes {
    // tonic-health is tonic's own crate, released in step with it (0.14), and
    // adds nothing to the tree beyond what tonic already brings.
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<AuthorizationServer<EnvoyGrpc>>()
        .await;
    reporter
        .set_serving::<RateLimitServiceServer<EnvoyGrpc>>()
        .await;
    let service = EnvoyGrpc::new(engine);
    Routes::new(AuthorizationServer::new(service.clone()))
        .add_service(RateLimitServiceServer::new(service))
        .add_service(health)
}

/// Serves [`router`] over h2c on `listener` until `shutdown` resolves, then
/// lets in-flight calls finish.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let routes = router(engine).await;
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .map(|accepted| accepted.map(Unvectored));
    tonic::transport::Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

#[tonic::async_trait]
impl Authorization for EnvoyGrpc {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let mut request = request.into_inner();
        let checked = CheckedRequest::parse(&mut request)?;
        let snapshot = self.engine.current();
        let facts = RequestFacts {
            peer: checked.peer,
            client_ip: Some(checked.client_ip),
            method: &checked.method,
            host: checked.host,
            // `path_prefix` belongs to Envoy's HTTP service mode only.
            path: checked.path,
            query: checked.query,
            headers: &checked.headers,
            cost: 1,
        };
        // GraphQL routes: the body Envoy sent, analysed as the proxy does.
        let graphql =
            match crate::graphql::check_envoy_body(&self.engine, &snapshot, &facts, checked.body) {
                Ok(charge) => charge,
                Err(error) => return Ok(Response::new(graphql_denied(&error))),
            };
        let extra = graphql.as_ref().map_or(&[][..], |charge| charge.checks());
        let (decision, extra_verdicts, tally) =
            self.engine.decide_tallied(&snapshot, &facts, extra).await;
        let (options, now) = (
            HeaderOptions::of(&snapshot.config.global),
            tally.decided_at(),
        );
        let mut response = match graphql
            .as_ref()
            .and_then(|c| c.rejection(&decision, options, now))
        {
            Some(rejection) => denied(
                rpc_status(GrpcCode::ResourceExhausted, "graphql rate limited".into()),
                &rejection,
            ),
            None => check_response(&decision, options, now),
        };
        if let (Some(charge), Some(HttpResponse::OkResponse(ok))) =
            (&graphql, response.http_response.as_mut())
        {
            let mut headers = HeaderMap::new();
            charge.add_headers(&mut headers, &extra_verdicts);
            ok.headers.extend(header_options(&headers));
            ok.response_headers_to_add.extend(header_options(&headers));
        }
        Ok(Response::new(response))
    }
}

/// A GraphQL request the gateway refuses before counting it (400).
fn graphql_denied(error: &crate::graphql::GraphqlError) -> CheckResponse {
    let status = rpc_status(GrpcCode::InvalidArgument, error.message.clone());
    denied(status, &error.rejection())
}

fn denied(status: RpcStatus, rejection: &respond::Rejection) -> CheckResponse {
    let denied = DeniedHttpResponse {
        status: Some(HttpStatus {
            code: i32::from(rejection.status.as_u16()),
        }),
        headers: header_options(&rejection.headers),
        body: String::from_utf8_lossy(&rejection.body).into_owned(),
    };
    CheckResponse {
        status: Some(status),
        http_response: Some(HttpResponse::DeniedResponse(denied)),
        ..CheckResponse::default()
    }
}

/// The parts of a `CheckRequest` a decision needs, validated. Text is
/// borrowed from the request; the headers are moved out of it.
struct CheckedRequest<'a> {
    peer: IpAddr,
    client_ip: IpAddr,
    method: Method,
    host: Option<&'a str>,
    path: &'a str,
    query: Option<&'a str>,
    headers: HeaderMap,
    /// The request body Envoy sent (`raw_body` when it packs bytes, else `body`).
    body: &'a [u8],
}

impl CheckedRequest<'_> {
    fn parse(request: &mut CheckRequest) -> Result<CheckedRequest<'_>, Status> {
        let attributes = request
            .attributes
            .as_mut()
            .ok_or_else(|| Status::invalid_argument("check request has no attributes"))?;
        let source = source_ip(attributes.source.as_ref());
        let http = attributes
            .request
            .as_mut()
            .and_then(|r| r.http.as_mut())
            .ok_or_else(|| {
                Status::invalid_argument("check request has no attributes.request.http")
            })?;
        let method = Method::from_bytes(http.method.as_bytes()).map_err(|_| {
            Status::invalid_argument(format!(
                "attributes.request.http.method {:?} is not an HTTP method",
                http.method
            ))
        })?;
        if http.path.is_empty() {
            return Err(Status::invalid_argument(
                "attributes.request.http.path is empty",
            ));
        }
        let headers = request_headers(http)?;
        let http: &HttpRequest = http;
        let (path, query) = match http.path.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (http.path.as_str(), None),
        };
        let external = super::envoy_http::external_address(&headers);
        let (peer, client_ip) = match (source, external) {
            (Ok(peer), Some(client)) => (peer, client),
            (Err(_), Some(client)) => (client, client),
            (Ok(peer), None) => (peer, peer),
            (Err(message), None) => return Err(Status::invalid_argument(message)),
        };
        Ok(CheckedRequest {
            peer,
            client_ip,
            method,
            host: (!http.host.is_empty()).then_some(http.host.as_str()),
            path,
            query,
            headers,
            body: if http.raw_body.is_empty() {
                http.body.as_bytes()
            } else {
                &http.raw_body
            },
        })
    }
}

/// `attributes.source.address` as an IP, or why it is not one.
fn source_ip(source: Option<&Peer>) -> Result<IpAddr, String> {
    let address = source
        .and_then(|peer| peer.address.as_ref())
        .and_then(|address| address.address.as_ref());
    match address {
        None => Err("check request has no attributes.source.address".into()),
        Some(AddressKind::SocketAddress(socket)) => socket.address.parse().map_err(|_| {
            format!(
                "attributes.source.address {:?} is not an IP address",
                socket.address
            )
        }),
        Some(_) => Err("attributes.source.address is not a socket address".into()),
    }
}

/// The request headers from the `headers` map, and from `header_map` when
/// Envoy sends raw headers, moved out of the request: the values become
/// header values without a copy. A header that is not valid HTTP is left
/// out: Envoy already replaced what it could not encode, and one odd header
/// must not fail the whole check.
fn request_headers(http: &mut HttpRequest) -> Result<HeaderMap, Status> {
    let raw = std::mem::take(&mut http.header_map).map_or_else(Vec::new, |map| map.headers);
    let count = http.headers.len() + raw.len();
    // Sized once; the cap only bounds the allocation, `try_append` the count.
    let mut headers = HeaderMap::with_capacity(count.min(1024));
    let pairs = std::mem::take(&mut http.headers)
        .into_iter()
        .map(|(key, value)| (key, Bytes::from(value)))
        .chain(raw.into_iter().map(|h| {
            let value = if h.raw_value.is_empty() {
                Bytes::from(h.value)
            } else {
                Bytes::from(h.raw_value)
            };
            (h.key, value)
        }));
    for (name, value) in pairs {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_maybe_shared(value),
        ) else {
            continue;
        };
        headers
            .try_append(name, value)
            .map_err(|_| Status::invalid_argument("too many request headers"))?;
    }
    Ok(headers)
}

/// The ext_authz answer for a decision: OK with the quota headers, or a
/// denial carrying the same status, headers and body as the proxy's.
fn check_response(decision: &Decision, options: HeaderOptions, now: u64) -> CheckResponse {
    let rejection = match decision {
        // Envoy routes; the gateway only limits.
        Decision::NoRoute => None,
        _ => respond::rejection(decision, options, now),
    };
    let Some(rejection) = rejection else {
        let headers = decision.quota().map_or_else(Vec::new, |quota| {
            quota_header_options(&QuotaText::new(quota, options, now))
        });
        // To the upstream, as the HTTP mode does, and to the client, as the proxy does.
        let ok = OkHttpResponse {
            headers: headers.clone(),
            response_headers_to_add: headers,
            ..OkHttpResponse::default()
        };
        return CheckResponse {
            status: Some(rpc_status(GrpcCode::Ok, String::new())),
            http_response: Some(HttpResponse::OkResponse(ok)),
            ..CheckResponse::default()
        };
    };
    let (code, message) = match decision {
        Decision::RateLimited { quota, retry_after } => (
            GrpcCode::ResourceExhausted,
            format!(
                "rate limited by rule {}, retry after {}s",
                quota.rule,
                retry_after_secs(*retry_after)
            ),
        ),
        Decision::Unavailable { .. } => {
            (GrpcCode::Unavailable, "rate limit store unavailable".into())
        }
        _ => (GrpcCode::PermissionDenied, "blocked".into()),
    };
    let denied = DeniedHttpResponse {
        status: Some(HttpStatus {
            code: i32::from(rejection.status.as_u16()),
        }),
        headers: header_options(&rejection.headers),
        body: String::from_utf8_lossy(&rejection.body).into_owned(),
    };
    CheckResponse {
        status: Some(rpc_status(code, message)),
        http_response: Some(HttpResponse::DeniedResponse(denied)),
        ..CheckResponse::default()
    }
}

fn rpc_status(code: GrpcCode, message: String) -> RpcStatus {
    RpcStatus {
        code: code as i32,
        message,
        details: Vec::new(),
    }
}

/// Headers as Envoy's header options, each replacing any header of that name.
fn header_options(headers: &HeaderMap) -> Vec<HeaderValueOption> {
    pb_headers(headers).into_iter().map(overwrite).collect()
}

/// A quota's headers as Envoy's header options, straight from their text.
fn quota_header_options(text: &QuotaText) -> Vec<HeaderValueOption> {
    text.iter()
        .map(|(name, value)| {
            overwrite(PbHeader {
                key: name.as_str().to_string(),
                value: value.to_string(),
                raw_value: Vec::new(),
            })
        })
        .collect()
}

/// `header` replacing any header of its name.
fn overwrite(header: PbHeader) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(header),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..HeaderValueOption::default()
    }
}

/// Headers as Envoy's header values: text where it is text, raw bytes otherwise.
fn pb_headers(headers: &HeaderMap) -> Vec<PbHeader> {
    headers
        .iter()
        .map(|(name, value)| {
            let (value, raw_value) = match value.to_str() {
                Ok(text) => (text.to_string(), Vec::new()),
                Err(_) => (String::new(), value.as_bytes().to_vec()),
            };
            PbHeader {
                key: name.as_str().to_string(),
                value,
                raw_value,
            }
        })
        .collect()
}

#[tonic::async_trait]
impl RateLimitService for EnvoyGrpc {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let request = request.into_inner();
        if request.domain.is_empty() {
            return Err(Status::invalid_argument(
                "rate limit request has an empty domain",
            ));
        }
        // Per-descriptor `limit` overrides and `hits_addend`s are not read: the
        // rules in the config are the limits, and the request's hits_addend the cost.
        let descriptors: Vec<Vec<(String, String)>> = request
            .descriptors
            .into_iter()
            .map(|d| d.entries.into_iter().map(|e| (e.key, e.value)).collect())
            .collect();
        let statuses = match self
            .engine
            .check_descriptors(
                &request.domain,
                &descriptors,
                u64::from(request.hits_addend),
            )
            .await
        {
            Ok(statuses) => statuses,
            Err(_) => match self.engine.snapshot().on_error() {
                OnError::Allow => vec![DescriptorStatus::default(); descriptors.len()],
                OnError::Deny => return Err(Status::unavailable("rate limit store unavailable")),
            },
        };
        Ok(Response::new(rate_limit_response(
            &statuses,
            HeaderOptions::of(&self.engine.current().config.global),
            self.engine.now(),
        )))
    }
}

fn rate_limit_response(
    statuses: &[DescriptorStatus],
    options: HeaderOptions,
    now: u64,
) -> RateLimitResponse {
    let code = |over: bool| if over { Code::OverLimit } else { Code::Ok } as i32;
    let mut headers = HeaderMap::new();
    if let Some(status) = most_restrictive(statuses).map(|i| &statuses[i]) {
        if let Some(quota) = &status.quota {
            respond::add_quota_headers(&mut headers, quota, options, now);
        }
        if let Some(wait) = status.retry_after.filter(|_| status.over_limit) {
            headers.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs(wait)));
        }
    }
    RateLimitResponse {
        overall_code: code(statuses.iter().any(|s| s.over_limit)),
        statuses: statuses
            .iter()
            .map(|status| {
                let Some(quota) = &status.quota else {
                    return PbDescriptorStatus {
                        code: code(false),
                        ..PbDescriptorStatus::default()
                    };
                };
                let (unit, requests_per_unit) = envoy_unit(quota.limit, quota.window);
                PbDescriptorStatus {
                    code: code(status.over_limit),
                    current_limit: Some(RateLimit {
                        name: quota.rule.to_string(),
                        requests_per_unit,
                        unit: unit as i32,
                    }),
                    limit_remaining: u32::try_from(quota.remaining).unwrap_or(u32::MAX),
                    duration_until_reset: Some(pb_duration(quota.reset_after)),
                    ..PbDescriptorStatus::default()
                }
            })
            .collect(),
        response_headers_to_add: pb_headers(&headers),
        ..RateLimitResponse::default()
    }
}

fn pb_duration(duration: Duration) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: duration.subsec_nanos() as i32,
    }
}

/// Envoy's units in seconds; month and year as envoyproxy/ratelimit counts them.
const UNITS: [(Unit, u64); 7] = [
    (Unit::Second, 1),
    (Unit::Minute, 60),
    (Unit::Hour, 3_600),
    (Unit::Day, 86_400),
    (Unit::Week, 604_800),
    (Unit::Month, 2_592_000),
    (Unit::Year, 31_536_000),
];

/// A rule's `limit` per `window` as Envoy's `requests_per_unit` and `unit`.
///
/// Envoy can only say "N per unit". A window of exactly one unit maps as is
/// (`60/1m` is 60 per MINUTE). Any other window takes the unit nearest to it
/// on a log scale (90s → MINUTE, 500ms → SECOND, 2h → HOUR) and the limit
/// scaled to that unit in proportion, rounded, and at least 1: `100/90s` is
/// 67 per MINUTE, `10/500ms` is 20 per SECOND. The counting itself still uses
/// the rule's own window; only the report is rounded.
pub fn envoy_unit(limit: u64, window: Duration) -> (Unit, u32) {
    let window_secs = window.as_secs_f64().max(1e-9);
    if let Some(&(unit, _)) = UNITS
        .iter()
        .find(|(_, secs)| window == Duration::from_secs(*secs))
    {
        return (unit, u32::try_from(limit).unwrap_or(u32::MAX));
    }
    let distance = |secs: u64| (window_secs.ln() - (secs as f64).ln()).abs();
    let (unit, unit_secs) = UNITS
        .iter()
        .copied()
        .min_by(|a, b| distance(a.1).total_cmp(&distance(b.1)))
        .unwrap_or((Unit::Second, 1));
    let scaled = (limit as f64 * unit_secs as f64 / window_secs).round();
    // `as` saturates for floats: huge values become u32::MAX, never wrap.
    (unit, (scaled as u32).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_of_one_unit_map_exactly_and_others_scale_to_the_nearest_unit() {
        let unit = |limit, secs: f64| envoy_unit(limit, Duration::from_secs_f64(secs));
        assert_eq!(unit(60, 60.0), (Unit::Minute, 60));
        assert_eq!(unit(5, 1.0), (Unit::Second, 5));
        assert_eq!(unit(1000, 3600.0), (Unit::Hour, 1000));
        assert_eq!(unit(7, 86_400.0), (Unit::Day, 7));
        assert_eq!(unit(7, 604_800.0), (Unit::Week, 7));
        assert_eq!(unit(100, 90.0), (Unit::Minute, 67));
        assert_eq!(unit(10, 0.5), (Unit::Second, 20));
        assert_eq!(unit(10, 7200.0), (Unit::Hour, 5));
        assert_eq!(unit(1, 7200.0), (Unit::Hour, 1));
        assert_eq!(unit(1, 3.0 * 31_536_000.0), (Unit::Year, 1));
        assert_eq!(unit(u64::MAX, 0.001), (Unit::Second, u32::MAX));
    }

    #[test]
    fn a_no_route_decision_is_allowed_without_headers() {
        let options = HeaderOptions {
            enabled: true,
            style: crate::config::HeaderStyle::Both,
        };
        let response = check_response(&Decision::NoRoute, options, 0);
        assert_eq!(response.status.map(|s| s.code), Some(0));
        assert!(matches!(
            response.http_response,
            Some(HttpResponse::OkResponse(ref ok)) if ok.headers.is_empty()
        ));
    }

    /// A store that is always down.
    struct DeadStore;

    impl crate::store::Store for DeadStore {
        fn check<'a>(
            &'a self,
            _: &'a [crate::store::LimitCheck<'a>],
            _: u64,
        ) -> crate::store::StoreCall<'a> {
            crate::store::StoreCall::ready(Err(crate::store::StoreError::Unavailable(
                "down".into(),
            )))
        }
        fn sweep(&self, _: u64) -> usize {
            0
        }
        fn key_count(&self) -> Option<usize> {
            None
        }
        fn kind(&self) -> &'static str {
            "dead"
        }
    }

    fn over_dead_store(on_error: &str) -> EnvoyGrpc {
        let yaml = format!(
            "storage: {{ on_error: {on_error} }}\nrules:\n  - {{ name: r, limit: 1, window: 60, descriptors: [{{ domain: d, entries: [{{ key: k }}] }}] }}\n"
        );
        let config = match crate::config::load_str(&yaml, "t.yaml", &|_| None) {
            Ok(loaded) => loaded.config,
            Err(errors) => panic!("{errors}"),
        };
        let clock = crate::clock::ManualClock::at_test_epoch();
        EnvoyGrpc::new(Arc::new(Engine::new(config, Arc::new(DeadStore), clock)))
    }

    fn descriptor_request() -> Request<RateLimitRequest> {
        use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
        use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
        Request::new(RateLimitRequest {
            domain: "d".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![Entry {
                    key: "k".into(),
                    value: "v".into(),
                }],
                ..RateLimitDescriptor::default()
            }],
            hits_addend: 1,
        })
    }

    #[tokio::test]
    async fn a_dead_store_follows_on_error() {
        let open = over_dead_store("allow");
        let response = open
            .should_rate_limit(descriptor_request())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.overall_code, Code::Ok as i32);
        assert_eq!(response.statuses.len(), 1);
        assert_eq!(response.statuses[0].code, Code::Ok as i32);

        let closed = over_dead_store("deny");
        let status = closed
            .should_rate_limit(descriptor_request())
            .await
            .unwrap_err();
        assert_eq!(status.code(), GrpcCode::Unavailable);
    }

    #[test]
    fn an_unavailable_store_denies_checks_with_503_and_unavailable() {
        let options = HeaderOptions {
            enabled: true,
            style: crate::config::HeaderStyle::Both,
        };
        let decision = Decision::Unavailable {
            retry_after: Duration::from_secs(1),
        };
        let response = check_response(&decision, options, 0);
        assert_eq!(response.status.map(|s| s.code), Some(14));
        let Some(HttpResponse::DeniedResponse(denied)) = response.http_response else {
            panic!("expected a denial");
        };
        assert_eq!(denied.status.map(|s| s.code), Some(503));
    }
}
