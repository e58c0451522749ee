//! Target clusters: a client each, caches (reflectors) of their nodes and of the delegates this
//! source cluster made there, and what their pods use per node ([`OccupancyCache`]). A target that cannot be reached is logged and
//! retried by its watchers; it never stops the others.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::Notify;

use anyhow::Context as _;
use futures::{Stream, StreamExt as _, TryStreamExt as _, stream::BoxStream};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api, Client, ResourceExt as _,
    api::{DeleteParams, Preconditions},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt as _,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};

use crate::{
    args::TargetSpec,
    capacity::OccupancyCache,
    delegate::{DELEGATE_LABEL, PROXY_CLUSTER, PROXY_NAME, PROXY_NAMESPACE},
    listed::{Listed, first_list},
    retry::{Comebacks, backoff_until_back},
};

/// One target cluster.
#[derive(Clone)]
pub struct Target {
    pub name: String,
    pub client: Client,
    /// The source cluster itself (`NAME=self`): its pods' references are there already.
    pub is_source: bool,
    pub nodes: Store<Node>,
    /// What the target's pods use of each node (not the pods: see [`crate::capacity`]).
    pub pods: OccupancyCache,
    /// Trimmed to what delegate-sync reads ([`crate::cached`]).
    pub delegates: Store<Pod>,
    nodes_listed: Listed,
    delegates_listed: Listed,
    reachability: Arc<Reachability>,
}

/// Calls to a target give up after this long: a hung apiserver must not hold a reconciliation
/// (the client's own read timeout is minutes long, for watches).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// `call`, or an error once [`CALL_TIMEOUT`] passed without an answer.
pub async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| {
            Err(kube::Error::Service(
                format!("no answer in {}s", CALL_TIMEOUT.as_secs()).into(),
            ))
        })
}

/// How targets tell the controller that something changed for proxies they do not name.
#[derive(Clone, Default)]
pub struct Signals {
    /// A pod ended or went, or a node changed: room that pending proxies may now fit in.
    pub room_freed: Arc<Notify>,
    /// A target stopped or started answering.
    pub reachability_changed: Arc<Notify>,
    /// A target answers again (the orphan sweep's cue).
    pub target_back: Arc<Notify>,
}

/// Since when a target has not answered (None while it answers), whether it refuses
/// delegate-sync's credentials, and how many times it came back (its watches retry at once
/// when it does).
#[derive(Default)]
struct Reachability {
    unreachable_since: std::sync::Mutex<Option<Instant>>,
    refused: std::sync::Mutex<Option<String>>,
    comebacks: tokio::sync::watch::Sender<u64>,
}

/// Why a probe's failure is the credentials' fault: the apiserver refused them (401), or
/// there are none to send.
fn refusal(error: &kube::Error) -> Option<String> {
    match error {
        kube::Error::Api(status) if status.code == 401 => Some(format!(
            "the apiserver refuses delegate-sync's credentials ({})",
            status.message
        )),
        kube::Error::Service(e) => e
            .downcast_ref::<crate::credentials::NoCredentials>()
            .map(ToString::to_string),
        _ => None,
    }
}

