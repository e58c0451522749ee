//! Argo Workflows through proxies, with every real piece: Argo's workflow-controller (v3.7.18)
//! on cluster1, the webhook (TLS, registered with the apiserver) and delegate-sync (targets
//! cluster1 itself and cluster2). Scenarios A and B are the blog's workflows
//! ([`e2e::argo::blog`]), with shorter steps.
//! Where a container would act on a fake node (Argo's `wait` container writing outputs, the
//! kubelet running Argo's kill command), the test does exactly what it would do, in the cluster
//! where it would; the stop test runs its proxy on a real node, where the kubelet itself runs
//! Argo's kill command.

mod pieces;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use contract::{DELEGATE_NAME, RESULT, TARGET_CLUSTER};
use e2e::{
    TestEnv, TestNamespace,
    argo::{self, ANNOTATION_NODE_ID},
    lifecycle,
    support::wait_for,
};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Client, ResourceExt as _,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(120);
const LABEL: &str = "argo-proxies";

/// Argo on cluster1 (the task-result CRD in cluster2), the webhook and delegate-sync, and an
/// opted-in namespace; None (the test passes, saying why) when the controller is not built.
async fn argo_with_pieces(test: &str) -> Option<(TestNamespace, Client, pieces::Running)> {
    pieces::argo_scene(
        test,
        LABEL,
        pieces::Proxies::OnFakeNodes,
        argo::Release::V3_7,
    )
    .await
}

/// A workflow of one elected step, pinned to cluster2, that runs until stopped.
fn forever(prefix: &str) -> String {
    format!(
        r#"
metadata:
  generateName: {prefix}-
spec:
  entrypoint: forever
  templates:
  - name: forever
    metadata:
      annotations:
        multicluster.admiralty.io/elect: ""
        multicluster.admiralty.io/clustername: cluster2
    container:
      image: busybox
      command: [sleep, infinity]
"#
    )
}

/// The delegates of this namespace's proxies, per cluster.
async fn delegates_per_cluster(ns: &TestNamespace) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for cluster in ["cluster1", "cluster2"] {
        let pods = ns.api::<Pod>(cluster).await.unwrap();
        let delegates = pods
            .list(&ListParams::default().labels("multicluster.admiralty.io/delegate=true"))
            .await
            .unwrap();
        counts.insert(cluster.to_string(), delegates.items.len());
    }
    counts
}

/// The delegate of a proxy, once delegate-sync made it: (cluster, delegate).
async fn delegate_of(ns: &TestNamespace, proxy: &str) -> (String, Pod) {
    let proxies = ns.api::<Pod>("cluster1").await.unwrap();
    let placed = wait_for(&proxies, proxy, TIMEOUT, |p: Option<&Pod>| {
        p.is_some_and(|p| p.annotations().contains_key(DELEGATE_NAME))
    })
    .await
    .unwrap()
    .unwrap();
    let cluster = placed.annotations()[TARGET_CLUSTER].clone();
    let name = placed.annotations()[DELEGATE_NAME].clone();
    let delegates = ns.api::<Pod>(&cluster).await.unwrap();
    let delegate = wait_for(&delegates, &name, TIMEOUT, |d: Option<&Pod>| {
        d.and_then(|d| d.status.as_ref()?.phase.as_deref()) == Some("Running")
    })
    .await
    .unwrap()
    .unwrap();
    (cluster, delegate)
}

