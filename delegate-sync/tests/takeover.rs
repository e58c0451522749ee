//! What a controller finds when it takes over from one that stopped half way (a crash, or a
//! replica that lost a race): delegates already gone and no result on their proxies. In a test
//! binary of its own, because between the two controllers no other test's may run (every
//! controller of a test binary watches every namespace).
//!
//! A proxy that had stopped ends `Stopped` (143), as if the first controller had finished, and
//! not `DelegateLost`; one that had not is lost. Either way the step's copied task result is
//! completed, since nobody will write it again and Argo holds the workflow open for it.

mod common;

use std::time::Duration;

use common::*;
use contract::RESULT;
use delegate_sync::task_results::COMPLETED_LABEL;
use e2e::{TestEnv, support::wait_for};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    ResourceExt as _,
    api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams},
};
use serde_json::json;

#[tokio::test]
async fn a_controller_that_takes_over_finishes_a_stop_and_completes_lost_task_results() {
    let env = TestEnv::get().await.unwrap();
    for cluster in ["cluster1", "cluster2"] {
        install_task_result_crd(env.client(cluster).await.unwrap()).await;
    }
    let ns = env.namespace("dsync-takeover").await.unwrap();
    let proxies = ns.api::<Pod>("cluster1").await.unwrap();
    let delegates = ns.api::<Pod>("cluster2").await.unwrap();
    let in_source = task_results(env.client("cluster1").await.unwrap(), &ns);
    let in_target = task_results(env.client("cluster2").await.unwrap(), &ns);
    let steps = [("stopped", "wf-stopped"), ("lost", "wf-lost")];
    let delegate_of = |name: &str| format!("cluster1-{}-{name}", ns.name);

    let first = Controller::start(env);
    for (name, node_id) in steps {
        proxies
            .create(&PostParams::default(), &argo_step(&ns, name, "1h", node_id))
            .await
            .unwrap();
        until_running(&delegates, &delegate_of(name), Duration::from_secs(30)).await;
        // The executor's first report (outputs so far), mirrored incomplete while it runs.
        let report = json!({ "phase": "Running" });
        wait_for(
            &in_target,
            node_id,
            Duration::from_secs(10),
            |r: Option<&DynamicObject>| r.is_some(),
        )
        .await
        .unwrap();
        in_target
            .patch(node_id, &PatchParams::default(), &Patch::Merge(&report))
            .await
            .unwrap();
        // A task result is mirrored on the proxy's next pass: a change of the delegate brings it.
        let poke = json!({ "metadata": { "annotations": { "example.com/report": "1" } } });
        delegates
            .patch(
                &delegate_of(name),
                &PatchParams::default(),
                &Patch::Merge(&poke),
            )
            .await
            .unwrap();
        wait_for(
            &in_source,
            node_id,
            Duration::from_secs(30),
            |r: Option<&DynamicObject>| {
                r.is_some_and(|r| {
                    r.labels().get(COMPLETED_LABEL).map(String::as_str) == Some("false")
                        && r.data["phase"] == "Running"
                })
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: the task result was not mirrored: {e}"));
    }
    first.stop().await;

    // What the first controller left: the kubelet reported `main` killed by Argo's kill
    // command and the delegate was deleted, but no result was written; and a delegate that
    // went while its proxy still waited.
    report_main_killed(&proxies, "stopped").await;
    for (name, _) in steps {
        let delegate_name = delegate_of(name);
        let now = DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        delegates.delete(&delegate_name, &now).await.unwrap();
        until_gone(&delegates, &delegate_name, Duration::from_secs(30)).await;
    }

    let _second = Controller::start(env);
    for (name, node_id, reason) in [
        ("stopped", "wf-stopped", "Stopped"),
        ("lost", "wf-lost", "DelegateLost"),
    ] {
        let proxy = until_result(&proxies, name, Duration::from_secs(30)).await;
        let result = &proxy.annotations()[RESULT];
        assert!(result.contains(reason), "{name}: {result}");
        if reason == "Stopped" {
            assert!(result.contains("143"), "{name}: {result}");
        }
        let mirrored = in_source.get(node_id).await.unwrap();
        assert_eq!(
            mirrored.labels()[COMPLETED_LABEL],
            "true",
            "{name}: Argo would wait for the task result"
        );
        assert_eq!(mirrored.data["phase"], "Running", "{name}: kept as it was");
    }
    assert!(
        delegates
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "nothing created again"
    );
}
