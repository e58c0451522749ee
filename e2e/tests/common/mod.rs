//! Helpers shared by the fault-injection and least-privilege tests: the product's binaries as
//! real processes (SIGKILL-able), proxies sealed as the webhook seals them, a seeded RNG, the
//! per-proxy verdict (exit code, duplicates, orphans) and the figures they report.

#![allow(dead_code)]

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    net::{SocketAddr, TcpListener},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use contract::{
    CLEANUP_FINALIZER, CLUSTER_NAME, ELECT, PROXY_LABEL, RESULT, SOURCEPOD_MANIFEST,
    manifest::ManifestKey, result::DelegateResult,
};
use e2e::{lifecycle, testbed::workspace_target_dir};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::ListParams};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::json;

/// Label of every delegate, and the uid of its proxy on it (`delegate-sync/src/delegate.rs`).
pub const DELEGATE_LABEL: &str = "multicluster.admiralty.io/delegate";
pub const PROXY_UID_LABEL: &str = "multicluster.admiralty.io/proxy-uid";

/// `true` for `FAULTS_FULL=1` (`make faults`): the sizes the issue asks for.
pub fn full() -> bool {
    std::env::var("FAULTS_FULL").is_ok_and(|v| v == "1")
}

/// A binary of the workspace, built now (a no-op when it is current) unless `<NAME>_BIN`
/// (e.g. `DELEGATE_SYNC_BIN`) names one.
pub fn workspace_binary(package: &str, name: &str) -> PathBuf {
    let var = format!("{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Some(path) = std::env::var_os(&var) {
        return PathBuf::from(path);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", package, "--bin", name])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build {name}: {e}"));
    assert!(
        status.success(),
        "cargo build -p {package} --bin {name} failed"
    );
    let path = workspace_target_dir().join("debug").join(name);
    assert!(path.is_file(), "{} missing after the build", path.display());
    path
}

/// A scratch directory under the workspace's target dir, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(prefix: &str) -> Self {
        let dir = workspace_target_dir().join(e2e::support::unique_name(prefix));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("KEEP_TEST_NAMESPACES").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One of the product's binaries as a real process: its own process group, output in a log
/// file. Killed (SIGKILL) when dropped.
pub struct Process {
    pub name: String,
    pub log: PathBuf,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    clear_env: bool,
    child: Option<Child>,
}

impl Process {
    pub fn new(name: &str, program: &Path, args: Vec<String>, log: PathBuf) -> Self {
        Self {
            name: name.to_string(),
            log,
            program: program.to_path_buf(),
            args,
            env: Vec::new(),
            clear_env: false,
            child: None,
        }
    }

    /// Runs with these environment variables too.
    pub fn with_env(mut self, env: &[(&str, &str)]) -> Self {
        self.env
            .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// Runs with only these environment variables (no KUBECONFIG, no HOME).
    pub fn with_env_only(mut self, env: &[(&str, &str)]) -> Self {
        self.clear_env = true;
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self
    }

    /// Starts it (again), appending to its log.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already runs", self.name);
        let out = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let err = out.try_clone().unwrap();
        let mut command = Command::new(&self.program);
        if self.clear_env {
            command.env_clear();
        }
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program.display()));
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, and reaped.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; true when it stopped on SIGTERM.
    pub fn stop(&mut self, grace: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Panics (with the log's tail) if it has exited.
    pub fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail(30)
            );
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits until `GET /readyz` on `admin` answers 200.
    pub async fn wait_ready(&mut self, admin: SocketAddr, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_running();
            if http_get(admin, "/readyz")
                .await
                .is_ok_and(|(status, _)| status == 200)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready within {timeout:?}; last lines of {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `GET path` on a plain-HTTP admin port: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await?;
        let mut text = String::new();
        tcp.read_to_string(&mut text).await?;
        anyhow::Ok(text)
    };
    let text = tokio::time::timeout(Duration::from_secs(2), exchange).await??;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("not HTTP")?;
    Ok((status, body.to_string()))
}

/// The value of a Prometheus sample (summed over its label sets matching `prefix`).
pub fn metric_sum(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// SplitMix64: a small seeded RNG, so that a failing run can be replayed (`FAULTS_SEED`).
pub struct Rng {
    pub seed: u64,
    state: u64,
}

impl Rng {
    /// Seeded from `FAULTS_SEED`, else from the clock; the seed is printed.
    pub fn from_env(what: &str) -> Self {
        let seed = std::env::var("FAULTS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(42)
            });
        println!("{what}: seed {seed} (replay with FAULTS_SEED={seed})");
        Self { seed, state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// Uniform in `[low, high)`.
    pub fn duration(&mut self, low: Duration, high: Duration) -> Duration {
        let span = high.saturating_sub(low).as_millis() as u64;
        low + Duration::from_millis(self.below(span))
    }
}

/// A proxy as the webhook stores it (proxy label, cleanup finalizer, sealed manifest) for a
/// pod that runs `run_for` in its delegate's cluster and ends with `exit_code`.
pub fn proxy(
    key: &[u8],
    namespace: &str,
    name: &str,
    pinned: Option<&str>,
    run_for: &str,
    exit_code: i32,
) -> Pod {
    let mut annotations = BTreeMap::from([
        (ELECT.to_string(), String::new()),
        (lifecycle::RUN_FOR.to_string(), run_for.to_string()),
        (lifecycle::exit_code_of("main"), exit_code.to_string()),
        (
            lifecycle::message_of("main"),
            format!("{name} exited {exit_code}"),
        ),
    ]);
    if let Some(cluster) = pinned {
        annotations.insert(CLUSTER_NAME.into(), cluster.into());
    }
    let saved = json!({
        "metadata": { "name": name, "namespace": namespace, "annotations": annotations, "labels": { "app": "faults" } },
        "spec": { "restartPolicy": "Never", "containers": [{ "name": "main", "image": "busybox" }] },
    });
    annotations.insert(
        SOURCEPOD_MANIFEST.into(),
        ManifestKey::from_bytes(key)
            .unwrap()
            .seal(namespace, &saved.to_string()),
    );
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": { PROXY_LABEL: "true", "app": "faults" },
            "annotations": annotations,
            "finalizers": [CLEANUP_FINALIZER],
        },
        "spec": { "restartPolicy": "Never", "containers": [{ "name": "main", "image": "proxy-waiter" }] },
    }))
    .unwrap()
}

