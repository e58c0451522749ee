//! delegate-sync against the test bed: cluster1 is the source, cluster2 (and cluster1 itself)
//! the targets. Proxies are made here as the webhook makes them (label, finalizer, sealed
//! manifest) so that this test needs no webhook.

use std::{collections::BTreeMap, time::Duration};

use contract::{
    CLEANUP_FINALIZER, CLUSTER_NAME, DELEGATE_NAME, ELECT, PROXY_LABEL, RESULT, SOURCEPOD_MANIFEST,
    TARGET_CLUSTER, manifest::ManifestKey,
};
use delegate_sync::args::{Config, TargetSpec};
use e2e::{TestEnv, TestNamespace, lifecycle, support::wait_for};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::json;

const KEY: &[u8] = b"delegate-sync-tests-key-0123456789abcdef";

/// Runs the controller in this process until dropped.
struct Controller {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Controller {
    fn start(env: &TestEnv) -> Self {
        let kubeconfig = env.kubeconfig().clone();
        let config = Config {
            cluster_name: "cluster1".into(),
            kubeconfig: Some(kubeconfig.clone()),
            context: Some("cluster1".into()),
            targets: vec![
                TargetSpec {
                    name: "cluster1".into(),
                    kubeconfig: None,
                    context: None,
                },
                TargetSpec {
                    name: "cluster2".into(),
                    kubeconfig: Some(kubeconfig),
                    context: Some("cluster2".into()),
                },
            ],
            key: ManifestKey::from_bytes(KEY).unwrap(),
            pending_retry: Duration::from_secs(1),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(delegate_sync::run(config, async move {
            let _ = stopped.await;
        }));
        Self {
            stop: Some(stop),
            task,
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

/// A proxy as the webhook would store it, for a pod that runs `run_for` and ends with the
/// given exit code in the delegate's cluster.
fn proxy(
    ns: &TestNamespace,
    name: &str,
    pinned: Option<&str>,
    run_for: &str,
    exit_code: i32,
) -> Pod {
    let mut annotations = BTreeMap::from([
        (ELECT.to_string(), String::new()),
        (lifecycle::RUN_FOR.to_string(), run_for.to_string()),
        (lifecycle::exit_code_of("main"), exit_code.to_string()),
        (
            lifecycle::message_of("main"),
            "from the delegate".to_string(),
        ),
    ]);
    if let Some(cluster) = pinned {
        annotations.insert(CLUSTER_NAME.into(), cluster.into());
    }
    let saved = json!({
        "metadata": { "name": name, "namespace": ns.name, "annotations": annotations, "labels": { "app": "test" } },
        "spec": { "restartPolicy": "Never", "containers": [{ "name": "main", "image": "busybox" }] },
    });
    annotations.insert(
        SOURCEPOD_MANIFEST.into(),
        ManifestKey::from_bytes(KEY)
            .unwrap()
            .seal(&ns.name, &saved.to_string()),
    );
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": { PROXY_LABEL: "true", "app": "test" },
            "annotations": annotations,
            "finalizers": [CLEANUP_FINALIZER],
        },
        "spec": { "restartPolicy": "Never", "containers": [{ "name": "main", "image": "proxy-waiter" }] },
    }))
    .unwrap()
}

fn phase(pod: Option<&Pod>) -> Option<&str> {
    pod.and_then(|p| p.status.as_ref()?.phase.as_deref())
}

#[tokio::test]
async fn pinned_proxy_runs_in_cluster2_ends_with_its_code_and_cleans_up() {
    let env = TestEnv::get().await.unwrap();
    let ns = env.namespace("dsync").await.unwrap();
    let _controller = Controller::start(env);
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

    proxies
        .delete("step", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        &delegates,
        &delegate_name,
        Duration::from_secs(30),
        |d: Option<&Pod>| d.is_none(),
    )
    .await
    .unwrap();
    wait_for(
        &proxies,
        "step",
        Duration::from_secs(30),
        |p: Option<&Pod>| p.is_none(),
    )
    .await
    .unwrap();
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
