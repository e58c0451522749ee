//! The reconciliation of one proxy pod: verify its saved manifest, place it, create its
//! delegate, mirror the delegate back, record the result, and clean up when the proxy goes.
//! Level-triggered: every step reads the current state and is safe to repeat; all state lives
//! in the API objects (the recorded target and delegate name annotations), but for the start of
//! a short grace ([`KILL_COMMAND_GRACE`]), which a restart merely begins again.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::Notify;

use contract::{
    CLEANUP_FINALIZER, CLUSTER_NAME, DELEGATE_NAME, PROXY_LABEL, RESULT, SOURCEPOD_MANIFEST,
    TARGET_CLUSTER, argo::POD_COMPLETED_LABEL, is_own_key, manifest::ManifestKey,
    result::DelegateResult,
};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use kube::{
    Api, Client, Resource as _, ResourceExt as _,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::{
        Controller, WatchStreamExt as _,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde_json::{Value, json};

use crate::{
    delegate::{self, ProxyRef},
    metrics::Metrics,
    outcome,
    placement::{self, ClusterView, Placement},
    targets::{Signals, Target, bounded},
    task_results::{self, Step},
};

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
}

/// A delegate placed but not yet seen in its target's cache.
#[derive(Clone, Debug)]
struct InFlight {
    namespace: String,
    name: String,
    spec: PodSpec,
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

/// What every reconciliation shares.
pub struct Context {
    pub cluster_name: String,
    pub source: Client,
    pub targets: Vec<Target>,
    pub key: ManifestKey,
    pub recorder: Recorder,
    pub timing: Timing,
    pub metrics: Arc<Metrics>,
    /// Delegates decided but not yet in the target's cache, per cluster: placement counts
    /// them. Decided and reserved under one lock, so concurrent reconciliations of a burst
    /// never count the same room twice.
    in_flight: Mutex<BTreeMap<String, Vec<InFlight>>>,
    /// When each proxy (by uid) was first seen labelled completed by Argo while it ran.
    argo_completed_seen: Mutex<HashMap<String, Instant>>,
}

impl Context {
    pub fn new(
        cluster_name: String,
        source: Client,
        targets: Vec<Target>,
        key: ManifestKey,
        timing: Timing,
        metrics: Arc<Metrics>,
    ) -> Self {
        let reporter = Reporter {
            controller: "delegate-sync".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(source.clone(), reporter),
            cluster_name,
            source,
            targets,
            key,
            timing,
            metrics,
            in_flight: Mutex::default(),
            argo_completed_seen: Mutex::default(),
        }
    }

    fn target(&self, name: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.name == name)
    }
}

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
    let proxy_changes = reflector::reflector(
        writer,
        watcher(
            proxies,
            watcher::Config::default()
                .labels(&format!("{PROXY_LABEL}=true"))
                .page_size(100),
        )
        .modify(|proxy: &mut Pod| proxy.metadata.managed_fields = None),
    )
    .default_backoff()
    .applied_objects();
    // Bounded: every reconciliation in flight may hold a connection to an apiserver, and a
    // burst of a thousand proxies must not open a thousand TLS connections.
    let controller = Controller::for_stream(proxy_changes, store).with_config(
        kube::runtime::controller::Config::default().concurrency(context.timing.concurrency),
    );
    let unplaced = wake_when(controller.store(), signals.room_freed, |proxy| {
        let annotations = proxy.annotations();
        !annotations.contains_key(TARGET_CLUSTER) && !annotations.contains_key(RESULT)
    });
    // A target that stops or starts answering concerns every proxy placed and not ended, and
    // every proxy being deleted.
    let placed = wake_when(controller.store(), signals.reachability_changed, |proxy| {
        let annotations = proxy.annotations();
        proxy.metadata.deletion_timestamp.is_some()
            || (annotations.contains_key(TARGET_CLUSTER) && !annotations.contains_key(RESULT))
    });
    let sweeping = tokio::spawn(crate::sweep::run(context.clone(), signals.target_back));
    controller
        .reconcile_on(futures::stream::select_all([
            delegate_events,
            unplaced,
            placed,
        ]))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
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

/// Reconciles one proxy.
pub async fn reconcile(proxy: Arc<Pod>, context: Arc<Context>) -> Result<Action, Error> {
    let namespace = proxy.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<Pod> = Api::namespaced(context.source.clone(), &namespace);
    let annotations = proxy.annotations().clone();
    if proxy.metadata.deletion_timestamp.is_some() {
        return clean_up(&proxy, &api, &annotations, &context).await;
    }
    if annotations.contains_key(RESULT) {
        return Ok(Action::await_change());
    }
    let proxy_ref = ProxyRef {
        cluster: context.cluster_name.clone(),
        namespace: namespace.clone(),
        name: proxy.name_any(),
        uid: proxy.uid().unwrap_or_default(),
    };
    let delegate_name = delegate::delegate_name(&proxy_ref);
    // An existing delegate is followed wherever it runs, whatever the proxy's annotations say
    // now: the pod's owner may edit them, and must not move or duplicate what runs elsewhere.
    if let Some((target, delegate)) =
        find_delegate(&context, &proxy_ref, &delegate_name, &annotations)
    {
        let step = verified_step(&proxy, &context).await;
        return follow(&proxy, &api, &context, target, &delegate, step).await;
    }
    let Some(sealed) = annotations.get(SOURCEPOD_MANIFEST) else {
        return Ok(Action::await_change());
    };
    let saved = match open_manifest(&context, &namespace, sealed) {
        Ok(saved) => saved,
        Err(why) => return reject(&proxy, &api, &context, &why).await,
    };
    let spec: PodSpec = match serde_json::from_value(saved["spec"].clone()) {
        Ok(spec) => spec,
        Err(e) => {
            return reject(
                &proxy,
                &api,
                &context,
                &format!("the saved manifest has no valid pod spec: {e}"),
            )
            .await;
        }
    };
    let target_name = match annotations.get(TARGET_CLUSTER) {
        Some(name) => name.clone(),
        None => {
            let pinned = saved
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(CLUSTER_NAME))
                .and_then(Value::as_str);
            let reservation = InFlight {
                namespace: namespace.clone(),
                name: delegate_name.clone(),
                spec: spec.clone(),
            };
            match choose(reservation, pinned, &context) {
                Placement::Cluster(name) => {
                    // Only on the proxy as we saw it: another replica that decided meanwhile wins,
                    // and this one follows its decision on the next pass.
                    let decision = json!({ TARGET_CLUSTER: name });
                    match patch_annotations_at(&api, &proxy, decision).await {
                        Ok(true) => {}
                        Ok(false) => {
                            forget_in_flight(&context, &name, &delegate_name);
                            return Ok(Action::requeue(Duration::from_millis(100)));
                        }
                        Err(e) => {
                            forget_in_flight(&context, &name, &delegate_name);
                            return Err(e);
                        }
                    }
                    context
                        .metrics
                        .placements
                        .get_or_create(&Metrics::cluster(&name))
                        .inc();
                    publish(
                        &context,
                        &proxy,
                        EventType::Normal,
                        "Scheduled",
                        format!("Scheduled to {name}"),
                    )
                    .await;
                    name
                }
                Placement::UnknownCluster { wanted, known } => {
                    let note = format!(
                        "cluster {wanted:?} (annotation {CLUSTER_NAME}) is not a target; known: {}",
                        known.join(", ")
                    );
                    publish(&context, &proxy, EventType::Warning, "UnknownCluster", note).await;
                    return Ok(Action::requeue(Duration::from_secs(30)));
                }
                Placement::NoFit(reasons) => {
                    let note = reasons
                        .iter()
                        .map(|(c, r)| format!("{c}: {r}"))
                        .collect::<Vec<_>>()
                        .join("; ");
                    publish(
                        &context,
                        &proxy,
                        EventType::Warning,
                        "NoCapacity",
                        format!("no cluster fits the pod now ({note})"),
                    )
                    .await;
                    return Ok(Action::requeue(context.timing.pending_retry));
                }
            }
        }
    };
    let Some(target) = context.target(&target_name) else {
        let note = format!("recorded target {target_name} is not configured; waiting for it");
        publish(&context, &proxy, EventType::Warning, "UnknownCluster", note).await;
        return Ok(Action::requeue(Duration::from_secs(30)));
    };
    if let Some(down) = target.unreachable_for() {
        return cluster_unreachable(&proxy, &api, target, down, &context).await;
    }
    let step = task_results::step_of(&saved);
    match target.delegate(&namespace, &delegate_name) {
        // Made since find_delegate looked (another replica, or a cache that just caught up).
        Some(delegate) => follow(&proxy, &api, &context, target, &delegate, step).await,
        // Created once: a cache still loading cannot tell whether it is gone, and a delegate
        // that is must never be created again.
        None if annotations.contains_key(DELEGATE_NAME) && !target.synced() => {
            Ok(Action::requeue(Duration::from_secs(1)))
        }
        None if annotations.contains_key(DELEGATE_NAME) => {
            // Created once, gone now, no result: lost before it ended. Check the API, not the cache.
            let delegates: Api<Pod> = Api::namespaced(target.client.clone(), &namespace);
            match bounded(delegates.get_opt(&delegate_name)).await {
                Ok(Some(_)) => Ok(Action::requeue(Duration::from_secs(1))),
                Ok(None) => {
                    delegate_gone(
                        &proxy,
                        &api,
                        step.as_ref(),
                        &delegate_name,
                        target,
                        &context,
                    )
                    .await
                }
                Err(source) => Err(Error::Target {
                    cluster: target.name.clone(),
                    source,
                }),
            }
        }
        None => {
            create_delegate(
                &proxy,
                &api,
                &saved,
                &proxy_ref,
                step.as_ref(),
                target,
                &context,
            )
            .await
        }
    }
}

