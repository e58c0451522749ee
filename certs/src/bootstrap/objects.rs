//! The objects `certs bootstrap-target` writes, built without a cluster: names, labels, the
//! target chart's RBAC rules, and the kubeconfig delegate-sync reads.

use std::collections::BTreeMap;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use k8s_openapi::{
    ByteString,
    api::{
        core::v1::{Namespace, Secret, ServiceAccount},
        rbac::v1::{
            ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
        },
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde_json::json;

/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "multicluster-certs-bootstrap";
/// `app.kubernetes.io/managed-by` of every object it writes.
pub const MANAGED_BY: &str = "certs-bootstrap-target";
/// On objects in the target: which source cluster they let in.
pub const SOURCE_CLUSTER_LABEL: &str = "multicluster.admiralty.io/source-cluster";
/// On the kubeconfig Secret in the source: which target it reaches (delegate-sync's name for it).
pub const TARGET_CLUSTER_LABEL: &str = "multicluster.admiralty.io/target-cluster";
/// The key of the kubeconfig in the source's Secret (what the delegate-sync chart mounts).
pub const KUBECONFIG_KEY: &str = "kubeconfig";

/// What a source's delegate-sync may do in a target: exactly the rules of the target chart
/// (`charts/target/templates/rbac.yaml`): its delegates (create, delete, get, list, watch), the
/// reads placement needs (pods and nodes), the delegates' logs it relays (pods/log get), and
/// the Argo task results it keeps for delegates (get, create, patch). No Secrets, no exec, no
/// writes but pods and task results.
pub fn cluster_role_rules() -> Vec<PolicyRule> {
    let rule = |group: &str, resource: &str, verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(vec![resource.to_string()]),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    };
    vec![
        rule("", "pods", &["create", "delete", "get", "list", "watch"]),
        rule("", "pods/log", &["get"]),
        rule("", "nodes", &["get", "list", "watch"]),
        rule(
            "argoproj.io",
            "workflowtaskresults",
            &["get", "create", "patch"],
        ),
    ]
}

/// The requester of a service account: `<service account>-requester`.
pub fn requester_name(service_account: &str) -> String {
    format!("{service_account}-requester")
}

/// What delegate-sync does in a target with `--copy-references` (`copies`: the pod's
/// ServiceAccount and copies of its ConfigMaps and Secrets) and `--create-namespaces`
/// (`namespaces`: namespaces it makes, deleted once they hold nothing): the rules of the target
/// chart's `copies` ClusterRole (`charts/target/templates/copies.yaml`). Empty when neither.
pub fn copies_rules(copies: bool, namespaces: bool) -> Vec<PolicyRule> {
    let rule = |resource: &str, verbs: Vec<&str>| PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec![resource.to_string()]),
        verbs: verbs.into_iter().map(str::to_string).collect(),
        ..Default::default()
    };
    let mut rules = Vec::new();
    if namespaces {
        rules.push(rule("namespaces", vec!["get", "create", "list", "delete"]));
        // What else a namespace it made may hold, before it is deleted.
        rules.push(rule("persistentvolumeclaims", vec!["list"]));
        rules.push(rule("services", vec!["list"]));
    }
    let mut objects = Vec::new();
    if copies {
        objects.extend(["get", "create", "update", "patch", "delete"]);
    }
    if namespaces {
        objects.push("list");
    }
    if !objects.is_empty() {
        rules.push(rule("configmaps", objects.clone()));
        rules.push(rule("secrets", objects));
        let mut accounts = Vec::new();
        if copies {
            accounts.extend(["get", "create"]);
        }
        if namespaces {
            accounts.push("list");
        }
        rules.push(rule("serviceaccounts", accounts));
    }
    rules
}

/// The names of everything written, decided from the options before any call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// The source as a label value and name part (from its context name).
    pub source: String,
    /// delegate-sync's name for the target (`--target-name`).
    pub target: String,
    /// In the target.
    pub target_namespace: String,
    pub service_account: String,
    /// With short-lived tokens: the ServiceAccount whose long-lived token may only request
    /// tokens for `service_account` (`<service account>-requester`); its Role and RoleBinding
    /// have its name.
    pub requester: Option<String>,
    /// ClusterRole and ClusterRoleBinding: `<target namespace>-<service account>`, like the
    /// target chart's `<release namespace>-<fullname>`.
    pub cluster_role: String,
    /// The long-lived token in the kubeconfig: `<account>-token`, like the target chart's, or
    /// `<account>-token-<unix time>` for a rotation; the account is the requester when there
    /// is one.
    pub token_secret: String,
    /// In the source.
    pub namespace: String,
    pub secret: String,
}