pub fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.phase.as_deref()
}

pub fn terminal(pod: &Pod) -> bool {
    matches!(phase(pod), Some("Succeeded" | "Failed"))
}

/// What a proxy should end with.
#[derive(Clone, Debug)]
pub struct Expected {
    pub exit_code: i32,
    pub pinned: Option<String>,
}

/// Figures of a run, checked and reported.
#[derive(Debug, Default, serde::Serialize)]
pub struct Verdict {
    pub pods: usize,
    pub finished: usize,
    /// Ended, but not with the exit code of their delegate (or with a pod-level failure
    /// such as DelegateLost), or never ended.
    pub lost: usize,
    /// Proxies with more than one delegate (across every cluster).
    pub duplicated: usize,
    /// Delegates whose proxy does not exist.
    pub orphans: usize,
    /// Delegates in another cluster than the one their proxy records (or pins).
    pub misplaced: usize,
    pub delegates_per_cluster: BTreeMap<String, usize>,
    pub problems: Vec<String>,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.orphans == 0 && self.misplaced == 0
    }
}

/// Checks every proxy of `proxies` (cluster1, namespace of the test) against `expected`, and
/// every delegate in `delegates` (cluster name → pods API of the namespace).
pub async fn judge(
    proxies: &Api<Pod>,
    delegates: &[(String, Api<Pod>)],
    expected: &BTreeMap<String, Expected>,
) -> anyhow::Result<Verdict> {
    let listed = proxies
        .list(&ListParams::default().labels(&format!("{PROXY_LABEL}=true")))
        .await?
        .items;
    let mut verdict = Verdict {
        pods: expected.len(),
        ..Default::default()
    };
    let mut uid_to_proxy = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for pod in &listed {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let Some(want) = expected.get(&name) else {
            continue;
        };
        seen.insert(name.clone());
        uid_to_proxy.insert(pod.metadata.uid.clone().unwrap_or_default(), pod);
        match check_proxy(pod, want) {
            Ok(()) => verdict.finished += 1,
            Err(problem) => {
                verdict.lost += 1;
                verdict.problems.push(format!("{name}: {problem}"));
            }
        }
    }
    for name in expected.keys().filter(|n| !seen.contains(*n)) {
        verdict.lost += 1;
        verdict.problems.push(format!("{name}: proxy missing"));
    }
    let mut per_uid: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (cluster, api) in delegates {
        let items = api
            .list(&ListParams::default().labels(&format!("{DELEGATE_LABEL}=true")))
            .await?
            .items;
        verdict
            .delegates_per_cluster
            .insert(cluster.clone(), items.len());
        for delegate in items {
            let uid = delegate
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(PROXY_UID_LABEL))
                .cloned()
                .unwrap_or_default();
            let name = delegate.metadata.name.clone().unwrap_or_default();
            match uid_to_proxy.get(&uid) {
                None => {
                    verdict.orphans += 1;
                    verdict.problems.push(format!(
                        "{cluster}/{name}: orphan (no proxy with uid {uid})"
                    ));
                }
                Some(proxy) => {
                    let recorded = proxy
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(contract::TARGET_CLUSTER));
                    let proxy_name = proxy.metadata.name.clone().unwrap_or_default();
                    let pinned = expected.get(&proxy_name).and_then(|e| e.pinned.as_ref());
                    if recorded.is_some_and(|r| r != cluster)
                        || pinned.is_some_and(|p| p != cluster)
                    {
                        verdict.misplaced += 1;
                        verdict.problems.push(format!(
                            "{cluster}/{name}: proxy {proxy_name} records {recorded:?}, pinned {pinned:?}"
                        ));
                    }
                }
            }
            per_uid
                .entry(uid)
                .or_default()
                .push(format!("{cluster}/{name}"));
        }
    }
    for (uid, names) in per_uid.iter().filter(|(_, n)| n.len() > 1) {
        verdict.duplicated += 1;
        verdict.problems.push(format!(
            "proxy uid {uid} has {} delegates: {names:?}",
            names.len()
        ));
    }
    Ok(verdict)
}

