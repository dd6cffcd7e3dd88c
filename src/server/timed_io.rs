//! A connection that closes itself when the client is silent too long: before
//! its first byte (`header_read_timeout`: a client that connects and sends
//! nothing must not hold a slot), between any two reads or writes after
//! that (`idle_timeout`), and when a request head is not complete by the
//! deadline hyper set for it ([`HeadDeadline`], `header_read_timeout`).

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::HeadDeadline;
use crate::metrics::ServerMetrics;

pub struct TimedIo<T> {
    inner: T,
    idle_timeout: Duration,
    /// The longest a request head may take; a head started later than the
    /// timer's next firing ends later than it, so re-arming at most this far
    /// ahead never misses one.
    head_timeout: Duration,
    head: Arc<HeadDeadline>,
    /// Fires at the earliest deadline known when it was armed; re-armed
    /// lazily from `last_activity` and `head` rather than on every read,
    /// which keeps the timer wheel out of the hot path.
    timer: Pin<Box<Sleep>>,
    /// The waker `timer` was last polled with: while the task is the same
    /// and the timer has not fired, polling it again would change nothing.
    timer_waker: Option<Waker>,
    /// When the connection last waited after reading or writing something.
    last_activity: Instant,
    /// Bytes moved since `last_activity` was taken. Reads and writes only
    /// set this; the clock is read once, when the connection next waits,
    /// which is within the same poll for all but a busy stream.
    active: bool,
    started: bool,
    metrics: Arc<ServerMetrics>,
}

impl<T> TimedIo<T> {
    /// `head_timeout` is also the first-byte deadline.
    pub fn new(
        inner: T,
        head_timeout: Duration,
        idle_timeout: Duration,
        head: Arc<HeadDeadline>,
        metrics: Arc<ServerMetrics>,
    ) -> Self {
        let now = Instant::now();
        TimedIo {
            inner,
            idle_timeout,
            head_timeout,
            head,
            timer: Box::pin(tokio::time::sleep_until(now + head_timeout)),
            timer_waker: None,
            last_activity: now,
            active: false,
            started: false,
            metrics,
        }
    }

    fn touch(&mut self) {
        self.active = true;
        self.started = true;
    }

    /// A write's outcome: bytes written are activity; a write that cannot
    /// proceed (a client that stopped reading) is held to the same
    /// deadlines as a read, or a slow reader would keep its slot forever.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.active = true;
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => self.poll_deadline(cx).map(Err),
            error => error,
        }
    }

    /// Ready(error) once a deadline has passed: the first byte's, the idle
    /// one, or the head's.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if self.active {
            self.active = false;
            self.last_activity = Instant::now();
        }
        loop {
            // The timer fires into the waker it was polled with; until it
            // has, there is nothing to check.
            if self
                .timer_waker
                .as_ref()
                .is_some_and(|waker| waker.will_wake(cx.waker()))
                && !self.timer.is_elapsed()
            {
                return Poll::Pending;
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                self.timer_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            self.timer_waker = None;
            let now = Instant::now();
            let what = if !self.started {
                "no request in time"
            } else if self.last_activity + self.idle_timeout <= now {
                "idle timeout"
            } else if self.head.get().is_some_and(|deadline| deadline <= now) {
                "request head not complete in time"
            } else {
                let mut next =
                    (self.last_activity + self.idle_timeout).min(now + self.head_timeout);
                if let Some(head) = self.head.get() {
                    next = next.min(head);
                }
                self.timer.as_mut().reset(next);
                continue;
            };
            self.metrics.header_timeouts.fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, what));
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.touch();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => match self.poll_deadline(cx) {
                Poll::Ready(error) => Poll::Ready(Err(error)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, data);
        self.after_write(cx, written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.after_write(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.poll_deadline(cx).map(Err),
            done => done,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    /// A connection with a 10 s head (and first-byte) deadline and a 60 s
    /// idle one, with its metrics and head deadline.
    fn timed(
        server: DuplexStream,
    ) -> (TimedIo<DuplexStream>, Arc<ServerMetrics>, Arc<HeadDeadline>) {
        let metrics = Arc::new(ServerMetrics::default());
        let head = HeadDeadline::new();
        let io = TimedIo::new(
            server,
            Duration::from_secs(10),
            Duration::from_secs(60),
            Arc::clone(&head),
            Arc::clone(&metrics),
        );
        (io, metrics, head)
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_cut_off_at_the_first_byte_deadline() {
        let (_client, server) = duplex(64);
        let (mut io, metrics, _) = timed(server);
        let mut buf = [0u8; 8];
        let started = Instant::now();
        let error = io.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert_eq!(metrics.header_timeouts.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn activity_pushes_the_idle_deadline_back() {
        let (mut client, server) = duplex(64);
        let (mut io, _, _) = timed(server);
        let mut buf = [0u8; 8];
        client.write_all(b"a").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 1);
        // 50 s of silence, a byte, 50 s more: never idle for 60 s.
        tokio::time::advance(Duration::from_secs(50)).await;
        client.write_all(b"b").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 1);
        let started = Instant::now();
        let error = io.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_not_complete_by_its_deadline_ends_the_connection() {
        use hyper::rt::Timer as _;

        let (mut client, server) = duplex(64);
        let (mut io, metrics, head) = timed(server);
        let timer = super::super::HeadTimer::new(Arc::clone(&head));
        let mut buf = [0u8; 8];
        // A first request whose head arrives in time, then 25 s between
        // requests with no head being read: neither deadline applies.
        let sleep = timer.sleep(Duration::from_secs(10));
        client.write_all(b"GET").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 3);
        drop(sleep);
        tokio::time::advance(Duration::from_secs(25)).await;
        client.write_all(b"x").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 1);

        // A head started now, one byte every 5 s: never idle, yet cut at 10 s.
        let _sleep = timer.sleep(Duration::from_secs(10));
        let started = Instant::now();
        let slow = async {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                client.write_all(b"y").await.unwrap();
            }
        };
        let reads = async {
            loop {
                if let Err(error) = io.read(&mut buf).await {
                    return error;
                }
            }
        };
        let error = tokio::select! {
            error = reads => error,
            () = slow => unreachable!(),
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(error.to_string(), "request head not complete in time");
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert_eq!(metrics.header_timeouts.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_cut_off_at_the_idle_deadline() {
        let (mut client, server) = duplex(64);
        let (mut io, metrics, _) = timed(server);
        let mut buf = [0u8; 8];
        client.write_all(b"GET").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 3);
        // An answer bigger than the pipe, and a client that reads none of it.
        let started = Instant::now();
        let error = io.write_all(&[b'x'; 1024]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(60));
        assert_eq!(metrics.header_timeouts.load(Ordering::Relaxed), 1);
        drop(client);
    }
}