#[tokio::test]
async fn blog_scenario_a_spreads_ten_parallel_steps_over_both_clusters() {
    let Some((ns, client, _pieces)) = argo_with_pieces("scenario_a").await else {
        return;
    };
    let started = Instant::now();
    let name = argo::submit_yaml(
        &client,
        &ns.name,
        &argo::blog::scenario_a(true, argo::blog::Steps::OnFakeNodes { run_for: "3s" }),
    )
    .await
    .unwrap();
    let status = argo::wait_finished(&client, &ns.name, &name, TIMEOUT)
        .await
        .unwrap();
    let spread = delegates_per_cluster(&ns).await;
    eprintln!(
        "scenario_a: {name} {} in {:.1} s, delegates {spread:?}",
        status.phase,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(status.phase, "Succeeded", "{:#}", status.raw);
    let pods = argo::pods(&client, &ns.name, &name).await.unwrap();
    assert_eq!(pods.len(), 10);
    assert!(
        pods.iter()
            .all(|p| p.labels().get(contract::PROXY_LABEL).map(String::as_str) == Some("true")),
        "every step pod is a proxy"
    );
    assert_eq!(spread.values().sum::<usize>(), 10, "{spread:?}");
    assert!(
        spread.values().all(|n| *n > 0),
        "both clusters run steps: {spread:?}"
    );
}

#[tokio::test]
async fn blog_scenario_b_runs_b_in_cluster2_and_c_after_a_and_b() {
    let Some((ns, client, _pieces)) = argo_with_pieces("scenario_b").await else {
        return;
    };
    let started = Instant::now();
    let name = argo::submit_yaml(
        &client,
        &ns.name,
        &argo::blog::scenario_b(argo::blog::Steps::OnFakeNodes { run_for: "2s" }),
    )
    .await
    .unwrap();
    let status = argo::wait_finished(&client, &ns.name, &name, TIMEOUT)
        .await
        .unwrap();
    eprintln!(
        "scenario_b: {name} {} in {:.1} s",
        status.phase,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(status.phase, "Succeeded", "{:#}", status.raw);
    let pods = argo::pods(&client, &ns.name, &name).await.unwrap();
    let proxies: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.labels().contains_key(contract::PROXY_LABEL))
        .collect();
    assert_eq!(proxies.len(), 1, "only B is elected");
    assert_eq!(proxies[0].annotations()[TARGET_CLUSTER], "cluster2");
    assert_eq!(delegates_per_cluster(&ns).await["cluster2"], 1);
    let time = |step: &str, field: &str| {
        let node = status.node(step).unwrap();
        status.raw["nodes"][&node.id][field]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        time("B", "finishedAt") <= time("C", "startedAt"),
        "{:#}",
        status.raw
    );
    assert!(
        time("A", "finishedAt") <= time("C", "startedAt"),
        "{:#}",
        status.raw
    );
}

#[tokio::test]
async fn an_output_of_a_step_run_in_cluster2_reaches_the_next_step_and_a_failure_keeps_its_code() {
    let Some((ns, client, _pieces)) = argo_with_pieces("outputs").await else {
        return;
    };
    let value = format!("from-cluster2-{}", std::process::id());
    let name = argo::submit_yaml(
        &client,
        &ns.name,
        &format!(
            r#"
metadata:
  generateName: outputs-
spec:
  entrypoint: main
  templates:
  - name: main
    steps:
    - - name: a
        template: produce
    - - name: b
        template: consume
        arguments:
          parameters:
          - name: x
            value: "{{{{steps.a.outputs.parameters.x}}}}"
    - - name: c
        template: fail
      - name: d
        template: fail-in-init
  - name: produce
    metadata:
      annotations:
        multicluster.admiralty.io/elect: ""
        multicluster.admiralty.io/clustername: cluster2
    container:
      image: busybox
      command: [sh, -c, "echo -n {value} > /tmp/x"]
    outputs:
      parameters:
      - name: x
        valueFrom:
          path: /tmp/x
  - name: consume
    metadata:
      annotations:
        {run_for}: 1s
    inputs:
      parameters:
      - name: x
    container:
      image: busybox
      command: [echo]
      args: ["got {{{{inputs.parameters.x}}}}"]
  - name: fail
    metadata:
      annotations:
        multicluster.admiralty.io/elect: ""
        multicluster.admiralty.io/clustername: cluster2
        {run_for}: 1s
        {exit_code}: "3"
        {message}: disk full
    container:
      image: busybox
      command: [sh, -c, "echo disk full >&2; exit 3"]
  - name: fail-in-init
    metadata:
      annotations:
        multicluster.admiralty.io/elect: ""
        multicluster.admiralty.io/clustername: cluster2
        {run_for}: 1s
        {init_exit_code}: "2"
        {init_message}: no artifact
    container:
      image: busybox
      command: [sh, -c, "true"]
"#,
            run_for = lifecycle::RUN_FOR,
            exit_code = lifecycle::exit_code_of("main"),
            message = lifecycle::message_of("main"),
            init_exit_code = lifecycle::exit_code_of("init"),
            init_message = lifecycle::message_of("init"),
        ),
    )
    .await
    .unwrap();

    // Step a's delegate runs in cluster2; there its wait container reports the output, as
    // Argo's executor does, into the task result delegate-sync keeps there; then it ends.
    let proxy_a = argo::wait_for_step_pod(&client, &ns.name, &name, "a", TIMEOUT)
        .await
        .unwrap();
    let (cluster, delegate) = delegate_of(&ns, &proxy_a.name_any()).await;
    assert_eq!(cluster, "cluster2");
    let workflow_uid = argo::workflows(&client, &ns.name)
        .get(&name)
        .await
        .unwrap()
        .uid()
        .unwrap();
    let cluster2 = TestEnv::get()
        .await
        .unwrap()
        .client("cluster2")
        .await
        .unwrap();
    argo::play_executor(
        &cluster2,
        &ns.name,
        &delegate.annotations()[ANNOTATION_NODE_ID],
        &name,
        &workflow_uid,
        json!({ "parameters": [{ "name": "x", "value": value, "valueFrom": { "path": "/tmp/x" } }] }),
    )
    .await
    .unwrap();
    ns.api::<Pod>("cluster2")
        .await
        .unwrap()
        .patch(
            &delegate.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "annotations": { lifecycle::RUN_FOR: "0s" } } })),
        )
        .await
        .unwrap();

    let status = argo::wait_finished(&client, &ns.name, &name, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(
        status.node("a").unwrap().output_parameter("x"),
        Some(value.as_str()),
        "{:#}",
        status.raw
    );
    let pod_b = argo::wait_for_step_pod(&client, &ns.name, &name, "b", TIMEOUT)
        .await
        .unwrap();
    let main = pod_b
        .spec
        .unwrap()
        .containers
        .into_iter()
        .find(|c| c.name == "main")
        .unwrap();
    assert!(
        main.args
            .unwrap_or_default()
            .contains(&format!("got {value}")),
        "step b does not get a's output"
    );
    // Step c failed in cluster2: Argo shows the delegate's exit code and message.
    assert_eq!(status.phase, "Failed", "{:#}", status.raw);
    let c = status.node("c").unwrap();
    assert_eq!(c.phase, "Failed");
    assert!(
        c.message.contains("exit code 3") && c.message.contains("disk full"),
        "{}",
        c.message
    );
    // Step d's delegate failed in Argo's init container in cluster2 and never ran main: the
    // proxy's main reports it with the init container's code and message.
    let d = status.node("d").unwrap();
    assert_eq!(d.phase, "Failed", "{:#}", status.raw);
    assert!(
        d.message.contains("init: Error (exit code 2): no artifact"),
        "{}",
        d.message
    );
}

