//! Propagation benchmark (`make bench`): how fast delegate-sync (the release binary, a real
//! process, a fresh one per burst) delegates bursts of proxies created at once over two
//! targets (1, 100, 1,000 and, in the full run, 10,000), how long from a proxy's creation to
//! its delegate's and from the delegate's end to the result on the proxy, its peak RSS and CPU,
//! and whether any target node was over-committed. Baseline, same run, per burst: the floor,
//! the same pods created directly in the source and the targets with no controller between
//! (delegate-sync cannot delegate faster). `--unrelated N` then adds N pods of the targets' own
//! to show that delegate-sync's memory does not follow them.
//!
//! Every time is taken by this process from its own watches (one clock), so watch delivery is
//! counted on both sides of each interval.
//!
//! ```text
//! cargo run --release -p delegate-sync --example propagation -- \
//!     --testbed-dir DIR --delegate-sync target/release/delegate-sync --counts 1,100,1000 \
//!     --unrelated 20000 --webhook target/release/webhook
//! ```
//! With `--webhook`, the webhook runs as a process too and every burst is created as elected
//! pods that it makes proxies, so the apiserver's own histogram of its admission latency is
//! read under the burst.
//! The test bed needs three clusters (cluster1 the source; cluster2 and cluster3 the targets),
//! preferably with the `bench` preset (e2e/testbed/presets/bench.json).

mod common;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use contract::{
    CLEANUP_FINALIZER, ELECT, PROXY_LABEL, RESULT, SOURCEPOD_MANIFEST, manifest::ManifestKey,
};
use e2e::{lifecycle, testbed::Testbed};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, ResourceExt as _, api::PostParams};
use serde_json::{Value, json};

const KEY: &[u8] = b"propagation-benchmark-key-0123456789abcdef";
const SOURCE: &str = "cluster1";
const TARGETS: [&str; 2] = ["cluster2", "cluster3"];

struct Args {
    paths: common::Paths,
    counts: Vec<usize>,
    /// Unrelated pods created in the targets before a last burst of [`UNRELATED_BURST`].
    unrelated: usize,
    /// The webhook binary: bursts are then created as elected pods that it makes proxies.
    webhook: Option<std::path::PathBuf>,
}

/// The burst that runs beside the targets' unrelated pods.
const UNRELATED_BURST: usize = 100;

const USAGE: &str = "propagation: how fast delegate-sync delegates bursts of proxies, against the floor of the same run.

  --counts N,N,...  the bursts, in proxies (default 1,100,1000)
  --unrelated N     the targets' own pods created before a last burst of 100 (default 0)
  --webhook FILE    the webhook binary: bursts are then created as elected pods it makes proxies";

