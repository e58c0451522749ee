//! The reconciliation of one proxy pod, one module per step of its journey:
//!
//! 1. `place`: verify the saved manifest and choose the target;
//! 2. `create`: create the delegate there (and claim its Argo task result);
//! 3. `follow`: follow the delegate wherever it runs and mirror it onto the proxy;
//! 4. `stop`: a proxy that stopped on its own (killed, ended, given up by Argo) stops its
//!    delegate;
//! 5. `lost`: a delegate gone before it ended, or a target lost, fails the proxy; `restart`:
//!    unless the pod's `restartPolicy` restarts it, then a new delegate replaces it;
//! 6. `result`: the result, written once on the proxy;
//! 7. `clean_up`: a deleted proxy deletes its delegate, then lets go.
//!
//! `proxy` holds what every step writes on the proxy (annotations, Events); `endings` runs the
//! steps for proxies whose delegate ended in a lane of their own, beside the queue.
//!
//! Level-triggered: every step reads the current state and is safe to repeat; all state lives
//! in the API objects (the recorded target and delegate name annotations), but for the start of
//! a short grace (`stop::KILL_COMMAND_GRACE`), which a restart merely begins again.

mod clean_up;
mod create;
mod endings;
mod follow;
mod lost;
mod place;
mod proxy;
mod restart;
mod result;
mod stop;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::Notify;

use contract::{DELEGATE_NAME, PROXY_LABEL, RESULT, TARGET_CLUSTER, manifest::ManifestKey};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, ResourceExt as _,
    runtime::{
        Controller, WatchStreamExt as _,
        controller::Action,
        events::Reporter,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};

use crate::{
    metrics::Metrics,
    targets::{Signals, Target},
};

pub use lost::{CLUSTER_LOST, TARGET_UNAUTHORIZED};
pub use proxy::{Events, Proxy, publish_with};

/// Why a reconciliation failed (it is retried with a delay per kind).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("source cluster API: {0}")]
    Source(#[source] kube::Error),
    #[error("target cluster {cluster}: {source}")]
    Target {
        cluster: String,
        #[source]
        source: kube::Error,
    },
    #[error("proxy has no namespace")]
    NoNamespace,
}

impl Error {
    /// A bounded label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Source(_) => "source_api",
            Self::Target { .. } => "target_api",
            Self::NoNamespace => "no_namespace",
        }
    }

    fn on(target: &Target) -> impl FnOnce(kube::Error) -> Self + '_ {
        move |source| Self::Target {
            cluster: target.name.clone(),
            source,
        }
    }
}

/// How long the controller waits, for what.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Safety-net retry of proxies that fit nowhere (watch events place them first).
    pub pending_retry: Duration,
    /// After this long unreachable, a target's running proxies fail `ClusterLost` and deleted
    /// proxies are released without deleting their delegates there.
    pub cluster_lost_timeout: Duration,
    /// Proxies reconciled at the same time.
    pub concurrency: u16,
}

/// What delegate-sync does besides delegating, as configured.
#[derive(Clone, Copy, Debug)]
pub struct Features {
    /// None: no log relay; Some(n): at most n live streams.
    pub max_log_streams: Option<usize>,
    /// What is made in targets for the pods delegated there.
    pub copies: crate::copies::Settings,
}

/// What every reconciliation shares.
pub struct Context {
    pub cluster_name: String,
    pub source: Client,
    pub targets: Vec<Target>,
    pub key: ManifestKey,
    pub events: proxy::Events,
    pub timing: Timing,
    pub metrics: Arc<Metrics>,
    /// Delegates decided but not yet in the target's cache, per cluster: placement counts
    /// them. Decided and reserved under one lock, so concurrent reconciliations of a burst
    /// never count the same room twice.
    in_flight: Mutex<BTreeMap<String, Vec<place::InFlight>>>,
    /// When each proxy (by uid) was first seen labelled completed by Argo while it ran.
    argo_completed_seen: Mutex<HashMap<String, Instant>>,
    /// The delegates' logs, relayed into their proxies.
    pub relays: crate::logs::Relays,
    /// What is made in targets for the pods delegated there.
    pub copies: crate::copies::Settings,
    /// Proxies whose relay ended, for `run` to reconcile again (taken once).
    relay_ended: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<ObjectRef<Pod>>>>,
    /// Proxies being reconciled now, by the queue or by the endings lane.
    busy: endings::Busy,
    /// Proxies that fit no target when last decided: room freed anywhere wakes them (and
    /// only them: the other unplaced proxies are queued already).
    waiting_for_room: Mutex<HashSet<ObjectRef<Pod>>>,
}

