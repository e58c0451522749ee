//! The local multi-cluster test bed and the support library that tests use to talk to it.
//!
//! A test bed is N real Kubernetes control planes (etcd, kube-apiserver, kube-scheduler,
//! kube-controller-manager) on loopback ports, with kwok playing the kubelet of fake nodes.
//! [`testbed`] starts and stops one; [`support`] gives tests a client per cluster and unique
//! namespaces that clean up after themselves; [`argo`] runs Argo's workflow-controller on it.

pub mod argo;
pub mod support;
pub mod testbed;
pub mod webhook_registration;

pub use support::{TestEnv, TestNamespace};
pub use testbed::{Testbed, TestbedConfig};
pub use webhook_registration::WebhookRegistration;

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