/// The pods of a target as placement must count them: its pod cache, corrected by its delegate
/// cache, which may have seen a delegate bound before the pod cache did (two watches, no common
/// order); and the delegates not bound yet. Lookups by key: a burst must not cost the square
/// of the cluster's pods.
fn occupancy(target: &Target) -> (Vec<Arc<Pod>>, Vec<Arc<Pod>>) {
    let bound = |p: &Pod| p.spec.as_ref().is_some_and(|s| s.node_name.is_some());
    let mut pods = target.pods.state();
    let mut unbound = Vec::new();
    for delegate in target.delegates.state() {
        let cached_bound = target
            .pods
            .get(&ObjectRef::from_obj(&*delegate))
            .is_some_and(|p| bound(&p));
        if cached_bound {
            continue;
        }
        if bound(&delegate) {
            pods.push(delegate);
        } else {
            unbound.push(delegate);
        }
    }
    (pods, unbound)
}

/// What placement sees of one target.
struct Snapshot {
    name: String,
    nodes: Vec<Arc<k8s_openapi::api::core::v1::Node>>,
    pods: Vec<Arc<Pod>>,
    /// Delegates created and not bound yet.
    unbound: Vec<Arc<Pod>>,
    /// Delegates decided and not created yet.
    reserved: Vec<PodSpec>,
}

