//! Where a delegate goes: the pinned cluster, or the cluster that fits the most replicas of the
//! pod. Pure: it sees snapshots of each cluster's nodes and of what their pods use per node
//! ([`NodeUsage`]), so every rule is a unit test.
//!
//! Per node: allocatable minus the requests of the non-terminal pods bound to it; per resource
//! the pod requests, floor(available / request); node score = the minimum over resources (and
//! free pod slots); cluster score = the sum over usable nodes. Delegates already sent but not
//! yet bound are first placed into the bins (the 2019 implementation forgot them, so bursts
//! over-committed a cluster). Ties go to the cluster listed first.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use k8s_openapi::api::core::v1::{
    Container, Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSpec, Taint, Toleration,
};

use crate::quantity::parse_milli;

/// Resource name to thousandths of its unit.
pub type Resources = BTreeMap<String, i128>;

/// Per node name, the sum of the requests of the non-terminal pods bound to it: all placement
/// needs of a cluster's pods.
pub type NodeUsage = HashMap<String, Resources>;

/// A snapshot of one target cluster.
#[derive(Clone, Copy, Debug)]
pub struct ClusterView<'a> {
    pub name: &'a str,
    pub nodes: &'a [Arc<Node>],
    /// What the cluster's pods use of each node.
    pub used: &'a NodeUsage,
    /// Delegates sent to this cluster and not yet bound to a node.
    pub in_flight: &'a [&'a PodSpec],
}

/// The outcome of placement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    Cluster(String),
    /// Pinned to a cluster nobody knows; lists the known ones.
    UnknownCluster {
        wanted: String,
        known: Vec<String>,
    },
    /// Nowhere fits now; why, per cluster.
    NoFit(Vec<(String, String)>),
}

