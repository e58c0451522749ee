//! Golden fixtures: for each pod in `fixtures/*.pod.json`, the webhook's patch applied to the
//! pod must give `fixtures/*.proxy.json`, and the saved manifest must open to the original.
//! `UPDATE_GOLDEN=1 cargo test -p webhook --test golden` rewrites the expected files (review
//! the diff before committing).

use std::{fs, path::Path};

use contract::{SOURCEPOD_MANIFEST, manifest::ManifestKey};
use serde_json::{Value, json};
use webhook::mutate::{ANNOTATIONS_LIMIT_BYTES, Mutation, ProxySettings, mutate};

const NAMESPACE: &str = "team-a";

fn key() -> ManifestKey {
    ManifestKey::from_bytes(b"golden-fixtures-key-0123456789abcdef").unwrap()
}

fn settings() -> ProxySettings {
    ProxySettings {
        waiter_image: "proxy-waiter:golden".into(),
        ..ProxySettings::default()
    }
}

fn fixtures() -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut pods: Vec<(String, Value)> = fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let path = e.ok()?.path();
            let name = path
                .file_name()?
                .to_str()?
                .strip_suffix(".pod.json")?
                .to_string();
            Some((
                name,
                serde_json::from_str(&fs::read_to_string(&path).ok()?).ok()?,
            ))
        })
        .collect();
    pods.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(pods.len() >= 6, "fixtures missing");
    pods
}

fn apply(pod: &Value) -> Option<Value> {
    match mutate(pod, NAMESPACE, &settings(), &key()) {
        Mutation::Patch(patch) => {
            let mut proxy = pod.clone();
            json_patch::patch(&mut proxy, &patch).unwrap();
            Some(proxy)
        }
        Mutation::Unchanged(_) => None,
        Mutation::Deny { message, .. } => panic!("denied: {message}"),
    }
}

#[test]
fn each_fixture_becomes_its_expected_proxy() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for (name, pod) in fixtures() {
        let expected_path = dir.join(format!("{name}.proxy.json"));
        let Some(proxy) = apply(&pod) else {
            assert!(
                !expected_path.exists(),
                "{name}: no patch, yet {name}.proxy.json exists"
            );
            assert_eq!(
                name, "not-elected",
                "only the non-elected pod is left alone"
            );
            continue;
        };
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            fs::write(
                &expected_path,
                serde_json::to_string_pretty(&proxy).unwrap() + "\n",
            )
            .unwrap();
        }
        let expected: Value =
            serde_json::from_str(&fs::read_to_string(&expected_path).unwrap()).unwrap();
        assert_eq!(
            proxy,
            expected,
            "{name}: proxy differs from {}",
            expected_path.display()
        );
    }
}

#[test]
fn the_saved_manifest_is_the_original_pod() {
    for (name, pod) in fixtures() {
        let Some(proxy) = apply(&pod) else { continue };
        let sealed = proxy["metadata"]["annotations"][SOURCEPOD_MANIFEST]
            .as_str()
            .unwrap();
        let saved: Value = serde_json::from_str(key().open(NAMESPACE, sealed).unwrap()).unwrap();
        assert_eq!(saved["spec"], pod["spec"], "{name}");
        assert_eq!(saved["metadata"]["namespace"], NAMESPACE, "{name}");
        for field in ["name", "generateName", "labels"] {
            assert_eq!(
                saved["metadata"].get(field),
                pod["metadata"].get(field),
                "{name}: {field}"
            );
        }
        assert!(
            saved["metadata"]["annotations"]
                .get("kubectl.kubernetes.io/last-applied-configuration")
                .is_none()
        );
        assert!(
            saved["metadata"].get("ownerReferences").is_none(),
            "{name}: owners live in the source cluster"
        );
    }
}

#[test]
fn proxies_are_minimal_and_locked_down() {
    for (name, pod) in fixtures() {
        let Some(proxy) = apply(&pod) else { continue };
        let spec = &proxy["spec"];
        for dropped in [
            "volumes",
            "nodeSelector",
            "affinity",
            "topologySpreadConstraints",
            "hostNetwork",
            "runtimeClassName",
            "shareProcessNamespace",
        ] {
            if dropped == "volumes" {
                assert_eq!(
                    spec["volumes"].as_array().unwrap().len(),
                    1,
                    "{name}: only the downward-API volume"
                );
            } else {
                assert!(spec.get(dropped).is_none(), "{name}: {dropped} kept");
            }
        }
        assert_eq!(spec["automountServiceAccountToken"], false);
        let original_names = |field: &str| -> Vec<Value> {
            pod["spec"][field]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| c["name"].clone())
                .collect()
        };
        for field in ["containers", "initContainers"] {
            let containers = spec[field].as_array().cloned().unwrap_or_default();
            let names: Vec<Value> = containers.iter().map(|c| c["name"].clone()).collect();
            assert_eq!(
                names,
                original_names(field),
                "{name}: {field} keep their names and order"
            );
            for c in containers {
                assert_eq!(c["image"], "proxy-waiter:golden");
                assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
                assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
                assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
                assert!(
                    c.get("ports").is_none()
                        && c.get("livenessProbe").is_none()
                        && c.get("envFrom").is_none()
                );
            }
        }
        for c in spec["containers"].as_array().unwrap() {
            let key = format!(
                "workflows.argoproj.io/kill-cmd-{}",
                c["name"].as_str().unwrap()
            );
            assert_eq!(
                proxy["metadata"]["annotations"][&key],
                json!(r#"["/proxy-waiter","kill","%d"]"#),
                "{name}: Argo stops {key} with the waiter"
            );
        }
        assert_eq!(spec["tolerations"], pod["spec"]["tolerations"], "{name}");
        assert_eq!(
            spec["serviceAccountName"], pod["spec"]["serviceAccountName"],
            "{name}"
        );
        assert_eq!(
            proxy["metadata"]["annotations"][contract::ELECT],
            pod["metadata"]["annotations"][contract::ELECT]
        );
    }
}

fn large_pod(env_bytes: usize) -> Value {
    json!({
        "metadata": { "name": "large", "annotations": { contract::ELECT: "" } },
        "spec": { "containers": [{ "name": "main", "image": "busybox", "env": [{ "name": "BLOB", "value": "x".repeat(env_bytes) }] }] },
    })
}

#[test]
fn a_large_pod_that_fits_is_proxied() {
    let proxy = apply(&large_pod(200 * 1024)).expect("a 200 KiB pod still fits");
    assert!(
        proxy["metadata"]["annotations"][SOURCEPOD_MANIFEST]
            .as_str()
            .unwrap()
            .len()
            > 200 * 1024
    );
}

#[test]
fn a_pod_too_large_to_save_is_denied_with_what_to_do() {
    let Mutation::Deny { code, message } = mutate(
        &large_pod(ANNOTATIONS_LIMIT_BYTES),
        NAMESPACE,
        &settings(),
        &key(),
    ) else {
        panic!("expected a denial")
    };
    assert_eq!(code, 400);
    assert!(message.contains("over Kubernetes' limit"), "{message}");
    assert!(
        message.contains("ConfigMap") && message.contains(contract::ELECT),
        "{message}"
    );
}
