//! What delegate-sync keeps of the pods it caches: the fields its steps read, nothing else.
//! A pod as `k8s_openapi` holds it takes 13–15 KiB of heap, two thirds of it the spec (a
//! service-account volume alone is a few KiB of structs), and delegate-sync caches every proxy
//! and every delegate: at 10,000 proxies that is most of its memory.
//!
//! Trimmed pods are only read, never written back. A step that starts reading another field of
//! a cached proxy or delegate must keep it here; the tests below check that every reading of
//! today gives the same answer on a trimmed pod as on the whole one.

use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, EphemeralContainer, Pod, PodSpec, PodStatus,
    ProjectedVolumeSource, Volume, VolumeProjection,
};

use crate::needs::ROOT_CA_CONFIG_MAP;

/// Keeps of a proxy its metadata (annotations, labels, finalizers, owners: all read), where and
/// how it runs (node, restart policy, its containers' names) and its status less conditions
/// and addresses.
pub fn trim_proxy(proxy: &mut Pod) {
    proxy.metadata.managed_fields = None;
    proxy.spec = proxy.spec.take().map(|spec| PodSpec {
        containers: spec.containers.into_iter().map(named).collect(),
        init_containers: spec
            .init_containers
            .map(|cs| cs.into_iter().map(named).collect()),
        node_name: spec.node_name,
        restart_policy: spec.restart_policy,
        ..PodSpec::default()
    });
    proxy.status = proxy.status.take().map(outcome_status);
}

/// Keeps of a delegate its metadata, what placement counts (node, requests, overhead), what its
/// result reads (restart policies, container names, status) and the ConfigMaps and Secrets it
/// references ([`crate::needs`], for the copies).
pub fn trim_delegate(delegate: &mut Pod) {
    delegate.metadata.managed_fields = None;
    delegate.spec = delegate.spec.take().map(|spec| PodSpec {
        containers: spec.containers.into_iter().map(counted).collect(),
        init_containers: spec
            .init_containers
            .map(|cs| cs.into_iter().map(counted).collect()),
        ephemeral_containers: spec
            .ephemeral_containers
            .map(|cs| cs.into_iter().map(ephemeral_references).collect()),
        node_name: spec.node_name,
        restart_policy: spec.restart_policy,
        overhead: spec.overhead,
        volumes: spec
            .volumes
            .and_then(|vs| not_empty(vs.into_iter().filter_map(volume_references).collect())),
        image_pull_secrets: spec.image_pull_secrets,
        service_account_name: spec.service_account_name.or(spec.service_account),
        ..PodSpec::default()
    });
    delegate.status = delegate.status.take().map(outcome_status);
}

/// Phase, reason, message and the containers' statuses: what results, restarts, stops and
/// log relays read.
fn outcome_status(status: PodStatus) -> PodStatus {
    PodStatus {
        phase: status.phase,
        reason: status.reason,
        message: status.message,
        container_statuses: status.container_statuses,
        init_container_statuses: status.init_container_statuses,
        ..PodStatus::default()
    }
}

/// A container's name and restart policy (a native sidecar's is `Always`).
fn named(container: Container) -> Container {
    Container {
        name: container.name,
        restart_policy: container.restart_policy,
        ..Container::default()
    }
}

/// A container as placement counts it and as the copies read its references.
fn counted(container: Container) -> Container {
    Container {
        name: container.name,
        restart_policy: container.restart_policy,
        resources: container.resources,
        env: env_references(container.env),
        env_from: container.env_from,
        ..Container::default()
    }
}

fn ephemeral_references(container: EphemeralContainer) -> EphemeralContainer {
    EphemeralContainer {
        name: container.name,
        env: env_references(container.env),
        env_from: container.env_from,
        ..EphemeralContainer::default()
    }
}

/// The variables taken from a ConfigMap or a Secret, without their values.
fn env_references(env: Option<Vec<EnvVar>>) -> Option<Vec<EnvVar>> {
    let kept = env?
        .into_iter()
        .filter_map(|var| {
            let from = var.value_from?;
            (from.config_map_key_ref.is_some() || from.secret_key_ref.is_some()).then(|| EnvVar {
                name: var.name,
                value: None,
                value_from: Some(EnvVarSource {
                    config_map_key_ref: from.config_map_key_ref,
                    secret_key_ref: from.secret_key_ref,
                    ..EnvVarSource::default()
                }),
            })
        })
        .collect();
    not_empty(kept)
}