impl Context {
    pub fn new(
        cluster_name: String,
        source: Client,
        targets: Vec<Target>,
        key: ManifestKey,
        timing: Timing,
        features: Features,
        metrics: Arc<Metrics>,
    ) -> Self {
        let Features {
            max_log_streams,
            copies,
        } = features;
        let reporter = Reporter {
            controller: "delegate-sync".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let events = proxy::Events::new(source.clone(), reporter);
        let (relays, relay_ended) = crate::logs::Relays::new(
            source.clone(),
            events.clone(),
            max_log_streams,
            metrics.clone(),
        );
        Self {
            events,
            cluster_name,
            source,
            targets,
            key,
            timing,
            metrics,
            in_flight: Mutex::default(),
            argo_completed_seen: Mutex::default(),
            relays,
            copies,
            relay_ended: Mutex::new(Some(relay_ended)),
            busy: endings::Busy::default(),
            waiting_for_room: Mutex::default(),
        }
    }

    fn target(&self, name: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.name == name)
    }
}

/// How often a running proxy is looked at again without any event: a watch that restarts may
/// miss a deletion, and a lost delegate must still fail its proxy.
const RESYNC: Duration = Duration::from_secs(20);

/// Runs the controller until `shutdown` completes.
pub async fn run(
    context: Arc<Context>,
    delegate_events: futures::stream::BoxStream<'static, ObjectRef<Pod>>,
    signals: Signals,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let proxies: Api<Pod> = Api::all(context.source.clone());
    let metrics = context.metrics.clone();
    let (store, writer) = reflector::store();
    // The orphan sweep reads this cache once its first list is in.
    let (proxies_seen, proxies_listed) = crate::listed::first_list();
    // Every change of a delegate, the end of its log relays, and a change of a proxy that
    // waits for its delegate's result (its container started, which a result held for the log
    // relay waits for) wakes the proxy in the queue and also in the endings lane, which takes
    // it only if the delegate ended. A full lane drops the wake-up: the queue has it.
    let (to_endings, endings_woken) = tokio::sync::mpsc::channel(ENDINGS_BACKLOG);
    let proxy_to_endings = to_endings.clone();
    let proxy_changes = reflector::reflector(
        writer,
        watcher(
            proxies,
            watcher::Config::default()
                .labels(&format!("{PROXY_LABEL}=true"))
                .page_size(100),
        )
        .modify(crate::cached::trim_proxy),
    )
    .inspect(move |event| proxies_seen.see(event))
    .default_backoff()
    .applied_objects()
    .inspect(move |proxy| {
        if let Ok(proxy) = proxy
            && awaits_result(proxy)
        {
            drop(proxy_to_endings.try_send(ObjectRef::from_obj(proxy)));
        }
    });
    // Bounded: every reconciliation in flight may hold a connection to an apiserver, and a
    // burst of a thousand proxies must not open a thousand TLS connections.
    let controller = Controller::for_stream(proxy_changes, store).with_config(
        kube::runtime::controller::Config::default().concurrency(context.timing.concurrency),
    );
    let unplaced = wake_waiting_for_room(controller.store(), signals.room_freed, context.clone());
    // A target that stops or starts answering concerns every proxy placed and not ended, and
    // every proxy being deleted.
    let placed = wake_when(controller.store(), signals.reachability_changed, |proxy| {
        let annotations = proxy.annotations();
        proxy.metadata.deletion_timestamp.is_some()
            || (annotations.contains_key(TARGET_CLUSTER) && !annotations.contains_key(RESULT))
    });
    let also_to_endings = |wakes: futures::stream::BoxStream<'static, ObjectRef<Pod>>| {
        let to_endings = to_endings.clone();
        wakes
            .inspect(move |proxy| drop(to_endings.try_send(proxy.clone())))
            .boxed()
    };
    let relay_ended = match context.relay_ended.lock().ok().and_then(|mut r| r.take()) {
        Some(mut ended) => futures::stream::poll_fn(move |cx| ended.poll_recv(cx)).boxed(),
        None => futures::stream::empty().boxed(),
    };
    let (delegate_events, relay_ended) = (
        also_to_endings(delegate_events),
        also_to_endings(relay_ended),
    );
    let ending = tokio::spawn(endings::run(
        context.clone(),
        controller.store(),
        endings_woken,
        usize::from(context.timing.concurrency),
    ));
    let sweeping = tokio::spawn(crate::sweep::run(
        context.clone(),
        controller.store(),
        proxies_listed,
        signals.target_back,
    ));
    let refreshing = tokio::spawn(refresh_copies(context.clone()));
    controller
        .reconcile_on(futures::stream::select_all([
            delegate_events,
            unplaced,
            placed,
            relay_ended,
        ]))
        .graceful_shutdown_on(shutdown)
        .run(reconcile_queued, error_policy, context)
        .for_each(|result| {
            let outcome = if result.is_ok() { "ok" } else { "error" };
            metrics
                .reconciliations
                .get_or_create(&crate::metrics::OutcomeLabel { outcome })
                .inc();
            async move {
                match result {
                    Ok((proxy, _)) => tracing::debug!(%proxy, "reconciled"),
                    // A proxy deleted while queued: nothing to do.
                    Err(kube::runtime::controller::Error::ObjectNotFound(proxy)) => {
                        tracing::debug!(%proxy, "gone before its reconciliation");
                    }
                    Err(e) => tracing::warn!("reconcile failed: {e}"),
                }
            }
        })
        .await;
    sweeping.abort();
    refreshing.abort();
    ending.abort();
}

