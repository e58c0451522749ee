//! What a pod needs follows it (delegate-sync `--create-namespaces --copy-references`), against
//! the test bed's real apiservers and cluster2's real node: a pod with a Secret volume, a
//! ConfigMap in its environment, an image pull Secret and its own ServiceAccount, in a
//! namespace that exists in cluster1 only, runs in cluster2 and reads them there; an update of
//! the ConfigMap in cluster1 reaches the copy; an object delegate-sync did not make is left
//! alone and the pod waits with an Event; a required reference missing in cluster1 is an Event
//! too; the copies go with the last delegate, and the namespace once it holds nothing.

mod common;

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, ensure};
use contract::{
    CLEANUP_FINALIZER, CLUSTER_NAME, COPY_REFERENCES_LABEL, DELEGATE_NAME, ELECT, PROXY_LABEL,
    RESULT, SOURCEPOD_MANIFEST, manifest::ManifestKey, result::DelegateResult,
};
use delegate_sync::{
    args::{Config, TargetSpec},
    copies::{COPIED_FROM, Settings},
};
use e2e::{TestEnv, support::unique_name};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Pod, Secret, ServiceAccount};
use kube::{
    Api, Client, ResourceExt as _,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

const KEY: &[u8] = b"copies-test-manifest-key-0123456789abcdef";

/// A proxy pinned to cluster2 whose saved pod is `spec` (sealed as the webhook seals it).
fn proxy(namespace: &str, name: &str, spec: Value) -> anyhow::Result<Pod> {
    let mut annotations = BTreeMap::from([
        (ELECT.to_string(), String::new()),
        (CLUSTER_NAME.to_string(), "cluster2".to_string()),
    ]);
    let saved = json!({
        "metadata": { "name": name, "namespace": namespace, "annotations": annotations },
        "spec": spec,
    });
    annotations.insert(
        SOURCEPOD_MANIFEST.into(),
        ManifestKey::from_bytes(KEY)?.seal(namespace, &saved.to_string()),
    );
    Ok(serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": { PROXY_LABEL: "true" },
            "annotations": annotations,
            "finalizers": [CLEANUP_FINALIZER],
        },
        "spec": { "restartPolicy": "Never", "containers": [{ "name": "main", "image": "proxy-waiter" }] },
    }))?)
}

/// A pod on the real node that prints what it was given into its termination message.
fn reading_pod(extra_volume: Option<Value>) -> Value {
    let mut volumes = vec![json!({ "name": "db", "secret": { "secretName": "db" } })];
    volumes.extend(extra_volume);
    let mut spec = json!({
        "restartPolicy": "Never",
        "serviceAccountName": "builder",
        "imagePullSecrets": [{ "name": "registry" }],
        "volumes": volumes,
        "containers": [{
            "name": "main",
            "image": e2e::nodes::BUSYBOX_IMAGE,
            "imagePullPolicy": "Never",
            "command": ["sh", "-c", "printf '%s %s' \"$MODE\" \"$(cat /etc/db/password)\" > /dev/termination-log"],
            "env": [{ "name": "MODE", "valueFrom": { "configMapKeyRef": { "name": "settings", "key": "mode" } } }],
            "envFrom": [{ "configMapRef": { "name": "maybe", "optional": true } }],
            "volumeMounts": [{ "name": "db", "mountPath": "/etc/db" }],
        }],
        "nodeSelector": { e2e::nodes::KIND_LABEL: e2e::nodes::REAL },
    });
    spec["tolerations"] = json!([e2e::nodes::real_node_toleration()]);
    spec
}

async fn warnings(client: &Client, namespace: &str, reason: &str) -> anyhow::Result<Vec<String>> {
    let events = Api::<Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await?;
    Ok(events
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| {
            format!(
                "{}: {}",
                e.involved_object.name.unwrap_or_default(),
                e.message.unwrap_or_default()
            )
        })
        .collect())
}

