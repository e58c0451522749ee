//! The log relay on real kubelets: `kubectl logs` on a proxy is its delegate's log, byte for
//! byte (long lines the runtime splits, bytes that are not UTF-8, a last line without newline),
//! live while the delegate runs, and whole once the proxy container ended; across a
//! delegate-sync killed with SIGKILL and one stopped gracefully mid-stream, and a target
//! apiserver that stops answering mid-stream; with the per-pod annotations (off, a byte limit)
//! and `--max-log-streams` (past it, the log comes at the end, and an Event says so).
//!
//! A test binary of its own: it freezes cluster2's apiserver.

mod common;
mod pieces;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use common::{DelegateSync, Scratch};
use contract::{CLUSTER_NAME, DELEGATE_NAME, ELECT, LOG_RELAY, LOG_RELAY_LIMIT_BYTES};
use e2e::{
    TestEnv, TestNamespace,
    nodes::{self, BUSYBOX_IMAGE},
    support::{unique_name, wait_for},
};
use futures::AsyncReadExt as _;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::{
    Api, ResourceExt as _,
    api::{ListParams, LogParams, PostParams},
};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(120);
const LABEL: &str = "log-relay";

/// A namespace the webhook (proxies on real nodes) serves; delegate-sync runs in this process
/// unless `own_sync`, when the test runs it as a process of its own.
async fn scene(test: &str, own_sync: bool) -> (&'static TestEnv, TestNamespace, pieces::Running) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // RUST_LOG=delegate_sync=debug shows what the relays do.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let env = TestEnv::get().await.unwrap();
    env.require_real_nodes().unwrap();
    let selector = unique_name("sel");
    let ns = env
        .namespace_with_labels(
            test,
            BTreeMap::from([
                ("multicluster-scheduler".into(), "enabled".into()),
                (LABEL.into(), selector.clone()),
            ]),
        )
        .await
        .unwrap();
    let running = if own_sync {
        pieces::start_webhook(env, LABEL, &selector, pieces::Proxies::OnRealNodes).await
    } else {
        pieces::start_with(env, LABEL, &selector, pieces::Proxies::OnRealNodes).await
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    (env, ns, running)
}

/// delegate-sync as a process of its own (so that it can be killed), with the pieces' key.
fn own_sync(env: &TestEnv, scratch: &Scratch, log: &str, extra: &[&str]) -> DelegateSync {
    let key_file = scratch.path("manifest.key");
    std::fs::write(&key_file, pieces::KEY).unwrap();
    DelegateSync::new(env.kubeconfig(), &key_file, scratch.path(log), extra)
}

/// An elected pod pinned to cluster2, its one container `main` running `script` on a real node.
fn elected(name: &str, script: &str, annotations: &[(&str, &str)]) -> Pod {
    let mut all = BTreeMap::from([
        (ELECT.to_string(), String::new()),
        (CLUSTER_NAME.to_string(), "cluster2".to_string()),
    ]);
    all.extend(
        annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let mut pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": name, "annotations": all },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{ "name": "main", "image": BUSYBOX_IMAGE, "command": ["sh", "-c", script] }],
        },
    }))
    .unwrap();
    nodes::on_real_nodes(pod.spec.as_mut().unwrap());
    pod
}

/// A container's whole log, as bytes.
async fn log_bytes(pods: &Api<Pod>, name: &str) -> Vec<u8> {
    let params = LogParams {
        container: Some("main".into()),
        ..LogParams::default()
    };
    let mut bytes = Vec::new();
    match pods.log_stream(name, &params).await {
        Ok(mut stream) => {
            stream.read_to_end(&mut bytes).await.unwrap();
        }
        // Not started yet: no log.
        Err(kube::Error::Api(status)) if status.message.contains("waiting to start") => {}
        Err(e) => panic!("log of {name}: {e}"),
    }
    bytes
}

fn ended(pod: Option<&Pod>) -> bool {
    pod.and_then(|p| p.status.as_ref()?.phase.as_deref())
        .is_some_and(|phase| phase == "Succeeded" || phase == "Failed")
}

