//! The delegate pod, built from a proxy's verified saved manifest. Pure, so every rule is a
//! unit test: deterministic name, labels moved out of the way of the target's controllers,
//! references back to the proxy, no service-account token of the source cluster, none of our
//! own keys (a delegate must never be elected again in its cluster).

use std::collections::BTreeMap;

use contract::{DOMAIN, RESTARTS, is_own_key};
use serde_json::{Map, Value, json};

/// Label on every delegate (value `true`).
pub const DELEGATE_LABEL: &str = "multicluster.admiralty.io/delegate";
/// Label and annotation naming the proxy's cluster.
pub const PROXY_CLUSTER: &str = "multicluster.admiralty.io/proxy-cluster";
/// Label and annotation with the proxy's UID (a label value fits it; names may not fit).
pub const PROXY_UID: &str = "multicluster.admiralty.io/proxy-uid";
/// Annotations naming the proxy.
pub const PROXY_NAMESPACE: &str = "multicluster.admiralty.io/proxy-namespace";
pub const PROXY_NAME: &str = "multicluster.admiralty.io/proxy-name";

/// Longest delegate name: a DNS label, so that it also fits a hostname and label values.
pub const MAX_NAME: usize = 63;

/// The proxy a delegate stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyRef {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Which replacement of the proxy's delegate this is (0: the first delegate).
    pub restart: u32,
}

/// Why a delegate cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DelegateError {
    #[error("the saved manifest is not a pod: {0}")]
    NotAPod(String),
}

/// `<cluster>-<namespace>-<name>` (`...-r<N>` for the N-th replacement), or, past
/// [`MAX_NAME`], a prefix of it and a hash of the whole: deterministic, so a restarted
/// controller finds the delegate it already made, and a replacement never shares the name of
/// the delegate it replaces (a cache that still shows the old one cannot be taken for it).
pub fn delegate_name(proxy: &ProxyRef) -> String {
    let replacement = match proxy.restart {
        0 => String::new(),
        n => format!("-r{n}"),
    };
    let full = format!(
        "{}-{}-{}{replacement}",
        proxy.cluster, proxy.namespace, proxy.name
    )
    .to_lowercase();
    if full.len() <= MAX_NAME {
        return full;
    }
    let hash = fnv1a64(full.as_bytes());
    let suffix = format!("{hash:016x}");
    let keep = MAX_NAME - suffix.len() - 1;
    let prefix = full[..keep].trim_end_matches(['-', '.']);
    format!("{prefix}-{suffix}")
}

/// FNV-1a: tiny, stable across builds and platforms (unlike `std`'s hasher).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A source label key as the delegate carries it: `app` → `multicluster.admiralty.io/app`,
/// `example.com/tier` → `example.com.multicluster.admiralty.io/tier`, so that selectors of
/// the target's controllers (ReplicaSets, Jobs, Argo) never match the delegate.
pub fn prefixed_label(key: &str) -> String {
    match key.split_once('/') {
        Some((prefix, name)) => format!("{prefix}.{DOMAIN}/{name}"),
        None => format!("{DOMAIN}/{key}"),
    }
}

/// The delegate pod (JSON) from the verified saved manifest.
pub fn build(saved: &Value, proxy: &ProxyRef) -> Result<Value, DelegateError> {
    let metadata = saved.get("metadata").and_then(Value::as_object);
    let mut spec = saved
        .get("spec")
        .and_then(Value::as_object)
        .filter(|s| {
            s.get("containers")
                .and_then(Value::as_array)
                .is_some_and(|c| !c.is_empty())
        })
        .cloned()
        .ok_or_else(|| DelegateError::NotAPod("no spec.containers".into()))?;
    remove_service_account_token(&mut spec);
    spec.remove("nodeName");

    let mut labels: BTreeMap<String, Value> = metadata
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| (prefixed_label(k), v.clone()))
        .collect();
    labels.insert(DELEGATE_LABEL.into(), json!("true"));
    labels.insert(PROXY_CLUSTER.into(), json!(proxy.cluster));
    labels.insert(PROXY_UID.into(), json!(proxy.uid));

    let mut annotations: BTreeMap<String, Value> = metadata
        .and_then(|m| m.get("annotations"))
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(k, _)| !is_own_key(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (key, value) in [
        (PROXY_CLUSTER, &proxy.cluster),
        (PROXY_NAMESPACE, &proxy.namespace),
        (PROXY_NAME, &proxy.name),
        (PROXY_UID, &proxy.uid),
        (RESTARTS, &proxy.restart.to_string()),
    ] {
        annotations.insert(key.into(), json!(value));
    }
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": delegate_name(proxy),
            "namespace": proxy.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": spec,
    }))
}