fn args() -> anyhow::Result<Args> {
    let mut counts = vec![1, 100, 1000];
    let mut unrelated = 0;
    let mut webhook = None;
    let paths = common::parse_args("propagation", USAGE, |flag, value| {
        match flag {
            "--counts" => {
                counts = value
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .context("--counts: comma-separated numbers")?;
            }
            "--unrelated" => unrelated = value.parse().context("--unrelated: a number")?,
            "--webhook" => webhook = Some(value.into()),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(Args {
        paths,
        counts,
        unrelated,
        webhook,
    })
}

/// Times seen by our watches.
#[derive(Default)]
struct Seen {
    created: HashMap<String, Instant>,
    delegate_created: HashMap<String, Instant>,
    delegate_ended: HashMap<String, Instant>,
    result: HashMap<String, Instant>,
}

type Shared = Arc<Mutex<Seen>>;

/// Delegates in a target: first sight, and the first time they are terminal.
fn watch_delegates(client: Client, namespace: &str, seen: Shared) -> tokio::task::JoinHandle<()> {
    common::watch_pods(client, namespace, &common::delegates(), move |pod, now| {
        let Some(proxy) = pod
            .annotations()
            .get(delegate_sync::delegate::PROXY_NAME)
            .cloned()
        else {
            return;
        };
        let ended = has_ended(&pod);
        common::record(&seen, |s| {
            s.delegate_created.entry(proxy.clone()).or_insert(now);
            if ended {
                s.delegate_ended.entry(proxy).or_insert(now);
            }
        });
    })
}

/// Proxies in the source: the first time each carries a result.
fn watch_results(client: Client, namespace: &str, seen: Shared) -> tokio::task::JoinHandle<()> {
    let proxies = format!("{PROXY_LABEL}=true");
    common::watch_pods(client, namespace, &proxies, move |pod, now| {
        if pod.annotations().contains_key(RESULT) {
            common::record(&seen, |s| {
                s.result.entry(pod.name_any()).or_insert(now);
            });
        }
    })
}

fn proxy(namespace: &str, name: &str, key: &ManifestKey) -> anyhow::Result<Pod> {
    let annotations = json!({ ELECT: "", lifecycle::RUN_FOR: "1s" });
    let saved = json!({
        "metadata": { "name": name, "namespace": namespace, "annotations": annotations },
        "spec": { "restartPolicy": "Never", "containers": [{ "name": "main", "image": "busybox" }] },
    });
    let mut proxy_annotations = annotations;
    proxy_annotations[SOURCEPOD_MANIFEST] = Value::String(key.seal(namespace, &saved.to_string()));
    Ok(serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": { PROXY_LABEL: "true" },
            "annotations": proxy_annotations,
            "finalizers": [CLEANUP_FINALIZER],
        },
        // Proxies need no node here: only delegate-sync's work is measured.
        "spec": { "schedulerName": "benchmark-leaves-proxies-pending", "restartPolicy": "Never",
                  "containers": [{ "name": "main", "image": "proxy-waiter" }] },
    }))?)
}

/// What a workflow would create: an elected pod, which the webhook makes the same proxy as
/// [`proxy`] (with the webhook's own proxy container).
fn elected(name: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": { "name": name, "annotations": { ELECT: "", lifecycle::RUN_FOR: "1s" } },
        "spec": { "restartPolicy": "Never", "containers": [{ "name": "main", "image": "busybox" }] },
    }))?)
}

/// What the floor of a burst took, in seconds from its first create.
struct FloorTimes {
    /// Until every pod was created.
    created_s: f64,
    /// Until every copy in the targets had ended.
    ended_s: f64,
}

