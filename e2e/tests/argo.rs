//! The baseline for the Argo scenarios, without any piece of ours: Argo's real
//! workflow-controller (v3.7.18) runs on the test bed's cluster1, its step pods run on kwok's
//! fake nodes and end by the test bed's lifecycle annotations, and outputs travel the way
//! v3.6+ reads them, through a WorkflowTaskResult written as the executor's `wait` container
//! writes it (played by the test, since no container runs).

use std::time::{Duration, Instant};

use e2e::{
    TestEnv,
    argo::{self, ANNOTATION_NODE_ID},
    lifecycle,
    support::wait_for,
};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, ResourceExt as _,
    api::{Patch, PatchParams},
    runtime::conditions::is_pod_running,
};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(90);

/// Installs Argo in cluster1 (the task-result CRD in cluster2) and starts its controller, or
/// finds the one a parallel test started. `None` (the test passes) when the controller is not
/// built.
async fn argo_on_cluster1(test: &str) -> Option<(&'static TestEnv, Client)> {
    if !argo::available() {
        eprintln!(
            "skipping {test}: Argo's workflow-controller is not built \
             (target/tools/bin/workflow-controller; `make tools` or `e2e/tools/build.sh argo` \
             builds it, and `make test` always does)"
        );
        return None;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = TestEnv::get().await.unwrap();
    let testbed = env.testbed().unwrap();
    let started = Instant::now();
    argo::install(&testbed, "cluster1", &["cluster2"])
        .await
        .unwrap();
    let installed = started.elapsed();
    let controller = argo::start(&testbed, "cluster1").await.unwrap();
    eprintln!(
        "{test}: Argo installed in {:.1} s; controller {} (pid {}) ready after {:.1} s more; log {}",
        installed.as_secs_f64(),
        if controller.started {
            "started"
        } else {
            "found running"
        },
        controller.pid,
        (started.elapsed() - installed).as_secs_f64(),
        controller.log.display()
    );
    Some((env, env.client("cluster1").await.unwrap()))
}

#[tokio::test]
async fn two_steps_run_one_after_the_other_and_the_workflow_succeeds() {
    let Some((env, client)) = argo_on_cluster1("two_steps").await else {
        return;
    };
    let ns = env.namespace("argo-steps").await.unwrap();
    let started = Instant::now();
    let name = argo::submit(
        &client,
        &ns.name,
        &json!({
            "metadata": { "generateName": "two-steps-" },
            "spec": {
                "entrypoint": "main",
                "templates": [
                    { "name": "main", "steps": [
                        [{ "name": "a", "template": "work" }],
                        [{ "name": "b", "template": "work" }],
                    ]},
                    {
                        "name": "work",
                        "metadata": { "annotations": { lifecycle::RUN_FOR: "1s" } },
                        "container": { "image": "busybox", "command": ["sh", "-c", "true"] },
                    },
                ],
            },
        }),
    )
    .await
    .unwrap();
    let status = argo::wait_finished(&client, &ns.name, &name, TIMEOUT)
        .await
        .unwrap();
    eprintln!(
        "two_steps: {name} {} in {:.1} s",
        status.phase,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(status.phase, "Succeeded", "{:#}", status.raw);
    let (a, b) = (status.node("a").unwrap(), status.node("b").unwrap());
    assert_eq!(
        (a.phase.as_str(), b.phase.as_str()),
        ("Succeeded", "Succeeded")
    );
    assert_eq!((a.type_.as_str(), b.type_.as_str()), ("Pod", "Pod"));
    let ended = |node: &argo::NodeStatus, field: &str| {
        status.raw["nodes"][&node.id][field]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        ended(a, "finishedAt") <= ended(b, "startedAt"),
        "b started before a finished: {:#}",
        status.raw
    );
    assert_eq!(argo::pods(&client, &ns.name, &name).await.unwrap().len(), 2);
}

#[tokio::test]
async fn an_output_parameter_reported_in_a_task_result_reaches_the_next_step() {
    let Some((env, client)) = argo_on_cluster1("output_parameter").await else {
        return;
    };
    let ns = env.namespace("argo-outputs").await.unwrap();
    let value = format!("hello-{}", std::process::id());
    let started = Instant::now();
    // Step a runs until the test ends it (no run-for): the executor reports while it runs.
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
  - name: produce
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
"#,
            run_for = lifecycle::RUN_FOR,
        ),
    )
    .await
    .unwrap();

    let pod_a = argo::wait_for_step_pod(&client, &ns.name, &name, "a", TIMEOUT)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    wait_for(&pods, &pod_a.name_any(), TIMEOUT, is_pod_running())
        .await
        .unwrap();
    let node_id = pod_a.annotations()[ANNOTATION_NODE_ID].clone();
    let workflow_uid = argo::workflows(&client, &ns.name)
        .get(&name)
        .await
        .unwrap()
        .uid()
        .unwrap();
    let running = started.elapsed();
    // What the wait container does when main exited with /tmp/x holding the value.
    argo::play_executor(
        &client,
        &ns.name,
        &node_id,
        &name,
        &workflow_uid,
        json!({ "parameters": [{ "name": "x", "value": value, "valueFrom": { "path": "/tmp/x" } }] }),
    )
    .await
    .unwrap();
    let result = argo::task_results(&client, &ns.name)
        .get(&node_id)
        .await
        .unwrap();
    assert_eq!(
        result.labels()[argo::LABEL_REPORT_OUTPUTS_COMPLETED],
        "true"
    );
    assert_eq!(result.labels()[argo::LABEL_WORKFLOW], name);
    // Then the pod ends, as it does once its wait container exits.
    pods.patch(
        &pod_a.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "annotations": { lifecycle::RUN_FOR: "0s" } } })),
    )
    .await
    .unwrap();

    let status = argo::wait_finished(&client, &ns.name, &name, TIMEOUT)
        .await
        .unwrap();
    eprintln!(
        "output_parameter: {name} {} in {:.1} s (step a's pod running after {:.1} s)",
        status.phase,
        started.elapsed().as_secs_f64(),
        running.as_secs_f64()
    );
    assert_eq!(status.phase, "Succeeded", "{:#}", status.raw);
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
    let args = main.args.unwrap_or_default();
    assert!(
        args.contains(&format!("got {value}")),
        "step b's main container does not get the value: {args:?}"
    );
}

