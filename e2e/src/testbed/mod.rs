//! Start, attach to and stop a test bed of N local clusters.
//!
//! The state directory (default `target/testbed/`) holds one directory per cluster (PKI,
//! etcd data, logs), the admin `kubeconfig` with contexts `cluster1`..`clusterN`, and
//! `state.json` with the pids of every process, so that another command or test can attach to
//! the test bed and `testbed down` can stop it.

pub mod artifact_store;
mod cluster;
pub mod cpu;
pub mod kubeconfig;
mod pki;
pub mod preset;
pub(crate) mod process;
pub mod realnode;
mod tools;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use futures::future::try_join_all;
use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::{Node, Pod, ServiceAccount},
    rbac::v1::ClusterRoleBinding,
};
use kube::{Api, Client, api::ListParams};
use serde::{Deserialize, Serialize};

pub use artifact_store::ArtifactStoreState;
pub use cluster::ClusterState;
pub use kubeconfig::{Credentials, Entry};
pub use preset::Preset;
pub use process::alive;
pub use realnode::RealNodeState;
pub use tools::{TOOLS_BIN_ENV, Tools};

/// How to bring a test bed up.
#[derive(Clone, Debug)]
pub struct TestbedConfig {
    /// State directory.
    pub dir: PathBuf,
    /// Number of clusters, named `cluster1`..`clusterN`.
    pub clusters: usize,
    pub preset: Preset,
    pub tools: Tools,
    /// Directory of kwok Stage YAML files (every `*.yaml` in it is loaded).
    pub stages_dir: PathBuf,
    /// Directory of the OCI archives every real node imports (`make node-images`).
    pub node_images: PathBuf,
}

impl TestbedConfig {
    /// `clusters` clusters with the blog preset, tools from `make tools`, in `dir`.
    pub fn new(dir: impl Into<PathBuf>, clusters: usize) -> anyhow::Result<Self> {
        // Components run in their own directories: every path they are given must be absolute.
        let dir = std::path::absolute(dir.into()).context("test bed directory")?;
        Ok(Self {
            dir,
            clusters,
            preset: Preset::blog(),
            tools: Tools::locate()?,
            stages_dir: default_stages_dir(),
            node_images: workspace_target_dir().join("images/node"),
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct State {
    clusters: Vec<ClusterState>,
    /// With real nodes: the store their pods keep Argo's artifacts in.
    #[serde(default)]
    artifact_store: Option<ArtifactStoreState>,
}

/// A running test bed.
#[derive(Debug)]
pub struct Testbed {
    dir: PathBuf,
    state: State,
}

/// The workspace's `target/` directory (or `$CARGO_TARGET_DIR`).
pub fn workspace_target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            workspace.canonicalize().unwrap_or(workspace).join("target")
        })
}

/// The shared test bed's state directory: `$TESTBED_DIR`, else `target/testbed`.
pub fn default_dir() -> PathBuf {
    std::env::var_os("TESTBED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_target_dir().join("testbed"))
}

fn default_stages_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testbed/stages")
}

impl Testbed {
    /// Brings the test bed up, or reuses it when one with the same clusters is already healthy.
    pub async fn up(config: &TestbedConfig) -> anyhow::Result<Self> {
        let stages = kwok_config(&config.stages_dir)?;
        let images = images_fingerprint(&config.node_images, &config.preset);
        if let Ok(existing) = Self::attach(&config.dir)
            && existing.state.clusters.len() == config.clusters
            && existing
                .state
                .clusters
                .iter()
                .all(|c| c.real_nodes.len() == config.preset.real_nodes_per_cluster)
            // A test bed from before the artifact store had real nodes without it.
            && (config.preset.real_nodes_per_cluster == 0) == existing.state.artifact_store.is_none()
            && fs::read_to_string(config.dir.join("kwok.yaml"))
                .is_ok_and(|running| running == stages)
            && fs::read_to_string(config.dir.join(IMAGES_FILE))
                .is_ok_and(|running| running == images)
            && existing.check().await.is_ok()
        {
            tracing::info!(dir = %config.dir.display(), "test bed already up");
            return Ok(existing);
        }
        Self::down(&config.dir)?;
        fs::create_dir_all(&config.dir)
            .with_context(|| format!("cannot create {}", config.dir.display()))?;
        let kwok_config = config.dir.join("kwok.yaml");
        fs::write(&kwok_config, &stages)
            .with_context(|| format!("cannot write {}", kwok_config.display()))?;
        fs::write(config.dir.join(IMAGES_FILE), &images)
            .with_context(|| format!("cannot write {IMAGES_FILE} in {}", config.dir.display()))?;
        let names: Vec<String> = (1..=config.clusters)
            .map(|i| format!("cluster{i}"))
            .collect();
        let dirs: Vec<PathBuf> = names.iter().map(|name| config.dir.join(name)).collect();
        let started = futures::future::join_all(
            names
                .iter()
                .zip(&dirs)
                .map(|(name, dir)| cluster::start(name, dir, &config.tools, &kwok_config)),
        )
        .await;
        let (clusters, errors): (Vec<_>, Vec<_>) = started.into_iter().partition(Result::is_ok);
        let mut testbed = Self {
            dir: config.dir.clone(),
            state: State {
                clusters: clusters.into_iter().filter_map(Result::ok).collect(),
                artifact_store: None,
            },
        };
        testbed.save()?;
        let result = match errors.into_iter().next() {
            Some(Err(e)) => Err(e),
            _ => match testbed.start_real_nodes(config).await {
                Ok(()) => testbed.populate(&config.preset).await,
                Err(e) => Err(e),
            },
        };
        if let Err(e) = result {
            // Keep the logs for the post-mortem; the next `up` or `down` removes them.
            if let Err(teardown) = realnode::teardown(&config.dir) {
                tracing::warn!("real nodes left things behind: {teardown:#}");
            }
            testbed.stop_processes();
            return Err(e.context(format!(
                "test bed failed to start; logs are in {}",
                config.dir.display()
            )));
        }
        Ok(testbed)
    }

