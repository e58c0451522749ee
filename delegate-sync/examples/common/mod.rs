//! What the benchmarks share: delegate-sync started as a real process (the release binary),
//! watches that time what they see on one clock, percentiles, a process's footprint and the
//! report file `summary.py` joins.

#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use contract::{CLUSTER_NAME, ELECT, manifest::ManifestKey};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api, Client,
    api::PostParams,
    runtime::{WatchStreamExt as _, watcher},
};
use serde_json::{Value, json};

/// Watches the pods of `namespace` that `labels` selects and hands each version seen to
/// `seen`, with the moment this process saw it: every interval is taken on one clock, watch
/// delivery counted at both ends.
pub fn watch_pods(
    client: Client,
    namespace: &str,
    labels: &str,
    mut seen: impl FnMut(Pod, Instant) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let api: Api<Pod> = Api::namespaced(client, namespace);
    let config = watcher::Config::default().labels(labels);
    tokio::spawn(async move {
        let mut events = watcher(api, config)
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(Ok(pod)) = events.next().await {
            seen(pod, Instant::now());
        }
    })
}

/// The selector of every delegate.
pub fn delegates() -> String {
    format!("{}=true", delegate_sync::delegate::DELEGATE_LABEL)
}

/// Updates what the watches record, shared between them.
pub fn record<T>(shared: &Mutex<T>, f: impl FnOnce(&mut T)) {
    f(&mut shared.lock().unwrap_or_else(|e| e.into_inner()));
}

/// The delegate-sync process, killed when dropped.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `binary` as the source cluster1's delegate-sync with `targets` (contexts of
/// `kubeconfig`; `cluster1` means the source itself), manifest key `key`, logging to
/// `work/delegate-sync.log`, and waits until it is ready.
pub async fn start_delegate_sync(
    binary: &Path,
    kubeconfig: &Path,
    targets: &[&str],
    key: &[u8],
    work: &Path,
) -> anyhow::Result<Running> {
    let key_file = work.join("key");
    std::fs::write(&key_file, key)?;
    let admin = free_port()?;
    let log_path = work.join("delegate-sync.log");
    let log = std::fs::File::create(&log_path)?;
    let mut command = Command::new(binary);
    command
        .args(["--cluster-name", "cluster1", "--context", "cluster1"])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(targets.iter().flat_map(|t| {
            let target = if *t == "cluster1" {
                format!("{t}=self")
            } else {
                format!("{t}={}#{t}", kubeconfig.display())
            };
            ["--target".to_string(), target]
        }))
        .arg("--manifest-key-file")
        .arg(&key_file)
        .args([
            "--admin-address",
            &format!("127.0.0.1:{admin}"),
            "--log-level",
            &std::env::var("BENCH_DELEGATE_SYNC_LOG").unwrap_or_else(|_| "warn".into()),
        ])
        .stdout(Stdio::null())
        .stderr(log);
    let within = Duration::from_secs(60);
    spawn_until_ready(command, "delegate-sync", admin, &log_path, within).await
}

