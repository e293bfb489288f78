//! hyper's header deadline (which also ends idle keep-alive connections and slow WebSocket
//! handshakes) without a runtime timer per request. hyper asks its `Timer` for a sleep at every
//! request head and drops it once the head is in; on tokio's timer that is a wheel entry
//! registered and removed per request, behind the driver's lock (callgrind: 1.2k instructions
//! a PUT, a sixth of what the limits cost). Here each connection keeps its deadline in a slot
//! of its own, and one sweep a few times a second wakes the connections whose deadline has
//! passed, so a deadline fires at most one sweep late.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

/// The connections of one port, swept for passed deadlines.
pub struct Sweep {
    epoch: Instant,
    period: Duration,
    /// Pushed at accept, pruned by the sweep once a connection is gone.
    slots: Mutex<Vec<Weak<Slot>>>,
}

/// One connection's deadline.
#[derive(Default)]
struct Slot {
    /// Nanoseconds after the epoch, plus one; 0 while no sleep waits.
    due: AtomicU64,
    waker: Mutex<Option<Waker>>,
}

impl Sweep {
    /// For deadlines of `timeout`: swept a quarter of it apart, at most a second.
    pub fn new(timeout: Duration) -> Arc<Self> {
        let period = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        Arc::new(Self { epoch: Instant::now(), period, slots: Mutex::default() })
    }

    /// The timer of a new connection, for `http1::Builder::timer`.
    pub fn timer(self: &Arc<Self>) -> ConnectionTimer {
        let slot = Arc::new(Slot::default());
        self.slots.lock().unwrap_or_else(PoisonError::into_inner).push(Arc::downgrade(&slot));
        ConnectionTimer { epoch: self.epoch, slot }
    }

    /// Wakes the connections whose deadline passed, until the task is dropped. Its tick is
    /// also the runtime's earliest timer, so a deadline set by a request never is: setting the
    /// earliest one wakes a parked worker to re-arm its poll (strace, 5,000 PUTs: 2,700 more
    /// futex calls and 2,700 more writes).
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.period);
        loop {
            tick.tick().await;
            self.wake_due(Instant::now());
        }
    }

    fn wake_due(&self, now: Instant) {
        let now = nanos(self.epoch, now);
        let mut due = Vec::new();
        self.slots.lock().unwrap_or_else(PoisonError::into_inner).retain(|slot| {
            let Some(slot) = slot.upgrade() else { return false };
            let at = slot.due.load(Ordering::Acquire);
            if at != 0 && at <= now {
                due.push(slot);
            }
            true
        });
        // Woken outside the list's lock, which accepting a connection takes.
        for slot in due {
            if let Some(waker) = slot.waker.lock().unwrap_or_else(PoisonError::into_inner).take() {
                waker.wake();
            }
        }
    }
}

fn nanos(epoch: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX - 1) + 1
}

/// A connection's `hyper::rt::Timer`: sleeps that the sweep ends.
#[derive(Clone)]
pub struct ConnectionTimer {
    epoch: Instant,
    slot: Arc<Slot>,
}

impl hyper::rt::Timer for ConnectionTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Due { deadline, at: nanos(self.epoch, deadline), slot: self.slot.clone() })
    }
}

/// A sleep until `deadline`, registered in the connection's slot while it waits.
struct Due {
    deadline: Instant,
    at: u64,
    slot: Arc<Slot>,
}

impl Future for Due {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        let mut waker = self.slot.waker.lock().unwrap_or_else(PoisonError::into_inner);
        if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *waker = Some(cx.waker().clone());
        }
        self.slot.due.store(self.at, Ordering::Release);
        Poll::Pending
    }
}

impl hyper::rt::Sleep for Due {}

impl Drop for Due {
    fn drop(&mut self) {
        self.slot.due.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::atomic::AtomicUsize, task::Wake};

    use hyper::rt::Timer as _;

    use super::*;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_sleep_is_woken_by_the_first_sweep_past_its_deadline_and_a_dropped_one_is_forgotten() {
        let sweep = Sweep::new(Duration::from_secs(20));
        let timer = sweep.timer();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let now = Instant::now();
        let hour = Duration::from_secs(3600);
        let mut sleep = timer.sleep_until(now + hour);
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        sweep.wake_due(now);
        assert_eq!(count.0.load(Ordering::Relaxed), 0, "not before its deadline");
        sweep.wake_due(now + 2 * hour);
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        drop(sleep);
        assert_eq!(timer.slot.due.load(Ordering::Acquire), 0, "a dropped sleep waits for nothing");
        assert!(timer.sleep_until(now).as_mut().poll(&mut cx).is_ready(), "a passed deadline is ready at once");
        drop(timer);
        sweep.wake_due(now + 3 * hour);
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(sweep.slots.lock().unwrap().is_empty(), "a closed connection's slot is pruned");
    }
}
