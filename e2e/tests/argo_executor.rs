//! Argo's real executor (argoexec v3.7.18 and v4.0.5, built by `make tools`, imported by every
//! real node)
//! in step pods on the test bed's real nodes, with nothing played by the test: the `init`,
//! `wait` and `main` (emissary) containers run, the `wait` container writes the step's outputs
//! into a WorkflowTaskResult through its cluster's apiserver (reached through the node's
//! gateway, at the `kubernetes` Service's address), and Argo's controller reads them.
//!
//! The same workflow runs twice: as Argo runs it, in cluster1, and with every step elected and
//! sent to cluster2, where the delegates run the real executor, delegate-sync mirrors their
//! task results into cluster1 and the proxies end as their delegates did. What Argo records of
//! each step must be the same.

mod pieces;

use std::{collections::BTreeMap, time::Duration};

use e2e::{
    TestNamespace,
    argo::{self, Release, StepOutcome},
    nodes,
};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Client, ResourceExt as _,
    api::{DynamicObject, ListParams},
};

const TIMEOUT: Duration = Duration::from_secs(180);
const LABEL: &str = "argo-executor";

/// A workflow of an output parameter and a result read by the next step, and a step that fails
/// with its own code and message.
fn workflow(prefix: &str) -> String {
    format!(
        r#"
metadata:
  generateName: {prefix}-
spec:
  entrypoint: main
  templates:
  - name: main
    steps:
    - - name: produce
        template: produce
    - - name: consume
        template: consume
        arguments:
          parameters:
          - name: x
            value: "{{{{steps.produce.outputs.parameters.x}}}}"
          - name: r
            value: "{{{{steps.produce.outputs.result}}}}"
    - - name: fail
        template: fail
        continueOn:
          failed: true
  - name: produce
    container:
      image: {busybox}
      command: [sh, -c, "echo -n forty-two > /tmp/x; echo made forty-two"]
    outputs:
      parameters:
      - name: x
        valueFrom:
          path: /tmp/x
  - name: consume
    inputs:
      parameters:
      - name: x
      - name: r
    container:
      image: {busybox}
      command: [sh, -c]
      args: ['test "{{{{inputs.parameters.x}}}}" = forty-two && test "{{{{inputs.parameters.r}}}}" = "made forty-two" && echo consumed']
  - name: fail
    container:
      image: {busybox}
      command: [sh, -c, "echo disk full >&2; exit 3"]
"#,
        busybox = nodes::BUSYBOX_IMAGE,
    )
}

/// Runs `yaml` on `release`, on real nodes (every step elected to cluster2 when `elect`), to
/// its end and returns what Argo recorded of each step.
async fn run(
    client: &Client,
    ns: &TestNamespace,
    release: Release,
    yaml: &str,
    elect: bool,
) -> BTreeMap<String, StepOutcome> {
    let mut workflow: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
    release.claim(&mut workflow);
    argo::on_real_nodes(&mut workflow);
    if elect {
        argo::elect_every_step(&mut workflow, "cluster2");
    }
    let name = argo::submit(client, &ns.name, &workflow).await.unwrap();
    let status = argo::wait_finished(client, &ns.name, &name, TIMEOUT)
        .await
        .unwrap();
    eprintln!("{name}: {} {:#}", status.phase, status.raw);
    status.step_outcomes(&name)
}

#[tokio::test]
async fn on_argo_3_7_a_step_proxied_to_cluster2_ends_as_at_home_with_the_real_executor() {
    proxied_steps_end_as_at_home(Release::V3_7).await;
}

#[tokio::test]
async fn on_argo_4_0_a_step_proxied_to_cluster2_ends_as_at_home_with_the_real_executor() {
    proxied_steps_end_as_at_home(Release::V4_0).await;
}

async fn proxied_steps_end_as_at_home(release: Release) {
    let Some((ns, client, _pieces)) =
        pieces::argo_scene(LABEL, LABEL, pieces::Proxies::OnRealNodes, release).await
    else {
        return;
    };
    let env = e2e::TestEnv::get().await.unwrap();

    let at_home = run(&client, &ns, release, &workflow("home"), false).await;
    let expected = [
        ("produce", "Succeeded", "0"),
        ("consume", "Succeeded", "0"),
        ("fail", "Failed", "3"),
    ];
    for (step, phase, code) in expected {
        let outcome = at_home
            .iter()
            .find(|(name, _)| name.ends_with(&format!(".{step} (Pod)")))
            .map(|(_, o)| o)
            .unwrap_or_else(|| panic!("no step {step}: {at_home:?}"));
        assert_eq!(outcome.phase, phase, "{step} at home: {outcome:?}");
        assert_eq!(
            outcome.exit_code.as_deref(),
            Some(code),
            "{step}: {outcome:?}"
        );
    }
    assert_eq!(
        at_home["[0].produce (Pod)"]
            .parameters
            .get("x")
            .map(String::as_str),
        Some("forty-two"),
        "Argo's own executor reported the output parameter: {at_home:?}"
    );

    let proxied = run(&client, &ns, release, &workflow("proxied"), true).await;
    assert_eq!(
        proxied, at_home,
        "every step ends through its proxy as it ends at home"
    );

    // The proxied steps ran in cluster2, Argo's executor in each, on the real node; there
    // the executor wrote each step's task result itself.
    let delegates: Vec<Pod> = ns
        .api::<Pod>("cluster2")
        .await
        .unwrap()
        .list(&ListParams::default().labels("multicluster.admiralty.io/delegate=true"))
        .await
        .unwrap()
        .items;
    assert_eq!(delegates.len(), 3, "one delegate per step in cluster2");
    for delegate in &delegates {
        let spec = delegate.spec.as_ref().unwrap();
        assert!(
            spec.node_name
                .as_deref()
                .is_some_and(|n| n.contains("-real")),
            "{} ran on a real node",
            delegate.name_any()
        );
        let images: Vec<(&str, Option<&str>)> = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .map(|c| (c.name.as_str(), c.image.as_deref()))
            .collect();
        for name in ["init", "wait"] {
            assert!(
                images.contains(&(name, Some(release.executor_image().as_str()))),
                "{} runs Argo's executor in {name}: {images:?}",
                delegate.name_any()
            );
        }
        let ended = delegate
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten()
            .all(|c| c.state.as_ref().is_some_and(|s| s.terminated.is_some()));
        assert!(
            ended,
            "{}: every container ran and ended",
            delegate.name_any()
        );
    }
    let written: Vec<DynamicObject> =
        argo::task_results(&env.client("cluster2").await.unwrap(), &ns.name)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
    let by_executor = written
        .iter()
        .filter(|r| {
            r.labels()
                .get(argo::LABEL_REPORT_OUTPUTS_COMPLETED)
                .map(String::as_str)
                == Some("true")
                && r.managed_fields()
                    .iter()
                    .any(|f| f.manager.as_deref() == Some("argoexec"))
        })
        .count();
    assert_eq!(
        by_executor,
        3,
        "the executor in each delegate wrote its outputs in cluster2: {:#?}",
        written
            .iter()
            .map(|r| (
                r.labels(),
                r.managed_fields()
                    .iter()
                    .map(|f| f.manager.clone())
                    .collect::<Vec<_>>(),
                &r.data
            ))
            .collect::<Vec<_>>()
    );
}
