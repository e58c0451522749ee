//! The webhook and delegate-sync started in the test's process, as tests of the whole journey
//! need them (shared by `journey.rs`, `argo_proxies.rs`, `argo_executor.rs` and others).

#![allow(dead_code)]

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use contract::manifest::ManifestKey;
use delegate_sync::args::TargetSpec;
use e2e::TestEnv;

/// The manifest key of the webhook started here (a delegate-sync started by a test needs it).
pub const KEY: &[u8] = b"pieces-test-manifest-key-0123456789abcde";
const DAY: Duration = Duration::from_secs(86_400);

pub struct Running {
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

/// Where the webhook puts proxies.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Proxies {
    /// Fake nodes (the default of the test bed), which end proxies by its kwok stage.
    OnFakeNodes,
    /// The test bed's real nodes, where the real `proxy-waiter` image runs.
    OnRealNodes,
}

/// Argo `release` on cluster1 (the task-result CRD in cluster2), the webhook and delegate-sync
/// with proxies where `proxies` says, and a namespace opted in for `label`; None (the test
/// passes, saying why) when the controller is not built.
pub async fn argo_scene(
    test: &str,
    label: &str,
    proxies: Proxies,
    release: e2e::argo::Release,
) -> Option<(e2e::TestNamespace, kube::Client, Running)> {
    if let Err(e) = e2e::argo::binaries_of(release) {
        eprintln!("skipping {test}: {e:#}");
        return None;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = TestEnv::get().await.unwrap();
    let testbed = env.testbed().unwrap();
    e2e::argo::install_release(&testbed, "cluster1", &["cluster2"], release)
        .await
        .unwrap();
    e2e::argo::start_release(&testbed, "cluster1", release)
        .await
        .unwrap();
    // Steps with artifacts mount the artifact repository's Secret: delegates get a copy of it.
    let (ns, selector) = opted_in_namespace_with(
        env,
        label,
        label,
        [(contract::COPY_REFERENCES_LABEL, "true")],
    )
    .await;
    // Where step pods or their delegates run, Argo's executor may write their task results.
    for cluster in ["cluster1", "cluster2"] {
        e2e::argo::grant_executor(&env.client(cluster).await.unwrap(), &ns.name, "default")
            .await
            .unwrap();
    }
    if let Some(store) = testbed.artifact_store() {
        let client = env.client("cluster1").await.unwrap();
        e2e::argo::put_artifact_secret(&client, &ns.name, store)
            .await
            .unwrap();
    }
    if proxies == Proxies::OnRealNodes {
        env.require_real_nodes().unwrap();
    }
    let copies = delegate_sync::copies::Settings {
        create_namespaces: false,
        copy_references: true,
    };
    let running = start_with_sync(env, label, &selector, proxies, HOUR, copies).await;
    // The apiserver picks a new webhook configuration up within moments.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Some((ns, env.client("cluster1").await.unwrap(), running))
}

/// A fresh namespace `<prefix>-…` in every cluster, opted in to the product and to a webhook
/// started here for `<label>=<selector>`; the selector is returned with it.
pub async fn opted_in_namespace(
    env: &TestEnv,
    prefix: &str,
    label: &str,
) -> (e2e::TestNamespace, String) {
    opted_in_namespace_with(env, prefix, label, []).await
}

/// Like [`opted_in_namespace`], with further labels on the namespace.
pub async fn opted_in_namespace_with<const N: usize>(
    env: &TestEnv,
    prefix: &str,
    label: &str,
    more: [(&str, &str); N],
) -> (e2e::TestNamespace, String) {
    let selector = e2e::support::unique_name("sel");
    let mut labels = opted_in_labels(label, &selector);
    labels.extend(more.map(|(k, v)| (k.to_string(), v.to_string())));
    let ns = env.namespace_with_labels(prefix, labels).await.unwrap();
    (ns, selector)
}

/// The labels of a namespace the webhook started for `<label>=<selector>` serves.
fn opted_in_labels(label: &str, selector: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("multicluster-scheduler".into(), "enabled".into()),
        (label.into(), selector.into()),
    ])
}