/// Places the delegate and, when a cluster is chosen, reserves its room at once.
/// This proxy's delegate in any target's cache (its recorded target first): the deterministic
/// name, and the proxy's uid on it (a delegate of an earlier pod of the same name is not it).
fn find_delegate<'a>(
    context: &'a Context,
    proxy: &ProxyRef,
    delegate_name: &str,
    annotations: &BTreeMap<String, String>,
) -> Option<(&'a Target, Arc<Pod>)> {
    let recorded = annotations.get(TARGET_CLUSTER);
    let (first, others): (Vec<&Target>, Vec<&Target>) = context
        .targets
        .iter()
        .partition(|t| Some(&t.name) == recorded);
    first.into_iter().chain(others).find_map(|target| {
        let delegate = target.delegate(&proxy.namespace, delegate_name)?;
        let ours = delegate.labels().get(delegate::PROXY_UID) == Some(&proxy.uid);
        ours.then_some((target, delegate))
    })
}

/// Mirrors (or stops) an existing delegate; first puts back the placement annotations if they
/// no longer say where it runs.
async fn follow(
    proxy: &Pod,
    api: &Api<Pod>,
    context: &Context,
    target: &Target,
    delegate: &Pod,
    step: Option<Step>,
) -> Result<Action, Error> {
    forget_in_flight(context, &target.name, &delegate.name_any());
    restore_placement(proxy, api, context, target, delegate).await?;
    if let Some(down) = target.unreachable_for() {
        return cluster_unreachable(proxy, api, target, down, context).await;
    }
    match stopped(proxy) {
        Some(why) => {
            if let Some(wait) = kill_command_grace(proxy, context) {
                return Ok(Action::requeue(wait));
            }
            stop_delegate(proxy, api, delegate, step.as_ref(), target, context, &why).await
        }
        None => mirror(proxy, api, delegate, step.as_ref(), target, context).await,
    }
}

/// How long Argo's kill command may still take to end a proxy that Argo labelled completed
/// while it runs. Argo labels the pod as it execs `proxy-waiter kill` into its containers
/// (`argo stop`, `terminate`, deadlines); on a real kubelet the exec ends the proxy's
/// containers with the kill command's exit code and message, 1 to 4 s after the label as
/// measured with Argo 3.7 (its execs take seconds and go one container after another). The
/// label alone stops the delegate only after this grace: when the exec cannot reach the
/// containers, or Argo gave up on the pod.
const KILL_COMMAND_GRACE: Duration = Duration::from_secs(10);

/// The time left of [`KILL_COMMAND_GRACE`] for a proxy stopped by Argo's label alone; None
/// when it is over or the proxy stopped otherwise.
fn kill_command_grace(proxy: &Pod, context: &Context) -> Option<Duration> {
    grace_left(proxy, &context.argo_completed_seen)
}

fn grace_left(proxy: &Pod, first_seen: &Mutex<HashMap<String, Instant>>) -> Option<Duration> {
    let uid = proxy.uid()?;
    let mut seen = first_seen.lock().unwrap_or_else(|e| e.into_inner());
    if ended_or_killed(proxy).is_some() || argo_gave_up(proxy).is_none() {
        seen.remove(&uid);
        return None;
    }
    let first = *seen.entry(uid.clone()).or_insert_with(Instant::now);
    let left = KILL_COMMAND_GRACE.saturating_sub(first.elapsed());
    if left.is_zero() {
        seen.remove(&uid);
        return None;
    }
    Some(left)
}

/// Writes the target and delegate name back when the proxy's annotations disagree with where
/// the delegate runs. A mismatch seen in the cache is checked on the live proxy first (our own
/// last write may not be in the cache yet); a missing delegate name alone is our own unfinished
/// work (a restart between creating the delegate and recording its name), not an edit.
async fn restore_placement(
    proxy: &Pod,
    api: &Api<Pod>,
    context: &Context,
    target: &Target,
    delegate: &Pod,
) -> Result<(), Error> {
    let delegate_name = delegate.name_any();
    let agrees = |p: &Pod| {
        let a = p.annotations();
        let target_ok = a.get(TARGET_CLUSTER) == Some(&target.name);
        let name_ok = a.get(DELEGATE_NAME).is_none_or(|n| *n == delegate_name);
        (
            target_ok && name_ok,
            target_ok && a.contains_key(DELEGATE_NAME),
        )
    };
    if agrees(proxy) == (true, true) {
        return Ok(());
    }
    let live = api.get(&proxy.name_any()).await.map_err(Error::Source)?;
    let (consistent, complete) = agrees(&live);
    if consistent && complete {
        return Ok(());
    }
    let placement = json!({ TARGET_CLUSTER: target.name, DELEGATE_NAME: delegate_name });
    if !patch_annotations_at(api, &live, placement).await? {
        return Ok(()); // Changed meanwhile: the next pass looks again.
    }
    if !consistent {
        let a = live.annotations();
        let note = format!(
            "{TARGET_CLUSTER} said {:?} and {DELEGATE_NAME} {:?}, but the delegate {delegate_name} runs in {}: put back (these annotations are delegate-sync's; editing them changes nothing)",
            a.get(TARGET_CLUSTER),
            a.get(DELEGATE_NAME),
            target.name
        );
        publish(context, proxy, EventType::Warning, "PlacementEdited", note).await;
    }
    Ok(())
}

