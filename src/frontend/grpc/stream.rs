//! `stream_messages_per_minute`: the client's length-prefixed messages are
//! counted as they stream upstream; over the rate, the request stream is cut
//! (the upstream sees a reset) and the client's response ends, at a message
//! boundary, with trailers `grpc-status: 8`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes};
use http::{HeaderMap, HeaderValue};
use http_body::{Body as HttpBody, Frame};
use parking_lot::Mutex;

use super::super::concurrency::InFlightGuard;
use super::super::protocol_limits::Reporter;
use super::{GRPC_MESSAGE, GRPC_STATUS, code, percent_encode};
use crate::body::{Body, BoxError};
use crate::limit::{CompactState, Limit, Nanos, StrategyKind};

/// The gateway's clock (Unix nanoseconds).
pub type Now = Arc<dyn Fn() -> Nanos + Send + Sync>;

/// Shared by the two halves of one call: set when the client's stream broke
/// its message rate.
#[derive(Default)]
pub struct StreamState {
    exhausted: AtomicBool,
    message: Mutex<String>,
    waker: Mutex<Option<Waker>>,
}

impl StreamState {
    fn exhaust(&self, message: String) {
        *self.message.lock() = message;
        self.exhausted.store(true, Ordering::Release);
        if let Some(waker) = self.waker.lock().take() {
            waker.wake();
        }
    }