/// None for an empty list, else the list without spare room: collecting a filtered list reuses
/// the whole list's buffer (a dropped service-account volume would keep its 3 KiB).
fn not_empty<T>(mut kept: Vec<T>) -> Option<Vec<T>> {
    kept.shrink_to_fit();
    (!kept.is_empty()).then_some(kept)
}

/// A volume's ConfigMap and Secret references (by name and whether optional); None for a
/// volume that references neither, such as the service-account token's.
fn volume_references(volume: Volume) -> Option<Volume> {
    let config_map = volume.config_map.map(|mut c| {
        c.items = None;
        c
    });
    let secret = volume.secret.map(|mut s| {
        s.items = None;
        s
    });
    let sources: Vec<VolumeProjection> = volume
        .projected
        .and_then(|p| p.sources)
        .into_iter()
        .flatten()
        .filter_map(|source| {
            let config_map = source
                .config_map
                .filter(|c| c.name != ROOT_CA_CONFIG_MAP)
                .map(|mut c| {
                    c.items = None;
                    c
                });
            let secret = source.secret.map(|mut s| {
                s.items = None;
                s
            });
            (config_map.is_some() || secret.is_some()).then(|| VolumeProjection {
                config_map,
                secret,
                ..VolumeProjection::default()
            })
        })
        .collect();
    let projected = not_empty(sources).map(|sources| ProjectedVolumeSource {
        sources: Some(sources),
        ..ProjectedVolumeSource::default()
    });
    (config_map.is_some() || secret.is_some() || projected.is_some()).then(|| Volume {
        name: volume.name,
        config_map,
        secret,
        projected,
        ..Volume::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        needs, outcome,
        placement::{footprint, pod_requests},
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use serde_json::{Value, json};

    /// A delegate with every kind of field delegate-sync reads, and many it does not.
    fn rich_pod(phase: &str) -> Pod {
        let mut volumes = needs::volumes_of_every_kind();
        if let Some(list) = volumes.as_array_mut() {
            list.push(
                json!({ "name": "kube-api-access", "projected": { "sources": [
                { "serviceAccountToken": { "path": "token" } },
                { "configMap": { "name": "kube-root-ca.crt" } },
            ] } }),
            );
        }
        serde_json::from_value(json!({
            "metadata": {
                "name": "d", "namespace": "ns", "uid": "u", "resourceVersion": "7",
                "labels": { "a": "1" }, "annotations": { "b": "2" }, "finalizers": ["f"],
                "ownerReferences": [{ "apiVersion": "v1", "kind": "Pod", "name": "o", "uid": "o" }],
                "managedFields": [{ "manager": "kubectl", "operation": "Apply" }],
            },
            "spec": {
                "nodeName": "n1", "restartPolicy": "Never", "serviceAccount": "builder",
                "overhead": { "cpu": "50m" },
                "imagePullSecrets": [{ "name": "registry" }],
                "tolerations": [{ "operator": "Exists" }],
                "volumes": volumes,
                "initContainers": [
                    { "name": "setup", "image": "i", "resources": { "requests": { "cpu": "2" } },
                      "envFrom": [{ "secretRef": { "name": "init-env" } }] },
                    { "name": "sidecar", "image": "s", "restartPolicy": "Always",
                      "resources": { "requests": { "memory": "1Gi" } } },
                ],
                "containers": [{
                    "name": "main", "image": "busybox", "command": ["sh", "-c", "true"],
                    "resources": { "requests": { "cpu": "500m" }, "limits": { "memory": "2Gi" } },
                    "envFrom": [{ "configMapRef": { "name": "env", "optional": true } }],
                    "env": needs::env_of_every_kind(),
                    "volumeMounts": [{ "name": "a", "mountPath": "/a" }],
                }, { "name": "second", "image": "busybox" }],
                "ephemeralContainers": [{ "name": "debug", "envFrom": [{ "secretRef": { "name": "debug-env" } }] }],
            },
            "status": {
                "phase": phase, "reason": "Evicted", "message": "the node ran out",
                "conditions": [{ "type": "Ready", "status": "False" }],
                "podIP": "10.0.0.1", "qosClass": "Burstable", "startTime": "2026-12-07T11:41:48Z",
                "initContainerStatuses": [
                    { "name": "setup", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                      "state": { "terminated": { "exitCode": 0 } } },
                    { "name": "sidecar", "image": "s", "imageID": "", "ready": true, "restartCount": 1,
                      "state": { "terminated": { "exitCode": 0 } },
                      "lastState": { "terminated": { "exitCode": 137, "reason": "OOMKilled" } } },
                ],
                "containerStatuses": [
                    { "name": "main", "image": "busybox", "imageID": "", "ready": false, "restartCount": 2,
                      "state": { "terminated": { "exitCode": 3, "reason": "Error", "message": "disk full" } },
                      "lastState": { "terminated": { "exitCode": 1 } } },
                    { "name": "second", "image": "busybox", "imageID": "", "ready": false, "restartCount": 0,
                      "state": { "terminated": { "exitCode": 0 } } },
                ],
            },
        }))
        .unwrap()
    }

    fn trimmed(pod: &Pod, trim: fn(&mut Pod)) -> Pod {
        let mut copy = pod.clone();
        trim(&mut copy);
        copy
    }

    fn as_value(pod: &Pod) -> Value {
        serde_json::to_value(pod).unwrap()
    }

    /// Every field of a pod's spec and status that a step reads of a cached proxy or delegate
    /// (`grep -n 'spec\|status' src`): where and how it runs, its containers' names, restart
    /// policies and requests, and its status less conditions and addresses.
    fn readings(pod: &Pod) -> Value {
        let spec = pod.spec.clone().unwrap_or_default();
        let status = pod.status.clone().unwrap_or_default();
        let containers = |cs: &[Container]| -> Value {
            cs.iter()
                .map(|c| json!([c.name, c.restart_policy, c.resources]))
                .collect()
        };
        json!({
            "node": spec.node_name,
            "restartPolicy": spec.restart_policy,
            "containers": containers(&spec.containers),
            "initContainers": containers(spec.init_containers.as_deref().unwrap_or_default()),
            "phase": status.phase,
            "reason": status.reason,
            "message": status.message,
            "statuses": status.container_statuses,
            "initStatuses": status.init_container_statuses,
        })
    }

    fn metadata_less_managed_fields(pod: &Pod) -> ObjectMeta {
        let mut meta = pod.metadata.clone();
        meta.managed_fields = None;
        meta
    }

    #[test]
    fn a_trimmed_delegate_reads_as_the_whole_one() {
        for phase in ["Running", "Failed", "Succeeded"] {
            let whole = rich_pod(phase);
            let kept = trimmed(&whole, trim_delegate);
            assert_eq!(kept.metadata, metadata_less_managed_fields(&whole));
            assert_eq!(readings(&kept), readings(&whole));
            let references = needs::of(&as_value(&whole));
            assert_eq!(references.secrets.len(), 5, "{references:?}");
            assert_eq!(needs::of(&as_value(&kept)), references);
            let spec = |p: &Pod| p.spec.clone().unwrap_or_default();
            assert_eq!(pod_requests(&spec(&kept)), pod_requests(&spec(&whole)));
            assert_eq!(footprint(&kept), footprint(&whole));
            assert_eq!(outcome::result_of(&kept), outcome::result_of(&whole));
        }
    }

    #[test]
    fn a_trimmed_proxy_reads_as_the_whole_one() {
        for phase in ["Running", "Failed", "Succeeded"] {
            let whole = rich_pod(phase);
            let kept = trimmed(&whole, trim_proxy);
            assert_eq!(kept.metadata, metadata_less_managed_fields(&whole));
            let without_requests = |pod: &Pod| {
                let mut r = readings(pod);
                for list in ["containers", "initContainers"] {
                    for c in r[list].as_array_mut().into_iter().flatten() {
                        c[2] = Value::Null;
                    }
                }
                r
            };
            assert_eq!(without_requests(&kept), without_requests(&whole));
            assert_eq!(outcome::result_of(&kept), outcome::result_of(&whole));
        }
    }

    #[test]
    fn a_service_account_volume_is_not_kept() {
        let kept = trimmed(&rich_pod("Running"), trim_delegate);
        let names: Vec<String> = kept
            .spec
            .unwrap()
            .volumes
            .unwrap()
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
    }
}
