//! Where certificates are kept: files (written atomically) and Secrets (server-side apply),
//! and the webhook configuration whose caBundle must trust the CA.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use base64::{Engine as _, engine::general_purpose::STANDARD};
use certs::{Pem, renew::Stored, write_atomically};
use k8s_openapi::{
    ByteString, api::admissionregistration::v1::MutatingWebhookConfiguration, api::core::v1::Secret,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::json;

const FIELD_MANAGER: &str = "multicluster-certs";
const PREVIOUS_CAS: &str = "previous-cas.pem";

/// Certificates as files in a directory.
pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    pub fn load(&self) -> anyhow::Result<Stored> {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).ok();
        let pair = |cert: &str, key: &str| {
            Some(Pem {
                cert: read(cert)?,
                key: read(key)?,
            })
        };
        Ok(Stored {
            ca: pair("ca.crt", "ca.key"),
            serving: pair("tls.crt", "tls.key"),
            previous_cas: read(PREVIOUS_CAS)
                .map(|text| split_pem(&text))
                .unwrap_or_default(),
        })
    }

    pub fn save(&self, stored: &Stored) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create --out-dir {}", self.dir.display()))?;
        if let Some(ca) = &stored.ca {
            ca.write(&self.dir, "ca")?;
        }
        if let Some(serving) = &stored.serving {
            serving.write(&self.dir, "tls")?;
        }
        write_atomically(
            &self.dir.join(PREVIOUS_CAS),
            stored.previous_cas.join("").as_bytes(),
        )?;
        Ok(())
    }
}

/// Splits concatenated PEM certificates.
fn split_pem(text: &str) -> Vec<String> {
    text.split_inclusive("-----END CERTIFICATE-----")
        .map(str::trim)
        .filter(|block| block.starts_with("-----BEGIN CERTIFICATE-----"))
        .map(|block| format!("{block}\n"))
        .collect()
}

/// The cluster side: a TLS Secret (and its `-ca` companion) and webhook configurations.
pub struct KubeTarget {
    client: Client,
    secret: Option<(String, String)>,
}

impl KubeTarget {
    pub async fn connect(
        kubeconfig: Option<&Path>,
        context: Option<&str>,
        secret: Option<&str>,
    ) -> anyhow::Result<Self> {
        let secret = secret
            .map(|s| {
                s.split_once('/')
                    .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
                    .map(|(ns, name)| (ns.to_string(), name.to_string()))
                    .with_context(|| format!("--secret {s:?} is not NAMESPACE/NAME"))
            })
            .transpose()?;
        let options = KubeConfigOptions {
            context: context.map(str::to_string),
            ..Default::default()
        };
        let config = match kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path)
                    .with_context(|| format!("cannot read --kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(file, &options).await?
            }
            None => kube::Config::infer()
                .await
                .context("no kubeconfig found (give --kubeconfig)")?,
        };
        Ok(Self {
            client: Client::try_from(config)?,
            secret,
        })
    }

    pub fn has_secret(&self) -> bool {
        self.secret.is_some()
    }

    fn secrets(&self) -> Option<(Api<Secret>, &str)> {
        let (namespace, name) = self.secret.as_ref()?;
        Some((Api::namespaced(self.client.clone(), namespace), name))
    }

    pub async fn load(&self) -> anyhow::Result<Stored> {
        let Some((api, name)) = self.secrets() else {
            return Ok(Stored::default());
        };
        let field = |secret: &Option<Secret>, key: &str| {
            secret
                .as_ref()
                .and_then(|s| s.data.as_ref())
                .and_then(|d| d.get(key))
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
        };
        let serving = api
            .get_opt(name)
            .await
            .with_context(|| format!("cannot read Secret {name}"))?;
        let ca = api
            .get_opt(&format!("{name}-ca"))
            .await
            .with_context(|| format!("cannot read Secret {name}-ca"))?;
        let pair = |secret: &Option<Secret>, cert: &str, key: &str| {
            Some(Pem {
                cert: field(secret, cert)?,
                key: field(secret, key)?,
            })
        };
        Ok(Stored {
            ca: pair(&ca, "ca.crt", "ca.key"),
            serving: pair(&serving, "tls.crt", "tls.key"),
            previous_cas: field(&ca, PREVIOUS_CAS)
                .map(|t| split_pem(&t))
                .unwrap_or_default(),
        })
    }

    /// Applies both Secrets; returns the serving Secret's name.
    pub async fn save(&self, stored: &Stored) -> anyhow::Result<String> {
        let Some((api, name)) = self.secrets() else {
            return Ok(String::new());
        };
        let (Some(ca), Some(serving)) = (&stored.ca, &stored.serving) else {
            anyhow::bail!("nothing to store")
        };
        let bytes = |text: &str| ByteString(text.as_bytes().to_vec());
        let apply = |secret_name: String, type_: &str, data: BTreeMap<String, ByteString>| {
            let api = api.clone();
            let secret = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(secret_name.clone()),
                    labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/managed-by".into(),
                        FIELD_MANAGER.into(),
                    )])),
                    ..Default::default()
                },
                type_: Some(type_.into()),
                data: Some(data),
                ..Default::default()
            };
            async move {
                api.patch(
                    &secret_name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&secret),
                )
                .await
                .with_context(|| format!("cannot write Secret {secret_name}"))
            }
        };
        apply(
            format!("{name}-ca"),
            "Opaque",
            BTreeMap::from([
                ("ca.crt".into(), bytes(&ca.cert)),
                ("ca.key".into(), bytes(&ca.key)),
                (PREVIOUS_CAS.into(), bytes(&stored.previous_cas.join(""))),
            ]),
        )
        .await?;
        apply(
            name.to_string(),
            "kubernetes.io/tls",
            BTreeMap::from([
                ("tls.crt".into(), bytes(&serving.cert)),
                ("tls.key".into(), bytes(&serving.key)),
                ("ca.crt".into(), bytes(&ca.cert)),
            ]),
        )
        .await?;
        Ok(name.to_string())
    }

    /// Sets the caBundle of every webhook of the configuration; false when already set.
    pub async fn set_ca_bundle(&self, name: &str, bundle: &str) -> anyhow::Result<bool> {
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        let config = api.get(name).await.with_context(|| {
            format!("cannot read MutatingWebhookConfiguration {name} (--webhook-configuration)")
        })?;
        let wanted = ByteString(bundle.as_bytes().to_vec());
        let webhooks = config.webhooks.unwrap_or_default();
        if webhooks.is_empty() {
            anyhow::bail!("MutatingWebhookConfiguration {name} has no webhooks");
        }
        if webhooks
            .iter()
            .all(|w| w.client_config.ca_bundle.as_ref() == Some(&wanted))
        {
            return Ok(false);
        }
        // Test each webhook's name so that a concurrent reorder fails instead of mis-patching.
        let operations: Vec<serde_json::Value> = webhooks
            .iter()
            .enumerate()
            .flat_map(|(i, w)| {
                [
                    json!({ "op": "test", "path": format!("/webhooks/{i}/name"), "value": w.name }),
                    json!({ "op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": STANDARD.encode(bundle) }),
                ]
            })
            .collect();
        let patch: json_patch::Patch = serde_json::from_value(json!(operations))?;
        api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await
            .with_context(|| {
                format!("cannot patch the caBundle of MutatingWebhookConfiguration {name}")
            })?;
        Ok(true)
    }
}
