//! A MutatingWebhookConfiguration registered for one test: it calls a webhook on loopback and
//! selects only namespaces carrying the test's own label, so tests running side by side never
//! see each other's webhooks. Deleted on drop, pass or fail.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::Context as _;
use k8s_openapi::{ByteString, api::admissionregistration::v1::MutatingWebhookConfiguration};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

use crate::support::unique_name;

/// The name of the webhook inside the registrations of the tests and the demo.
pub const WEBHOOK_NAME: &str = "proxies.multicluster.admiralty.io";

/// A registration named `name` whose one webhook, `webhook_name`, is the webhook serving
/// `https://127.0.0.1:<port>/mutate` (trusting `ca_pem`), called for pod creations in namespaces
/// labelled with every entry of `namespace_labels`. The policies are the chart's: failure
/// fails the creation, and the webhook runs again when a later webhook changes the pod.
pub fn configuration(
    name: &str,
    webhook_name: &str,
    port: u16,
    ca_pem: &str,
    namespace_labels: &BTreeMap<String, String>,
) -> anyhow::Result<MutatingWebhookConfiguration> {
    let mut config: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": { "name": name },
        "webhooks": [{
            "name": webhook_name,
            "clientConfig": { "url": format!("https://127.0.0.1:{port}/mutate") },
            "rules": [{ "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"] }],
            "namespaceSelector": { "matchLabels": namespace_labels },
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "reinvocationPolicy": "IfNeeded",
            "timeoutSeconds": 5,
        }],
    }))?;
    if let Some(webhook) = config.webhooks.as_mut().and_then(|w| w.first_mut()) {
        webhook.client_config.ca_bundle = Some(ByteString(ca_pem.as_bytes().to_vec()));
    }
    Ok(config)
}

pub struct WebhookRegistration {
    pub name: String,
    kubeconfig: PathBuf,
    context: String,
}

impl WebhookRegistration {
    /// Registers `https://127.0.0.1:<port>/mutate` (trusting `ca_pem`) for pod creations in
    /// namespaces labelled with every entry of `namespace_labels`.
    pub async fn create(
        env: &crate::TestEnv,
        cluster: &str,
        port: u16,
        ca_pem: &str,
        namespace_labels: BTreeMap<String, String>,
    ) -> anyhow::Result<Self> {
        let name = unique_name("webhook-test");
        let config = configuration(&name, WEBHOOK_NAME, port, ca_pem, &namespace_labels)?;
        Api::<MutatingWebhookConfiguration>::all(env.client(cluster).await?)
            .create(&PostParams::default(), &config)
            .await
            .with_context(|| format!("cannot register webhook {name} in {cluster}"))?;
        Ok(Self {
            name,
            kubeconfig: env.kubeconfig().clone(),
            context: cluster.to_string(),
        })
    }

    /// Replaces the CA bundle the apiserver trusts the webhook with.
    pub async fn set_ca_bundle(&self, client: &Client, ca_pem: &str) -> anyhow::Result<()> {
        let patch = json!({ "webhooks": [{ "name": WEBHOOK_NAME, "clientConfig": {
            "caBundle": ByteString(ca_pem.as_bytes().to_vec()),
        }}]});
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .patch(
                &self.name,
                &PatchParams::default(),
                &Patch::Strategic(patch),
            )
            .await
            .with_context(|| format!("cannot update the caBundle of {}", self.name))?;
        Ok(())
    }
}

impl Drop for WebhookRegistration {
    fn drop(&mut self) {
        let (name, kubeconfig, context) = (
            self.name.clone(),
            self.kubeconfig.clone(),
            self.context.clone(),
        );
        // Drop may run inside a test's runtime: delete from a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let client = crate::testbed::kubeconfig::client(&kubeconfig, &context).await?;
                Api::<MutatingWebhookConfiguration>::all(client)
                    .delete(&name, &DeleteParams::default())
                    .await?;
                anyhow::Ok(())
            })
        })
        .join();
    }
}
