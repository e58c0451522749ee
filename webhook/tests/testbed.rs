//! The webhook behind a real kube-apiserver (test bed cluster1): registered with a
//! MutatingWebhookConfiguration whose caBundle comes from `certs`, called over TLS on loopback.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::*;
use contract::{CLEANUP_FINALIZER, ELECT, PROXY_LABEL, SOURCEPOD_MANIFEST};
use e2e::{TestEnv, support::unique_name};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

const CLUSTER: &str = "cluster1";

fn pod(name: &str, elected: bool) -> Pod {
    let annotations = if elected {
        json!({ ELECT: "" })
    } else {
        json!({})
    };
    serde_json::from_value(json!({
        "metadata": { "name": name, "annotations": annotations },
        // No requests: other test binaries measure the clusters' capacity.
        "spec": { "containers": [{ "name": "main", "image": "busybox" }] },
    }))
    .unwrap()
}

fn is_proxy(pod: &Pod) -> bool {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    labels.get(PROXY_LABEL).map(String::as_str) == Some("true")
        && annotations.contains_key(SOURCEPOD_MANIFEST)
        && pod
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == CLEANUP_FINALIZER)
        && pod.spec.as_ref().unwrap().containers[0].image.as_deref() == Some("proxy-waiter:test")
}

#[tokio::test]
async fn the_apiserver_stores_elected_pods_as_proxies_and_survives_a_cert_rotation() {
    let env = TestEnv::get().await.unwrap();
    let client = env.client(CLUSTER).await.unwrap();
    let mut certs = CertDir::new("testbed");
    let ca = certs::Authority::generate("testbed-webhook-ca", DAY).unwrap();
    ca.issue_serving("webhook", &["127.0.0.1"], DAY)
        .unwrap()
        .write(&certs.dir.join("..gen1"), "tls")
        .unwrap();
    certs.ca_pem = ca.pem().cert;
    let server = Server::start(config(&certs, "127.0.0.1:0")).await;
    let selector = unique_name("sel");
    let registration = e2e::WebhookRegistration::create(
        env,
        CLUSTER,
        server.addr.port(),
        &certs.ca_pem,
        BTreeMap::from([
            ("multicluster-scheduler".into(), "enabled".into()),
            ("webhook-test".into(), selector.clone()),
        ]),
    )
    .await
    .unwrap();

    let enabled = env
        .namespace_with_labels(
            "webhook-on",
            BTreeMap::from([
                ("multicluster-scheduler".into(), "enabled".into()),
                ("webhook-test".into(), selector.clone()),
            ]),
        )
        .await
        .unwrap();
    let disabled = env.namespace("webhook-off").await.unwrap();
    let pods = enabled.api::<Pod>(CLUSTER).await.unwrap();

    // Webhook registrations take effect shortly after they are stored.
    let first = retry(|| async {
        pods.create(&PostParams::default(), &pod("elected", true))
            .await
    })
    .await;
    assert!(is_proxy(&first), "{first:#?}");
    assert!(
        is_proxy(&pods.get("elected").await.unwrap()),
        "stored as a proxy"
    );

    let local = pods
        .create(&PostParams::default(), &pod("local", false))
        .await
        .unwrap();
    assert!(!is_proxy(&local) && local.metadata.labels.unwrap_or_default().is_empty());
    assert_eq!(
        local.spec.unwrap().containers[0].image.as_deref(),
        Some("busybox")
    );

    let elsewhere = disabled.api::<Pod>(CLUSTER).await.unwrap();
    let untouched = elsewhere
        .create(&PostParams::default(), &pod("elected", true))
        .await
        .unwrap();
    assert!(
        !is_proxy(&untouched),
        "namespaces without the label are untouched"
    );

    // Server-side dry run: the answer is a proxy, nothing is stored.
    let dry = pods
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &pod("dry", true),
        )
        .await
        .unwrap();
    assert!(is_proxy(&dry));
    assert!(pods.get_opt("dry").await.unwrap().is_none());

    // kube-system is never touched, even when labelled to match.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let label = |value: serde_json::Value| {
        Patch::Merge(
            json!({ "metadata": { "labels": { "multicluster-scheduler": value.clone(), "webhook-test": value } } }),
        )
    };
    namespaces
        .patch(
            "kube-system",
            &PatchParams::default(),
            &label(json!(selector)),
        )
        .await
        .unwrap();
    let system: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let name = unique_name("system");
    let created = system
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &pod(&name, true),
        )
        .await;
    namespaces
        .patch(
            "kube-system",
            &PatchParams::default(),
            &label(serde_json::Value::Null),
        )
        .await
        .unwrap();
    assert!(!is_proxy(&created.unwrap()), "kube-system untouched");

    // Renew the serving certificate (same CA) mid-test: admissions keep working, with the new one.
    let renewed = ca.issue_serving("webhook", &["127.0.0.1"], DAY).unwrap();
    swap_in(&certs, &renewed, 2);
    let after = pods
        .create(&PostParams::default(), &pod("after-renewal", true))
        .await
        .unwrap();
    assert!(is_proxy(&after));
    assert_eq!(
        served_certificate(&server, &certs.ca_pem).await,
        first_der(&renewed.cert)
    );

    // Rotate the CA: trust both, swap the files, then trust only the new one.
    let new_ca = certs::Authority::generate("testbed-webhook-ca-2", DAY).unwrap();
    registration
        .set_ca_bundle(&client, &format!("{}{}", certs.ca_pem, new_ca.pem().cert))
        .await
        .unwrap();
    swap_in(
        &certs,
        &new_ca
            .issue_serving("webhook", &["127.0.0.1"], DAY)
            .unwrap(),
        3,
    );
    certs.ca_pem = new_ca.pem().cert;
    registration
        .set_ca_bundle(&client, &certs.ca_pem)
        .await
        .unwrap();
    let rotated = retry(|| async {
        pods.create(&PostParams::default(), &pod("after-ca-rotation", true))
            .await
    })
    .await;
    assert!(is_proxy(&rotated));

    drop(registration);
    server.stop().await.unwrap();
}

