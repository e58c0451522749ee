//! Helpers shared by delegate-sync's test binaries.

#![allow(dead_code)]

use std::{collections::BTreeMap, time::Duration};

use contract::{
    CLEANUP_FINALIZER, CLUSTER_NAME, ELECT, PROXY_LABEL, SOURCEPOD_MANIFEST, manifest::ManifestKey,
};
use delegate_sync::{
    args::{Config, TargetSpec},
    task_results::{NODE_ID, WORKFLOW_LABEL},
};
use e2e::{TestEnv, TestNamespace, lifecycle, support::wait_for};
use k8s_openapi::{
    api::core::v1::Pod,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, ResourceExt as _,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
};
use serde_json::json;

pub const KEY: &[u8] = b"delegate-sync-tests-key-0123456789abcdef";

/// Runs the controller in this process until dropped.
pub struct Controller {
    /// Where its /livez, /readyz and /metrics are served.
    pub admin: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// What tests vary between controllers.
#[derive(Clone, Default)]
pub struct Options {
    /// Default: an hour (no test waits that long).
    pub cluster_lost_timeout: Option<Duration>,
    pub leader_election: Option<delegate_sync::leader::LeaseSettings>,
}

impl Controller {
    pub fn start(env: &TestEnv) -> Self {
        Self::start_with(env, Options::default())
    }

    pub fn start_with(env: &TestEnv, options: Options) -> Self {
        // The controller's logs, shown with a failing test (RUST_LOG to change the level).
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "delegate_sync=info".into()),
            )
            .try_init();
        let admin = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
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
            // Longer than any test waits: pending proxies must be placed by watch events.
            pending_retry: Duration::from_secs(600),
            cluster_lost_timeout: options
                .cluster_lost_timeout
                .unwrap_or(Duration::from_secs(3600)),
            leader_election: options.leader_election,
            concurrency: 16,
            max_log_streams: 100,
            log_relay: true,
            copies: Default::default(),
            admin_address: admin,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(delegate_sync::run(config, async move {
            let _ = stopped.await;
        }));
        Self {
            admin,
            stop: Some(stop),
            task,
        }
    }
}

impl Controller {
    /// Stops it gracefully (a leader releases its Lease) and waits until it has stopped.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = &mut self.task;
        let stopped = tokio::time::timeout(Duration::from_secs(20), task).await;
        assert!(stopped.is_ok(), "the controller did not stop in 20 s");
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
pub fn proxy(
    ns: &TestNamespace,
    name: &str,
    pinned: Option<&str>,
    run_for: &str,
    exit_code: i32,
) -> Pod {
    proxy_requesting(ns, name, pinned, run_for, exit_code, None)
}

/// Like [`proxy`], with a CPU request on the delegate's container.
pub fn proxy_requesting(
    ns: &TestNamespace,
    name: &str,
    pinned: Option<&str>,
    run_for: &str,
    exit_code: i32,
    cpu: Option<&str>,
) -> Pod {
    proxy_with(ns, name, pinned, run_for, exit_code, cpu, &[], &[])
}

/// Like [`proxy_requesting`], with more labels and annotations on the pod (Argo's, say).
#[allow(clippy::too_many_arguments)]
pub fn proxy_with(
    ns: &TestNamespace,
    name: &str,
    pinned: Option<&str>,
    run_for: &str,
    exit_code: i32,
    cpu: Option<&str>,
    labels: &[(&str, &str)],
    more_annotations: &[(&str, &str)],
) -> Pod {
    let resources = match cpu {
        Some(cpu) => json!({ "requests": { "cpu": cpu } }),
        None => json!({}),
    };
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
    annotations.extend(
        more_annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let mut pod_labels = BTreeMap::from([("app".to_string(), "test".to_string())]);
    pod_labels.extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let saved = json!({
        "metadata": { "name": name, "namespace": ns.name, "annotations": annotations, "labels": pod_labels },
        "spec": { "restartPolicy": "Never", "containers": [{ "name": "main", "image": "busybox", "resources": resources }] },
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
            "labels": proxy_labels(&pod_labels),
            "annotations": annotations,
            "finalizers": [CLEANUP_FINALIZER],
        },
        "spec": { "restartPolicy": "Never", "containers": [{ "name": "main", "image": "proxy-waiter" }] },
    }))
    .unwrap()
}

