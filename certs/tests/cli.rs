//! The `certs` CLI against a real kube-apiserver (test bed cluster1): Secrets written, caBundle
//! patched, and a second run changes nothing.

use std::process::Command;

use e2e::{TestEnv, support::unique_name};
use k8s_openapi::api::{admissionregistration::v1::MutatingWebhookConfiguration, core::v1::Secret};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use serde_json::json;

fn certs(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_certs"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn ensure_writes_secrets_patches_the_ca_bundle_and_is_idempotent() {
    let env = TestEnv::get().await.unwrap();
    let client = env.client("cluster1").await.unwrap();
    let ns = env.namespace("certs").await.unwrap();
    let configuration = unique_name("certs-test");
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let registration: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": { "name": configuration },
        "webhooks": [{
            "name": "proxies.multicluster.admiralty.io",
            "clientConfig": { "url": "https://127.0.0.1:9/mutate" },
            "rules": [{ "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"] }],
            "namespaceSelector": { "matchLabels": { "certs-test": configuration } },
            "failurePolicy": "Ignore",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
        }],
    }))
    .unwrap();
    webhooks
        .create(&PostParams::default(), &registration)
        .await
        .unwrap();

    let out_dir = std::env::temp_dir().join(format!("certs-cli-{}", std::process::id()));
    let secret = format!("{}/webhook-tls", ns.name);
    let kubeconfig = env.kubeconfig().display().to_string();
    let args = [
        "ensure",
        "--name",
        "webhook.multicluster.svc",
        "--name",
        "127.0.0.1",
        "--secret",
        &secret,
        "--webhook-configuration",
        &configuration,
        "--kubeconfig",
        &kubeconfig,
        "--context",
        "cluster1",
        "--out-dir",
        out_dir.to_str().unwrap(),
    ];
    let (ok, first) = certs(&args);
    assert!(ok, "{first}");
    assert!(
        first.contains("created a CA") && first.contains("caBundle updated"),
        "{first}"
    );

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let tls = secrets.get("webhook-tls").await.unwrap();
    assert_eq!(tls.type_.as_deref(), Some("kubernetes.io/tls"));
    let data = tls.data.unwrap();
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        assert!(data.contains_key(key), "{key}");
    }
    let ca = String::from_utf8(data["ca.crt"].0.clone()).unwrap();
    assert!(
        secrets
            .get("webhook-tls-ca")
            .await
            .unwrap()
            .data
            .unwrap()
            .contains_key("ca.key")
    );
    let bundle = webhooks
        .get(&configuration)
        .await
        .unwrap()
        .webhooks
        .unwrap()[0]
        .client_config
        .ca_bundle
        .clone()
        .unwrap();
    assert!(String::from_utf8(bundle.0).unwrap().contains(ca.trim()));
    assert_eq!(std::fs::read_to_string(out_dir.join("ca.crt")).unwrap(), ca);

    let (ok, second) = certs(&args);
    assert!(ok, "{second}");
    assert!(
        second.contains("up to date") && second.contains("already current"),
        "{second}"
    );
    assert_eq!(
        secrets.get("webhook-tls").await.unwrap().data.unwrap()["tls.crt"],
        data["tls.crt"]
    );

    let (ok, missing) = certs(&["ensure", "--name", "x"]);
    assert!(
        !ok && missing.contains("--out-dir and/or --secret"),
        "{missing}"
    );
    let (ok, bad) = certs(&[
        "ensure",
        "--name",
        "x",
        "--secret",
        "nonamespace",
        "--kubeconfig",
        &kubeconfig,
    ]);
    assert!(!ok && bad.contains("NAMESPACE/NAME"), "{bad}");

    webhooks
        .delete(&configuration, &DeleteParams::default())
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(out_dir);
}
