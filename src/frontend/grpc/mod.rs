//! gRPC passthrough: calls are forwarded over HTTP/2 untouched, trailers
//! included; the route's `grpc` limits apply per identity (and per method),
//! and every gateway answer to a gRPC caller is a trailers-only response
//! with a gRPC status (SPEC.md, wire behaviour).

mod stream;

pub use stream::{MessageCounter, StreamGuard, StreamState};

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use super::concurrency::{InFlight, InFlightGuard};
use super::protocol_limits::{Caller, concurrency_exceeded, joined, limit_name, per_minute};
use super::respond::Rejection;
use crate::body::{self, Body};
use crate::config::GrpcLimits;
use crate::decision::{BlockedBy, Decision, retry_after_secs};
use crate::engine::Engine;
use crate::snapshot::Snapshot;

pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// gRPC status codes the gateway answers with.
pub mod code {
    pub const DEADLINE_EXCEEDED: u8 = 4;
    pub const PERMISSION_DENIED: u8 = 7;
    pub const RESOURCE_EXHAUSTED: u8 = 8;
    pub const UNIMPLEMENTED: u8 = 12;
    pub const INTERNAL: u8 = 13;
    pub const UNAVAILABLE: u8 = 14;
}

/// Whether a request is a gRPC call (`application/grpc`, `application/grpc+proto`, ...).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The route's `grpc` block, or the top-level defaults when there are no
/// routes and the seed's `grpc.enabled` is on.
pub fn limits_for<'a>(
    snapshot: &'a Snapshot,
    route: Option<&'a crate::route::Route>,
) -> Option<&'a GrpcLimits> {
    match route {
        Some(route) => route.config.grpc.as_ref(),
        None => snapshot
            .config
            .grpc_enabled
            .then_some(&snapshot.config.grpc_defaults),
    }
}

/// An admitted call: its in-flight slot and its message limit.
pub struct Admitted {
    pub guard: Option<InFlightGuard>,
    pub stream_messages_per_minute: Option<u64>,
}

/// Checks a call against `concurrent_requests` (in-flight per identity; a
/// full cap spends nothing) then `requests_per_minute` (per identity, and per
/// method `path` unless `per_method: false`).
pub async fn admit(
    engine: &Engine,
    snapshot: &Snapshot,
    inflight: &Arc<InFlight>,
    route: Option<&str>,
    limits: &GrpcLimits,
    client_ip: IpAddr,
    path: &str,
) -> Result<Admitted, Decision> {
    // Protocol limits count per client address, as the `ip` key does.
    let identity = crate::identity::ip_identity(client_ip);
    let caller = Caller { client_ip, route };
    let guard = match limits.concurrent_requests {
        Some(max) => {
            let name = limit_name(route, "grpc", "concurrent_requests");
            match inflight.try_acquire(&joined(&name, '\0', &identity), max) {
                Some(guard) => Some(guard),
                None => return Err(concurrency_exceeded(engine, caller, &name, &identity, max)),
            }
        }
        None => None,
    };
    if let Some(limit) = limits.requests_per_minute {
        let name = limit_name(route, "grpc", "requests_per_minute");
        let identity = if limits.per_method {
            joined(&identity, ' ', path)
        } else {
            identity
        };
        if let Some(rejection) = per_minute(engine, snapshot, caller, &name, &identity, limit).await
        {
            return Err(rejection);
        }
    }
    Ok(Admitted {
        guard,
        stream_messages_per_minute: limits.stream_messages_per_minute,
    })
}

