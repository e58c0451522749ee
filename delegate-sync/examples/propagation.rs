//! Propagation benchmark (`make bench`): how long delegate-sync (the release binary, a real
//! process) takes from a proxy's creation to its delegate's creation, and from the delegate's
//! end to the result on the proxy, with 1, 100 and 1,000 proxies created at once over two
//! targets; its peak RSS and CPU. Baseline, same run: the round trip of a direct pod create
//! against a target apiserver (the floor: delegate-sync cannot create a delegate faster).
//!
//! Every time is taken by this process from its own watches (one clock), so watch delivery is
//! counted on both sides of each interval.
//!
//! ```text
//! cargo run --release -p delegate-sync --example propagation -- \
//!     --testbed-dir DIR --delegate-sync target/release/delegate-sync --counts 1,100,1000
//! ```
//! The test bed needs three clusters (cluster1 the source; cluster2 and cluster3 the targets),
//! preferably with the `bench` preset (e2e/testbed/presets/bench.json).

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use contract::{
    CLEANUP_FINALIZER, ELECT, PROXY_LABEL, RESULT, SOURCEPOD_MANIFEST, manifest::ManifestKey,
};
use e2e::{lifecycle, testbed::Testbed};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, ResourceExt as _, api::PostParams};
use serde_json::{Value, json};

const KEY: &[u8] = b"propagation-benchmark-key-0123456789abcdef";
const CREATE_CONCURRENCY: usize = 50;
const TARGETS: [&str; 2] = ["cluster2", "cluster3"];

struct Args {
    paths: common::Paths,
    counts: Vec<usize>,
}