impl Names {
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/managed-by".into(), MANAGED_BY.into()),
            (
                "app.kubernetes.io/part-of".into(),
                "multicluster-delegation".into(),
            ),
        ])
    }

    fn target_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.labels();
        labels.insert(SOURCE_CLUSTER_LABEL.into(), self.source.clone());
        labels
    }

    fn meta(&self, name: &str, namespace: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: namespace.map(str::to_string),
            labels: Some(self.target_labels()),
            ..Default::default()
        }
    }

    /// A namespace this tool creates when missing (an existing one is left alone).
    pub fn namespace(&self, name: &str) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                labels: Some(self.labels()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    pub fn service_account(&self) -> ServiceAccount {
        ServiceAccount {
            metadata: self.meta(&self.service_account, Some(&self.target_namespace)),
            // Only used from outside the cluster, through its token.
            automount_service_account_token: Some(false),
            ..Default::default()
        }
    }

    pub fn cluster_role(&self) -> ClusterRole {
        ClusterRole {
            metadata: self.meta(&self.cluster_role, None),
            rules: Some(cluster_role_rules()),
            ..Default::default()
        }
    }

    pub fn cluster_role_binding(&self) -> ClusterRoleBinding {
        self.binding_to(&self.cluster_role)
    }

    /// `<cluster role>-copies`: what `--copy-references` and `--create-namespaces` need.
    pub fn copies_cluster_role_name(&self) -> String {
        format!("{}-copies", self.cluster_role)
    }

    /// The copies ClusterRole and its binding, when `rules` is not empty.
    pub fn copies_cluster_role(
        &self,
        rules: Vec<PolicyRule>,
    ) -> Option<(ClusterRole, ClusterRoleBinding)> {
        if rules.is_empty() {
            return None;
        }
        let name = self.copies_cluster_role_name();
        let role = ClusterRole {
            metadata: self.meta(&name, None),
            rules: Some(rules),
            ..Default::default()
        };
        Some((role, self.binding_to(&name)))
    }

    fn binding_to(&self, cluster_role: &str) -> ClusterRoleBinding {
        ClusterRoleBinding {
            metadata: self.meta(cluster_role, None),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name: cluster_role.to_string(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: self.service_account.clone(),
                namespace: Some(self.target_namespace.clone()),
                ..Default::default()
            }]),
        }
    }

    /// The account whose long-lived token the kubeconfig holds.
    pub fn token_account(&self) -> &str {
        self.requester.as_deref().unwrap_or(&self.service_account)
    }

    /// The requester: no rights but requesting tokens of the service account.
    pub fn requester_objects(&self) -> Option<(ServiceAccount, Role, RoleBinding)> {
        let requester = self.requester.as_ref()?;
        let namespace = Some(self.target_namespace.as_str());
        let account = ServiceAccount {
            metadata: self.meta(requester, namespace),
            automount_service_account_token: Some(false),
            ..Default::default()
        };
        let role = Role {
            metadata: self.meta(requester, namespace),
            rules: Some(vec![PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["serviceaccounts/token".into()]),
                resource_names: Some(vec![self.service_account.clone()]),
                verbs: vec!["create".into()],
                ..Default::default()
            }]),
        };
        let binding = RoleBinding {
            metadata: self.meta(requester, namespace),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "Role".into(),
                name: requester.clone(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: requester.clone(),
                namespace: Some(self.target_namespace.clone()),
                ..Default::default()
            }]),
        };
        Some((account, role, binding))
    }

    /// Filled by the token controller (`token`, `ca.crt`, `namespace`); deleting it revokes
    /// the token (and, with a requester, every short-lived token bound to it).
    pub fn token_secret(&self) -> Secret {
        let mut metadata = self.meta(&self.token_secret, Some(&self.target_namespace));
        metadata.annotations = Some(BTreeMap::from([(
            "kubernetes.io/service-account.name".into(),
            self.token_account().to_string(),
        )]));
        Secret {
            metadata,
            type_: Some("kubernetes.io/service-account-token".into()),
            ..Default::default()
        }
    }

    /// The source's Secret holding the kubeconfig.
    pub fn kubeconfig_secret(&self, kubeconfig: &str) -> Secret {
        let mut labels = self.labels();
        labels.insert(TARGET_CLUSTER_LABEL.into(), self.target.clone());
        Secret {
            metadata: ObjectMeta {
                name: Some(self.secret.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels),
                annotations: Some(BTreeMap::from([(
                    "multicluster.admiralty.io/credentials".into(),
                    match &self.requester {
                        None => format!(
                            "ServiceAccount {}/{} of the target cluster (token in Secret {})",
                            self.target_namespace, self.service_account, self.token_secret
                        ),
                        Some(requester) => format!(
                            "short-lived tokens of ServiceAccount {ns}/{}, requested as {ns}/{requester} of the target cluster (token in Secret {})",
                            self.service_account,
                            self.token_secret,
                            ns = self.target_namespace,
                        ),
                    },
                )])),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(
                KUBECONFIG_KEY.into(),
                ByteString(kubeconfig.as_bytes().to_vec()),
            )])),
            ..Default::default()
        }
    }
}