fn check_proxy(pod: &Pod, want: &Expected) -> Result<(), String> {
    let wanted_phase = if want.exit_code == 0 {
        "Succeeded"
    } else {
        "Failed"
    };
    if phase(pod) != Some(wanted_phase) {
        return Err(format!(
            "phase {:?}, expected {wanted_phase} (result {:?})",
            phase(pod),
            pod.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(RESULT))
        ));
    }
    let result = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RESULT))
        .ok_or("no result annotation")?;
    let result = DelegateResult::decode(result).map_err(|e| e.to_string())?;
    if result.reason.is_some() {
        return Err(format!("pod-level failure {result:?}"));
    }
    let code = result.containers.get("main").map(|c| c.exit_code);
    if code != Some(want.exit_code) {
        return Err(format!(
            "result exit code {code:?}, expected {}",
            want.exit_code
        ));
    }
    let terminated = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == "main"))
        .and_then(|c| c.state.as_ref()?.terminated.as_ref())
        .map(|t| t.exit_code);
    if terminated != Some(want.exit_code) {
        return Err(format!(
            "container main terminated with {terminated:?}, expected {}",
            want.exit_code
        ));
    }
    Ok(())
}

/// Writes `figures` as `target/faults/<name>.json` and prints them.
pub fn report(name: &str, figures: &serde_json::Value) {
    let dir = workspace_target_dir().join("faults");
    let _ = std::fs::create_dir_all(&dir);
    let text = serde_json::to_string_pretty(figures).unwrap();
    let _ = std::fs::write(dir.join(format!("{name}.json")), &text);
    println!("{name}: {text}");
}

/// Polls `check` (every 500 ms) until it answers `None`, or fails after `timeout` with the
/// last state it described.
pub async fn wait_until<F>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: AsyncFnMut() -> anyhow::Result<Option<String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(None) => return Ok(()),
            Ok(Some(state)) => state,
            Err(e) => format!("error: {e:#}"),
        };
        if Instant::now() > deadline {
            bail!("{what}: not done within {timeout:?}; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// delegate-sync as a real process: source cluster1 of `kubeconfig`, targets cluster1 (self)
/// and cluster2, the admin port on a free loopback port.
pub struct DelegateSync {
    pub process: Process,
    pub admin: SocketAddr,
}

impl DelegateSync {
    /// Not started yet: call `process.start()`.
    pub fn new(kubeconfig: &Path, key_file: &Path, log: PathBuf, extra: &[&str]) -> Self {
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let kubeconfig = kubeconfig.display().to_string();
        let mut args = vec![
            "--cluster-name=cluster1".to_string(),
            format!("--kubeconfig={kubeconfig}"),
            "--context=cluster1".into(),
            "--target=cluster1=self".into(),
            format!("--target=cluster2={kubeconfig}#cluster2"),
            format!("--manifest-key-file={}", key_file.display()),
            format!("--admin-address={admin}"),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let binary = workspace_binary("delegate-sync", "delegate-sync");
        Self {
            process: Process::new("delegate-sync", &binary, args, log),
            admin,
        }
    }

    pub async fn start_ready(&mut self) {
        self.process.start();
        self.process
            .wait_ready(self.admin, Duration::from_secs(60))
            .await;
    }
}
