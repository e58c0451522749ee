//! The rewrite of an elected pod into a proxy pod, as a pure function of the pod, its
//! namespace and the settings: no IO, so every case is a unit test.

use contract::{
    CLEANUP_FINALIZER, ELECT, PROXY_LABEL, SOURCEPOD_MANIFEST, argo_kill_cmd_key,
    manifest::{ManifestError, ManifestKey},
};
use std::collections::BTreeMap;

use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use jsonptr::PointerBuf;
use serde_json::{Map, Value, json};

/// Kubernetes refuses objects whose annotations (keys and values) exceed 256 KiB in total.
pub const ANNOTATIONS_LIMIT_BYTES: usize = 256 * 1024;

/// Where the waiter finds the downward-API projection of the pod's annotations.
pub const PODINFO_DIR: &str = "/etc/proxy-waiter";
const PODINFO_VOLUME: &str = "proxy-waiter-podinfo";
const WAITER_COMMAND: &str = "/proxy-waiter";

/// Annotations not worth saving: they repeat the spec (and would double its size).
const UNSAVED_ANNOTATIONS: &[&str] = &["kubectl.kubernetes.io/last-applied-configuration"];

/// Spec fields a proxy keeps: identity, lifecycle and scheduling priority. Everything else
/// (volumes, node selectors, affinity, topology spread, host namespaces, runtime class...) only
/// the real workload needs, and would keep the proxy from being scheduled or admitted.
const KEPT_SPEC_FIELDS: &[&str] = &[
    "restartPolicy",
    "terminationGracePeriodSeconds",
    "activeDeadlineSeconds",
    "serviceAccountName",
    "serviceAccount",
    "tolerations",
    "priorityClassName",
    "priority",
    "preemptionPolicy",
    "schedulerName",
    "imagePullSecrets",
    "hostname",
    "subdomain",
    "readinessGates",
];

/// How proxy containers are made.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    pub waiter_image: String,
    pub image_pull_policy: String,
    /// Resource requests and limits of every proxy container, e.g. `{"cpu": "1m"}`.
    pub requests: Map<String, Value>,
    pub limits: Map<String, Value>,
    pub run_as_user: i64,
    /// Where proxies run: the node selector of every proxy (the pod's own is dropped: only the
    /// delegate needs it) and tolerations added to the pod's own.
    pub node_selector: Map<String, Value>,
    pub tolerations: Vec<Value>,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            waiter_image: format!("proxy-waiter:{}", env!("CARGO_PKG_VERSION")),
            image_pull_policy: "IfNotPresent".into(),
            requests: [
                ("cpu".to_string(), json!("1m")),
                ("memory".to_string(), json!("8Mi")),
            ]
            .into_iter()
            .collect(),
            limits: [
                ("cpu".to_string(), json!("10m")),
                ("memory".to_string(), json!("16Mi")),
            ]
            .into_iter()
            .collect(),
            run_as_user: 65532,
            node_selector: Map::new(),
            tolerations: Vec::new(),
        }
    }
}