/// Where the target is and who to be there.
#[derive(Clone, Debug)]
pub struct TargetAccess<'a> {
    /// delegate-sync's name for the target: the kubeconfig's cluster and context.
    pub name: &'a str,
    pub server: &'a str,
    pub tls_server_name: Option<&'a str>,
    /// PEM.
    pub ca: &'a [u8],
    pub user: &'a str,
    pub token: &'a str,
    /// With a requester: what delegate-sync requests with it.
    pub token_request: Option<contract::TokenRequestExtension>,
}

/// A kubeconfig with one cluster, one user (a bearer token) and one current context, each
/// named for the target, the CA embedded: readable by kube-rs and kubectl alike.
pub fn render_kubeconfig(
    access: &TargetAccess<'_>,
) -> Result<String, serde_saphyr::SerializeError> {
    let mut cluster = json!({
        "server": access.server,
        "certificate-authority-data": STANDARD.encode(access.ca),
    });
    if let Some(name) = access.tls_server_name {
        cluster["tls-server-name"] = json!(name);
    }
    let mut context = json!({ "cluster": access.name, "user": access.user });
    if let Some(request) = &access.token_request {
        context["extensions"] = json!([{
            "name": contract::TOKEN_REQUEST_EXTENSION,
            "extension": request,
        }]);
    }
    serde_saphyr::to_string(&json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": access.name, "cluster": cluster }],
        "users": [{ "name": access.user, "user": { "token": access.token } }],
        "contexts": [{ "name": access.name, "context": context }],
        "current-context": access.name,
    }))
}

/// Is `value` a DNS label (RFC 1123: lowercase letters, digits and `-`, at most 63, starting
/// and ending alphanumeric)? Namespaces, delegate-sync's target names and label values.
pub fn is_dns_label(value: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !value.is_empty()
        && value.len() <= 63
        && value.chars().all(|c| alnum(c) || c == '-')
        && value.starts_with(alnum)
        && value.ends_with(alnum)
}

/// Is `value` a DNS subdomain (dot-separated DNS labels, at most 253)? Names of
/// ServiceAccounts, Secrets and RBAC objects.
pub fn is_dns_subdomain(value: &str) -> bool {
    value.len() <= 253 && value.split('.').all(is_dns_label)
}