#[tokio::test]
async fn stop_runs_the_exit_handler_and_terminate_does_not() {
    let Some((env, client)) = argo_on_cluster1("stop_terminate").await else {
        return;
    };
    let ns = env.namespace("argo-shutdown").await.unwrap();
    // A step that runs until deleted, and an exit handler that ends after 1 s.
    let workflow = json!({
        "metadata": { "generateName": "shutdown-" },
        "spec": {
            "entrypoint": "forever",
            "onExit": "bye",
            "templates": [
                { "name": "forever", "container": { "image": "busybox", "command": ["sleep", "1d"] } },
                {
                    "name": "bye",
                    "metadata": { "annotations": { lifecycle::RUN_FOR: "1s" } },
                    "container": { "image": "busybox", "command": ["true"] },
                },
            ],
        },
    });
    let started = Instant::now();
    let to_stop = argo::submit(&client, &ns.name, &workflow).await.unwrap();
    let to_terminate = argo::submit(&client, &ns.name, &workflow).await.unwrap();
    for name in [&to_stop, &to_terminate] {
        argo::wait_status(&client, &ns.name, name, TIMEOUT, |s| s.phase == "Running")
            .await
            .unwrap();
    }
    argo::stop(&client, &ns.name, &to_stop).await.unwrap();
    argo::terminate(&client, &ns.name, &to_terminate)
        .await
        .unwrap();
    let stopped = argo::wait_finished(&client, &ns.name, &to_stop, TIMEOUT)
        .await
        .unwrap();
    let terminated = argo::wait_finished(&client, &ns.name, &to_terminate, TIMEOUT)
        .await
        .unwrap();
    eprintln!(
        "stop_terminate: both ended in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        (stopped.phase.as_str(), stopped.message.as_str()),
        ("Failed", "Stopped with strategy 'Stop'"),
        "{:#}",
        stopped.raw
    );
    assert_eq!(
        (terminated.phase.as_str(), terminated.message.as_str()),
        ("Failed", "Stopped with strategy 'Terminate'"),
        "{:#}",
        terminated.raw
    );
    let exit_handler = |s: &argo::WorkflowStatus| {
        s.nodes
            .values()
            .find(|n| n.name.ends_with(".onExit"))
            .map(|n| n.phase.clone())
    };
    assert_eq!(
        exit_handler(&stopped).as_deref(),
        Some("Succeeded"),
        "{:#}",
        stopped.raw
    );
    assert_eq!(exit_handler(&terminated), None, "{:#}", terminated.raw);
    // Shutting down a completed Workflow is refused, as by the CLI.
    let refused = argo::stop(&client, &ns.name, &to_terminate).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("completed")),
        "{refused:?}"
    );
}
