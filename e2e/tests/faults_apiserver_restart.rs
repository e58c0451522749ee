//! Fault: a target's kube-apiserver stopped for real (SIGTERM: it stops listening at once;
//! its process is gone within 5 s, SIGKILLed if its graceful termination hangs, as v1.34's
//! does) and started again with the same arguments (same etcd, same port) while delegates
//! run there. On a private test bed of its own, so the shared one is never disturbed.
//!
//! Proxies pinned to cluster2 are running when it stops, some created during the outage,
//! some pinned to cluster1 (which must keep working meanwhile), some placed freely. Every
//! proxy must end with its delegate's exit code, none may be failed `ClusterLost` (the
//! outage is shorter than `--cluster-lost-timeout`), none may get two delegates; deleting the
//! proxies afterwards must leave nothing. Reduced: an 8 s outage; `FAULTS_FULL=1`: 30 s.
//! Figures in `target/faults/apiserver-restart.json`.

mod common;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use common::*;
use contract::PROXY_LABEL;
use e2e::{Testbed, TestbedConfig, testbed::workspace_target_dir};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::{
    Api,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::json;

const KEY: &[u8] = b"faults-apiserver-manifest-key-0123456789ab";
const NAMESPACE: &str = "faults-restart";

/// Stops the private test bed even when an assertion fails.
struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Keep the components' logs for the post-mortem.
            let keep = workspace_target_dir().join("faults/apiserver-restart-logs");
            for cluster in ["cluster1", "cluster2"] {
                let _ = std::fs::create_dir_all(keep.join(cluster));
                for entry in std::fs::read_dir(self.0.join(cluster))
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let path = entry.path();
                    if path.extension().is_some_and(|e| e == "log") {
                        let _ = std::fs::copy(&path, keep.join(cluster).join(entry.file_name()));
                    }
                }
            }
            eprintln!("test bed logs kept in {}", keep.display());
        }
        if let Err(e) = Testbed::down(&self.0) {
            eprintln!("warning: private test bed not stopped: {e:#}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_apiserver_stopped_and_restarted_for_real_loses_no_pod() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let outage = Duration::from_secs(if full() { 30 } else { 8 });
    let dir =
        workspace_target_dir().join(format!("testbed-faults-apiserver-{}", std::process::id()));
    let _cleanup = Cleanup(dir.clone());
    let testbed_started = Instant::now();
    let mut config = TestbedConfig::new(&dir, 2).unwrap();
    // Fake nodes are enough here: the outage is the apiserver's.
    config.preset.real_nodes_per_cluster = 0;
    let testbed = Testbed::up(&config).await.unwrap();
    println!(
        "private test bed up in {:.1} s",
        testbed_started.elapsed().as_secs_f64()
    );
    for cluster in ["cluster1", "cluster2"] {
        let client = testbed.client(cluster).await.unwrap();
        let namespace: Namespace =
            serde_json::from_value(json!({ "metadata": { "name": NAMESPACE } })).unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap();
        let accounts: Api<ServiceAccount> = Api::namespaced(client, NAMESPACE);
        wait_until(
            "default ServiceAccount",
            Duration::from_secs(30),
            async || {
                Ok(accounts
                    .get_opt("default")
                    .await?
                    .is_none()
                    .then(|| "missing".to_string()))
            },
        )
        .await
        .unwrap();
    }
    let proxies: Api<Pod> = Api::namespaced(testbed.client("cluster1").await.unwrap(), NAMESPACE);
    let delegates = vec![
        ("cluster1".to_string(), proxies.clone()),
        (
            "cluster2".to_string(),
            Api::namespaced(testbed.client("cluster2").await.unwrap(), NAMESPACE),
        ),
    ];

    let scratch = Scratch::new("faults-apiserver");
    let key_file = scratch.path("manifest.key");
    std::fs::write(&key_file, KEY).unwrap();
    let mut sync = DelegateSync::new(
        &testbed.kubeconfig_path(),
        &key_file,
        scratch.path("delegate-sync.log"),
        &[],
    );
    sync.start_ready().await;

    let mut expected = BTreeMap::new();
    let mut create = async |name: String, pinned: Option<&str>, run_for: String, code: i32| {
        let pod = proxy(KEY, NAMESPACE, &name, pinned, &run_for, code);
        proxies.create(&PostParams::default(), &pod).await.unwrap();
        expected.insert(
            name,
            Expected {
                exit_code: code,
                pinned: pinned.map(str::to_string),
            },
        );
    };
    let outage_s = outage.as_secs();
    let codes = [0, 3, 0, 1, 0, 42];
    // Running in cluster2 when it stops: some end during the outage, some after it.
    for (i, code) in codes.iter().enumerate() {
        let run_for = format!("{}s", 3 + (i as u64 * (outage_s + 6)) / codes.len() as u64);
        create(format!("c2-{i}"), Some("cluster2"), run_for, *code).await;
    }
    // In cluster1 (self) and anywhere: unaffected by the outage.
    for (i, code) in codes.iter().take(3).enumerate() {
        create(format!("c1-{i}"), Some("cluster1"), "2s".into(), *code).await;
        create(format!("any-{i}"), None, "3s".into(), *code).await;
    }
    let running_in_cluster2 = &delegates[1].1;
    wait_until(
        "delegates running in cluster2",
        Duration::from_secs(60),
        async || {
            let running = running_in_cluster2
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .filter(|p| phase(p) == Some("Running"))
                .count();
            Ok((running < codes.len()).then(|| format!("{running} running")))
        },
    )
    .await
    .unwrap();

    // The outage.
    let stopped_at = Instant::now();
    let stopped = testbed.stop_apiserver("cluster2").unwrap();
    let down_since = Instant::now();
    let (stopping_took, needed_sigkill) = (stopped.stopping_took, stopped.killed);
    let unreachable = testbed.client("cluster2").await.unwrap();
    assert!(
        unreachable.apiserver_version().await.is_err(),
        "cluster2's apiserver still answers"
    );
    // Created while cluster2 is gone: placed when it returns (pinned) or elsewhere.
    for (i, code) in codes.iter().take(3).enumerate() {
        create(
            format!("during-c2-{i}"),
            Some("cluster2"),
            "2s".into(),
            *code,
        )
        .await;
        create(format!("during-any-{i}"), None, "2s".into(), *code).await;
    }
    // cluster1 keeps working: its own proxies end while cluster2 is down.
    let mut cluster1_done_during_outage = false;
    let mut cluster1_states = Vec::new();
    // (Checked at least once; the outage counts from SIGTERM, when the apiserver stops
    // listening.)
    let mut checked = false;
    while !checked || stopped_at.elapsed() < outage {
        checked = true;
        let listed = proxies.list(&ListParams::default()).await.unwrap().items;
        let cluster1_proxies: Vec<&Pod> = listed
            .iter()
            .filter(|p| {
                p.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("c1-"))
            })
            .collect();
        cluster1_done_during_outage = cluster1_proxies.iter().all(|p| terminal(p));
        cluster1_states = cluster1_proxies
            .iter()
            .map(|p| {
                format!(
                    "{}: {:?}",
                    p.metadata.name.as_deref().unwrap_or_default(),
                    phase(p)
                )
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let restart_started = Instant::now();
    stopped.start().await.unwrap();
    let restart_seconds = restart_started.elapsed().as_secs_f64();
    let outage_seconds = stopped_at.elapsed().as_secs_f64();
    let down_seconds = down_since.elapsed().as_secs_f64();
    sync.process.assert_running();
    let back = Instant::now();

    let all = expected.len();
    // When each proxy was first seen ended, counted from the apiserver's return.
    let mut ended_after = BTreeMap::new();
    let finished = wait_until("every proxy ends", Duration::from_secs(180), async || {
        for pod in proxies
            .list(&ListParams::default().labels(&format!("{PROXY_LABEL}=true")))
            .await?
            .items
            .iter()
            .filter(|p| terminal(p))
        {
            ended_after
                .entry(pod.metadata.name.clone().unwrap_or_default())
                .or_insert_with(|| (back.elapsed().as_secs_f64() * 10.0).round() / 10.0);
        }
        let done = ended_after.len();
        Ok((done < all).then(|| format!("{done} of {all} ended")))
    })
    .await;
    let settled_seconds = back.elapsed().as_secs_f64();
    let verdict = judge(&proxies, &delegates, &expected).await.unwrap();
    // Where the unpinned proxies created during the outage were placed.
    let mut placed_during_outage = BTreeMap::new();
    for pod in proxies.list(&ListParams::default()).await.unwrap().items {
        let name = pod.metadata.name.clone().unwrap_or_default();
        if name.starts_with("during-any-") {
            let target = pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(contract::TARGET_CLUSTER))
                .cloned()
                .unwrap_or_default();
            placed_during_outage.insert(name, target);
        }
    }
    let components_alive = testbed_processes_alive(&dir);

    proxies
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels(&format!("{PROXY_LABEL}=true")),
        )
        .await
        .unwrap();
    let cleaned = wait_until(
        "proxies and delegates gone",
        Duration::from_secs(60),
        async || {
            let mut left = 0;
            for (_, api) in &delegates {
                left += api.list(&ListParams::default()).await?.items.len();
            }
            Ok((left > 0).then(|| format!("{left} pods left")))
        },
    )
    .await;

    report(
        "apiserver-restart",
        &json!({
            "full": full(),
            "pods": verdict.pods,
            "finished_correctly": verdict.finished,
            "outage_seconds": outage_seconds,
            "process_gone_seconds": down_seconds,
            "sigterm_to_exit_seconds": stopping_took.as_secs_f64(),
            "needed_sigkill": needed_sigkill,
            "apiserver_ready_after_start_seconds": restart_seconds,
            "all_ended_after_return_seconds": settled_seconds,
            "ended_after_return_seconds": ended_after,
            "unpinned_created_during_outage_placed_on": placed_during_outage,
            "cluster1_proxies_ended_during_outage": cluster1_done_during_outage,
            "cluster1_proxies_at_end_of_outage": cluster1_states,
            "lost": verdict.lost,
            "duplicated": verdict.duplicated,
            "orphans": verdict.orphans,
            "misplaced": verdict.misplaced,
            "delegates_per_cluster": verdict.delegates_per_cluster,
            "components_alive_after_restart": components_alive,
            "problems": verdict.problems,
        }),
    );
    finished.unwrap();
    assert!(
        verdict.ok() && verdict.finished == all,
        "{verdict:#?}\nlast lines of the delegate-sync log:\n{}",
        sync.process.log_tail(40)
    );
    assert!(
        cluster1_done_during_outage,
        "cluster1's proxies must end while cluster2 is down"
    );
    cleaned.unwrap();
    let dead: Vec<_> = components_alive
        .iter()
        .filter(|(_, alive)| !**alive)
        .collect();
    assert!(dead.is_empty(), "test bed processes died: {dead:?}");
}

/// Every process of the test bed (per its state file, which a restart updates), and whether
/// it still runs.
fn testbed_processes_alive(dir: &std::path::Path) -> BTreeMap<String, bool> {
    let testbed = Testbed::attach(dir).unwrap();
    let mut alive = BTreeMap::new();
    for name in testbed.cluster_names() {
        for process in &testbed.cluster(&name).unwrap().processes {
            alive.insert(format!("{name}/{}", process.name), process.is_running());
        }
    }
    alive
}