    /// Attaches to the test bed whose state is in `dir`, without checking its health.
    pub fn attach(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("state.json");
        let text = fs::read_to_string(&path)
            .with_context(|| format!("no test bed in {} (run `make testbed-up`)", dir.display()))?;
        let state = serde_json::from_str(&text)
            .with_context(|| format!("{} is corrupt", path.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            state,
        })
    }

    /// Stops every process of the test bed in `dir`, removes what its real nodes made on the
    /// host, and removes its state. A no-op when there is none.
    pub fn down(dir: &Path) -> anyhow::Result<()> {
        // Whatever the real nodes leave, the control planes still go.
        let nodes = realnode::teardown(dir);
        if let Ok(testbed) = Self::attach(dir) {
            testbed.stop_processes();
        }
        // A state file that is missing, corrupt or from an older build must not leave
        // processes behind: every process of ours names the state directory in its arguments.
        process::stop_all(&process::started_in(dir), Duration::from_secs(10));
        nodes.context("the real nodes left things on the host")?;
        match fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", dir.display()))
            }
            _ => Ok(()),
        }
    }

    fn stop_processes(&self) {
        let processes: Vec<_> = self
            .state
            .clusters
            .iter()
            .flat_map(|c| c.processes.clone())
            .chain(self.state.artifact_store.iter().map(|s| s.process.clone()))
            .collect();
        process::stop_all(&processes, Duration::from_secs(10));
    }

    /// Starts the preset's real nodes of every cluster, all at once, and records them.
    async fn start_real_nodes(&mut self, config: &TestbedConfig) -> anyhow::Result<()> {
        let count = config.preset.real_nodes_per_cluster;
        if count == 0 {
            return Ok(());
        }
        let machine = realnode::Machine::read()?;
        let containerd = tools::system_program("containerd")?;
        let images = node_images(&config.node_images)?;
        let store = artifact_store::start(
            &config.dir.join(artifact_store::PROGRAM),
            &config.tools.artifact_store,
        )
        .await?;
        let store_address = store.local;
        self.state.artifact_store = Some(store);
        self.save()?;
        let starts = self
            .state
            .clusters
            .iter()
            .enumerate()
            .flat_map(|(c, cluster)| {
                let names = config.preset.real_node_names(&cluster.name);
                let (machine, containerd, images) = (machine, &containerd, &images);
                names
                    .into_iter()
                    .enumerate()
                    .map(move |(n, name)| async move {
                        let spec = realnode::NodeSpec {
                            bed_dir: &config.dir,
                            cluster,
                            cluster_index: c + 1,
                            node_index: n + 1,
                            name,
                            shape: config.preset.real_node_shape(),
                            machine,
                            kubelet: &config.tools.kubelet,
                            containerd,
                            images,
                            artifact_store: store_address,
                        };
                        realnode::start(&spec).await.map(|node| (c, node))
                    })
            });
        let started = futures::future::join_all(starts).await;
        let mut first_error = None;
        for result in started {
            match result {
                Ok((c, node)) => self.state.clusters[c].real_nodes.push(node),
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        self.save()?;
        first_error.map_or(Ok(()), Err)
    }

    /// Ok when every process runs and every apiserver answers ready.
    pub async fn check(&self) -> anyhow::Result<()> {
        if let Some(store) = &self.state.artifact_store
            && !store.process.is_running()
        {
            bail!(
                "the artifact store is not running; last lines of {}:\n{}",
                store.process.log.display(),
                store.process.log_tail(10)
            );
        }
        for c in &self.state.clusters {
            c.ensure_running()?;
            let client = self.client(&c.name).await?;
            let body = client
                .request_text(http::Request::get("/readyz").body(Vec::new())?)
                .await
                .with_context(|| format!("{}: kube-apiserver does not answer", c.name))?;
            if body.trim() != "ok" {
                bail!("{}: kube-apiserver not ready: {body}", c.name);
            }
        }
        Ok(())
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The admin kubeconfig, with a context per cluster.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// Cluster names, `cluster1`..`clusterN`.
    pub fn cluster_names(&self) -> Vec<String> {
        self.state.clusters.iter().map(|c| c.name.clone()).collect()
    }

    /// The artifact store of the real nodes' pods, when the test bed has real nodes.
    pub fn artifact_store(&self) -> Option<&ArtifactStoreState> {
        self.state.artifact_store.as_ref()
    }

    /// The state of one cluster.
    pub fn cluster(&self, name: &str) -> anyhow::Result<&ClusterState> {
        self.state
            .clusters
            .iter()
            .find(|c| c.name == name)
            .with_context(|| {
                format!(
                    "no cluster {name:?} in the test bed (have {:?})",
                    self.cluster_names()
                )
            })
    }

    /// Freezes one cluster's kube-apiserver (SIGSTOP) until the guard is dropped (SIGCONT):
    /// clients see an apiserver that stops answering, as in a network partition or a hung
    /// control plane, and then comes back with all its state.
    pub fn freeze_apiserver(&self, cluster: &str) -> anyhow::Result<FrozenApiserver> {
        let record = self
            .cluster(cluster)?
            .processes
            .iter()
            .find(|p| p.name == "kube-apiserver" && p.is_running())
            .with_context(|| format!("{cluster}: kube-apiserver is not running"))?;
        let pid = nix::unistd::Pid::from_raw(record.pid);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP)
            .with_context(|| format!("cannot stop {cluster}'s kube-apiserver"))?;
        Ok(FrozenApiserver { pid })
    }

    /// Stops one cluster's kube-apiserver for real (SIGTERM, SIGKILL after 5 s: v1.34 stops
    /// listening at once but its process can hang in graceful termination for much longer):
    /// its process is gone and its port closed, while etcd and the other components keep
    /// running.
    ///
    /// [`StoppedApiserver::start`] starts it again with the same program and arguments (same
    /// etcd, same port, same certificates); dropping the guard without that starts it too,
    /// without waiting, so a failing test never leaves the cluster without an apiserver.
    pub fn stop_apiserver(&self, cluster: &str) -> anyhow::Result<StoppedApiserver> {
        let record = self
            .cluster(cluster)?
            .processes
            .iter()
            .find(|p| p.name == "kube-apiserver" && p.is_running())
            .with_context(|| format!("{cluster}: kube-apiserver is not running"))?;
        let (program, args) = record
            .command_line()
            .with_context(|| format!("{cluster}: cannot read kube-apiserver's command line"))?;
        let signalled = Instant::now();
        let pid = nix::unistd::Pid::from_raw(record.pid);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
            .with_context(|| format!("cannot stop {cluster}'s kube-apiserver"))?;
        while record.is_running() && signalled.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let killed = record.is_running();
        if killed {
            process::stop_all(std::slice::from_ref(record), Duration::ZERO);
        }
        if record.is_running() {
            bail!(
                "{cluster}: kube-apiserver (pid {}) did not stop",
                record.pid
            );
        }
        Ok(StoppedApiserver {
            dir: self.dir.clone(),
            cluster: cluster.to_string(),
            program,
            args,
            log: record.log.clone(),
            stopping_took: signalled.elapsed(),
            killed,
            started: false,
        })
    }

    /// An admin client for one cluster.
    pub async fn client(&self, cluster: &str) -> anyhow::Result<Client> {
        self.cluster(cluster)?;
        kubeconfig::client(&self.kubeconfig_path(), cluster).await
    }

    /// A kubeconfig (one context, named like the cluster) that authenticates as a
    /// ServiceAccount with a token valid for `ttl`. The ServiceAccount must exist.
    pub async fn service_account_kubeconfig(
        &self,
        cluster: &str,
        namespace: &str,
        service_account: &str,
        ttl: Duration,
    ) -> anyhow::Result<String> {
        let state = self.cluster(cluster)?;
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client(cluster).await?, namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                expiration_seconds: Some(i64::try_from(ttl.as_secs())?),
                ..Default::default()
            },
            ..Default::default()
        };
        let response = accounts
            .create_token_request(service_account, &Default::default(), &request)
            .await
            .with_context(|| format!("cannot get a token for ServiceAccount {namespace}/{service_account} in {cluster}"))?;
        let token = response
            .status
            .context("token request returned no status")?
            .token;
        let entry = Entry {
            credentials: Credentials::Token(token),
            ..state.admin_entry()
        };
        kubeconfig::render(
            &[entry],
            &format!("{namespace}-{service_account}"),
            Some(namespace),
        )
    }

    fn save(&self) -> anyhow::Result<()> {
        let entries: Vec<Entry> = self
            .state
            .clusters
            .iter()
            .map(ClusterState::admin_entry)
            .collect();
        certs::write_atomically(
            &self.kubeconfig_path(),
            kubeconfig::render(&entries, "admin", None)?.as_bytes(),
        )?;
        certs::write_atomically(
            &self.dir.join("state.json"),
            serde_json::to_string_pretty(&self.state)?.as_bytes(),
        )?;
        Ok(())
    }

    /// Creates the preset's nodes and placeholder pods and waits until every cluster is usable:
    /// nodes Ready and untainted, placeholders running, default ServiceAccounts present.
    async fn populate(&self, preset: &Preset) -> anyhow::Result<()> {
        try_join_all(self.state.clusters.iter().map(|c| async move {
            let client = self.client(&c.name).await?;
            preset::apply(&client, &c.name, preset).await?;
            allow_apiserver_to_kubelets(&client).await?;
            wait_until(&c.name, "default ServiceAccounts exist", || {
                let client = client.clone();
                async move {
                    let default: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
                    let system: Api<ServiceAccount> =
                        Api::namespaced(client, preset::SYSTEM_NAMESPACE);
                    Ok(default.get_opt("default").await?.is_some()
                        && system.get_opt("default").await?.is_some())
                }
            })
            .await?;
            preset::apply_system_pods(&client, &c.name, preset).await?;
            let nodes = preset.nodes_per_cluster + c.real_nodes.len();
            wait_until(&c.name, "nodes Ready and placeholder pods Running", || {
                let client = client.clone();
                async move {
                    c.ensure_running()?;
                    for node in &c.real_nodes {
                        realnode::set_loopback_address(&client, &node.name).await?;
                    }
                    cluster_usable(&client, nodes).await
                }
            })
            .await
        }))
        .await?;
        Ok(())
    }
}