#[tokio::test]
async fn terminating_or_deleting_a_workflow_stops_its_delegates() {
    let Some((ns, client, _pieces)) = argo_with_pieces("terminate").await else {
        return;
    };
    let terminated = argo::submit_yaml(&client, &ns.name, &forever("terminated"))
        .await
        .unwrap();
    let deleted = argo::submit_yaml(&client, &ns.name, &forever("deleted"))
        .await
        .unwrap();
    let proxies = ns.api::<Pod>("cluster1").await.unwrap();
    let delegates = ns.api::<Pod>("cluster2").await.unwrap();
    let mut running = BTreeMap::new();
    for wf in [&terminated, &deleted] {
        let proxy = argo::wait_for_pod(&client, &ns.name, wf, TIMEOUT, |_| true)
            .await
            .unwrap();
        // Argo will exec this into each running container to stop it.
        for container in ["main", "wait"] {
            assert_eq!(
                proxy.annotations()[&format!("workflows.argoproj.io/kill-cmd-{container}")],
                r#"["/proxy-waiter","kill","%d"]"#
            );
        }
        let (_, delegate) = delegate_of(&ns, &proxy.name_any()).await;
        running.insert(wf.clone(), (proxy.name_any(), delegate.name_any()));
    }

    // `argo terminate`; Argo execs `proxy-waiter kill 15` into main and wait, and the kubelet
    // reports them ended with 143 (kwok runs no exec: the test reports it).
    let started = Instant::now();
    argo::terminate(&client, &ns.name, &terminated)
        .await
        .unwrap();
    let (proxy, delegate) = &running[&terminated];
    let killed = |c: &str| {
        json!({ "name": c, "image": "proxy-waiter", "imageID": "", "ready": false, "restartCount": 0,
                "state": { "terminated": { "exitCode": 143, "reason": "Error",
                                           "message": "stopped by SIGTERM (kill command)" } } })
    };
    proxies
        .patch_status(
            proxy,
            &PatchParams::default(),
            &Patch::Strategic(
                json!({ "status": { "containerStatuses": [killed("main"), killed("wait")] } }),
            ),
        )
        .await
        .unwrap();
    let (stopped_after, status) =
        ends_stopped(&ns, &client, &terminated, proxy, delegate, started).await;
    eprintln!(
        "terminate: delegate gone {:.1} s after terminate; workflow {} after {:.1} s: {}",
        stopped_after.as_secs_f64(),
        status.phase,
        started.elapsed().as_secs_f64(),
        status.message
    );

    // Deleting a running workflow: its proxy goes with it, and so does the delegate.
    let (proxy, delegate) = &running[&deleted];
    argo::workflows(&client, &ns.name)
        .delete(&deleted, &DeleteParams::background())
        .await
        .unwrap();
    wait_for(&delegates, delegate, TIMEOUT, |d: Option<&Pod>| d.is_none())
        .await
        .unwrap();
    wait_for(&proxies, proxy, TIMEOUT, |p: Option<&Pod>| p.is_none())
        .await
        .unwrap();
}