/// A decision's rejection as a gRPC trailers-only answer: HTTP 200,
/// `grpc-status` 8 for rate limits, 7 for blocks, with the rate-limit and
/// `retry-after` headers the HTTP answer would have had.
pub fn rejection(decision: &Decision, http: Rejection) -> Response<Body> {
    let (status, message) = match decision {
        Decision::RateLimited { quota, retry_after } => (
            code::RESOURCE_EXHAUSTED,
            format!(
                "rate limited by rule {}; retry after {}s",
                quota.rule,
                retry_after_secs(*retry_after)
            ),
        ),
        Decision::Blocked { by, retry_after } => {
            let reason = match by {
                BlockedBy::Blacklist => "blacklist",
                BlockedBy::Violation => "violation",
                BlockedBy::Ddos => "ddos",
            };
            let mut message = format!("blocked ({reason})");
            if let Some(wait) = retry_after {
                let _ = write!(message, "; retry after {}s", retry_after_secs(*wait));
            }
            (code::PERMISSION_DENIED, message)
        }
        Decision::NoRoute => (code::UNIMPLEMENTED, "no route".to_string()),
        Decision::Unavailable { retry_after } => (
            code::UNAVAILABLE,
            format!(
                "rate limit store unavailable; retry after {}s",
                retry_after_secs(*retry_after)
            ),
        ),
        Decision::Allow { .. } => (code::INTERNAL, "internal error".to_string()),
    };
    trailers_only(http.headers, status, &message)
}

/// The gateway's other answers (upstream down or slow, body too large) in
/// gRPC terms, so a gRPC client sees a status rather than a protocol error.
pub fn from_gateway_answer(status: StatusCode, headers: HeaderMap) -> Response<Body> {
    let (status, message) = match status {
        StatusCode::GATEWAY_TIMEOUT => (code::DEADLINE_EXCEEDED, "upstream timed out"),
        StatusCode::BAD_GATEWAY => (code::UNAVAILABLE, "upstream unavailable"),
        StatusCode::PAYLOAD_TOO_LARGE => (code::RESOURCE_EXHAUSTED, "request body too large"),
        _ => (code::INTERNAL, "gateway error"),
    };
    trailers_only(headers, status, message)
}

/// The answer to a call whose client stream broke its rate before the
/// upstream answered: trailers-only, with the stream's `trailers`.
pub fn exhausted_response(trailers: HeaderMap) -> Response<Body> {
    let mut response = Response::new(body::empty());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.extend(trailers);
    response
}

/// A response that is only headers: the call's end and its status at once.
pub fn trailers_only(mut headers: HeaderMap, status: u8, message: &str) -> Response<Body> {
    headers.remove(CONTENT_LENGTH);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(GRPC_STATUS, HeaderValue::from(u16::from(status)));
    if let Ok(value) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert(GRPC_MESSAGE, value);
    }
    // Retry-After and the rate-limit headers stay: clients that read them get the same wait.
    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::OK;
    *response.headers_mut() = headers;
    response
}

/// grpc-message encoding: printable ASCII except `%` as is, all else `%XX`.
pub fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7E).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::decision::Quota;

    #[test]
    fn content_types_of_grpc_are_recognised() {
        for (value, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/grpc-web", true),
            ("application/json", false),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_grpc(&headers), grpc, "{value}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn rejections_are_trailers_only_with_status_8_or_7() {
        let limited = Decision::RateLimited {
            quota: Quota {
                rule: Arc::from("greeter.grpc.requests_per_minute"),
                limit: 2,
                remaining: 0,
                reset_after: Duration::from_secs(30),
                window: Duration::from_secs(60),
                template: None,
            },
            retry_after: Duration::from_millis(29_100),
        };
        let http = Rejection::json(StatusCode::TOO_MANY_REQUESTS, "{}".into());
        let response = rejection(&limited, http.clone());
        assert_eq!(response.status(), StatusCode::OK);
        let h = response.headers();
        assert_eq!(h[CONTENT_TYPE], "application/grpc");
        assert_eq!(h[GRPC_STATUS], "8");
        assert_eq!(
            h[GRPC_MESSAGE],
            "rate limited by rule greeter.grpc.requests_per_minute; retry after 30s"
        );
        let blocked = Decision::Blocked {
            by: BlockedBy::Violation,
            retry_after: Some(Duration::from_secs(900)),
        };
        let response = rejection(&blocked, http);
        assert_eq!(response.headers()[GRPC_STATUS], "7");
        assert_eq!(
            response.headers()[GRPC_MESSAGE],
            "blocked (violation); retry after 900s"
        );
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode("50% done\n é"), "50%25 done%0A %C3%A9");
    }
}