/// The floor of a burst of `count`: the least work the apiservers must do for `count` delegated
/// pods. Each proxy is created in the source (the same pod, less what makes it a proxy) and its
/// delegate directly in a target (the targets in turn, the same pod delegate-sync would create),
/// through the same clients, `common::CREATES_IN_FLIGHT` at once, with no controller in between.
/// Each copy then lives a delegate's life in its target: scheduled, run and ended by its node.
async fn floor(
    source: &Client,
    targets: &[Client],
    namespace: &str,
    count: usize,
    key: &ManifestKey,
) -> anyhow::Result<FloorTimes> {
    let mut creates = Vec::with_capacity(2 * count);
    for i in 0..count {
        let name = format!("floor-{i}");
        let mut pod = proxy(namespace, &name, key)?;
        pod.metadata.labels = None;
        pod.metadata.finalizers = None;
        creates.push((source.clone(), pod));
        creates.push((
            targets[i % targets.len()].clone(),
            delegate(namespace, &name)?,
        ));
    }
    let ended = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let watches: Vec<_> = targets
        .iter()
        .map(|target| {
            let ended = ended.clone();
            common::watch_pods(target.clone(), namespace, FLOOR_SELECTOR, move |pod, _| {
                if has_ended(&pod) {
                    common::record(&ended, |e| {
                        e.insert(pod.name_any());
                    });
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    common::at_once(creates, |(client, pod)| async move {
        let api: Api<Pod> = Api::namespaced(client, namespace);
        api.create(&PostParams::default(), &pod).await?;
        Ok(())
    })
    .await?;
    let created_s = started.elapsed().as_secs_f64();
    common::wait_for_count(
        count,
        started,
        started + Duration::from_secs(120 + count as u64 / 2),
        || ended.lock().unwrap_or_else(|e| e.into_inner()).len(),
        |done| format!("floor of {count}: only {done} copies ended"),
    )
    .await?;
    let ended_s = started.elapsed().as_secs_f64();
    for watch in watches {
        watch.abort();
    }
    Ok(FloorTimes { created_s, ended_s })
}

/// The label of the floor's copies in the targets.
const FLOOR_SELECTOR: &str = "multicluster.admiralty.io/floor=true";

fn has_ended(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The pod delegate-sync makes of a proxy made by [`proxy`]: its saved manifest, annotated
/// with its proxy.
fn delegate(namespace: &str, name: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "namespace": namespace,
            // Labelled like a delegate, but no delegate-sync selects it.
            "labels": { "multicluster.admiralty.io/floor": "true" },
            "annotations": { ELECT: "", lifecycle::RUN_FOR: "1s",
                             delegate_sync::delegate::PROXY_NAME: name,
                             delegate_sync::delegate::PROXY_NAMESPACE: namespace },
        },
        "spec": { "restartPolicy": "Never", "containers": [{ "name": "main", "image": "busybox" }] },
    }))?)
}

/// Nodes of the targets whose bound, non-terminal pods request more than they have, counted as
/// delegate-sync counts them ([`delegate_sync::placement::usage_of`]); empty when placement was
/// exact.
async fn overcommitted(targets: &[(&str, Client)]) -> anyhow::Result<Vec<String>> {
    use delegate_sync::{placement::usage_of, quantity::parse_milli};
    use k8s_openapi::api::core::v1::Node;
    let mut over = Vec::new();
    for (name, client) in targets {
        let nodes = Api::<Node>::all(client.clone())
            .list(&Default::default())
            .await?;
        let pods = Api::<Pod>::all(client.clone())
            .list(&Default::default())
            .await?;
        let used = usage_of(&pods.items);
        for node in &nodes.items {
            let node_name = node.name_any();
            let allocatable = node.status.as_ref().and_then(|s| s.allocatable.clone());
            for (resource, requested) in used.get(&node_name).into_iter().flatten() {
                let has = allocatable
                    .as_ref()
                    .and_then(|a| a.get(resource))
                    .and_then(|q| parse_milli(&q.0))
                    .unwrap_or(0);
                if *requested > has {
                    over.push(format!(
                        "{name}/{node_name}: {resource} {requested} of {has} (thousandths)"
                    ));
                }
            }
        }
    }
    Ok(over)
}

/// Pods no controller of ours cares about, in the targets (the targets' own workload), left
/// unscheduled: delegate-sync still watches every pod of every target.
async fn unrelated_pods(targets: &[Client], namespace: &str, count: usize) -> anyhow::Result<()> {
    common::at_once(0..count, |i| {
        let api: Api<Pod> = Api::namespaced(targets[i % targets.len()].clone(), namespace);
        async move {
            let pod: Pod = serde_json::from_value(json!({
                "metadata": { "name": format!("unrelated-{i}"),
                              "labels": { "app": "unrelated" },
                              "annotations": { "note": "a pod of the target's own workload" } },
                "spec": { "schedulerName": "benchmark-leaves-pods-pending",
                          "containers": [{ "name": "main", "image": "busybox",
                                           "resources": { "requests": { "cpu": "10m", "memory": "16Mi" } } }] },
            }))?;
            api.create(&PostParams::default(), &pod).await?;
            Ok(())
        }
    })
    .await
}

/// Takes delegate-sync's finalizer off the `count` proxies of a burst, so that their namespace
/// goes without it.
async fn release_proxies(proxies: &Api<Pod>, count: usize) -> anyhow::Result<()> {
    use kube::api::{Patch, PatchParams};
    common::at_once(0..count, |i| async move {
        let patch = Patch::Merge(json!({ "metadata": { "finalizers": null } }));
        proxies
            .patch(&format!("p-{i}"), &PatchParams::default(), &patch)
            .await?;
        Ok(())
    })
    .await
}

/// Where the machine's time and the apiservers' requests went, read at one moment.
struct Profile {
    cpu: e2e::testbed::cpu::Reading,
    /// Per cluster, the requests served so far.
    requests: Vec<(&'static str, BTreeMap<String, f64>)>,
    /// The source's histogram of the benchmark webhook's admission latency so far.
    admissions: Vec<(f64, f64)>,
    at: Instant,
}

impl Profile {
    async fn now(bed: &Bed) -> anyhow::Result<Self> {
        let (mut requests, mut admissions) = (Vec::new(), Vec::new());
        for (name, client) in bed.named_all() {
            let metrics = common::metrics_text(&client).await?;
            requests.push((name, common::requests_served(&metrics)));
            if name == SOURCE {
                admissions = common::admission_histogram(&metrics);
            }
        }
        Ok(Self {
            cpu: e2e::testbed::cpu::read(),
            requests,
            admissions,
            at: Instant::now(),
        })
    }

    /// What was used from `self` to `later`, per pod of a burst of `count`: CPU seconds by
    /// program (with the machine's busy share), and requests by cluster, verb and resource.
    fn until(&self, later: &Profile, count: usize) -> Value {
        let cpu = e2e::testbed::cpu::used(&self.cpu, &later.cpu);
        let total: f64 = cpu.iter().map(|(_, s)| s).sum();
        let wall = later.at.duration_since(self.at).as_secs_f64();
        let requests: serde_json::Map<String, Value> = self
            .requests
            .iter()
            .zip(&later.requests)
            .map(|((name, before), (_, after))| {
                let rows = common::requests_per(before, after, count);
                (name.to_string(), json!(rows))
            })
            .collect();
        json!({
            "wall_s": wall,
            "cpu_s": total,
            "cpu_ms_per_pod": 1000.0 * total / count.max(1) as f64,
            "cores_busy": total / wall.max(1e-9),
            "cpu_by_program_s": cpu.iter().take(12).map(|(p, s)| json!([p, common::round2(*s)])).collect::<Vec<_>>(),
            "requests_per_pod": requests,
        })
    }
}

/// One line of what a [`Profile::until`] found.
fn profile_line(what: &str, profile: &Value) -> String {
    let top: Vec<String> = profile["cpu_by_program_s"]
        .as_array()
        .into_iter()
        .flatten()
        .take(6)
        .map(|p| format!("{} {}", p[0].as_str().unwrap_or("?"), p[1]))
        .collect();
    let writes: Vec<String> = profile["requests_per_pod"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(cluster, rows)| {
            let rows: Vec<String> = rows
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| format!("{} {}", r[0].as_str().unwrap_or("?"), r[1]))
                .collect();
            format!("{cluster}: {}", rows.join(", "))
        })
        .collect();
    format!(
        "{what:>12}: CPU {:.0} ms per pod, {:.2} cores busy ({}); requests per pod: {}",
        profile["cpu_ms_per_pod"].as_f64().unwrap_or(f64::NAN),
        profile["cores_busy"].as_f64().unwrap_or(f64::NAN),
        top.join(", "),
        writes.join("; ")
    )
}

/// The clients a burst uses.
struct Bed {
    source: Client,
    targets: Vec<Client>,
    kubeconfig: std::path::PathBuf,
    key: ManifestKey,
    /// Bursts are created as elected pods through the webhook (`--webhook`).
    through_webhook: bool,
}

impl Bed {
    fn all(&self) -> Vec<Client> {
        std::iter::once(self.source.clone())
            .chain(self.targets.iter().cloned())
            .collect()
    }

    fn named_all(&self) -> Vec<(&'static str, Client)> {
        std::iter::once((SOURCE, self.source.clone()))
            .chain(self.named_targets())
            .collect()
    }

    fn named_targets(&self) -> Vec<(&'static str, Client)> {
        TARGETS
            .iter()
            .copied()
            .zip(self.targets.iter().cloned())
            .collect()
    }
}

/// One burst of `count` proxies through a delegate-sync of its own (so that its peak RSS is
/// this burst's), after the floor of the same size; `label` names it in the output.
async fn burst(
    bed: &Bed,
    paths: &common::Paths,
    count: usize,
    label: &str,
) -> anyhow::Result<Value> {
    let pid = std::process::id();
    let floor_namespace = format!("floor-{label}-{pid}");
    common::create_namespace(&bed.all(), &floor_namespace).await?;
    let before_floor = Profile::now(bed).await?;
    let floor = floor(&bed.source, &bed.targets, &floor_namespace, count, &bed.key).await?;
    let floor_profile = before_floor.until(&Profile::now(bed).await?, count);

    let work = common::work_dir(&format!("propagation-work/{label}"))?;
    let running =
        common::start_delegate_sync(&paths.delegate_sync, &bed.kubeconfig, &TARGETS, KEY, &work)
            .await?;
    let namespace = format!("propagation-{label}-{pid}");
    common::create_namespace(&bed.all(), &namespace).await?;
    if bed.through_webhook {
        use k8s_openapi::api::core::v1::Namespace;
        use kube::api::{Patch, PatchParams};
        let (key, value) = common::BENCH_WEBHOOK_OPT_IN;
        let labels = Patch::Merge(json!({ "metadata": { "labels": { key: value } } }));
        Api::<Namespace>::all(bed.source.clone())
            .patch(&namespace, &PatchParams::default(), &labels)
            .await?;
    }
    let seen = Shared::default();
    let mut watches = vec![watch_results(bed.source.clone(), &namespace, seen.clone())];
    for target in &bed.targets {
        watches.push(watch_delegates(target.clone(), &namespace, seen.clone()));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, cpu_before) = common::footprint(running.0.id())?;
    let before_burst = Profile::now(bed).await?;
    let proxies: Api<Pod> = Api::namespaced(bed.source.clone(), &namespace);
    let started = Instant::now();
    common::at_once(0..count, |i| {
        let proxies = proxies.clone();
        let seen = seen.clone();
        let name = format!("p-{i}");
        let pod = if bed.through_webhook {
            elected(&name)
        } else {
            proxy(&namespace, &name, &bed.key)
        };
        async move {
            let pod = pod?;
            common::record(&seen, |s| {
                s.created.insert(name.clone(), Instant::now());
            });
            proxies.create(&PostParams::default(), &pod).await?;
            Ok(())
        }
    })
    .await?;
    common::wait_for_count(
        count,
        started,
        Instant::now() + Duration::from_secs(120 + count as u64 / 2),
        || seen.lock().unwrap_or_else(|e| e.into_inner()).result.len(),
        |done| {
            format!(
                "{count} proxies: only {done} results; see {}",
                work.join("delegate-sync.log").display()
            )
        },
    )
    .await?;
    let total = started.elapsed().as_secs_f64();
    let (rss_kib, cpu_after) = common::footprint(running.0.id())?;
    let after_burst = Profile::now(bed).await?;
    let burst_profile = before_burst.until(&after_burst, count);
    let admission =
        |q| common::histogram_quantile(&before_burst.admissions, &after_burst.admissions, q);
    let admission_ms = match (admission(0.5), admission(0.99)) {
        (Some((p50, n)), Some((p99, _))) => json!({ "p50_at_most": p50 * 1000.0,
                                                    "p99_at_most": p99 * 1000.0,
                                                    "admissions": n }),
        _ => Value::Null,
    };
    drop(running);
    for watch in watches {
        watch.abort();
    }
    let over = overcommitted(&bed.named_targets()).await?;
    if !over.is_empty() {
        bail!(
            "{count} proxies: targets over-committed: {}",
            over.join("; ")
        );
    }
    // The next burst's delegate-sync must not find this one's proxies or delegates (its
    // memory would count them): their finalizers go, then their namespaces, in every cluster.
    release_proxies(&proxies, count).await?;
    for namespace in [&namespace, &floor_namespace] {
        common::delete_namespace(&bed.all(), namespace).await?;
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|e| e.into_inner()));
    let delegated_s = seen
        .delegate_created
        .values()
        .max()
        .map_or(f64::NAN, |last| last.duration_since(started).as_secs_f64());
    let to_delegate: Vec<f64> = seen
        .created
        .iter()
        .filter_map(|(name, t)| Some(seen.delegate_created.get(name)?.duration_since(*t)))
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    let to_result: Vec<f64> = seen
        .delegate_ended
        .iter()
        .filter_map(|(name, t)| Some(seen.result.get(name)?.saturating_duration_since(*t)))
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    let (created_p50, created_p99) = common::p50_p99(to_delegate);
    let (result_p50, result_p99) = common::p50_p99(to_result);
    let floor_s = floor.created_s;
    let (rate, floor_rate) = (count as f64 / delegated_s, count as f64 / floor_s);
    let (done_rate, floor_done_rate) = (count as f64 / total, count as f64 / floor.ended_s);
    println!(
        "{label:>12}: {count} proxies delegated in {delegated_s:.1} s ({rate:.0}/s; floor {floor_s:.1} s, \
         {floor_rate:.0}/s: {:.2} of the floor); created→delegate p50 {created_p50:.1} ms p99 \
         {created_p99:.1} ms; ended→result p50 {result_p50:.1} ms p99 {result_p99:.1} ms; all done \
         in {total:.1} s ({done_rate:.0}/s; the floor's copies all ended in {:.1} s, \
         {floor_done_rate:.0}/s: {:.2} of the floor); peak RSS {rss_kib} KiB; CPU {:.2} s; \
         no target over-committed",
        rate / floor_rate,
        floor.ended_s,
        done_rate / floor_done_rate,
        cpu_after - cpu_before
    );
    if !admission_ms.is_null() {
        println!(
            "{:>12}: webhook admission (the apiserver's histogram) p50 <= {} ms, p99 <= {} ms over {} admissions",
            "admission",
            admission_ms["p50_at_most"],
            admission_ms["p99_at_most"],
            admission_ms["admissions"]
        );
    }
    println!("{}", profile_line("floor", &floor_profile));
    println!("{}", profile_line("delegated", &burst_profile));
    Ok(json!({
        "label": label, "proxies": count,
        "delegated_s": delegated_s, "delegated_per_s": rate,
        "floor_s": floor_s, "floor_per_s": floor_rate,
        "done_per_s": done_rate, "floor_ended_s": floor.ended_s, "floor_done_per_s": floor_done_rate,
        "created_to_delegate_ms": {"p50": created_p50, "p99": created_p99},
        "ended_to_result_ms": {"p50": result_p50, "p99": result_p99},
        "total_s": total, "peak_rss_kib": rss_kib, "cpu_s": cpu_after - cpu_before,
        "floor_profile": floor_profile, "profile": burst_profile,
        "webhook_admission_ms": admission_ms,
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = args()?;
    let testbed = Testbed::attach(&args.paths.testbed_dir)?;
    let mut targets = Vec::new();
    for name in TARGETS {
        targets.push(testbed.client(name).await?);
    }
    let bed = Bed {
        source: testbed.client(SOURCE).await?,
        targets,
        kubeconfig: testbed.kubeconfig_path(),
        key: ManifestKey::from_bytes(KEY)?,
        through_webhook: args.webhook.is_some(),
    };
    let _webhook = match &args.webhook {
        Some(binary) => {
            let work = common::work_dir("propagation-work/webhook")?;
            Some(common::start_webhook(binary, &bed.source, KEY, &work).await?)
        }
        None => None,
    };
    let mut results = Vec::new();
    for &count in &args.counts {
        results.push(burst(&bed, &args.paths, count, &count.to_string()).await?);
    }
    if args.unrelated > 0 {
        let namespace = format!("unrelated-{}", std::process::id());
        common::create_namespace(&bed.targets, &namespace).await?;
        let started = Instant::now();
        unrelated_pods(&bed.targets, &namespace, args.unrelated).await?;
        println!(
            "{} unrelated pods created in the targets in {:.1} s",
            args.unrelated,
            started.elapsed().as_secs_f64()
        );
        let count = UNRELATED_BURST;
        let mut result = burst(&bed, &args.paths, count, &format!("{count}-unrelated")).await?;
        result["unrelated_pods"] = json!(args.unrelated);
        results.push(result);
    }
    if args.webhook.is_some() {
        common::unregister_webhook(&bed.source).await?;
    }
    write_report(&args.paths.out, &results)
}

fn write_report(out: &std::path::Path, results: &[Value]) -> anyhow::Result<()> {
    let round = common::round2;
    let number = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let mut rows = Vec::new();
    for r in results {
        let n = &r["proxies"];
        let with = match r["unrelated_pods"].as_u64() {
            Some(u) => format!("{n} proxies, {u} unrelated pods in the targets"),
            None => format!("{n} proxies"),
        };
        let (rate, floor_rate) = (number(&r["delegated_per_s"]), number(&r["floor_per_s"]));
        rows.push(
            json!({"measure": format!("delegated per second, {with}"), "ours": round(rate),
            "baseline": round(floor_rate), "ratio": round(rate / floor_rate), "unit": "pods/s",
            "goal": if n.as_u64() >= Some(1000) { ">= 0.67 of the floor" } else { "-" }}),
        );
        let (done, floor_done) = (number(&r["done_per_s"]), number(&r["floor_done_per_s"]));
        rows.push(
            json!({"measure": format!("run to their end per second (results on proxies; the floor's copies ended), {with}"),
            "ours": round(done), "baseline": round(floor_done), "ratio": round(done / floor_done),
            "unit": "pods/s", "goal": "-"}),
        );
        for (what, field, goal) in [
            (
                "proxy created → delegate created",
                "created_to_delegate_ms",
                "-",
            ),
            (
                "delegate ended → result on proxy",
                "ended_to_result_ms",
                "p99 <= 2000 ms",
            ),
        ] {
            for p in ["p50", "p99"] {
                rows.push(json!({"measure": format!("{what} {p}, {with}"),
                    "ours": round(number(&r[field][p])), "baseline": null, "ratio": null,
                    "unit": "ms", "goal": if p == "p99" { goal } else { "-" }}));
            }
        }
        let goal = match n.as_u64() {
            Some(1000) => "<= 64 MiB",
            Some(10000) => "<= 256 MiB",
            _ if r["unrelated_pods"].is_u64() => "flat: as without the unrelated pods",
            _ => "-",
        };
        rows.push(json!({"measure": format!("delegate-sync peak RSS, {with}"),
            "ours": round(number(&r["peak_rss_kib"]) / 1024.0), "baseline": null,
            "ratio": null, "unit": "MiB", "goal": goal}));
        if let Some(p99) = r["webhook_admission_ms"]["p99_at_most"].as_f64() {
            rows.push(json!({"measure": format!("webhook admission p99 (apiserver's histogram, bucket bound), {with}"),
                "ours": p99, "baseline": null, "ratio": null, "unit": "ms",
                "goal": "-"}));
        }
        let per_pod = |p: &Value| number(&p["cpu_ms_per_pod"]);
        let (ours, floor_cpu) = (per_pod(&r["profile"]), per_pod(&r["floor_profile"]));
        rows.push(
            json!({"measure": format!("machine CPU per pod (every process), {with}"),
            "ours": round(ours), "baseline": round(floor_cpu), "ratio": round(ours / floor_cpu),
            "unit": "ms", "goal": "-"}),
        );
        rows.push(json!({"measure": format!("delegate-sync CPU, {with}"),
            "ours": round(number(&r["cpu_s"])), "baseline": null, "ratio": null,
            "unit": "s", "goal": "-"}));
    }
    common::write_report(
        out,
        "propagation",
        "the floor of the same run: the same proxies created in the source and their delegates \
         created directly in the targets (where they are scheduled, run and end), same clients \
         and concurrency, no controller",
        json!(results),
        rows,
    )
}