/// Creates `pod`; returns the name of its delegate in cluster2.
async fn create(ns: &TestNamespace, pod: &Pod) -> String {
    let proxies = ns.api::<Pod>("cluster1").await.unwrap();
    proxies.create(&PostParams::default(), pod).await.unwrap();
    let placed = wait_for(&proxies, &pod.name_any(), TIMEOUT, |p: Option<&Pod>| {
        p.is_some_and(|p| p.annotations().contains_key(DELEGATE_NAME))
    })
    .await
    .unwrap()
    .unwrap();
    placed.annotations()[DELEGATE_NAME].clone()
}

/// Waits until the proxy ended; returns its log then and its delegate's.
async fn logs_at_the_end(ns: &TestNamespace, proxy: &str, delegate: &str) -> (Vec<u8>, Vec<u8>) {
    let proxies = ns.api::<Pod>("cluster1").await.unwrap();
    let delegates = ns.api::<Pod>("cluster2").await.unwrap();
    wait_for(&proxies, proxy, TIMEOUT, ended).await.unwrap();
    // The moment the proxy is seen ended, its log must be whole already.
    let relayed = log_bytes(&proxies, proxy).await;
    (relayed, log_bytes(&delegates, delegate).await)
}

/// Waits until the proxy's log holds `lines` numbered lines; the delegate must still run.
async fn wait_for_lines(ns: &TestNamespace, proxy: &str, delegate: &str, lines: usize) {
    let proxies = ns.api::<Pod>("cluster1").await.unwrap();
    let delegates = ns.api::<Pod>("cluster2").await.unwrap();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let log = log_bytes(&proxies, proxy).await;
        if log.iter().filter(|&&b| b == b'\n').count() >= lines {
            let running = delegates.get(delegate).await.unwrap();
            assert!(
                !ended(Some(&running)),
                "the delegate still runs: the relay is live"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{lines} lines never reached {proxy}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn assert_same(what: &str, relayed: &[u8], original: &[u8]) {
    assert!(
        relayed == original,
        "{what}: the proxy's log ({} bytes) differs from the delegate's ({} bytes); first difference at byte {:?}\nproxy:    {:?}\ndelegate: {:?}",
        relayed.len(),
        original.len(),
        relayed.iter().zip(original).position(|(a, b)| a != b),
        String::from_utf8_lossy(&relayed[relayed.len().saturating_sub(200)..]),
        String::from_utf8_lossy(&original[original.len().saturating_sub(200)..]),
    );
}

async fn events(ns: &TestNamespace, proxy: &str) -> Vec<(String, String)> {
    let events: Api<Event> = ns.api("cluster1").await.unwrap();
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(proxy))
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

/// What a workload's log can hold: stdout and stderr lines, a line over the runtime's 16 KiB
/// (split in pieces on the node, joined by the kubelet), bytes that are not UTF-8 and a last
/// line without newline; first a line, then a pause, so that the relay is seen live.
const EVERYTHING: &str = r#"echo first; sleep 8
i=0; while [ $i -lt 300 ]; do echo "line $i"; echo "err $i" >&2; i=$((i+1)); done
head -c 40000 /dev/zero | tr '\0' x; echo
printf '\377\376 not UTF-8\n'
printf 'a last line without newline'"#;

#[tokio::test]
async fn kubectl_logs_on_a_proxy_is_its_delegates_log_live_and_whole() {
    let (_env, ns, _pieces) = scene("relay-whole", false).await;
    let delegate = create(&ns, &elected("whole", EVERYTHING, &[])).await;
    wait_for_lines(&ns, "whole", &delegate, 1).await;
    let (relayed, original) = logs_at_the_end(&ns, "whole", &delegate).await;
    assert!(
        original.len() > 40_000 + 300 * 12,
        "{} bytes",
        original.len()
    );
    assert!(original.ends_with(b"a last line without newline"));
    assert_same("whole", &relayed, &original);
}

#[tokio::test]
async fn relay_off_and_a_byte_limit_are_per_pod() {
    let (_env, ns, _pieces) = scene("relay-limits", false).await;
    let script = "i=0; while [ $i -lt 100 ]; do echo \"line $i\"; i=$((i+1)); done";
    let off = create(&ns, &elected("off", script, &[(LOG_RELAY, "off")])).await;
    let limited = create(
        &ns,
        &elected("limited", script, &[(LOG_RELAY_LIMIT_BYTES, "100")]),
    )
    .await;
    let (relayed, original) = logs_at_the_end(&ns, "off", &off).await;
    assert_eq!(original.len(), 790);
    assert!(
        !relayed.starts_with(b"line 0"),
        "relay off: {:?}",
        String::from_utf8_lossy(&relayed)
    );
    let (relayed, original) = logs_at_the_end(&ns, "limited", &limited).await;
    assert_same("limited", &relayed, &original[..100]);
    let seen = events(&ns, "limited").await;
    assert!(
        seen.iter()
            .any(|(reason, _)| reason == "LogRelayLimitReached"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn past_max_log_streams_the_log_comes_whole_at_the_end() {
    let (env, ns, _pieces) = scene("relay-deferred", true).await;
    let scratch = Scratch::new("relay-deferred");
    let mut sync = own_sync(env, &scratch, "delegate-sync.log", &["--max-log-streams=0"]);
    sync.start_ready().await;
    let script = "echo early; sleep 6; echo late";
    let delegate = create(&ns, &elected("deferred", script, &[])).await;
    let proxies = ns.api::<Pod>("cluster1").await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        log_bytes(&proxies, "deferred").await.is_empty(),
        "nothing live past --max-log-streams"
    );
    let (relayed, original) = logs_at_the_end(&ns, "deferred", &delegate).await;
    assert_eq!(original, b"early\nlate\n");
    assert_same("deferred", &relayed, &original);
    let seen = events(&ns, "deferred").await;
    assert!(
        seen.iter().any(|(reason, _)| reason == "LogRelayDeferred"),
        "{seen:?}"
    );
}

/// Numbered lines, 25 a second for about 12 s.
const STEADY: &str =
    "i=0; while [ $i -lt 300 ]; do echo \"line $i\"; i=$((i+1)); usleep 40000; done";

fn numbered(log: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(log)
        .lines()
        .map(str::to_string)
        .collect()
}

fn expected_lines() -> Vec<String> {
    (0..300).map(|i| format!("line {i}")).collect()
}

#[tokio::test]
async fn nothing_is_lost_or_repeated_when_delegate_sync_is_killed_or_stopped_mid_stream() {
    let (env, ns, _pieces) = scene("relay-kill", true).await;
    let scratch = Scratch::new("relay-kill");
    let mut sync = own_sync(env, &scratch, "delegate-sync.log", &[]);
    sync.start_ready().await;
    let delegate = create(&ns, &elected("steady", STEADY, &[])).await;
    wait_for_lines(&ns, "steady", &delegate, 40).await;
    sync.process.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut second = own_sync(env, &scratch, "delegate-sync-2.log", &[]);
    second.start_ready().await;
    wait_for_lines(&ns, "steady", &delegate, 120).await;
    // A graceful stop, as a leader hands over: the next replica resumes.
    assert!(
        second.process.stop(Duration::from_secs(10)),
        "stopped on SIGTERM"
    );
    let mut third = own_sync(env, &scratch, "delegate-sync-3.log", &[]);
    third.start_ready().await;
    let (relayed, original) = logs_at_the_end(&ns, "steady", &delegate).await;
    assert_eq!(numbered(&original), expected_lines());
    assert_same("steady", &relayed, &original);
}

#[tokio::test]
async fn a_target_that_stops_answering_mid_stream_is_resumed_without_loss() {
    let (env, ns, _pieces) = scene("relay-frozen", false).await;
    let testbed = env.testbed().unwrap();
    let delegate = create(&ns, &elected("frozen", STEADY, &[])).await;
    wait_for_lines(&ns, "frozen", &delegate, 40).await;
    {
        // The delegate's kubelet keeps running it; its apiserver does not answer for 5 s.
        let _frozen = testbed.freeze_apiserver("cluster2").unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let (relayed, original) = logs_at_the_end(&ns, "frozen", &delegate).await;
    assert_eq!(numbered(&original), expected_lines());
    assert_same("frozen", &relayed, &original);
}
