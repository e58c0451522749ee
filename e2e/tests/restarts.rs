//! A Deployment of elected pods keeps its replicas' delegates running, through the real
//! webhook, delegate-sync and Deployment controller, with the proxies running `proxy-waiter`
//! on real nodes: a delegate deleted in its cluster is replaced, and so are the delegates of a
//! cluster lost for longer than `--cluster-lost-timeout`, while every waiter keeps waiting in
//! its container (never restarted). In a test binary of its own: it freezes cluster2.

mod pieces;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use contract::{DELEGATE_NAME, RESTARTS, RESULT, TARGET_CLUSTER};
use e2e::{TestEnv, TestNamespace};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    ResourceExt as _,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::json;

const LABEL: &str = "restarts";
const LOST_AFTER: Duration = Duration::from_secs(8);
const TIMEOUT: Duration = Duration::from_secs(90);

fn deployment() -> Deployment {
    serde_json::from_value(json!({
        "metadata": { "name": "replicas" },
        "spec": {
            "replicas": 3,
            "selector": { "matchLabels": { "app": "replicas" } },
            "template": {
                "metadata": {
                    "labels": { "app": "replicas" },
                    "annotations": { contract::ELECT: "" },
                },
                // The delegates run on fake nodes until deleted; 200m each spreads them over
                // both clusters (cluster1 has room for three, cluster2 for four).
                "spec": { "containers": [{ "name": "main", "image": "busybox",
                                           "resources": { "requests": { "cpu": "200m" } } }] },
            },
        },
    }))
    .unwrap()
}

/// Running delegates of the namespace, per cluster, by name (a cluster that does not answer
/// within 2 s is left out).
async fn running_delegates(ns: &TestNamespace) -> BTreeMap<String, Vec<String>> {
    let mut found = BTreeMap::new();
    for cluster in ["cluster1", "cluster2"] {
        let api = ns.api::<Pod>(cluster).await.unwrap();
        let listed = tokio::time::timeout(
            Duration::from_secs(2),
            api.list(&ListParams::default().labels("multicluster.admiralty.io/delegate=true")),
        )
        .await;
        let Ok(Ok(pods)) = listed else {
            continue;
        };
        let names = pods
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| p.name_any())
            .collect();
        found.insert(cluster.to_string(), names);
    }
    found
}

