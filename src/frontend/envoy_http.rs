//! Envoy's ext_authz filter in HTTP mode: Envoy sends the client's method,
//! path (behind its `path_prefix`) and headers; we answer 200 to let the
//! request through, with the rate-limit headers for Envoy to pass upstream,
//! or the same 429/403/503 answer the proxy would give, which Envoy relays.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderMap, HeaderName, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::respond::{self, HeaderOptions};
use crate::body::{self, Body};
use crate::decision::Decision;
use crate::engine::{Engine, RequestFacts};
use crate::server::{ConnInfo, Handler};
use crate::snapshot::Snapshot;

const X_ENVOY_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");

/// The most request body Envoy's `with_request_body` may send that we read.
const MAX_CHECK_BODY: usize = 1024 * 1024;

pub struct EnvoyHttp {
    pub engine: Arc<Engine>,
}

impl Handler for EnvoyHttp {
    fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Result<Response<Body>, Infallible>> + Send {
        // Made mutable here, the request is the block's one copy; a `mut`
        // parameter of an async fn would be moved into a second.
        let mut request = request;
        async move { Ok(self.check(&mut request, conn).await) }
    }
}

impl EnvoyHttp {
    /// The request is borrowed, not taken apart: the check's future then
    /// holds no second copy of it.
    async fn check(&self, request: &mut Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        let snapshot = self.engine.current();
        let config = &snapshot.config;
        let prefix = config
            .ext_authz
            .as_ref()
            .map_or("", |e| e.path_prefix.as_str());
        let options = HeaderOptions::of(&config.global);
        // Envoy may send the body (`with_request_body`); read it so the
        // connection stays reusable. Only GraphQL routes look at it.
        let max_body = config.server.as_ref().map_or(MAX_CHECK_BODY, |s| {
            usize::try_from(s.max_body_bytes).unwrap_or(MAX_CHECK_BODY)
        });
        // Most checks carry no body: nothing to collect.
        let body = if request.body().is_end_stream() {
            Bytes::new()
        } else {
            match Limited::new(request.body_mut(), max_body).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE),
            }
        };

        let request = &*request;
        let full_path = request.uri().path();
        let path = strip_prefix(full_path, prefix);
        let host = request
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()));
        let facts = RequestFacts {
            peer: conn.peer.ip(),
            client_ip: external_address(request.headers()),
            method: request.method(),
            host,
            path,
            query: request.uri().query(),
            headers: request.headers(),
            cost: 1,
        };
        let graphql = match graphql_charge(&self.engine, &snapshot, &facts, &body) {
            Ok(charge) => charge,
            Err(rejection) => return rejection,
        };
        let extra = graphql.as_ref().map_or(&[][..], |charge| charge.checks());
        let (decision, extra_verdicts, tally) =
            self.engine.decide_tallied(&snapshot, &facts, extra).await;
        let now = tally.decided_at();
        if let Some(rejection) = graphql
            .as_ref()
            .and_then(|c| c.rejection(&decision, options, now))
        {
            return rejected(rejection);
        }
        match &decision {
            // With routes and none matching, Envoy routes: we only limit.
            Decision::NoRoute => plain(StatusCode::OK),
            Decision::Allow { quota, .. } => {
                let mut response = plain(StatusCode::OK);
                if let Some(quota) = quota {
                    respond::add_quota_headers(response.headers_mut(), quota, options, now);
                }
                if let Some(charge) = &graphql {
                    charge.add_headers(response.headers_mut(), &extra_verdicts);
                }
                response
            }
            _ => match respond::rejection(&decision, options, now) {
                Some(rejection) => rejected(rejection),
                None => plain(StatusCode::OK),
            },
        }
    }
}

/// GraphQL routes: the body Envoy sent, analysed as the proxy does (src/graphql/).
#[allow(clippy::result_large_err)]
fn graphql_charge(
    engine: &Engine,
    snapshot: &Arc<Snapshot>,
    facts: &RequestFacts<'_>,
    body: &Bytes,
) -> Result<Option<crate::graphql::Charge>, Response<Body>> {
    crate::graphql::check_envoy_body(engine, snapshot, facts, body)
        .map_err(|error| rejected(error.rejection()))
}

fn rejected(rejection: respond::Rejection) -> Response<Body> {
    let mut response = Response::new(body::full(rejection.body));
    *response.status_mut() = rejection.status;
    *response.headers_mut() = rejection.headers;
    response
}

fn plain(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(body::empty());
    *response.status_mut() = status;
    response
}

/// The client's path: Envoy's `path_prefix` removed (a path without it is used as it is).
fn strip_prefix<'a>(path: &'a str, prefix: &str) -> &'a str {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) if !prefix.is_empty() && (rest.is_empty() || rest.starts_with('/')) => {
            if rest.is_empty() { "/" } else { rest }
        }
        _ => path,
    }
}

/// `x-envoy-external-address`: the client address Envoy determined, when
/// present and valid. It is set by Envoy itself, which is why it is believed.
/// Read the same way in both ext_authz modes.
pub(super) fn external_address(headers: &HeaderMap) -> Option<IpAddr> {
    let value = headers.get(X_ENVOY_EXTERNAL_ADDRESS)?;
    crate::text::parse_ip(value.as_bytes().trim_ascii()).map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_prefix_is_stripped_only_at_a_segment_boundary() {
        assert_eq!(strip_prefix("/authz/api/items", "/authz"), "/api/items");
        assert_eq!(strip_prefix("/authz/api/items", "/authz/"), "/api/items");
        assert_eq!(strip_prefix("/authz", "/authz"), "/");
        assert_eq!(strip_prefix("/authzx/a", "/authz"), "/authzx/a");
        assert_eq!(strip_prefix("/api", ""), "/api");
    }

    #[test]
    fn the_external_address_must_parse() {
        let mut headers = HeaderMap::new();
        headers.insert(X_ENVOY_EXTERNAL_ADDRESS, "198.51.100.7".parse().unwrap());
        assert_eq!(
            external_address(&headers),
            Some("198.51.100.7".parse().unwrap())
        );
        headers.insert(X_ENVOY_EXTERNAL_ADDRESS, "nonsense".parse().unwrap());
        assert_eq!(external_address(&headers), None);
    }
}
