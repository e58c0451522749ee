//! A real node's gateway (`testbed-gateway`, `e2e/src/gateway/main.rs`): the one door from its
//! pods' isolated bridge to its cluster's apiserver, at the `kubernetes` Service's ClusterIP as
//! in a real cluster, so in-cluster clients (Argo's executor) work, and to the test bed's
//! artifact store; nothing else is reached.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::Layout;
use crate::testbed::{
    artifact_store,
    process::{self, ProcessRecord},
    workspace_target_dir,
};

/// The gateway's program, as `process::started_in` names it.
pub const PROGRAM: &str = "testbed-gateway";
/// The `kubernetes` Service's ClusterIP: the first address of the apiservers'
/// `--service-cluster-ip-range`, and in their serving certificates.
pub const SERVICE_IP: &str = "10.96.0.1";
/// Where to find the program when it is not beside the running one.
const PROGRAM_ENV: &str = "TESTBED_GATEWAY_BIN";

/// The addresses pods reach through the gateway, each with a route of its own.
pub const RELAYED: [&str; 2] = [SERVICE_IP, artifact_store::ADDRESS];

/// The gateway's address on a node's pod subnet (`10.244.N.0/24` → `10.244.N.1`).
pub fn address(subnet: &str) -> anyhow::Result<String> {
    let network = subnet
        .strip_suffix(".0/24")
        .with_context(|| format!("not a /24 ending in .0: {subnet}"))?;
    Ok(format!("{network}.1"))
}

/// The name of the veth end left on the host: the node's slot (`tb<hash>c<i>n<j>`, its cgroup and
/// bridge name) and `g`, so teardown finds it by the test bed's prefix (it goes with the
/// gateway's namespace anyway).
pub fn host_link(layout: &Layout) -> String {
    format!("{}g", layout.slot)
}

/// Starts the gateway of a node whose pods are on `subnet`, relaying to the apiserver at
/// `server` (`https://127.0.0.1:PORT`) and to the artifact store at `store`, and waits until
/// it accepts connections.
pub async fn start(
    layout: &Layout,
    subnet: &str,
    server: &str,
    store: SocketAddr,
) -> anyhow::Result<ProcessRecord> {
    let apiserver: SocketAddr = server
        .strip_prefix("https://")
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("the apiserver's address is not https://IP:PORT: {server}"))?;
    let ready = layout.dir.join("gateway.ready");
    let _ = std::fs::remove_file(&ready);
    let args = vec![
        format!("--bridge={}", layout.slot),
        format!("--host-link={}", host_link(layout)),
        format!("--gateway={}/24", address(subnet)?),
        format!("--relay={SERVICE_IP}:443={apiserver}"),
        format!("--relay={}:443={store}", artifact_store::ADDRESS),
        format!("--ready-file={}", ready.display()),
    ];
    let record = process::spawn(PROGRAM, &program()?, &args, &layout.dir.join("gateway.log"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.exists() {
        if !record.is_running() {
            bail!(
                "the gateway of {} exited at start:\n{}",
                layout.name,
                record.log_tail(10)
            );
        }
        if Instant::now() > deadline {
            process::stop_all(std::slice::from_ref(&record), Duration::from_secs(2));
            bail!(
                "the gateway of {} was not ready within 10 s:\n{}",
                layout.name,
                record.log_tail(10)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(record)
}

/// `$TESTBED_GATEWAY_BIN`, else `testbed-gateway` beside the running program (`testbed`,
/// `demo`) or one directory up (a test binary in `target/debug/deps`), else in the workspace's
/// `target/debug`.
fn program() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(PROGRAM_ENV) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().ok();
    let beside = exe.as_deref().and_then(Path::parent);
    let candidates = [
        beside.map(|d| d.join(PROGRAM)),
        beside.and_then(Path::parent).map(|d| d.join(PROGRAM)),
        Some(workspace_target_dir().join("debug").join(PROGRAM)),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "{PROGRAM} not found beside {} nor in the workspace's target/debug: build it with \
                 `cargo build -p e2e --bins` (or set {PROGRAM_ENV})",
                exe.map(|e| e.display().to_string()).unwrap_or_default()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_is_the_first_address_of_the_node_subnet() {
        assert_eq!(address("10.244.17.0/24").unwrap(), "10.244.17.1");
        assert!(address("10.244.17.0/16").is_err());
    }
}
