//! Work that must finish even if the one waiting for it goes away.
//!
//! Once a purchase has taken units, its hand-off (the order made durable,
//! or the units given back) must run to the end even if the buyer hangs up
//! and the request's future is dropped. `tokio::spawn(..).await` gives
//! that, but every accepted order then pays for a task of its own: queued,
//! often stolen by the other worker (a futex wake to unpark it), polled
//! there, and its result handed back through the join handle, which wakes
//! the request's task once more. [`finish_detached`] runs the work inside
//! the request's own task instead, and only when that task is dropped
//! before the work is done does it spawn what is left: the work was boxed
//! from the start, so it can move into a task of its own half-way through.
//!
//! A panic inside the work is caught and returned as an error, as the
//! join handle returned it.
//!
//! tokio has no such combinator (`spawn` is the documented answer, and
//! `tokio_util`'s `DropGuard` only cancels), so it is written here.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::FutureExt;

type Work<T> = Pin<Box<dyn Future<Output = Result<T, Box<dyn Any + Send>>> + Send>>;

/// `work`, run by whoever awaits it, and by a task of its own from the
/// moment the awaiting future is dropped unfinished (module docs).
pub(crate) struct Detached<T: Send + 'static> {
    work: Option<Work<T>>,
}

/// Runs `work` to completion whatever happens to the caller: `Err` with
/// the panic's message if it panicked.
pub(crate) fn finish_detached<F>(work: F) -> Detached<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    Detached {
        work: Some(Box::pin(AssertUnwindSafe(work).catch_unwind())),
    }
}

impl<T: Send + 'static> Future for Detached<T> {
    type Output = Result<T, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(work) = self.work.as_mut() else {
            return Poll::Ready(Err("polled after it finished".into()));
        };
        let done = std::task::ready!(work.as_mut().poll(cx));
        self.work = None;
        Poll::Ready(done.map_err(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            format!("the detached work panicked: {message}")
        }))
    }
}

impl<T: Send + 'static> Drop for Detached<T> {
    fn drop(&mut self) {
        if let Some(work) = self.work.take() {
            // Outside a runtime (a test's executor, a runtime shutting
            // down) there is nothing left to run it on: it is dropped, as
            // a spawned task would be by a runtime that stops.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(work);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn the_work_runs_in_the_callers_task_and_answers_it() {
        let (caller, ran_in) = tokio::spawn(async {
            let caller = tokio::task::id();
            (caller, finish_detached(async { tokio::task::id() }).await)
        })
        .await
        .unwrap();
        assert_eq!(ran_in, Ok(caller));
    }

    #[tokio::test]
    async fn a_caller_that_goes_away_leaves_the_work_to_finish_on_its_own() {
        let done = Arc::new(AtomicBool::new(false));
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let d = done.clone();
        let caller = tokio::spawn(finish_detached(async move {
            started_tx.send(()).unwrap();
            released.await.unwrap();
            d.store(true, Ordering::SeqCst);
        }));
        started.await.unwrap();
        // The buyer hangs up: the request's task is dropped mid-work.
        caller.abort();
        assert!(caller.await.unwrap_err().is_cancelled());
        assert!(!done.load(Ordering::SeqCst));
        release.send(()).unwrap();
        for _ in 0..100 {
            if done.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the work did not finish after its caller went away");
    }

    fn boom() {
        panic!("boom");
    }

    #[tokio::test]
    async fn a_panic_in_the_work_is_an_error() {
        let answer = finish_detached(async { boom() }).await;
        assert_eq!(answer, Err("the detached work panicked: boom".into()));
    }
}