/// What to answer for a pod.
#[derive(Debug, PartialEq)]
pub enum Mutation {
    /// Allow as is; the reason goes to logs and metrics.
    Unchanged(&'static str),
    /// Allow with this patch.
    Patch(Patch),
    /// Refuse, with an HTTP-style code and a message for the pod's creator.
    Deny { code: u16, message: String },
}

/// Decides what happens to `pod` (the AdmissionRequest's object) created in `namespace`.
pub fn mutate(
    pod: &Value,
    namespace: &str,
    settings: &ProxySettings,
    key: &ManifestKey,
) -> Mutation {
    let metadata = pod.get("metadata").and_then(Value::as_object);
    let annotations = metadata
        .and_then(|m| m.get("annotations"))
        .and_then(Value::as_object);
    if !annotations.is_some_and(|a| a.contains_key(ELECT)) {
        return Mutation::Unchanged("not elected");
    }
    let labels = metadata
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object);
    let saved = annotations.and_then(|a| a.get(SOURCEPOD_MANIFEST));
    if saved.is_some() || labels.is_some_and(|l| l.contains_key(PROXY_LABEL)) {
        return already_a_proxy(saved, namespace, key);
    }
    let Some(spec) = pod.get("spec").and_then(Value::as_object) else {
        return deny(400, "the pod has no spec");
    };
    let proxy_spec = match proxy_spec(spec, settings) {
        Ok(spec) => spec,
        Err(message) => return deny(400, message),
    };
    let sealed = key.seal(namespace, &saved_manifest(pod, namespace));
    let mut added = vec![(SOURCEPOD_MANIFEST.to_string(), sealed)];
    added.extend(argo_kill_commands(spec));
    let annotations_bytes = annotations_bytes(annotations, &added);
    if annotations_bytes > ANNOTATIONS_LIMIT_BYTES {
        return deny(
            400,
            &format!(
                "this pod is too large to be delegated: saving it in annotation {SOURCEPOD_MANIFEST} would bring \
                 the pod's annotations to {annotations_bytes} bytes, over Kubernetes' limit of {ANNOTATIONS_LIMIT_BYTES}; \
                 make the pod smaller (e.g. move large environment values or commands into a ConfigMap) \
                 or remove annotation {ELECT}"
            ),
        );
    }
    let mut patch: Vec<PatchOperation> = added
        .into_iter()
        .map(|(key, value)| add(&["metadata", "annotations", &key], Value::String(value)))
        .collect();
    patch.extend([
        match labels {
            Some(_) => add(&["metadata", "labels", PROXY_LABEL], json!("true")),
            None => add(&["metadata", "labels"], json!({ PROXY_LABEL: "true" })),
        },
        match metadata
            .and_then(|m| m.get("finalizers"))
            .and_then(Value::as_array)
        {
            Some(_) => add(&["metadata", "finalizers", "-"], json!(CLEANUP_FINALIZER)),
            None => add(&["metadata", "finalizers"], json!([CLEANUP_FINALIZER])),
        },
        PatchOperation::Replace(ReplaceOperation {
            path: pointer(&["spec"]),
            value: proxy_spec,
        }),
    ]);
    Mutation::Patch(Patch(patch))
}

/// For each container, how Argo Workflows must stop it: its default kill command runs a shell
/// or argoexec, which a proxy container does not have. Replaces any the owner set (the saved
/// manifest keeps those for the delegate). Init containers are never signalled by Argo; a
/// container whose key would be invalid (name over 54 characters) gets none rather than
/// getting the whole pod refused.
fn argo_kill_commands(spec: &Map<String, Value>) -> Vec<(String, String)> {
    let command = json!([WAITER_COMMAND, "kill", "%d"]).to_string();
    spec.get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .filter_map(argo_kill_cmd_key)
        .map(|key| (key, command.clone()))
        .collect()
}

/// Size of the proxy's annotations as Kubernetes counts it: the pod's, with `added` set.
fn annotations_bytes(original: Option<&Map<String, Value>>, added: &[(String, String)]) -> usize {
    let kept: usize = original
        .into_iter()
        .flatten()
        .filter(|(k, _)| !added.iter().any(|(key, _)| key == *k))
        .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
        .sum();
    kept + added.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
}

/// A pod that says it is a proxy: re-invocation of the webhook (fine) or a forgery (refused:
/// a manifest that does not verify would never become a delegate anyway, so say so now).
fn already_a_proxy(saved: Option<&Value>, namespace: &str, key: &ManifestKey) -> Mutation {
    let Some(saved) = saved.and_then(Value::as_str) else {
        return deny(
            403,
            &format!(
                "the pod has label {PROXY_LABEL} but no {SOURCEPOD_MANIFEST}: only the webhook makes proxy pods"
            ),
        );
    };
    match key.open(namespace, saved) {
        Ok(_) => Mutation::Unchanged("already a proxy"),
        Err(
            e @ (ManifestError::BadSignature
            | ManifestError::Malformed
            | ManifestError::UnknownVersion(_)),
        ) => deny(
            403,
            &format!(
                "annotation {SOURCEPOD_MANIFEST} was not written by this webhook ({e}); remove it and create the pod again"
            ),
        ),
        Err(e) => deny(500, &e.to_string()),
    }
}