/// The Argo step of the proxy from its saved manifest, if that still verifies. One that no
/// longer does (edited after admission, or a replica with another key) changes nothing for a
/// delegate that already runs: it is still followed, without Argo task results.
async fn verified_step(proxy: &Pod, context: &Context) -> Option<Step> {
    let namespace = proxy.namespace().unwrap_or_default();
    let opened = match proxy.annotations().get(SOURCEPOD_MANIFEST) {
        Some(sealed) => open_manifest(context, &namespace, sealed),
        None => Err("it is missing".into()),
    };
    match opened {
        Ok(saved) => task_results::step_of(&saved),
        Err(why) => {
            let note = format!(
                "the saved manifest does not verify ({why}): edited after admission, or this replica has another --manifest-key-file; the running delegate is left as it is"
            );
            publish(
                context,
                proxy,
                EventType::Warning,
                "ManifestKeyMismatch",
                note,
            )
            .await;
            None
        }
    }
}

/// The saved manifest, verified with the key and bound to `namespace`, as JSON.
fn open_manifest(context: &Context, namespace: &str, sealed: &str) -> Result<Value, String> {
    let text = context
        .key
        .open(namespace, sealed)
        .map_err(|e| e.to_string())?;
    serde_json::from_str(text).map_err(|e| format!("the saved manifest is not valid JSON: {e}"))
}

fn why_unusable(target: &Target) -> String {
    match target.unreachable_for() {
        Some(down) => format!("not answering for {}s", down.as_secs()),
        None => "caches still loading".into(),
    }
}

fn choose(delegate: InFlight, pinned: Option<&str>, context: &Context) -> Placement {
    let mut in_flight = context.in_flight.lock().unwrap_or_else(|e| e.into_inner());
    // A target whose caches are still loading would look emptier than it is, and one that does
    // not answer would take a delegate it cannot run; a pinned target is waited for elsewhere.
    let (usable, unusable): (Vec<&Target>, Vec<&Target>) = context.targets.iter().partition(|t| {
        (t.synced() && t.unreachable_for().is_none()) || pinned == Some(t.name.as_str())
    });
    let snapshots: Vec<Snapshot> = usable
        .into_iter()
        .map(|t| {
            let nodes = t.nodes.state();
            let (pods, unbound) = occupancy(t);
            // Reservations whose delegate a cache already shows are counted there.
            let reserved = in_flight.entry(t.name.clone()).or_default();
            reserved.retain(|r| {
                let key = ObjectRef::new(&r.name).within(&r.namespace);
                t.delegates.get(&key).is_none() && t.pods.get(&key).is_none()
            });
            Snapshot {
                name: t.name.clone(),
                nodes,
                pods,
                unbound,
                reserved: reserved.iter().map(|r| r.spec.clone()).collect(),
            }
        })
        .collect();
    let in_flight_specs: Vec<Vec<&PodSpec>> = snapshots
        .iter()
        .map(|s| {
            s.unbound
                .iter()
                .filter_map(|p| p.spec.as_ref())
                .chain(s.reserved.iter())
                .collect()
        })
        .collect();
    let views: Vec<ClusterView<'_>> = snapshots
        .iter()
        .zip(&in_flight_specs)
        .map(|(s, in_flight)| ClusterView {
            name: &s.name,
            nodes: &s.nodes,
            pods: &s.pods,
            in_flight,
        })
        .collect();
    let mut placement = placement::place(&delegate.spec, pinned, &views);
    if let Placement::NoFit(reasons) = &mut placement {
        reasons.extend(unusable.iter().map(|t| (t.name.clone(), why_unusable(t))));
    }
    if let Placement::Cluster(name) = &placement {
        let reserved = in_flight.entry(name.clone()).or_default();
        if !reserved
            .iter()
            .any(|r| r.namespace == delegate.namespace && r.name == delegate.name)
        {
            reserved.push(delegate);
        }
    }
    placement
}

#[allow(clippy::too_many_arguments)]
async fn create_delegate(
    proxy: &Pod,
    api: &Api<Pod>,
    saved: &Value,
    proxy_ref: &ProxyRef,
    step: Option<&Step>,
    target: &Target,
    context: &Context,
) -> Result<Action, Error> {
    let delegate_name = &delegate::delegate_name(proxy_ref);
    let delegate = match delegate::build(saved, proxy_ref) {
        Ok(delegate) => delegate,
        Err(e) => return reject(proxy, api, context, &e.to_string()).await,
    };
    let delegate: Pod = match serde_json::from_value(delegate) {
        Ok(pod) => pod,
        Err(e) => {
            return reject(
                proxy,
                api,
                context,
                &format!("the delegate is not a valid pod: {e}"),
            )
            .await;
        }
    };
    let delegates: Api<Pod> = Api::namespaced(target.client.clone(), &proxy_ref.namespace);
    match bounded(delegates.create(&PostParams::default(), &delegate)).await {
        // At once, before the delegate's executor can write a result its cluster would collect.
        Ok(created) => {
            if let Some(step) = step {
                claim_task_result(proxy, &created, step, target, context).await;
            }
        }
        Err(e) if api_code(&e) == Some(409) => {}
        Err(kube::Error::Api(status)) => {
            let note = format!(
                "cannot create delegate {delegate_name} in {}: {}",
                target.name, status.message
            );
            publish(
                context,
                proxy,
                EventType::Warning,
                "DelegateNotCreated",
                note,
            )
            .await;
            return Ok(Action::requeue(Duration::from_secs(10)));
        }
        Err(source) => {
            return Err(Error::Target {
                cluster: target.name.clone(),
                source,
            });
        }
    }
    patch_annotations(api, proxy, json!({ DELEGATE_NAME: delegate_name })).await?;
    if let Some(created) = &proxy.metadata.creation_timestamp {
        context
            .metrics
            .delegate_created_seconds
            .observe(seconds_since(&created.0));
    }
    publish(
        context,
        proxy,
        EventType::Normal,
        "DelegateCreated",
        format!("created delegate {delegate_name} in {}", target.name),
    )
    .await;
    Ok(Action::requeue(RESYNC))
}

