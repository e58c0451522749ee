//! Step 1: the saved manifest, verified, and the target chosen for the delegate: the pinned
//! cluster of the manifest, else the one that fits the most replicas ([`crate::placement`]).
//! The decision is recorded on the proxy before anything is created.

use std::{sync::Arc, time::Duration};

use contract::{CLUSTER_NAME, SOURCEPOD_MANIFEST, TARGET_CLUSTER};
use k8s_openapi::api::core::v1::{Node, Pod, PodSpec};
use kube::{
    ResourceExt as _,
    runtime::{controller::Action, events::EventType, reflector::ObjectRef},
};
use serde_json::Value;

use super::{
    Context, Error, Proxy,
    proxy::{Once, Unless, publish, set_annotation_once},
    restart,
};
use crate::{
    metrics::Metrics,
    placement::{self, ClusterView, NodeUsage, Placement},
    targets::Target,
};

/// A delegate placed but not yet seen in its target's cache.
#[derive(Clone, Debug)]
pub struct InFlight {
    namespace: String,
    name: String,
    spec: PodSpec,
}

/// The proxy's saved pod.
pub enum Manifest {
    /// Not saved (yet): nothing to do.
    Missing,
    /// It can never become a delegate, for this reason.
    Invalid(String),
    Valid {
        manifest: Value,
        spec: Box<PodSpec>,
    },
}

/// The saved manifest, verified with the key and bound to the proxy's namespace.
pub fn saved_manifest(proxy: &Proxy, context: &Context) -> Manifest {
    let Some(sealed) = proxy.pod.annotations().get(SOURCEPOD_MANIFEST) else {
        return Manifest::Missing;
    };
    let manifest = match open_manifest(context, proxy.namespace(), sealed) {
        Ok(manifest) => manifest,
        Err(why) => return Manifest::Invalid(why),
    };
    match serde_json::from_value(manifest["spec"].clone()) {
        Ok(spec) => Manifest::Valid {
            manifest,
            spec: Box::new(spec),
        },
        Err(e) => Manifest::Invalid(format!("the saved manifest has no valid pod spec: {e}")),
    }
}

/// The saved manifest, verified with the key and bound to `namespace`, as JSON.
pub fn open_manifest(context: &Context, namespace: &str, sealed: &str) -> Result<Value, String> {
    let text = context
        .key
        .open(namespace, sealed)
        .map_err(|e| e.to_string())?;
    serde_json::from_str(text).map_err(|e| format!("the saved manifest is not valid JSON: {e}"))
}

/// Where the delegate goes, or what to do meanwhile.
pub enum Placed<'a> {
    In(&'a Target),
    NotYet(Action),
}

/// The recorded target, or a new decision recorded on the proxy.
pub async fn run<'a>(
    proxy: &Proxy,
    manifest: &Value,
    spec: &PodSpec,
    context: &'a Context,
) -> Result<Placed<'a>, Error> {
    let target_name = match proxy.pod.annotations().get(TARGET_CLUSTER) {
        Some(name) => name.clone(),
        // A replacement backs off like a crashing container.
        None if let Some(wait) = restart::waiting(proxy) => {
            return Ok(Placed::NotYet(Action::requeue(wait)));
        }
        None => match decide(proxy, manifest, spec, context).await? {
            Ok(name) => name,
            Err(action) => return Ok(Placed::NotYet(action)),
        },
    };
    match context.target(&target_name) {
        Some(target) => Ok(Placed::In(target)),
        None => {
            let note = format!("recorded target {target_name} is not configured; waiting for it");
            publish(
                context,
                &proxy.pod,
                EventType::Warning,
                "UnknownCluster",
                note,
            )
            .await;
            Ok(Placed::NotYet(Action::requeue(Duration::from_secs(30))))
        }
    }
}

