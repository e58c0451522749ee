//! Each cluster's own CA and the certificates its components use, written as files.

use std::{path::Path, time::Duration};

use certs::Authority;

/// The user of the admin client certificate (group `system:masters`).
pub const ADMIN_USER: &str = "testbed-admin";
/// The user the apiserver presents to kubelets; bound to `system:kubelet-api-admin`.
pub const APISERVER_KUBELET_CLIENT: &str = "kube-apiserver-kubelet-client";

const VALIDITY: Duration = Duration::from_secs(30 * 86_400);

/// Creates `ca`, `apiserver` (serving), `admin` (client), `etcd` (peer), `apiserver-etcd-client`,
/// `apiserver-kubelet-client` certificate/key pairs and the service-account signing key pair
/// `sa.key`, `sa.pub` in `dir`.
pub fn create(dir: &Path, cluster: &str) -> anyhow::Result<()> {
    let ca = Authority::generate(&format!("{cluster}-ca"), VALIDITY)?;
    ca.pem().write(dir, "ca")?;
    ca.issue_serving(
        "kube-apiserver",
        &[
            "127.0.0.1",
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "10.96.0.1",
        ],
        VALIDITY,
    )?
    .write(dir, "apiserver")?;
    ca.issue_client(ADMIN_USER, &["system:masters"], VALIDITY)?
        .write(dir, "admin")?;
    ca.issue_peer("etcd", &["127.0.0.1", "localhost"], VALIDITY)?
        .write(dir, "etcd")?;
    ca.issue_client("kube-apiserver-etcd-client", &[], VALIDITY)?
        .write(dir, "apiserver-etcd-client")?;
    ca.issue_client(APISERVER_KUBELET_CLIENT, &[], VALIDITY)?
        .write(dir, "apiserver-kubelet-client")?;
    let sa = certs::generate_key_pair_pem()?;
    certs::write_atomically(&dir.join("sa.key"), sa.key.as_bytes())?;
    certs::write_atomically(&dir.join("sa.pub"), sa.cert.as_bytes())?;
    Ok(())
}