/// A fresh namespace `test-…`, opted in to a webhook started here that puts proxies on the
/// test bed's real nodes (registered for `<label>=<selector>`), with delegate-sync in this
/// process too unless `own_sync` (the test runs it itself, as a process it can kill).
pub async fn real_nodes_scene(
    test: &str,
    label: &str,
    own_sync: bool,
) -> (&'static TestEnv, e2e::TestNamespace, Running) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = TestEnv::get().await.unwrap();
    env.require_real_nodes().unwrap();
    let (ns, selector) = opted_in_namespace(env, test, label).await;
    let running = if own_sync {
        start_webhook(env, label, &selector, Proxies::OnRealNodes).await
    } else {
        start_with(env, label, &selector, Proxies::OnRealNodes).await
    };
    // The apiserver picks a new webhook configuration up within moments.
    tokio::time::sleep(Duration::from_secs(2)).await;
    (env, ns, running)
}

/// Starts the webhook (registered for namespaces labelled `<label>=<selector>`) and
/// delegate-sync (source cluster1; targets cluster1 and cluster2), in this process.
pub async fn start(env: &TestEnv, label: &str, selector: &str) -> Running {
    start_with(env, label, selector, Proxies::OnFakeNodes).await
}

/// Like [`start`], with proxies where `proxies` says.
pub async fn start_with(env: &TestEnv, label: &str, selector: &str, proxies: Proxies) -> Running {
    start_with_timeout(env, label, selector, proxies, HOUR).await
}

const HOUR: Duration = Duration::from_secs(3600);

/// Like [`start_with`], with delegate-sync's `--cluster-lost-timeout`.
pub async fn start_with_timeout(
    env: &TestEnv,
    label: &str,
    selector: &str,
    proxies: Proxies,
    cluster_lost_timeout: Duration,
) -> Running {
    start_with_sync(
        env,
        label,
        selector,
        proxies,
        cluster_lost_timeout,
        Default::default(),
    )
    .await
}

/// Like [`start_with_timeout`], with what delegate-sync makes in targets (`copies`).
pub async fn start_with_sync(
    env: &TestEnv,
    label: &str,
    selector: &str,
    proxies: Proxies,
    cluster_lost_timeout: Duration,
    copies: delegate_sync::copies::Settings,
) -> Running {
    let mut running = start_webhook(env, label, selector, proxies).await;
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
        cluster_lost_timeout,
        leader_election: None,
        concurrency: 16,
        max_log_streams: 100,
        log_relay: true,
        copies,
        admin_address: "127.0.0.1:0".parse().unwrap(),
    };
    let (stop_sync, sync_stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(delegate_sync::run(sync_config, async move {
        let _ = sync_stopped.await;
    }));
    running.stops.push(stop_sync);
    running
}

/// The webhook alone, as [`start_with`] starts it: the test runs delegate-sync itself.
pub async fn start_webhook(
    env: &TestEnv,
    label: &str,
    selector: &str,
    proxies: Proxies,
) -> Running {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let dir = e2e::testbed::workspace_target_dir().join(e2e::support::unique_name(label));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = certs::Authority::generate(&format!("{label}-ca"), DAY).unwrap();
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
        settings: match proxies {
            Proxies::OnFakeNodes => webhook::mutate::ProxySettings {
                waiter_image: format!("proxy-waiter:{label}"),
                ..Default::default()
            },
            // The image `make node-images` imports into every real node.
            Proxies::OnRealNodes => webhook::mutate::ProxySettings {
                node_selector: [(e2e::nodes::KIND_LABEL.to_string(), e2e::nodes::REAL.into())]
                    .into_iter()
                    .collect(),
                tolerations: vec![
                    serde_json::to_value(e2e::nodes::real_node_toleration()).unwrap(),
                ],
                ..Default::default()
            },
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
        opted_in_labels(label, selector),
    )
    .await
    .unwrap();

    Running {
        stops: vec![stop_webhook],
        _registration: registration,
        dir,
    }
}
