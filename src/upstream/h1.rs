//! Plain-HTTP/1.1 upstream connections driven by the request that uses them.
//!
//! hyper-util's pooled client runs every upstream connection on a task of its
//! own and passes each request, response and body chunk between tasks. Here
//! the connection is polled by the request's own future and then by the
//! response body that the client reads, so one task does the whole exchange;
//! a finished connection goes back to a small idle stack for the next request.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::{Body, BoxError};

type Conn = Connection<TokioIo<TcpStream>, Body>;

/// A connection with its request handle.
struct Link {
    sender: SendRequest<Body>,
    conn: Conn,
}

struct Idle {
    link: Link,
    since: Instant,
}

/// Why a request could not be sent.
#[derive(Debug)]
pub enum H1Error {
    /// No connection could be made (refused, unreachable, connect timeout).
    Connect(BoxError),
    /// The connection failed while the request or response head was under way.
    Protocol(BoxError),
}

pub struct H1Pool {
    /// `host:port` to connect to.
    target: String,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<Idle>>,
}

impl H1Pool {
    pub fn new(
        target: String,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Arc<H1Pool> {
        Arc::new(H1Pool {
            target,
            connect_timeout,
            idle_timeout,
            max_idle,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Sends `request` and returns the response, whose body keeps driving the
    /// connection and returns it to the pool once read to the end.
    pub async fn send(self: &Arc<Self>, request: Request<Body>) -> Result<Response<Body>, H1Error> {
        let mut request = request;
        // A pooled connection the upstream closed meanwhile fails before the
        // request is written; hyper hands it back and we try a fresh one.
        for _ in 0..2 {
            let (mut link, reused) = match self.checkout() {
                Some(link) => (link, true),
                None => (self.connect().await?, false),
            };
            let ready = match drive(&mut link.conn, link.sender.ready()).await {
                Ok(ready) => ready,
                Err(error) => Err(error),
            };
            if let Err(error) = ready {
                if reused {
                    tracing::trace!(%error, "pooled upstream connection went away");
                    continue;
                }
                return Err(H1Error::Protocol(error.into()));
            }
            let sent = link.sender.try_send_request(request);
            match drive(&mut link.conn, sent).await {
                Ok(Ok(response)) => {
                    let pool = Arc::downgrade(self);
                    return Ok(response.map(|body| {
                        let body = Driven {
                            body,
                            link: Some(link),
                            pool,
                        };
                        http_body_util::BodyExt::boxed(body)
                    }));
                }
                Ok(Err(mut failed)) => match failed.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(H1Error::Protocol(failed.into_error().into())),
                },
                Err(error) => return Err(H1Error::Protocol(error.into())),
            }
        }
        Err(H1Error::Protocol("pooled connections kept closing".into()))
    }

    fn checkout(&self) -> Option<Link> {
        let mut idle = self.idle.lock();
        while let Some(entry) = idle.pop() {
            if entry.since.elapsed() < self.idle_timeout && !entry.link.sender.is_closed() {
                return Some(entry.link);
            }
        }
        None
    }

    fn checkin(&self, link: Link) {
        if link.sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock();
        if idle.len() < self.max_idle {
            idle.push(Idle {
                link,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<Link, H1Error> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.target))
            .await
            .map_err(|_| H1Error::Connect(format!("connect to {} timed out", self.target).into()))?
            .map_err(|e| H1Error::Connect(Box::new(e)))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| H1Error::Connect(Box::new(e)))?;
        Ok(Link { sender, conn })
    }
}

/// Runs `fut` while polling `conn`, which does the connection's I/O.
/// `Err` when the connection failed first. A connection that closes cleanly
/// fails its pending request, so `fut` then resolves with that error.
async fn drive<F: Future>(conn: &mut Conn, fut: F) -> Result<F::Output, hyper::Error> {
    let mut fut = std::pin::pin!(fut);
    let mut conn_done = false;
    std::future::poll_fn(|cx| {
        if !conn_done {
            match Pin::new(&mut *conn).poll(cx) {
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Ready(Ok(())) => conn_done = true,
                Poll::Pending => {}
            }
        }
        fut.as_mut().poll(cx).map(Ok)
    })
    .await
}

/// A response body that keeps its connection running until read to the end.
struct Driven {
    body: Incoming,
    link: Option<Link>,
    pool: Weak<H1Pool>,
}

impl http_body::Body for Driven {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(link) = &mut this.link
            && let Poll::Ready(result) = Pin::new(&mut link.conn).poll(cx)
        {
            // The connection is over; the body may still have buffered frames.
            this.link = None;
            if let Err(error) = result {
                return Poll::Ready(Some(Err(Box::new(error))));
            }
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(None) => {
                if let (Some(link), Some(pool)) = (this.link.take(), this.pool.upgrade()) {
                    pool.checkin(link);
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(frame)) => {
                Poll::Ready(Some(frame.map_err(|e| Box::new(e) as BoxError)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// An upstream answering `ok` to every request; `close_after` answers per
    /// connection before it closes it. Counts connections.
    async fn upstream(close_after: usize) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    for _ in 0..close_after {
                        let mut head = Vec::new();
                        let mut byte = [0u8; 1];
                        while !head.ends_with(b"\r\n\r\n") {
                            match stream.read(&mut byte).await {
                                Ok(1) => head.push(byte[0]),
                                _ => return,
                            }
                        }
                        if stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        (addr, connections)
    }

    fn get() -> Request<Body> {
        Request::get("/")
            .header("host", "t")
            .body(crate::body::empty())
            .unwrap()
    }

    async fn read(response: Response<Body>) -> Bytes {
        response.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_read_response_returns_its_connection_for_the_next_request() {
        let (addr, connections) = upstream(usize::MAX).await;
        let pool = H1Pool::new(addr, Duration::from_secs(1), Duration::from_secs(30), 8);
        for _ in 0..5 {
            let response = pool.send(get()).await.unwrap();
            assert_eq!(read(response).await, "ok");
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_replaced_without_an_error() {
        // Each connection answers once, then the upstream closes it.
        let (addr, connections) = upstream(1).await;
        let pool = H1Pool::new(addr, Duration::from_secs(1), Duration::from_secs(30), 8);
        for _ in 0..3 {
            let response = pool.send(get()).await.unwrap();
            assert_eq!(read(response).await, "ok");
            // Let the close arrive, as it would between two real requests.
            tokio::task::yield_now().await;
        }
        assert_eq!(connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_unread_body_does_not_return_its_connection() {
        let (addr, connections) = upstream(usize::MAX).await;
        let pool = H1Pool::new(addr, Duration::from_secs(1), Duration::from_secs(30), 8);
        drop(pool.send(get()).await.unwrap());
        let response = pool.send(get()).await.unwrap();
        assert_eq!(read(response).await, "ok");
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn nobody_listening_is_a_connect_error() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let pool = H1Pool::new(
            dead.to_string(),
            Duration::from_secs(1),
            Duration::from_secs(30),
            8,
        );
        assert!(matches!(pool.send(get()).await, Err(H1Error::Connect(_))));
    }
}