/// A kube context name made into a DNS label: `gke_proj_zone_Prod` becomes `gke-proj-zone-prod`;
/// at most `max` characters; empty when nothing is left.
pub fn dns_label_from(text: &str, max: usize) -> String {
    let mut label = String::new();
    for c in text.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            label.push(c);
        } else if !label.is_empty() && !label.ends_with('-') {
            label.push('-');
        }
    }
    label.truncate(max);
    label.trim_end_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names {
            source: "cluster1".into(),
            target: "cluster2".into(),
            target_namespace: "multicluster".into(),
            service_account: "delegate-sync-cluster1".into(),
            requester: None,
            cluster_role: "multicluster-delegate-sync-cluster1".into(),
            token_secret: "delegate-sync-cluster1-token".into(),
            namespace: "multicluster".into(),
            secret: "cluster2-kubeconfig".into(),
        }
    }

    /// The rules block of the chart's ClusterRole (plain YAML between `rules:` and the next
    /// document), as JSON.
    fn chart_rules() -> serde_json::Value {
        let template = include_str!("../../../charts/target/templates/rbac.yaml");
        let (_, after) = template
            .split_once("\nrules:\n")
            .expect("the chart's ClusterRole has rules");
        let (block, _) = after.split_once("\n---").expect("a binding follows");
        serde_saphyr::from_str(block).expect("the rules are plain YAML")
    }

    #[test]
    fn the_cluster_role_grants_exactly_what_the_target_chart_grants() {
        let ours = serde_json::to_value(cluster_role_rules()).unwrap();
        assert_eq!(ours, chart_rules());
        let role = serde_json::to_value(names().cluster_role()).unwrap();
        assert_eq!(role["rules"], chart_rules());
    }

    #[test]
    fn the_binding_and_token_point_at_the_service_account() {
        let names = names();
        let binding = names.cluster_role_binding();
        assert_eq!(binding.role_ref.name, names.cluster_role);
        let subject = &binding.subjects.unwrap()[0];
        assert_eq!(
            (subject.name.as_str(), subject.namespace.as_deref()),
            ("delegate-sync-cluster1", Some("multicluster"))
        );
        let token = names.token_secret();
        assert_eq!(
            token.type_.as_deref(),
            Some("kubernetes.io/service-account-token")
        );
        assert_eq!(
            token.metadata.annotations.unwrap()["kubernetes.io/service-account.name"],
            "delegate-sync-cluster1"
        );
        assert_eq!(
            token.metadata.labels.unwrap()[SOURCE_CLUSTER_LABEL],
            "cluster1"
        );
        let secret = names.kubeconfig_secret("x");
        assert_eq!(
            secret.metadata.labels.unwrap()[TARGET_CLUSTER_LABEL],
            "cluster2"
        );
        assert_eq!(secret.data.unwrap()[KUBECONFIG_KEY].0, b"x");
    }

    #[test]
    fn the_kubeconfig_reads_back_with_kube() {
        let text = render_kubeconfig(&TargetAccess {
            name: "cluster2",
            server: "https://10.0.0.2:6443",
            tls_server_name: Some("kubernetes"),
            ca: b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            user: "delegate-sync-cluster1",
            token: "eyJhbGciOi.abc.def",
            token_request: None,
        })
        .unwrap();
        let parsed = kube::config::Kubeconfig::from_yaml(&text).unwrap();
        assert_eq!(parsed.current_context.as_deref(), Some("cluster2"));
        let cluster = parsed.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://10.0.0.2:6443"));
        assert_eq!(cluster.tls_server_name.as_deref(), Some("kubernetes"));
        let ca = STANDARD
            .decode(cluster.certificate_authority_data.as_ref().unwrap())
            .unwrap();
        assert!(ca.starts_with(b"-----BEGIN CERTIFICATE-----"));
        let user = parsed.auth_infos[0].auth_info.as_ref().unwrap();
        let token = serde_json::to_value(user).unwrap()["token"].clone();
        assert_eq!(token, "eyJhbGciOi.abc.def");
        let context = parsed.contexts[0].context.as_ref().unwrap();
        assert_eq!(context.user.as_deref(), Some("delegate-sync-cluster1"));
    }

    #[test]
    fn a_requester_may_only_request_tokens_of_the_account_and_the_kubeconfig_says_so() {
        assert!(names().requester_objects().is_none());
        let names = Names {
            requester: Some("delegate-sync-cluster1-requester".into()),
            token_secret: "delegate-sync-cluster1-requester-token".into(),
            ..names()
        };
        let (account, role, binding) = names.requester_objects().unwrap();
        assert_eq!(account.automount_service_account_token, Some(false));
        assert_eq!(
            serde_json::to_value(&role.rules).unwrap(),
            serde_json::json!([{
                "apiGroups": [""],
                "resources": ["serviceaccounts/token"],
                "resourceNames": ["delegate-sync-cluster1"],
                "verbs": ["create"],
            }])
        );
        assert_eq!(
            binding.subjects.unwrap()[0].name,
            "delegate-sync-cluster1-requester"
        );
        assert_eq!(
            names.token_secret().metadata.annotations.unwrap()["kubernetes.io/service-account.name"],
            "delegate-sync-cluster1-requester"
        );
        let request = contract::TokenRequestExtension {
            service_account: "multicluster/delegate-sync-cluster1".into(),
            expiration_seconds: 3600,
            bound_secret: Some(names.token_secret.clone()),
        };
        let text = render_kubeconfig(&TargetAccess {
            name: "cluster2",
            server: "https://10.0.0.2:6443",
            tls_server_name: None,
            ca: b"ca",
            user: "delegate-sync-cluster1-requester",
            token: "t",
            token_request: Some(request.clone()),
        })
        .unwrap();
        let parsed = kube::config::Kubeconfig::from_yaml(&text).unwrap();
        let extension = &parsed.contexts[0]
            .context
            .as_ref()
            .unwrap()
            .extensions
            .as_ref()
            .unwrap()[0];
        assert_eq!(extension.name, contract::TOKEN_REQUEST_EXTENSION);
        let read: contract::TokenRequestExtension =
            serde_json::from_value(extension.extension.clone()).unwrap();
        assert_eq!(read, request);
    }

    #[test]
    fn names_are_checked_and_made_from_contexts() {
        assert!(is_dns_label("cluster-2"));
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad:?}");
        }
        assert!(is_dns_subdomain("a.b-c"));
        assert!(!is_dns_subdomain("a..b"));
        assert_eq!(
            dns_label_from("gke_proj_zone_Prod", 63),
            "gke-proj-zone-prod"
        );
        assert_eq!(
            dns_label_from("arn:aws:eks:eu-west-1:123:cluster/x", 63),
            "arn-aws-eks-eu-west-1-123-cluster-x"
        );
        assert_eq!(dns_label_from("kind-a_b", 6), "kind-a");
        assert_eq!(dns_label_from("kind--", 63), "kind");
        assert_eq!(dns_label_from("_@", 63), "");
    }
}
