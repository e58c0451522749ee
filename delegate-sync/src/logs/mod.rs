//! The log relay: each running delegate container's log, followed in its target (pods/log) and
//! written by the proxy container of the same name as its own log, so that `kubectl logs` on a
//! proxy (and Argo's log views) show the delegate's output, live.
//!
//! - [`lines`]: the kubelet's timestamped log, cut into pieces;
//! - [`position`]: where a relayed log stands, and what a re-read adds;
//! - [`channel`]: `proxy-waiter relay`, exec'd into the proxy container;
//! - [`relay`]: one container's relay, instance after instance, resuming after failures.
//!
//! The position lives in the waiter (it is what its log holds), so a restarted delegate-sync,
//! or a new leader, resumes exactly where the log stands. Relays are tasks of their own,
//! beside reconciliations; the controller only starts them, and holds a proxy's result until
//! its relays are complete, so that a proxy container that ended has its whole log.

mod channel;
mod lines;
mod position;
mod relay;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use contract::{LOG_RELAY, LOG_RELAY_LIMIT_BYTES};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, ResourceExt as _,
    runtime::{events::EventType, reflector::ObjectRef},
};
use tokio::sync::{Semaphore, mpsc};

pub use relay::Outcome;

use crate::{
    controller::{Events, publish_with},
    metrics::Metrics,
    outcome,
    targets::Target,
};

/// The relays of all proxies.
pub struct Relays {
    /// False with `--log-relay=false`: nothing is relayed.
    enabled: bool,
    source: Client,
    entries: Mutex<HashMap<Key, Entry>>,
    /// Live streams at once (`--max-log-streams`); past them, logs are relayed once ended.
    live: Arc<Semaphore>,
    /// Relays of ended containers at once.
    ended: Arc<Semaphore>,
    max_streams: usize,
    /// Proxies to reconcile again: a relay ended, or a probe answered.
    wake: mpsc::UnboundedSender<ObjectRef<Pod>>,
    /// The controller's, for the relays' Events on their proxies.
    events: Events,
    metrics: Arc<Metrics>,
}

/// A proxy (uid), the delegate it relays (uid) and the container.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Key {
    proxy: String,
    delegate: String,
    container: String,
}

/// Where a relay is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Its first attempt is under way.
    Trying,
    /// It reached both ends at least once, and is not done.
    Connected,
    /// Its first attempt failed and it never connected since: it does not hold the result (a
    /// node without a kubelet to exec through, an apiserver that does not answer).
    Retrying,
    /// The delegate ended before the proxy container ran: is there anything to relay?
    Probing,
    /// There is: a relay starts once the proxy container runs.
    NeedsRelay,
    Done(Outcome),
}

impl State {
    /// Whether the proxy's result waits for this relay.
    fn holds_result(&self) -> bool {
        matches!(self, Self::Trying | Self::Connected | Self::Probing)
    }
}

