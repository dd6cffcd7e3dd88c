//! The admin listener: HTTP/1.1 with keep-alive, a bound on connections and
//! on header time, and a graceful drain when the gateway stops.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::{AdminContext, PeerAddr, endpoints, handle};

/// Connections served at once; more are closed at accept. The admin API
/// serves operators and scrapers, not traffic.
const MAX_CONNECTIONS: usize = 256;
/// A client gets this long to send a request head (slow-header defence).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// In-flight requests get this long to finish once shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (e.g. out of file descriptors), so the loop
/// does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves the admin API on `listener` (HTTP/1.1, keep-alive) until `shutdown`
/// resolves, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    context: Arc<AdminContext>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    endpoints::started();
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    if let Ok(local) = listener.local_addr() {
        tracing::info!(admin.listen = %local, "admin API listening");
    }
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(admin.peer = %peer, "admin connection refused: too many open");
            continue;
        };
        let context = Arc::clone(&context);
        let service = service_fn(move |mut request: http::Request<Incoming>| {
            let context = Arc::clone(&context);
            request.extensions_mut().insert(PeerAddr(peer));
            async move { Ok::<_, Infallible>(handle(&context, request).await) }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, admin.peer = %peer, "admin connection ended with an error");
            }
            drop(slot);
        });
    }
    // Stop accepting before draining, so clients see a refused connection
    // rather than one that is never answered.
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("admin API: requests still in flight after the drain timeout");
    }
}
