//! Whether a watch has delivered its first full list, for caches that more than one task reads.
//!
//! Not kube's `Store::wait_until_ready`: its future keeps a single waker, so when two tasks
//! wait on one store (the controller's applier waits on the proxies' store) one of them is
//! never woken, and polling it without waiting replaces the other's waker.

use kube::runtime::watcher;
use tokio::sync::watch;

/// Marks the first list as it goes by on a watch stream (after the reflector stored it).
pub struct Marker(watch::Sender<bool>);

/// Reads or awaits the first list.
#[derive(Clone)]
pub struct Listed(watch::Receiver<bool>);

pub fn first_list() -> (Marker, Listed) {
    let (marker, listed) = watch::channel(false);
    (Marker(marker), Listed(listed))
}

impl Marker {
    pub fn see<K, E>(&self, event: &Result<watcher::Event<K>, E>) {
        if matches!(event, Ok(watcher::Event::InitDone)) {
            self.0.send_replace(true);
        }
    }
}

impl Listed {
    /// Whether the first list is in, without waiting.
    pub fn now(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits for the first list; false if the watch ended without one.
    pub async fn wait(&mut self) -> bool {
        self.0.wait_for(|listed| *listed).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn two_waiters_both_wake_on_the_first_list() {
        let (marker, listed) = first_list();
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let mut listed = listed.clone();
                tokio::spawn(async move { listed.wait().await })
            })
            .collect();
        marker.see::<(), ()>(&Ok(watcher::Event::Init));
        assert!(!listed.now());
        marker.see::<(), ()>(&Ok(watcher::Event::InitDone));
        assert!(listed.now());
        drop(marker);
        for waiter in waiters {
            assert!(waiter.await.unwrap());
        }
    }

    #[tokio::test]
    async fn a_watch_gone_before_its_list_is_not_listed() {
        let (marker, mut listed) = first_list();
        drop(marker);
        assert!(!listed.wait().await);
    }
}