fn forget_in_flight(context: &Context, cluster: &str, delegate_name: &str) {
    if let Some(list) = context
        .in_flight
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_mut(cluster)
    {
        list.retain(|r| r.name != delegate_name);
    }
}

/// Mirrors the delegate's annotations and Argo task result, and its result once it ended.
async fn mirror(
    proxy: &Pod,
    api: &Api<Pod>,
    delegate: &Pod,
    step: Option<&Step>,
    target: &Target,
    context: &Context,
) -> Result<Action, Error> {
    let current = proxy.annotations();
    let changed: serde_json::Map<String, Value> = delegate
        .annotations()
        .iter()
        // The delegate carries the owner's kill commands: the proxy's must stay proxy-waiter's.
        .filter(|(k, _)| {
            !is_own_key(k)
                && !k.starts_with("kubectl.kubernetes.io/")
                && !contract::is_argo_kill_cmd_key(k)
        })
        .filter(|(k, v)| current.get(*k) != Some(v))
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    if !changed.is_empty() {
        patch_annotations(api, proxy, Value::Object(changed)).await?;
    }
    let result = outcome::result_of(delegate);
    if let Some(step) = step {
        // Before the proxy's result: Argo must never see the step end without its outputs.
        mirror_task_result(proxy, delegate, step, result.is_some(), target, context).await?;
    }
    match result {
        None => Ok(Action::requeue(RESYNC)),
        Some(result) => {
            let reason = if result.phase == contract::result::Phase::Succeeded {
                "DelegateSucceeded"
            } else {
                "DelegateFailed"
            };
            let note = format!("delegate {} ended: {:?}", delegate.name_any(), result.phase);
            let recorded =
                record_result(api, proxy, context, result, EventType::Normal, reason, note).await;
            if let (Ok(_), Some(ended)) = (&recorded, ended_at(delegate)) {
                context
                    .metrics
                    .result_recorded_seconds
                    .observe(seconds_since(&ended));
            }
            recorded
        }
    }
}

/// Writes the result on the proxy (durably, before any delivery); the waiter reads it through
/// the downward API.
async fn record_result(
    api: &Api<Pod>,
    proxy: &Pod,
    context: &Context,
    result: DelegateResult,
    type_: EventType,
    reason: &str,
    note: String,
) -> Result<Action, Error> {
    // A result is written once and never changed. The proxy cache can lag behind a result this
    // controller has just written (a delegate deleted by a stop wakes this proxy before its own
    // update arrives), so check the live proxy and write over that version only.
    let live = api.get(&proxy.name_any()).await.map_err(Error::Source)?;
    record_result_over(api, &live, context, result, type_, reason, note).await
}

/// Like [`record_result`], over `live`, a proxy just read from the API.
async fn record_result_over(
    api: &Api<Pod>,
    live: &Pod,
    context: &Context,
    result: DelegateResult,
    type_: EventType,
    reason: &str,
    note: String,
) -> Result<Action, Error> {
    if live.annotations().contains_key(RESULT) {
        return Ok(Action::await_change());
    }
    if !patch_annotations_at(api, live, json!({ RESULT: result.encode() })).await? {
        return Ok(Action::requeue(Duration::from_millis(100)));
    }
    publish(context, live, type_, reason, note).await;
    Ok(Action::await_change())
}

/// A proxy whose saved manifest cannot become a delegate: nothing is created anywhere, the
/// proxy fails with the reason.
async fn reject(
    proxy: &Pod,
    api: &Api<Pod>,
    context: &Context,
    why: &str,
) -> Result<Action, Error> {
    if let Some(target) = proxy.annotations().get(TARGET_CLUSTER) {
        // Placed already, so a replica whose key verified it is at work: this one has another
        // key (a rotation in progress, or a misconfiguration) and must not fail the proxy.
        let note = format!(
            "placed in {target}, but this replica cannot verify the saved manifest ({why}); is --manifest-key-file the same on every replica?"
        );
        publish(
            context,
            proxy,
            EventType::Warning,
            "ManifestKeyMismatch",
            note,
        )
        .await;
        return Ok(Action::requeue(Duration::from_secs(60)));
    }
    let message = format!("no delegate was created: {why}");
    record_result(
        api,
        proxy,
        context,
        outcome::lost("ManifestRejected", message.clone()),
        EventType::Warning,
        "ManifestRejected",
        message,
    )
    .await
}

