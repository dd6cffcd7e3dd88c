//! A result that is usually ready at once.
//!
//! The memory store answers a check without waiting, and so does the engine
//! on it; only network stores wait. [`Soon`] is a future that carries a
//! ready value as it is, and boxes the work only when there is a wait: the
//! callers' own futures then hold a small value instead of the whole
//! computation's state, which every layer above would move around.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub enum Soon<'a, T> {
    /// The value; `None` once taken.
    Ready(Option<T>),
    Later(BoxFuture<'a, T>),
}

impl<'a, T> Soon<'a, T> {
    pub fn ready(value: T) -> Soon<'a, T> {
        Soon::Ready(Some(value))
    }

    pub fn later(future: impl Future<Output = T> + Send + 'a) -> Soon<'a, T> {
        Soon::Later(Box::pin(future))
    }

    /// The value, if it was there at once.
    pub fn now(self) -> Option<T> {
        match self {
            Soon::Ready(value) => value,
            Soon::Later(_) => None,
        }
    }
}

// Neither variant is pinned in place: the value is moved out, the future
// is pinned in its box.
impl<T> Unpin for Soon<'_, T> {}

impl<T> Future for Soon<'_, T> {
    type Output = T;

    /// Polled again after it has answered, it never answers again.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match self.get_mut() {
            Soon::Ready(value) => value.take().map_or(Poll::Pending, Poll::Ready),
            Soon::Later(future) => future.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll_once<T>(soon: &mut Soon<'_, T>) -> Poll<T> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(soon).poll(&mut cx)
    }

    #[test]
    fn a_ready_value_answers_on_the_first_poll_and_only_once() {
        let mut soon = Soon::ready(7);
        assert_eq!(poll_once(&mut soon), Poll::Ready(7));
        assert_eq!(poll_once(&mut soon), Poll::Pending);
        assert_eq!(Soon::ready(8).now(), Some(8));
    }

    #[tokio::test]
    async fn later_work_is_awaited() {
        let (send, receive) = tokio::sync::oneshot::channel();
        let mut soon = Soon::later(async move { receive.await.unwrap_or(0) + 1 });
        assert_eq!(poll_once(&mut soon), Poll::Pending);
        send.send(41).unwrap();
        assert_eq!(soon.await, 42);
        assert_eq!(Soon::later(async { 1 }).now(), None);
    }
}
