//! What the proxy does differently for WebSocket upgrades and gRPC calls,
//! kept out of the plain HTTP path: which kind a request is, the protocol
//! limits it is admitted under, and how its request and response are wrapped.

use std::net::IpAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::upgrade::OnUpgrade;

use super::concurrency::InFlight;
use super::grpc::{self, MessageCounter, StreamGuard, StreamState};
use super::protocol_limits::Reporter;
use super::websocket;
use crate::body::{self, Body};
use crate::decision::Decision;
use crate::engine::Engine;
use crate::route::Route;
use crate::server::Lifecycle;
use crate::snapshot::Snapshot;
use crate::upstream::{UpstreamError, Upstreams};

/// The kinds of traffic the proxy carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Http,
    WebSocket,
    Grpc,
}

impl Kind {
    pub fn of<B>(request: &Request<B>) -> Kind {
        if grpc::is_grpc(request.headers()) {
            Kind::Grpc
        } else if websocket::is_upgrade(request) {
            Kind::WebSocket
        } else {
            Kind::Http
        }
    }
}

/// An admitted request's protocol state, carried from admission to the
/// forwarded response.
pub enum Passthrough {
    Http,
    WebSocket {
        client: OnUpgrade,
        admitted: Option<websocket::Admitted>,
        reporter: Option<Reporter>,
    },
    Grpc {
        admitted: Option<grpc::Admitted>,
        stream: Option<Arc<StreamState>>,
        reporter: Option<Reporter>,
    },
}

/// The request facts protocol admission needs.
pub struct Admission<'a> {
    pub engine: &'a Arc<Engine>,
    pub snapshot: &'a Snapshot,
    pub inflight: &'a Arc<InFlight>,
    pub route: Option<&'a Route>,
    /// Whitelisted callers and a disabled gateway skip protocol limits.
    pub exempt: bool,
    pub client_ip: IpAddr,
}

impl Admission<'_> {
    fn reporter(&self) -> Reporter {
        Reporter::new(self.engine, self.client_ip, self.route.map(|r| &r.name))
    }

    /// Checks the route's protocol limits; `Err` is the rejection to answer
    /// with. Takes the client's upgrade out of a WebSocket request.
    pub async fn admit<B>(
        &self,
        kind: Kind,
        request: &mut Request<B>,
    ) -> Result<Passthrough, Decision> {
        let route_name = self.route.map(|r| &*r.name);
        match kind {
            Kind::Http => Ok(Passthrough::Http),
            Kind::WebSocket => {
                let limits =
                    websocket::limits_for(self.snapshot, self.route).filter(|_| !self.exempt);
                let admitted = match limits {
                    Some(limits) => Some(
                        websocket::admit(
                            self.engine,
                            self.snapshot,
                            self.inflight,
                            route_name,
                            limits,
                            self.client_ip,
                        )
                        .await?,
                    ),
                    None => None,
                };
                Ok(Passthrough::WebSocket {
                    client: websocket::take_upgrade(request),
                    reporter: admitted.as_ref().map(|_| self.reporter()),
                    admitted,
                })
            }
            Kind::Grpc => {
                let limits = grpc::limits_for(self.snapshot, self.route).filter(|_| !self.exempt);
                let admitted = match limits {
                    Some(limits) => Some(
                        grpc::admit(
                            self.engine,
                            self.snapshot,
                            self.inflight,
                            route_name,
                            limits,
                            self.client_ip,
                            request.uri().path(),
                        )
                        .await?,
                    ),
                    None => None,
                };
                Ok(Passthrough::Grpc {
                    reporter: admitted.as_ref().map(|_| self.reporter()),
                    admitted,
                    stream: None,
                })
            }
        }
    }
}

impl Passthrough {
    /// Adjusts the request about to go upstream: the upgrade headers for
    /// WebSocket, message counting for gRPC client streams.
    pub fn prepare(&mut self, request: &mut Request<Body>, engine: &Arc<Engine>) {
        match self {
            Passthrough::Http => {}
            Passthrough::WebSocket { .. } => {
                websocket::restore_upgrade_headers(request.headers_mut())
            }
            Passthrough::Grpc {
                admitted,
                stream,
                reporter,
            } => {
                let Some(per_minute) = admitted.as_ref().and_then(|a| a.stream_messages_per_minute)
                else {
                    return;
                };
                let shared = Arc::new(StreamState::default());
                let body = std::mem::replace(request.body_mut(), body::empty());
                let counter = MessageCounter::new(
                    body,
                    per_minute,
                    clock(engine),
                    Arc::clone(&shared),
                    reporter.take(),
                );
                *request.body_mut() = body::stream(counter);
                *stream = Some(shared);
            }
        }
    }

    /// Sends the request upstream. A gRPC client stream that breaks its rate
    /// before the upstream has answered ends right there, with status 8.
    pub async fn send(
        &self,
        upstreams: &Upstreams,
        upstream: &str,
        request: Request<Body>,
    ) -> Result<Response<Body>, SendError> {
        let send = async {
            upstreams
                .send(upstream, request)
                .await
                .map(|r| r.map(body::stream))
                .map_err(SendError::Upstream)
        };
        match self {
            Passthrough::Grpc {
                stream: Some(shared),
                ..
            } => tokio::select! {
                result = send => match result {
                    // The upstream gave up on the stream we cut: say why.
                    Err(_) if shared.is_exhausted_now() => Err(SendError::StreamExhausted(shared.trailers())),
                    other => other,
                },
                () = shared.exhausted() => Err(SendError::StreamExhausted(shared.trailers())),
            },
            _ => send.await,
        }
    }

    /// The upstream's response as the client gets it.
    pub fn finish(
        self,
        response: Response<Body>,
        engine: &Arc<Engine>,
        lifecycle: &Lifecycle,
    ) -> Response<Body> {
        match self {
            Passthrough::Http => response,
            Passthrough::WebSocket {
                client,
                admitted,
                reporter,
            } => {
                let relay = websocket::Relay {
                    admitted,
                    now: clock(engine),
                    reporter,
                };
                websocket::finish(response, client, relay, lifecycle)
            }
            Passthrough::Grpc {
                admitted, stream, ..
            } => {
                let slot = admitted.and_then(|a| a.guard);
                if slot.is_none() && stream.is_none() {
                    return response;
                }
                response.map(|b| body::stream(StreamGuard::new(b, stream, slot)))
            }
        }
    }
}

pub enum SendError {
    Upstream(UpstreamError),
    /// The client's stream broke `stream_messages_per_minute`: these trailers end the call.
    StreamExhausted(http::HeaderMap),
}

fn clock(engine: &Arc<Engine>) -> Arc<dyn Fn() -> crate::limit::Nanos + Send + Sync> {
    let engine = Arc::clone(engine);
    Arc::new(move || engine.now())
}