#[tokio::test]
async fn configmaps_secrets_and_the_service_account_follow_the_pod() -> anyhow::Result<()> {
    let env = TestEnv::get().await?;
    env.require_real_nodes()?;
    let cluster1 = env.client("cluster1").await?;
    let cluster2 = env.client("cluster2").await?;

    // Cluster1 only: the namespace (opted in) and what the pod references.
    let opted_in = BTreeMap::from([(COPY_REFERENCES_LABEL.to_string(), "true".to_string())]);
    let namespace = env
        .namespace_only_in("copies", opted_in, &["cluster1"])
        .await?;
    let ns = namespace.name.clone();
    let secrets1: Api<Secret> = Api::namespaced(cluster1.clone(), &ns);
    let config_maps1: Api<ConfigMap> = Api::namespaced(cluster1.clone(), &ns);
    let params = PostParams::default();
    secrets1
        .create(
            &params,
            &serde_json::from_value(json!({
                "metadata": { "name": "db" }, "stringData": { "password": "s3cret" },
            }))?,
        )
        .await?;
    secrets1
        .create(
            &params,
            &serde_json::from_value(json!({
                "metadata": { "name": "registry" },
                "type": "kubernetes.io/dockerconfigjson",
                "stringData": { ".dockerconfigjson": "{\"auths\":{}}" },
            }))?,
        )
        .await?;
    config_maps1
        .create(
            &params,
            &serde_json::from_value(json!({
                "metadata": { "name": "settings" }, "data": { "mode": "fast" },
            }))?,
        )
        .await?;
    Api::<ServiceAccount>::namespaced(cluster1.clone(), &ns)
        .create(
            &params,
            &serde_json::from_value(json!({ "metadata": { "name": "builder" } }))?,
        )
        .await?;
    ensure!(
        Api::<Namespace>::all(cluster2.clone())
            .get_opt(&ns)
            .await?
            .is_none(),
        "the namespace must not exist in cluster2 yet"
    );

    let key_file = std::env::temp_dir().join(unique_name("copies-key"));
    std::fs::write(&key_file, KEY)?;
    let admin = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let config = Config {
        cluster_name: "cluster1".into(),
        kubeconfig: Some(env.kubeconfig().clone()),
        context: Some("cluster1".into()),
        targets: vec![TargetSpec {
            name: "cluster2".into(),
            kubeconfig: Some(env.kubeconfig().clone()),
            context: Some("cluster2".into()),
        }],
        key: ManifestKey::from_bytes(KEY)?,
        pending_retry: Duration::from_secs(600),
        cluster_lost_timeout: Duration::from_secs(3600),
        leader_election: None,
        concurrency: 16,
        max_log_streams: 100,
        log_relay: false,
        copies: Settings {
            create_namespaces: true,
            copy_references: true,
        },
        admin_address: admin,
    };
    let _ = std::fs::remove_file(&key_file);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(delegate_sync::run(config, async move {
        let _ = stopped.await;
    }));

    let outcome = scenario(&cluster1, &cluster2, &ns).await;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), controller).await;
    outcome
}