/// The apiserver's kubelet client may use every kubelet API (logs, exec, port-forward), as
/// kubeadm binds it.
async fn allow_apiserver_to_kubelets(client: &Client) -> anyhow::Result<()> {
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": "testbed:apiserver-kubelet-client",
            "labels": { preset::TESTBED_LABEL: "true" },
        },
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "system:kubelet-api-admin",
        },
        "subjects": [{
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "User",
            "name": pki::APISERVER_KUBELET_CLIENT,
        }],
    }))?;
    preset::create_if_missing(&Api::all(client.clone()), &binding).await
}

/// What the real nodes of a running test bed imported: one up whose images changed since (a
/// new proxy-waiter, say) is replaced.
const IMAGES_FILE: &str = "node-images.txt";

/// Names, sizes and modification times of the archives real nodes import; empty without real
/// nodes.
fn images_fingerprint(dir: &Path, preset: &Preset) -> String {
    if preset.real_nodes_per_cluster == 0 {
        return String::new();
    }
    let mut lines: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            let modified = meta
                .modified()
                .ok()?
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?;
            Some(format!(
                "{} {} {}",
                e.file_name().to_string_lossy(),
                meta.len(),
                modified.as_nanos()
            ))
        })
        .collect();
    lines.sort();
    lines.join("\n")
}

