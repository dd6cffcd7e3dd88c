//! A connection that closes itself when the client is silent too long: before
//! its first byte (`header_read_timeout`: a client that connects and sends
//! nothing must not hold a slot), between any two reads or writes after
//! that (`idle_timeout`, noted up to an eighth of it late), and when a
//! request head is not complete by the deadline hyper set for it
//! ([`HeadDeadline`], `header_read_timeout`).

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
    /// When the first byte must have come (`header_read_timeout` after
    /// the connection was accepted).
    first_byte_deadline: Instant,
    /// The furthest ahead the timer is armed: at most `header_read_timeout`,
    /// so a head started after it was armed ends after it fires, and at
    /// most an eighth of `idle_timeout`, which bounds how late activity is
    /// noted.
    check_every: Duration,
    head: Arc<HeadDeadline>,
    /// Fires at the earliest deadline known when it was armed; re-armed
    /// lazily from `last_activity` and `head` rather than on every read,
    /// which keeps the timer wheel out of the hot path.
    timer: Pin<Box<Sleep>>,
    /// The waker `timer` was last polled with: while the task is the same
    /// and the timer has not fired, polling it again would change nothing.
    timer_waker: Option<Waker>,
    /// When bytes were last seen moving: the connection is idle from here.
    last_activity: Instant,
    /// Bytes moved since `last_activity` was taken. Reads and writes only
    /// set this; it is turned into a time when the clock is next read (the
    /// timer fires, or the connection waits in a new task), so a kept-alive
    /// connection reads no clock per request, and its activity is noted at
    /// most `check_every` late: it is closed between `idle_timeout` and
    /// `idle_timeout + check_every` after its last byte.
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
        // Never zero: the timer must move forward.
        let check_every = head_timeout
            .min(idle_timeout / 8)
            .max(Duration::from_millis(1));
        TimedIo {
            inner,
            idle_timeout,
            first_byte_deadline: now + head_timeout,
            check_every,
            head,
            timer: Box::pin(tokio::time::sleep_until(now + check_every)),
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

    /// Which deadline has passed at `now`, or when to look again.
    fn next_check(&self, now: Instant) -> Result<Instant, &'static str> {
        if !self.started {
            return match self.first_byte_deadline {
                deadline if deadline <= now => Err("no request in time"),
                deadline => Ok(deadline.min(now + self.check_every)),
            };
        }
        let idle = self.last_activity + self.idle_timeout;
        if idle <= now {
            return Err("idle timeout");
        }
        let head = self.head.get();
        if head.is_some_and(|deadline| deadline <= now) {
            return Err("request head not complete in time");
        }
        let next = idle.min(now + self.check_every);
        Ok(head.map_or(next, |head| next.min(head)))
    }

    /// Ready(error) once a deadline has passed: the first byte's, the idle
    /// one, or the head's.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
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
            let now = Instant::now();
            if std::mem::take(&mut self.active) {
                self.last_activity = now;
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                self.timer_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            self.timer_waker = None;
            let what = match self.next_check(now) {
                Ok(next) => {
                    self.timer.as_mut().reset(next);
                    continue;
                }
                Err(what) => what,
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

    #[tokio::test(start_paused = true)]
    async fn activity_between_checks_is_noted_at_most_an_eighth_of_idle_timeout_late() {
        let (mut client, server) = duplex(64);
        let (mut io, _, _) = timed(server);
        let mut buf = [0u8; 8];
        client.write_all(b"a").await.unwrap();
        let opened = Instant::now();
        assert_eq!(io.read(&mut buf).await.unwrap(), 1);
        // The same task waits, a byte comes 1 s later, then silence: that
        // byte is noted when the timer next fires (7.5 s, an eighth of the
        // 60 s idle timeout), not when it came.
        let late_byte = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            client.write_all(b"b").await.unwrap();
            std::future::pending::<()>().await;
        };
        let reads = async {
            assert_eq!(io.read(&mut buf).await.unwrap(), 1);
            io.read(&mut buf).await.unwrap_err()
        };
        let error = tokio::select! {
            error = reads => error,
            () = late_byte => unreachable!(),
        };
        assert_eq!(error.to_string(), "idle timeout");
        let closed = opened.elapsed();
        assert!(
            closed >= Duration::from_secs(61) && closed <= Duration::from_millis(68_500),
            "closed {closed:?} after opening"
        );
    }
}