#[tokio::test]
async fn stopping_a_workflow_execs_the_kill_command_into_its_proxy_on_a_real_node() {
    let Some((ns, client, _pieces)) = pieces::argo_scene(
        "stop_real",
        LABEL,
        pieces::Proxies::OnRealNodes,
        argo::Release::V3_7,
    )
    .await
    else {
        return;
    };
    // The step's delegate runs on a fake node of cluster2 (Argo's executor image is not on the
    // real nodes); its proxy runs proxy-waiter on a real node of cluster1.
    let name = argo::submit_yaml(&client, &ns.name, &forever("stopped"))
        .await
        .unwrap();
    let proxies = ns.api::<Pod>("cluster1").await.unwrap();
    let proxy = argo::wait_for_pod(&client, &ns.name, &name, TIMEOUT, |_| true)
        .await
        .unwrap()
        .name_any();
    let (_, delegate) = delegate_of(&ns, &proxy).await;
    let running = wait_for(&proxies, &proxy, TIMEOUT, |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref()?.phase.as_deref()) == Some("Running")
    })
    .await
    .unwrap()
    .unwrap();
    let node = running
        .spec
        .as_ref()
        .unwrap()
        .node_name
        .clone()
        .unwrap_or_default();
    assert!(
        node.contains("-real"),
        "the proxy runs on a real node, not {node}"
    );

    // `argo stop`: the controller execs `/proxy-waiter kill 15` into the proxy's running
    // containers, through cluster1's apiserver and the real node's kubelet.
    let started = Instant::now();
    argo::stop(&client, &ns.name, &name).await.unwrap();
    let killed = wait_for(&proxies, &proxy, TIMEOUT, |p: Option<&Pod>| {
        p.and_then(main_ended).is_some()
    })
    .await
    .unwrap()
    .unwrap();
    let main = main_ended(&killed).unwrap();
    let killed_after = started.elapsed();
    assert_eq!(main.exit_code, 143, "{main:?}");
    assert_eq!(
        main.message.as_deref(),
        Some("stopped by SIGTERM (kill command)")
    );
    let (_, status) =
        ends_stopped(&ns, &client, &name, &proxy, &delegate.name_any(), started).await;
    eprintln!(
        "stop: main ended 143 {:.1} s after `argo stop`; delegate gone and workflow {} after {:.1} s: {}",
        killed_after.as_secs_f64(),
        status.phase,
        started.elapsed().as_secs_f64(),
        status.message
    );
}

/// How the proxy's `main` ended, once its kubelet reports it.
fn main_ended(proxy: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerStateTerminated> {
    proxy
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == "main")?
        .state
        .as_ref()?
        .terminated
        .clone()
}

/// How a stopped step ends: its delegate deleted, its workflow Failed, its proxy's result a
/// stop. Returns how long after `started` the delegate was gone, and the workflow's status.
async fn ends_stopped(
    ns: &TestNamespace,
    client: &Client,
    workflow: &str,
    proxy: &str,
    delegate: &str,
    started: Instant,
) -> (Duration, argo::WorkflowStatus) {
    let delegates = ns.api::<Pod>("cluster2").await.unwrap();
    wait_for(&delegates, delegate, TIMEOUT, |d: Option<&Pod>| d.is_none())
        .await
        .unwrap();
    let gone_after = started.elapsed();
    let status = argo::wait_finished(client, &ns.name, workflow, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(status.phase, "Failed", "{:#}", status.raw);
    let proxies = ns.api::<Pod>("cluster1").await.unwrap();
    let stopped = wait_for(&proxies, proxy, TIMEOUT, |p: Option<&Pod>| {
        p.is_some_and(|p| p.annotations().contains_key(RESULT))
    })
    .await
    .unwrap()
    .unwrap();
    let result = &stopped.annotations()[RESULT];
    assert!(result.contains("Stopped"), "{result}");
    (gone_after, status)
}
