//! Log-relay benchmark (`make bench`): on the test bed's real nodes, elected pods whose
//! delegates (cluster2) write their logs while delegate-sync (the release binary, a real
//! process) relays them into their proxies (cluster1).
//!
//! - latency: each pod writes a numbered line every 100 ms; a line's latency is the time its
//!   proxy's kubelet stamped it minus the time the delegate's kubelet stamped it (both nodes
//!   run on this machine's one clock; `timestamps=true` on both logs);
//! - throughput: one pod writing 8 MB at once, then 50 pods writing 2 MB each at once: bytes
//!   over the time from the first line written in a delegate to the last line stamped in a
//!   proxy;
//! - delegate-sync's CPU time and peak RSS over the run.
//!
//! Every relayed log is checked equal to its delegate's, byte for byte.
//!
//! ```text
//! cargo run --release -p delegate-sync --example log_relay -- \
//!     --testbed-dir DIR --delegate-sync target/release/delegate-sync --pods 20 --streams 50
//! ```

mod common;

use std::time::Instant;

use anyhow::{Context as _, bail, ensure};
use contract::manifest::ManifestKey;
use futures::{AsyncReadExt as _, StreamExt as _, TryStreamExt as _};
use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::{
    Api,
    api::{DeleteParams, ListParams, LogParams, PostParams},
};
use serde_json::{Value, json};

const KEY: &[u8] = b"log-relay-benchmark-key-0123456789abcdefg";
/// A numbered line every 100 ms, 100 lines.
const STEADY: &str =
    "i=0; while [ $i -lt 100 ]; do echo \"line $i\"; i=$((i+1)); usleep 100000; done";
const LINE: &str = "0123456789012345678901234567890123456789012345678901234567890123456789";

struct Args {
    paths: common::Paths,
    pods: usize,
    streams: usize,
}

const USAGE: &str = "log-relay: the log relay's throughput and latency between real nodes.

  --pods N     pods writing a numbered line every 100 ms, for latency (default 20)
  --streams N  pods writing 2 MB each at once (default 50)";

