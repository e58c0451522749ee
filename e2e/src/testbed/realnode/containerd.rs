//! A real node's containerd: its configuration (everything under the node's directory, pods on
//! an isolated bridge, no registry reachable), its process, and the images it is given.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::json;

use super::{Layout, gateway};
use crate::testbed::process::{self, ProcessRecord};

/// Where Debian's `containernetworking-plugins` puts the CNI plugins.
const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The CRI's namespace, where the kubelet looks for images.
const CRI_NAMESPACE: &str = "k8s.io";

/// Writes the configuration, the CNI network and the registry settings of the node.
pub fn configure(layout: &Layout, subnet: &str) -> anyhow::Result<()> {
    let cni = layout.cni_conf_dir();
    fs::create_dir_all(&cni).with_context(|| format!("cannot create {}", cni.display()))?;
    fs::write(layout.containerd_config(), config_toml(layout))?;
    fs::write(
        cni.join("10-testbed.conflist"),
        serde_json::to_string_pretty(&cni_network(layout, subnet)?)?,
    )?;
    Ok(())
}

/// No registry may be reached from the test bed: every image is imported. containerd's
/// registry client honours these, so a pull of a missing image (or of a `:latest` one, which
/// Kubernetes always pulls) fails at once against a closed loopback port, without even a DNS
/// lookup. containerd 1.6 has no setting that replaces every registry (`_default` hosts
/// arrived in 1.7) and falls back to the upstream one after any mirror.
const NO_REGISTRY: &[(&str, &str)] = &[
    ("HTTPS_PROXY", "http://127.0.0.1:1"),
    ("HTTP_PROXY", "http://127.0.0.1:1"),
    ("NO_PROXY", ""),
];

fn config_toml(layout: &Layout) -> String {
    let d = |p: PathBuf| p.display().to_string();
    let cri = r#"plugins."io.containerd.grpc.v1.cri""#;
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{ttrpc}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[{cri}]
  sandbox_image = "{pause}"
  # This machine lacks CAP_SYS_RESOURCE: oom_score_adj cannot be lowered, and runc fails
  # every sandbox that tries ("can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  enable_selinux = false

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  Root = "{runc}"
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{cni}"
  max_conf_num = 1
"#,
        root = d(layout.dir.join("containerd/root")),
        state = d(layout.containerd_state()),
        socket = d(layout.containerd_socket()),
        ttrpc = d(layout.dir.join("containerd/ttrpc.sock")),
        opt = d(layout.dir.join("containerd/opt")),
        pause = crate::nodes::PAUSE_IMAGE,
        runc = d(layout.dir.join("containerd/runc")),
        cni = d(layout.cni_conf_dir()),
    )
}

/// One bridge per node, no address on the host, no masquerade. Pods reach each other, their
/// own loopback, and through the node's gateway (a namespace of the test bed on the bridge, see
/// `gateway`) their apiserver at the `kubernetes` Service's ClusterIP and the test bed's
/// artifact store: the only routes off the bridge.
fn cni_network(layout: &Layout, subnet: &str) -> anyhow::Result<serde_json::Value> {
    let gateway = gateway::address(subnet)?;
    Ok(json!({
        "cniVersion": "0.4.0",
        "name": layout.slot,
        "plugins": [
            {
                "type": "bridge",
                "bridge": layout.slot,
                "isGateway": false,
                "ipMasq": false,
                "hairpinMode": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": subnet, "gateway": gateway }]],
                    "routes": gateway::RELAYED
                        .iter()
                        .map(|ip| json!({ "dst": format!("{ip}/32"), "gw": gateway }))
                        .collect::<Vec<_>>(),
                    "dataDir": layout.dir.join("cni-ipam"),
                },
            },
            { "type": "loopback" },
        ],
    }))
}

