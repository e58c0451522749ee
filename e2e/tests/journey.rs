//! The whole journey on the test bed, through the real pieces: a Job whose pod template is
//! elected is admitted by the webhook (over TLS, registered with the apiserver), its proxies
//! are delegated by delegate-sync to cluster2, and the real Job controller judges the proxies
//! by their delegates' exit codes, exactly as if the pods had run locally.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use contract::manifest::ManifestKey;
use delegate_sync::args::TargetSpec;
use e2e::{
    TestEnv, lifecycle,
    support::{unique_name, wait_for},
};
use k8s_openapi::api::{batch::v1::Job, core::v1::Pod};
use kube::api::{ListParams, PostParams};
use serde_json::json;

const KEY: &[u8] = b"journey-test-manifest-key-0123456789abcd";
const DAY: Duration = Duration::from_secs(86_400);

struct Running {
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    _registration: e2e::WebhookRegistration,
    dir: std::path::PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts the webhook (registered for namespaces labelled `journey=<selector>`) and
/// delegate-sync (source cluster1; targets cluster1 and cluster2).
async fn start_pieces(env: &TestEnv, selector: &str) -> Running {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let dir = e2e::testbed::workspace_target_dir().join(format!("journey-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = certs::Authority::generate("journey-ca", DAY).unwrap();
    ca.issue_serving("webhook", &["127.0.0.1"], DAY)
        .unwrap()
        .write(&dir, "tls")
        .unwrap();

    let config = webhook::args::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        path: "/mutate".into(),
        tls_cert_file: dir.join("tls.crt"),
        tls_private_key_file: dir.join("tls.key"),
        settings: webhook::mutate::ProxySettings {
            waiter_image: "proxy-waiter:journey".into(),
            ..Default::default()
        },
        key: ManifestKey::from_bytes(KEY).unwrap(),
        excluded_namespaces: vec!["kube-system".into()],
        max_body_bytes: 4 << 20,
        max_concurrent_requests: 8,
        limits: webhook::server::Limits {
            max_connections: 64,
            handshake_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(5),
        },
    };
    let bound = webhook::bind(config, provider).await.unwrap();
    let port = bound.local_addr().unwrap().port();
    let (stop_webhook, webhook_stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(bound.serve(async move {
        let _ = webhook_stopped.await;
    }));

    let registration = e2e::WebhookRegistration::create(
        env,
        "cluster1",
        port,
        &ca.pem().cert,
        BTreeMap::from([
            ("multicluster-scheduler".into(), "enabled".into()),
            ("journey".into(), selector.to_string()),
        ]),
    )
    .await
    .unwrap();

    let kubeconfig = env.kubeconfig().clone();
    let sync_config = delegate_sync::args::Config {
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
                kubeconfig: Some(kubeconfig.clone()),
                context: Some("cluster2".into()),
            },
        ],
        key: ManifestKey::from_bytes(KEY).unwrap(),
        pending_retry: Duration::from_secs(600),
        cluster_lost_timeout: Duration::from_secs(3600),
        leader_election: None,
        concurrency: 16,
        admin_address: "127.0.0.1:0".parse().unwrap(),
    };
    let (stop_sync, sync_stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(delegate_sync::run(sync_config, async move {
        let _ = sync_stopped.await;
    }));
    Running {
        stops: vec![stop_webhook, stop_sync],
        _registration: registration,
        dir,
    }
}

fn job(name: &str, exit_code: &str) -> Job {
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "parallelism": 2,
            "completions": 2,
            "backoffLimit": 0,
            "template": {
                "metadata": { "annotations": {
                    contract::ELECT: "",
                    contract::CLUSTER_NAME: "cluster2",
                    lifecycle::RUN_FOR: "2s",
                    lifecycle::exit_code_of("main"): exit_code,
                }},
                "spec": { "restartPolicy": "Never", "containers": [{ "name": "main", "image": "busybox" }] },
            },
        },
    }))
    .unwrap()
}

fn job_condition(job: Option<&Job>) -> Option<String> {
    job?.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.status == "True" && (c.type_ == "Complete" || c.type_ == "Failed"))
        .map(|c| c.type_.clone())
}

#[tokio::test]
async fn jobs_of_elected_pods_are_judged_by_their_delegates_exit_codes() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = TestEnv::get().await.unwrap();
    let selector = unique_name("sel");
    let ns = env
        .namespace_with_labels(
            "journey",
            BTreeMap::from([
                ("multicluster-scheduler".into(), "enabled".into()),
                ("journey".into(), selector.clone()),
            ]),
        )
        .await
        .unwrap();
    let _pieces = start_pieces(env, &selector).await;
    // The apiserver picks a new webhook configuration up within moments.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let jobs = ns.api::<Job>("cluster1").await.unwrap();
    jobs.create(&PostParams::default(), &job("succeeds", "0"))
        .await
        .unwrap();
    jobs.create(&PostParams::default(), &job("fails", "3"))
        .await
        .unwrap();
    let decided = |j: Option<&Job>| job_condition(j).is_some();
    let succeeded = wait_for(&jobs, "succeeds", Duration::from_secs(60), decided)
        .await
        .unwrap();
    let failed = wait_for(&jobs, "fails", Duration::from_secs(60), decided)
        .await
        .unwrap();
    assert_eq!(
        job_condition(succeeded.as_ref()).as_deref(),
        Some("Complete")
    );
    assert_eq!(job_condition(failed.as_ref()).as_deref(), Some("Failed"));

    // The pods that ran in cluster2 were delegates; the Job's pods in cluster1 were proxies.
    let delegates = ns
        .api::<Pod>("cluster2")
        .await
        .unwrap()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert!(
        delegates.len() >= 3,
        "{} delegates in cluster2",
        delegates.len()
    );
    let proxies = ns
        .api::<Pod>("cluster1")
        .await
        .unwrap()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert!(
        proxies
            .iter()
            .all(|p| p.spec.as_ref().unwrap().containers[0].image.as_deref()
                == Some("proxy-waiter:journey"))
    );
}