/// A proxy whose target does not answer waits for it, up to `--cluster-lost-timeout`; then it
/// fails with reason `ClusterLost` so that its owner can run it again elsewhere.
async fn cluster_unreachable(
    proxy: &Pod,
    api: &Api<Pod>,
    target: &Target,
    down: Duration,
    context: &Context,
) -> Result<Action, Error> {
    let timeout = context.timing.cluster_lost_timeout;
    if down < timeout {
        return Ok(Action::requeue(timeout - down + Duration::from_millis(100)));
    }
    let message = format!(
        "target cluster {} has not answered for {}s (--cluster-lost-timeout {}s)",
        target.name,
        down.as_secs(),
        timeout.as_secs()
    );
    record_result(
        api,
        proxy,
        context,
        outcome::lost(CLUSTER_LOST, message.clone()),
        EventType::Warning,
        CLUSTER_LOST,
        message,
    )
    .await
}

/// How often a running proxy is looked at again without any event: a watch that restarts may
/// miss a deletion, and a lost delegate must still fail its proxy.
const RESYNC: Duration = Duration::from_secs(20);

/// The reason of proxies failed because their target stopped answering.
pub const CLUSTER_LOST: &str = "ClusterLost";

/// Deletes the delegate, then releases the proxy's finalizer.
/// Why the proxy stopped on its own while its delegate runs (its containers were killed, e.g.
/// by Argo's kill command, or Argo gave up on it); None while it waits for the delegate.
fn stopped(proxy: &Pod) -> Option<String> {
    ended_or_killed(proxy).or_else(|| argo_gave_up(proxy))
}

/// The proxy ended, or a container of it was killed (and will not restart).
fn ended_or_killed(proxy: &Pod) -> Option<String> {
    let status = proxy.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return Some(format!(
            "the proxy ended ({})",
            status.phase.as_deref().unwrap_or_default()
        ));
    }
    let never_restarts = proxy
        .spec
        .as_ref()
        .is_none_or(|s| s.restart_policy.as_deref().is_none_or(|p| p == "Never"));
    if never_restarts {
        let killed = status.container_statuses.iter().flatten().find_map(|c| {
            let ended = c.state.as_ref()?.terminated.as_ref()?;
            Some(format!(
                "proxy container {} ended with exit code {}",
                c.name, ended.exit_code
            ))
        });
        if killed.is_some() {
            return killed;
        }
    }
    None
}

/// Argo labelled the proxy completed while it runs.
fn argo_gave_up(proxy: &Pod) -> Option<String> {
    (proxy.labels().get(POD_COMPLETED_LABEL).map(String::as_str) == Some("true"))
        .then(|| format!("Argo labelled the proxy {POD_COMPLETED_LABEL}=true while it ran"))
}

/// Deletes a stopped proxy's delegate in its cluster (with its grace period, like a kubelet
/// stopping a pod) and records the stop as the proxy's result. An Argo step's task result is
/// mirrored complete first (it goes with the delegate, and nobody will write it again), so
/// that Argo does not wait for it.
async fn stop_delegate(
    proxy: &Pod,
    api: &Api<Pod>,
    delegate: &Pod,
    step: Option<&Step>,
    target: &Target,
    context: &Context,
    why: &str,
) -> Result<Action, Error> {
    if let Some(step) = step {
        mirror_task_result(proxy, delegate, step, true, target, context).await?;
    }
    if outcome::result_of(delegate).is_none() {
        let delegates: Api<Pod> = Api::namespaced(
            target.client.clone(),
            &delegate.namespace().unwrap_or_default(),
        );
        let only_this = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: delegate.uid(),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match bounded(delegates.delete(&delegate.name_any(), &only_this)).await {
            Ok(_) => {}
            Err(e) if matches!(api_code(&e), Some(404 | 409)) => {}
            Err(source) => {
                return Err(Error::Target {
                    cluster: target.name.clone(),
                    source,
                });
            }
        }
    }
    let (result, message) = stop_outcome(proxy, why, &delegate.name_any(), target);
    record_result(
        api,
        proxy,
        context,
        result,
        EventType::Normal,
        "DelegateStopped",
        message,
    )
    .await
}

/// The result of a proxy stopped for `why`: every container 143.
fn stop_outcome(
    proxy: &Pod,
    why: &str,
    delegate_name: &str,
    target: &Target,
) -> (DelegateResult, String) {
    let containers = proxy
        .spec
        .iter()
        .flat_map(|s| s.containers.iter().map(|c| c.name.clone()));
    let message = format!(
        "stopped: {why}; delegate {delegate_name} deleted in {}",
        target.name
    );
    (outcome::stopped(containers, &message), message)
}

/// A delegate that was created is gone and the proxy has no result. When the proxy had
/// stopped, the delegate went because of that stop (this pass's own, whose result write lost
/// a race with another update of the proxy, or another replica's): the result is the stop.
/// Otherwise the delegate was lost before it ended. Decided on the live proxy, which the cache
/// may not show yet; an Argo step's copied task result is completed first, since no one will
/// write it again and Argo would hold the workflow open for it.
async fn delegate_gone(
    proxy: &Pod,
    api: &Api<Pod>,
    step: Option<&Step>,
    delegate_name: &str,
    target: &Target,
    context: &Context,
) -> Result<Action, Error> {
    if let Some(step) = step {
        task_results::complete_mirror(&context.source, proxy, step)
            .await
            .map_err(Error::Source)?;
    }
    let live = api.get(&proxy.name_any()).await.map_err(Error::Source)?;
    let (result, type_, reason, message) = match stopped(&live) {
        Some(why) => {
            let (result, message) = stop_outcome(&live, &why, delegate_name, target);
            (result, EventType::Normal, "DelegateStopped", message)
        }
        None => {
            let message = format!(
                "delegate {delegate_name} disappeared from {} before it ended",
                target.name
            );
            let result = outcome::lost("DelegateLost", message.clone());
            (result, EventType::Warning, "DelegateLost", message)
        }
    };
    record_result_over(api, &live, context, result, type_, reason, message).await
}

