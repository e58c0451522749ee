//! What placement needs of a target's pods, kept up to date from a watch of them: per node,
//! the requests of the non-terminal pods bound to it ([`NodeUsage`]), and which pods are counted.
//! The pods themselves are not kept: a target's own pods (thousands, unrelated to us) would
//! otherwise be most of delegate-sync's memory, and placement would walk them all for each
//! decision.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    ResourceExt as _,
    runtime::{reflector::ObjectRef, watcher},
};

use crate::placement::{self, NodeUsage, Resources};

/// The pods counted on nodes, and the sums per node.
#[derive(Debug, Default)]
pub struct Occupancy {
    counted: HashMap<ObjectRef<Pod>, (String, Resources)>,
    by_node: NodeUsage,
}

/// A pod's key without its uid and resourceVersion (equality ignores them; memory does not).
fn key(pod: &Pod) -> ObjectRef<Pod> {
    ObjectRef::new(&pod.name_any()).within(&pod.namespace().unwrap_or_default())
}

impl Occupancy {
    /// Counts the pod as it is now: on its node while bound and not terminal, else not at all.
    pub fn apply(&mut self, pod: &Pod) {
        let key = key(pod);
        self.forget(&key);
        if let Some((node, requests)) = placement::footprint(pod) {
            placement::add_use(&mut self.by_node, node, &requests);
            self.counted.insert(key, (node.to_string(), requests));
        }
    }

    /// The pod is gone.
    pub fn delete(&mut self, pod: &Pod) {
        self.forget(&key(pod));
    }

    fn forget(&mut self, key: &ObjectRef<Pod>) {
        if let Some((node, requests)) = self.counted.remove(key) {
            placement::remove_use(&mut self.by_node, &node, &requests);
        }
    }

    /// True when the pod is counted on a node.
    pub fn counts(&self, pod: &ObjectRef<Pod>) -> bool {
        self.counted.contains_key(pod)
    }

    pub fn by_node(&self) -> &NodeUsage {
        &self.by_node
    }

    /// How many pods are counted.
    pub fn len(&self) -> usize {
        self.counted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counted.is_empty()
    }
}

/// A target's [`Occupancy`], shared between its watch and placement. A relist builds a new one
/// beside the current, which it replaces once complete, as a reflector's store does.
#[derive(Clone, Default)]
pub struct OccupancyCache(Arc<RwLock<Cache>>);

#[derive(Default)]
struct Cache {
    current: Occupancy,
    relisting: Option<Occupancy>,
    ready: bool,
}

impl OccupancyCache {
    /// Takes in one event of the watch of the target's pods.
    pub fn handle(&self, event: &watcher::Event<Pod>) {
        let mut cache = self.0.write().unwrap_or_else(|e| e.into_inner());
        match event {
            watcher::Event::Init => cache.relisting = Some(Occupancy::default()),
            watcher::Event::InitApply(pod) => {
                if let Some(relisting) = cache.relisting.as_mut() {
                    relisting.apply(pod);
                }
            }
            watcher::Event::InitDone => {
                if let Some(complete) = cache.relisting.take() {
                    cache.current = complete;
                }
                cache.ready = true;
            }
            watcher::Event::Apply(pod) => cache.current.apply(pod),
            watcher::Event::Delete(pod) => cache.current.delete(pod),
        }
    }