/// Starts `command` and waits until its admin port says ready; its log is at `log_path`.
async fn spawn_until_ready(
    mut command: Command,
    what: &str,
    admin: u16,
    log_path: &Path,
    within: Duration,
) -> anyhow::Result<Running> {
    let program = command.get_program().to_owned();
    let running = Running(
        command
            .spawn()
            .with_context(|| format!("cannot start {}", program.to_string_lossy()))?,
    );
    let deadline = Instant::now() + within;
    while !ready(admin).await {
        if Instant::now() > deadline {
            bail!(
                "{what} not ready in {} s; see {}",
                within.as_secs(),
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(running)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn ready(admin: u16) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", admin)).await else {
        return false;
    };
    let request = b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n";
    let mut answer = String::new();
    stream.write_all(request).await.is_ok()
        && stream.read_to_string(&mut answer).await.is_ok()
        && answer.lines().next().is_some_and(|l| l.contains(" 200 "))
}

/// A fresh work directory `target/bench/<name>`.
pub fn work_dir(name: &str) -> anyhow::Result<PathBuf> {
    let dir = e2e::testbed::workspace_target_dir()
        .join("bench")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// p50 and p99 of `values`.
pub fn p50_p99(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    (percentile(&values, 50.0), percentile(&values, 99.0))
}

/// Peak RSS (KiB) and CPU time (s) of a process, from /proc.
pub fn footprint(pid: u32) -> anyhow::Result<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let peak = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("bad stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((peak, ticks as f64 / per_second))
}

pub fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Writes a benchmark's report where `e2e/bench/summary.py` finds it.
pub fn write_report(
    out: &Path,
    benchmark: &str,
    baseline: &str,
    raw: Value,
    rows: Vec<Value>,
) -> anyhow::Result<()> {
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(
        out,
        serde_json::to_string_pretty(&json!({
            "benchmark": benchmark,
            "baseline": baseline,
            "command": "make bench",
            "raw": raw,
            "rows": rows,
        }))?,
    )?;
    Ok(())
}

/// An elected pod running `command`, pinned to cluster2, on real nodes, turned into its proxy
/// by the webhook's own rewrite (with the settings `make demo` gives the webhook).
pub fn real_node_proxy(
    namespace: &str,
    name: &str,
    command: &[&str],
    key: &ManifestKey,
) -> anyhow::Result<Pod> {
    let mut pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": namespace,
                      "annotations": { ELECT: "", CLUSTER_NAME: "cluster2" } },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{ "name": "main", "image": e2e::nodes::BUSYBOX_IMAGE,
                             "command": command }],
        },
    }))?;
    e2e::nodes::on_real_nodes(pod.spec.as_mut().context("a spec")?);
    let mut value = serde_json::to_value(&pod)?;
    let settings = webhook::mutate::ProxySettings {
        requests: [
            ("cpu".to_string(), json!("0")),
            ("memory".to_string(), json!("8Mi")),
        ]
        .into_iter()
        .collect(),
        node_selector: [(e2e::nodes::KIND_LABEL.to_string(), json!(e2e::nodes::REAL))]
            .into_iter()
            .collect(),
        tolerations: vec![serde_json::to_value(e2e::nodes::real_node_toleration())?],
        ..Default::default()
    };
    match webhook::mutate::mutate(&value, namespace, &settings, key) {
        webhook::mutate::Mutation::Patch(patch) => json_patch::patch(&mut value, &patch)?,
        other => bail!("the webhook would not make a proxy of {name}: {other:?}"),
    }
    Ok(serde_json::from_value(value)?)
}

pub async fn create_namespace(clients: &[Client], name: &str) -> anyhow::Result<()> {
    for client in clients {
        let api: Api<Namespace> = Api::all(client.clone());
        let namespace: Namespace = serde_json::from_value(json!({ "metadata": { "name": name } }))?;
        api.create(&PostParams::default(), &namespace).await?;
    }
    Ok(())
}

