//! Placement by capacity on the blog's clusters, in a test binary of its own (cargo runs test
//! binaries one at a time, so nothing else uses the nodes' CPU meanwhile): ten pods of 200m,
//! seven start at once (four in cluster2, three in cluster1), none waits in a target for room
//! that was counted twice, and the last three start as soon as the first wave ends.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::*;
use contract::TARGET_CLUSTER;
use e2e::TestEnv;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{ListParams, PostParams};

async fn delegates_by_cluster(ns: &e2e::TestNamespace) -> BTreeMap<String, Vec<Pod>> {
    let mut out = BTreeMap::new();
    for cluster in ["cluster1", "cluster2"] {
        let pods = ns.api::<Pod>(cluster).await.unwrap();
        let list = pods
            .list(&ListParams::default().labels("multicluster.admiralty.io/delegate=true"))
            .await
            .unwrap();
        out.insert(cluster.to_string(), list.items);
    }
    out
}

#[tokio::test]
async fn a_burst_of_ten_200m_pods_starts_seven_at_once_across_both_clusters() {
    let env = TestEnv::get().await.unwrap();
    let ns = env.namespace("dsync-burst").await.unwrap();
    let _controller = Controller::start(env);
    let proxies = ns.api::<Pod>("cluster1").await.unwrap();
    for i in 0..10 {
        let pod = proxy_requesting(&ns, &format!("step-{i}"), None, "10s", 0, Some("200m"));
        proxies.create(&PostParams::default(), &pod).await.unwrap();
    }

    // The first wave: seven delegates, placed where they fit.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let first_wave = loop {
        let delegates = delegates_by_cluster(&ns).await;
        if delegates.values().map(Vec::len).sum::<usize>() >= 7 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            break delegates_by_cluster(&ns).await;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the first wave never came: {delegates:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let counts: BTreeMap<&str, usize> = first_wave
        .iter()
        .map(|(c, d)| (c.as_str(), d.len()))
        .collect();
    assert_eq!(
        counts,
        BTreeMap::from([("cluster1", 3), ("cluster2", 4)]),
        "placement counts delegates in flight"
    );
    for delegate in first_wave.values().flatten() {
        let bound = delegate
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_some();
        assert!(
            bound,
            "{:?} waits in its target: room was counted twice",
            delegate.metadata.name
        );
    }
    let only_proxies = ListParams::default().labels("multicluster.admiralty.io/proxy=true");
    let pending: Vec<String> = proxies
        .list(&only_proxies)
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| {
            !p.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(TARGET_CLUSTER))
        })
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(pending.len(), 3, "{pending:?}");
    let events = ns.api::<Event>("cluster1").await.unwrap();
    let no_capacity = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("NoCapacity"));
    let note = no_capacity.and_then(|e| e.message).unwrap_or_default();
    assert!(
        note.contains("cluster1") && note.contains("cluster2"),
        "why, per cluster: {note}"
    );

    // The second wave starts when the first ends; every step succeeds.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let all = proxies.list(&only_proxies).await.unwrap().items;
        let succeeded = all
            .iter()
            .filter(|p| phase(Some(p)) == Some("Succeeded"))
            .count();
        if succeeded == 10 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {succeeded} of 10 succeeded"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let delegates = delegates_by_cluster(&ns).await;
    assert_eq!(
        delegates.values().map(Vec::len).sum::<usize>(),
        10,
        "one delegate per proxy, no duplicates"
    );
}
