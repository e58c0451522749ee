//! One cluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok, each
//! a real process on loopback ports of its own.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use super::{
    kubeconfig::{self, Credentials, Entry},
    pki,
    process::{self, ProcessRecord},
    realnode::RealNodeState,
    tools::Tools,
};

/// What the state file remembers of a running cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterState {
    pub name: String,
    pub dir: PathBuf,
    pub server: String,
    pub processes: Vec<ProcessRecord>,
    /// Its real nodes (a kubelet and a containerd each).
    #[serde(default)]
    pub real_nodes: Vec<RealNodeState>,
}

impl ClusterState {
    /// The cluster as an admin kubeconfig entry.
    pub fn admin_entry(&self) -> Entry {
        Entry {
            name: self.name.clone(),
            server: self.server.clone(),
            ca_file: self.dir.join("ca.crt"),
            credentials: Credentials::ClientCertificate {
                cert_file: self.dir.join("admin.crt"),
                key_file: self.dir.join("admin.key"),
            },
        }
    }

    /// The admin kubeconfig of this cluster alone, used by its own components.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// The first process that is not running, if any (real nodes' included).
    pub fn stopped_process(&self) -> Option<&ProcessRecord> {
        self.processes
            .iter()
            .chain(self.real_nodes.iter().flat_map(|n| &n.processes))
            .find(|p| !p.is_running())
    }

    /// Fails, with the end of its log, when a process of the cluster has exited.
    pub fn ensure_running(&self) -> anyhow::Result<()> {
        match self.stopped_process() {
            Some(p) => bail!(
                "{}: {} is not running; last lines of {}:\n{}",
                self.name,
                p.name,
                p.log.display(),
                p.log_tail(10)
            ),
            None => Ok(()),
        }
    }
}

const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);

