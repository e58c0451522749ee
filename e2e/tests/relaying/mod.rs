//! What the log relay tests share (`log_relay.rs`, `log_relay_outage.rs`).

#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use crate::{
    common::{DelegateSync, Scratch},
    pieces,
};
use contract::{CLUSTER_NAME, DELEGATE_NAME, ELECT};
use e2e::{
    TestEnv, TestNamespace,
    nodes::{self, BUSYBOX_IMAGE},
    support::wait_for,
};
use futures::AsyncReadExt as _;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::{
    Api, ResourceExt as _,
    api::{ListParams, LogParams, PostParams},
};
use serde_json::json;

pub const TIMEOUT: Duration = Duration::from_secs(120);
pub const LABEL: &str = "log-relay";

/// A namespace the webhook (proxies on real nodes) serves; delegate-sync runs in this process
/// unless `own_sync`, when the test runs it as a process of its own.
pub async fn scene(
    test: &str,
    own_sync: bool,
) -> (&'static TestEnv, TestNamespace, pieces::Running) {
    // RUST_LOG=delegate_sync=debug shows what the relays do.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    pieces::real_nodes_scene(test, LABEL, own_sync).await
}

/// delegate-sync as a process of its own (so that it can be killed), with the pieces' key.
pub fn own_sync(env: &TestEnv, scratch: &Scratch, log: &str, extra: &[&str]) -> DelegateSync {
    let key_file = scratch.path("manifest.key");
    std::fs::write(&key_file, pieces::KEY).unwrap();
    DelegateSync::new(env.kubeconfig(), &key_file, scratch.path(log), extra)
}

/// An elected pod pinned to cluster2, its one container `main` running `script` on a real node.
pub fn elected(name: &str, script: &str, annotations: &[(&str, &str)]) -> Pod {
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
pub async fn log_bytes(pods: &Api<Pod>, name: &str) -> Vec<u8> {
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

pub fn ended(pod: Option<&Pod>) -> bool {
    pod.and_then(|p| p.status.as_ref()?.phase.as_deref())
        .is_some_and(|phase| phase == "Succeeded" || phase == "Failed")
}

/// Creates `pod`; returns the name of its delegate in cluster2.
pub async fn create(ns: &TestNamespace, pod: &Pod) -> String {
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
pub async fn logs_at_the_end(
    ns: &TestNamespace,
    proxy: &str,
    delegate: &str,
) -> (Vec<u8>, Vec<u8>) {
    let proxies = ns.api::<Pod>("cluster1").await.unwrap();
    let delegates = ns.api::<Pod>("cluster2").await.unwrap();
    wait_for(&proxies, proxy, TIMEOUT, ended).await.unwrap();
    // The moment the proxy is seen ended, its log must be whole already.
    let relayed = log_bytes(&proxies, proxy).await;
    (relayed, log_bytes(&delegates, delegate).await)
}

/// Waits until the proxy's log holds `lines` numbered lines; the delegate must still run.
pub async fn wait_for_lines(ns: &TestNamespace, proxy: &str, delegate: &str, lines: usize) {
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

pub fn assert_same(what: &str, relayed: &[u8], original: &[u8]) {
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

pub async fn events(ns: &TestNamespace, proxy: &str) -> Vec<(String, String)> {
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

/// Numbered lines ([`STEADY_LINES`]), 25 a second for about 16 s.
pub const STEADY: &str =
    "i=0; while [ $i -lt 400 ]; do echo \"line $i\"; i=$((i+1)); usleep 40000; done";
pub const STEADY_LINES: usize = 400;

pub fn numbered(log: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(log)
        .lines()
        .map(str::to_string)
        .collect()
}

pub fn expected_lines() -> Vec<String> {
    (0..STEADY_LINES).map(|i| format!("line {i}")).collect()
}
