//! A private test bed: `up` is idempotent, `down` stops every process and removes the state,
//! and everything its real node made on the host, and ServiceAccount kubeconfigs carry exactly
//! the ServiceAccount's rights.

use std::time::Duration;

use e2e::{
    Testbed, TestbedConfig,
    support::wait_for,
    testbed::{self, kubeconfig, realnode, workspace_target_dir},
};
use k8s_openapi::api::{
    core::v1::{Pod, ServiceAccount},
    rbac::v1::{Role, RoleBinding},
};
use kube::{Api, api::PostParams};
use serde_json::json;

#[tokio::test]
async fn private_test_bed_is_idempotent_and_stops_cleanly() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = workspace_target_dir().join(format!("testbed-lifecycle-{}", std::process::id()));
    let _cleanup = Cleanup(dir.clone());
    let mut config = TestbedConfig::new(&dir, 1)?;
    config.preset.real_nodes_per_cluster = 1;

    let first = Testbed::up(&config).await?;
    let pids = pids(&dir)?;
    assert_eq!(
        pids.len(),
        5,
        "etcd, apiserver, controller-manager, scheduler, kwok"
    );
    let again = Testbed::up(&config).await?;
    assert_eq!(
        pids,
        self::pids(&dir)?,
        "a second up reuses the running test bed"
    );
    assert_eq!(first.cluster_names(), again.cluster_names());

    service_account_kubeconfig_has_only_granted_rights(&again).await?;
    let node_processes = real_node_runs_pods(&again).await?;
    let prefix = realnode::host_prefix(&dir);
    let shim_sockets = realnode::shim_sockets(&dir);
    assert!(!shim_sockets.is_empty(), "the pods' shims listen");
    assert!(
        !realnode::leftovers(&dir, &prefix).is_empty(),
        "the real node's cgroups, mounts and bridge are found while it runs"
    );

    // A state file from another build (or corrupt) must not leave processes behind.
    std::fs::write(
        dir.join("state.json"),
        r#"{"clusters": "from another build"}"#,
    )?;
    Testbed::down(&dir)?;
    for pid in pids.into_iter().chain(node_processes) {
        // A killed shim is not our child: the machine's init reaps it in its own time.
        assert!(
            !testbed::alive(i32::try_from(pid)?),
            "process {pid} still runs"
        );
    }
    assert!(!dir.exists(), "state removed");
    let left = realnode::leftovers(&dir, &prefix);
    assert!(left.is_empty(), "left on the host: {left:#?}");
    for socket in shim_sockets {
        assert!(!socket.exists(), "shim socket {} left", socket.display());
    }
    Ok(())
}

/// A pod that ended and one that still runs on the real node (so containers, shims, network
/// namespaces and volumes exist when the test bed goes down); the pids of the node's kubelet,
/// containerd, shims and containers.
async fn real_node_runs_pods(testbed: &Testbed) -> anyhow::Result<Vec<i64>> {
    let pods: Api<Pod> = Api::namespaced(testbed.client("cluster1").await?, "default");
    for (name, command) in [("ended", "exit 0"), ("running", "sleep 3600")] {
        let mut pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": name },
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 30,
                "containers": [{ "name": "main", "image": e2e::nodes::BUSYBOX_IMAGE,
                                 "command": ["sh", "-c", command] }],
            },
        }))?;
        e2e::nodes::on_real_nodes(pod.spec.as_mut().expect("a spec"));
        pods.create(&PostParams::default(), &pod).await?;
    }
    let phase = |p: Option<&Pod>| p.and_then(|p| p.status.as_ref()?.phase.clone());
    let timeout = Duration::from_secs(60);
    wait_for(&pods, "ended", timeout, |p: Option<&Pod>| {
        phase(p).as_deref() == Some("Succeeded")
    })
    .await?;
    wait_for(&pods, "running", timeout, |p: Option<&Pod>| {
        phase(p).as_deref() == Some("Running")
    })
    .await?;
    let mut pids: Vec<i64> = testbed.cluster("cluster1")?.real_nodes[0]
        .processes
        .iter()
        .map(|p| i64::from(p.pid))
        .collect();
    pids.extend(
        realnode::shim_pids(testbed.dir())
            .into_iter()
            .map(i64::from),
    );
    Ok(pids)
}

async fn service_account_kubeconfig_has_only_granted_rights(
    testbed: &Testbed,
) -> anyhow::Result<()> {
    let admin = testbed.client("cluster1").await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), "default");
    let account: ServiceAccount =
        serde_json::from_value(json!({ "metadata": { "name": "reader" } }))?;
    accounts.create(&PostParams::default(), &account).await?;

    let text = testbed
        .service_account_kubeconfig("cluster1", "default", "reader", Duration::from_secs(600))
        .await?;
    let path = testbed.dir().join("reader.kubeconfig");
    std::fs::write(&path, text)?;
    let reader = kubeconfig::client(&path, "cluster1").await?;
    let pods: Api<Pod> = Api::namespaced(reader.clone(), "default");
    match pods.list(&Default::default()).await {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => anyhow::bail!("expected 403 before any grant, got {other:?}"),
    }

    let role: Role = serde_json::from_value(json!({
        "metadata": { "name": "pod-reader" },
        "rules": [{ "apiGroups": [""], "resources": ["pods"], "verbs": ["list"] }],
    }))?;
    Api::<Role>::namespaced(admin.clone(), "default")
        .create(&PostParams::default(), &role)
        .await?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": "reader-reads-pods" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader" },
        "subjects": [{ "kind": "ServiceAccount", "name": "reader", "namespace": "default" }],
    }))?;
    Api::<RoleBinding>::namespaced(admin, "default")
        .create(&PostParams::default(), &binding)
        .await?;
    // RBAC changes reach the authorizer's cache shortly after they are stored.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match pods.list(&Default::default()).await {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() > deadline => {
                anyhow::bail!("grant never took effect: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(reader);
    assert!(
        nodes.list(&Default::default()).await.is_err(),
        "no rights beyond the grant"
    );
    Ok(())
}

fn pids(dir: &std::path::Path) -> anyhow::Result<Vec<i64>> {
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json"))?)?;
    Ok(state["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["processes"].as_array().into_iter().flatten())
        .filter_map(|p| p["pid"].as_i64())
        .collect())
}

/// Stops the private test bed even when an assertion fails.
struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Testbed::down(&self.0);
    }
}
