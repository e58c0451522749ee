//! Real nodes: one containerd and one kubelet per node, beside the kwok ones, so that proxies
//! run `proxy-waiter` in real containers and exec, logs and restarts are the kubelet's own.
//!
//! Everything a node makes lives under its directory or carries the test bed's host prefix
//! (`tb<hash of the state directory>`): its cgroup root, its bridge and CNI network, so that
//! [`teardown`] finds and removes all of it from the state directory alone, even when the
//! state file is gone. See `docs/testbed.md` ("Real nodes").

mod containerd;
mod gateway;
pub(crate) mod host;
mod kubelet;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    cluster::ClusterState,
    preset::NodeShape,
    process::{self, ProcessRecord},
};

pub use kubelet::Machine;

/// Processes of real nodes, as `process::started_in` names them.
pub(crate) const PROGRAMS: &[&str] = &[
    "kubelet",
    "containerd",
    "containerd-shim-runc-v2",
    gateway::PROGRAM,
];

/// What the state file remembers of a real node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RealNodeState {
    pub name: String,
    pub dir: PathBuf,
    /// Name of its cgroup root, bridge and CNI network.
    pub slot: String,
    /// Its gateway, containerd, then the kubelet.
    pub processes: Vec<ProcessRecord>,
}

impl RealNodeState {
    /// Where the kubelet keeps the files of a pod's Secret volume.
    pub fn secret_volume(&self, pod_uid: &str, volume: &str) -> PathBuf {
        self.dir
            .join("kubelet/pods")
            .join(pod_uid)
            .join("volumes/kubernetes.io~secret")
            .join(volume)
    }
}

/// Where a node keeps what it makes.
pub struct Layout {
    pub dir: PathBuf,
    pub name: String,
    pub slot: String,
}

impl Layout {
    pub fn new(dir: &Path, name: &str, slot: &str) -> Self {
        Self {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            slot: slot.to_string(),
        }
    }
    fn containerd_config(&self) -> PathBuf {
        self.dir.join("containerd/config.toml")
    }
    fn containerd_state(&self) -> PathBuf {
        self.dir.join("containerd/state")
    }
    pub fn containerd_socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }
    fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("containerd/cni")
    }
    fn kubelet_config(&self) -> PathBuf {
        self.dir.join("kubelet.json")
    }
    fn kubelet_kubeconfig(&self) -> PathBuf {
        self.dir.join("kubelet.kubeconfig")
    }
    fn kubelet_root(&self) -> PathBuf {
        self.dir.join("kubelet")
    }
    fn cgroup_root(&self) -> String {
        format!("/{}", self.slot)
    }
}

/// The prefix of every host-wide name (cgroups, bridges, CNI networks) of the test bed in
/// `dir`: short, since a network interface name has at most 15 bytes.
pub fn host_prefix(dir: &Path) -> String {
    let dir = dir
        .canonicalize()
        .or_else(|_| std::path::absolute(dir))
        .unwrap_or_else(|_| dir.to_path_buf());
    // FNV-1a: stable across builds and Rust versions, unlike std's hasher.
    let hash = dir
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("tb{:06x}", hash & 0xff_ffff)
}

/// Where a node of the test bed in `bed_dir` comes from.
pub struct NodeSpec<'a> {
    pub bed_dir: &'a Path,
    pub cluster: &'a ClusterState,
    /// 1-based, of the cluster in the test bed and of the node in its cluster.
    pub cluster_index: usize,
    pub node_index: usize,
    pub name: String,
    pub shape: &'a NodeShape,
    pub machine: Machine,
    pub kubelet: &'a Path,
    pub containerd: &'a Path,
    /// OCI archives imported into the node's containerd.
    pub images: &'a [PathBuf],
    /// The test bed's artifact store, on the host's loopback.
    pub artifact_store: std::net::SocketAddr,
}

/// Starts a node's containerd (with the images) and kubelet; on failure, removes what it made.
pub async fn start(spec: &NodeSpec<'_>) -> anyhow::Result<RealNodeState> {
    let slot = format!(
        "{}c{}n{}",
        host_prefix(spec.bed_dir),
        spec.cluster_index,
        spec.node_index
    );
    let layout = Layout::new(&spec.cluster.dir.join(&spec.name), &spec.name, &slot);
    let mut state = RealNodeState {
        name: spec.name.clone(),
        dir: layout.dir.clone(),
        slot,
        processes: Vec::new(),
    };
    let started = start_processes(spec, &layout, &mut state).await;
    if let Err(e) = started {
        if let Err(cleanup) = teardown_nodes(&layout.dir, &layout.slot, state.processes.clone()) {
            tracing::warn!(node = %spec.name, "cleanup after a failed start: {cleanup:#}");
        }
        return Err(e.context(format!("real node {} did not start", spec.name)));
    }
    Ok(state)
}

async fn start_processes(
    spec: &NodeSpec<'_>,
    layout: &Layout,
    state: &mut RealNodeState,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(layout.dir.join("containerd"))
        .with_context(|| format!("cannot create {}", layout.dir.display()))?;
    host::create_cgroup(&layout.slot)?;
    // A /24 per node. No address of it is on the host (the gateway has a namespace of its
    // own), so nodes of other test beds may reuse it.
    let subnet = format!(
        "10.244.{}.0/24",
        (spec.cluster_index - 1) * 16 + spec.node_index
    );
    containerd::configure(layout, &subnet)?;
    state
        .processes
        .push(gateway::start(layout, &subnet, &spec.cluster.server, spec.artifact_store).await?);
    state
        .processes
        .push(containerd::start(layout, spec.containerd).await?);
    containerd::import_images(layout, spec.images)?;
    kubelet::write_credentials(layout, spec.cluster)?;
    let [kubelet_port, healthz] = super::cluster::free_ports()?;
    let settings = kubelet::Settings {
        shape: spec.shape,
        machine: spec.machine,
        ca_file: &spec.cluster.dir.join("ca.crt"),
        ports: kubelet::Ports {
            kubelet: kubelet_port,
            healthz,
        },
    };
    state
        .processes
        .push(kubelet::start(layout, spec.kubelet, &settings)?);
    Ok(())
}

