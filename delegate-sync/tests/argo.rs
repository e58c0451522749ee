//! delegate-sync and Argo Workflows' contract, against the test bed, without an Argo controller
//! (`e2e/tests/argo*.rs` run the real one): task results kept and mirrored, and proxies stopped
//! by Argo stopping their delegates. The test plays Argo's executor in the delegate's cluster
//! exactly as its `wait` container does (`workflow/executor/taskresult.go`).

mod common;

use std::time::Duration;

use common::*;
use contract::RESULT;
use delegate_sync::task_results::{COMPLETED_LABEL, WORKFLOW_LABEL};
use e2e::{TestEnv, support::wait_for};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt as _,
    api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams},
};
use serde_json::json;

/// What Argo's executor does at the end of a step: create the result (owned by the workflow,
/// labelled incomplete), or patch its node result when it exists; then label it complete.
async fn play_executor(results: &Api<DynamicObject>, node_id: &str, workflow: &str, value: &str) {
    let node_result = json!({ "phase": "Succeeded", "outputs": { "parameters": [{ "name": "x", "value": value }] } });
    let mut created = json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTaskResult",
        "metadata": { "name": node_id,
            "labels": { WORKFLOW_LABEL: workflow, COMPLETED_LABEL: "false" },
            "ownerReferences": [{ "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "name": workflow,
                                  "uid": "2b8f5b1e-0000-4000-8000-000000000000" }] },
    });
    created["phase"] = node_result["phase"].clone();
    created["outputs"] = node_result["outputs"].clone();
    let created: DynamicObject = serde_json::from_value(created).unwrap();
    match results.create(&PostParams::default(), &created).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {
            results
                .patch(
                    node_id,
                    &PatchParams::default(),
                    &Patch::Merge(&node_result),
                )
                .await
                .unwrap();
        }
        Err(e) => panic!("cannot create the task result: {e}"),
    }
    let complete = json!({ "metadata": { "labels": { COMPLETED_LABEL: "true" } } });
    results
        .patch(node_id, &PatchParams::default(), &Patch::Merge(&complete))
        .await
        .unwrap();
}

#[tokio::test]
async fn task_results_are_kept_in_the_target_and_mirrored_before_the_proxy_ends() {
    let env = TestEnv::get().await.unwrap();
    for cluster in ["cluster1", "cluster2"] {
        install_task_result_crd(env.client(cluster).await.unwrap()).await;
    }
    let ns = env.namespace("dsync-argo-results").await.unwrap();
    let _controller = Controller::start(env);
    let proxies = ns.api::<Pod>("cluster1").await.unwrap();
    let delegates = ns.api::<Pod>("cluster2").await.unwrap();
    let in_source = task_results(env.client("cluster1").await.unwrap(), &ns);
    let in_target = task_results(env.client("cluster2").await.unwrap(), &ns);
    let node_id = "wf-1234567890";
    proxies
        .create(
            &PostParams::default(),
            &argo_step(&ns, "wf-a", "8s", node_id),
        )
        .await
        .unwrap();
    let delegate_name = format!("cluster1-{}-wf-a", ns.name);
    let delegate = until_running(&delegates, &delegate_name, Duration::from_secs(30)).await;

    // Claimed before the executor writes: owned by the delegate, so its cluster keeps it.
    let claimed = wait_for(
        &in_target,
        node_id,
        Duration::from_secs(10),
        |r: Option<&DynamicObject>| {
            r.is_some_and(|r| {
                r.owner_references()
                    .iter()
                    .any(|o| Some(&o.uid) == delegate.uid().as_ref())
            })
        },
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(claimed.labels()[WORKFLOW_LABEL], "wf");
    play_executor(&in_target, node_id, "wf", "42").await;

    let ended = until_result(&proxies, "wf-a", Duration::from_secs(60)).await;
    assert!(
        ended.annotations()[RESULT].contains("Succeeded"),
        "{}",
        ended.annotations()[RESULT]
    );
    let mirrored = in_source.get(node_id).await.unwrap();
    assert_eq!(mirrored.labels()[WORKFLOW_LABEL], "wf");
    assert_eq!(mirrored.labels()[COMPLETED_LABEL], "true");
    assert_eq!(mirrored.data["outputs"]["parameters"][0]["value"], "42");
    assert_eq!(mirrored.data["phase"], "Succeeded");

    // The workflow it names does not exist in cluster2: the garbage collector would have removed
    // the executor's own ownership by now; the delegate's keeps it, until the delegate goes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        in_target.get_opt(node_id).await.unwrap().is_some(),
        "kept while the delegate exists"
    );
    proxies
        .delete("wf-a", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        &in_target,
        node_id,
        Duration::from_secs(60),
        |r: Option<&DynamicObject>| r.is_none(),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_proxy_stopped_by_its_kill_command_or_given_up_by_argo_stops_its_delegate() {
    let env = TestEnv::get().await.unwrap();
    for cluster in ["cluster1", "cluster2"] {
        install_task_result_crd(env.client(cluster).await.unwrap()).await;
    }
    let ns = env.namespace("dsync-argo-stop").await.unwrap();
    let _controller = Controller::start(env);
    let proxies = ns.api::<Pod>("cluster1").await.unwrap();
    let delegates = ns.api::<Pod>("cluster2").await.unwrap();
    let in_source = task_results(env.client("cluster1").await.unwrap(), &ns);
    for name in ["killed", "given-up"] {
        proxies
            .create(
                &PostParams::default(),
                &argo_step(&ns, name, "1h", &format!("wf-{name}")),
            )
            .await
            .unwrap();
        let delegate_name = format!("cluster1-{}-{name}", ns.name);
        until_running(&delegates, &delegate_name, Duration::from_secs(30)).await;
    }
    report_main_killed(&proxies, "killed").await;
    // Argo gave up on a step it could not signal: it labels the pod completed.
    let given_up =
        json!({ "metadata": { "labels": { "workflows.argoproj.io/completed": "true" } } });
    proxies
        .patch(
            "given-up",
            &PatchParams::default(),
            &Patch::Merge(&given_up),
        )
        .await
        .unwrap();

    for name in ["killed", "given-up"] {
        let delegate_name = format!("cluster1-{}-{name}", ns.name);
        until_gone(&delegates, &delegate_name, Duration::from_secs(60)).await;
        let proxy = until_result(&proxies, name, Duration::from_secs(10)).await;
        let result = &proxy.annotations()[RESULT];
        assert!(
            result.contains("Stopped") && result.contains("143"),
            "{name}: {result}"
        );
        // Nobody will write the step's task result again: Argo must not wait for it.
        let mirrored = in_source.get(&format!("wf-{name}")).await.unwrap();
        assert_eq!(mirrored.labels()[COMPLETED_LABEL], "true", "{name}");
    }
}
