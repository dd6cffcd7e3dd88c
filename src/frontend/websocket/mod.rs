//! WebSocket passthrough: the HTTP/1.1 Upgrade handshake is checked against
//! the route's `websocket` limits (per identity, before upgrading), forwarded
//! with the client's subprotocol and extension offers, and once both sides
//! have switched protocols the bytes are relayed as they are ([`relay`]),
//! counted per connection.

pub mod frames;
pub mod limits;
pub mod relay;

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::concurrency::{InFlight, InFlightGuard};
use super::protocol_limits::{
    self, Caller, Reporter, concurrency_exceeded, limit_name, per_minute,
};
use crate::config::WebSocketLimits;
use crate::decision::Decision;
use crate::engine::Engine;
use crate::server::Lifecycle;
use crate::snapshot::Snapshot;
use limits::MessagePolicy;

/// Whether a request asks to switch to WebSocket (RFC 6455 §4.1): an
/// HTTP/1.1 GET with `Connection: upgrade` and `Upgrade: websocket`.
pub fn is_upgrade<B>(request: &Request<B>) -> bool {
    request.method() == Method::GET
        && request.version() == Version::HTTP_11
        && has_token(request.headers(), CONNECTION, "upgrade")
        && has_token(request.headers(), UPGRADE, "websocket")
}

fn has_token(headers: &HeaderMap, name: http::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The route's `websocket` block, or the top-level defaults when there are
/// no routes and the seed's `websocket.enabled` is on.
pub fn limits_for<'a>(
    snapshot: &'a Snapshot,
    route: Option<&'a crate::route::Route>,
) -> Option<&'a WebSocketLimits> {
    match route {
        Some(route) => route.config.websocket.as_ref(),
        None => snapshot
            .config
            .websocket_enabled
            .then_some(&snapshot.config.websocket_defaults),
    }
}

const UNLIMITED: WebSocketLimits = WebSocketLimits {
    connections_per_minute: None,
    max_concurrent_connections: None,
    messages_per_minute: None,
    bytes_per_minute: None,
    max_message_size: None,
};

/// An admitted handshake: the slot it holds and the limits its messages get.
pub struct Admitted {
    guard: Option<InFlightGuard>,
    policy: MessagePolicy,
}

/// Checks the handshake limits for `client_ip`: `max_concurrent_connections`
/// first (nothing is spent when it is full), then `connections_per_minute`.
pub async fn admit(
    engine: &Engine,
    snapshot: &Snapshot,
    inflight: &Arc<InFlight>,
    route: Option<&str>,
    limits: &WebSocketLimits,
    client_ip: IpAddr,
) -> Result<Admitted, Decision> {
    // Protocol limits count per client address, as the `ip` key does.
    let identity = crate::identity::ip_identity(client_ip);
    let caller = Caller { client_ip, route };
    let guard = match limits.max_concurrent_connections {
        Some(max) => {
            let name = limit_name(route, "websocket", "max_concurrent_connections");
            let key = protocol_limits::joined(&name, '\0', &identity);
            match inflight.try_acquire(&key, max) {
                Some(guard) => Some(guard),
                None => return Err(concurrency_exceeded(engine, caller, &name, &identity, max)),
            }
        }
        None => None,
    };
    if let Some(limit) = limits.connections_per_minute {
        let name = limit_name(route, "websocket", "connections_per_minute");
        if let Some(rejection) = per_minute(engine, snapshot, caller, &name, &identity, limit).await
        {
            return Err(rejection);
        }
    }
    Ok(Admitted {
        guard,
        policy: MessagePolicy::new(limits),
    })
}

/// Takes the client's side of the upgrade out of the request before it is
/// forwarded (hyper hands over the connection through it).
pub fn take_upgrade<B>(request: &mut Request<B>) -> OnUpgrade {
    hyper::upgrade::on(request)
}

/// Puts back the headers hop-by-hop stripping removed: the upstream must
/// see the upgrade request.
pub fn restore_upgrade_headers(headers: &mut HeaderMap) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
}

/// What the relay of one admitted WebSocket connection works with.
pub struct Relay {
    pub admitted: Option<Admitted>,
    pub now: relay::Now,
    pub reporter: Option<Reporter>,
}

/// When the upstream switched protocols, relays the two upgraded connections
/// in the background and returns the 101 for the client; any other answer
/// (a refusal, an error page) goes back as it is. The relay is one of the
/// gateway's tracked connections: a shutdown closes it with 1001 (going
/// away) at a frame boundary and waits for it, as for a request in flight.
pub fn finish<B>(
    mut response: Response<B>,
    client: OnUpgrade,
    relay: Relay,
    lifecycle: &Lifecycle,
) -> Response<B> {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return response;
    }
    let upstream = hyper::upgrade::on(&mut response);
    restore_upgrade_headers(response.headers_mut());
    let Relay {
        admitted,
        now,
        reporter,
    } = relay;
    let (guard, policy) = match admitted {
        Some(Admitted { guard, policy }) => (guard, policy),
        None => (None, MessagePolicy::new(&UNLIMITED)),
    };
    let drain = lifecycle.drain.clone();
    lifecycle.tracker.spawn(async move {
        // The slot stays taken for as long as this task runs: until both
        // sides have hung up, even when the upstream vanished first.
        let _guard = guard;
        let (client, upstream) = match tokio::join!(client, upstream) {
            (Ok(client), Ok(upstream)) => (client, upstream),
            (client, upstream) => {
                tracing::debug!(
                    client_ok = client.is_ok(),
                    upstream_ok = upstream.is_ok(),
                    "websocket upgrade did not complete"
                );
                return;
            }
        };
        let (client, upstream) = (TokioIo::new(client), TokioIo::new(upstream));
        let outcome = relay::relay(client, upstream, policy, now, drain).await;
        if let relay::Outcome::ClosedByGateway(reason) = outcome {
            tracing::debug!(code = reason.code, reason = %reason.reason, "websocket closed by the gateway");
            if let (Some(reporter), Some((key, limit))) = (&reporter, reason.limit) {
                reporter.report("websocket", key, limit);
            }
        }
    });
    response
}
