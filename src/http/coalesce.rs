//! A connection task that polls itself again at once when it is woken
//! while it runs, instead of going back through the scheduler.
//!
//! hyper's HTTP/1 body channel wakes the connection's own task when the
//! handler takes the body's bytes (`Receiver::poll_next` wakes the sender's
//! waker even after the sender is gone), and that happens inside the very
//! poll of the connection task that reads the request. Tokio then queues
//! the task again and polls it once more for nothing. Callgrind counted
//! that round trip at about 1.9k instructions of a 17k-instruction
//! purchase with a JSON body (the sold-out flood), roughly a tenth.
//!
//! [`Coalesced`] hands the connection future a waker of its own. A wake
//! that arrives while the future is being polled is remembered, and the
//! future is polled again before [`Coalesced::poll`] returns, with the
//! caches warm and no trip through the run queue; a wake that arrives
//! while it is idle wakes the task as usual. Polling again is always
//! allowed (a future must tolerate spurious polls), so this changes when
//! the connection is polled, never what it does. A future that keeps
//! waking itself (hyper's `yield_now` after 16 rounds of pipelined
//! requests) is handed back to the scheduler after [`MAX_INLINE`] polls,
//! so one busy connection cannot hold a worker thread.
//!
//! No crate offers this (`futures`' `FutureExt` and tokio's task tools
//! have nothing that coalesces self-wakes), and it is small.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;

/// Polls in a row, at most, before the task goes back to the scheduler.
const MAX_INLINE: usize = 4;

/// Not being polled.
const IDLE: u8 = 0;
/// Being polled, not woken since the poll began.
const POLLING: u8 = 1;
/// Being polled, and woken since the poll began.
const WOKEN: u8 = 2;

/// What the connection future's waker shares with [`Coalesced`].
struct Shared {
    state: AtomicU8,
    /// The waker of the task that polls [`Coalesced`].
    outer: AtomicWaker,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        match self
            .state
            .compare_exchange(POLLING, WOKEN, Ordering::AcqRel, Ordering::Acquire)
        {
            // Seen by the poll in progress when it ends.
            Ok(_) => {}
            Err(WOKEN) => {}
            Err(_) => self.outer.wake(),
        }
    }
}

pin_project_lite::pin_project! {
    /// `inner`, polled again inline when it wakes itself (module docs).
    pub struct Coalesced<F> {
        #[pin]
        inner: F,
        shared: Arc<Shared>,
        // Made once, so the wakers stored by I/O and channels compare
        // equal (`will_wake`) and are not cloned again at every poll.
        waker: Waker,
    }
}

impl<F: Future> Coalesced<F> {
    /// Wraps `inner`.
    pub fn new(inner: F) -> Self {
        let shared = Arc::new(Shared {
            state: AtomicU8::new(IDLE),
            outer: AtomicWaker::new(),
        });
        Self {
            inner,
            waker: Waker::from(shared.clone()),
            shared,
        }
    }
}

impl<F: Future> Future for Coalesced<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        this.shared.outer.register(cx.waker());
        let mut inner_cx = Context::from_waker(this.waker);
        for _ in 0..MAX_INLINE {
            this.shared.state.store(POLLING, Ordering::Release);
            let polled = this.inner.as_mut().poll(&mut inner_cx);
            let state = this.shared.state.swap(IDLE, Ordering::AcqRel);
            if polled.is_ready() {
                return polled;
            }
            if state != WOKEN {
                return Poll::Pending;
            }
        }
        // Still waking itself: let the other tasks run first.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts the wakes of the outer task.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Wakes itself `times` times while polled, then is ready.
    struct SelfWaking {
        times: usize,
        polls: usize,
    }

    impl Future for SelfWaking {
        type Output = usize;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            self.polls += 1;
            if self.polls > self.times {
                return Poll::Ready(self.polls);
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    fn outer() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    #[test]
    fn a_wake_during_the_poll_polls_again_without_the_scheduler() {
        let (count, waker) = outer();
        let mut fut = std::pin::pin!(Coalesced::new(SelfWaking { times: 2, polls: 0 }));
        let polled = fut.as_mut().poll(&mut Context::from_waker(&waker));
        assert_eq!(polled, Poll::Ready(3));
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_future_that_keeps_waking_itself_goes_back_to_the_scheduler() {
        let (count, waker) = outer();
        let mut fut = std::pin::pin!(Coalesced::new(SelfWaking {
            times: 100,
            polls: 0
        }));
        let polled = fut.as_mut().poll(&mut Context::from_waker(&waker));
        assert_eq!(polled, Poll::Pending);
        assert_eq!(fut.inner.polls, MAX_INLINE);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_wake_while_idle_wakes_the_task() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let task = tokio::spawn(Coalesced::new(rx));
        tokio::task::yield_now().await;
        tx.send(7).unwrap();
        assert_eq!(task.await.unwrap().unwrap(), 7);
    }

    #[test]
    fn a_wake_from_another_thread_while_idle_reaches_the_task() {
        let (count, waker) = outer();
        let (tx, rx) = std::sync::mpsc::channel::<Waker>();
        struct Parked(std::sync::mpsc::Sender<Waker>, bool);
        impl Future for Parked {
            type Output = ();
            fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
                if self.1 {
                    return Poll::Ready(());
                }
                self.1 = true;
                self.0.send(cx.waker().clone()).unwrap();
                Poll::Pending
            }
        }
        let mut fut = std::pin::pin!(Coalesced::new(Parked(tx, false)));
        assert!(fut
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        let inner = rx.recv().unwrap();
        std::thread::spawn(move || inner.wake()).join().unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(fut
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_ready());
    }
}
