//! Node shapes and placeholder "system" pods that give each cluster a known capacity.

use std::{collections::BTreeMap, path::Path};

use anyhow::Context as _;
use k8s_openapi::{
    api::core::v1::{Container, Namespace, Node, Pod, PodSpec, ResourceRequirements, Toleration},
    apimachinery::pkg::api::resource::Quantity,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use serde::Deserialize;

/// Namespace of the placeholder pods that stand for a cluster's system workloads.
pub const SYSTEM_NAMESPACE: &str = "testbed-system";
/// Label on every object the test bed itself creates.
pub const TESTBED_LABEL: &str = "testbed.multicluster.admiralty.io/managed";

const BLOG: &str = include_str!("../../testbed/presets/blog.json");

/// The shape of every cluster: how many nodes, their allocatable resources, and how much CPU
/// placeholder pods already request on each node.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Preset {
    #[serde(default)]
    pub description: String,
    pub node: NodeShape,
    /// Fake nodes (kwok) per cluster.
    pub nodes_per_cluster: usize,
    /// Real nodes (a kubelet and a containerd each) per cluster, beside the fake ones.
    #[serde(default)]
    pub real_nodes_per_cluster: usize,
    /// Allocatable resources of a real node, when they differ from `node` (a real node cannot
    /// offer more than this machine has).
    #[serde(default)]
    pub real_node: Option<NodeShape>,
    /// Per cluster name, the CPU requested by a placeholder pod on each node, in node order.
    /// Clusters not listed have no placeholder pods.
    #[serde(default)]
    pub system_cpu_per_node: BTreeMap<String, Vec<String>>,
}

/// Allocatable resources of a fake node.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeShape {
    pub cpu: String,
    pub memory: String,
    pub pods: String,
}

impl Preset {
    /// The blog's clusters (3 nodes of 940m CPU / 2.58Gi; system pods request 1840m in
    /// cluster1 and 1740m in cluster2).
    pub fn blog() -> Self {
        serde_json::from_str(BLOG)
            .unwrap_or_else(|e| panic!("the built-in blog preset is valid JSON: {e}"))
    }

    /// `blog`, or the path of a preset JSON file.
    pub fn named(name_or_path: &str) -> anyhow::Result<Self> {
        if name_or_path == "blog" {
            return Ok(Self::blog());
        }
        let text = std::fs::read_to_string(Path::new(name_or_path)).with_context(|| {
            format!("preset {name_or_path:?} is neither `blog` nor a readable file")
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("preset file {name_or_path} is not a valid preset"))
    }

    /// Fake node names of a cluster, in order.
    pub fn node_names(&self, cluster: &str) -> Vec<String> {
        (1..=self.nodes_per_cluster)
            .map(|i| format!("{cluster}-kwok{i}"))
            .collect()
    }

    /// Real node names of a cluster, in order.
    pub fn real_node_names(&self, cluster: &str) -> Vec<String> {
        (1..=self.real_nodes_per_cluster)
            .map(|i| format!("{cluster}-real{i}"))
            .collect()
    }

    /// Allocatable resources of each real node.
    pub fn real_node_shape(&self) -> &NodeShape {
        self.real_node.as_ref().unwrap_or(&self.node)
    }

    fn system_cpu(&self, cluster: &str, node_index: usize) -> Option<&str> {
        self.system_cpu_per_node
            .get(cluster)
            .and_then(|cpus| cpus.get(node_index))
            .map(String::as_str)
    }
}

/// Creates the preset's fake nodes (managed by kwok) and placeholder pods in one cluster.
pub async fn apply(client: &Client, cluster: &str, preset: &Preset) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    for name in preset.node_names(cluster) {
        create_if_missing(&nodes, &fake_node(&name, &preset.node)).await?;
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(SYSTEM_NAMESPACE.into()),
            labels: Some(BTreeMap::from([(TESTBED_LABEL.into(), "true".into())])),
            ..Default::default()
        },
        ..Default::default()
    };
    create_if_missing(&namespaces, &namespace).await?;
    Ok(())
}