/// Best effort: a step whose result cannot be kept still runs (its outputs may be lost, which
/// the Warning says).
async fn claim_task_result(
    proxy: &Pod,
    delegate: &Pod,
    step: &Step,
    target: &Target,
    context: &Context,
) {
    if let Err(e) = bounded(task_results::claim(
        &target.client,
        step,
        delegate,
        &context.cluster_name,
    ))
    .await
    {
        let note = format!(
            "cannot keep Argo's task result {} in {}; the step's outputs may be lost: {e} (does {} have the WorkflowTaskResult CRD and the target chart's RBAC?)",
            step.node_id, target.name, target.name
        );
        publish(
            context,
            proxy,
            EventType::Warning,
            "TaskResultNotClaimed",
            note,
        )
        .await;
    }
}

async fn mirror_task_result(
    proxy: &Pod,
    delegate: &Pod,
    step: &Step,
    delegate_ended: bool,
    target: &Target,
    context: &Context,
) -> Result<(), Error> {
    let on_target = |source| Error::Target {
        cluster: target.name.clone(),
        source,
    };
    let namespace = delegate.namespace().unwrap_or_default();
    let found = bounded(task_results::fetch(&target.client, &namespace, step))
        .await
        .map_err(on_target)?;
    let Some(found) = found else {
        // Not written yet (claimed now, mirrored on the next pass), or never will be.
        if !delegate_ended {
            claim_task_result(proxy, delegate, step, target, context).await;
        }
        return Ok(());
    };
    if !delegate_ended && !task_results::is_claimed(&found, delegate) {
        claim_task_result(proxy, delegate, step, target, context).await;
    }
    task_results::mirror(&context.source, proxy, step, &found, delegate_ended)
        .await
        .map_err(Error::Source)
}