/// The OCI archives in `dir`; the sandbox image must be among them.
fn node_images(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let missing = || {
        format!(
            "real nodes need the images of {} (run `make node-images`)",
            dir.display()
        )
    };
    let mut archives: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(missing)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
        .collect();
    archives.sort();
    if !archives.iter().any(|a| a.ends_with("pause.tar")) {
        bail!("{}: no pause.tar", missing());
    }
    Ok(archives)
}

async fn cluster_usable(client: &Client, nodes_expected: usize) -> anyhow::Result<bool> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    let ready = nodes.items.iter().filter(|n| node_ready(n)).count();
    let pods = Api::<Pod>::namespaced(client.clone(), preset::SYSTEM_NAMESPACE)
        .list(&ListParams::default())
        .await?;
    let running = pods
        .items
        .iter()
        .all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
    Ok(ready == nodes_expected && running)
}

/// Ready, and without the taints the node lifecycle controller puts on nodes that are not.
pub fn node_ready(node: &Node) -> bool {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| t.key.starts_with("node.kubernetes.io/")));
    ready && !tainted
}

const POPULATE_TIMEOUT: Duration = Duration::from_secs(120);

async fn wait_until<F, Fut>(cluster: &str, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + POPULATE_TIMEOUT;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() > deadline {
            let why = last_error
                .map(|e| format!(" (last error: {e:#})"))
                .unwrap_or_default();
            bail!("{cluster}: not the case within {POPULATE_TIMEOUT:?}: {what}{why}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every Stage file of `stages_dir`, concatenated: the config kwok is started with. A running
/// test bed whose stages differ is restarted by `up`.
fn kwok_config(stages_dir: &Path) -> anyhow::Result<String> {
    let mut files: Vec<PathBuf> = fs::read_dir(stages_dir)
        .with_context(|| format!("cannot read kwok stages in {}", stages_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut docs = BTreeMap::new();
    for file in files {
        let text =
            fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
        docs.insert(file, text);
    }
    Ok(docs
        .values()
        .map(|d| d.trim())
        .collect::<Vec<_>>()
        .join("\n---\n"))
}

/// A kube-apiserver stopped by [`Testbed::freeze_apiserver`]; dropping it resumes the process
/// (also when a test fails).
pub struct FrozenApiserver {
    pid: nix::unistd::Pid,
}

impl Drop for FrozenApiserver {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGCONT);
    }
}

/// A kube-apiserver stopped by [`Testbed::stop_apiserver`].
pub struct StoppedApiserver {
    dir: PathBuf,
    cluster: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    started: bool,
    /// From SIGTERM until the process was gone.
    pub stopping_took: Duration,
    /// It had not exited 5 s after SIGTERM and was killed (SIGKILL).
    pub killed: bool,
}

impl StoppedApiserver {
    /// Starts the apiserver again (same program and arguments, log appended), records its new
    /// pid in the state file, and waits until it answers ready (60 s at most).
    pub async fn start(mut self) -> anyhow::Result<()> {
        self.respawn()?;
        let testbed = Testbed::attach(&self.dir)?;
        let client = testbed.client(&self.cluster).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let record = testbed
                .cluster(&self.cluster)?
                .processes
                .iter()
                .find(|p| p.name == "kube-apiserver")
                .context("no kube-apiserver in the state file")?;
            if !record.is_running() {
                bail!(
                    "{}: the restarted kube-apiserver exited; last lines of {}:\n{}",
                    self.cluster,
                    record.log.display(),
                    record.log_tail(15)
                );
            }
            let request = http::Request::get("/readyz").body(Vec::new())?;
            match client.request_text(request).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                _ if Instant::now() > deadline => {
                    bail!(
                        "{}: the restarted kube-apiserver is not ready after 60 s",
                        self.cluster
                    )
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    fn respawn(&mut self) -> anyhow::Result<()> {
        self.started = true;
        let record =
            process::spawn_appending("kube-apiserver", &self.program, &self.args, &self.log)?;
        let mut testbed = Testbed::attach(&self.dir)?;
        let cluster = testbed
            .state
            .clusters
            .iter_mut()
            .find(|c| c.name == self.cluster)
            .with_context(|| format!("no cluster {} in the state file", self.cluster))?;
        match cluster
            .processes
            .iter_mut()
            .find(|p| p.name == "kube-apiserver")
        {
            Some(old) => *old = record,
            None => cluster.processes.push(record),
        }
        testbed.save()
    }
}

impl Drop for StoppedApiserver {
    fn drop(&mut self) {
        if !self.started
            && let Err(e) = self.respawn()
        {
            eprintln!(
                "warning: could not start {}'s kube-apiserver again: {e:#}",
                self.cluster
            );
        }
    }
}
