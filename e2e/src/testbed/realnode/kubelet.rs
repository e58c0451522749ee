//! A real node's kubelet: its certificates (a client one as `system:node:<name>`, a serving one
//! the apiserver verifies), its configuration (allocatable shaped like the preset's nodes,
//! everything under the node's directory, loopback only) and its process.

use std::{fs, path::Path, time::Duration};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::Layout;
use crate::testbed::{
    cluster::ClusterState,
    kubeconfig::{self, Credentials, Entry},
    preset::NodeShape,
    process::{self, ProcessRecord},
};

const VALIDITY: Duration = Duration::from_secs(30 * 86_400);
/// The least the kubelet may keep free before it evicts: small, since a test bed's pods are
/// few and the point is that nothing is evicted on a machine whose disk is fairly full.
const EVICTION_MEMORY: u64 = 1 << 20;

/// The machine's CPUs (millicores) and memory (bytes), as the kubelet measures its capacity.
#[derive(Clone, Copy, Debug)]
pub struct Machine {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

impl Machine {
    pub fn read() -> anyhow::Result<Self> {
        // SAFETY: sysconf only reads a system setting.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        let meminfo = fs::read_to_string("/proc/meminfo").context("cannot read /proc/meminfo")?;
        let kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no MemTotal in /proc/meminfo")?;
        Ok(Self {
            cpu_millis: u64::try_from(cpus).context("cannot count CPUs")? * 1000,
            memory_bytes: kib * 1024,
        })
    }
}

/// `kubeReserved` that leaves exactly `shape` allocatable on `machine`.
pub fn reserved_for(shape: &NodeShape, machine: Machine) -> anyhow::Result<(String, String)> {
    let cpu = quantity::cpu_millis(&shape.cpu)?;
    let memory = quantity::bytes(&shape.memory)?;
    let Some(cpu_reserved) = machine.cpu_millis.checked_sub(cpu) else {
        bail!(
            "a real node cannot offer {} CPU: this machine has {}m (set `realNode` in the preset)",
            shape.cpu,
            machine.cpu_millis
        );
    };
    let Some(memory_reserved) = machine.memory_bytes.checked_sub(memory + EVICTION_MEMORY) else {
        bail!(
            "a real node cannot offer {} memory: this machine has {} bytes (set `realNode` in the preset)",
            shape.memory,
            machine.memory_bytes
        );
    };
    Ok((format!("{cpu_reserved}m"), memory_reserved.to_string()))
}

/// Issues the kubelet's certificates from the cluster's CA and writes its kubeconfig.
pub fn write_credentials(layout: &Layout, cluster: &ClusterState) -> anyhow::Result<()> {
    let ca = certs::Authority::from_pem(&certs::Pem {
        cert: fs::read_to_string(cluster.dir.join("ca.crt"))?,
        key: fs::read_to_string(cluster.dir.join("ca.key"))?,
    })?;
    let user = format!("system:node:{}", layout.name);
    ca.issue_client(&user, &["system:nodes"], VALIDITY)?
        .write(&layout.dir, "kubelet-client")?;
    ca.issue_serving(&layout.name, &["127.0.0.1"], VALIDITY)?
        .write(&layout.dir, "kubelet-serving")?;
    let entry = Entry {
        name: cluster.name.clone(),
        server: cluster.server.clone(),
        ca_file: cluster.dir.join("ca.crt"),
        credentials: Credentials::ClientCertificate {
            cert_file: layout.dir.join("kubelet-client.crt"),
            key_file: layout.dir.join("kubelet-client.key"),
        },
    };
    fs::write(
        layout.kubelet_kubeconfig(),
        kubeconfig::render(&[entry], "kubelet", None)?,
    )?;
    Ok(())
}

/// Ports the kubelet serves on (loopback only).
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub kubelet: u16,
    pub healthz: u16,
}

pub struct Settings<'a> {
    pub shape: &'a NodeShape,
    pub machine: Machine,
    pub ca_file: &'a Path,
    pub ports: Ports,
}

/// The KubeletConfiguration (JSON is YAML).
pub fn config(layout: &Layout, settings: &Settings<'_>) -> anyhow::Result<Value> {
    let (cpu_reserved, memory_reserved) = reserved_for(settings.shape, settings.machine)?;
    let d = |p: std::path::PathBuf| p.display().to_string();
    Ok(json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": "127.0.0.1",
        "port": settings.ports.kubelet,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": settings.ports.healthz,
        "tlsCertFile": d(layout.dir.join("kubelet-serving.crt")),
        "tlsPrivateKeyFile": d(layout.dir.join("kubelet-serving.key")),
        "authentication": {
            "anonymous": { "enabled": false },
            "webhook": { "enabled": true },
            "x509": { "clientCAFile": settings.ca_file.display().to_string() },
        },
        "authorization": { "mode": "Webhook" },
        "containerRuntimeEndpoint": format!("unix://{}", layout.containerd_socket().display()),
        // The machine is cgroup v1 (hybrid) and runs no systemd.
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": false,
        "cgroupRoot": layout.cgroup_root(),
        "failSwapOn": false,
        "maxPods": settings.shape.pods.parse::<u32>().context("preset node `pods` is not a number")?,
        "kubeReserved": { "cpu": cpu_reserved, "memory": memory_reserved },
        "evictionHard": {
            "memory.available": EVICTION_MEMORY.to_string(),
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        // Images cannot be pulled again here: never collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        // No cluster DNS: a pod resolves nothing rather than asking the machine's resolver.
        "resolvConf": "",
        "podLogsDir": d(layout.dir.join("pod-logs")),
        "makeIPTablesUtilChains": false,
        "serializeImagePulls": false,
        "registerWithTaints": [{
            "key": crate::nodes::KIND_LABEL,
            "value": crate::nodes::REAL,
            "effect": "NoSchedule",
        }],
    }))
}