/// Deletes namespace `name` in every cluster and waits until it is gone from all of them (what
/// it held must not be in the next measurement).
pub async fn delete_namespace(clients: &[Client], name: &str) -> anyhow::Result<()> {
    for client in clients {
        let api: Api<Namespace> = Api::all(client.clone());
        match api.delete(name, &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    for client in clients {
        let api: Api<Namespace> = Api::all(client.clone());
        while api.get_opt(name).await?.is_some() {
            if Instant::now() > deadline {
                bail!("namespace {name} still there after 600 s");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(())
}

/// Where a benchmark finds the test bed and delegate-sync, and writes its report.
pub struct Paths {
    pub testbed_dir: PathBuf,
    pub delegate_sync: PathBuf,
    pub out: PathBuf,
}

/// The flags every benchmark takes (`--testbed-dir`, `--delegate-sync`, `--out`, defaults for
/// `make bench`, the report `target/bench/<report>.json`); `own` takes the benchmark's own
/// flags and says whether it knew the flag. `--help` prints `usage` (the benchmark's own flags)
/// and these.
pub fn parse_args(
    report: &str,
    usage: &str,
    mut own: impl FnMut(&str, &str) -> anyhow::Result<bool>,
) -> anyhow::Result<Paths> {
    let target = e2e::testbed::workspace_target_dir();
    let mut paths = Paths {
        testbed_dir: target.join("bench-testbed"),
        delegate_sync: target.join("release/delegate-sync"),
        out: target.join(format!("bench/{report}.json")),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!(
                "{usage}\n\nFlags of every benchmark:\n  --testbed-dir DIR     the running test bed (default {})\n  --delegate-sync FILE  the binary to measure (default {})\n  --out FILE            the JSON report (default {})",
                paths.testbed_dir.display(),
                paths.delegate_sync.display(),
                paths.out.display()
            );
            std::process::exit(0);
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--testbed-dir" => paths.testbed_dir = value.into(),
            "--delegate-sync" => paths.delegate_sync = value.into(),
            "--out" => paths.out = value.into(),
            _ if own(&flag, &value)? => {}
            _ => bail!("unknown flag {flag}"),
        }
    }
    Ok(paths)
}

/// A benchmark between the test bed's real nodes: clients of cluster1 (proxies) and cluster2
/// (delegates), delegate-sync running with cluster2 as its target, and a fresh namespace in both.
pub struct RealNodeBench {
    pub source: Client,
    pub target: Client,
    pub running: Running,
    pub key: ManifestKey,
    pub namespace: String,
}

/// Sets up [`RealNodeBench`] for the benchmark `name` (also its work directory and namespace).
pub async fn real_node_bench(
    paths: &Paths,
    name: &str,
    key: &[u8],
) -> anyhow::Result<RealNodeBench> {
    let testbed = e2e::testbed::Testbed::attach(&paths.testbed_dir)?;
    for cluster in ["cluster1", "cluster2"] {
        if testbed.cluster(cluster)?.real_nodes.is_empty() {
            bail!("{cluster} has no real node: {name} is measured between real kubelets");
        }
    }
    let source = testbed.client("cluster1").await?;
    let target = testbed.client("cluster2").await?;
    let work = work_dir(&format!("{name}-work"))?;
    let running = start_delegate_sync(
        &paths.delegate_sync,
        &testbed.kubeconfig_path(),
        &["cluster2"],
        key,
        &work,
    )
    .await?;
    let namespace = format!("{name}-{}", std::process::id());
    create_namespace(&[source.clone(), target.clone()], &namespace).await?;
    Ok(RealNodeBench {
        source,
        target,
        running,
        key: ManifestKey::from_bytes(key)?,
        namespace,
    })
}

/// Waits until `counted()` reaches `count`, looking every 100 ms until `deadline`; past it,
/// fails with `shortfall(counted)` and the time since `started`.
pub async fn wait_for_count(
    count: usize,
    started: Instant,
    deadline: Instant,
    counted: impl Fn() -> usize,
    shortfall: impl Fn(usize) -> String,
) -> anyhow::Result<()> {
    loop {
        let done = counted();
        if done >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} after {:?}", shortfall(done), started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An apiserver's own metrics, in Prometheus text.
pub async fn metrics_text(client: &Client) -> anyhow::Result<String> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    Ok(client.request_text(request).await?)
}

/// The requests an apiserver has served so far, by verb and resource
/// (`apiserver_request_total` in its [`metrics_text`]).
pub fn requests_served(metrics: &str) -> std::collections::BTreeMap<String, f64> {
    let mut served = std::collections::BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|l| l.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"'))
                .unwrap_or_default()
                .to_string()
        };
        let subresource = label("subresource");
        let resource = match subresource.as_str() {
            "" => label("resource"),
            sub => format!("{}/{sub}", label("resource")),
        };
        let count: f64 = value.trim().parse().unwrap_or(0.0);
        *served
            .entry(format!("{} {resource}", label("verb")))
            .or_insert(0.0) += count;
    }
    served
}

/// Requests served between two [`requests_served`] readings, per `per` (pods of a burst), the
/// largest first; reads of the watch cache (`WATCH`) and what rounds to 0 are left out.
pub fn requests_per(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
    per: usize,
) -> Vec<(String, f64)> {
    let mut rows: Vec<(String, f64)> = after
        .iter()
        .filter(|(what, _)| !what.starts_with("WATCH"))
        .map(|(what, n)| {
            let d = n - before.get(what).copied().unwrap_or(0.0);
            (what.clone(), round2(d / per.max(1) as f64))
        })
        .filter(|(_, n)| *n > 0.0)
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    rows
}

/// Runs `work` on every item, `CREATES_IN_FLIGHT` at once; stops at the first error.
pub async fn at_once<T, F, Fut>(items: impl IntoIterator<Item = T>, work: F) -> anyhow::Result<()>
where
    F: FnMut(T) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    use futures::TryStreamExt as _;
    futures::stream::iter(items)
        .map(work)
        .buffer_unordered(CREATES_IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Requests in flight while a benchmark creates or patches many objects.
pub const CREATES_IN_FLIGHT: usize = 50;

/// The name the benchmark registers its webhook under (the apiserver's admission metrics are
/// labelled with it).
pub const BENCH_WEBHOOK: &str = "proxies.bench.multicluster.admiralty.io";
/// The namespace label that sends pod creations through the benchmark's webhook.
pub const BENCH_WEBHOOK_OPT_IN: (&str, &str) = ("delegate-pods.bench/webhook", "true");

/// Starts `binary` as the webhook on loopback (a CA of its own, manifest key `key`), logging to
/// `work/webhook.log`, and registers it in `source` for pod creations in namespaces labelled
/// [`BENCH_WEBHOOK_OPT_IN`]. The registration stays until [`unregister_webhook`].
pub async fn start_webhook(
    binary: &Path,
    source: &Client,
    key: &[u8],
    work: &Path,
) -> anyhow::Result<Running> {
    let validity = Duration::from_secs(86_400);
    let ca = certs::Authority::generate("propagation-bench-ca", validity)?;
    ca.issue_serving("propagation-bench-webhook", &["127.0.0.1"], validity)?
        .write(work, "tls")?;
    let key_file = work.join("webhook-key");
    std::fs::write(&key_file, key)?;
    let (port, admin) = (free_port()?, free_port()?);
    let log_path = work.join("webhook.log");
    let mut command = Command::new(binary);
    command
        .args([
            "--bind-address",
            "127.0.0.1",
            "--secure-port",
            &port.to_string(),
        ])
        .arg("--tls-cert-file")
        .arg(work.join("tls.crt"))
        .arg("--tls-private-key-file")
        .arg(work.join("tls.key"))
        .arg("--manifest-key-file")
        .arg(&key_file)
        .args(["--admin-address", &format!("127.0.0.1:{admin}")])
        .args(["--log-level", "warn"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path)?);
    let within = Duration::from_secs(30);
    let running = spawn_until_ready(command, "webhook", admin, &log_path, within).await?;
    register_webhook(source, port, &ca.pem().cert).await?;
    Ok(running)
}

async fn register_webhook(source: &Client, port: u16, ca_pem: &str) -> anyhow::Result<()> {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use kube::api::{Patch, PatchParams};
    let (label, value) = BENCH_WEBHOOK_OPT_IN;
    let opt_in = std::collections::BTreeMap::from([(label.to_string(), value.to_string())]);
    let config = e2e::webhook_registration::configuration(
        "propagation-bench",
        BENCH_WEBHOOK,
        port,
        ca_pem,
        &opt_in,
    )?;
    Api::<MutatingWebhookConfiguration>::all(source.clone())
        .patch(
            "propagation-bench",
            &PatchParams::apply("propagation-bench").force(),
            &Patch::Apply(&config),
        )
        .await?;
    Ok(())
}

/// Deletes the registration [`start_webhook`] made; absent is fine.
pub async fn unregister_webhook(source: &Client) -> anyhow::Result<()> {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    match Api::<MutatingWebhookConfiguration>::all(source.clone())
        .delete("propagation-bench", &Default::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The apiserver's own histogram of the benchmark webhook's admission latency
/// (`apiserver_admission_webhook_admission_duration_seconds`): cumulative counts by upper
/// bound, in seconds.
pub fn admission_histogram(metrics: &str) -> Vec<(f64, f64)> {
    let wanted = format!("name=\"{BENCH_WEBHOOK}\"");
    let mut buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter_map(|line| {
            let rest = line
                .strip_prefix("apiserver_admission_webhook_admission_duration_seconds_bucket{")?;
            let (labels, count) = rest.rsplit_once("} ")?;
            if !labels.contains(&wanted) || !labels.contains("type=\"admit\"") {
                return None;
            }
            let le = labels.split(',').find_map(|l| l.strip_prefix("le=\""))?;
            let le = le.trim_end_matches('"');
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, count.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Several series (rejected or not) share the bounds: add them up.
    buckets.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            kept.1 += later.1;
        }
        same
    });
    buckets
}

/// The upper bound of the bucket holding quantile `q` of what `after` counted since `before`
/// (both from [`admission_histogram`]), and how many admissions that was; None without any.
pub fn histogram_quantile(
    before: &[(f64, f64)],
    after: &[(f64, f64)],
    q: f64,
) -> Option<(f64, f64)> {
    let counted = |bound: f64| {
        let at = |h: &[(f64, f64)]| h.iter().find(|(b, _)| *b == bound).map_or(0.0, |(_, c)| *c);
        at(after) - at(before)
    };
    let total = after.last().map(|(bound, _)| counted(*bound))?;
    if total <= 0.0 {
        return None;
    }
    after
        .iter()
        .find(|(bound, _)| counted(*bound) >= q * total)
        .map(|(bound, _)| (*bound, total))
}
