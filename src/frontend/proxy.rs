//! The reverse proxy: request → [`RequestFacts`] → decision → either the
//! gateway's own answer or the request forwarded upstream, streamed both ways,
//! with forwarding headers set and rate-limit headers added to the response.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use smallvec::SmallVec;

use super::concurrency::InFlight;
use super::grpc;
use super::passthrough::{Admission, Kind, SendError};
use super::respond::{self, HeaderOptions, Rejection};
use crate::body::{self, Body, BoxError};
use crate::decision::Decision;
use crate::engine::{Engine, RequestFacts};
use crate::graphql::{Charge, Gate};
use crate::metrics::ServerMetrics;
use crate::protect::ddos::Event as DdosEvent;
use crate::server::{ConnInfo, Handler, Lifecycle};
use crate::upstream::{UpstreamError, Upstreams};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

pub struct Proxy {
    pub engine: Arc<Engine>,
    pub upstreams: Arc<ArcSwap<Upstreams>>,
    pub metrics: Arc<ServerMetrics>,
    /// Open WebSocket connections and gRPC calls per identity (this instance).
    pub inflight: Arc<InFlight>,
    /// WebSocket relays outlive their request: tracked, and closed on drain.
    pub lifecycle: Lifecycle,
}

/// Marks a response the gateway made itself (not the upstream's), so a gRPC
/// caller can get it as a gRPC status instead.
#[derive(Debug, Clone, Copy)]
struct GatewayAnswer;

impl Handler for Proxy {
    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        conn: ConnInfo,
    ) -> Result<Response<Body>, Infallible> {
        // The work below is a future of some 4 KiB, and hyper moves the
        // handler's future several times before polling it (into the
        // connection's state; for HTTP/2 into a task of its own). Boxed,
        // it is built once, in place, and only a pointer moves.
        Ok(Box::pin(self.answer(request, conn)).await)
    }
}

impl Proxy {
    async fn answer(&self, request: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        let started = Instant::now();
        let grpc = grpc::is_grpc(request.headers());
        // GraphQL routes: the body is read and analysed first (src/graphql/).
        let mut response = match crate::graphql::gate(&self.engine, request, conn.peer.ip()).await {
            Gate::Pass(request) => self.proxy(request, conn, None).await,
            Gate::Analysed(request, charge) => self.proxy(request, conn, charge.as_ref()).await,
            Gate::Reject(rejection) => reply(rejection),
        };
        if grpc && response.extensions().get::<GatewayAnswer>().is_some() {
            response = grpc::from_gateway_answer(response.status(), response.headers().clone());
        }
        self.metrics.request_duration.observe(started.elapsed());
        response
    }

    async fn proxy<B>(
        &self,
        mut request: Request<B>,
        conn: ConnInfo,
        graphql: Option<&Charge>,
    ) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let snapshot = self.engine.snapshot();
        let config = &snapshot.config;
        let options = HeaderOptions::of(&config.global);
        let max_body = config
            .server
            .as_ref()
            .map_or(u64::MAX, |s| s.max_body_bytes);

        // DDoS protection counts upstream errors and oversized requests
        // against the client; worked out only while it is on.
        let ddos_client = self.engine.ddos().map(|_| {
            crate::identity::client_ip(
                conn.peer.ip(),
                request.headers(),
                &config.global.trusted_proxies,
            )
        });
        let ddos_event = |event| {
            if let Some(client) = ddos_client {
                self.engine.record_ddos_event(client, event);
            }
        };

        if let Some(length) = content_length(request.headers())
            && length > max_body
        {
            ddos_event(DdosEvent::Guard);
            return reply(too_large(max_body));
        }

        // A cheap reference-counted copy: the request itself moves on upstream.
        let host = request_host(&request);
        let client_version = request.version();
        let kind = Kind::of(&request);
        let decision = {
            let facts = RequestFacts {
                peer: conn.peer.ip(),
                client_ip: None,
                method: request.method(),
                host: host.as_ref().and_then(|h| h.to_str().ok()),
                path: request.uri().path(),
                query: request.uri().query(),
                headers: request.headers(),
                cost: 1,
            };
            let extra = graphql.map_or(&[][..], |charge| charge.checks());
            self.engine.decide_tallied(&snapshot, &facts, extra).await
        };
        let (decision, extra_verdicts, tally) = decision;
        let now = tally.decided_at();
        let graphql_rejection = graphql.and_then(|c| c.rejection(&decision, options, now));
        if let Some(rejection) =
            graphql_rejection.or_else(|| respond::rejection(&decision, options, now))
        {
            return match kind {
                Kind::Grpc => grpc::rejection(&decision, rejection),
                _ => reply(rejection),
            };
        }
        let Decision::Allow {
            quota,
            route,
            whitelisted,
            ..
        } = decision
        else {
            return reply(Rejection::json(
                StatusCode::INTERNAL_SERVER_ERROR,
                r#"{"error":"internal"}"#.into(),
            ));
        };
        let upstream_name = route
            .as_ref()
            .and_then(|r| r.upstream.clone())
            .or_else(|| snapshot.default_upstream.clone());
        let Some(upstream_name) = upstream_name else {
            return reply(Rejection::json(
                StatusCode::BAD_GATEWAY,
                r#"{"error":"no_upstream","message":"no upstream is configured for this route"}"#
                    .into(),
            ));
        };