    fn is_exhausted(&self, cx: &mut Context<'_>) -> bool {
        // Register before checking, so an exhaust in between still wakes us.
        let mut slot = self.waker.lock();
        if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *slot = Some(cx.waker().clone());
        }
        drop(slot);
        self.exhausted.load(Ordering::Acquire)
    }

    pub fn is_exhausted_now(&self) -> bool {
        self.exhausted.load(Ordering::Acquire)
    }

    /// Resolves once the client's stream broke its rate (used while the
    /// upstream's response head has not arrived yet).
    pub async fn exhausted(self: &Arc<Self>) {
        std::future::poll_fn(|cx| {
            if self.is_exhausted(cx) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// The trailers that end the call: `grpc-status: 8` and why.
    pub fn trailers(&self) -> HeaderMap {
        let mut trailers = HeaderMap::new();
        trailers.insert(
            GRPC_STATUS,
            HeaderValue::from(u16::from(code::RESOURCE_EXHAUSTED)),
        );
        if let Ok(value) = HeaderValue::from_str(&percent_encode(&self.message.lock())) {
            trailers.insert(GRPC_MESSAGE, value);
        }
        trailers
    }
}

/// Finds the boundaries of gRPC's length-prefixed messages (1 flag byte,
/// 4 bytes of big-endian length, the message) in a stream of chunks.
#[derive(Debug, Default)]
struct Framing {
    /// Prefix bytes seen so far of the next message (0..5).
    prefix: [u8; 5],
    prefix_len: usize,
    body_left: u64,
}

impl Framing {
    fn at_boundary(&self) -> bool {
        self.prefix_len == 0 && self.body_left == 0
    }

    /// Advances over `chunk`; returns the offsets at which a message's prefix
    /// starts, one call of `on_message(offset)` each, stopping early (with that
    /// offset) when it returns false.
    fn advance(
        &mut self,
        chunk: &[u8],
        mut on_message: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        let mut pos = 0;
        while pos < chunk.len() {
            if self.body_left > 0 {
                let n = usize::try_from(self.body_left)
                    .unwrap_or(usize::MAX)
                    .min(chunk.len() - pos);
                self.body_left -= n as u64;
                pos += n;
                continue;
            }
            if self.prefix_len == 0 && !on_message(pos) {
                return Some(pos);
            }
            let n = (5 - self.prefix_len).min(chunk.len() - pos);
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&chunk[pos..pos + n]);
            self.prefix_len += n;
            pos += n;
            if self.prefix_len == 5 {
                let [_, a, b, c, d] = self.prefix;
                self.body_left = u64::from(u32::from_be_bytes([a, b, c, d]));
                self.prefix_len = 0;
            }
        }
        None
    }
}

/// The request body on its way upstream, counting the client's messages.
pub struct MessageCounter {
    inner: Body,
    framing: Framing,
    limit: Limit,
    state: CompactState,
    now: Now,
    shared: Arc<StreamState>,
    /// Bytes of an allowed prefix of the chunk that broke the rate, sent
    /// before the stream is cut.
    tail: Option<Bytes>,
    cut: bool,
    reporter: Option<Reporter>,
}

impl MessageCounter {
    pub fn new(
        inner: Body,
        per_minute: u64,
        now: Now,
        shared: Arc<StreamState>,
        reporter: Option<Reporter>,
    ) -> MessageCounter {
        let minute = super::super::protocol_limits::MINUTE.as_nanos() as u64;
        MessageCounter {
            inner,
            framing: Framing::default(),
            limit: Limit::new(StrategyKind::SlidingWindowCounter, per_minute, minute, None),
            state: CompactState::default(),
            now,
            shared,
            tail: None,
            cut: false,
            reporter,
        }
    }
}

/// Why the request stream to the upstream was cut.
#[derive(Debug, thiserror::Error)]
#[error("client stream over stream_messages_per_minute")]
pub struct StreamCut;

impl HttpBody for MessageCounter {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(tail) = this.tail.take() {
            return Poll::Ready(Some(Ok(Frame::data(tail))));
        }
        if this.cut {
            // An error, not the end: the upstream must not take a cut stream for a complete one.
            return Poll::Ready(Some(Err(Box::new(StreamCut))));
        }
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        let Some(mut data) = frame.data_ref().cloned() else {
            return Poll::Ready(Some(Ok(frame)));
        };
        let now = (this.now)();
        let (limit, state) = (&this.limit, &mut this.state);
        let over = this
            .framing
            .advance(&data, |_| limit.step_compact(state, now, 1).allowed);
        let Some(offset) = over else {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        };
        this.cut = true;
        if let Some(reporter) = &this.reporter {
            reporter.report("grpc", "stream_messages_per_minute", this.limit.limit);
        }
        this.shared.exhaust(format!(
            "rate limited: stream over stream_messages_per_minute {}",
            this.limit.limit
        ));
        let allowed = data.split_to(offset);
        data.advance(data.remaining());
        if allowed.is_empty() {
            return Poll::Ready(Some(Err(Box::new(StreamCut))));
        }
        Poll::Ready(Some(Ok(Frame::data(allowed))))
    }

    fn is_end_stream(&self) -> bool {
        self.tail.is_none() && !self.cut && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The response body on its way to the client: holds the call's in-flight
/// slot until the call ends, and ends the call with status 8 once the
/// client's stream broke its rate.
pub struct StreamGuard {
    inner: Body,
    framing: Framing,
    shared: Option<Arc<StreamState>>,
    _slot: Option<InFlightGuard>,
    done: bool,
}

impl StreamGuard {
    pub fn new(inner: Body, shared: Option<Arc<StreamState>>, slot: Option<InFlightGuard>) -> Self {
        StreamGuard {
            inner,
            framing: Framing::default(),
            shared,
            _slot: slot,
            done: false,
        }
    }

    fn end_with_status(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        let trailers = self
            .shared
            .as_ref()
            .map(|s| s.trailers())
            .unwrap_or_default();
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }
}

impl HttpBody for StreamGuard {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let exhausted = this.shared.as_ref().is_some_and(|s| s.is_exhausted(cx));
        if exhausted && this.framing.at_boundary() {
            return this.end_with_status();
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.framing.advance(data, |_| true);
                    return Poll::Ready(Some(Ok(frame)));
                }
                if exhausted {
                    // The upstream's own end (likely "cancelled") gives way to ours.
                    return this.end_with_status();
                }
                this.done = frame.is_trailers();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) if exhausted => this.end_with_status(),
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        // An upstream's trailers-only answer stays one: unless our status is
        // still to be sent, the inner body's end is ours.
        self.done
            || (self.inner.is_end_stream()
                && !self.shared.as_ref().is_some_and(|s| s.is_exhausted_now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn message(len: u32) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&len.to_be_bytes());
        out.extend(std::iter::repeat_n(7, len as usize));
        out
    }

    #[test]
    fn message_boundaries_are_found_across_chunks() {
        let stream: Vec<u8> = [message(3), message(0), message(10)].concat();
        for cut in 0..stream.len() {
            let mut framing = Framing::default();
            let mut starts = 0;
            framing.advance(&stream[..cut], |_| {
                starts += 1;
                true
            });
            framing.advance(&stream[cut..], |_| {
                starts += 1;
                true
            });
            assert_eq!(starts, 3, "cut at {cut}");
            assert!(framing.at_boundary());
        }
    }

    #[tokio::test]
    async fn the_message_over_the_rate_is_not_forwarded_and_the_stream_is_cut() {
        let shared = Arc::new(StreamState::default());
        let chunk: Vec<u8> = [message(2), message(2), message(2)].concat();
        let mut counter = MessageCounter::new(
            crate::body::full(chunk.clone()),
            2,
            Arc::new(|| 1_000),
            Arc::clone(&shared),
            None,
        );
        let first = counter.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], &chunk[..14]);
        assert!(counter.frame().await.unwrap().is_err());
        let trailers = shared.trailers();
        assert_eq!(trailers[GRPC_STATUS], "8");
        assert!(
            trailers[GRPC_MESSAGE]
                .to_str()
                .unwrap()
                .contains("stream_messages_per_minute")
        );
    }

    /// A body that yields the given frames, then ends.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl HttpBody for Frames {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.get_mut().0.pop_front().map(Ok))
        }
    }

    #[tokio::test]
    async fn the_response_ends_with_status_8_at_the_next_message_boundary() {
        let stream: Vec<u8> = [message(4), message(6), message(2)].concat();
        let (first, second) = stream.split_at(12); // mid second message
        let mut upstream_trailers = HeaderMap::new();
        upstream_trailers.insert(GRPC_STATUS, HeaderValue::from_static("1"));
        let frames = Frames(
            [
                Frame::data(Bytes::copy_from_slice(first)),
                Frame::data(Bytes::copy_from_slice(second)),
                Frame::trailers(upstream_trailers),
            ]
            .into(),
        );
        let shared = Arc::new(StreamState::default());
        let mut body =
            StreamGuard::new(crate::body::stream(frames), Some(Arc::clone(&shared)), None);
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            first
        );
        shared.exhaust("over the rate".into());
        // The message under way is finished first...
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            second
        );
        // ...then the call ends with the gateway's status, not the upstream's.
        let trailers = body
            .frame()
            .await
            .unwrap()
            .unwrap()
            .into_trailers()
            .unwrap();
        assert_eq!(trailers[GRPC_STATUS], "8");
        assert_eq!(trailers[GRPC_MESSAGE], "over the rate");
        assert!(body.frame().await.is_none());
    }
}