fn args() -> anyhow::Result<Args> {
    let (mut pods, mut streams) = (20, 50);
    let paths = common::parse_args("log-relay", USAGE, |flag, value| {
        match flag {
            "--pods" => pods = value.parse().context("--pods: a number")?,
            "--streams" => streams = value.parse().context("--streams: a number")?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(Args {
        paths,
        pods,
        streams,
    })
}

/// A log read with timestamps: each line's stamp and its bytes (newline included).
fn stamped(log: &[u8]) -> anyhow::Result<Vec<(Timestamp, &[u8])>> {
    log.split_inclusive(|&b| b == b'\n')
        .map(|line| {
            let space = line.iter().position(|&b| b == b' ').context("no stamp")?;
            let stamp: Timestamp = std::str::from_utf8(&line[..space])?.parse()?;
            Ok((stamp, &line[space + 1..]))
        })
        .collect()
}

async fn log(pods: &Api<Pod>, name: &str) -> anyhow::Result<Vec<u8>> {
    let params = LogParams {
        container: Some("main".into()),
        timestamps: true,
        ..LogParams::default()
    };
    let mut bytes = Vec::new();
    pods.log_stream(name, &params)
        .await?
        .read_to_end(&mut bytes)
        .await?;
    Ok(bytes)
}

/// A proxy's and its delegate's logs, once the proxy ended: each line's stamp and length.
struct Logs {
    proxy: Vec<(Timestamp, usize)>,
    delegate: Vec<(Timestamp, usize)>,
}

impl Logs {
    /// Parses both logs once, and checks the relayed bytes are the delegate's.
    fn new(name: &str, proxy: &[u8], delegate: &[u8]) -> anyhow::Result<Self> {
        let (relayed_lines, written_lines) = (stamped(proxy)?, stamped(delegate)?);
        let bytes = |lines: &[(Timestamp, &[u8])]| -> Vec<u8> {
            lines.iter().flat_map(|(_, b)| b.iter().copied()).collect()
        };
        let (relayed, written) = (bytes(&relayed_lines), bytes(&written_lines));
        if relayed != written {
            let dir = common::work_dir(&format!("log-relay-mismatch-{name}"))?;
            std::fs::write(dir.join("proxy.log"), proxy)?;
            std::fs::write(dir.join("delegate.log"), delegate)?;
            bail!(
                "{name}: the proxy's log ({} bytes) is not its delegate's ({} bytes), first difference at byte {:?}; both in {}",
                relayed.len(),
                written.len(),
                relayed.iter().zip(&written).position(|(a, b)| a != b),
                dir.display()
            );
        }
        let lengths = |lines: Vec<(Timestamp, &[u8])>| {
            lines.into_iter().map(|(at, b)| (at, b.len())).collect()
        };
        Ok(Self {
            proxy: lengths(relayed_lines),
            delegate: lengths(written_lines),
        })
    }
}

/// Creates `names` at once running `command`, waits until every proxy ended, and returns
/// their logs; then deletes them.
async fn run(
    proxies: &Api<Pod>,
    delegates: &Api<Pod>,
    namespace: &str,
    names: &[String],
    command: &[&str],
    key: &ManifestKey,
) -> anyhow::Result<Vec<Logs>> {
    futures::stream::iter(names)
        .map(|name| async move {
            let pod = common::real_node_proxy(namespace, name, command, key)?;
            proxies.create(&PostParams::default(), &pod).await?;
            Ok::<(), anyhow::Error>(())
        })
        .buffer_unordered(names.len())
        .try_collect::<Vec<()>>()
        .await?;
    let deadline = Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let list = proxies.list(&ListParams::default()).await?.items;
        let ended = list
            .iter()
            .filter(|p| {
                matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
            })
            .count();
        if ended == names.len() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "only {ended} of {} proxies ended in 300 s",
            names.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let mut logs = Vec::new();
    for name in names {
        let proxy = proxies.get(name).await?;
        let delegate = proxy
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(contract::DELEGATE_NAME))
            .context("no delegate name")?
            .clone();
        let (relayed, written) = (log(proxies, name).await?, log(delegates, &delegate).await?);
        logs.push(Logs::new(name, &relayed, &written)?);
    }
    proxies
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    while !proxies.list(&ListParams::default()).await?.items.is_empty() {
        ensure!(Instant::now() < deadline, "proxies not gone in 120 s");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    Ok(logs)
}

/// Milliseconds from each delegate line's stamp to its relayed copy's: all lines, and the
/// lines written once the relay was under way (a second after the first line reached the
/// proxy: those before waited for the proxy's container to start).
fn latencies(logs: &[Logs]) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let (mut all, mut steady) = (Vec::new(), Vec::new());
    for pair in logs {
        let (written, relayed) = (&pair.delegate, &pair.proxy);
        let Some((under_way, _)) = relayed.first() else {
            continue;
        };
        let under_way =
            under_way.saturating_add(k8s_openapi::jiff::SignedDuration::from_secs(1))?;
        for ((at, _), (shown, _)) in written.iter().zip(relayed) {
            let ms = shown.duration_since(*at).as_secs_f64() * 1000.0;
            all.push(ms);
            if *at >= under_way {
                steady.push(ms);
            }
        }
    }
    Ok((all, steady))
}

/// Megabytes per second: all bytes over the time the relays copied them (first line stamped
/// in a proxy to the last one), and end to end (first line written in a delegate to the last
/// line stamped in a proxy: the proxies' start included).
fn throughput(logs: &[Logs]) -> anyhow::Result<(f64, f64, usize)> {
    let mut bytes = 0;
    let (mut written_first, mut relayed_first, mut relayed_last): (
        Option<Timestamp>,
        Option<Timestamp>,
        Option<Timestamp>,
    ) = (None, None, None);
    for pair in logs {
        let (written, relayed) = (&pair.delegate, &pair.proxy);
        bytes += relayed.iter().map(|(_, length)| length).sum::<usize>();
        if let Some((at, _)) = written.first() {
            written_first = Some(written_first.map_or(*at, |f| f.min(*at)));
        }
        if let Some((at, _)) = relayed.first() {
            relayed_first = Some(relayed_first.map_or(*at, |f| f.min(*at)));
        }
        if let Some((at, _)) = relayed.last() {
            relayed_last = Some(relayed_last.map_or(*at, |l| l.max(*at)));
        }
    }
    let (Some(written_first), Some(relayed_first), Some(relayed_last)) =
        (written_first, relayed_first, relayed_last)
    else {
        bail!("no lines");
    };
    let rate = |from: Timestamp| {
        bytes as f64 / 1e6 / relayed_last.duration_since(from).as_secs_f64().max(1e-3)
    };
    Ok((rate(relayed_first), rate(written_first), bytes))
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
    } = common::real_node_bench(&args.paths, "log-relay", KEY).await?;
    let proxies: Api<Pod> = Api::namespaced(source.clone(), &namespace);
    let delegates: Api<Pod> = Api::namespaced(target.clone(), &namespace);
    let names = |prefix: &str, n: usize| -> Vec<String> {
        (0..n).map(|i| format!("{prefix}-{i}")).collect()
    };

    let steady = run(
        &proxies,
        &delegates,
        &namespace,
        &names("steady", args.pods),
        &["sh", "-c", STEADY],
        &key,
    )
    .await?;
    let (all, from_tenth) = latencies(&steady)?;
    let lines = all.len();
    let (all50, all99) = common::p50_p99(all);
    let (steady50, steady99) = common::p50_p99(from_tenth);
    println!(
        "latency, {} pods, {lines} lines: p50 {steady50:.0} ms p99 {steady99:.0} ms once under way (all lines: p50 {all50:.0} ms, p99 {all99:.0} ms)",
        args.pods
    );

    let write = |megabytes: usize| format!("yes {LINE} | head -c {}", megabytes * 1_000_000);
    let (_, cpu_before) = common::footprint(running.0.id())?;
    let one = run(
        &proxies,
        &delegates,
        &namespace,
        &names("one", 1),
        &["sh", "-c", &write(8)],
        &key,
    )
    .await?;
    let (one_rate, one_end_to_end, one_bytes) = throughput(&one)?;
    let many = run(
        &proxies,
        &delegates,
        &namespace,
        &names("many", args.streams),
        &["sh", "-c", &write(2)],
        &key,
    )
    .await?;
    let (many_rate, many_end_to_end, many_bytes) = throughput(&many)?;
    let (rss_kib, cpu_after) = common::footprint(running.0.id())?;
    drop(running);
    let cpu = cpu_after - cpu_before;
    println!(
        "throughput: one stream {one_rate:.1} MB/s ({one_bytes} bytes; {one_end_to_end:.1} MB/s from the first line written, the proxy's start included); \
         {} streams at once {many_rate:.1} MB/s in all, {:.2} MB/s each ({many_end_to_end:.1} MB/s from the first line written); \
         delegate-sync CPU {cpu:.1} s for {:.0} MB, peak RSS {rss_kib} KiB",
        args.streams,
        many_rate / args.streams as f64,
        (one_bytes + many_bytes) as f64 / 1e6
    );
    let raw = json!({
        "latency_ms": { "pods": args.pods, "lines": lines,
                        "under_way": { "p50": steady50, "p99": steady99 },
                        "all_lines": { "p50": all50, "p99": all99 } },
        "throughput_mb_per_s": { "one_stream": one_rate, "streams": args.streams,
                                 "all_streams": many_rate, "per_stream": many_rate / args.streams as f64,
                                 "one_stream_end_to_end": one_end_to_end,
                                 "all_streams_end_to_end": many_end_to_end },
        "delegate_sync": { "cpu_seconds_throughput": cpu, "peak_rss_kib": rss_kib,
                           "megabytes_relayed": (one_bytes + many_bytes) as f64 / 1e6 },
    });
    report(&args.paths.out, raw)
}

fn report(out: &std::path::Path, raw: Value) -> anyhow::Result<()> {
    let round = common::round2;
    let f = |path: &[&str]| {
        path.iter()
            .fold(&raw, |v, k| &v[*k])
            .as_f64()
            .unwrap_or(f64::NAN)
    };
    let row = |measure: &str, ours: f64, unit: &str, goal: &str| {
        json!({ "measure": measure, "ours": round(ours), "baseline": null, "ratio": null,
                "unit": unit, "goal": goal })
    };
    let rows = vec![
        row(
            "log line in delegate → in proxy's log, p50",
            f(&["latency_ms", "under_way", "p50"]),
            "ms",
            "-",
        ),
        row(
            "log line in delegate → in proxy's log, p99",
            f(&["latency_ms", "under_way", "p99"]),
            "ms",
            "<= 1000",
        ),
        row(
            "log relay, one stream",
            f(&["throughput_mb_per_s", "one_stream"]),
            "MB/s",
            "-",
        ),
        row(
            "log relay, streams at once (50; 10 with BENCH_QUICK), in all",
            f(&["throughput_mb_per_s", "all_streams"]),
            "MB/s",
            "-",
        ),
        row(
            "delegate-sync peak RSS while relaying",
            f(&["delegate_sync", "peak_rss_kib"]) / 1024.0,
            "MiB",
            "-",
        ),
    ];
    common::write_report(
        out,
        "log-relay",
        "none: the kubelets' own timestamps of the same line in both logs",
        raw,
        rows,
    )
}
