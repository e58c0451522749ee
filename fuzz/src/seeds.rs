//! Seed inputs of each target: the webhook's golden fixtures wrapped in AdmissionReviews
//! (pods and the proxies made of them), hand-made hostile reviews, results, projections and
//! sealed manifests.

use std::sync::OnceLock;

use contract::{
    ELECT, PROXY_LABEL, SOURCEPOD_MANIFEST,
    result::{ContainerResult, DelegateResult, FORMAT_VERSION, Phase},
};
use serde_json::{Value, json};

use crate::targets::{NAMESPACE, key};

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../webhook/tests/fixtures/",
            $name
        ))
    };
}

/// The golden fixtures: pods, and the proxies the webhook made of them (sealed with the key
/// of [`crate::targets::key`] for namespace [`NAMESPACE`], so they are genuine proxies).
const FIXTURES: &[&str] = &[
    fixture!("argo-v2.pod.json"),
    fixture!("argo-v3-emissary.pod.json"),
    fixture!("generate-name.pod.json"),
    fixture!("job.pod.json"),
    fixture!("not-elected.pod.json"),
    fixture!("volumes.pod.json"),
    fixture!("argo-v2.proxy.json"),
    fixture!("argo-v3-emissary.proxy.json"),
    fixture!("generate-name.proxy.json"),
    fixture!("job.proxy.json"),
    fixture!("volumes.proxy.json"),
];

/// An AdmissionReview as the kube-apiserver sends it.
pub fn review(uid: &str, namespace: &str, operation: &str, pod: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": { "group": "", "version": "v1", "kind": "Pod" },
            "resource": { "group": "", "version": "v1", "resource": "pods" },
            "requestKind": { "group": "", "version": "v1", "kind": "Pod" },
            "namespace": namespace,
            "operation": operation,
            "userInfo": { "username": "system:serviceaccount:argo:argo", "groups": ["system:authenticated"] },
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": { "apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions" },
        }
    })
}

fn elected(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "annotations": { ELECT: "" } },
        "spec": { "containers": [{ "name": "main", "image": "busybox" }] },
    })
}

/// Reviews of the webhook target, as parsed JSON.
pub fn webhook_values() -> &'static [Value] {
    static SEEDS: OnceLock<Vec<Value>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let mut seeds: Vec<Value> = FIXTURES
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let pod: Value = serde_json::from_str(text).unwrap_or(Value::Null);
                review(&format!("fixture-{i}"), NAMESPACE, "CREATE", pod)
            })
            .collect();
        let sidecars = json!({
            "metadata": { "generateName": "s-", "labels": { "app": "x" }, "finalizers": ["a/b"],
                          "annotations": { ELECT: "yes", "kubectl.kubernetes.io/last-applied-configuration": "{}" } },
            "spec": {
                "initContainers": [
                    { "name": "setup", "image": "busybox" },
                    { "name": "mesh", "image": "envoy", "restartPolicy": "Always" },
                ],
                "containers": [{ "name": "main", "image": "busybox", "terminationMessagePath": "/dev/termination-log" }],
                "nodeSelector": { "disk": "ssd" },
                "hostNetwork": true,
            },
        });
        let mut forged = elected("forged");
        forged["metadata"]["annotations"][SOURCEPOD_MANIFEST] = json!("v1.AAAA.{}");
        let mut labelled = elected("labelled");
        labelled["metadata"]["labels"] = json!({ PROXY_LABEL: "true" });
        let mut moved = elected("moved");
        moved["metadata"]["annotations"][SOURCEPOD_MANIFEST] =
            json!(key().seal("other-namespace", "{}"));
        let mut large = elected("large");
        large["spec"]["containers"][0]["env"] = json!([{ "name": "BLOB", "value": "x".repeat(20_000) }]);
        seeds.extend([
            review("sidecars", NAMESPACE, "CREATE", sidecars),
            review("update", NAMESPACE, "UPDATE", elected("p")),
            review("kube-system", "kube-system", "CREATE", elected("p")),
            review("own", "webhook-system", "CREATE", elected("p")),
            review("forged", NAMESPACE, "CREATE", forged),
            review("forged-excluded", "kube-system", "CREATE", labelled.clone()),
            review("labelled", NAMESPACE, "CREATE", labelled),
            review("moved", NAMESPACE, "CREATE", moved),
            review("large", NAMESPACE, "CREATE", large),
            review("no-containers", NAMESPACE, "CREATE", json!({ "metadata": { "annotations": { ELECT: "" } }, "spec": {} })),
            review("null-object", NAMESPACE, "CREATE", Value::Null),
            {
                let mut r = review("deployment", NAMESPACE, "CREATE", elected("p"));
                r["request"]["kind"] = json!({ "group": "apps", "version": "v1", "kind": "Deployment" });
                r
            },
            {
                let mut r = review("status", NAMESPACE, "CREATE", elected("p"));
                r["request"]["subResource"] = json!("status");
                r
            },
        ]);
        seeds
    })
}

