//! A target whose apiserver stops answering (frozen with SIGSTOP: connections hang, as in a
//! partition), in a test binary of its own since it freezes a cluster of the shared test bed:
//! a short outage changes nothing but a delay; a long one fails the running proxy `ClusterLost`,
//! releases a deleted proxy without its delegate, and when the cluster returns the orphan sweep
//! deletes the delegates no proxy waits for.

mod common;

use std::time::Duration;

use common::*;
use contract::{DELEGATE_NAME, RESULT, result::DelegateResult};
use e2e::{TestEnv, support::wait_for};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};

const LOST_AFTER: Duration = Duration::from_secs(10);

fn has_delegate(p: Option<&Pod>) -> bool {
    p.and_then(|p| p.metadata.annotations.as_ref())
        .is_some_and(|a| a.contains_key(DELEGATE_NAME))
}

#[tokio::test]
async fn a_target_that_goes_away_briefly_finishes_one_gone_too_long_is_lost_and_swept() {
    let env = TestEnv::get().await.unwrap();
    let testbed = env.testbed().unwrap();
    let ns = env.namespace("dsync-outage").await.unwrap();
    let _controller = Controller::start_with(
        env,
        Options {
            cluster_lost_timeout: Some(LOST_AFTER),
            ..Options::default()
        },
    );
    let proxies = ns.api::<Pod>("cluster1").await.unwrap();
    let delegates = ns.api::<Pod>("cluster2").await.unwrap();
    let wait = |name: &'static str, secs, done: fn(Option<&Pod>) -> bool| {
        let proxies = proxies.clone();
        async move {
            wait_for(&proxies, name, Duration::from_secs(secs), done)
                .await
                .unwrap()
        }
    };

    // Short outage: shorter than the timeout; the pod finishes as if nothing happened.
    let brief = proxy(&ns, "brief", Some("cluster2"), "3s", 0);
    proxies
        .create(&PostParams::default(), &brief)
        .await
        .unwrap();
    wait("brief", 30, has_delegate).await;
    {
        let _frozen = testbed.freeze_apiserver("cluster2").unwrap();
        tokio::time::sleep(LOST_AFTER / 2 + Duration::from_secs(1)).await;
    }
    let brief = wait("brief", 60, |p| phase(p) == Some("Succeeded")).await;
    let result = brief.unwrap().metadata.annotations.unwrap()[RESULT].clone();
    assert_eq!(DelegateResult::decode(&result).unwrap().reason, None);

    // Long outage: one proxy runs there, another is deleted meanwhile.
    for name in ["stranded", "deleted"] {
        let pod = proxy(&ns, name, Some("cluster2"), "600s", 0);
        proxies.create(&PostParams::default(), &pod).await.unwrap();
    }
    wait("stranded", 30, has_delegate).await;
    wait("deleted", 30, has_delegate).await;
    let frozen = testbed.freeze_apiserver("cluster2").unwrap();
    proxies
        .delete("deleted", &DeleteParams::default())
        .await
        .unwrap();
    let stranded = wait("stranded", 60, |p| phase(p) == Some("Failed")).await;
    let result = stranded.unwrap().metadata.annotations.unwrap()[RESULT].clone();
    let result = DelegateResult::decode(&result).unwrap();
    assert_eq!(result.reason.as_deref(), Some("ClusterLost"), "{result:?}");
    assert!(
        result.message.unwrap_or_default().contains("cluster2"),
        "the message names the cluster"
    );
    wait("deleted", 30, |p| p.is_none()).await;
    let events = ns.api::<Event>("cluster1").await.unwrap();
    let lost: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("ClusterLost"))
        .filter_map(|e| e.involved_object.name)
        .collect();
    assert!(
        lost.contains(&"stranded".to_string()) && lost.contains(&"deleted".to_string()),
        "{lost:?}"
    );

    // The cluster returns: nothing runs there that no proxy waits for.
    drop(frozen);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left: Vec<String> = delegates
            .list(&ListParams::default().labels("multicluster.admiralty.io/delegate=true"))
            .await
            .map(|l| {
                l.items
                    .into_iter()
                    .filter_map(|p| p.metadata.name)
                    .collect()
            })
            .unwrap_or_default();
        if left.len() == 1 {
            assert!(left[0].ends_with("-brief"), "{left:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "orphans not swept: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