/// Waits until `done` holds of the proxies and the running delegates; panics saying what was
/// seen last.
async fn until(
    ns: &TestNamespace,
    what: &str,
    timeout: Duration,
    done: impl Fn(&[Pod], &BTreeMap<String, Vec<String>>) -> bool,
) -> (Vec<Pod>, BTreeMap<String, Vec<String>>) {
    let proxies = ns.api::<Pod>("cluster1").await.unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        let pods = proxies
            .list(&ListParams::default().labels("app=replicas"))
            .await
            .unwrap()
            .items;
        let delegates = running_delegates(ns).await;
        if done(&pods, &delegates) {
            return (pods, delegates);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not the case within {timeout:?}; delegates {delegates:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn total(delegates: &BTreeMap<String, Vec<String>>) -> usize {
    delegates.values().map(Vec::len).sum()
}

/// Every proxy runs, on a real node, its waiter never restarted, and has no result.
fn waiting_in_place(proxies: &[Pod]) -> bool {
    proxies.len() == 3
        && proxies.iter().all(|p| {
            let status = p.status.as_ref();
            let on_real_node = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_some_and(|n| n.contains("-real"));
            let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
            let never_restarted = status
                .and_then(|s| s.container_statuses.as_ref())
                .is_some_and(|cs| {
                    cs.iter().all(|c| {
                        c.restart_count == 0
                            && c.state.as_ref().is_some_and(|s| s.running.is_some())
                    })
                });
            on_real_node && running && never_restarted && !p.annotations().contains_key(RESULT)
        })
}

fn restarts(proxy: &Pod) -> u32 {
    proxy
        .annotations()
        .get(RESTARTS)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_deployment_of_elected_pods_keeps_its_delegates_through_losses() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = TestEnv::get().await.unwrap();
    env.require_real_nodes().unwrap();
    let testbed = env.testbed().unwrap();
    let (ns, selector) = pieces::opted_in_namespace(env, "restarts", LABEL).await;
    let _pieces = pieces::start_with_timeout(
        env,
        LABEL,
        &selector,
        pieces::Proxies::OnRealNodes,
        LOST_AFTER,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ns.api::<Deployment>("cluster1")
        .await
        .unwrap()
        .create(&PostParams::default(), &deployment())
        .await
        .unwrap();
    let (proxies, delegates) = until(&ns, "3 proxies and 3 delegates run", TIMEOUT, |p, d| {
        waiting_in_place(p) && total(d) == 3
    })
    .await;
    assert!(
        !delegates["cluster2"].is_empty(),
        "the spread puts delegates in cluster2: {delegates:?}"
    );

    // A delegate deleted in its cluster (its node died, say) is replaced; its waiter waits on.
    let victim = &proxies[0];
    let (cluster, name) = (
        victim.annotations()[TARGET_CLUSTER].clone(),
        victim.annotations()[DELEGATE_NAME].clone(),
    );
    ns.api::<Pod>(&cluster)
        .await
        .unwrap()
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    let victim_name = victim.name_any();
    until(&ns, "the deleted delegate replaced", TIMEOUT, |p, d| {
        waiting_in_place(p)
            && total(d) == 3
            && p.iter()
                .any(|p| p.name_any() == victim_name && restarts(p) == 1)
    })
    .await;

    // cluster2 stops answering for longer than --cluster-lost-timeout: its delegates move.
    let (before, _) = until(&ns, "placed", TIMEOUT, |p, _| {
        p.iter()
            .all(|p| p.annotations().contains_key(TARGET_CLUSTER))
    })
    .await;
    let in_cluster2: Vec<(String, u32)> = before
        .iter()
        .filter(|p| p.annotations()[TARGET_CLUSTER] == "cluster2")
        .map(|p| (p.name_any(), restarts(p)))
        .collect();
    let frozen = testbed.freeze_apiserver("cluster2").unwrap();
    let moved = |p: &[Pod]| {
        in_cluster2.iter().all(|(name, was)| {
            p.iter().any(|p| {
                p.name_any() == *name
                    && restarts(p) == was + 1
                    && p.annotations().get(TARGET_CLUSTER).map(String::as_str) == Some("cluster1")
                    && p.annotations().contains_key(DELEGATE_NAME)
            })
        })
    };
    let (_, delegates) = until(
        &ns,
        "cluster2's delegates replaced in cluster1",
        LOST_AFTER + TIMEOUT,
        |p, d| waiting_in_place(p) && moved(p) && d.get("cluster1").map(Vec::len) == Some(3),
    )
    .await;
    eprintln!("moved {in_cluster2:?} to cluster1: {delegates:?}");

    // cluster2 returns: the delegates the replacements superseded are swept.
    drop(frozen);
    until(&ns, "superseded delegates swept", TIMEOUT, |p, d| {
        waiting_in_place(p)
            && d.get("cluster1").map(Vec::len) == Some(3)
            && d.get("cluster2").is_some_and(Vec::is_empty)
    })
    .await;

    // Deleting the Deployment deletes every proxy and delegate (and frees the room the next
    // test binary counts on) while delegate-sync still runs to release the proxies.
    ns.api::<Deployment>("cluster1")
        .await
        .unwrap()
        .delete("replicas", &DeleteParams::foreground())
        .await
        .unwrap();
    until(&ns, "proxies gone", TIMEOUT, |p, _| p.is_empty()).await;
    for cluster in ["cluster1", "cluster2"] {
        let delegates = ns.api::<Pod>(cluster).await.unwrap();
        let deadline = Instant::now() + TIMEOUT;
        while !delegates
            .list(&ListParams::default().labels("multicluster.admiralty.io/delegate=true"))
            .await
            .unwrap()
            .items
            .is_empty()
        {
            assert!(Instant::now() < deadline, "delegates left in {cluster}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