/// `proxy` with another `restartPolicy`, on the proxy and in its sealed manifest.
pub fn with_restart_policy(ns: &TestNamespace, mut proxy: Pod, policy: &str) -> Pod {
    let key = ManifestKey::from_bytes(KEY).unwrap();
    let annotations = proxy.metadata.annotations.as_mut().unwrap();
    let saved = key
        .open(&ns.name, &annotations[SOURCEPOD_MANIFEST])
        .unwrap();
    let mut saved: serde_json::Value = serde_json::from_str(saved).unwrap();
    saved["spec"]["restartPolicy"] = json!(policy);
    annotations.insert(
        SOURCEPOD_MANIFEST.into(),
        key.seal(&ns.name, &saved.to_string()),
    );
    proxy.spec.as_mut().unwrap().restart_policy = Some(policy.into());
    proxy
}

fn proxy_labels(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut labels = labels.clone();
    labels.insert(PROXY_LABEL.into(), "true".into());
    labels
}

pub fn phase(pod: Option<&Pod>) -> Option<&str> {
    pod.and_then(|p| p.status.as_ref()?.phase.as_deref())
}

/// GET of an admin path: (status line, body).
pub async fn admin_get(address: std::net::SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    for _ in 0..50 {
        if let Ok(mut tcp) = tokio::net::TcpStream::connect(address).await {
            let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
            tcp.write_all(request.as_bytes()).await.unwrap();
            let mut text = String::new();
            tcp.read_to_string(&mut text).await.unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            return (
                head.lines().next().unwrap_or_default().to_string(),
                body.to_string(),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("admin port {address} never answered")
}

/// The pod once it runs (a delegate, say); panics after `timeout`.
pub async fn until_running(api: &kube::Api<Pod>, name: &str, timeout: Duration) -> Pod {
    e2e::support::wait_for(api, name, timeout, |p: Option<&Pod>| {
        phase(p) == Some("Running")
    })
    .await
    .unwrap_or_else(|e| panic!("{name} never ran: {e}"))
    .unwrap_or_else(|| panic!("{name} is gone"))
}

/// The proxy once delegate-sync recorded its result; panics after `timeout`.
pub async fn until_result(api: &kube::Api<Pod>, name: &str, timeout: Duration) -> Pod {
    e2e::support::wait_for(api, name, timeout, |p: Option<&Pod>| {
        p.is_some_and(|p| kube::ResourceExt::annotations(p).contains_key(contract::RESULT))
    })
    .await
    .unwrap_or_else(|e| panic!("{name} got no result: {e}"))
    .unwrap_or_else(|| panic!("{name} is gone"))
}

/// Returns once the pod is gone; panics after `timeout`.
pub async fn until_gone(api: &kube::Api<Pod>, name: &str, timeout: Duration) {
    wait_for(api, name, timeout, |p: Option<&Pod>| p.is_none())
        .await
        .unwrap_or_else(|e| panic!("{name} is still there: {e}"));
}

/// Reports the proxy's `main` ended as the kubelet does once Argo's kill command
/// (`proxy-waiter kill 15`) ended it.
pub async fn report_main_killed(proxies: &Api<Pod>, name: &str) {
    let killed = json!({ "status": { "containerStatuses": [{
        "name": "main", "image": "proxy-waiter", "imageID": "", "ready": false, "restartCount": 0,
        "state": { "terminated": { "exitCode": 143, "reason": "Error", "message": "stopped by SIGTERM (kill command)" } },
    }] } });
    proxies
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(&killed))
        .await
        .unwrap_or_else(|e| panic!("cannot report {name}'s main killed: {e}"));
}

/// Argo's WorkflowTaskResult CRD, as the target chart installs it.
pub const CRD: &str =
    include_str!("../../../charts/target/files/argoproj.io_workflowtaskresults.yaml");

pub async fn install_task_result_crd(client: Client) {
    let crd: CustomResourceDefinition = serde_saphyr::from_str(CRD).unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    crds.patch(
        &crd.name_any(),
        &PatchParams::apply("delegate-sync-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
    let established = |c: Option<&CustomResourceDefinition>| {
        c.and_then(|c| c.status.as_ref()?.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            })
    };
    wait_for(&crds, &crd.name_any(), Duration::from_secs(30), established)
        .await
        .unwrap();
}

pub fn task_results(client: Client, ns: &TestNamespace) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("argoproj.io", "v1alpha1", "WorkflowTaskResult"),
        "workflowtaskresults",
    );
    Api::namespaced_with(client, &ns.name, &resource)
}

/// A proxy of an Argo step (node `node_id` of workflow `wf`), pinned to cluster2.
pub fn argo_step(ns: &TestNamespace, name: &str, run_for: &str, node_id: &str) -> Pod {
    proxy_with(
        ns,
        name,
        Some("cluster2"),
        run_for,
        0,
        None,
        &[
            (WORKFLOW_LABEL, "wf"),
            ("workflows.argoproj.io/completed", "false"),
        ],
        &[(NODE_ID, node_id)],
    )
}
