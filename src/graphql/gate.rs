//! Where the front ends meet GraphQL: find out whether a request goes to a
//! route with a `graphql` block, read its body within `max_body_bytes`
//! (only for those routes), analyse it and hand back the [`Charge`] that
//! joins the engine's store batch. Other requests pass untouched.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::CONTENT_TYPE;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::analysis::{self, AnalysisError, CostModel};
use super::limits::{Charge, GraphqlError, check_operation};
use super::request;
use crate::body::{self, Body};
use crate::config::GraphqlLimits;
use crate::engine::{Engine, RequestFacts};
use crate::frontend::respond::Rejection;
use crate::identity;
use crate::route::{self, Route, RouteRequest};
use crate::snapshot::Snapshot;

/// What the proxy does with a request before deciding it.
pub enum Gate {
    /// Not for a GraphQL route (or exempt): the proxy carries on as usual.
    Pass(Request<Incoming>),
    /// Read and analysed; the body is the bytes received, unchanged. No
    /// charge when the request holds no operation (a GET of GraphiQL).
    Analysed(Request<Body>, Option<Charge>),
    /// Answered by the gateway: 400 (unreadable, over a static limit) or 413.
    Reject(Rejection),
}

/// The request facts the GraphQL routing needs.
pub struct Target<'a> {
    pub peer: IpAddr,
    /// When the front end knows better than peer + X-Forwarded-For (Envoy).
    pub client_ip: Option<IpAddr>,
    pub method: &'a Method,
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

/// A route with a `graphql` block, held with the snapshot it came from.
pub struct GraphqlRoute {
    snapshot: Arc<Snapshot>,
    /// `None`: no routes, the top-level `graphql` section (enabled) applies.
    route: Option<Arc<Route>>,
}

impl GraphqlRoute {
    pub fn name(&self) -> &str {
        self.route.as_ref().map_or("", |r| &r.name)
    }

    pub fn limits(&self) -> &GraphqlLimits {
        match self.route.as_ref().and_then(|r| r.config.graphql.as_ref()) {
            Some(limits) => limits,
            None => &self.snapshot.config.graphql_defaults,
        }
    }
}

/// The route and its `graphql` block when this request is to be analysed:
/// the gateway is enabled, the route has the block, and the caller is on
/// neither list (the whitelist bypasses every limit; the blacklist answer
/// comes from the engine, before any parsing).
pub fn graphql_route(
    engine: &Engine,
    snapshot: &Arc<Snapshot>,
    target: &Target<'_>,
) -> Option<GraphqlRoute> {
    let config = &snapshot.config;
    if !config.global.enabled {
        return None;
    }
    let route = match snapshot.routes.as_ref() {
        Some(routes) => {
            let request = RouteRequest {
                method: target.method,
                host: target.host,
                path: target.path,
                headers: target.headers,
            };
            let found = route::find(routes, &request)?;
            found.config.graphql.as_ref()?;
            Some(Arc::clone(found))
        }
        // Without routes, the top-level section applies to every request when enabled.
        None if config.graphql_enabled => None,
        None => return None,
    };
    let client_ip = target.client_ip.unwrap_or_else(|| {
        identity::client_ip(target.peer, target.headers, &config.global.trusted_proxies)
    });
    if engine.lists().lookup(client_ip, engine.now()).is_some() {
        return None;
    }
    Some(GraphqlRoute {
        snapshot: Arc::clone(snapshot),
        route,
    })
}

/// The proxy's hook: for GraphQL routes, the body is read whole (within
/// `max_body_bytes`), analysed, and put back as it came.
pub async fn gate(engine: &Engine, request: Request<Incoming>, peer: IpAddr) -> Gate {
    // A WebSocket handshake (graphql-ws subscriptions) carries no operation
    // in its request: it is left to the WebSocket passthrough.
    if request.headers().contains_key(http::header::UPGRADE) {
        return Gate::Pass(request);
    }
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    let target = Target {
        peer,
        client_ip: None,
        method: request.method(),
        host,
        path: request.uri().path(),
        headers: request.headers(),
    };
    let snapshot = engine.snapshot();
    let Some(graphql) = graphql_route(engine, &snapshot, &target) else {
        return Gate::Pass(request);
    };
    let max_body = snapshot
        .config
        .server
        .as_ref()
        .map_or(u64::MAX, |s| s.max_body_bytes);
    let (parts, incoming) = request.into_parts();
    let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
    let bytes = match Limited::new(incoming, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            return Gate::Reject(Rejection::json(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(r#"{{"error":"payload_too_large","max_body_bytes":{max_body}}}"#),
            ));
        }
        Err(_) => {
            return Gate::Reject(
                GraphqlError::parse_failed("the request body could not be read").rejection(),
            );
        }
    };
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let analysed = analyse_request(
        graphql.name(),
        graphql.limits(),
        &parts.method,
        content_type,
        parts.uri.query(),
        &bytes,
    );
    match analysed {
        Ok(charge) => Gate::Analysed(Request::from_parts(parts, body::full(bytes)), charge),
        Err(error) => Gate::Reject(error.rejection()),
    }
}

/// Reads and analyses one request for `route`: every operation is checked
/// against the static limits (the whole batch fails if one does) and the
/// totals become a [`Charge`]. `Ok(None)`: the request holds no operation.
pub fn analyse_request(
    route: &str,
    limits: &GraphqlLimits,
    method: &Method,
    content_type: Option<&str>,
    url_query: Option<&str>,
    body: &[u8],
) -> Result<Option<Charge>, GraphqlError> {
    let operations = match request::read(method, content_type, url_query, body) {
        Ok(Some(operations)) => operations,
        Ok(None) => return Ok(None),
        Err(error) => return Err(GraphqlError::parse_failed(error.0)),
    };
    let model = CostModel {
        default_list_size: limits.default_list_size,
        max_list_size: limits.max_list_size,
        field_costs: &limits.field_costs,
        list_fields: &limits.list_fields,
        field_limits: &limits.field_limits,
    };
    let mut analyses = Vec::with_capacity(operations.len());
    for operation in &operations {
        let analysis = analysis::analyse(
            &operation.query,
            operation.operation_name.as_deref(),
            operation.variables.as_ref(),
            &model,
        )
        .map_err(|error| match error {
            AnalysisError::Invalid(message) => GraphqlError::parse_failed(message),
            AnalysisError::TooLarge => GraphqlError::new(
                StatusCode::BAD_REQUEST,
                "COMPLEXITY_LIMIT_EXCEEDED",
                error.to_string(),
            ),
        })?;
        check_operation(limits, &analysis)?;
        analyses.push(analysis);
    }
    Ok(Some(Charge::new(route, limits, &analyses)))
}

/// The Envoy ext_authz hook: the same analysis over the body Envoy sent
/// (`with_request_body`). A POST whose body Envoy did not send is not
/// analysed: the route's rules still count it.
pub fn check_envoy_body(
    engine: &Engine,
    snapshot: &Arc<Snapshot>,
    facts: &RequestFacts<'_>,
    body: &[u8],
) -> Result<Option<Charge>, GraphqlError> {
    let target = &Target {
        peer: facts.peer,
        client_ip: facts.client_ip,
        method: facts.method,
        host: facts.host,
        path: facts.path,
        headers: facts.headers,
    };
    let Some(graphql) = graphql_route(engine, snapshot, target) else {
        return Ok(None);
    };
    if body.is_empty() && target.method != Method::GET {
        return Ok(None);
    }
    let content_type = target
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    analyse_request(
        graphql.name(),
        graphql.limits(),
        target.method,
        content_type,
        facts.query,
        body,
    )
}