async fn scenario(cluster1: &Client, cluster2: &Client, ns: &str) -> anyhow::Result<()> {
    let proxies: Api<Pod> = Api::namespaced(cluster1.clone(), ns);
    let params = PostParams::default();

    // It runs in cluster2 and reads its Secret and ConfigMap there.
    proxies
        .create(&params, &proxy(ns, "reader", reading_pod(None))?)
        .await?;
    common::wait_until("the reader's result", Duration::from_secs(90), async || {
        let pod = proxies.get("reader").await?;
        Ok(match pod.annotations().get(RESULT) {
            None => Some(format!(
                "no result; Warnings: {:?}",
                warnings(cluster1, ns, "ReferenceMissing").await?
            )),
            Some(_) => None,
        })
    })
    .await?;
    let pod = proxies.get("reader").await?;
    let result = DelegateResult::decode(&pod.annotations()[RESULT])?;
    let main = result
        .containers
        .get("main")
        .context("no main in the result")?;
    ensure!(
        (main.exit_code, main.message.as_deref()) == (0, Some("fast s3cret")),
        "{result:?}"
    );
    let made = |meta: &kube::api::ObjectMeta| {
        meta.labels
            .as_ref()
            .and_then(|l| l.get(COPIED_FROM))
            .map(String::as_str)
            == Some("cluster1")
    };
    let namespace2 = Api::<Namespace>::all(cluster2.clone()).get(ns).await?;
    ensure!(
        made(&namespace2.metadata),
        "namespace not labelled: {:?}",
        namespace2.metadata.labels
    );
    let account = Api::<ServiceAccount>::namespaced(cluster2.clone(), ns)
        .get("builder")
        .await?;
    ensure!(made(&account.metadata));
    let delegate_name = pod.annotations()[DELEGATE_NAME].clone();
    let delegate = Api::<Pod>::namespaced(cluster2.clone(), ns)
        .get(&delegate_name)
        .await?;
    let secrets2: Api<Secret> = Api::namespaced(cluster2.clone(), ns);
    let config_maps2: Api<ConfigMap> = Api::namespaced(cluster2.clone(), ns);
    for secret in ["db", "registry"] {
        let copy = secrets2.get(secret).await?;
        ensure!(made(&copy.metadata), "Secret {secret} not labelled");
        ensure!(
            copy.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == delegate.metadata.uid.as_ref()),
            "Secret {secret} not owned by the delegate"
        );
    }
    let registry = secrets2.get("registry").await?;
    ensure!(registry.type_.as_deref() == Some("kubernetes.io/dockerconfigjson"));
    ensure!(
        config_maps2.get_opt("maybe").await?.is_none(),
        "an optional reference missing in cluster1 stays missing"
    );

    // An update in cluster1 reaches the copy.
    config_maps1_patch(cluster1, ns).await?;
    common::wait_until(
        "the updated ConfigMap copied",
        Duration::from_secs(40),
        async || {
            let copy = config_maps2.get("settings").await?;
            let mode = copy.data.unwrap_or_default().get("mode").cloned();
            Ok((mode.as_deref() != Some("slow")).then(|| format!("mode {mode:?}")))
        },
    )
    .await?;
    // A copy deleted while its delegate still needs it is made again, owned again.
    config_maps2
        .delete("settings", &DeleteParams::default())
        .await?;
    common::wait_until(
        "the deleted copy made again",
        Duration::from_secs(40),
        async || {
            let copy = config_maps2.get_opt("settings").await?;
            let owned = copy.as_ref().is_some_and(|c| {
                c.owner_references()
                    .iter()
                    .any(|o| Some(&o.uid) == delegate.metadata.uid.as_ref())
            });
            Ok((!owned).then(|| format!("{copy:?}")))
        },
    )
    .await?;

    // An object delegate-sync did not make: left alone, the pod waits.
    let theirs: ConfigMap =
        serde_json::from_value(json!({ "metadata": { "name": "theirs" }, "data": { "a": "b" } }))?;
    config_maps2.create(&params, &theirs).await?;
    Api::<ConfigMap>::namespaced(cluster1.clone(), ns)
        .create(
            &params,
            &serde_json::from_value(
                json!({ "metadata": { "name": "theirs" }, "data": { "a": "mine" } }),
            )?,
        )
        .await?;
    let conflicting = reading_pod(Some(
        json!({ "name": "t", "configMap": { "name": "theirs" } }),
    ));
    proxies
        .create(&params, &proxy(ns, "conflicting", conflicting)?)
        .await?;
    // A required Secret that cluster1 does not have: nothing of that pod is copied, not even
    // what exists (a pod that waits leaves no copy behind).
    Api::<ConfigMap>::namespaced(cluster1.clone(), ns)
        .create(
            &params,
            &serde_json::from_value(
                json!({ "metadata": { "name": "only-for-missing" }, "data": { "a": "b" } }),
            )?,
        )
        .await?;
    let mut missing = reading_pod(Some(
        json!({ "name": "a", "secret": { "secretName": "absent" } }),
    ));
    missing["volumes"]
        .as_array_mut()
        .context("volumes")?
        .push(json!({ "name": "o", "configMap": { "name": "only-for-missing" } }));
    proxies
        .create(&params, &proxy(ns, "missing", missing)?)
        .await?;
    common::wait_until(
        "CopyConflict and ReferenceMissing",
        Duration::from_secs(30),
        async || {
            let conflict = warnings(cluster1, ns, "CopyConflict").await?;
            let absent = warnings(cluster1, ns, "ReferenceMissing").await?;
            let theirs = format!("ConfigMap {ns}/theirs exists in cluster2");
            let seen = conflict
                .iter()
                .any(|w| w.starts_with("conflicting: ") && w.contains(&theirs))
                && absent.iter().any(|w| {
                    w.starts_with("missing: ") && w.contains("Secret absent does not exist")
                });
            Ok((!seen).then(|| format!("{conflict:?} {absent:?}")))
        },
    )
    .await?;
    for name in ["conflicting", "missing"] {
        let pod = proxies.get(name).await?;
        ensure!(
            !pod.annotations().contains_key(DELEGATE_NAME),
            "{name} got a delegate"
        );
    }
    ensure!(
        config_maps2.get_opt("only-for-missing").await?.is_none(),
        "a pod that waits for a missing Secret had its other references copied"
    );
    let untouched = config_maps2.get("theirs").await?;
    ensure!(
        untouched.metadata.labels.is_none()
            && untouched
                .data
                .unwrap_or_default()
                .get("a")
                .map(String::as_str)
                == Some("b"),
        "an object delegate-sync did not make was changed"
    );

    // The copies go with the last delegate; the namespace once it holds nothing.
    for name in ["reader", "conflicting", "missing"] {
        proxies.delete(name, &DeleteParams::default()).await?;
    }
    common::wait_until(
        "the copies gone with the delegate",
        Duration::from_secs(60),
        async || {
            let left: Vec<String> = secrets2
                .list(&ListParams::default().labels(COPIED_FROM))
                .await?
                .items
                .iter()
                .map(|s| s.name_any())
                .chain(
                    config_maps2
                        .list(&ListParams::default().labels(COPIED_FROM))
                        .await?
                        .items
                        .iter()
                        .map(|c| c.name_any()),
                )
                .collect();
            Ok((!left.is_empty()).then(|| format!("left: {left:?}")))
        },
    )
    .await?;
    ensure!(
        config_maps2.get_opt("theirs").await?.is_some(),
        "their ConfigMap went too"
    );
    config_maps2
        .delete("theirs", &DeleteParams::default())
        .await?;
    common::wait_until(
        "the namespace made for them deleted",
        Duration::from_secs(180),
        async || {
            let namespace = Api::<Namespace>::all(cluster2.clone()).get_opt(ns).await?;
            Ok(match namespace {
                Some(n) if n.metadata.deletion_timestamp.is_none() => Some("still there".into()),
                _ => None,
            })
        },
    )
    .await?;
    Ok(())
}

async fn config_maps1_patch(cluster1: &Client, ns: &str) -> anyhow::Result<()> {
    Api::<ConfigMap>::namespaced(cluster1.clone(), ns)
        .patch(
            "settings",
            &PatchParams::default(),
            &Patch::Merge(json!({ "data": { "mode": "slow" } })),
        )
        .await?;
    Ok(())
}