/// Removes the token volume the source cluster's ServiceAccount admission projected (and its
/// mounts): it is the source cluster's credential. The target projects its own.
fn remove_service_account_token(spec: &mut Map<String, Value>) {
    let is_token_volume = |volume: &Value| {
        volume
            .pointer("/projected/sources")
            .and_then(Value::as_array)
            .is_some_and(|sources| {
                sources
                    .iter()
                    .any(|s| s.get("serviceAccountToken").is_some())
            })
            && volume
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| n.starts_with("kube-api-access-"))
    };
    let removed: Vec<String> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| is_token_volume(v))
        .filter_map(|v| v.get("name").and_then(Value::as_str).map(str::to_string))
        .collect();
    if removed.is_empty() {
        return;
    }
    if let Some(Value::Array(volumes)) = spec.get_mut("volumes") {
        volumes.retain(|v| !is_token_volume(v));
    }
    for field in ["containers", "initContainers"] {
        for container in spec
            .get_mut(field)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(Value::Array(mounts)) = container.get_mut("volumeMounts") {
                mounts.retain(|m| {
                    !m.get("name")
                        .and_then(Value::as_str)
                        .is_some_and(|n| removed.iter().any(|r| r == n))
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(name: &str) -> ProxyRef {
        ProxyRef {
            cluster: "cluster1".into(),
            namespace: "team-a".into(),
            name: name.into(),
            uid: "5e0e4c37-1f0b-11e9-a6a3-42010a800002".into(),
            restart: 0,
        }
    }

    const SAVED: &str = r#"{
        "metadata": {
            "name": "step", "namespace": "team-a",
            "labels": { "app": "etl", "workflows.argoproj.io/workflow": "wf" },
            "annotations": { "multicluster.admiralty.io/elect": "", "multicluster.admiralty.io/clustername": "cluster2",
                             "workflows.argoproj.io/node-name": "wf.step" }
        },
        "spec": {
            "nodeName": "source-node",
            "serviceAccountName": "runner",
            "containers": [{ "name": "main", "image": "busybox",
                "volumeMounts": [{ "name": "data", "mountPath": "/data" },
                                 { "name": "kube-api-access-x7k2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount" }] }],
            "volumes": [
                { "name": "data", "emptyDir": {} },
                { "name": "kube-api-access-x7k2p", "projected": { "sources": [{ "serviceAccountToken": { "path": "token" } }] } }
            ]
        }
    }"#;

    #[test]
    fn names_are_deterministic_and_shortened_past_the_limit() {
        assert_eq!(delegate_name(&proxy("step")), "cluster1-team-a-step");
        let long = proxy(&"very-long-workflow-step-name-".repeat(4));
        let name = delegate_name(&long);
        assert_eq!(name.len(), MAX_NAME);
        assert_eq!(name, delegate_name(&long), "same proxy, same name");
        let other = ProxyRef {
            name: format!("{}x", long.name),
            ..long.clone()
        };
        assert_ne!(
            delegate_name(&other),
            name,
            "the hash tells long names apart"
        );
        assert!(name.starts_with("cluster1-team-a-very-long"));
    }

    #[test]
    fn a_replacement_has_a_name_of_its_own_and_says_which_it_is() {
        let third = ProxyRef {
            restart: 3,
            ..proxy("step")
        };
        assert_eq!(delegate_name(&third), "cluster1-team-a-step-r3");
        let long = ProxyRef {
            restart: 1,
            ..proxy(&"very-long-workflow-step-name-".repeat(4))
        };
        let first = ProxyRef {
            restart: 0,
            ..long.clone()
        };
        assert_ne!(delegate_name(&long), delegate_name(&first));
        assert_eq!(delegate_name(&long).len(), MAX_NAME);
        let delegate = build(&serde_json::from_str(SAVED).unwrap(), &third).unwrap();
        assert_eq!(delegate["metadata"]["annotations"][RESTARTS], "3");
    }

    #[test]
    fn the_delegate_is_the_saved_pod_with_references_and_no_source_credentials() {
        let delegate = build(&serde_json::from_str(SAVED).unwrap(), &proxy("step")).unwrap();
        assert_eq!(delegate["metadata"]["name"], "cluster1-team-a-step");
        assert_eq!(delegate["metadata"]["namespace"], "team-a");
        let labels = &delegate["metadata"]["labels"];
        assert_eq!(labels["multicluster.admiralty.io/app"], "etl");
        assert_eq!(
            labels["workflows.argoproj.io.multicluster.admiralty.io/workflow"],
            "wf"
        );
        assert!(
            labels.get("app").is_none() && labels.get("workflows.argoproj.io/workflow").is_none()
        );
        assert_eq!(labels[DELEGATE_LABEL], "true");
        assert_eq!(labels[PROXY_UID], "5e0e4c37-1f0b-11e9-a6a3-42010a800002");
        let annotations = &delegate["metadata"]["annotations"];
        assert_eq!(annotations["workflows.argoproj.io/node-name"], "wf.step");
        assert!(
            annotations.get(contract::ELECT).is_none(),
            "never elected again in the target"
        );
        assert!(annotations.get(contract::CLUSTER_NAME).is_none());
        assert_eq!(annotations[PROXY_NAME], "step");
        let spec = &delegate["spec"];
        assert!(spec.get("nodeName").is_none());
        assert_eq!(spec["serviceAccountName"], "runner");
        assert_eq!(spec["volumes"], json!([{ "name": "data", "emptyDir": {} }]));
        assert_eq!(
            spec["containers"][0]["volumeMounts"],
            json!([{ "name": "data", "mountPath": "/data" }])
        );
    }

    #[test]
    fn a_manifest_that_is_not_a_pod_is_refused() {
        assert!(build(&json!("not an object"), &proxy("p")).is_err());
        assert!(
            build(
                &json!({ "metadata": {}, "spec": { "containers": [] } }),
                &proxy("p")
            )
            .is_err()
        );
    }
}