/// Starts every component of cluster `name` in `dir` and waits until the apiserver is ready.
/// A failed attempt is stopped and retried with fresh ports, since a port picked as free can
/// be taken by another process before our component binds it.
pub async fn start(
    name: &str,
    dir: &Path,
    tools: &Tools,
    kwok_config: &Path,
) -> anyhow::Result<ClusterState> {
    const ATTEMPTS: usize = 3;
    let mut attempt = 1;
    loop {
        match start_once(name, dir, tools, kwok_config).await {
            Ok(state) => return Ok(state),
            Err(e) if attempt < ATTEMPTS => {
                tracing::warn!(cluster = name, attempt, "start failed, retrying: {e:#}");
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn start_once(
    name: &str,
    dir: &Path,
    tools: &Tools,
    kwok_config: &Path,
) -> anyhow::Result<ClusterState> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clean {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir.join("etcd"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    pki::create(dir, name)?;
    let mut state = ClusterState {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        server: String::new(),
        processes: Vec::new(),
        real_nodes: Vec::new(),
    };
    let result = start_components(&mut state, tools, kwok_config).await;
    if result.is_err() {
        process::stop_all(&state.processes, Duration::from_secs(5));
    }
    result.map(|()| state)
}

async fn start_components(
    state: &mut ClusterState,
    tools: &Tools,
    kwok_config: &Path,
) -> anyhow::Result<()> {
    let dir = state.dir.clone();
    let path = |f: &str| dir.join(f).display().to_string();
    let [etcd_client, etcd_peer, apiserver, kwok_port] = free_ports()?;

    let etcd_url = format!("https://127.0.0.1:{etcd_client}");
    let peer_url = format!("https://127.0.0.1:{etcd_peer}");
    let etcd = process::spawn(
        "etcd",
        &tools.etcd,
        &[
            format!("--name={}", state.name),
            format!("--data-dir={}", path("etcd")),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster={}={peer_url}", state.name),
            format!("--cert-file={}", path("etcd.crt")),
            format!("--key-file={}", path("etcd.key")),
            format!("--trusted-ca-file={}", path("ca.crt")),
            "--client-cert-auth".into(),
            format!("--peer-cert-file={}", path("etcd.crt")),
            format!("--peer-key-file={}", path("etcd.key")),
            format!("--peer-trusted-ca-file={}", path("ca.crt")),
            "--peer-client-cert-auth".into(),
            // A test bed's data is disposable: skipping fsync keeps 2-core machines responsive.
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ],
        &dir.join("etcd.log"),
    )?;
    state.processes.push(etcd);
    wait_for_port(etcd_client, &state.processes[0]).await?;

    state.server = format!("https://127.0.0.1:{apiserver}");
    let kube_apiserver = process::spawn(
        "kube-apiserver",
        &tools.kube_apiserver,
        &[
            format!("--etcd-servers={etcd_url}"),
            format!("--etcd-cafile={}", path("ca.crt")),
            format!("--etcd-certfile={}", path("apiserver-etcd-client.crt")),
            format!("--etcd-keyfile={}", path("apiserver-etcd-client.key")),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={apiserver}"),
            format!("--tls-cert-file={}", path("apiserver.crt")),
            format!("--tls-private-key-file={}", path("apiserver.key")),
            format!("--client-ca-file={}", path("ca.crt")),
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NodeRestriction".into(),
            // Real nodes: the apiserver reaches kubelets (logs, exec) on their loopback
            // InternalIP, verifies their serving certificates and presents its own.
            format!("--kubelet-certificate-authority={}", path("ca.crt")),
            format!(
                "--kubelet-client-certificate={}",
                path("apiserver-kubelet-client.crt")
            ),
            format!(
                "--kubelet-client-key={}",
                path("apiserver-kubelet-client.key")
            ),
            "--kubelet-preferred-address-types=InternalIP".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", path("sa.pub")),
            format!("--service-account-signing-key-file={}", path("sa.key")),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            // Loopback addresses are not valid endpoints of the `kubernetes` Service.
            "--endpoint-reconciler-type=none".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
            "-v=1".into(),
        ],
        &dir.join("kube-apiserver.log"),
    )?;
    state.processes.push(kube_apiserver);
    std::fs::write(
        state.admin_kubeconfig(),
        kubeconfig::render(&[state.admin_entry()], "admin", None)?,
    )?;
    wait_for_apiserver(state).await?;

    let admin = state.admin_kubeconfig().display().to_string();
    let controller_manager = process::spawn(
        "kube-controller-manager",
        &tools.kube_controller_manager,
        &[
            format!("--kubeconfig={admin}"),
            "--leader-elect=false".into(),
            "--secure-port=0".into(),
            "--controllers=*".into(),
            "--use-service-account-credentials=false".into(),
            format!("--root-ca-file={}", path("ca.crt")),
            format!("--service-account-private-key-file={}", path("sa.key")),
            format!("--cluster-signing-cert-file={}", path("ca.crt")),
            format!("--cluster-signing-key-file={}", path("ca.key")),
            "--cluster-name".into(),
            state.name.clone(),
            "-v=1".into(),
        ],
        &dir.join("kube-controller-manager.log"),
    )?;
    state.processes.push(controller_manager);
    let scheduler = process::spawn(
        "kube-scheduler",
        &tools.kube_scheduler,
        &[
            format!("--kubeconfig={admin}"),
            "--leader-elect=false".into(),
            "--secure-port=0".into(),
            "-v=1".into(),
        ],
        &dir.join("kube-scheduler.log"),
    )?;
    state.processes.push(scheduler);
    let kwok = process::spawn(
        "kwok",
        &tools.kwok,
        &[
            format!("--kubeconfig={admin}"),
            format!("--config={}", kwok_config.display()),
            "--manage-all-nodes=false".into(),
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".into(),
            format!("--server-address=127.0.0.1:{kwok_port}"),
            "--node-lease-duration-seconds=40".into(),
        ],
        &dir.join("kwok.log"),
    )?;
    state.processes.push(kwok);
    Ok(())
}

/// Distinct free loopback ports. Each is bound by the OS's choice, then released for the
/// component that uses it, so parallel test beds do not collide.
pub(crate) fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .context("cannot find free loopback ports")?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

async fn wait_for_port(port: u16, process: &ProcessRecord) -> anyhow::Result<()> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        fail_if_stopped(process)?;
        if Instant::now() > deadline {
            bail!(
                "{} did not listen on port {port} within {STARTUP_TIMEOUT:?}; see {}",
                process.name,
                process.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_apiserver(state: &ClusterState) -> anyhow::Result<()> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let client = kubeconfig::client(&state.admin_kubeconfig(), &state.name).await?;
    loop {
        for p in &state.processes {
            fail_if_stopped(p)?;
        }
        let request = http::Request::get("/readyz").body(Vec::new())?;
        match client.request_text(request).await {
            Ok(body) if body.trim() == "ok" => return Ok(()),
            Ok(_) | Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Ok(body) => bail!(
                "{}: kube-apiserver not ready within {STARTUP_TIMEOUT:?}: {body}",
                state.name
            ),
            Err(e) => bail!(
                "{}: kube-apiserver not ready within {STARTUP_TIMEOUT:?}: {e}",
                state.name
            ),
        }
    }
}

fn fail_if_stopped(process: &ProcessRecord) -> anyhow::Result<()> {
    if process.is_running() {
        return Ok(());
    }
    bail!(
        "{} exited during start-up; last lines of {}:\n{}",
        process.name,
        process.log.display(),
        process.log_tail(20)
    )
}
