//! Accepting client connections: connection caps, idle and header timeouts,
//! optional TLS, HTTP/1.1 and h2c on one port (hyper-util's auto builder),
//! and a graceful drain on shutdown.

mod guard;
mod head_deadline;
mod screen;
mod timed_io;

pub use guard::{ConnPermit, ConnTracker, Rejected};
pub use head_deadline::{HeadDeadline, HeadTimer};
pub use screen::{Admission, ConnScreen};
pub use timed_io::TimedIo;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::Body;
use crate::config::ServerConfig;
use crate::metrics::ServerMetrics;
use crate::tls::TlsAcceptorCell;

/// hyper refuses an HTTP/1 read buffer smaller than this.
const MIN_HTTP1_BUFFER: usize = 8192;

/// What a connection knows about itself, handed to every request on it.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
}

/// Serves one request; implemented by the proxy and the ext_authz HTTP service.
pub trait Handler: Send + Sync + 'static {
    /// The answer to one request; every failure is an HTTP answer. The
    /// returned future is hyper's service future as it is: owning the
    /// handler and returning hyper's `Result` saves a wrapping future that
    /// would hold the request a second time (hyper moves that future
    /// around before polling it).
    fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Result<Response<Body>, Infallible>> + Send;
}

/// How the gateway's connections end with it: the tracker shutdown waits
/// on (every served connection, every WebSocket relay after its upgrade),
/// and the token cancelled when the drain begins.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    pub tracker: TaskTracker,
    pub drain: CancellationToken,
}

/// Timeouts and sizes that apply to a connection, read from the config when it is accepted.
#[derive(Debug, Clone, Copy)]
pub struct ConnSettings {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: u64,
    pub max_connections_per_ip: u64,
}

impl ConnSettings {
    /// The defaults of SPEC.md's `server` section, for listeners without one.
    pub fn defaults() -> ConnSettings {
        ConnSettings {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 16 * 1024,
            max_connections: 10_000,
            max_connections_per_ip: 256,
        }
    }

    pub fn from_config(server: &ServerConfig) -> ConnSettings {
        ConnSettings {
            header_read_timeout: server.header_read_timeout,
            idle_timeout: server.idle_timeout,
            max_header_bytes: usize::try_from(server.max_header_bytes).unwrap_or(usize::MAX),
            max_connections: server.max_connections,
            max_connections_per_ip: server.max_connections_per_ip,
        }
    }
}

/// Everything an accept loop shares with the rest of the gateway.
pub struct Listener<H> {
    pub handler: Arc<H>,
    pub tls: Option<Arc<TlsAcceptorCell>>,
    pub settings: Arc<dyn Fn() -> Option<ConnSettings> + Send + Sync>,
    pub tracker: Arc<ConnTracker>,
    /// Asked about each connection before it is served; `None` on listeners
    /// whose peer is not the client (Envoy's).
    pub screen: Option<Arc<dyn ConnScreen>>,
    pub metrics: Arc<ServerMetrics>,
    /// Connections still being served are tracked here (waited on to
    /// drain); its `drain` asks them to finish.
    pub lifecycle: Lifecycle,
    /// Cancelled to stop accepting (this listener).
    pub stop_accepting: CancellationToken,
}

impl<H: Handler> Listener<H> {
    /// Accepts until `stop_accepting` is cancelled.
    pub async fn run(self: Arc<Self>, listener: TcpListener) {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = self.stop_accepting.cancelled() => break,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors and the like: back off briefly, keep serving.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let Some(settings) = (self.settings)() else {
                continue;
            };
            if let Some(screen) = &self.screen {
                let open = self.metrics.connections_open.load(Ordering::Relaxed);
                match screen.admit(peer.ip(), open, &settings) {
                    Admission::Serve => {}
                    Admission::Refuse => {
                        self.metrics
                            .connections_refused_blocked
                            .fetch_add(1, Ordering::Relaxed);
                        drop(stream);
                        continue;
                    }
                    Admission::Shed { retry_after_secs } => {
                        self.metrics
                            .connections_shed
                            .fetch_add(1, Ordering::Relaxed);
                        if self.tls.is_none() {
                            self.lifecycle
                                .tracker
                                .spawn(screen::shed(stream, retry_after_secs));
                        }
                        continue;
                    }
                }
            }
            let permit = match self.tracker.try_acquire(peer.ip(), &settings) {
                Ok(permit) => permit,
                Err(rejected) => {
                    if let Some(screen) = &self.screen {
                        screen.guard_event(peer.ip());
                    }
                    // Closed right after accept, before any byte is read.
                    let counter = match rejected {
                        Rejected::Total => &self.metrics.connections_rejected_total,
                        Rejected::PerIp => &self.metrics.connections_rejected_per_ip,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(client.ip = %peer.ip(), ?rejected, "connection refused at accept");
                    drop(stream);
                    continue;
                }
            };
            self.metrics
                .connections_accepted
                .fetch_add(1, Ordering::Relaxed);
            let this = Arc::clone(&self);
            self.lifecycle.tracker.spawn(async move {
                this.metrics
                    .connections_open
                    .fetch_add(1, Ordering::Relaxed);
                this.serve_connection(stream, peer, settings).await;
                this.metrics
                    .connections_open
                    .fetch_sub(1, Ordering::Relaxed);
                drop(permit);
            });
        }
    }

    async fn serve_connection(&self, stream: TcpStream, peer: SocketAddr, settings: ConnSettings) {
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(peer);
        let head = HeadDeadline::new();
        let io = TimedIo::new(
            stream,
            settings.header_read_timeout,
            settings.idle_timeout,
            Arc::clone(&head),
            Arc::clone(&self.metrics),
        );
        match &self.tls {
            None => {
                let conn = ConnInfo {
                    peer,
                    local,
                    tls: false,
                };
                self.serve_http(io, conn, settings, head).await;
            }
            Some(tls) => {
                let handshake = tls.acceptor().accept(io);
                let stream =
                    match tokio::time::timeout(settings.header_read_timeout, handshake).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            tracing::debug!(client.ip = %peer.ip(), %error, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            self.metrics.header_timeouts.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    };
                let conn = ConnInfo {
                    peer,
                    local,
                    tls: true,
                };
                self.serve_http(stream, conn, settings, head).await;
            }
        }
    }

    async fn serve_http<IO>(
        &self,
        io: IO,
        conn: ConnInfo,
        settings: ConnSettings,
        head: Arc<HeadDeadline>,
    ) where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(HeadTimer::new(head))
            .header_read_timeout(settings.header_read_timeout)
            .max_buf_size(settings.max_header_bytes.max(MIN_HTTP1_BUFFER));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX));
        let handler = Arc::clone(&self.handler);
        let service = service_fn(move |request| Arc::clone(&handler).handle(request, conn));
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            () = self.lifecycle.drain.cancelled() => {
                // Finish in-flight requests, then close; no new requests on this connection.
                connection.as_mut().graceful_shutdown();
                connection.as_mut().await
            }
        };
        if let Err(error) = result {
            if let Some(screen) = &self.screen
                && is_timeout(&*error)
            {
                screen.guard_event(conn.peer.ip());
            }
            tracing::debug!(client.ip = %conn.peer.ip(), %error, "connection ended with an error");
        }
    }
}

/// Whether a connection ended because the client was too slow: hyper's
/// header timeout or [`TimedIo`]'s first-byte and idle timeouts.
fn is_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout)
            || error
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        current = error.source();
    }
    false
}
