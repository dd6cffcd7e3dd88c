//! The admin API: health, readiness, metrics, statistics, the lists and
//! blocks, config reload. Reads are open; changes need the bearer token.

mod endpoints;
mod reply;
mod server;

#[cfg(test)]
mod serve_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_lists;

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response};

use crate::body::{Body, BoxError};
use crate::engine::Engine;
use crate::metrics::ServerMetrics;
use crate::protect::lists::ListKind;

pub use reply::percent_encode;
pub use server::serve;

/// The largest request body the admin API reads; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What the admin API needs from the running gateway.
pub struct AdminContext {
    pub engine: Arc<Engine>,
    pub server_metrics: Arc<ServerMetrics>,
    /// Re-reads and applies the config file; Ok(summary line) or Err(one error per line).
    pub reload: Arc<dyn Fn() -> Result<String, String> + Send + Sync>,
    /// Whether the store answers (readiness); the memory store always does.
    /// Called on every `GET /readyz`, so it must answer without blocking.
    pub store_ready: Arc<dyn Fn() -> bool + Send + Sync>,
}

/// The address of the admin client, set by [`serve`] for the change log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerAddr(pub std::net::SocketAddr);

/// One endpoint, with what its path carried.
enum Endpoint {
    Healthz,
    Readyz,
    Metrics,
    Stats,
    Violations,
    Lists,
    ListAdd(ListKind),
    /// The entry as written in the path, still percent-encoded.
    ListRemove(ListKind, String),
    /// The identity as written in the path, still percent-encoded.
    Unblock(String),
    Reload,
    StatsReset,
}

const READ: &[Method] = &[Method::GET, Method::HEAD];
const WRITE: &[Method] = &[Method::POST];
const DELETE: &[Method] = &[Method::DELETE];

/// The endpoint a path names, with the methods it accepts.
fn route(path: &str) -> Option<(Endpoint, &'static [Method])> {
    let list_kind = |name: &str| match name {
        "blacklist" => Some(ListKind::Blacklist),
        "whitelist" => Some(ListKind::Whitelist),
        _ => None,
    };
    let found = match path {
        "/healthz" => (Endpoint::Healthz, READ),
        "/readyz" => (Endpoint::Readyz, READ),
        "/metrics" => (Endpoint::Metrics, READ),
        "/stats" => (Endpoint::Stats, READ),
        "/violations" => (Endpoint::Violations, READ),
        "/lists" => (Endpoint::Lists, READ),
        "/config/reload" => (Endpoint::Reload, WRITE),
        "/stats/reset" => (Endpoint::StatsReset, WRITE),
        _ => {
            if let Some(rest) = path.strip_prefix("/lists/") {
                match rest.split_once('/') {
                    None => (Endpoint::ListAdd(list_kind(rest)?), WRITE),
                    Some((kind, entry)) if !entry.is_empty() => (
                        Endpoint::ListRemove(list_kind(kind)?, entry.to_string()),
                        DELETE,
                    ),
                    Some(_) => return None,
                }
            } else if let Some(identity) = path.strip_prefix("/blocks/") {
                if identity.is_empty() {
                    return None;
                }
                (Endpoint::Unblock(identity.to_string()), DELETE)
            } else {
                return None;
            }
        }
    };
    Some(found)
}

/// The router, exposed for in-process tests: one request → one response.
///
/// Bodies are read only by endpoints that take one, and never past
/// [`MAX_BODY_BYTES`].
pub async fn handle<B>(context: &AdminContext, request: Request<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let Some((endpoint, methods)) = route(request.uri().path()) else {
        return reply::error(
            http::StatusCode::NOT_FOUND,
            "not_found",
            &format!("no admin endpoint at {}", request.uri().path()),
        );
    };
    if !methods.contains(request.method()) {
        return reply::method_not_allowed(methods);
    }
    let peer = request.extensions().get::<PeerAddr>().map(|p| p.0);
    let mutating = methods == WRITE || methods == DELETE;
    if mutating && let Some(refused) = reply::refusal(&context.engine, request.headers()) {
        tracing::info!(
            admin.path = request.uri().path(),
            admin.peer = ?peer,
            status = refused.status().as_u16(),
            "admin change refused"
        );
        return refused;
    }
    match endpoint {
        Endpoint::Healthz => reply::text(http::StatusCode::OK, "text/plain", "ok"),
        Endpoint::Readyz => endpoints::readyz(context),
        Endpoint::Metrics => endpoints::metrics(context),
        Endpoint::Stats => endpoints::stats(context),
        Endpoint::Violations => endpoints::violations(context, request.uri().query()),
        Endpoint::Lists => endpoints::lists(context),
        Endpoint::ListAdd(kind) => {
            let body = match reply::read_body(request).await {
                Ok(body) => body,
                Err(refused) => return refused,
            };
            endpoints::list_add(context, kind, &body, peer)
        }
        Endpoint::ListRemove(kind, entry) => endpoints::list_remove(context, kind, &entry, peer),
        Endpoint::Unblock(identity) => endpoints::unblock(context, &identity, peer),
        Endpoint::Reload => endpoints::reload(context, peer).await,
        Endpoint::StatsReset => endpoints::stats_reset(context, peer),
    }
}
