//! Embedding (feature `tower`): a tower [`Layer`] that puts the gateway's
//! engine — the same config, rules, lists and answers — in front of any
//! tower HTTP service (axum, tonic, hyper), in-process, with no proxy hop.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::HOST;
use http::{Extensions, Request, Response};
use http_body_util::{Either, Full};
use tower_layer::Layer;
use tower_service::Service;

use crate::clock::SystemClock;
use crate::config::{self, Config, ConfigErrors};
use crate::engine::{Engine, RequestFacts};
use crate::frontend::respond::{self, HeaderOptions};
use crate::store::MemoryStore;

/// Finds the client's address among a request's extensions.
pub type PeerFn = Arc<dyn Fn(&Extensions) -> Option<IpAddr> + Send + Sync>;

/// The response body: the service's own, or the gateway's JSON rejection.
pub type RateLimitBody<B> = Either<B, Full<Bytes>>;

#[derive(Clone)]
pub struct RateLimitLayer {
    engine: Arc<Engine>,
    peer: PeerFn,
}

impl RateLimitLayer {
    /// A layer over an engine you built (and may reload with
    /// [`Engine::apply_config`]).
    pub fn new(engine: Arc<Engine>) -> RateLimitLayer {
        RateLimitLayer {
            engine,
            peer: Arc::new(default_peer),
        }
    }

    /// An in-memory engine for `config`, with its idle-key sweeper, violation
    /// log lines, webhooks and alerts running on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (those tasks need one), like `tokio::spawn`.
    pub fn from_config(config: Config) -> RateLimitLayer {
        let engine = Arc::new(Engine::new(
            config,
            Arc::new(MemoryStore::new()),
            Arc::new(SystemClock),
        ));
        Engine::spawn_sweeper(&engine, std::time::Duration::from_secs(10));
        crate::alerts::Dispatcher::install(&engine);
        RateLimitLayer::new(engine)
    }

    /// As [`RateLimitLayer::from_config`], reading a gateway config file
    /// (warnings are logged, errors returned).
    pub fn from_config_file(path: &Path) -> Result<RateLimitLayer, ConfigErrors> {
        let loaded = config::load_file(path)?;
        for warning in &loaded.warnings {
            tracing::warn!(%warning, "config warning");
        }
        Ok(RateLimitLayer::from_config(loaded.config))
    }

    /// How to find the client's address. The default looks for a
    /// [`SocketAddr`] or [`IpAddr`] extension; with axum, pass
    /// `|e| e.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())`. Without
    /// one every request counts as `0.0.0.0`, so `ip` rules would share one
    /// budget: configure this.
    pub fn with_peer(
        mut self,
        peer: impl Fn(&Extensions) -> Option<IpAddr> + Send + Sync + 'static,
    ) -> RateLimitLayer {
        self.peer = Arc::new(peer);
        self
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }
}

fn default_peer(extensions: &Extensions) -> Option<IpAddr> {
    extensions
        .get::<SocketAddr>()
        .map(SocketAddr::ip)
        .or_else(|| extensions.get::<IpAddr>().copied())
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            engine: Arc::clone(&self.engine),
            peer: Arc::clone(&self.peer),
        }
    }
}

#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    engine: Arc<Engine>,
    peer: PeerFn,
}

impl<S, B, ResBody> Service<Request<B>> for RateLimit<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<RateLimitBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The service that was polled ready is the one that is called; the
        // clone stays behind for the next call (tower's usual pattern).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let engine = Arc::clone(&self.engine);
        let peer = (self.peer)(request.extensions()).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        Box::pin(async move {
            let snapshot = engine.snapshot();
            let options = HeaderOptions::of(&snapshot.config.global);
            let decision = {
                let host = request
                    .headers()
                    .get(HOST)
                    .and_then(|h| h.to_str().ok())
                    .or_else(|| request.uri().authority().map(|a| a.as_str()));
                let facts = RequestFacts {
                    peer,
                    client_ip: None,
                    method: request.method(),
                    host,
                    path: request.uri().path(),
                    query: request.uri().query(),
                    headers: request.headers(),
                    cost: 1,
                };
                engine.decide(&facts).await
            };
            let now = engine.now();
            if let Some(rejection) = respond::rejection(&decision, options, now) {
                let mut response = Response::new(Either::Right(Full::new(rejection.body)));
                *response.status_mut() = rejection.status;
                *response.headers_mut() = rejection.headers;
                return Ok(response);
            }
            let mut response = inner.call(request).await?;
            if let Some(quota) = decision.quota() {
                respond::add_quota_headers(response.headers_mut(), quota, options, now);
            }
            Ok(response.map(Either::Left))
        })
    }
}
