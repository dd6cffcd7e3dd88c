//! The open connections to one upstream, on hyper's connection API.
//!
//! HTTP/1.1: a stack of idle connections. A request takes the most recently
//! used one (or dials a new one) and the connection comes back when the
//! response body has been read to its end; a response dropped halfway
//! closes its connection instead, since what is left of the body would
//! have to be read first. Idle connections are closed after the idle
//! timeout, at the next check-in or by a background sweep when traffic
//! stops. HTTP/2: one connection that every request shares, dialled again
//! once it closes.
//!
//! This is leaner on the request path than hyper-util's general pool (no
//! per-request task to wait for a connection to be ready again, no hashing
//! of a pool key), which measurably mattered for a gateway that forwards
//! every request it admits.

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use parking_lot::Mutex;
use tokio::time::Instant;
use tower_service::Service;

use crate::body::{Body, BoxError};

/// How the pool failed to deliver a request.
#[derive(Debug)]
pub enum PoolError {
    /// Dialling, TLS or the protocol handshake failed.
    Connect(BoxError),
    /// The request went out (or the connection broke under it) and no response came.
    Exchange(hyper::Error),
}

/// The settings a pool dials with.
#[derive(Debug)]
pub struct PoolConfig {
    pub scheme: Scheme,
    pub authority: http::uri::Authority,
    pub http2: bool,
    pub max_idle: usize,
    pub idle_timeout: Duration,
    pub h2_keepalive_interval: Duration,
    pub h2_keepalive_timeout: Duration,
}

/// How many of the most recently used idle connections a checkout looks at.
const CHECKOUT_SCAN: usize = 8;