/// Results: what delegate-sync writes, and near misses.
pub fn result_values() -> &'static [Value] {
    static SEEDS: OnceLock<Vec<Value>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let container = |exit_code, message: Option<&str>| ContainerResult {
            exit_code,
            reason: None,
            message: message.map(str::to_string),
        };
        let results = [
            DelegateResult {
                version: FORMAT_VERSION,
                phase: Phase::Succeeded,
                reason: None,
                message: None,
                containers: [("main".to_string(), container(0, None))].into(),
            },
            DelegateResult {
                version: FORMAT_VERSION,
                phase: Phase::Failed,
                reason: None,
                message: None,
                containers: [
                    ("main".to_string(), container(3, Some("disk full\nat /data"))),
                    ("wait".to_string(), container(0, None)),
                ]
                .into(),
            },
            DelegateResult {
                version: FORMAT_VERSION,
                phase: Phase::Failed,
                reason: Some("DelegateLost".into()),
                message: Some("the delegate disappeared".into()),
                containers: Default::default(),
            },
        ];
        let mut seeds: Vec<Value> = results
            .iter()
            .filter_map(|r| serde_json::from_str(&r.encode()).ok())
            .collect();
        seeds.extend([
            json!({ "v": 2, "phase": "Succeeded" }),
            json!({ "phase": "Failed" }),
            json!({ "v": 1, "phase": "Failed", "containers": { "main": { "exitCode": 256, "reason": "OOMKilled" } } }),
            json!({ "v": 1, "phase": "Succeeded", "containers": { "main": { "exitCode": -1 } }, "extra": [1, 2] }),
        ]);
        seeds
    })
}

/// Byte seeds of every target.
pub fn bytes(target: crate::Target) -> &'static [Vec<u8>] {
    static WEBHOOK: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    static RESULT: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    static MANIFEST: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    static DOWNWARD: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    let to_bytes = |values: &[Value]| -> Vec<Vec<u8>> {
        values
            .iter()
            .map(|v| serde_json::to_vec(v).unwrap_or_default())
            .collect()
    };
    match target {
        crate::Target::Webhook => WEBHOOK.get_or_init(|| to_bytes(webhook_values())),
        crate::Target::Result => RESULT.get_or_init(|| to_bytes(result_values())),
        crate::Target::Manifest => MANIFEST.get_or_init(|| {
            let mut seeds: Vec<Vec<u8>> = FIXTURES
                .iter()
                .filter_map(|text| {
                    let proxy: Value = serde_json::from_str(text).ok()?;
                    let sealed = proxy["metadata"]["annotations"][SOURCEPOD_MANIFEST].as_str()?;
                    Some(format!("{NAMESPACE}\n{sealed}").into_bytes())
                })
                .collect();
            seeds.extend(
                [
                    "team-a\nv1.AAAA.{}",
                    "team-a\nv2.AAAA.{}",
                    "ns\nv1..",
                    "\n",
                    "ns\n{\"metadata\":{\"name\":\"p\"},\"spec\":{}}",
                    "key-bytes-that-are-long-enough-0123456789",
                ]
                .map(|s| s.as_bytes().to_vec()),
            );
            seeds
        }),
        crate::Target::Downward => DOWNWARD.get_or_init(|| {
            [
                concat!(
                    "a.io/json=\"{\\\"v\\\":1,\\\"phase\\\":\\\"Failed\\\"}\"\n",
                    "b.io/lines=\"first\\nsecond\\ttabbed\"\n",
                    "c.io/unicode=\"héllo ✓ \\u200b\\x7f\"\n",
                    "d.io/empty=\"\"\n",
                ),
                "multicluster.admiralty.io/result=\"{\\\"v\\\":1,\\\"phase\\\":\\\"Succeeded\\\",\\\"containers\\\":{\\\"main\\\":{\\\"exitCode\\\":0}}}\"\n",
                "k=\"\\a\\b\\f\\n\\r\\t\\v\\\\\\\"\\'\\x41\\101\\u00e9\\U0001F600\"\n",
                "k=\"\\xc3\\xa9\"\nk2=\"\\303\\251\"\n",
                "no-equals\n",
                "k=unquoted\n",
            ]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect()
        }),
    }
}