/// Starts containerd and waits until it answers on its socket.
pub async fn start(layout: &Layout, containerd: &Path) -> anyhow::Result<ProcessRecord> {
    let record = process::spawn_with_env(
        "containerd",
        containerd,
        &[
            "--config".into(),
            layout.containerd_config().display().to_string(),
        ],
        NO_REGISTRY,
        &layout.dir.join("containerd.log"),
    )?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ctr(layout, &["version"]).is_ok_and(|o| o.status.success()) {
        if !record.is_running() {
            bail!(
                "containerd of {} exited at start; last lines of {}:\n{}",
                layout.name,
                record.log.display(),
                record.log_tail(15)
            );
        }
        if Instant::now() > deadline {
            bail!("containerd of {} did not answer within 60 s", layout.name);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(record)
}

/// Imports OCI archives into the CRI's namespace. An unqualified name such as
/// `proxy-waiter:0.1.0` is also tagged as the CRI looks it up (`docker.io/library/...`).
pub fn import_images(layout: &Layout, archives: &[PathBuf]) -> anyhow::Result<()> {
    for archive in archives {
        let path = archive.display().to_string();
        checked(
            ctr(layout, &["images", "import", &path])?,
            &format!("import of {path}"),
        )?;
    }
    let listed = checked(ctr(layout, &["images", "list", "--quiet"])?, "image list")?;
    for name in listed.lines().filter(|n| !n.starts_with("sha256:")) {
        if let Some(qualified) = qualified_name(name) {
            checked(
                ctr(layout, &["images", "tag", "--force", name, &qualified])?,
                &format!("tag of {name}"),
            )?;
        }
    }
    Ok(())
}

/// The name the CRI resolves an unqualified image name to, or None if `name` names its
/// registry.
fn qualified_name(name: &str) -> Option<String> {
    let first = name.split('/').next()?;
    let has_registry =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    match (has_registry, name.contains('/')) {
        (true, _) => None,
        (false, true) => Some(format!("docker.io/{name}")),
        (false, false) => Some(format!("docker.io/library/{name}")),
    }
}

fn ctr(layout: &Layout, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Command::new("ctr")
        .arg("--address")
        .arg(layout.containerd_socket())
        .args(["--namespace", CRI_NAMESPACE])
        .args(args)
        .output()
        .context("cannot run `ctr` (Debian package containerd; `make packages`)")
}

fn checked(output: std::process::Output, what: &str) -> anyhow::Result<String> {
    if !output.status.success() {
        bail!(
            "ctr: {what} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unqualified_image_names_get_the_registry_the_cri_assumes() {
        assert_eq!(
            qualified_name("proxy-waiter:0.1.0").as_deref(),
            Some("docker.io/library/proxy-waiter:0.1.0")
        );
        assert_eq!(
            qualified_name("argoproj/argoexec:v3.7.18").as_deref(),
            Some("docker.io/argoproj/argoexec:v3.7.18")
        );
        assert_eq!(qualified_name("registry.k8s.io/pause:3.10"), None);
        assert_eq!(qualified_name("localhost/x:1"), None);
        assert_eq!(qualified_name("127.0.0.1:5000/x:1"), None);
    }

    #[test]
    fn the_pods_network_is_an_isolated_bridge() {
        let layout = Layout::new(
            Path::new("/tb/cluster1/real1"),
            "cluster1-real1",
            "tbabcdefc1n1",
        );
        let network = cni_network(&layout, "10.244.1.0/24").unwrap();
        let bridge = &network["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["isGateway"], false);
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(bridge["bridge"], "tbabcdefc1n1");
        assert_eq!(
            bridge["ipam"]["routes"],
            json!([
                { "dst": "10.96.0.1/32", "gw": "10.244.1.1" },
                { "dst": "10.96.0.2/32", "gw": "10.244.1.1" },
            ]),
            "the only route off the bridge: to the apiserver, through the node's gateway"
        );
        assert_eq!(network["plugins"][1]["type"], "loopback");
    }
}