/// Creates the placeholder pods, on fake and real nodes alike (the n-th node of each kind gets
/// the n-th CPU figure); the namespace's default ServiceAccount must exist.
pub async fn apply_system_pods(
    client: &Client,
    cluster: &str,
    preset: &Preset,
) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    for names in [preset.node_names(cluster), preset.real_node_names(cluster)] {
        for (index, node) in names.iter().enumerate() {
            if let Some(cpu) = preset.system_cpu(cluster, index) {
                create_if_missing(&pods, &placeholder_pod(node, cpu)).await?;
            }
        }
    }
    Ok(())
}

/// Creates `object` unless one of that name exists.
pub async fn create_if_missing<K>(api: &Api<K>, object: &K) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot create {:?}", object.meta().name)),
    }
}

fn fake_node(name: &str, shape: &NodeShape) -> Node {
    let resources = BTreeMap::from([
        ("cpu".to_string(), Quantity(shape.cpu.clone())),
        ("memory".to_string(), Quantity(shape.memory.clone())),
        ("pods".to_string(), Quantity(shape.pods.clone())),
    ]);
    serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                crate::nodes::KIND_LABEL: crate::nodes::KWOK,
                TESTBED_LABEL: "true",
            },
            // kwok manages the nodes carrying this annotation (see `--manage-nodes-with-annotation-selector`).
            "annotations": { "kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0" },
        },
        "status": { "allocatable": resources, "capacity": resources },
    }))
    .unwrap_or_else(|e| panic!("a fake node is a valid Node: {e}"))
}

fn placeholder_pod(node: &str, cpu: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("system-reserved-{node}")),
            labels: Some(BTreeMap::from([(TESTBED_LABEL.into(), "true".into())])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.to_string()),
            automount_service_account_token: Some(false),
            containers: vec![Container {
                name: "reserved".into(),
                image: Some(crate::nodes::PAUSE_IMAGE.into()),
                image_pull_policy: Some("Never".into()),
                resources: Some(ResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "cpu".to_string(),
                        Quantity(cpu.to_string()),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            tolerations: Some(vec![Toleration {
                operator: Some("Exists".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(cpu: &str) -> u32 {
        cpu.trim_end_matches('m').parse().unwrap()
    }

    #[test]
    fn blog_preset_reproduces_the_blogs_capacity() {
        let preset = Preset::blog();
        assert_eq!(preset.nodes_per_cluster, 3);
        assert_eq!(preset.node.cpu, "940m");
        assert_eq!(preset.node.memory, "2.58Gi");
        let total = |c: &str| {
            preset.system_cpu_per_node[c]
                .iter()
                .map(|x| millis(x))
                .sum::<u32>()
        };
        assert_eq!(total("cluster1"), 1840);
        assert_eq!(total("cluster2"), 1740);
        // 200m pods that fit at once: 3 in cluster1 (four waves of ten), 4 in cluster2.
        let fits = |c: &str| {
            preset.system_cpu_per_node[c]
                .iter()
                .map(|x| (940 - millis(x)) / 200)
                .sum::<u32>()
        };
        assert_eq!(fits("cluster1"), 3);
        assert_eq!(fits("cluster2"), 4);
    }

    #[test]
    fn fake_nodes_carry_the_shape_and_the_kwok_annotation() {
        let node = fake_node("cluster1-kwok1", &Preset::blog().node);
        let status = node.status.unwrap();
        assert_eq!(status.allocatable.unwrap()["cpu"], Quantity("940m".into()));
        assert_eq!(
            node.metadata.annotations.unwrap()["kwok.x-k8s.io/node"],
            "fake"
        );
    }

    #[test]
    fn unknown_preset_is_a_clear_error() {
        let err = Preset::named("/nonexistent/preset.json").unwrap_err();
        assert!(format!("{err:#}").contains("neither `blog` nor a readable file"));
    }
}