fn deny(code: u16, message: &str) -> Mutation {
    Mutation::Deny {
        code,
        message: message.to_string(),
    }
}

/// The pod as delegate-sync will rebuild it: spec, plus the metadata a delegate needs,
/// serialized from borrowed parts (no copy of the spec). Fields in alphabetical order, as
/// they always were, so existing seals stay comparable.
fn saved_manifest(pod: &Value, namespace: &str) -> String {
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Metadata<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        annotations: Option<BTreeMap<&'a str, &'a Value>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        generate_name: Option<&'a Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        labels: Option<&'a Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<&'a Value>,
        namespace: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Saved<'a> {
        metadata: Metadata<'a>,
        spec: &'a Value,
    }
    let original = pod.get("metadata");
    let field = |name: &str| original.and_then(|m| m.get(name));
    let saved = Saved {
        metadata: Metadata {
            annotations: field("annotations")
                .and_then(Value::as_object)
                .map(|annotations| {
                    annotations
                        .iter()
                        .filter(|(k, _)| !UNSAVED_ANNOTATIONS.contains(&k.as_str()))
                        .map(|(k, v)| (k.as_str(), v))
                        .collect()
                }),
            generate_name: field("generateName"),
            labels: field("labels"),
            name: field("name"),
            namespace,
        },
        spec: pod.get("spec").unwrap_or(&Value::Null),
    };
    // Borrowed JSON values always serialize.
    serde_json::to_string(&saved).unwrap_or_default()
}

fn proxy_spec(spec: &Map<String, Value>, settings: &ProxySettings) -> Result<Value, &'static str> {
    let containers = spec
        .get("containers")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
        .ok_or("the pod has no spec.containers")?;
    let mut proxy: Map<String, Value> = KEPT_SPEC_FIELDS
        .iter()
        .filter_map(|field| spec.get(*field).map(|v| (field.to_string(), v.clone())))
        .collect();
    proxy.insert(
        "containers".into(),
        containers
            .iter()
            .map(|c| proxy_container(c, Role::Main, settings))
            .collect::<Result<_, _>>()?,
    );
    if let Some(inits) = spec.get("initContainers").and_then(Value::as_array) {
        let inits: Vec<Value> = inits
            .iter()
            .map(|c| {
                let sidecar = c.get("restartPolicy").and_then(Value::as_str) == Some("Always");
                proxy_container(
                    c,
                    if sidecar { Role::Sidecar } else { Role::Init },
                    settings,
                )
            })
            .collect::<Result<_, _>>()?;
        proxy.insert("initContainers".into(), Value::Array(inits));
    }
    if !settings.node_selector.is_empty() {
        proxy.insert(
            "nodeSelector".into(),
            Value::Object(settings.node_selector.clone()),
        );
    }
    if !settings.tolerations.is_empty() {
        let mut tolerations = spec
            .get("tolerations")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for toleration in &settings.tolerations {
            if !tolerations.contains(toleration) {
                tolerations.push(toleration.clone());
            }
        }
        proxy.insert("tolerations".into(), Value::Array(tolerations));
    }
    // The waiter talks to no API server.
    proxy.insert("automountServiceAccountToken".into(), json!(false));
    proxy.insert(
        "securityContext".into(),
        json!({
            "runAsNonRoot": true,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_user,
            "seccompProfile": { "type": "RuntimeDefault" },
        }),
    );
    proxy.insert(
        "volumes".into(),
        json!([{
            "name": PODINFO_VOLUME,
            "downwardAPI": { "items": [{ "path": "annotations", "fieldRef": { "fieldPath": "metadata.annotations" } }] },
        }]),
    );
    Ok(Value::Object(proxy))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Main,
    Init,
    /// A native sidecar (init container with `restartPolicy: Always`): it runs alongside the
    /// main containers, so it waits like them.
    Sidecar,
}