    /// True once a first listing is complete.
    pub fn ready(&self) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).ready
    }

    /// A copy of what each node's pods use now.
    pub fn by_node(&self) -> NodeUsage {
        self.read(|o| o.by_node().clone())
    }

    /// True when the pod is counted on a node.
    pub fn counts(&self, pod: &ObjectRef<Pod>) -> bool {
        self.read(|o| o.counts(pod))
    }

    /// How many pods are counted.
    pub fn len(&self) -> usize {
        self.read(Occupancy::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read<T>(&self, f: impl FnOnce(&Occupancy) -> T) -> T {
        f(&self.0.read().unwrap_or_else(|e| e.into_inner()).current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, node: Option<&str>, cpu: &str, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": "ns", "uid": format!("uid-{name}-{phase}") },
            "spec": { "nodeName": node, "containers": [{ "name": "c", "resources": { "requests": { "cpu": cpu } } }] },
            "status": { "phase": phase },
        }))
        .unwrap()
    }

    fn cpu_on(used: &NodeUsage, node: &str) -> i128 {
        used.get(node)
            .and_then(|r| r.get("cpu"))
            .copied()
            .unwrap_or(0)
    }

    #[test]
    fn a_pod_counts_while_bound_and_not_terminal() {
        let mut occupancy = Occupancy::default();
        occupancy.apply(&pod("a", None, "100m", "Pending"));
        assert!(occupancy.is_empty(), "not bound yet");
        occupancy.apply(&pod("a", Some("n1"), "100m", "Pending"));
        occupancy.apply(&pod("b", Some("n1"), "250m", "Running"));
        assert_eq!(cpu_on(occupancy.by_node(), "n1"), 350);
        assert!(occupancy.counts(&ObjectRef::new("a").within("ns")));
        occupancy.apply(&pod("a", Some("n1"), "100m", "Succeeded"));
        assert_eq!(cpu_on(occupancy.by_node(), "n1"), 250);
        assert!(!occupancy.counts(&ObjectRef::new("a").within("ns")));
        occupancy.delete(&pod("b", Some("n1"), "250m", "Running"));
        assert!(occupancy.by_node().is_empty(), "{:?}", occupancy.by_node());
        assert!(occupancy.is_empty());
    }

    #[test]
    fn events_in_any_order_sum_to_the_usage_of_the_pods_left() {
        // A deterministic walk over applies, rebinds, endings and deletes of 40 pods.
        let mut occupancy = Occupancy::default();
        let mut live: HashMap<String, Pod> = HashMap::new();
        let mut state = 7_u64;
        for _ in 0..2_000 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            let r = (state >> 33) as usize;
            let name = format!("p{}", r % 40);
            let node = ["n1", "n2", "n3"][r / 40 % 3];
            let cpu = ["100m", "1", "0"][r / 120 % 3];
            let phase = ["Pending", "Running", "Succeeded", "Failed"][r / 360 % 4];
            if r.is_multiple_of(7) {
                if let Some(gone) = live.remove(&name) {
                    occupancy.delete(&gone);
                }
            } else {
                let bound = (!r.is_multiple_of(5)).then_some(node);
                let p = pod(&name, bound, cpu, phase);
                occupancy.apply(&p);
                live.insert(name, p);
            }
            let expected = placement::usage_of(live.values());
            let actual: NodeUsage = occupancy
                .by_node()
                .iter()
                .map(|(n, r)| (n.clone(), r.clone()))
                .collect();
            let nonzero = |u: &NodeUsage| -> NodeUsage {
                u.iter()
                    .map(|(n, r)| {
                        (
                            n.clone(),
                            r.iter()
                                .filter(|(_, v)| **v != 0)
                                .map(|(k, v)| (k.clone(), *v))
                                .collect::<Resources>(),
                        )
                    })
                    .filter(|(_, r)| !r.is_empty())
                    .collect()
            };
            assert_eq!(nonzero(&actual), nonzero(&expected));
        }
    }

    #[test]
    fn a_relist_replaces_the_usage_once_complete() {
        let cache = OccupancyCache::default();
        assert!(!cache.ready());
        cache.handle(&watcher::Event::Init);
        cache.handle(&watcher::Event::InitApply(pod(
            "a",
            Some("n1"),
            "1",
            "Running",
        )));
        cache.handle(&watcher::Event::InitDone);
        assert!(cache.ready());
        assert_eq!(cpu_on(&cache.by_node(), "n1"), 1000);
        // A relist after a watch was lost: `a` went meanwhile, `b` came.
        cache.handle(&watcher::Event::Init);
        cache.handle(&watcher::Event::InitApply(pod(
            "b",
            Some("n2"),
            "500m",
            "Running",
        )));
        assert_eq!(
            cpu_on(&cache.by_node(), "n1"),
            1000,
            "the old one until complete"
        );
        cache.handle(&watcher::Event::InitDone);
        assert_eq!(cpu_on(&cache.by_node(), "n1"), 0);
        assert_eq!(cpu_on(&cache.by_node(), "n2"), 500);
        assert_eq!(cache.len(), 1);
    }
}
