//! Kubeconfig files: the test bed's admin one (a context per cluster) and ServiceAccount ones.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// One cluster as a kubeconfig names it.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub server: String,
    pub ca_file: PathBuf,
    pub credentials: Credentials,
}

/// How a kubeconfig user authenticates.
#[derive(Clone, Debug)]
pub enum Credentials {
    ClientCertificate {
        cert_file: PathBuf,
        key_file: PathBuf,
    },
    Token(String),
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct File {
    api_version: &'static str,
    kind: &'static str,
    clusters: Vec<Named<Cluster>>,
    users: Vec<Named<User>>,
    contexts: Vec<Named<Context>>,
    current_context: String,
}

#[derive(Serialize)]
struct Named<T> {
    name: String,
    #[serde(flatten)]
    value: T,
}

#[derive(Serialize)]
struct Cluster {
    cluster: ClusterFields,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct ClusterFields {
    server: String,
    certificate_authority: String,
}

#[derive(Serialize)]
struct User {
    user: UserFields,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct UserFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    client_certificate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

#[derive(Serialize)]
struct Context {
    context: ContextFields,
}

#[derive(Serialize)]
struct ContextFields {
    cluster: String,
    user: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
}

/// Renders a kubeconfig with one context per entry, named like the entry; the first is current.
/// `user_suffix` distinguishes users of different kubeconfigs that a user may merge.
pub fn render(
    entries: &[Entry],
    user_suffix: &str,
    namespace: Option<&str>,
) -> anyhow::Result<String> {
    let user_name = |e: &Entry| format!("{}-{user_suffix}", e.name);
    let file = File {
        api_version: "v1",
        kind: "Config",
        clusters: entries
            .iter()
            .map(|e| Named {
                name: e.name.clone(),
                value: Cluster {
                    cluster: ClusterFields {
                        server: e.server.clone(),
                        certificate_authority: e.ca_file.display().to_string(),
                    },
                },
            })
            .collect(),
        users: entries
            .iter()
            .map(|e| Named {
                name: user_name(e),
                value: User {
                    user: user_fields(&e.credentials),
                },
            })
            .collect(),
        contexts: entries
            .iter()
            .map(|e| Named {
                name: e.name.clone(),
                value: Context {
                    context: ContextFields {
                        cluster: e.name.clone(),
                        user: user_name(e),
                        namespace: namespace.map(str::to_string),
                    },
                },
            })
            .collect(),
        current_context: entries.first().map(|e| e.name.clone()).unwrap_or_default(),
    };
    Ok(serde_saphyr::to_string(&file)?)
}

fn user_fields(credentials: &Credentials) -> UserFields {
    match credentials {
        Credentials::ClientCertificate {
            cert_file,
            key_file,
        } => UserFields {
            client_certificate: Some(cert_file.display().to_string()),
            client_key: Some(key_file.display().to_string()),
            token: None,
        },
        Credentials::Token(token) => UserFields {
            client_certificate: None,
            client_key: None,
            token: Some(token.clone()),
        },
    }
}

/// A kube client for one context of a kubeconfig file.
pub async fn client(path: &Path, context: &str) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
    let options = kube::config::KubeConfigOptions {
        context: Some(context.to_string()),
        ..Default::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?;
    Ok(kube::Client::try_from(config)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_context_per_cluster_readable_by_kube() {
        let entries: Vec<Entry> = ["cluster1", "cluster2"]
            .iter()
            .map(|name| Entry {
                name: name.to_string(),
                server: format!("https://127.0.0.1:6443/{name}"),
                ca_file: PathBuf::from("/tmp/ca.crt"),
                credentials: Credentials::Token("t0ken".into()),
            })
            .collect();
        let text = render(&entries, "admin", Some("ns")).unwrap();
        let parsed = kube::config::Kubeconfig::from_yaml(&text).unwrap();
        assert_eq!(parsed.current_context.as_deref(), Some("cluster1"));
        let contexts: Vec<_> = parsed.contexts.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(contexts, ["cluster1", "cluster2"]);
        let ctx = parsed.contexts[1].context.as_ref().unwrap();
        assert_eq!(ctx.user.as_deref(), Some("cluster2-admin"));
        assert_eq!(ctx.namespace.as_deref(), Some("ns"));
        let cluster = parsed.clusters[1].cluster.as_ref().unwrap();
        assert_eq!(
            cluster.server.as_deref(),
            Some("https://127.0.0.1:6443/cluster2")
        );
    }
}
