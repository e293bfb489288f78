//! A stream that is polled only after it asked to be. A subscriber's task wakes for every event
//! it forwards, and its loop then polls the socket's read half again, although nothing woke it:
//! tungstenite zero-fills its read buffer, tries a read that finds nothing, and turns the
//! `WouldBlock` into `Pending`, through the split's lock and the waker proxies of
//! tokio-tungstenite, once per delivered event. The wrapper gives the read half a waker of its
//! own that notes its wake-ups; until one comes, a poll answers `Pending` at once.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
};

use futures_util::{Stream, task::AtomicWaker};

pub struct Gated<S> {
    inner: S,
    signal: Arc<Signal>,
    /// `signal` as a waker, made once: the one every poll of `inner` registers.
    waker: Waker,
}

struct Signal {
    /// Whether `inner` was woken (or has not said `Pending`) since its last poll.
    woken: AtomicBool,
    /// The task to wake when it is.
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<S> Gated<S> {
    pub fn new(inner: S) -> Self {
        let signal = Arc::new(Signal { woken: AtomicBool::new(true), task: AtomicWaker::new() });
        Self { inner, waker: Waker::from(signal.clone()), signal }
    }
}

impl<S: Stream + Unpin> Stream for Gated<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = &mut *self;
        // Registered before the flag is read, so a wake-up between the two is not lost.
        this.signal.task.register(cx.waker());
        if !this.signal.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let poll = Pin::new(&mut this.inner).poll_next(&mut Context::from_waker(&this.waker));
        if poll.is_ready() {
            // More may be buffered: the next poll reads again.
            this.signal.woken.store(true, Ordering::Release);
        }
        poll
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt as _;
    use tokio::sync::mpsc;

    use super::*;

    /// A channel's receiving end as a stream, counting its polls.
    struct Counted(mpsc::UnboundedReceiver<u32>, usize);

    impl Stream for Counted {
        type Item = u32;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<u32>> {
            self.1 += 1;
            self.0.poll_recv(cx)
        }
    }

    #[tokio::test]
    async fn it_polls_its_stream_only_once_woken_and_loses_no_item() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut gated = Gated::new(Counted(rx, 0));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut gated).poll_next(&mut cx).is_pending());
        // Not woken since: answered without polling the stream.
        for _ in 0..10 {
            assert!(Pin::new(&mut gated).poll_next(&mut cx).is_pending());
        }
        assert_eq!(gated.inner.1, 1);
        // Items sent while nobody polls wake it; each one arrives, in order.
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        assert_eq!(gated.next().await, Some(1));
        assert_eq!(gated.next().await, Some(2));
        let later = tokio::spawn(async move {
            tokio::task::yield_now().await;
            tx.send(3).unwrap();
        });
        assert_eq!(gated.next().await, Some(3));
        later.await.unwrap();
        assert_eq!(gated.next().await, None);
    }
}
