//! delegate-sync against the test bed: cluster1 is the source, cluster2 (and cluster1 itself)
//! the targets. Proxies are made here as the webhook makes them (label, finalizer, sealed
//! manifest) so that this test needs no webhook.

mod common;

use std::time::Duration;

use common::*;
use contract::{DELEGATE_NAME, RESULT, SOURCEPOD_MANIFEST, TARGET_CLUSTER};
use e2e::{TestEnv, support::wait_for};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::{
    ResourceExt as _,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::json;

#[tokio::test]
async fn pinned_proxy_runs_in_cluster2_ends_with_its_code_and_cleans_up() {
    let env = TestEnv::get().await.unwrap();
    let ns = env.namespace("dsync").await.unwrap();
    let controller = Controller::start(env);
    let proxies = ns.api::<Pod>("cluster1").await.unwrap();
    let delegates = ns.api::<Pod>("cluster2").await.unwrap();
    proxies
        .create(
            &PostParams::default(),
            &proxy(&ns, "step", Some("cluster2"), "2s", 3),
        )
        .await
        .unwrap();

    let delegate_name = format!("cluster1-{}-step", ns.name);
    let delegate = wait_for(
        &delegates,
        &delegate_name,
        Duration::from_secs(30),
        |d: Option<&Pod>| d.is_some(),
    )
    .await
    .unwrap()
    .unwrap();
    let labels = delegate.metadata.labels.clone().unwrap();
    assert_eq!(
        labels
            .get("multicluster.admiralty.io/app")
            .map(String::as_str),
        Some("test")
    );
    assert!(
        !labels.contains_key("app"),
        "no controller in the target adopts the delegate"
    );

    let ended = wait_for(
        &proxies,
        "step",
        Duration::from_secs(40),
        |p: Option<&Pod>| phase(p) == Some("Failed"),
    )
    .await
    .unwrap()
    .unwrap();
    let annotations = ended.metadata.annotations.clone().unwrap();
    assert_eq!(annotations[TARGET_CLUSTER], "cluster2");
    assert_eq!(annotations[DELEGATE_NAME], delegate_name);
    assert!(
        annotations[RESULT].contains(r#""exitCode":3"#),
        "{}",
        annotations[RESULT]
    );
    let main = ended.status.unwrap().container_statuses.unwrap().remove(0);
    let terminated = main.state.unwrap().terminated.unwrap();
    assert_eq!(
        (terminated.exit_code, terminated.message.as_deref()),
        (3, Some("from the delegate"))
    );

    let (status, _) = admin_get(controller.admin, "/readyz").await;
    assert!(
        status.contains("200"),
        "ready once target caches are loaded: {status}"
    );
    let (_, metrics) = admin_get(controller.admin, "/metrics").await;
    // Every test of this binary runs a controller of its own and they all see every proxy,
    // so which one placed this proxy varies (a family without samples is not listed): check
    // what every controller reports.
    for expected in [
        r#"delegate_sync_target_synced{cluster="cluster1"} 1"#,
        r#"delegate_sync_target_synced{cluster="cluster2"} 1"#,
        "delegate_sync_delegate_created_seconds_count",
        "delegate_sync_result_recorded_seconds_count",
        r#"delegate_sync_reconciliations_total{outcome="ok"}"#,
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} missing from:\n{metrics}"
        );
    }
    assert!(
        admin_get(controller.admin, "/livez")
            .await
            .0
            .contains("200")
    );

    proxies
        .delete("step", &DeleteParams::default())
        .await
        .unwrap();
    until_gone(&delegates, &delegate_name, Duration::from_secs(30)).await;
    until_gone(&proxies, "step", Duration::from_secs(30)).await;
}