fn args() -> anyhow::Result<Args> {
    let mut counts = vec![1, 100, 1000];
    let paths = common::parse_args("propagation", |flag, value| {
        if flag != "--counts" {
            return Ok(false);
        }
        counts = value
            .split(',')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .context("--counts: comma-separated numbers")?;
        Ok(true)
    })?;
    Ok(Args { paths, counts })
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
        let ended = matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
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

/// The floor: round trips of direct pod creates against a target, `count` at once (for a
/// single proxy, 20 creates one after the other, so that its p99 means something).
async fn floor(client: &Client, namespace: &str, count: usize) -> anyhow::Result<Vec<f64>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let (creates, at_once) = if count == 1 {
        (20, 1)
    } else {
        (count, CREATE_CONCURRENCY)
    };
    futures::stream::iter(0..creates)
        .map(|i| {
            let api = api.clone();
            async move {
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": { "name": format!("floor-{count}-{i}") },
                    "spec": { "schedulerName": "benchmark-leaves-pods-pending",
                              "containers": [{ "name": "main", "image": "busybox" }] },
                }))?;
                let start = Instant::now();
                api.create(&PostParams::default(), &pod).await?;
                Ok::<f64, anyhow::Error>(start.elapsed().as_secs_f64() * 1000.0)
            }
        })
        .buffer_unordered(at_once)
        .try_collect()
        .await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = args()?;
    let testbed = Testbed::attach(&args.paths.testbed_dir)?;
    let kubeconfig = testbed.kubeconfig_path();
    let source = testbed.client("cluster1").await?;
    let mut targets = Vec::new();
    for name in TARGETS {
        targets.push(testbed.client(name).await?);
    }
    let all: Vec<Client> = std::iter::once(source.clone())
        .chain(targets.iter().cloned())
        .collect();

    let work = common::work_dir("propagation-work")?;
    let running =
        common::start_delegate_sync(&args.paths.delegate_sync, &kubeconfig, &TARGETS, KEY, &work)
            .await?;

    let key = ManifestKey::from_bytes(KEY)?;
    let mut results = Vec::new();
    for &count in &args.counts {
        let namespace = format!("propagation-{count}-{}", std::process::id());
        common::create_namespace(&all, &namespace).await?;
        let seen = Shared::default();
        let mut watches = vec![watch_results(source.clone(), &namespace, seen.clone())];
        for target in &targets {
            watches.push(watch_delegates(target.clone(), &namespace, seen.clone()));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (_, cpu_before) = common::footprint(running.0.id())?;
        let proxies: Api<Pod> = Api::namespaced(source.clone(), &namespace);
        let started = Instant::now();
        futures::stream::iter(0..count)
            .map(|i| {
                let proxies = proxies.clone();
                let seen = seen.clone();
                let name = format!("p-{i}");
                let pod = proxy(&namespace, &name, &key);
                async move {
                    let pod = pod?;
                    common::record(&seen, |s| {
                        s.created.insert(name.clone(), Instant::now());
                    });
                    proxies.create(&PostParams::default(), &pod).await?;
                    Ok::<(), anyhow::Error>(())
                }
            })
            .buffer_unordered(CREATE_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        let deadline = Instant::now() + Duration::from_secs(120 + count as u64 / 2);
        loop {
            let done = seen.lock().unwrap_or_else(|e| e.into_inner()).result.len();
            if done >= count {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{count} proxies: only {done} results after {:?}",
                    started.elapsed()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let total = started.elapsed().as_secs_f64();
        let (rss_kib, cpu_after) = common::footprint(running.0.id())?;
        for watch in watches {
            watch.abort();
        }
        let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|e| e.into_inner()));
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
        let floor_ms = floor(&targets[0], &namespace, count).await?;
        let (created_p50, created_p99) = common::p50_p99(to_delegate);
        let (result_p50, result_p99) = common::p50_p99(to_result);
        let (floor_p50, floor_p99) = common::p50_p99(floor_ms);
        println!(
            "{count:>5} proxies: created→delegate p50 {created_p50:.1} ms p99 {created_p99:.1} ms; \
             ended→result p50 {result_p50:.1} ms p99 {result_p99:.1} ms; floor create p50 {floor_p50:.1} ms \
             p99 {floor_p99:.1} ms; all done in {total:.1} s; peak RSS {} KiB; CPU {:.2} s",
            rss_kib,
            cpu_after - cpu_before
        );
        results.push(json!({
            "proxies": count, "created_to_delegate_ms": {"p50": created_p50, "p99": created_p99},
            "ended_to_result_ms": {"p50": result_p50, "p99": result_p99},
            "floor_create_ms": {"p50": floor_p50, "p99": floor_p99},
            "total_s": total, "peak_rss_kib": rss_kib, "cpu_s": cpu_after - cpu_before,
        }));
        // The namespaces go with the test bed; deleting thousands of pods would only add noise.
    }
    drop(running);
    println!(
        "delegate-sync log: {}",
        work.join("delegate-sync.log").display()
    );
    write_report(&args.paths.out, &results)
}

fn write_report(out: &std::path::Path, results: &[Value]) -> anyhow::Result<()> {
    let round = common::round2;
    let mut rows = Vec::new();
    let low = &results[0];
    let floor_p99 = low["floor_create_ms"]["p99"].as_f64().unwrap_or(f64::NAN);
    for r in results {
        let n = &r["proxies"];
        for (what, field, goal) in [
            (
                "proxy created → delegate created",
                "created_to_delegate_ms",
                "p99 <= 3x floor at 1",
            ),
            (
                "delegate ended → result on proxy",
                "ended_to_result_ms",
                "-",
            ),
        ] {
            let p99 = r[field]["p99"].as_f64().unwrap_or(f64::NAN);
            let p50 = r[field]["p50"].as_f64().unwrap_or(f64::NAN);
            rows.push(
                json!({"measure": format!("{what} p50 at {n} proxies"), "ours": round(p50),
                "baseline": null, "ratio": null, "unit": "ms", "goal": "-"}),
            );
            rows.push(
                json!({"measure": format!("{what} p99 at {n} proxies"), "ours": round(p99),
                "baseline": round(floor_p99), "ratio": round(p99 / floor_p99), "unit": "ms",
                "goal": if n == 1 { goal } else { "-" }}),
            );
        }
        rows.push(
            json!({"measure": format!("delegate-sync peak RSS after {n} proxies"),
            "ours": round(r["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0), "baseline": null,
            "ratio": null, "unit": "MiB", "goal": "<= 64 MiB at 1000"}),
        );
        rows.push(
            json!({"measure": format!("delegate-sync CPU for {n} proxies"),
            "ours": round(r["cpu_s"].as_f64().unwrap_or(0.0)), "baseline": null, "ratio": null,
            "unit": "s", "goal": "-"}),
        );
    }
    common::write_report(
        out,
        "propagation",
        "p99 of a direct pod create against the target apiserver, 1 at a time (same run)",
        json!(results),
        rows,
    )
}