struct Entry {
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Entry {
    fn state(&self) -> State {
        self.state
            .lock()
            .map(|s| s.clone())
            .unwrap_or(State::Done(Outcome::Complete))
    }
}

/// Wakes one proxy's reconciliation: a relay or a probe that held its result no longer does.
#[derive(Clone)]
pub struct Wake {
    to: mpsc::UnboundedSender<ObjectRef<Pod>>,
    proxy: ObjectRef<Pod>,
}

impl Wake {
    pub fn send(&self) {
        let _ = self.to.send(self.proxy.clone());
    }
}

/// Whether an ended delegate container wrote anything: `NeedsRelay` if so (or if the target
/// does not answer), `Done` if not, or if the target refuses its log (a node without a
/// kubelet to read it from: a relay could not read it either).
async fn probe(
    target: Target,
    namespace: String,
    delegate: String,
    container: String,
    state: Arc<Mutex<State>>,
    wake: Wake,
) {
    let params = kube::api::LogParams {
        container: Some(container),
        limit_bytes: Some(1),
        ..Default::default()
    };
    let pods: Api<Pod> = Api::namespaced(target.client.clone(), &namespace);
    let empty = match pods.logs(&delegate, &params).await {
        Ok(log) => log.is_empty(),
        Err(kube::Error::Api(_)) => true,
        Err(_) => false,
    };
    if let Ok(mut state) = state.lock() {
        *state = if empty {
            State::Done(Outcome::Complete)
        } else {
            State::NeedsRelay
        };
    }
    wake.send();
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relays {
    /// Relays with at most `max_streams` live at once (None: relay nothing), and the proxies
    /// to reconcile again as relays end.
    pub fn new(
        source: Client,
        events: Events,
        max_streams: Option<usize>,
        metrics: Arc<Metrics>,
    ) -> (Self, mpsc::UnboundedReceiver<ObjectRef<Pod>>) {
        let (wake, wake_rx) = mpsc::unbounded_channel();
        let enabled = max_streams.is_some();
        let max_streams = max_streams.unwrap_or(0);
        let relays = Self {
            enabled,
            source,
            entries: Mutex::default(),
            live: Arc::new(Semaphore::new(max_streams)),
            ended: Arc::new(Semaphore::new(max_streams.max(1))),
            max_streams,
            wake,
            events,
            metrics,
        };
        (relays, wake_rx)
    }

    fn wake(&self, proxy: &Pod) -> Wake {
        Wake {
            to: self.wake.clone(),
            proxy: ObjectRef::from_obj(proxy),
        }
    }

    fn wanted(&self, proxy: &Pod) -> bool {
        self.enabled && proxy.annotations().get(LOG_RELAY).map(String::as_str) != Some("off")
    }

    /// Starts a relay for each container of `delegate` that has started and whose proxy
    /// container runs, unless the proxy turned relay off; `delegate_ended`: its result is
    /// decided (the caller has it at hand).
    pub fn follow(&self, proxy: &Arc<Pod>, target: &Target, delegate: &Pod, delegate_ended: bool) {
        if !self.wanted(proxy) {
            return;
        }
        let (Some(proxy_uid), Some(delegate_uid)) = (
            proxy.metadata.uid.as_deref(),
            delegate.metadata.uid.as_deref(),
        ) else {
            return;
        };
        let limit = proxy
            .annotations()
            .get(LOG_RELAY_LIMIT_BYTES)
            .and_then(|v| v.trim().parse::<u64>().ok());
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        for container in delegate_containers(delegate) {
            let key = Key {
                proxy: proxy_uid.to_string(),
                delegate: delegate_uid.to_string(),
                container: container.clone(),
            };
            let known = entries.get(&key).map(|e| e.state());
            if !started(delegate, &container)
                || known.as_ref().is_some_and(|s| *s != State::NeedsRelay)
            {
                continue;
            }
            if !running(proxy, &container) {
                if delegate_ended && known.is_none() {
                    // A delegate that ended before its proxy ran: a log to relay holds the
                    // result until the proxy runs; none does not.
                    let state = Arc::new(Mutex::new(State::Probing));
                    let task = tokio::spawn(probe(
                        target.clone(),
                        delegate.namespace().unwrap_or_default(),
                        delegate.name_any(),
                        container.clone(),
                        state.clone(),
                        self.wake(proxy),
                    ));
                    entries.insert(key, Entry { state, task });
                }
                continue;
            }
            let state = Arc::new(Mutex::new(State::Trying));
            let job = relay::Job {
                proxies: Api::namespaced(
                    self.source.clone(),
                    &proxy.namespace().unwrap_or_default(),
                ),
                proxy: proxy.name_any(),
                target: target.clone(),
                namespace: delegate.namespace().unwrap_or_default(),
                delegate: delegate.name_any(),
                delegate_uid: delegate_uid.to_string(),
                uid8: delegate_uid.chars().take(8).collect(),
                container,
                limit,
                relayed: self.metrics.log_relayed_bytes.clone(),
                state: state.clone(),
                wake: self.wake(proxy),
            };
            let task = tokio::spawn(self.task(job, proxy.clone(), state.clone(), delegate_ended));
            entries.insert(key, Entry { state, task });
        }
    }

    /// True when nothing of `delegate`'s logs is left to relay into `proxy`: no relay that
    /// works or may work is running, and no proxy container that is still starting waits for
    /// one (a delegate that ended before its proxy's container started).
    pub fn settled(&self, proxy: &Pod, delegate: &Pod) -> bool {
        if !self.wanted(proxy) {
            return true;
        }
        let (Some(proxy_uid), Some(delegate_uid)) = (
            proxy.metadata.uid.as_deref(),
            delegate.metadata.uid.as_deref(),
        ) else {
            return true;
        };
        let Ok(entries) = self.entries.lock() else {
            return true;
        };
        let done = |container: &str| {
            let key = Key {
                proxy: proxy_uid.to_string(),
                delegate: delegate_uid.to_string(),
                container: container.to_string(),
            };
            entries
                .get(&key)
                .is_some_and(|e| matches!(e.state(), State::Done(_)))
        };
        let starting = delegate_containers(delegate)
            .iter()
            .any(|c| started(delegate, c) && waiting(proxy, c) && !done(c));
        if starting {
            return false;
        }
        entries
            .iter()
            .filter(|(k, _)| k.proxy == proxy_uid && k.delegate == delegate_uid)
            .all(|(_, e)| !e.state().holds_result())
    }

    /// Stops and forgets the relays of a proxy (its result is written, or it is deleted).
    pub fn forget(&self, proxy_uid: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|k, _| k.proxy != proxy_uid);
        }
    }