/// Places a pod: `pinned` (the clustername annotation of the saved manifest) wins.
pub fn place(spec: &PodSpec, pinned: Option<&str>, clusters: &[ClusterView<'_>]) -> Placement {
    if let Some(wanted) = pinned {
        return match clusters.iter().find(|c| c.name == wanted) {
            Some(c) => Placement::Cluster(c.name.to_string()),
            None => Placement::UnknownCluster {
                wanted: wanted.to_string(),
                known: clusters.iter().map(|c| c.name.to_string()).collect(),
            },
        };
    }
    let scored: Vec<(&str, Result<i128, String>)> = clusters
        .iter()
        .map(|c| (c.name, replicas(spec, c)))
        .collect();
    let best = scored
        .iter()
        .filter_map(|(name, score)| score.as_ref().ok().filter(|s| **s > 0).map(|s| (*name, *s)))
        .fold(
            None,
            |best: Option<(&str, i128)>, (name, score)| match best {
                Some((_, top)) if top >= score => best,
                _ => Some((name, score)),
            },
        );
    match best {
        Some((name, _)) => Placement::Cluster(name.to_string()),
        None => Placement::NoFit(
            scored
                .into_iter()
                .map(|(name, score)| {
                    (
                        name.to_string(),
                        score.err().unwrap_or_else(|| "no node has room".into()),
                    )
                })
                .collect(),
        ),
    }
}

/// How many replicas of the pod the cluster can hold now; Err says why none, when no node is usable.
pub fn replicas(spec: &PodSpec, cluster: &ClusterView<'_>) -> Result<i128, String> {
    let wanted = pod_requests(spec);
    let mut bins: Vec<(&Node, Resources)> = Vec::new();
    let mut skipped = BTreeMap::<&'static str, usize>::new();
    for node in cluster.nodes {
        match unusable(node, spec) {
            Some(reason) => *skipped.entry(reason).or_default() += 1,
            None => bins.push((&**node, free(node, cluster.used))),
        }
    }
    if bins.is_empty() {
        let reasons: Vec<String> = skipped.iter().map(|(r, n)| format!("{n} {r}")).collect();
        return Err(if reasons.is_empty() {
            "no nodes".into()
        } else {
            format!("no usable node ({})", reasons.join(", "))
        });
    }
    for delegate in cluster.in_flight {
        let requests = pod_requests(delegate);
        if let Some((_, bin)) = bins
            .iter_mut()
            .filter(|(_, bin)| fits(bin, &requests) > 0)
            .max_by_key(|(_, bin)| fits(bin, &requests))
        {
            subtract(bin, &requests);
        }
    }
    Ok(bins.iter().map(|(_, bin)| fits(bin, &wanted)).sum())
}

/// Requests of a pod as the kube scheduler counts them: the larger of the containers' sum (plus
/// native sidecars) and each init container in turn (plus the sidecars started before it),
/// plus the pod overhead; one pod slot.
pub fn pod_requests(spec: &PodSpec) -> Resources {
    let mut total = Resources::new();
    for c in &spec.containers {
        add(&mut total, &container_requests(c));
    }
    let mut sidecars = Resources::new();
    let mut init_peak = Resources::new();
    for c in spec.init_containers.iter().flatten() {
        let requests = container_requests(c);
        if c.restart_policy.as_deref() == Some("Always") {
            add(&mut sidecars, &requests);
            max_into(&mut init_peak, &sidecars);
        } else {
            let mut during = sidecars.clone();
            add(&mut during, &requests);
            max_into(&mut init_peak, &during);
        }
    }
    add(&mut total, &sidecars);
    max_into(&mut total, &init_peak);
    for (name, quantity) in spec.overhead.iter().flatten() {
        if let Some(value) = parse_milli(&quantity.0) {
            *total.entry(name.clone()).or_default() += value;
        }
    }
    total.insert("pods".into(), 1000);
    total
}

fn container_requests(c: &Container) -> Resources {
    let resources = c.resources.as_ref();
    // Without requests, the scheduler uses the limits as requests.
    let requests = resources.and_then(|r| r.requests.as_ref());
    let limits = resources.and_then(|r| r.limits.as_ref());
    let mut out = Resources::new();
    for (name, quantity) in limits
        .into_iter()
        .flatten()
        .chain(requests.into_iter().flatten())
    {
        if let Some(value) = parse_milli(&quantity.0) {
            out.insert(name.clone(), value);
        }
    }
    out
}

fn add(into: &mut Resources, more: &Resources) {
    for (name, value) in more {
        *into.entry(name.clone()).or_default() += value;
    }
}

fn subtract(from: &mut Resources, less: &Resources) {
    for (name, value) in less {
        *from.entry(name.clone()).or_default() -= value;
    }
}

fn max_into(into: &mut Resources, other: &Resources) {
    for (name, value) in other {
        let slot = into.entry(name.clone()).or_default();
        *slot = (*slot).max(*value);
    }
}

/// Allocatable minus the requests of the non-terminal pods bound to the node.
fn free(node: &Node, used: &NodeUsage) -> Resources {
    let mut free: Resources = node
        .status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|(k, q)| Some((k.clone(), parse_milli(&q.0)?)))
        .collect();
    if let Some(used) = node.metadata.name.as_ref().and_then(|n| used.get(n)) {
        subtract(&mut free, used);
    }
    free
}

/// What a pod takes of its node: its node and requests, while it is bound and not terminal.
pub fn footprint(pod: &Pod) -> Option<(&str, Resources)> {
    let spec = pod.spec.as_ref()?;
    let node = spec.node_name.as_deref()?;
    let terminal = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    (!terminal).then(|| (node, pod_requests(spec)))
}

/// Adds `requests` to what `node` uses.
pub fn add_use(used: &mut NodeUsage, node: &str, requests: &Resources) {
    add(used.entry(node.to_string()).or_default(), requests);
}

/// Takes `requests` back from what `node` uses; a node left using nothing is dropped.
pub fn remove_use(used: &mut NodeUsage, node: &str, requests: &Resources) {
    if let Some(on_node) = used.get_mut(node) {
        subtract(on_node, requests);
        on_node.retain(|_, v| *v != 0);
        if on_node.is_empty() {
            used.remove(node);
        }
    }
}

/// What `pods` use of each node.
pub fn usage_of<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> NodeUsage {
    let mut used = NodeUsage::new();
    for (node, requests) in pods.into_iter().filter_map(footprint) {
        add_use(&mut used, node, &requests);
    }
    used
}

/// How many times `requests` fit in `free`: the minimum over requested resources. A pod that
/// requests nothing but a slot is placed by free pod slots.
fn fits(free: &Resources, requests: &Resources) -> i128 {
    requests
        .iter()
        .filter(|(_, want)| **want > 0)
        .map(|(name, want)| free.get(name).copied().unwrap_or(0).max(0) / want)
        .min()
        .unwrap_or(0)
}