fn proxy_container(
    original: &Value,
    role: Role,
    settings: &ProxySettings,
) -> Result<Value, &'static str> {
    let name = original
        .get("name")
        .and_then(Value::as_str)
        .ok_or("a container has no name")?;
    let mut container = json!({
        "name": name,
        "image": settings.waiter_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": [WAITER_COMMAND],
        "resources": { "requests": settings.requests, "limits": settings.limits },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "capabilities": { "drop": ["ALL"] },
        },
    });
    let fields = container.as_object_mut().ok_or("unreachable")?;
    for kept in [
        "terminationMessagePath",
        "terminationMessagePolicy",
        "restartPolicy",
    ] {
        if let Some(value) = original.get(kept) {
            fields.insert(kept.into(), value.clone());
        }
    }
    if role == Role::Init {
        fields.insert("args".into(), json!(["init"]));
        return Ok(container);
    }
    let mut env = vec![
        json!({ "name": "PROXY_WAITER_CONTAINER", "value": name }),
        json!({ "name": "PROXY_WAITER_ANNOTATIONS", "value": format!("{PODINFO_DIR}/annotations") }),
    ];
    if let Some(path) = original
        .get("terminationMessagePath")
        .and_then(Value::as_str)
    {
        env.push(json!({ "name": "PROXY_WAITER_TERMINATION_LOG", "value": path }));
    }
    fields.insert("env".into(), Value::Array(env));
    fields.insert(
        "volumeMounts".into(),
        json!([{ "name": PODINFO_VOLUME, "mountPath": PODINFO_DIR, "readOnly": true }]),
    );
    Ok(container)
}

fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: pointer(tokens),
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ManifestKey {
        ManifestKey::from_bytes(&[42; 32]).unwrap()
    }

    fn elected() -> Value {
        json!({
            "metadata": { "name": "p", "annotations": { ELECT: "" } },
            "spec": { "containers": [{ "name": "main", "image": "busybox" }] },
        })
    }

    fn apply(pod: &Value, mutation: Mutation) -> Value {
        let Mutation::Patch(patch) = mutation else {
            panic!("expected a patch, got {mutation:?}")
        };
        let mut patched = pod.clone();
        json_patch::patch(&mut patched, &patch).unwrap();
        patched
    }

    #[test]
    fn pods_without_the_elect_annotation_are_untouched() {
        let pod = json!({ "metadata": { "name": "p" }, "spec": { "containers": [] } });
        assert_eq!(
            mutate(&pod, "ns", &ProxySettings::default(), &key()),
            Mutation::Unchanged("not elected")
        );
    }

    #[test]
    fn missing_labels_and_finalizers_are_created_before_adding_to_them() {
        let proxy = apply(
            &elected(),
            mutate(&elected(), "ns", &ProxySettings::default(), &key()),
        );
        assert_eq!(proxy["metadata"]["labels"][PROXY_LABEL], "true");
        assert_eq!(proxy["metadata"]["finalizers"], json!([CLEANUP_FINALIZER]));
    }

    #[test]
    fn proxies_run_where_the_operator_says_and_keep_the_pods_tolerations() {
        let mut pod = elected();
        pod["spec"]["nodeSelector"] = json!({ "gpu": "yes" });
        pod["spec"]["tolerations"] = json!([{ "key": "gpu", "operator": "Exists" }]);
        let pool = json!({ "key": "proxies", "operator": "Exists", "effect": "NoSchedule" });
        let settings = ProxySettings {
            node_selector: [("pool".to_string(), json!("proxies"))]
                .into_iter()
                .collect(),
            tolerations: vec![pool.clone(), json!({ "key": "gpu", "operator": "Exists" })],
            ..Default::default()
        };
        let proxy = apply(&pod, mutate(&pod, "ns", &settings, &key()));
        assert_eq!(proxy["spec"]["nodeSelector"], json!({ "pool": "proxies" }));
        assert_eq!(
            proxy["spec"]["tolerations"],
            json!([{ "key": "gpu", "operator": "Exists" }, pool])
        );
        let by_default = apply(&pod, mutate(&pod, "ns", &ProxySettings::default(), &key()));
        assert!(by_default["spec"].get("nodeSelector").is_none());
        assert_eq!(
            by_default["spec"]["tolerations"],
            pod["spec"]["tolerations"]
        );
    }

    #[test]
    fn existing_labels_and_finalizers_are_kept() {
        let mut pod = elected();
        pod["metadata"]["labels"] = json!({ "app": "x" });
        pod["metadata"]["finalizers"] = json!(["other"]);
        let proxy = apply(&pod, mutate(&pod, "ns", &ProxySettings::default(), &key()));
        assert_eq!(
            proxy["metadata"]["labels"],
            json!({ "app": "x", PROXY_LABEL: "true" })
        );
        assert_eq!(
            proxy["metadata"]["finalizers"],
            json!(["other", CLEANUP_FINALIZER])
        );
    }

    #[test]
    fn reinvocation_changes_nothing() {
        let settings = ProxySettings::default();
        let proxy = apply(&elected(), mutate(&elected(), "ns", &settings, &key()));
        assert_eq!(
            mutate(&proxy, "ns", &settings, &key()),
            Mutation::Unchanged("already a proxy")
        );
    }

    #[test]
    fn forged_or_moved_proxies_are_denied() {
        let settings = ProxySettings::default();
        let proxy = apply(&elected(), mutate(&elected(), "ns", &settings, &key()));
        let Mutation::Deny { code: 403, message } = mutate(&proxy, "other-ns", &settings, &key())
        else {
            panic!()
        };
        assert!(message.contains("not written by this webhook"), "{message}");

        let mut forged = elected();
        forged["metadata"]["annotations"][SOURCEPOD_MANIFEST] = json!("v1.AAAA.{}");
        assert!(matches!(
            mutate(&forged, "ns", &settings, &key()),
            Mutation::Deny { code: 403, .. }
        ));

        let mut labelled = elected();
        labelled["metadata"]["labels"] = json!({ PROXY_LABEL: "true" });
        assert!(matches!(
            mutate(&labelled, "ns", &settings, &key()),
            Mutation::Deny { code: 403, .. }
        ));
    }

    #[test]
    fn proxies_tell_argo_to_stop_each_container_with_the_waiter() {
        let owners = json!(["/bin/sh", "-c", "kill -%d 1"]).to_string();
        let long = "c".repeat(55);
        let mut pod = elected();
        pod["metadata"]["annotations"]["workflows.argoproj.io/kill-cmd-main"] = json!(owners);
        pod["spec"]["containers"] = json!([
            { "name": "main", "image": "busybox" },
            { "name": "wait", "image": "argoexec" },
            { "name": long, "image": "busybox" },
        ]);
        pod["spec"]["initContainers"] = json!([{ "name": "init", "image": "argoexec" }]);
        let settings = ProxySettings::default();
        let mutation = mutate(&pod, "ns", &settings, &key());
        let Mutation::Patch(patch) = &mutation else {
            panic!("{mutation:?}")
        };
        assert!(
            patch.0.iter().any(|op| op.path().as_str()
                == "/metadata/annotations/workflows.argoproj.io~1kill-cmd-main"),
            "{patch:?}"
        );
        let proxy = apply(&pod, mutation);
        let annotations = proxy["metadata"]["annotations"].as_object().unwrap();
        let ours = json!(r#"["/proxy-waiter","kill","%d"]"#);
        assert_eq!(annotations["workflows.argoproj.io/kill-cmd-main"], ours);
        assert_eq!(annotations["workflows.argoproj.io/kill-cmd-wait"], ours);
        let kill_keys = annotations.keys().filter(|k| k.contains("/kill-cmd-"));
        assert_eq!(
            kill_keys.count(),
            2,
            "none for init containers or invalid keys"
        );

        let sealed = annotations[SOURCEPOD_MANIFEST].as_str().unwrap();
        let saved: Value = serde_json::from_str(key().open("ns", sealed).unwrap()).unwrap();
        assert_eq!(
            saved["metadata"]["annotations"], pod["metadata"]["annotations"],
            "the delegate keeps the owner's kill command"
        );
        assert_eq!(
            mutate(&proxy, "ns", &settings, &key()),
            Mutation::Unchanged("already a proxy")
        );
    }

    /// Argo 4.1's opt-in init-less layout (`initlessPod.enabled`; Argo's docs/initless-pod.md
    /// and PR #16161, not served by the module proxy, so written from them): no init container,
    /// a `supervisor` container in place of `init` and `wait`, argoexec mounted into `main` from
    /// an image volume at `/argo-bin`, one sidecar per artifact plugin.
    #[test]
    fn an_argo_4_1_init_less_step_becomes_a_proxy_that_needs_no_image_volume() {
        let argoexec = "quay.io/argoproj/argoexec:v4.1.0";
        let mut pod = elected();
        pod["metadata"]["labels"] = json!({ "workflows.argoproj.io/workflow": "wf" });
        pod["spec"]["containers"] = json!([
            { "name": "main", "image": "busybox",
              "command": ["/argo-bin/argoexec", "emissary", "--", "sh", "-c", "echo hi"],
              "volumeMounts": [
                  { "name": "var-run-argo", "mountPath": "/var/run/argo" },
                  { "name": "argo-bin", "mountPath": "/argo-bin", "readOnly": true },
              ] },
            { "name": "supervisor", "image": argoexec, "command": ["argoexec"], "args": ["supervisor"],
              "volumeMounts": [{ "name": "var-run-argo", "mountPath": "/var/run/argo" }] },
            { "name": "artifact-plugin-s3", "image": "example/s3-plugin:1" },
        ]);
        pod["spec"]["volumes"] = json!([
            { "name": "var-run-argo", "emptyDir": {} },
            { "name": "argo-bin", "image": { "reference": argoexec, "pullPolicy": "IfNotPresent" } },
        ]);
        let proxy = apply(&pod, mutate(&pod, "ns", &ProxySettings::default(), &key()));

        assert!(proxy["spec"].get("initContainers").is_none());
        let containers = proxy["spec"]["containers"].as_array().unwrap();
        let names: Vec<&str> = containers
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["main", "supervisor", "artifact-plugin-s3"]);
        for container in containers {
            assert_eq!(container["command"], json!([WAITER_COMMAND]), "{container}");
            assert!(
                container.get("args").is_none(),
                "every container waits: {container}"
            );
        }
        assert_eq!(
            proxy["spec"]["volumes"],
            json!([{ "name": PODINFO_VOLUME, "downwardAPI": { "items": [{ "path": "annotations", "fieldRef": { "fieldPath": "metadata.annotations" } }] } }]),
            "the proxy's node needs neither argoexec nor image volumes"
        );
        let annotations = proxy["metadata"]["annotations"].as_object().unwrap();
        for name in names {
            assert_eq!(
                annotations[&format!("workflows.argoproj.io/kill-cmd-{name}")],
                json!(r#"["/proxy-waiter","kill","%d"]"#),
                "Argo stops {name} through the waiter"
            );
        }
        let sealed = annotations[SOURCEPOD_MANIFEST].as_str().unwrap();
        let saved: Value = serde_json::from_str(key().open("ns", sealed).unwrap()).unwrap();
        assert_eq!(
            saved["spec"], pod["spec"],
            "the delegate runs Argo's layout as is (its cluster needs image volumes)"
        );
    }

    #[test]
    fn the_size_limit_counts_the_annotations_the_proxy_ends_with() {
        let added = [("k".to_string(), "vv".to_string())];
        let original = json!({ "k": "replaced", "a": "b" });
        assert_eq!(annotations_bytes(original.as_object(), &added), 2 + 3);
    }

    #[test]
    fn pods_without_containers_are_denied_with_a_reason() {
        let mut pod = elected();
        pod["spec"] = json!({});
        let Mutation::Deny { code: 400, message } =
            mutate(&pod, "ns", &ProxySettings::default(), &key())
        else {
            panic!()
        };
        assert!(message.contains("spec.containers"));
    }
}
