//! Watch retries that do not outlast an outage.
//!
//! kube's `default_backoff` doubles the pause after each failed retry, up to 30 s: after a
//! 30 s outage a target's watches would come back up to a minute after the target did, and
//! every result behind them with them. Here the pause is the same, but it ends as soon as the
//! target's probe sees the apiserver answer again.

use std::{pin::Pin, time::Duration};

use futures::{Stream, StreamExt as _};
use kube::runtime::{utils::Backoff as _, watcher::DefaultBackoff};
use tokio::sync::watch;

/// Counts the times a target came back; every watch of the target holds a receiver.
pub type Comebacks = watch::Receiver<u64>;

/// `stream` with kube's default backoff after each error, cut short when `comebacks` changes.
pub fn backoff_until_back<S, T, E>(
    stream: S,
    comebacks: Comebacks,
) -> impl Stream<Item = Result<T, E>> + Send + 'static
where
    S: Stream<Item = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    let state = State {
        stream: Box::pin(stream),
        backoff: DefaultBackoff::default(),
        comebacks,
        pause: None,
    };
    futures::stream::unfold(state, |mut state| async move {
        if let Some(pause) = state.pause.take() {
            state.wait(pause).await;
        }
        let item = state.stream.next().await?;
        match &item {
            Ok(_) => state.backoff.reset(),
            Err(_) => {
                state.comebacks.borrow_and_update();
                state.pause = state.backoff.next();
            }
        }
        Some((item, state))
    })
}

struct State<S> {
    stream: Pin<Box<S>>,
    backoff: DefaultBackoff,
    comebacks: Comebacks,
    /// Taken before the next retry: the error is passed on (and logged) first.
    pause: Option<Duration>,
}

impl<S> State<S> {
    async fn wait(&mut self, pause: Duration) {
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            changed = self.comebacks.changed() => {
                if changed.is_ok() {
                    self.backoff.reset();
                } else {
                    // The probe is gone (shutting down): wait the whole pause.
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use tokio::time::Instant;

    use super::*;

    /// Fails `failures` times, then yields Ok forever; counts the polls that produced an item.
    fn flaky(failures: usize, calls: Arc<AtomicUsize>) -> impl Stream<Item = Result<(), ()>> {
        futures::stream::repeat(()).map(move |()| {
            if calls.fetch_add(1, Ordering::SeqCst) < failures {
                Err(())
            } else {
                Ok(())
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn errors_back_off_like_kube() {
        let calls = Arc::new(AtomicUsize::new(0));
        let (_back, comebacks) = watch::channel(0);
        let mut stream = Box::pin(backoff_until_back(flaky(6, calls.clone()), comebacks));
        let started = Instant::now();
        for _ in 0..6 {
            assert!(stream.next().await.is_some_and(|r| r.is_err()));
        }
        assert!(stream.next().await.is_some_and(|r| r.is_ok()));
        // 0.8 + 1.6 + 3.2 + 6.4 + 12.8 + 25.6 s, each jittered by up to half.
        assert!(
            started.elapsed() > Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_comeback_ends_the_pause_and_resets_the_backoff() {
        let calls = Arc::new(AtomicUsize::new(0));
        let (back, comebacks) = watch::channel(0);
        let mut stream = Box::pin(backoff_until_back(flaky(8, calls.clone()), comebacks));
        for _ in 0..7 {
            assert!(stream.next().await.is_some_and(|r| r.is_err()));
        }
        // The next pause is about 50 s; the target answers again 1 s into it.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            back.send_modify(|n| *n += 1);
        });
        let paused = Instant::now();
        assert!(stream.next().await.is_some_and(|r| r.is_err()));
        assert!(
            paused.elapsed() < Duration::from_secs(2),
            "{:?}",
            paused.elapsed()
        );
        // Reset: the pause after this error is short again.
        let paused = Instant::now();
        assert!(stream.next().await.is_some_and(|r| r.is_ok()));
        assert!(
            paused.elapsed() < Duration::from_secs(2),
            "{:?}",
            paused.elapsed()
        );
    }
}