#[derive(Debug)]
pub struct Pool {
    config: PoolConfig,
    connector: HttpsConnector<HttpConnector>,
    /// HTTP/1.1 connections waiting for a request, most recently used last.
    idle: Mutex<Vec<IdleConnection>>,
    /// The shared HTTP/2 connection.
    shared: Mutex<Option<http2::SendRequest<Body>>>,
    /// One HTTP/2 dial at a time: a burst of first requests opens one
    /// connection, not one each.
    dialling: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct IdleConnection {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

impl Pool {
    /// On a runtime, an HTTP/1.1 pool also starts its idle sweep (a pool
    /// built outside one, by a config check, never sends a request).
    pub fn new(config: PoolConfig, connector: HttpsConnector<HttpConnector>) -> Arc<Pool> {
        let idle_timeout = config.idle_timeout;
        let http2 = config.http2;
        let pool = Arc::new(Pool {
            config,
            connector,
            idle: Mutex::new(Vec::new()),
            shared: Mutex::new(None),
            dialling: tokio::sync::Mutex::new(()),
        });
        if !http2 && let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(&pool), idle_timeout));
        }
        pool
    }

    /// Sends `request` (whose path and query are all that is kept of its URI)
    /// and returns the response once its head has arrived. The version the
    /// downstream client spoke says nothing about the upstream's: the
    /// request leaves in this pool's (hyper refuses HTTP/2 on HTTP/1.1).
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<Body>,
    ) -> Result<Response<PooledBody>, PoolError> {
        if self.config.http2 {
            *request.version_mut() = Version::HTTP_2;
            // HTTP/2 names the site in :authority, and a Host beside it must
            // not differ (RFC 9113, 8.3.1): the client's Host, else its own
            // :authority, else the upstream's address, is the :authority.
            let authority = request
                .headers_mut()
                .remove(http::header::HOST)
                .and_then(|host| Authority::try_from(host.as_bytes()).ok())
                // :authority must not carry userinfo (RFC 9113, 8.3.1).
                .filter(|authority| !authority.as_str().contains('@'))
                .or_else(|| request.uri().authority().cloned())
                .unwrap_or_else(|| self.config.authority.clone());
            *request.uri_mut() = self.absolute_uri(request.uri(), authority);
            return self.send_http2(request).await;
        }
        *request.version_mut() = Version::HTTP_11;
        // HTTP/1.1 sends the origin form; the Host header names the site:
        // the client's, else the authority of its URI (an HTTP/2 client's
        // :authority), else the upstream's address.
        if !request.headers().contains_key(http::header::HOST) {
            let authority = request.uri().authority().unwrap_or(&self.config.authority);
            if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                request.headers_mut().insert(http::header::HOST, host);
            }
        }
        let path = origin_form(request.uri());
        *request.uri_mut() = Uri::from(path);
        self.send_http1(request).await
    }

    async fn send_http1(
        self: &Arc<Self>,
        mut request: Request<Body>,
    ) -> Result<Response<PooledBody>, PoolError> {
        // An idle connection the upstream has just closed gives the request
        // back unsent: it goes out on the next one, or on a new connection.
        while let Some(mut sender) = self.checkout() {
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.hold_until_read(response, sender)),
                Err(mut error) => match error.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(PoolError::Exchange(error.into_error())),
                },
            }
        }
        // Boxed, as every dial: the TLS handshake's future is large, and
        // inline it would make every request's future as large.
        let mut sender = Box::pin(self.dial_http1()).await?;
        match sender.send_request(request).await {
            Ok(response) => Ok(self.hold_until_read(response, sender)),
            Err(error) => Err(PoolError::Exchange(error)),
        }
    }

    async fn send_http2(
        self: &Arc<Self>,
        request: Request<Body>,
    ) -> Result<Response<PooledBody>, PoolError> {
        let mut sender = self.shared_http2().await?;
        let request = match sender.try_send_request(request).await {
            Ok(response) => return Ok(response.map(PooledBody::unpooled)),
            Err(mut error) => match error.take_message() {
                // The shared connection closed before taking the request (a
                // GOAWAY, an idle close): once more, on a new one
                // (`shared_http2` dials when the shared one is closed).
                Some(unsent) => unsent,
                None => return Err(PoolError::Exchange(error.into_error())),
            },
        };
        let mut sender = self.shared_http2().await?;
        sender
            .send_request(request)
            .await
            .map(|response| response.map(PooledBody::unpooled))
            .map_err(PoolError::Exchange)
    }

    /// The most recently used idle HTTP/1.1 connection ready for a request.
    /// Closed ones are dropped on the way. One not ready yet (still sending
    /// a request body the upstream answered early) stays: a request never
    /// queues behind another.
    fn checkout(&self) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.idle.lock();
        // Only the most recent few are looked at: checkout stays O(1).
        let floor = idle.len().saturating_sub(CHECKOUT_SCAN);
        let mut index = idle.len();
        while index > floor {
            index -= 1;
            if idle[index].sender.is_closed() {
                idle.remove(index);
            } else if idle[index].sender.is_ready() {
                return Some(idle.remove(index).sender);
            }
        }
        None
    }

    /// Keeps `sender` for the next request; connections idle past the
    /// timeout are closed on the way (here rather than at checkout, which
    /// would need a clock read of its own).
    fn check_in(&self, sender: http1::SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock();
        self.expire(&mut idle, now);
        if idle.len() < self.config.max_idle {
            idle.push(IdleConnection { sender, since: now });
        }
    }

    /// Closes (drops) the connections idle for the idle timeout or longer.
    fn expire(&self, idle: &mut Vec<IdleConnection>, now: Instant) {
        // The oldest are at the front.
        let timeout = self.config.idle_timeout;
        let stale = idle
            .iter()
            .take_while(|c| now.duration_since(c.since) >= timeout)
            .count();
        idle.drain(..stale);
    }

    /// Wraps the response body so the connection returns to the pool when
    /// the body has been read to its end.
    fn hold_until_read(
        self: &Arc<Self>,
        response: Response<Incoming>,
        sender: http1::SendRequest<Body>,
    ) -> Response<PooledBody> {
        response.map(|body| PooledBody::new(body, Arc::clone(self), sender))
    }

    async fn dial_http1(&self) -> Result<http1::SendRequest<Body>, PoolError> {
        let io = self.dial().await?;
        let (sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| PoolError::Connect(e.into()))?;
        // With upgrades: a WebSocket handshake hands the connection over.
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    async fn shared_http2(&self) -> Result<http2::SendRequest<Body>, PoolError> {
        match self.open_http2() {
            Some(sender) => Ok(sender),
            None => Box::pin(self.dial_http2()).await,
        }
    }

    async fn dial_http2(&self) -> Result<http2::SendRequest<Body>, PoolError> {
        let _one_dial = self.dialling.lock().await;
        // Someone else may have dialled while this request waited.
        if let Some(sender) = self.open_http2() {
            return Ok(sender);
        }
        let io = self.dial().await?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(self.config.h2_keepalive_interval)
            .keep_alive_timeout(self.config.h2_keepalive_timeout)
            .handshake(io)
            .await
            .map_err(|e| PoolError::Connect(e.into()))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream HTTP/2 connection ended with an error");
            }
        });
        *self.shared.lock() = Some(sender.clone());
        Ok(sender)
    }

    fn open_http2(&self) -> Option<http2::SendRequest<Body>> {
        self.shared
            .lock()
            .as_ref()
            .filter(|sender| !sender.is_closed())
            .cloned()
    }

    async fn dial(
        &self,
    ) -> Result<
        hyper_rustls::MaybeHttpsStream<hyper_util::rt::TokioIo<tokio::net::TcpStream>>,
        PoolError,
    > {
        let target = Uri::builder()
            .scheme(self.config.scheme.clone())
            .authority(self.config.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| PoolError::Connect(e.into()))?;
        self.connector
            .clone()
            .call(target)
            .await
            .map_err(PoolError::Connect)
    }

    fn absolute_uri(&self, uri: &Uri, authority: Authority) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.config.scheme.clone());
        parts.authority = Some(authority);
        parts.path_and_query = Some(origin_form(uri));
        Uri::from_parts(parts).unwrap_or_else(|_| Uri::from(origin_form(uri)))
    }
}

