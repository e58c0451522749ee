//! Pods that restart, through proxies (`restartPolicy` row by row, as `docs/delegate-sync.md`
//! tables them), on the test bed's fake nodes, where the test plays the kubelet of the
//! delegate's node when it must (an eviction, a container restarted in place, a retry that
//! succeeds):
//! - `Always`: a delegate deleted in its cluster is replaced; the proxy gets no result;
//! - `OnFailure`: an evicted delegate is replaced and the replacement's success ends the
//!   proxy; a delegate that succeeds ends it at once;
//! - `Never`: a lost delegate fails the proxy `DelegateLost` and is never run again, also by a
//!   controller that starts afresh;
//! - container restarts of a running delegate show on its proxy.

mod common;

use std::time::Duration;

use common::*;
use contract::{
    CONTAINER_RESTARTS, RESTARTS, RESULT,
    result::{DelegateResult, Phase},
};
use e2e::{TestEnv, TestNamespace, support::wait_for};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::{
    Api, ResourceExt as _,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

fn delegate_of(ns: &TestNamespace, name: &str, restart: u32) -> String {
    match restart {
        0 => format!("cluster1-{}-{name}", ns.name),
        n => format!("cluster1-{}-{name}-r{n}", ns.name),
    }
}

/// Sets a delegate's status as its node's kubelet would.
async fn report(delegates: &Api<Pod>, name: &str, status: serde_json::Value) {
    delegates
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Strategic(&json!({ "status": status })),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot report {name}'s status: {e}"));
}

fn main_status(
    state: serde_json::Value,
    restarts: i32,
    last: serde_json::Value,
) -> serde_json::Value {
    json!([{ "name": "main", "image": "busybox", "imageID": "", "ready": false,
             "restartCount": restarts, "state": state, "lastState": last }])
}

async fn events(ns: &TestNamespace, reason: &str) -> Vec<(String, String)> {
    ns.api::<Event>("cluster1")
        .await
        .unwrap()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| {
            (
                e.involved_object.name.unwrap_or_default(),
                e.message.unwrap_or_default(),
            )
        })
        .collect()
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.annotations().get(key).map(String::as_str)
}

#[tokio::test]
async fn delegates_of_pods_that_restart_are_replaced_and_the_others_never_run_again() {
    let env = TestEnv::get().await.unwrap();
    let ns = env.namespace("dsync-restarts").await.unwrap();
    let controller = Controller::start(env);
    let proxies = ns.api::<Pod>("cluster1").await.unwrap();
    let delegates = ns.api::<Pod>("cluster2").await.unwrap();
    let until_delegate_runs = |restart| {
        let delegates = delegates.clone();
        let ns = &ns;
        move |name: &'static str| {
            let delegates = delegates.clone();
            async move { until_running(&delegates, &delegate_of(ns, name, restart), TIMEOUT).await }
        }
    };
    for (name, policy, run_for) in [
        ("always", "Always", "3600s"),
        ("evicted", "OnFailure", "3600s"),
        ("succeeds", "OnFailure", "2s"),
        ("never", "Never", "3600s"),
        ("restarting", "Always", "3600s"),
    ] {
        let pod = with_restart_policy(&ns, proxy(&ns, name, Some("cluster2"), run_for, 0), policy);
        proxies.create(&PostParams::default(), &pod).await.unwrap();
    }
    for name in ["always", "evicted", "never", "restarting"] {
        until_delegate_runs(0)(name).await;
    }

    // What befalls the delegates in cluster2.
    for name in ["always", "never"] {
        delegates
            .delete(&delegate_of(&ns, name, 0), &DeleteParams::default())
            .await
            .unwrap();
    }
    let killed = json!({ "terminated": { "exitCode": 137, "reason": "Error" } });
    report(
        &delegates,
        &delegate_of(&ns, "evicted", 0),
        json!({ "phase": "Failed", "reason": "Evicted", "message": "The node was low on memory.",
                "containerStatuses": main_status(killed, 0, json!({})) }),
    )
    .await;
    let crashed = json!({ "terminated": { "exitCode": 1, "reason": "Error" } });
    report(
        &delegates,
        &delegate_of(&ns, "restarting", 0),
        json!({ "containerStatuses": main_status(json!({ "running": {} }), 2, crashed) }),
    )
    .await;

    // Always and OnFailure: a replacement runs; their waiters get no result.
    for name in ["always", "evicted"] {
        until_delegate_runs(1)(name).await;
        let proxy = proxies.get(name).await.unwrap();
        assert_eq!(annotation(&proxy, RESTARTS), Some("1"), "{name}");
        assert_eq!(annotation(&proxy, RESULT), None, "{name}: no result");
    }
    until_gone(&delegates, &delegate_of(&ns, "evicted", 0), TIMEOUT).await;
    let restarted = events(&ns, "DelegateRestarted").await;
    for (name, why) in [("always", "disappeared"), ("evicted", "Evicted")] {
        assert!(
            restarted.iter().any(|(n, m)| n == name && m.contains(why)),
            "{name}: {restarted:?}"
        );
    }

    // OnFailure: the replacement succeeds, and so does the proxy.
    let completed = json!({ "terminated": { "exitCode": 0, "reason": "Completed" } });
    report(
        &delegates,
        &delegate_of(&ns, "evicted", 1),
        json!({ "phase": "Succeeded", "containerStatuses": main_status(completed, 0, json!({})) }),
    )
    .await;
    for name in ["evicted", "succeeds"] {
        let proxy = until_result(&proxies, name, TIMEOUT).await;
        let result = DelegateResult::decode(annotation(&proxy, RESULT).unwrap()).unwrap();
        assert_eq!(result.phase, Phase::Succeeded, "{name}");
    }
    let succeeds = proxies.get("succeeds").await.unwrap();
    assert_eq!(
        annotation(&succeeds, RESTARTS),
        None,
        "a success is not restarted"
    );

    // Never: lost is final.
    let never = until_result(&proxies, "never", TIMEOUT).await;
    let result = DelegateResult::decode(annotation(&never, RESULT).unwrap()).unwrap();
    assert_eq!(result.reason.as_deref(), Some("DelegateLost"));
    assert_eq!(annotation(&never, RESTARTS), None);

    // A container restarted by its kubelet shows on the proxy.
    let shown = wait_for(&proxies, "restarting", TIMEOUT, |p: Option<&Pod>| {
        p.and_then(|p| annotation(p, CONTAINER_RESTARTS)).is_some()
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        annotation(&shown, CONTAINER_RESTARTS),
        Some(r#"{"main":2}"#)
    );
    let noted = events(&ns, "DelegateContainerRestarted").await;
    assert!(
        noted.iter().any(|(n, m)| n == "restarting"
            && m.contains("2 time(s)")
            && m.contains("exit code 1")),
        "{noted:?}"
    );

    // A controller that starts afresh (a restart, a new leader) runs nothing again.
    drop(controller);
    let _again = Controller::start(env);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let names: Vec<String> = delegates
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|d| d.name_any())
        .collect();
    for name in ["never", "never-r1", "always-r2", "evicted-r2"] {
        let gone = delegate_of(&ns, name, 0);
        assert!(!names.contains(&gone), "{gone} runs: {names:?}");
    }
    let never = proxies.get("never").await.unwrap();
    assert_eq!(annotation(&never, RESTARTS), None);
}
