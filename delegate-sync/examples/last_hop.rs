//! Last-hop benchmark (`make bench`): on the test bed's real nodes, how long after a delegate's
//! container is reported ended (by its kubelet, in the target) its proxy's container is
//! reported ended (by the source's kubelet), and the proxy pod with it: the result written by
//! delegate-sync (the release binary, a real process), the downward-API file refreshed by the
//! kubelet, the real `proxy-waiter` exiting, the kubelet reporting it.
//!
//! Two ways, in alternating rounds of the same run:
//! - `downward`: what delegate-sync does; the waiter reads the result from the downward API;
//! - `exec`: also `proxy-waiter deliver RESULT` through pods/exec into each proxy container
//!   the moment the result is on the proxy, as delegate-sync's fast path would do it.
//!
//! ```text
//! cargo run --release -p delegate-sync --example last_hop -- \
//!     --testbed-dir DIR --delegate-sync target/release/delegate-sync --pods 100
//! ```
//! The test bed needs a real node in cluster1 and cluster2 (`testbed up --real-nodes 1`).

mod common;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use contract::{RESULT, manifest::ManifestKey};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, ResourceExt as _,
    api::{AttachParams, DeleteParams, ListParams, PostParams},
};
use serde_json::{Value, json};

const KEY: &[u8] = b"last-hop-benchmark-key-0123456789abcdefgh";
const SLEEP_SECONDS: &str = "3";

struct Args {
    paths: common::Paths,
    pods: usize,
    round: usize,
}

const USAGE: &str = "last-hop: how fast a proxy on a real node learns its delegate's result, by the downward API and by exec.

  --pods N   proxies per way (default 100)
  --round N  proxies created at once (default 20)";

fn args() -> anyhow::Result<Args> {
    let (mut pods, mut round) = (100, 20);
    let paths = common::parse_args("last-hop", USAGE, |flag, value| {
        match flag {
            "--pods" => pods = value.parse().context("--pods: a number")?,
            "--round" => round = value.parse().context("--round: a number")?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(Args { paths, pods, round })
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Way {
    Downward,
    Exec,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Downward => "downward",
            Way::Exec => "exec",
        }
    }
}

/// Times seen by our watches, per pod name.
#[derive(Default)]
struct Seen {
    delegate_ended: HashMap<String, Instant>,
    result: HashMap<String, Instant>,
    container_ended: HashMap<String, Instant>,
    pod_ended: HashMap<String, Instant>,
    /// Exec deliveries that did not say `accepted` (the result came first the other way).
    exec_failures: usize,
}

type Shared = Arc<Mutex<Seen>>;

fn main_terminated(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == "main"))
        .and_then(|c| c.state.as_ref()?.terminated.as_ref())
        .is_some()
}

fn terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Delegates in cluster2: when their container is first seen ended.
fn watch_delegates(client: Client, namespace: &str, seen: Shared) -> tokio::task::JoinHandle<()> {
    common::watch_pods(client, namespace, &common::delegates(), move |pod, now| {
        let proxy = pod
            .annotations()
            .get(delegate_sync::delegate::PROXY_NAME)
            .cloned();
        if let (Some(proxy), true) = (proxy, main_terminated(&pod)) {
            common::record(&seen, |s| {
                s.delegate_ended.entry(proxy).or_insert(now);
            });
        }
    })
}

/// Proxies in cluster1: their result, their container ended, their pod ended. In an `exec`
/// round, delivers each result through pods/exec as soon as it is seen.
fn watch_proxies(
    client: Client,
    namespace: &str,
    seen: Shared,
    exec_round: Arc<Mutex<HashSet<String>>>,
) -> tokio::task::JoinHandle<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let proxies = format!("{}=true", contract::PROXY_LABEL);
    common::watch_pods(client, namespace, &proxies, move |pod, now| {
        let name = pod.name_any();
        if let Some(result) = pod.annotations().get(RESULT).cloned() {
            let mut first = false;
            common::record(&seen, |s| {
                first = !s.result.contains_key(&name);
                s.result.entry(name.clone()).or_insert(now);
            });
            let exec = exec_round
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&name);
            if first && exec {
                tokio::spawn(deliver(api.clone(), name.clone(), result, seen.clone()));
            }
        }
        common::record(&seen, |s| {
            if main_terminated(&pod) {
                s.container_ended.entry(name.clone()).or_insert(now);
            }
            if terminal(&pod) {
                s.pod_ended.entry(name).or_insert(now);
            }
        });
    })
}

/// `proxy-waiter deliver RESULT` in the proxy's `main`, through the apiserver and the kubelet.
async fn deliver(api: Api<Pod>, name: String, result: String, seen: Shared) {
    let params = AttachParams::default().container("main").stderr(true);
    let accepted = match api
        .exec(&name, ["/proxy-waiter", "deliver", &result], &params)
        .await
    {
        Ok(mut process) => {
            let status = process.take_status();
            let _ = process.join().await;
            match status {
                Some(status) => status
                    .await
                    .is_some_and(|s| s.status.as_deref() == Some("Success")),
                None => false,
            }
        }
        Err(_) => false,
    };
    if !accepted {
        common::record(&seen, |s| s.exec_failures += 1);
    }
}