/// Wake-ups the endings lane holds before it drops them.
const ENDINGS_BACKLOG: usize = 4096;

/// A proxy whose delegate was created and whose result is not written, not being deleted.
fn awaits_result(proxy: &Pod) -> bool {
    let annotations = proxy.annotations();
    proxy.metadata.deletion_timestamp.is_none()
        && annotations.contains_key(DELEGATE_NAME)
        && !annotations.contains_key(RESULT)
}

/// Keeps what was made in targets current ([`crate::copies::refresh`]), while leading.
async fn refresh_copies(context: Arc<Context>) {
    let settings = context.copies;
    if settings == crate::copies::Settings::default() {
        return;
    }
    loop {
        tokio::time::sleep(crate::copies::REFRESH_EVERY).await;
        let reachable = context
            .targets
            .iter()
            .filter(|t| !t.is_source && t.unreachable_for().is_none());
        for target in reachable {
            let busy = place::namespaces_in_flight(&context, &target.name);
            crate::copies::refresh(
                settings,
                &context.source,
                &context.cluster_name,
                target,
                &busy,
            )
            .await;
        }
    }
}

/// The proxies waiting for room ([`Context::waiting_for_room`]) that are still unplaced, each
/// time room may have been freed (bursts of notifications coalesce into one pass). A burst's
/// proxies placed at once are not woken by every delegate that ends meanwhile: each such wake
/// gave a proxy being reconciled another pass, a decision PATCH refused for a stale version.
fn wake_waiting_for_room(
    proxies: Store<Pod>,
    notify: Arc<Notify>,
    context: Arc<Context>,
) -> futures::stream::BoxStream<'static, ObjectRef<Pod>> {
    futures::stream::unfold((proxies, notify), move |(proxies, notify)| {
        let context = context.clone();
        async move {
            notify.notified().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let unplaced = |proxy: &ObjectRef<Pod>| {
                proxies.get(proxy).is_some_and(|p| {
                    let annotations = p.annotations();
                    !annotations.contains_key(TARGET_CLUSTER) && !annotations.contains_key(RESULT)
                })
            };
            let woken: Vec<ObjectRef<Pod>> = {
                let mut waiting = context
                    .waiting_for_room
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                waiting.retain(|proxy| unplaced(proxy));
                waiting.iter().cloned().collect()
            };
            Some((futures::stream::iter(woken), (proxies, notify)))
        }
    })
    .flatten()
    .boxed()
}