#[tokio::test]
async fn a_tampered_manifest_creates_nothing_and_fails_the_proxy() {
    let env = TestEnv::get().await.unwrap();
    let ns = env.namespace("dsync-tamper").await.unwrap();
    let _controller = Controller::start(env);
    let proxies = ns.api::<Pod>("cluster1").await.unwrap();
    let mut tampered = proxy(&ns, "edited", Some("cluster2"), "1s", 0);
    let annotations = tampered.metadata.annotations.as_mut().unwrap();
    let sealed = annotations[SOURCEPOD_MANIFEST].replace("busybox", "evil/miner");
    annotations.insert(SOURCEPOD_MANIFEST.into(), sealed);
    proxies
        .create(&PostParams::default(), &tampered)
        .await
        .unwrap();

    let failed = wait_for(
        &proxies,
        "edited",
        Duration::from_secs(30),
        |p: Option<&Pod>| phase(p) == Some("Failed"),
    )
    .await
    .unwrap()
    .unwrap();
    let result = &failed.metadata.annotations.unwrap()[RESULT];
    assert!(
        result.contains("ManifestRejected") && result.contains("edited after admission"),
        "{result}"
    );
    for cluster in ["cluster1", "cluster2"] {
        let pods = ns.api::<Pod>(cluster).await.unwrap();
        let delegates = pods
            .list(&ListParams::default().labels("multicluster.admiralty.io/delegate=true"))
            .await
            .unwrap();
        assert!(delegates.items.is_empty(), "no delegate in {cluster}");
    }
    let events = ns.api::<Event>("cluster1").await.unwrap();
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        reasons.iter().any(|r| r == "ManifestRejected"),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn annotations_are_mirrored_and_a_lost_delegate_fails_the_proxy() {
    let env = TestEnv::get().await.unwrap();
    let ns = env.namespace("dsync-lost").await.unwrap();
    let _controller = Controller::start(env);
    let proxies = ns.api::<Pod>("cluster1").await.unwrap();
    let delegates = ns.api::<Pod>("cluster2").await.unwrap();
    proxies
        .create(
            &PostParams::default(),
            &proxy(&ns, "long", Some("cluster2"), "1h", 0),
        )
        .await
        .unwrap();
    let name = format!("cluster1-{}-long", ns.name);
    until_running(&delegates, &name, Duration::from_secs(30)).await;

    // Argo 2.x writes its outputs as an annotation of the pod: they must reach the proxy.
    let outputs = json!({ "metadata": { "annotations": { "workflows.argoproj.io/outputs": "{\"result\":\"42\"}" } } });
    delegates
        .patch(
            &name,
            &Default::default(),
            &kube::api::Patch::Merge(outputs),
        )
        .await
        .unwrap();
    let mirrored = |p: Option<&Pod>| {
        p.and_then(|p| {
            p.metadata
                .annotations
                .as_ref()?
                .get("workflows.argoproj.io/outputs")
                .cloned()
        })
        .as_deref()
            == Some("{\"result\":\"42\"}")
    };
    wait_for(&proxies, "long", Duration::from_secs(30), mirrored)
        .await
        .unwrap();

    delegates
        .delete(
            &name,
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let failed = wait_for(
        &proxies,
        "long",
        Duration::from_secs(30),
        |p: Option<&Pod>| phase(p) == Some("Failed"),
    )
    .await
    .unwrap()
    .unwrap();
    let result = &failed.metadata.annotations.unwrap()[RESULT];
    assert!(result.contains("DelegateLost"), "{result}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        delegates.get_opt(&name).await.unwrap().is_none(),
        "a terminal proxy is never re-run"
    );
}

#[tokio::test]
async fn a_controller_killed_mid_burst_and_restarted_neither_loses_nor_duplicates() {
    let env = TestEnv::get().await.unwrap();
    let ns = env.namespace("dsync-restart").await.unwrap();
    let proxies = ns.api::<Pod>("cluster1").await.unwrap();
    let first = Controller::start(env);
    for i in 0..20 {
        let pod = proxy(&ns, &format!("burst-{i}"), None, "3s", 0);
        proxies.create(&PostParams::default(), &pod).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(first); // aborted mid-burst, like a SIGKILL
    let _second = Controller::start(env);

    let only_proxies = ListParams::default().labels("multicluster.admiralty.io/proxy=true");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let all = proxies.list(&only_proxies).await.unwrap().items;
        let done = all
            .iter()
            .filter(|p| phase(Some(p)) == Some("Succeeded"))
            .count();
        if done == 20 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{done} of 20 proxies succeeded"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut delegates_per_proxy = std::collections::BTreeMap::<String, usize>::new();
    for cluster in ["cluster1", "cluster2"] {
        let pods = ns.api::<Pod>(cluster).await.unwrap();
        let delegates = pods
            .list(&ListParams::default().labels("multicluster.admiralty.io/delegate=true"))
            .await
            .unwrap();
        for delegate in delegates.items {
            let uid =
                delegate.metadata.labels.unwrap_or_default()["multicluster.admiralty.io/proxy-uid"]
                    .clone();
            *delegates_per_proxy.entry(uid).or_default() += 1;
        }
    }
    assert_eq!(
        delegates_per_proxy.len(),
        20,
        "every proxy got its delegate"
    );
    assert!(
        delegates_per_proxy.values().all(|n| *n == 1),
        "no duplicates: {delegates_per_proxy:?}"
    );
}

#[tokio::test]
async fn one_replica_leads_and_a_standby_takes_over_when_it_stops() {
    use k8s_openapi::api::coordination::v1::Lease;
    let env = TestEnv::get().await.unwrap();
    let ns = env.namespace("dsync-lease").await.unwrap();
    let settings = |identity: &str| {
        let mut lease = delegate_sync::leader::LeaseSettings::new(
            ns.name.clone(),
            "delegate-sync".into(),
            identity.into(),
        );
        lease.retry = Duration::from_millis(500);
        lease
    };
    let leases = ns.api::<Lease>("cluster1").await.unwrap();
    let holder = |lease: Option<&Lease>| {
        lease
            .and_then(|l| l.spec.as_ref()?.holder_identity.clone())
            .unwrap_or_default()
    };
    let first = Controller::start_with(
        env,
        Options {
            leader_election: Some(settings("first")),
            ..Options::default()
        },
    );
    wait_for(
        &leases,
        "delegate-sync",
        Duration::from_secs(30),
        |l: Option<&Lease>| holder(l) == "first",
    )
    .await
    .unwrap();
    let _second = Controller::start_with(
        env,
        Options {
            leader_election: Some(settings("second")),
            ..Options::default()
        },
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lease = leases.get("delegate-sync").await.unwrap();
    assert_eq!(holder(Some(&lease)), "first", "the standby waits");

    // A leader that stops releases the Lease: the standby takes over without waiting for it
    // to expire (15 s).
    first.stop().await;
    let taken = std::time::Instant::now();
    let lease = wait_for(
        &leases,
        "delegate-sync",
        Duration::from_secs(10),
        |l: Option<&Lease>| holder(l) == "second",
    )
    .await
    .unwrap()
    .unwrap();
    assert!(taken.elapsed() < Duration::from_secs(10));
    assert_eq!(lease.spec.unwrap().lease_transitions, Some(1));
}

#[tokio::test]
async fn a_replica_with_another_key_never_fails_a_proxy_that_is_already_placed() {
    let env = TestEnv::get().await.unwrap();
    let ns = env.namespace("dsync-keys").await.unwrap();
    let _controller = Controller::start(env);
    let proxies = ns.api::<Pod>("cluster1").await.unwrap();
    // As a replica with another key sees a proxy that a replica with the right key placed.
    let mut placed = proxy(&ns, "placed", Some("cluster2"), "1s", 0);
    let annotations = placed.metadata.annotations.as_mut().unwrap();
    let sealed = annotations[SOURCEPOD_MANIFEST].replacen("v1.", "v1.AAAA", 1);
    annotations.insert(SOURCEPOD_MANIFEST.into(), sealed);
    annotations.insert(TARGET_CLUSTER.into(), "cluster2".into());
    proxies
        .create(&PostParams::default(), &placed)
        .await
        .unwrap();

    let events = ns.api::<Event>("cluster1").await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let reasons: Vec<String> = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|e| e.reason)
            .collect();
        if reasons.iter().any(|r| r == "ManifestKeyMismatch") {
            assert!(
                !reasons.iter().any(|r| r == "ManifestRejected"),
                "{reasons:?}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{reasons:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let proxy = proxies.get("placed").await.unwrap();
    assert!(
        !proxy.annotations().contains_key(RESULT),
        "the proxy is not failed"
    );
    let delegates = ns.api::<Pod>("cluster2").await.unwrap();
    let made = delegates
        .list(&ListParams::default().labels("multicluster.admiralty.io/delegate=true"))
        .await
        .unwrap();
    assert!(made.items.is_empty(), "nothing unverified runs");
}

#[tokio::test]
async fn edits_of_a_running_proxys_annotations_change_nothing_and_are_reported() {
    let env = TestEnv::get().await.unwrap();
    let ns = env.namespace("dsync-edits").await.unwrap();
    let _controller = Controller::start(env);
    let proxies = ns.api::<Pod>("cluster1").await.unwrap();
    let in_cluster1 = ns.api::<Pod>("cluster1").await.unwrap();
    let in_cluster2 = ns.api::<Pod>("cluster2").await.unwrap();
    proxies
        .create(
            &PostParams::default(),
            &proxy(&ns, "edited", Some("cluster2"), "12s", 4),
        )
        .await
        .unwrap();
    let name = format!("cluster1-{}-edited", ns.name);
    let delegate = until_running(&in_cluster2, &name, Duration::from_secs(30)).await;
    let placed = wait_for(
        &proxies,
        "edited",
        Duration::from_secs(10),
        |p: Option<&Pod>| p.is_some_and(|p| p.annotations().contains_key(DELEGATE_NAME)),
    )
    .await
    .unwrap()
    .unwrap();

    // The owner moves the proxy to cluster1, forgets its delegate and edits its manifest.
    let sealed = placed.annotations()[SOURCEPOD_MANIFEST].replacen("v1.", "v1.AAAA", 1);
    let edit = json!({ "metadata": { "annotations": {
        TARGET_CLUSTER: "cluster1", DELEGATE_NAME: null, SOURCEPOD_MANIFEST: sealed,
    }}});
    proxies
        .patch(
            "edited",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&edit),
        )
        .await
        .unwrap();

    let restored = wait_for(
        &proxies,
        "edited",
        Duration::from_secs(30),
        |p: Option<&Pod>| {
            p.is_some_and(|p| {
                p.annotations().get(TARGET_CLUSTER).map(String::as_str) == Some("cluster2")
                    && p.annotations().get(DELEGATE_NAME) == Some(&name)
            })
        },
    )
    .await;
    assert!(restored.is_ok(), "placement annotations are put back");
    // It still ends with its delegate's code, from the same delegate, and nothing ran in cluster1.
    let ended = until_result(&proxies, "edited", Duration::from_secs(60)).await;
    assert!(
        ended.annotations()[RESULT].contains("\"exitCode\":4"),
        "{}",
        ended.annotations()[RESULT]
    );
    let now = in_cluster2.get(&name).await.unwrap();
    assert_eq!(
        now.uid(),
        delegate.uid(),
        "the same delegate ran to its end"
    );
    assert!(
        in_cluster1.get_opt(&name).await.unwrap().is_none(),
        "no second delegate"
    );
    let events = ns.api::<Event>("cluster1").await.unwrap();
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    for reported in ["PlacementEdited", "ManifestKeyMismatch"] {
        assert!(
            reasons.iter().any(|r| r == reported),
            "{reported}: {reasons:?}"
        );
    }
}
