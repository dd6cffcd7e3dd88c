//! A connection that closes itself when the client is silent too long: before
//! its first byte (`header_read_timeout`: a client that connects and sends
//! nothing must not hold a slot) and between any two reads or writes after
//! that (`idle_timeout`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::metrics::ServerMetrics;

pub struct TimedIo<T> {
    inner: T,
    idle_timeout: Duration,
    /// Fires at the deadline; re-armed lazily from `last_activity` rather than
    /// on every read, which keeps the timer wheel out of the hot path.
    timer: Pin<Box<Sleep>>,
    last_activity: Instant,
    started: bool,
    metrics: Arc<ServerMetrics>,
}

impl<T> TimedIo<T> {
    pub fn new(
        inner: T,
        first_byte_timeout: Duration,
        idle_timeout: Duration,
        metrics: Arc<ServerMetrics>,
    ) -> Self {
        let now = Instant::now();
        TimedIo {
            inner,
            idle_timeout,
            timer: Box::pin(tokio::time::sleep_until(now + first_byte_timeout)),
            last_activity: now,
            started: false,
            metrics,
        }
    }

    fn touch(&mut self) {
        self.last_activity = Instant::now();
        self.started = true;
    }

    /// Ready(error) once the deadline has passed with no activity.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if self.started {
                let deadline = self.last_activity + self.idle_timeout;
                if deadline > Instant::now() {
                    self.timer.as_mut().reset(deadline);
                    continue;
                }
            }
            self.metrics.header_timeouts.fetch_add(1, Ordering::Relaxed);
            let what = if self.started {
                "idle timeout"
            } else {
                "no request in time"
            };
            return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, what));
        }
    }
}

use std::future::Future as _;

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
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.last_activity = Instant::now();
                }
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.last_activity = Instant::now();
                }
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_cut_off_at_the_first_byte_deadline() {
        let (_client, server) = duplex(64);
        let metrics = Arc::new(ServerMetrics::default());
        let mut io = TimedIo::new(
            server,
            Duration::from_secs(10),
            Duration::from_secs(60),
            Arc::clone(&metrics),
        );
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
        let metrics = Arc::new(ServerMetrics::default());
        let mut io = TimedIo::new(
            server,
            Duration::from_secs(10),
            Duration::from_secs(60),
            metrics,
        );
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
}