    /// The relay of one container: live while a stream is free, else once the container ended.
    fn task(
        &self,
        job: relay::Job,
        proxy: Arc<Pod>,
        state: Arc<Mutex<State>>,
        delegate_ended: bool,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let live = self.live.clone();
        let ended = self.ended.clone();
        let max_streams = self.max_streams;
        let events = self.events.clone();
        let streams = self.metrics.log_streams.clone();
        async move {
            let permit = match live.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    if !delegate_ended {
                        let note = format!(
                            "{max_streams} delegate logs are relayed live already (--max-log-streams): the log of container {} comes once it ended",
                            job.container
                        );
                        publish_with(&events, &proxy, EventType::Normal, "LogRelayDeferred", note)
                            .await;
                        job.until_pod_ended().await;
                    }
                    match ended.acquire_owned().await {
                        Ok(permit) => permit,
                        Err(_) => return,
                    }
                }
            };
            streams.inc();
            let outcome = relay::run(&job).await;
            streams.dec();
            tracing::debug!(proxy = %job.proxy, container = %job.container, ?outcome, "log relay ended");
            drop(permit);
            let notice = match &outcome {
                Outcome::Complete => None,
                Outcome::LimitReached(bytes) => Some((
                    EventType::Normal,
                    "LogRelayLimitReached",
                    format!(
                        "{bytes} bytes of container {}'s log were relayed ({LOG_RELAY_LIMIT_BYTES}); the rest stays in the delegate's log",
                        job.container
                    ),
                )),
                Outcome::Unavailable(why) => Some((
                    EventType::Normal,
                    "LogNotRelayed",
                    format!(
                        "the log of container {} is not relayed: {why}",
                        job.container
                    ),
                )),
            };
            if let Some((type_, reason, note)) = notice {
                publish_with(&events, &proxy, type_, reason, note).await;
            }
            if let Ok(mut state) = state.lock() {
                *state = State::Done(outcome);
            }
            job.wake.send();
        }
    }
}

fn delegate_containers(delegate: &Pod) -> Vec<String> {
    delegate
        .spec
        .iter()
        .flat_map(|s| s.containers.iter().map(|c| c.name.clone()))
        .collect()
}

/// The container has run (its log exists).
fn started(delegate: &Pod, container: &str) -> bool {
    outcome::statuses(delegate)
        .find(|s| s.name == container)
        .is_some_and(|s| {
            s.restart_count > 0
                || s.state
                    .as_ref()
                    .is_some_and(|st| st.running.is_some() || st.terminated.is_some())
        })
}

/// The proxy container is being started on its node (an unscheduled proxy may wait for room
/// for long: the result does not wait for it).
fn waiting(proxy: &Pod, container: &str) -> bool {
    let scheduled = proxy.spec.as_ref().is_some_and(|s| s.node_name.is_some());
    scheduled
        && outcome::statuses(proxy)
            .find(|s| s.name == container)
            .is_none_or(|s| s.state.as_ref().is_none_or(|st| st.waiting.is_some()))
}

/// The proxy container runs (a relay can be exec'd into it).
fn running(proxy: &Pod, container: &str) -> bool {
    outcome::statuses(proxy)
        .find(|s| s.name == container)
        .and_then(|s| s.state.as_ref())
        .is_some_and(|s| s.running.is_some())
}