/// Chooses a cluster and records it (Event `Scheduled`), or says why none (Warning Events).
async fn decide(
    proxy: &Proxy,
    manifest: &Value,
    spec: &PodSpec,
    context: &Context,
) -> Result<Result<String, Action>, Error> {
    let pinned = manifest
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(CLUSTER_NAME))
        .and_then(Value::as_str);
    let reservation = InFlight {
        namespace: proxy.namespace().to_string(),
        name: proxy.delegate_name.clone(),
        spec: spec.clone(),
    };
    let placement = choose(reservation, pinned, context);
    waiting_for_room(context, proxy, matches!(placement, Placement::NoFit(_)));
    match placement {
        Placement::Cluster(name) => {
            // Only where no decision is yet, on a proxy not being deleted: another replica that
            // decided meanwhile wins, and this one follows its decision on the next pass.
            let decided = set_annotation_once(
                &proxy.api,
                &proxy.pod,
                TARGET_CLUSTER,
                &name,
                Unless::SetOrDeleting,
            );
            match decided.await {
                Ok(Once::Written) => {}
                Ok(Once::Refused(_)) => {
                    forget_in_flight(context, &name, &proxy.delegate_name);
                    return Ok(Err(Action::requeue(Duration::from_millis(100))));
                }
                Err(e) => {
                    forget_in_flight(context, &name, &proxy.delegate_name);
                    return Err(e);
                }
            }
            context
                .metrics
                .placements
                .get_or_create(&Metrics::cluster(&name))
                .inc();
            // The Event comes once the delegate is created (one Event, not two: a burst's
            // writes on the source are what bounds it); a delegate that waits says why.
            Ok(Ok(name))
        }
        Placement::UnknownCluster { wanted, known } => {
            let note = format!(
                "cluster {wanted:?} (annotation {CLUSTER_NAME}) is not a target; known: {}",
                known.join(", ")
            );
            publish(
                context,
                &proxy.pod,
                EventType::Warning,
                "UnknownCluster",
                note,
            )
            .await;
            Ok(Err(Action::requeue(Duration::from_secs(30))))
        }
        Placement::NoFit(reasons) => {
            let note = reasons
                .iter()
                .map(|(c, r)| format!("{c}: {r}"))
                .collect::<Vec<_>>()
                .join("; ");
            let note = format!("no cluster fits the pod now ({note})");
            publish(context, &proxy.pod, EventType::Warning, "NoCapacity", note).await;
            Ok(Err(Action::requeue(context.timing.pending_retry)))
        }
    }
}

/// Records whether `proxy` waits for room ([`Context::waiting_for_room`]).
fn waiting_for_room(context: &Context, proxy: &Proxy, waits: bool) {
    let reference = ObjectRef::from_obj(&*proxy.pod);
    let mut waiting = context
        .waiting_for_room
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if waits {
        waiting.insert(reference);
    } else {
        waiting.remove(&reference);
    }
}

/// What a target's pods use as placement must count it: the usage its pod watch keeps,
/// corrected by its delegate cache, which may have seen a delegate bound before the pod watch
/// did (two watches, no common order); and the delegates not bound yet. Lookups by key: a
/// burst must not cost the square of the cluster's pods.
fn occupancy(target: &Target) -> (NodeUsage, Vec<Arc<Pod>>) {
    let bound = |p: &Pod| p.spec.as_ref().is_some_and(|s| s.node_name.is_some());
    let mut used = target.pods.by_node();
    let mut unbound = Vec::new();
    for delegate in target.delegates.state() {
        if target.pods.counts(&ObjectRef::from_obj(&*delegate)) {
            continue;
        }
        if let Some((node, requests)) = placement::footprint(&delegate) {
            placement::add_use(&mut used, node, &requests);
        } else if !bound(&delegate) {
            unbound.push(delegate);
        }
    }
    (used, unbound)
}

/// What placement sees of one target.
struct Snapshot {
    name: String,
    nodes: Vec<Arc<Node>>,
    used: NodeUsage,
    /// Delegates created and not bound yet.
    unbound: Vec<Arc<Pod>>,
    /// Delegates decided and not created yet.
    reserved: Vec<PodSpec>,
}

fn why_unusable(target: &Target) -> String {
    match target.unreachable_for() {
        Some(down) => match target.refused() {
            Some(why) => format!("not usable for {}s: {why}", down.as_secs()),
            None => format!("not answering for {}s", down.as_secs()),
        },
        None => "caches still loading".into(),
    }
}

/// Places the delegate and, when a cluster is chosen, reserves its room at once.
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
            let (used, unbound) = occupancy(t);
            // Reservations whose delegate a cache already shows are counted there.
            let reserved = in_flight.entry(t.name.clone()).or_default();
            reserved.retain(|r| {
                let key = ObjectRef::new(&r.name).within(&r.namespace);
                t.delegates.get(&key).is_none() && !t.pods.counts(&key)
            });
            Snapshot {
                name: t.name.clone(),
                nodes,
                used,
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
            used: &s.used,
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

/// Drops the reservation of a delegate that its target's cache now shows (or that was not
/// made after all).
/// The namespaces of `cluster` where delegates were decided and not created yet.
pub fn namespaces_in_flight(
    context: &Context,
    cluster: &str,
) -> std::collections::BTreeSet<String> {
    context
        .in_flight
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(cluster)
        .into_iter()
        .flatten()
        .map(|r| r.namespace.clone())
        .collect()
}

pub fn forget_in_flight(context: &Context, cluster: &str, delegate_name: &str) {
    if let Some(list) = context
        .in_flight
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_mut(cluster)
    {
        list.retain(|r| r.name != delegate_name);
    }
}