/// Writes a serving certificate into a new `..genN` directory and swaps `..data` to it.
fn swap_in(certs: &CertDir, pem: &certs::Pem, generation: u32) {
    let data = certs.dir.join(format!("..gen{generation}"));
    std::fs::create_dir_all(&data).unwrap();
    pem.write(&data, "tls").unwrap();
    let tmp = certs.dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(data.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, certs.dir.join("..data")).unwrap();
}

async fn served_certificate(server: &Server, ca_pem: &str) -> Vec<u8> {
    let tls = tls_connect(server.addr, client_config(ca_pem, b"http/1.1"))
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn first_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// Retries a create while the apiserver has not yet picked the webhook configuration up.
async fn retry<F, Fut>(mut create: F) -> Pod
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = kube::Result<Pod>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match create().await {
            Ok(pod) if is_proxy(&pod) => return pod,
            Ok(pod) if std::time::Instant::now() > deadline => {
                panic!("never became a proxy: {pod:#?}")
            }
            Err(e) if std::time::Instant::now() > deadline => panic!("create failed: {e}"),
            Ok(pod) => {
                // Created before the webhook applied: remove and try again.
                let api: Api<Pod> = Api::namespaced(
                    e2e::testbed::kubeconfig::client(
                        TestEnv::get().await.unwrap().kubeconfig(),
                        CLUSTER,
                    )
                    .await
                    .unwrap(),
                    pod.metadata.namespace.as_deref().unwrap(),
                );
                let _ = api
                    .delete(
                        pod.metadata.name.as_deref().unwrap(),
                        &DeleteParams {
                            grace_period_seconds: Some(0),
                            ..Default::default()
                        },
                    )
                    .await;
                wait_gone(&api, pod.metadata.name.as_deref().unwrap()).await;
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn wait_gone(api: &Api<Pod>, name: &str) {
    for _ in 0..50 {
        if api.get_opt(name).await.ok().flatten().is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
