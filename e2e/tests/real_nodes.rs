//! The last hop on real kubelets: proxies run the real `proxy-waiter` image on the test bed's
//! real nodes (containerd, runc, the downward API refreshed by the kubelet itself) and their
//! delegates run busybox on real nodes of the target. What a kubelet reports of the proxy is
//! what Jobs and Argo read: container by container, the delegate's exit code and message; and
//! a delegate container its kubelet restarted shows on the proxy, whose waiter waits on.

mod pieces;

use std::time::{Duration, Instant};

use contract::{CONTAINER_RESTARTS, DELEGATE_NAME, RESULT, result::TERMINATION_MESSAGE_LIMIT};
use e2e::{
    TestEnv, TestNamespace,
    nodes::{self, BUSYBOX_IMAGE},
    support::wait_for,
};
use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{ContainerStateTerminated, Pod},
};
use kube::{
    ResourceExt as _,
    api::{ListParams, LogParams, PostParams},
};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(90);
const LABEL: &str = "real-nodes";

async fn opted_in_namespace(test: &str) -> (&'static TestEnv, TestNamespace, pieces::Running) {
    pieces::real_nodes_scene(test, LABEL, false).await
}

/// An elected pod pinned to cluster2 whose containers run `scripts` (name, shell script), on
/// real nodes, with init containers `inits`.
fn elected_pod(name: &str, inits: &[(&str, &str)], scripts: &[(&str, &str)]) -> Pod {
    let container = |(name, script): &(&str, &str)| json!({ "name": name, "image": BUSYBOX_IMAGE, "command": ["sh", "-c", script] });
    let mut pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": name, "annotations": {
            contract::ELECT: "",
            contract::CLUSTER_NAME: "cluster2",
        }},
        "spec": {
            "restartPolicy": "Never",
            "initContainers": inits.iter().map(container).collect::<Vec<_>>(),
            "containers": scripts.iter().map(container).collect::<Vec<_>>(),
        },
    }))
    .unwrap();
    nodes::on_real_nodes(pod.spec.as_mut().unwrap());
    pod
}

fn terminated(pod: &Pod, container: &str) -> Option<ContainerStateTerminated> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == container)?
        .state
        .as_ref()?
        .terminated
        .clone()
}

fn ended(pod: Option<&Pod>) -> bool {
    pod.and_then(|p| p.status.as_ref()?.phase.as_deref())
        .is_some_and(|phase| phase == "Succeeded" || phase == "Failed")
}

/// Creates the pod, waits until its proxy ended on a real node, and returns the proxy and its
/// delegate as they ended, and how long after the delegate was seen ended the proxy was.
async fn run_to_the_end(ns: &TestNamespace, pod: &Pod) -> (Pod, Pod, Duration) {
    let proxies = ns.api::<Pod>("cluster1").await.unwrap();
    let delegates = ns.api::<Pod>("cluster2").await.unwrap();
    let name = pod.name_any();
    proxies.create(&PostParams::default(), pod).await.unwrap();
    let placed = wait_for(&proxies, &name, TIMEOUT, |p: Option<&Pod>| {
        p.is_some_and(|p| p.annotations().contains_key(DELEGATE_NAME))
    })
    .await
    .unwrap()
    .unwrap();
    let delegate_name = placed.annotations()[DELEGATE_NAME].clone();
    let delegate = wait_for(&delegates, &delegate_name, TIMEOUT, ended)
        .await
        .unwrap()
        .unwrap();
    let delegate_ended = Instant::now();
    let proxy = wait_for(&proxies, &name, TIMEOUT, ended)
        .await
        .unwrap()
        .unwrap();
    (proxy, delegate, delegate_ended.elapsed())
}

fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_proxy_on_a_real_kubelet_ends_container_by_container_like_its_delegate() {
    let (_env, ns, _pieces) = opted_in_namespace("real-journey").await;
    let pod = elected_pod(
        "journey",
        &[("prepare", "echo prepared > /dev/termination-log")],
        &[
            (
                "main",
                "echo working; printf 'disk full' > /dev/termination-log; exit 3",
            ),
            ("sidecar", "printf fine > /dev/termination-log"),
        ],
    );
    let (proxy, delegate, latency) = run_to_the_end(&ns, &pod).await;
    eprintln!(
        "journey: proxy {} on {} ended {:.2} s after its delegate on {} was seen ended",
        proxy.name_any(),
        node_of(&proxy),
        latency.as_secs_f64(),
        node_of(&delegate)
    );
    for pod in [&proxy, &delegate] {
        assert!(
            node_of(pod).contains("-real"),
            "{} ran on a real node, not {}",
            pod.name_any(),
            node_of(pod)
        );
    }
    // What the kubelets report: the delegate's containers, and the proxy's the same.
    for (container, code, message) in [("main", 3, "disk full"), ("sidecar", 0, "fine")] {
        for pod in [&delegate, &proxy] {
            let state = terminated(pod, container)
                .unwrap_or_else(|| panic!("{container} of {} ended", pod.name_any()));
            assert_eq!(state.exit_code, code, "{container} of {}", pod.name_any());
            assert_eq!(
                state.message.as_deref(),
                Some(message),
                "{container} of {}",
                pod.name_any()
            );
        }
    }
    assert_eq!(
        proxy.status.as_ref().unwrap().phase.as_deref(),
        Some("Failed")
    );
    let image = &proxy.spec.as_ref().unwrap().containers[0].image;
    assert!(
        image
            .as_deref()
            .is_some_and(|i| i.starts_with("proxy-waiter:")),
        "{image:?}"
    );
    // The proxy's own log is its delegate's, relayed by delegate-sync, served by the source
    // cluster's kubelet.
    let log = ns
        .api::<Pod>("cluster1")
        .await
        .unwrap()
        .logs(
            &proxy.name_any(),
            &LogParams {
                container: Some("main".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(log, "working\n", "the delegate's main wrote it");
}

#[tokio::test]
async fn a_message_over_4_kib_is_cut_visibly_and_the_kubelet_keeps_the_cut() {
    let (_env, ns, _pieces) = opted_in_namespace("real-message").await;
    // A delegate whose init container fails with a message of the kubelet's full 4 KiB: the
    // proxy's main reports it behind the init container's name, over 4 KiB, so the waiter
    // cuts it, on a character boundary and saying so.
    let filler = "é".repeat(TERMINATION_MESSAGE_LIMIT / 2);
    let script = format!("printf '{filler}' > /dev/termination-log; exit 2");
    let pod = elected_pod("message", &[("init", &script)], &[("main", "exit 0")]);
    let (proxy, delegate, _) = run_to_the_end(&ns, &pod).await;
    let init = delegate
        .status
        .as_ref()
        .and_then(|s| s.init_container_statuses.as_ref())
        .and_then(|s| s.first()?.state.as_ref()?.terminated.clone())
        .expect("the delegate's init container ended");
    assert_eq!(init.exit_code, 2);
    assert_eq!(
        init.message.as_deref(),
        Some(filler.as_str()),
        "the kubelet keeps 4 KiB"
    );

    let main = terminated(&proxy, "main").expect("the proxy's main ended");
    let message = main.message.unwrap_or_default();
    assert_eq!(main.exit_code, 2);
    assert!(
        message.len() <= TERMINATION_MESSAGE_LIMIT,
        "{} bytes",
        message.len()
    );
    assert!(
        message.starts_with("init: Error (exit code 2): éé"),
        "{}",
        &message[..60.min(message.len())]
    );
    assert!(
        message.ends_with("[truncated by proxy-waiter]"),
        "cut visibly: {:?}",
        &message[message.len().saturating_sub(60)..]
    );
    let result = &proxy.annotations()[RESULT];
    assert!(
        result.len() > TERMINATION_MESSAGE_LIMIT,
        "the recorded result keeps the whole message"
    );
}

#[tokio::test]
async fn a_job_on_failure_whose_container_fails_once_completes_and_its_proxy_shows_the_restart() {
    let (_env, ns, _pieces) = opted_in_namespace("real-onfailure").await;
    // The delegate's kubelet restarts the failed container in place (restartPolicy OnFailure);
    // the second run finds the file the first one left and succeeds.
    let mut template = elected_pod(
        "retry",
        &[],
        &[(
            "main",
            "if [ -e /data/ran ]; then exit 0; fi; touch /data/ran; exit 3",
        )],
    );
    let spec = template.spec.as_mut().unwrap();
    spec.restart_policy = Some("OnFailure".into());
    spec.volumes = Some(vec![
        serde_json::from_value(json!({ "name": "data", "emptyDir": {} })).unwrap(),
    ]);
    spec.containers[0].volume_mounts = Some(vec![
        serde_json::from_value(json!({ "name": "data", "mountPath": "/data" })).unwrap(),
    ]);
    let job: Job = serde_json::from_value(json!({
        "metadata": { "name": "retry" },
        "spec": {
            "backoffLimit": 0,
            "template": { "metadata": template.metadata, "spec": template.spec },
        },
    }))
    .unwrap();
    let jobs = ns.api::<Job>("cluster1").await.unwrap();
    jobs.create(&PostParams::default(), &job).await.unwrap();
    let done = wait_for(
        &jobs,
        "retry",
        Duration::from_secs(120),
        |j: Option<&Job>| {
            j.and_then(|j| j.status.as_ref()?.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c.status == "True" && (c.type_ == "Complete" || c.type_ == "Failed")
                    })
                })
        },
    )
    .await
    .unwrap()
    .unwrap();
    let status = done.status.unwrap();
    assert!(
        status
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Complete" && c.status == "True"),
        "the Job completes"
    );
    assert_eq!(
        status.failed.unwrap_or(0),
        0,
        "no failure counted against backoffLimit"
    );
    let proxies = ns
        .api::<Pod>("cluster1")
        .await
        .unwrap()
        .list(&ListParams::default().labels("job-name=retry"))
        .await
        .unwrap()
        .items;
    assert_eq!(proxies.len(), 1, "one pod: the proxy was never replaced");
    let proxy = &proxies[0];
    assert_eq!(
        proxy
            .annotations()
            .get(CONTAINER_RESTARTS)
            .map(String::as_str),
        Some(r#"{"main":1}"#),
        "the delegate's container restart shows on the proxy"
    );
    let proxy_main = proxy
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == "main"))
        .unwrap();
    assert_eq!(
        proxy_main.restart_count, 0,
        "the waiter itself never restarted"
    );
}