/// Gives a registered node its only address, 127.0.0.1. The kubelet refuses a loopback
/// `--node-ip` and then reports none (see `kubelet::start`), so this stays; the apiserver
/// reaches the kubelet there for logs, exec and port-forward. Returns whether the node exists.
pub async fn set_loopback_address(client: &Client, name: &str) -> anyhow::Result<bool> {
    let nodes: Api<Node> = Api::all(client.clone());
    let Some(node) = nodes.get_opt(name).await? else {
        return Ok(false);
    };
    let wanted = json!([{ "type": "InternalIP", "address": "127.0.0.1" }]);
    let current = node
        .status
        .and_then(|s| s.addresses)
        .map(|a| serde_json::to_value(a).unwrap_or_default());
    if current.as_ref() != Some(&wanted) {
        nodes
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": { "addresses": wanted } })),
            )
            .await
            .with_context(|| format!("cannot set the address of node {name}"))?;
    }
    Ok(true)
}

/// Stops every real node of the test bed in `bed_dir` and removes what they made on the host:
/// their processes (kubelets, containers, containerd, shims), mounts, bridges, cgroups and
/// the files kubelets and CNI leave in host directories. Needs no state file.
pub fn teardown(bed_dir: &Path) -> anyhow::Result<()> {
    if !bed_dir.exists() {
        return Ok(());
    }
    let processes = process::started_in(bed_dir)
        .into_iter()
        .filter(|p| PROGRAMS.contains(&p.name.as_str()))
        .collect();
    teardown_nodes(bed_dir, &host_prefix(bed_dir), processes)
}

/// The teardown of the nodes under `dir` whose host names start with `prefix`. Order
/// matters: the kubelet first (it would restart containers), then the containers (killed by
/// cgroup, so none is missed), then containerd and the shims, and only then the mounts they
/// held, the network and the emptied cgroups.
fn teardown_nodes(dir: &Path, prefix: &str, processes: Vec<ProcessRecord>) -> anyhow::Result<()> {
    let (kubelets, runtime): (Vec<_>, Vec<_>) =
        processes.into_iter().partition(|p| p.name == "kubelet");
    process::stop_all(&kubelets, Duration::from_secs(5));
    let cgroups = host::cgroups_named(prefix);
    host::kill_cgroup_processes(&cgroups);
    let shim_sockets: Vec<PathBuf> = runtime
        .iter()
        .filter(|p| p.name == "containerd-shim-runc-v2")
        .flat_map(|p| host::shim_socket_paths(p.pid))
        .collect();
    process::stop_all(&runtime, Duration::from_secs(5));
    for socket in shim_sockets {
        let _ = std::fs::remove_file(socket);
    }
    host::unmount_all_under(dir)?;
    for link in host::links_named(prefix) {
        host::delete_link(&link)?;
    }
    host::remove_cgroups(&cgroups)?;
    for file in host::host_files(dir, prefix) {
        let _ = std::fs::remove_file(file);
    }
    Ok(())
}

/// What the real nodes of the test bed that was in `dir` (host prefix `prefix`) left on the
/// host, one line per thing; empty after a clean teardown.
pub fn leftovers(dir: &Path, prefix: &str) -> Vec<String> {
    let mut found: Vec<String> = process::started_in(dir)
        .into_iter()
        .map(|p| format!("process {} (pid {})", p.name, p.pid))
        .collect();
    found.extend(
        host::cgroups_named(prefix)
            .iter()
            .map(|c| format!("cgroup {}", c.display())),
    );
    found.extend(
        host::mounts_under(dir)
            .iter()
            .map(|m| format!("mount {}", m.display())),
    );
    found.extend(
        host::links_named(prefix)
            .iter()
            .map(|l| format!("network interface {l}")),
    );
    found.extend(
        host::host_files(dir, prefix)
            .iter()
            .map(|f| format!("file {}", f.display())),
    );
    found
}

/// The pids of the shims that run now for the test bed in `dir`.
pub fn shim_pids(dir: &Path) -> Vec<i32> {
    process::started_in(dir)
        .iter()
        .filter(|p| p.name == "containerd-shim-runc-v2")
        .map(|p| p.pid)
        .collect()
}

/// The sockets of the shims that run now for the test bed in `dir` (to check afterwards that
/// none is left behind).
pub fn shim_sockets(dir: &Path) -> Vec<PathBuf> {
    shim_pids(dir)
        .into_iter()
        .flat_map(host::shim_socket_paths)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_fit_an_interface_name_and_differ_per_test_bed() {
        let a = host_prefix(Path::new("/nonexistent/testbed-a"));
        let b = host_prefix(Path::new("/nonexistent/testbed-b"));
        assert_ne!(a, b);
        assert_eq!(a, host_prefix(Path::new("/nonexistent/testbed-a")));
        assert!(format!("{a}c8n99").len() <= 15, "{a}");
    }
}