const PROBE_EVERY: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Asks the target's apiserver for its version every few seconds; notifies `changed` when the
/// target stops or starts answering.
fn spawn_probe(target: String, client: Client, reachability: Arc<Reachability>, signals: Signals) {
    tokio::spawn(async move {
        loop {
            let answer = tokio::time::timeout(PROBE_TIMEOUT, client.apiserver_version()).await;
            let now_reachable = matches!(answer, Ok(Ok(_)));
            let refused = match &answer {
                Ok(Err(e)) => refusal(e),
                _ => None,
            };
            *reachability
                .refused
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = refused;
            let transition = {
                let mut since = reachability
                    .unreachable_since
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                match (since.is_some(), now_reachable) {
                    (false, false) => {
                        *since = Some(Instant::now());
                        true
                    }
                    (true, true) => {
                        *since = None;
                        true
                    }
                    _ => false,
                }
            };
            if transition {
                if now_reachable {
                    tracing::info!(%target, "target answers again");
                    reachability.comebacks.send_modify(|n| *n += 1);
                    signals.target_back.notify_one();
                } else {
                    let why = match answer {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer in {PROBE_TIMEOUT:?}"),
                    };
                    tracing::warn!(%target, "target unreachable: {why}");
                }
                signals.reachability_changed.notify_one();
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
    });
}

/// A client for a kubeconfig (and context), or the default one.
pub async fn client(kubeconfig: Option<&Path>, context: Option<&str>) -> anyhow::Result<Client> {
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig (give --kubeconfig)")?,
    };
    Ok(Client::try_from(config)?)
}

impl Target {
    /// Starts a target's caches; returns the stream of proxies whose delegate changed there
    /// (to wake their reconciliation). A target whose kubeconfig does not load yet is
    /// unreachable until it does.
    pub async fn start(
        spec: &TargetSpec,
        source: &Client,
        source_name: &str,
        signals: &Signals,
        metrics: &Arc<crate::metrics::Metrics>,
        notice: Option<crate::credentials::Notice>,
    ) -> (Self, BoxStream<'static, ObjectRef<Pod>>) {
        let client = match &spec.kubeconfig {
            None => source.clone(),
            Some(path) => {
                crate::credentials::client(
                    &spec.name,
                    path,
                    spec.context.as_deref(),
                    metrics.clone(),
                    notice,
                )
                .await
            }
        };
        let (nodes, nodes_writer) = reflector::store::<Node>();
        let (nodes_seen, nodes_listed) = first_list();
        let pods = OccupancyCache::default();
        let (delegates, delegates_writer) = reflector::store::<Pod>();
        let (delegates_seen, delegates_listed) = first_list();
        let name = spec.name.clone();
        let reachability = Arc::new(Reachability::default());
        let comebacks = || reachability.comebacks.subscribe();
        spawn_reflector(
            &name,
            "nodes",
            reflector::reflector(
                nodes_writer,
                watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
                    .modify(trim_node),
            )
            .inspect(move |event| nodes_seen.see(event)),
            comebacks(),
            signals.room_freed.clone(),
            |event| matches!(event, watcher::Event::Apply(_) | watcher::Event::InitDone),
        );
        let occupancy = pods.clone();
        spawn_reflector(
            &name,
            "pods",
            // Small pages: a list of every pod is the peak of delegate-sync's memory.
            watcher(
                Api::<Pod>::all(client.clone()),
                watcher::Config::default().page_size(100),
            )
            .map_ok(move |event| {
                occupancy.handle(&event);
                event
            }),
            comebacks(),
            signals.room_freed.clone(),
            frees_room,
        );
        let selector = format!("{DELEGATE_LABEL}=true,{PROXY_CLUSTER}={source_name}");
        let mut changes = backoff_until_back(
            reflector::reflector(
                delegates_writer,
                watcher(
                    Api::<Pod>::all(client.clone()),
                    watcher::Config::default().labels(&selector).page_size(100),
                )
                .modify(crate::cached::trim_delegate),
            )
            .inspect(move |event| delegates_seen.see(event)),
            comebacks(),
        )
        .touched_objects()
        .filter_map(move |event| {
            let target = name.clone();
            async move {
                match event {
                    Ok(delegate) => proxy_of(&delegate),
                    Err(e) => {
                        tracing::warn!(%target, "watching delegates failed (retrying): {e}");
                        None
                    }
                }
            }
        })
        .boxed();
        // Driven by a task of its own, so that the delegate cache loads before the controller
        // starts polling the wake-ups (placement waits for every cache).
        let (wake, woken) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            while let Some(proxy) = changes.next().await {
                if wake.send(proxy).await.is_err() {
                    break;
                }
            }
        });
        let delegate_events = futures::stream::unfold(woken, |mut woken| async move {
            woken.recv().await.map(|proxy| (proxy, woken))
        })
        .boxed();
        spawn_probe(
            spec.name.clone(),
            client.clone(),
            reachability.clone(),
            signals.clone(),
        );
        (
            Self {
                name: spec.name.clone(),
                client,
                is_source: spec.kubeconfig.is_none(),
                nodes,
                pods,
                delegates,
                nodes_listed,
                delegates_listed,
                reachability,
            },
            delegate_events,
        )
    }

    /// True once every cache holds a full listing (a store is ready after its first list).
    pub fn synced(&self) -> bool {
        self.nodes_listed.now() && self.pods.ready() && self.delegates_listed.now()
    }

    /// How long the target has not answered; None while it answers.
    pub fn unreachable_for(&self) -> Option<Duration> {
        self.reachability
            .unreachable_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|since| since.elapsed())
    }

    /// Why the target refuses delegate-sync's credentials (or there are none), when it does.
    pub fn refused(&self) -> Option<String> {
        self.reachability
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The delegate named `name` in `namespace`, from the cache.
    pub fn delegate(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.delegates.get(&ObjectRef::new(name).within(namespace))
    }

    /// Deletes `delegate`, that very pod (uid precondition), in the background with its own
    /// grace period, as a kubelet stops a pod. Gone already, or replaced by another pod of the
    /// same name, is fine: it is not there any more.
    pub async fn delete_delegate(&self, delegate: &Pod) -> Result<(), kube::Error> {
        let api: Api<Pod> = Api::namespaced(
            self.client.clone(),
            &delegate.namespace().unwrap_or_default(),
        );
        let only_this = DeleteParams {
            preconditions: Some(Preconditions {
                uid: delegate.uid(),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match bounded(api.delete(&delegate.name_any(), &only_this)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The proxy a delegate points back to.
pub fn proxy_of(delegate: &Pod) -> Option<ObjectRef<Pod>> {
    let annotations = delegate.metadata.annotations.as_ref()?;
    Some(ObjectRef::new(annotations.get(PROXY_NAME)?).within(annotations.get(PROXY_NAMESPACE)?))
}

/// Keeps of a node what placement reads: a thousand-node cluster should not cost its images
/// lists and field-manager records.
fn trim_node(node: &mut Node) {
    node.metadata.managed_fields = None;
    node.metadata.annotations = None;
    if let Some(status) = node.status.as_mut() {
        status.images = None;
        status.volumes_attached = None;
        status.volumes_in_use = None;
    }
}

/// A pod that ended or went away, or a cache (re)loaded: room may have appeared.
fn frees_room(event: &watcher::Event<Pod>) -> bool {
    match event {
        watcher::Event::Delete(_) | watcher::Event::InitDone => true,
        watcher::Event::Apply(pod) => pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|phase| phase == "Succeeded" || phase == "Failed"),
        watcher::Event::Init | watcher::Event::InitApply(_) => false,
    }
}

fn spawn_reflector<S, K>(
    target: &str,
    what: &'static str,
    stream: S,
    comebacks: Comebacks,
    room_freed: Arc<Notify>,
    frees_room: fn(&watcher::Event<K>) -> bool,
) where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    K: Send + 'static,
{
    let target = target.to_string();
    tokio::spawn(async move {
        let mut stream = Box::pin(backoff_until_back(stream, comebacks));
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) if frees_room(&event) => room_freed.notify_one(),
                Ok(_) => {}
                Err(e) => tracing::warn!(%target, what, "watch failed (retrying): {e}"),
            }
        }
    });
}