/// The proxies that `concerned` selects, each time `notify` fires (bursts of notifications
/// coalesce into one pass).
fn wake_when(
    proxies: Store<Pod>,
    notify: Arc<Notify>,
    concerned: fn(&Pod) -> bool,
) -> futures::stream::BoxStream<'static, ObjectRef<Pod>> {
    futures::stream::unfold((proxies, notify), move |(proxies, notify)| async move {
        notify.notified().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let woken: Vec<ObjectRef<Pod>> = proxies
            .state()
            .iter()
            .filter(|p| concerned(p))
            .map(|p| ObjectRef::from_obj(&**p))
            .collect();
        Some((futures::stream::iter(woken), (proxies, notify)))
    })
    .flatten()
    .boxed()
}

fn error_policy(_proxy: Arc<Pod>, error: &Error, context: Arc<Context>) -> Action {
    tracing::warn!(kind = error.metric_label(), "{error}");
    let cluster = match error {
        Error::Target { cluster, .. } => cluster.as_str(),
        _ => context.cluster_name.as_str(),
    };
    context
        .metrics
        .api_errors
        .get_or_create(&Metrics::cluster(cluster))
        .inc();
    Action::requeue(match error {
        Error::Target { .. } => Duration::from_secs(5),
        _ => Duration::from_secs(2),
    })
}

/// [`reconcile`] from the controller's queue: after the endings lane, if it is at this proxy.
async fn reconcile_queued(pod: Arc<Pod>, context: Arc<Context>) -> Result<Action, Error> {
    let reference = ObjectRef::from_obj(&*pod);
    let Some(_claim) = context.busy.claim(&reference) else {
        return Ok(Action::requeue(Duration::from_millis(200)));
    };
    reconcile(pod, context.clone()).await
}

/// Reconciles one proxy, through the steps of its journey.
pub async fn reconcile(pod: Arc<Pod>, context: Arc<Context>) -> Result<Action, Error> {
    let proxy = Proxy::new(pod, &context)?;
    if proxy.pod.metadata.deletion_timestamp.is_some() {
        context.relays.forget(&proxy.reference.uid);
        return clean_up::run(&proxy, &context).await;
    }
    if proxy.pod.annotations().contains_key(RESULT) {
        context.relays.forget(&proxy.reference.uid);
        return Ok(Action::await_change());
    }
    // An existing delegate is followed wherever it runs, whatever the proxy's annotations say
    // now: the pod's owner may edit them, and must not move or duplicate what runs elsewhere.
    if let Some((target, delegate)) = follow::find(&proxy, &context) {
        return follow::run_found(&proxy, &context, target, &delegate).await;
    }
    let (manifest, spec) = match place::saved_manifest(&proxy, &context) {
        place::Manifest::Valid { manifest, spec } => (manifest, spec),
        place::Manifest::Missing => return Ok(Action::await_change()),
        place::Manifest::Invalid(why) => return result::reject(&proxy, &context, &why).await,
    };
    match place::run(&proxy, &manifest, &spec, &context).await? {
        place::Placed::In(target) => create::run(&proxy, &manifest, target, &context).await,
        place::Placed::NotYet(action) => Ok(action),
    }
}