        let trusted = config
            .global
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&conn.peer.ip()));
        let admission = Admission {
            engine: &self.engine,
            snapshot: &snapshot,
            inflight: &self.inflight,
            route: route.as_deref(),
            exempt: whitelisted || !config.global.enabled,
            // Plain HTTP has no protocol limits: spare it the header walk.
            client_ip: match (kind, ddos_client) {
                (Kind::Http, _) => conn.peer.ip(),
                (_, Some(client)) => client,
                _ => crate::identity::client_ip(
                    conn.peer.ip(),
                    request.headers(),
                    &config.global.trusted_proxies,
                ),
            },
        };
        let mut passthrough = match admission.admit(kind, &mut request).await {
            Ok(passthrough) => passthrough,
            Err(refusal) => {
                tally.refused_by(route.as_deref().map(|r| &*r.name), &refusal);
                return self.protocol_rejection(kind, &refusal, options);
            }
        };
        drop(tally);
        let mut outgoing = forwarded_request(request, conn, host, trusted, max_body);
        passthrough.prepare(&mut outgoing, &self.engine);
        let upstreams = self.upstreams.load_full();
        let mut response = match passthrough.send(&upstreams, &upstream_name, outgoing).await {
            Ok(response) => response,
            Err(SendError::Upstream(error)) => {
                let rejection = self.upstream_failed(&upstream_name, &error, max_body);
                if rejection.status == StatusCode::PAYLOAD_TOO_LARGE {
                    ddos_event(DdosEvent::Guard);
                }
                return reply(rejection);
            }
            Err(SendError::StreamExhausted(trailers)) => return grpc::exhausted_response(trailers),
        };
        if response.status().is_client_error() || response.status().is_server_error() {
            ddos_event(DdosEvent::UpstreamError);
        }
        strip_hop_by_hop(response.headers_mut());
        // After the stripping: a WebSocket 101 gets its Upgrade headers back.
        let mut response = passthrough.finish(response, &self.engine, &self.lifecycle);
        // The client speaks its own version with us, whatever the upstream spoke (e.g. HTTP/1.0).
        *response.version_mut() = client_version;
        if let Some(quota) = &quota {
            respond::add_quota_headers(response.headers_mut(), quota, options, now);
        }
        if let Some(charge) = graphql {
            charge.add_headers(response.headers_mut(), &extra_verdicts);
        }
        response
    }

    /// A WebSocket handshake or gRPC call over one of its route's protocol limits.
    fn protocol_rejection(
        &self,
        kind: Kind,
        decision: &Decision,
        options: HeaderOptions,
    ) -> Response<Body> {
        let rejection = respond::rejection(decision, options, self.engine.now());
        match (kind, rejection) {
            (Kind::Grpc, Some(rejection)) => grpc::rejection(decision, rejection),
            (_, Some(rejection)) => reply(rejection),
            (_, None) => reply(Rejection::json(
                StatusCode::INTERNAL_SERVER_ERROR,
                r#"{"error":"internal"}"#.into(),
            )),
        }
    }

    fn upstream_failed(&self, upstream: &str, error: &UpstreamError, max_body: u64) -> Rejection {
        if is_body_too_large(error) {
            return too_large(max_body);
        }
        self.metrics.upstream_error(upstream, error.kind());
        tracing::debug!(upstream, %error, "upstream request failed");
        let code = if error.status() == StatusCode::GATEWAY_TIMEOUT {
            "upstream_timeout"
        } else {
            "upstream_unavailable"
        };
        let body = serde_json::json!({ "error": code, "upstream": upstream });
        Rejection::json(error.status(), body.to_string())
    }
}

fn reply(rejection: Rejection) -> Response<Body> {
    let mut response = Response::new(body::full(rejection.body));
    *response.status_mut() = rejection.status;
    *response.headers_mut() = rejection.headers;
    response.extensions_mut().insert(GatewayAnswer);
    response
}

