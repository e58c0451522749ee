//! The local multi-cluster test bed and the support library that tests use to talk to it.
//!
//! A test bed is N real Kubernetes control planes (etcd, kube-apiserver, kube-scheduler,
//! kube-controller-manager) on loopback ports, with kwok playing the kubelet of fake nodes and
//! real kubelets (with containerd) on real nodes beside them.
//! [`testbed`] starts and stops one; [`support`] gives tests a client per cluster and unique
//! namespaces that clean up after themselves; [`argo`] runs Argo's workflow-controller on it.

pub mod argo;
pub mod support;
pub mod testbed;
pub mod webhook_registration;

pub use support::{TestEnv, TestNamespace};
pub use testbed::{Testbed, TestbedConfig};
pub use webhook_registration::WebhookRegistration;

/// The two kinds of nodes of a test bed. Fake nodes are where pods land by default; real nodes
/// carry a taint, so a pod runs there only when it asks ([`nodes::on_real_nodes`]).
pub mod nodes {
    use k8s_openapi::api::core::v1::{PodSpec, Toleration};

    /// Label of every node with its kind, [`REAL`] or [`KWOK`]; also the key of the real
    /// nodes' `NoSchedule` taint.
    pub const KIND_LABEL: &str = "testbed.multicluster.admiralty.io/node";
    pub const REAL: &str = "real";
    pub const KWOK: &str = "kwok";
    /// The sandbox image of every real node (built by `make node-images`), also the image of
    /// the placeholder pods.
    pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10";
    /// A busybox image on every real node (`make node-images`), for workloads. Not `latest`:
    /// Kubernetes always pulls that tag, and nothing can be pulled here.
    pub const BUSYBOX_IMAGE: &str = "busybox:1.35";

    /// The toleration of the real nodes' taint.
    pub fn real_node_toleration() -> Toleration {
        Toleration {
            key: Some(KIND_LABEL.into()),
            operator: Some("Equal".into()),
            value: Some(REAL.into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        }
    }

    /// Makes a pod run on real nodes only: their node selector and the toleration of their
    /// taint.
    pub fn on_real_nodes(spec: &mut PodSpec) {
        spec.node_selector
            .get_or_insert_with(Default::default)
            .insert(KIND_LABEL.into(), REAL.into());
        spec.tolerations
            .get_or_insert_with(Default::default)
            .push(real_node_toleration());
    }
}

/// Annotation keys of the test bed's fake pod lifecycle (see `e2e/testbed/stages/`).
pub mod lifecycle {
    /// How long a pod runs once started, as a duration such as `10s`. Without it a pod runs
    /// until deleted.
    pub const RUN_FOR: &str = "testbed.multicluster.admiralty.io/run-for";
    /// Exit code of every container that has no [`exit_code_of`] annotation. Default 0.
    pub const EXIT_CODE: &str = "testbed.multicluster.admiralty.io/exit-code";

    /// Exit code of one container.
    pub fn exit_code_of(container: &str) -> String {
        format!("{EXIT_CODE}.{container}")
    }

    /// Termination message of one container.
    pub fn message_of(container: &str) -> String {
        format!("testbed.multicluster.admiralty.io/message.{container}")
    }
}