async fn clean_up(
    proxy: &Pod,
    api: &Api<Pod>,
    annotations: &BTreeMap<String, String>,
    context: &Context,
) -> Result<Action, Error> {
    let Some(position) = proxy
        .finalizers()
        .iter()
        .position(|f| f == CLEANUP_FINALIZER)
    else {
        return Ok(Action::await_change());
    };
    if let (Some(target), Some(delegate_name)) = (
        annotations
            .get(TARGET_CLUSTER)
            .and_then(|t| context.target(t)),
        annotations.get(DELEGATE_NAME),
    ) {
        if let Some(down) = target.unreachable_for() {
            let timeout = context.timing.cluster_lost_timeout;
            if down < timeout {
                return Ok(Action::requeue(timeout - down + Duration::from_millis(100)));
            }
            let note = format!(
                "delegate {delegate_name} left in {}, which has not answered for {}s; the orphan sweep deletes it if the cluster returns",
                target.name,
                down.as_secs()
            );
            publish(context, proxy, EventType::Warning, CLUSTER_LOST, note).await;
            return release_finalizer(proxy, api, position).await;
        }
        let namespace = proxy.namespace().unwrap_or_default();
        let delegates: Api<Pod> = Api::namespaced(target.client.clone(), &namespace);
        match bounded(delegates.delete(delegate_name, &DeleteParams::background())).await {
            Ok(either) if either.is_left() => return Ok(Action::requeue(Duration::from_secs(1))),
            Ok(_) => {}
            Err(e) if api_code(&e) == Some(404) => {}
            Err(source) => {
                return Err(Error::Target {
                    cluster: target.name.clone(),
                    source,
                });
            }
        }
        if bounded(delegates.get_opt(delegate_name))
            .await
            .map_err(|source| Error::Target {
                cluster: target.name.clone(),
                source,
            })?
            .is_some()
        {
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
    }
    release_finalizer(proxy, api, position).await
}

async fn release_finalizer(proxy: &Pod, api: &Api<Pod>, position: usize) -> Result<Action, Error> {
    let path = format!("/metadata/finalizers/{position}");
    let patch: json_patch::Patch = serde_json::from_value(json!([
        { "op": "test", "path": path, "value": CLEANUP_FINALIZER },
        { "op": "remove", "path": path },
    ]))
    .map_err(|e| Error::Source(kube::Error::SerdeError(e)))?;
    match api
        .patch(
            &proxy.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
    {
        Ok(_) => Ok(Action::await_change()),
        // Gone, or the finalizer moved: the next event brings the current list.
        Err(e) if matches!(api_code(&e), Some(404 | 422)) => Ok(Action::await_change()),
        Err(e) => Err(Error::Source(e)),
    }
}

fn seconds_since(then: &k8s_openapi::jiff::Timestamp) -> f64 {
    k8s_openapi::jiff::Timestamp::now()
        .duration_since(*then)
        .as_secs_f64()
        .max(0.0)
}

/// When the delegate's last container ended.
fn ended_at(delegate: &Pod) -> Option<k8s_openapi::jiff::Timestamp> {
    let status = delegate.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .filter_map(|c| {
            c.state
                .as_ref()?
                .terminated
                .as_ref()?
                .finished_at
                .as_ref()
                .map(|t| t.0)
        })
        .max()
}

fn api_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Like [`patch_annotations`], only if the proxy is still at `proxy`'s resourceVersion: false
/// when it changed meanwhile (its next pass decides again on what it is now).
async fn patch_annotations_at(
    api: &Api<Pod>,
    proxy: &Pod,
    annotations: Value,
) -> Result<bool, Error> {
    let patch = json!({ "metadata": {
        "resourceVersion": proxy.resource_version(),
        "annotations": annotations,
    }});
    match api
        .patch(
            &proxy.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if api_code(&e) == Some(409) => Ok(false),
        Err(e) => Err(Error::Source(e)),
    }
}

async fn patch_annotations(api: &Api<Pod>, proxy: &Pod, annotations: Value) -> Result<(), Error> {
    let patch = json!({ "metadata": { "annotations": annotations } });
    api.patch(
        &proxy.name_any(),
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await
    .map(|_| ())
    .map_err(Error::Source)
}

async fn publish(context: &Context, proxy: &Pod, type_: EventType, reason: &str, note: String) {
    let namespace = proxy.namespace().unwrap_or_default();
    let name = proxy.name_any();
    // The log tells the same story as the Events, for operators who read logs.
    match type_ {
        EventType::Normal => tracing::info!(%namespace, proxy = %name, reason, "{note}"),
        EventType::Warning => tracing::warn!(%namespace, proxy = %name, reason, "{note}"),
    }
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Delegate".into(),
        secondary: None,
    };
    let recorder = context.recorder.clone();
    let reference = proxy.object_ref(&());
    let reason = reason.to_string();
    let publishing = async move {
        if let Err(e) = recorder.publish(&event, &reference).await {
            tracing::warn!("cannot publish event {reason}: {e}");
        }
    };
    // Normal Events are the hot path of every proxy: they need not delay the next step.
    // Warnings explain why nothing happens, so they are written before the reconcile returns.
    match type_ {
        EventType::Normal => drop(tokio::spawn(publishing)),
        EventType::Warning => publishing.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(status: Value, labels: Value, restart_policy: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": "p", "labels": labels },
            "spec": { "restartPolicy": restart_policy, "containers": [{ "name": "main" }, { "name": "wait" }] },
            "status": status,
        }))
        .unwrap()
    }

    fn container(name: &str, state: Value) -> Value {
        json!({ "name": name, "image": "w", "imageID": "", "ready": false, "restartCount": 0, "state": state })
    }

    #[test]
    fn a_waiting_proxy_is_not_stopped() {
        let running = json!({ "phase": "Running", "containerStatuses": [
            container("main", json!({ "running": {} })), container("wait", json!({ "running": {} })) ] });
        assert_eq!(stopped(&proxy(running.clone(), json!({}), "Never")), None);
        let argo_running = json!({ "workflows.argoproj.io/completed": "false" });
        assert_eq!(stopped(&proxy(running, argo_running, "Never")), None);
    }

    #[test]
    fn argos_label_alone_stops_the_delegate_only_after_the_kill_commands_grace() {
        let running = json!({ "phase": "Running", "containerStatuses": [
            container("main", json!({ "running": {} })) ] });
        let done = json!({ "workflows.argoproj.io/completed": "true" });
        let mut labelled = proxy(running, done.clone(), "Never");
        labelled.metadata.uid = Some("u1".into());
        let seen = Mutex::new(HashMap::new());
        let grace = |p: &Pod| grace_left(p, &seen);
        let first = grace(&labelled).expect("the kill command gets its grace");
        assert!(first <= KILL_COMMAND_GRACE && first > KILL_COMMAND_GRACE / 2);
        assert!(
            grace(&labelled).unwrap() <= first,
            "the grace runs from the first sight"
        );
        seen.lock()
            .unwrap()
            .insert("u1".into(), Instant::now() - KILL_COMMAND_GRACE);
        assert_eq!(grace(&labelled), None, "over: the label stops the delegate");
        assert!(seen.lock().unwrap().is_empty(), "forgotten once over");

        let killed = json!({ "phase": "Running", "containerStatuses": [
            container("main", json!({ "terminated": { "exitCode": 143 } })) ] });
        let mut killed = proxy(killed, done, "Never");
        killed.metadata.uid = Some("u2".into());
        assert_eq!(
            grace(&killed),
            None,
            "the kill command ended it: stop at once"
        );
    }

    #[test]
    fn a_killed_container_an_ended_proxy_or_argos_completed_label_stop_it() {
        let killed = json!({ "phase": "Running", "containerStatuses": [
            container("main", json!({ "terminated": { "exitCode": 143 } })),
            container("wait", json!({ "running": {} })) ] });
        let why = stopped(&proxy(killed.clone(), json!({}), "Never")).unwrap();
        assert!(why.contains("main") && why.contains("143"), "{why}");
        // Restarted by its kubelet: not a stop.
        assert_eq!(stopped(&proxy(killed, json!({}), "OnFailure")), None);
        let ended = json!({ "phase": "Failed" });
        assert!(stopped(&proxy(ended, json!({}), "Always")).is_some());
        let given_up = json!({ "phase": "Running" });
        let done = json!({ "workflows.argoproj.io/completed": "true" });
        assert!(
            stopped(&proxy(given_up, done, "Never"))
                .unwrap()
                .contains("Argo")
        );
    }
}