fn too_large(max_body: u64) -> Rejection {
    Rejection::json(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(r#"{{"error":"payload_too_large","max_body_bytes":{max_body}}}"#),
    )
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Host header (HTTP/1.1) or :authority (HTTP/2).
fn request_host<B>(request: &Request<B>) -> Option<HeaderValue> {
    match request.headers().get(HOST) {
        Some(host) => Some(host.clone()),
        None => HeaderValue::from_str(request.uri().authority()?.as_str()).ok(),
    }
}

/// The request as the upstream sees it: hop-by-hop headers removed,
/// forwarding headers set, the body streamed within `max_body`. The URI is
/// left as it came: [`Upstreams::send`] points it at the upstream and names
/// the site from the client's Host or URI authority.
fn forwarded_request<B>(
    request: Request<B>,
    conn: ConnInfo,
    host: Option<HeaderValue>,
    trusted_peer: bool,
    max_body: u64,
) -> Request<Body>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, incoming) = request.into_parts();
    // Let the client library pick the upstream's protocol version.
    parts.version = http::Version::HTTP_11;
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);

    let peer = conn.peer.ip().to_canonical();
    // From a trusted proxy we extend its chain; from anyone else the chain
    // would be the client's invention, so it starts over with the peer.
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(chain) if trusted_peer => {
            let mut list = String::with_capacity(chain.len() + 17);
            list.push_str(chain);
            list.push_str(", ");
            crate::text::push_ip(&mut list, peer);
            list
        }
        _ => crate::text::ip_string(peer),
    };
    // The string's buffer becomes the header value as it is, without a copy.
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(forwarded_for)) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    if !(trusted_peer && headers.contains_key(&X_FORWARDED_PROTO)) {
        let proto = if conn.tls { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    // The Host itself is the upstream pool's to write: from an HTTP/2
    // client, whose :authority stays in the URI, it is a Host header for an
    // HTTP/1.1 upstream and the :authority again for an HTTP/2 one.
    if let Some(host) = host
        && !(trusted_peer && headers.contains_key(&X_FORWARDED_HOST))
    {
        headers.insert(X_FORWARDED_HOST, host);
    }

    let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
    let body = body::stream(Limited::new(incoming, limit).map_err(|e| e as BoxError));
    Request::from_parts(parts, body)
}

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1, with the
/// older Keep-Alive and Proxy-Connection). Upgrade too: WebSocket passthrough
/// handles it apart. Names as text: a `const` of `HeaderName`s would be built
/// and dropped at every use.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers and any header the Connection header names.
/// `te: trailers` survives: gRPC needs it end to end.
/// One pass over the headers finds what to remove, so a message without
/// hop-by-hop headers (most of them) costs no removals at all.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut doomed: SmallVec<[HeaderName; 4]> = SmallVec::new();
    let mut keeps_trailers = false;
    for (name, value) in headers.iter() {
        if name == http::header::CONNECTION {
            let listed = value.to_str().ok().into_iter().flat_map(|v| v.split(','));
            // Names removed anyway (`keep-alive`, the usual one) need no
            // copy; `te` does, as `te: trailers` alone is otherwise kept.
            let removed_anyway = |n: &str| {
                !n.eq_ignore_ascii_case("te")
                    && HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(n))
            };
            doomed.extend(
                listed
                    .map(str::trim)
                    .filter(|n| !removed_anyway(n))
                    .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok()),
            );
        } else if name == http::header::TE {
            // Exactly `te: trailers`, as every gRPC call sends it, is left in
            // place rather than removed and written again.
            if value.as_bytes() == b"trailers" {
                keeps_trailers = true;
                continue;
            }
            keeps_trailers |= value.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
        }
        if HOP_BY_HOP.contains(&name.as_str()) {
            doomed.push(name.clone());
        }
    }
    // `te` is written again only when it was removed (another value beside
    // `trailers`, or named by Connection).
    let te_removed = doomed.contains(&http::header::TE);
    for name in doomed {
        headers.remove(name);
    }
    if keeps_trailers && te_removed {
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Whether the upstream request failed because the client's body ran past `max_body_bytes`.
fn is_body_too_large(error: &UpstreamError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if current.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = current.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pairs` as a header map (repeated names appended) after stripping.
    fn stripped(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut headers);
        headers
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let headers = stripped(&[
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "secret"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers, deflate"),
            ("upgrade", "h2c"),
            ("x-kept", "yes"),
        ]);
        let mut left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["te", "x-kept"]);
        assert_eq!(headers["te"], "trailers");

        // Connection's names in any case; `close` names no header.
        let headers = stripped(&[
            ("connection", "Keep-Alive, X-Private , close"),
            ("keep-alive", "timeout=5"),
            ("x-private", "secret"),
            ("x-kept", "yes"),
        ]);
        assert_eq!(headers.keys().collect::<Vec<_>>(), ["x-kept"]);
    }

    #[test]
    fn te_trailers_passes_and_any_other_te_goes() {
        let te = |pairs: &[(&'static str, &'static str)]| {
            stripped(pairs)
                .get("te")
                .map(|v| v.to_str().unwrap().to_string())
        };
        assert_eq!(te(&[("te", "trailers")]).as_deref(), Some("trailers"));
        assert_eq!(te(&[("te", "gzip")]), None);
        assert_eq!(
            te(&[("te", "gzip"), ("te", "trailers")]).as_deref(),
            Some("trailers")
        );
        // Named by Connection, `te: trailers` is still reduced to itself.
        assert_eq!(
            te(&[("connection", "te"), ("te", "trailers")]).as_deref(),
            Some("trailers")
        );
    }
}
