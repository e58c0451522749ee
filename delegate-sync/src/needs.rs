//! What a pod needs in its namespace besides itself: the ConfigMaps and Secrets it references
//! (volumes, projected volumes, `envFrom`, `env[].valueFrom`, `imagePullSecrets`) and its
//! ServiceAccount. Read from the verified saved manifest, so pure and unit-tested.

use std::collections::BTreeMap;

use serde_json::Value;

/// Created in every namespace by the target's own controller: never copied.
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";

/// Whether the pod cannot start without an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Need {
    /// `optional: true`, or an image pull Secret (the kubelet pulls without it).
    Optional,
    Required,
}

/// The objects a pod references, by name, each with whether it is required.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    pub config_maps: BTreeMap<String, Need>,
    pub secrets: BTreeMap<String, Need>,
    /// None: `default` (made by the target's own controller).
    pub service_account: Option<String>,
}

impl Needs {
    pub fn is_empty(&self) -> bool {
        self.config_maps.is_empty() && self.secrets.is_empty() && self.service_account.is_none()
    }
}

/// Every reference of the saved pod `saved`.
pub fn of(saved: &Value) -> Needs {
    let spec = &saved["spec"];
    let mut needs = Needs {
        service_account: spec["serviceAccountName"]
            .as_str()
            .or_else(|| spec["serviceAccount"].as_str())
            .filter(|name| !name.is_empty() && *name != "default")
            .map(str::to_string),
        ..Default::default()
    };
    for volume in items(&spec["volumes"]) {
        needs.config_map(&volume["configMap"], "name");
        needs.secret(&volume["secret"], "secretName");
        for source in items(&volume["projected"]["sources"]) {
            needs.config_map(&source["configMap"], "name");
            needs.secret(&source["secret"], "name");
        }
    }
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for container in items(&spec[list]) {
            for from in items(&container["envFrom"]) {
                needs.config_map(&from["configMapRef"], "name");
                needs.secret(&from["secretRef"], "name");
            }
            for env in items(&container["env"]) {
                needs.config_map(&env["valueFrom"]["configMapKeyRef"], "name");
                needs.secret(&env["valueFrom"]["secretKeyRef"], "name");
            }
        }
    }
    for pull in items(&spec["imagePullSecrets"]) {
        if let Some(name) = pull["name"].as_str().filter(|n| !n.is_empty()) {
            needs.add_secret(name, Need::Optional);
        }
    }
    needs.config_maps.remove(ROOT_CA_CONFIG_MAP);
    needs
}

fn items(value: &Value) -> impl Iterator<Item = &Value> {
    value.as_array().into_iter().flatten()
}

/// A reference's need: required unless `optional: true`.
fn need_of(reference: &Value) -> Need {
    match reference["optional"].as_bool() {
        Some(true) => Need::Optional,
        _ => Need::Required,
    }
}

impl Needs {
    fn config_map(&mut self, reference: &Value, key: &str) {
        if let Some(name) = reference[key].as_str().filter(|n| !n.is_empty()) {
            let need = need_of(reference);
            let entry = self.config_maps.entry(name.into()).or_insert(need);
            *entry = (*entry).max(need);
        }
    }

    fn secret(&mut self, reference: &Value, key: &str) {
        if let Some(name) = reference[key].as_str().filter(|n| !n.is_empty()) {
            self.add_secret(name, need_of(reference));
        }
    }

    fn add_secret(&mut self, name: &str, need: Need) {
        let entry = self.secrets.entry(name.into()).or_insert(need);
        *entry = (*entry).max(need);
    }
}

/// Variables of each kind a container takes from a ConfigMap or a Secret (and two it does not),
/// for the same tests as [`volumes_of_every_kind`].
#[cfg(test)]
pub(crate) fn env_of_every_kind() -> Value {
    serde_json::json!([
        { "name": "X", "valueFrom": { "configMapKeyRef": { "name": "settings", "key": "x", "optional": true } } },
        { "name": "Y", "valueFrom": { "secretKeyRef": { "name": "tls", "key": "y" } } },
        { "name": "Z", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
        { "name": "W", "value": "plain" },
    ])
}

/// A volume of each kind that references ConfigMaps and Secrets (and one that does not), for
/// the tests of what a pod needs and of what a cache keeps of it.
#[cfg(test)]
pub(crate) fn volumes_of_every_kind() -> Value {
    serde_json::json!([
        { "name": "a", "configMap": { "name": "settings", "items": [{ "key": "k", "path": "p" }] } },
        { "name": "b", "secret": { "secretName": "tls", "optional": true } },
        { "name": "c", "projected": { "sources": [
            { "configMap": { "name": "extra", "optional": true } },
            { "secret": { "name": "token" } },
            { "serviceAccountToken": { "path": "t" } },
            { "configMap": { "name": "kube-root-ca.crt" } },
        ] } },
        { "name": "d", "emptyDir": {} },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_kind_of_reference_is_found_with_its_need() {
        let pod = json!({ "spec": {
            "serviceAccountName": "builder",
            "imagePullSecrets": [{ "name": "registry" }],
            "volumes": volumes_of_every_kind(),
            "initContainers": [{ "name": "i", "envFrom": [{ "secretRef": { "name": "init-env" } }] }],
            "containers": [{
                "name": "main",
                "envFrom": [{ "configMapRef": { "name": "env", "optional": true } }],
                "env": env_of_every_kind(),
            }],
        } });
        let needs = of(&pod);
        use Need::*;
        assert_eq!(
            needs.config_maps,
            BTreeMap::from([
                ("env".into(), Optional),
                ("extra".into(), Optional),
                // Required by the volume, optional in env: required.
                ("settings".into(), Required),
            ])
        );
        assert_eq!(
            needs.secrets,
            BTreeMap::from([
                ("init-env".into(), Required),
                ("registry".into(), Optional),
                // Optional as a volume, required by env: required.
                ("tls".into(), Required),
                ("token".into(), Required),
            ])
        );
        assert_eq!(needs.service_account.as_deref(), Some("builder"));
    }

    #[test]
    fn a_plain_pod_needs_nothing() {
        let pod = json!({ "spec": { "serviceAccountName": "default", "containers": [{ "name": "main", "image": "busybox" }] } });
        assert!(of(&pod).is_empty());
        assert!(of(&json!({})).is_empty());
    }
}