/// Why a node cannot take the pod at all, if it cannot.
fn unusable(node: &Node, spec: &PodSpec) -> Option<&'static str> {
    if node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
    {
        return Some("unschedulable");
    }
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    if !ready {
        return Some("not Ready");
    }
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    if taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .any(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
    {
        return Some("tainted");
    }
    let labels = node.metadata.labels.clone().unwrap_or_default();
    if let Some(selector) = &spec.node_selector
        && !selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return Some("not matching nodeSelector");
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    if let Some(required) = required
        && !required
            .node_selector_terms
            .iter()
            .any(|term| term_matches(term, node))
    {
        return Some("not matching node affinity");
    }
    None
}

fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect_ok = toleration
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    let key = toleration.key.as_deref().unwrap_or("");
    let exists = toleration.operator.as_deref() == Some("Exists");
    if key.is_empty() {
        return exists && effect_ok;
    }
    let value_ok =
        exists || toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("");
    effect_ok && key == taint.key && value_ok
}

fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let name = node.metadata.name.clone().unwrap_or_default();
    let expressions = term.match_expressions.iter().flatten();
    let fields = term.match_fields.iter().flatten();
    let has_any = term
        .match_expressions
        .as_ref()
        .is_some_and(|e| !e.is_empty())
        || term.match_fields.as_ref().is_some_and(|f| !f.is_empty());
    has_any
        && expressions
            .clone()
            .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields
            .clone()
            .all(|r| r.key == "metadata.name" && requirement_matches(r, Some(&name)))
}