/// Runs one round: `names` created at once, each waited for until its proxy pod ended; then
/// the proxies are deleted (delegate-sync deletes the delegates) and waited for.
async fn round(
    proxies: &Api<Pod>,
    namespace: &str,
    names: &[String],
    key: &ManifestKey,
    seen: &Shared,
) -> anyhow::Result<()> {
    futures::stream::iter(names)
        .map(|name| async move {
            proxies
                .create(
                    &PostParams::default(),
                    &common::real_node_proxy(namespace, name, &["sleep", SLEEP_SECONDS], key)?,
                )
                .await?;
            Ok::<(), anyhow::Error>(())
        })
        .buffer_unordered(names.len())
        .try_collect::<Vec<()>>()
        .await?;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let done = {
            let s = seen.lock().unwrap_or_else(|e| e.into_inner());
            names
                .iter()
                .filter(|n| s.pod_ended.contains_key(*n))
                .count()
        };
        if done == names.len() {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {done} of {} proxies ended in 180 s", names.len());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxies
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !proxies.list(&ListParams::default()).await?.items.is_empty() {
        if Instant::now() > deadline {
            bail!("proxies not gone 120 s after their deletion");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// Milliseconds from the delegate's container ended to `to`, for `names`.
fn latencies(seen: &Seen, names: &[String], to: &HashMap<String, Instant>) -> Vec<f64> {
    names
        .iter()
        .filter_map(|n| {
            Some(
                to.get(n)?
                    .saturating_duration_since(*seen.delegate_ended.get(n)?),
            )
        })
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = args()?;
    let common::RealNodeBench {
        source,
        target,
        running,
        key,
        namespace,
    } = common::real_node_bench(&args.paths, "last-hop", KEY).await?;
    let seen = Shared::default();
    let exec_names = Arc::new(Mutex::new(HashSet::new()));
    let watches = [
        watch_delegates(target.clone(), &namespace, seen.clone()),
        watch_proxies(source.clone(), &namespace, seen.clone(), exec_names.clone()),
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;

    let proxies: Api<Pod> = Api::namespaced(source.clone(), &namespace);
    let mut names: HashMap<Way, Vec<String>> = HashMap::new();
    let rounds = args.pods.div_ceil(args.round.max(1)) * 2;
    let started = Instant::now();
    for r in 0..rounds {
        let way = if r % 2 == 0 { Way::Downward } else { Way::Exec };
        let size = args
            .round
            .min(args.pods - names.get(&way).map_or(0, Vec::len));
        let round_names: Vec<String> = (0..size)
            .map(|i| format!("{}-{r}-{i}", way.name()))
            .collect();
        if way == Way::Exec {
            exec_names
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(round_names.iter().cloned());
        }
        round(&proxies, &namespace, &round_names, &key, &seen).await?;
        println!(
            "  round {}/{rounds} ({}, {size} pods) done at {:.0} s",
            r + 1,
            way.name(),
            started.elapsed().as_secs_f64()
        );
        names.entry(way).or_default().extend(round_names);
    }
    for watch in watches {
        watch.abort();
    }
    let (rss_kib, cpu) = common::footprint(running.0.id())?;
    drop(running);
    let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|e| e.into_inner()));
    let mut raw = serde_json::Map::new();
    for way in [Way::Downward, Way::Exec] {
        let names = &names[&way];
        let (result50, result99) = common::p50_p99(latencies(&seen, names, &seen.result));
        let (container50, container99) =
            common::p50_p99(latencies(&seen, names, &seen.container_ended));
        let (pod50, pod99) = common::p50_p99(latencies(&seen, names, &seen.pod_ended));
        println!(
            "{:>8}: {} pods: delegate container ended → result on proxy p50 {result50:.0} ms p99 {result99:.0} ms; \
             → proxy container ended p50 {container50:.0} ms p99 {container99:.0} ms; \
             → proxy pod ended p50 {pod50:.0} ms p99 {pod99:.0} ms",
            way.name(),
            names.len()
        );
        raw.insert(
            way.name().into(),
            json!({
                "pods": names.len(),
                "to_result_ms": { "p50": result50, "p99": result99 },
                "to_container_ended_ms": { "p50": container50, "p99": container99 },
                "to_pod_ended_ms": { "p50": pod50, "p99": pod99 },
            }),
        );
    }
    println!(
        "exec deliveries not accepted (the downward API was first): {}; delegate-sync peak RSS {rss_kib} KiB, CPU {cpu:.1} s",
        seen.exec_failures
    );
    report(&args.paths.out, Value::Object(raw), seen.exec_failures)
}

/// Rows for `summary.py`: each way's figures, the exec path against the downward API.
fn report(out: &std::path::Path, raw: Value, exec_failures: usize) -> anyhow::Result<()> {
    let round = common::round2;
    let figure = |way: &str, field: &str, p: &str| raw[way][field][p].as_f64().unwrap_or(f64::NAN);
    let mut rows = Vec::new();
    for (what, field) in [
        ("proxy container ended", "to_container_ended_ms"),
        ("proxy pod ended", "to_pod_ended_ms"),
    ] {
        for p in ["p50", "p99"] {
            let downward = figure("downward", field, p);
            rows.push(json!({
                "measure": format!("delegate container ended → {what}, {p}, downward API"),
                "ours": round(downward), "baseline": null, "ratio": null, "unit": "ms", "goal": "-",
            }));
            let exec = figure("exec", field, p);
            rows.push(json!({
                "measure": format!("delegate container ended → {what}, {p}, with exec fast path"),
                "ours": round(exec), "baseline": round(downward), "ratio": round(exec / downward),
                "unit": "ms",
                "goal": if field == "to_container_ended_ms" && p == "p99" {
                    "build it in if ratio <= 0.7"
                } else {
                    "-"
                },
            }));
        }
    }
    let mut raw = raw;
    raw["exec_not_accepted"] = json!(exec_failures);
    common::write_report(
        out,
        "last-hop",
        "the same latency through the downward API alone (alternating rounds, same run)",
        raw,
        rows,
    )
}