/// Starts the kubelet. It registers its Node itself (the Node authorizer and NodeRestriction
/// let it create only its own).
pub fn start(
    layout: &Layout,
    kubelet: &Path,
    settings: &Settings<'_>,
) -> anyhow::Result<ProcessRecord> {
    fs::write(
        layout.kubelet_config(),
        serde_json::to_string_pretty(&config(layout, settings)?)?,
    )?;
    let args = vec![
        format!("--config={}", layout.kubelet_config().display()),
        format!("--kubeconfig={}", layout.kubelet_kubeconfig().display()),
        format!("--root-dir={}", layout.kubelet_root().display()),
        format!("--cert-dir={}", layout.dir.join("kubelet-pki").display()),
        format!("--hostname-override={}", layout.name),
        // Refused as a loopback address, on purpose: the kubelet then reports no address
        // at all (rather than the machine's own, or a hostname the apiserver would resolve
        // through DNS), and the test bed sets 127.0.0.1 itself (see `set_loopback_address`).
        "--node-ip=127.0.0.1".into(),
        format!(
            "--node-labels={}={},type={}",
            crate::nodes::KIND_LABEL,
            crate::nodes::REAL,
            crate::nodes::REAL
        ),
        "-v=1".into(),
    ];
    process::spawn("kubelet", kubelet, &args, &layout.dir.join("kubelet.log"))
}

/// Resource quantities of the preset, in the units the kubelet's reservation needs.
mod quantity {
    use anyhow::{Context as _, bail};

    pub fn cpu_millis(text: &str) -> anyhow::Result<u64> {
        match text.strip_suffix('m') {
            Some(millis) => millis.parse().with_context(|| format!("bad CPU {text:?}")),
            None => Ok((decimal(text)? * 1000.0).round() as u64),
        }
    }

    pub fn bytes(text: &str) -> anyhow::Result<u64> {
        const SUFFIXES: &[(&str, f64)] = &[
            ("Ki", 1024.0),
            ("Mi", 1048576.0),
            ("Gi", 1073741824.0),
            ("Ti", 1099511627776.0),
            ("k", 1e3),
            ("M", 1e6),
            ("G", 1e9),
            ("T", 1e12),
        ];
        let (number, factor) = SUFFIXES
            .iter()
            .find_map(|(s, f)| text.strip_suffix(s).map(|n| (n, *f)))
            .unwrap_or((text, 1.0));
        Ok((decimal(number)? * factor).floor() as u64)
    }

    fn decimal(text: &str) -> anyhow::Result<f64> {
        let value: f64 = text
            .parse()
            .with_context(|| format!("bad quantity {text:?}"))?;
        if !value.is_finite() || value < 0.0 {
            bail!("bad quantity {text:?}");
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blog_node() -> NodeShape {
        crate::testbed::Preset::blog().node
    }

    #[test]
    fn reservations_leave_the_presets_allocatable() {
        let machine = Machine {
            cpu_millis: 2000,
            memory_bytes: 24 << 30,
        };
        let (cpu, memory) = reserved_for(&blog_node(), machine).unwrap();
        assert_eq!(cpu, "1060m");
        let memory: u64 = memory.parse().unwrap();
        let allocatable = (24u64 << 30) - memory - EVICTION_MEMORY;
        assert_eq!(allocatable, (2.58 * 1073741824.0f64).floor() as u64);
    }

    #[test]
    fn a_node_bigger_than_the_machine_is_a_clear_error() {
        let machine = Machine {
            cpu_millis: 2000,
            memory_bytes: 24 << 30,
        };
        let big = NodeShape {
            cpu: "64".into(),
            memory: "1Gi".into(),
            pods: "110".into(),
        };
        let err = reserved_for(&big, machine).unwrap_err().to_string();
        assert!(err.contains("cannot offer 64 CPU"), "{err}");
    }

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(quantity::cpu_millis("940m").unwrap(), 940);
        assert_eq!(quantity::cpu_millis("1.5").unwrap(), 1500);
        assert_eq!(quantity::bytes("2Mi").unwrap(), 2 << 20);
        assert_eq!(quantity::bytes("1G").unwrap(), 1_000_000_000);
        assert!(quantity::bytes("lots").is_err());
    }
}