/// Closes a pool's expired idle connections when no check-in does it
/// (traffic stopped), each when its idle time is up, until the pool is
/// dropped (a reload replaced it).
async fn sweep(pool: Weak<Pool>, idle_timeout: Duration) {
    let mut next = Instant::now() + idle_timeout;
    loop {
        tokio::time::sleep_until(next).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let now = Instant::now();
        let mut idle = pool.idle.lock();
        pool.expire(&mut idle, now);
        // The oldest left is the next to expire; with none, one checked in
        // from now on expires a whole timeout later at the earliest.
        next = idle
            .first()
            .map_or(now + idle_timeout, |c| c.since + idle_timeout);
    }
}

fn origin_form(uri: &Uri) -> PathAndQuery {
    uri.path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}

/// An upstream response body that gives its HTTP/1.1 connection back to the
/// pool once read to the end.
#[derive(Debug)]
pub struct PooledBody {
    inner: Incoming,
    lease: Option<(Arc<Pool>, http1::SendRequest<Body>)>,
}

impl PooledBody {
    fn new(inner: Incoming, pool: Arc<Pool>, sender: http1::SendRequest<Body>) -> PooledBody {
        let mut body = PooledBody {
            inner,
            lease: Some((pool, sender)),
        };
        // Nothing to read (204, 304, HEAD, an empty body): free at once.
        if body.inner.is_end_stream() {
            body.give_back();
        }
        body
    }

    fn unpooled(inner: Incoming) -> PooledBody {
        PooledBody { inner, lease: None }
    }

    fn give_back(&mut self) {
        if let Some((pool, sender)) = self.lease.take() {
            pool.check_in(sender);
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.give_back(),
            // A broken body: its connection is not reusable.
            Poll::Ready(Some(Err(_))) => self.lease = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // Read to its end: reusable. Dropped halfway: the rest of the body
        // is still on the wire, so the connection closes with the sender.
        if self.inner.is_end_stream() {
            self.give_back();
        }
    }
}