fn requirement_matches(requirement: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = requirement.values.as_deref().unwrap_or_default();
    let number = |v: &str| v.parse::<i64>().ok();
    match requirement.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => !value.is_some_and(|v| values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => {
            matches!((value.and_then(number), values.first().and_then(|x| number(x))), (Some(v), Some(x)) if v > x)
        }
        "Lt" => {
            matches!((value.and_then(number), values.first().and_then(|x| number(x))), (Some(v), Some(x)) if v < x)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn node(name: &str, cpu: &str, extra: Value) -> Arc<Node> {
        let mut node = json!({
            "metadata": { "name": name, "labels": { "kubernetes.io/hostname": name } },
            "spec": {},
            "status": {
                "allocatable": { "cpu": cpu, "memory": "2.58Gi", "pods": "110" },
                "conditions": [{ "type": "Ready", "status": "True" }],
            },
        });
        merge(&mut node, extra);
        Arc::new(serde_json::from_value(node).unwrap())
    }

    fn merge(base: &mut Value, extra: Value) {
        if let (Value::Object(base), Value::Object(extra)) = (base, extra) {
            for (k, v) in extra {
                match base.get_mut(&k) {
                    Some(existing @ Value::Object(_)) if v.is_object() => merge(existing, v),
                    _ => {
                        base.insert(k, v);
                    }
                }
            }
        }
    }

    fn pod_on(node: &str, cpu: &str, phase: &str) -> Arc<Pod> {
        Arc::new(serde_json::from_value(json!({
            "metadata": { "name": format!("on-{node}-{cpu}") },
            "spec": { "nodeName": node, "containers": [{ "name": "c", "resources": { "requests": { "cpu": cpu } } }] },
            "status": { "phase": phase },
        }))
        .unwrap())
    }

    fn usage(pods: &[Arc<Pod>]) -> NodeUsage {
        usage_of(pods.iter().map(|p| &**p))
    }

    fn spec(value: Value) -> PodSpec {
        serde_json::from_value(value).unwrap()
    }

    fn cpu_pod(cpu: &str) -> PodSpec {
        spec(
            json!({ "containers": [{ "name": "main", "resources": { "requests": { "cpu": cpu } } }] }),
        )
    }

    struct Blog {
        nodes: [Vec<Arc<Node>>; 2],
        used: [NodeUsage; 2],
    }

    /// The blog's clusters: 3 nodes of 940m; system pods 550/550/740m and 500/600/640m.
    fn blog() -> Blog {
        let cluster = |name: &str, system: [&str; 3]| {
            let nodes: Vec<Arc<Node>> = (1..=3)
                .map(|i| node(&format!("{name}-node{i}"), "940m", json!({})))
                .collect();
            let pods: Vec<Arc<Pod>> = system
                .iter()
                .enumerate()
                .map(|(i, cpu)| pod_on(&format!("{name}-node{}", i + 1), cpu, "Running"))
                .collect();
            (nodes, pods)
        };
        let (n1, p1) = cluster("cluster1", ["550m", "550m", "740m"]);
        let (n2, p2) = cluster("cluster2", ["500m", "600m", "640m"]);
        Blog {
            nodes: [n1, n2],
            used: [usage(&p1), usage(&p2)],
        }
    }

    fn views<'a>(blog: &'a Blog, in_flight: &'a [Vec<&'a PodSpec>; 2]) -> [ClusterView<'a>; 2] {
        [
            ClusterView {
                name: "cluster1",
                nodes: &blog.nodes[0],
                used: &blog.used[0],
                in_flight: &in_flight[0],
            },
            ClusterView {
                name: "cluster2",
                nodes: &blog.nodes[1],
                used: &blog.used[1],
                in_flight: &in_flight[1],
            },
        ]
    }

    #[test]
    fn the_blogs_burst_of_ten_places_seven_and_never_overcommits() {
        let blog = blog();
        let pod = cpu_pod("200m");
        let mut in_flight: [Vec<&PodSpec>; 2] = [vec![], vec![]];
        let mut placed = Vec::new();
        for _ in 0..10 {
            match place(&pod, None, &views(&blog, &in_flight)) {
                Placement::Cluster(name) => {
                    in_flight[usize::from(name == "cluster2")].push(&pod);
                    placed.push(name);
                }
                Placement::NoFit(reasons) => {
                    assert_eq!(reasons.len(), 2);
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(placed.iter().filter(|c| *c == "cluster2").count(), 4);
        assert_eq!(placed.iter().filter(|c| *c == "cluster1").count(), 3);
        assert_eq!(
            placed[0], "cluster2",
            "the cluster that fits the most first"
        );
    }

    #[test]
    fn pinned_clusters_win_and_unknown_ones_are_named() {
        let blog = blog();
        let none: [Vec<&PodSpec>; 2] = [vec![], vec![]];
        let pod = cpu_pod("200m");
        assert_eq!(
            place(&pod, Some("cluster1"), &views(&blog, &none)),
            Placement::Cluster("cluster1".into())
        );
        assert_eq!(
            place(&pod, Some("cluster9"), &views(&blog, &none)),
            Placement::UnknownCluster {
                wanted: "cluster9".into(),
                known: vec!["cluster1".into(), "cluster2".into()]
            }
        );
    }

    #[test]
    fn terminal_pods_free_their_room() {
        let nodes = [node("n", "1", json!({}))];
        let pods = [
            pod_on("n", "800m", "Succeeded"),
            pod_on("n", "100m", "Running"),
        ];
        let view = ClusterView {
            name: "c",
            nodes: &nodes,
            used: &usage(&pods),
            in_flight: &[],
        };
        assert_eq!(replicas(&cpu_pod("300m"), &view), Ok(3));
    }

    #[test]
    fn unusable_nodes_are_skipped_with_reasons() {
        let nodes = [
            node(
                "cordoned",
                "4",
                json!({ "spec": { "unschedulable": true } }),
            ),
            node(
                "tainted",
                "4",
                json!({ "spec": { "taints": [{ "key": "gpu", "value": "yes", "effect": "NoSchedule" }] } }),
            ),
            node(
                "notready",
                "4",
                json!({ "status": { "conditions": [{ "type": "Ready", "status": "False" }] } }),
            ),
            node("ok", "1", json!({})),
        ];
        let view = ClusterView {
            name: "c",
            nodes: &nodes,
            used: &NodeUsage::new(),
            in_flight: &[],
        };
        assert_eq!(replicas(&cpu_pod("500m"), &view), Ok(2));

        let mut tolerant = cpu_pod("500m");
        tolerant.tolerations = serde_json::from_value(
            json!([{ "key": "gpu", "operator": "Equal", "value": "yes", "effect": "NoSchedule" }]),
        )
        .unwrap();
        assert_eq!(replicas(&tolerant, &view), Ok(10));
        tolerant.tolerations = serde_json::from_value(json!([{ "operator": "Exists" }])).unwrap();
        assert_eq!(replicas(&tolerant, &view), Ok(10));

        let only_bad = ClusterView {
            name: "c",
            nodes: &nodes[..3],
            used: &NodeUsage::new(),
            in_flight: &[],
        };
        let why = replicas(&cpu_pod("1"), &only_bad).unwrap_err();
        assert!(
            why.contains("1 unschedulable")
                && why.contains("1 tainted")
                && why.contains("1 not Ready"),
            "{why}"
        );
    }

    #[test]
    fn node_selectors_and_required_affinity_are_honoured() {
        let nodes = [
            node(
                "a",
                "1",
                json!({ "metadata": { "labels": { "zone": "a", "size": "4" } } }),
            ),
            node(
                "b",
                "1",
                json!({ "metadata": { "labels": { "zone": "b", "size": "8" } } }),
            ),
        ];
        let view = ClusterView {
            name: "c",
            nodes: &nodes,
            used: &NodeUsage::new(),
            in_flight: &[],
        };
        let mut pod = cpu_pod("1");
        pod.node_selector = Some([("zone".to_string(), "b".to_string())].into());
        assert_eq!(replicas(&pod, &view), Ok(1));
        pod.node_selector = None;
        pod.affinity = serde_json::from_value(json!({ "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{ "matchExpressions": [{ "key": "size", "operator": "Gt", "values": ["5"] }] },
                                  { "matchFields": [{ "key": "metadata.name", "operator": "In", "values": ["a"] }] }] } } }))
        .unwrap();
        assert_eq!(replicas(&pod, &view), Ok(2), "terms are ORed");
        pod.affinity = serde_json::from_value(json!({ "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{ "matchExpressions": [{ "key": "zone", "operator": "NotIn", "values": ["a", "b"] }] }] } } }))
        .unwrap();
        assert!(
            replicas(&pod, &view)
                .unwrap_err()
                .contains("2 not matching node affinity")
        );
    }

    #[test]
    fn requests_count_init_containers_and_sidecars_like_the_scheduler() {
        let pod = spec(json!({
            "initContainers": [
                { "name": "big-init", "resources": { "requests": { "cpu": "2" } } },
                { "name": "sidecar", "restartPolicy": "Always", "resources": { "requests": { "cpu": "100m" } } },
            ],
            "containers": [
                { "name": "a", "resources": { "requests": { "cpu": "300m" } } },
                { "name": "b", "resources": { "limits": { "cpu": "200m", "memory": "1Gi" } } },
            ],
            "overhead": { "cpu": "10m" },
        }));
        let requests = pod_requests(&pod);
        assert_eq!(
            requests["cpu"],
            2000 + 10,
            "the init container dominates; overhead on top"
        );
        assert_eq!(
            requests["memory"],
            1000 << 30,
            "limits stand for missing requests"
        );
        let light_init = spec(json!({
            "initContainers": [{ "name": "sidecar", "restartPolicy": "Always", "resources": { "requests": { "cpu": "100m" } } }],
            "containers": [{ "name": "a", "resources": { "requests": { "cpu": "300m" } } }],
        }));
        assert_eq!(
            pod_requests(&light_init)["cpu"],
            400,
            "sidecars run beside the containers"
        );
    }

    #[test]
    fn pods_without_requests_go_by_free_pod_slots_and_ties_go_to_the_first_cluster() {
        let small = [node(
            "n",
            "1",
            json!({ "status": { "allocatable": { "pods": "2" } } }),
        )];
        let large = [node(
            "m",
            "1",
            json!({ "status": { "allocatable": { "pods": "5" } } }),
        )];
        let pods = [pod_on("m", "0", "Running")];
        let nothing = spec(json!({ "containers": [{ "name": "main" }] }));
        let views = [
            ClusterView {
                name: "small",
                nodes: &small,
                used: &NodeUsage::new(),
                in_flight: &[],
            },
            ClusterView {
                name: "large",
                nodes: &large,
                used: &usage(&pods),
                in_flight: &[],
            },
        ];
        assert_eq!(replicas(&nothing, &views[1]), Ok(4));
        assert_eq!(
            place(&nothing, None, &views),
            Placement::Cluster("large".into())
        );
        let twins = [
            views[0],
            ClusterView {
                name: "twin",
                ..views[0]
            },
        ];
        assert_eq!(
            place(&nothing, None, &twins),
            Placement::Cluster("small".into())
        );
    }
}
