//! Fault: the real delegate-sync process killed with SIGKILL at random moments (seeded; the
//! seed is printed, `FAULTS_SEED` replays it) while elected proxies with a mix of exit codes
//! and run times are created and run, spread over cluster1 (self) and cluster2; restarted
//! after each kill. Every proxy must end with its delegate's exit code (phase, container
//! status and result annotation), no proxy may get two delegates, no delegate may be left
//! without its proxy; then every proxy is deleted, with one more kill during the cleanup,
//! and nothing may remain. Reduced (3 kills, 40 pods) in `cargo test`; `FAULTS_FULL=1`
//! (`make faults`): 10 kills, 500 pods. Figures in `target/faults/sigkill.json`.
//!
//! A test binary of its own: it uses a good share of the clusters' pod slots.

mod common;

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::*;
use contract::PROXY_LABEL;
use e2e::TestEnv;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::json;

const KEY: &[u8] = b"faults-sigkill-manifest-key-0123456789abcd";

struct Size {
    kills: usize,
    pods: usize,
    /// At most this many proxies unfinished at once: the blog preset has 330 pod slots per
    /// cluster, and proxies and cluster1's delegates share cluster1's.
    window: usize,
    /// Gap between two proxy creations.
    creation_gap: Duration,
    /// A kill comes this long (uniform) after the previous restart.
    kill_gap: (Duration, Duration),
    timeout: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegate_sync_killed_at_random_moments_loses_and_duplicates_nothing() {
    let size = if full() {
        Size {
            kills: 10,
            pods: 500,
            window: 150,
            creation_gap: Duration::from_millis(60),
            kill_gap: (Duration::from_millis(500), Duration::from_secs(8)),
            timeout: Duration::from_secs(1200),
        }
    } else {
        Size {
            kills: 3,
            pods: 40,
            window: 40,
            creation_gap: Duration::from_millis(150),
            kill_gap: (Duration::from_millis(300), Duration::from_secs(3)),
            timeout: Duration::from_secs(240),
        }
    };
    let env = TestEnv::get().await.unwrap();
    let ns = env.namespace("faults-kill").await.unwrap();
    let scratch = Scratch::new("faults-kill");
    let key_file = scratch.path("manifest.key");
    std::fs::write(&key_file, KEY).unwrap();
    let mut sync = DelegateSync::new(
        env.kubeconfig(),
        &key_file,
        scratch.path("delegate-sync.log"),
        &[],
    );
    sync.start_ready().await;

    let mut rng = Rng::from_env("sigkill");
    let codes = [0, 0, 0, 1, 2, 42];
    let targets = [Some("cluster1"), Some("cluster2"), None];
    let run_for = ["1s", "2s", "3s", "5s"];
    let plan: Vec<(String, Expected, &str)> = (0..size.pods)
        .map(|i| {
            let expected = Expected {
                exit_code: *rng.pick(&codes),
                pinned: rng.pick(&targets).map(str::to_string),
            };
            (format!("p{i:03}"), expected, *rng.pick(&run_for))
        })
        .collect();
    let expected: BTreeMap<String, Expected> = plan
        .iter()
        .map(|(name, e, _)| (name.clone(), e.clone()))
        .collect();

    let proxies = ns.api::<Pod>("cluster1").await.unwrap();
    let delegates = vec![
        ("cluster1".to_string(), proxies.clone()),
        (
            "cluster2".to_string(),
            ns.api::<Pod>("cluster2").await.unwrap(),
        ),
    ];
    let only_proxies = ListParams::default().labels(&format!("{PROXY_LABEL}=true"));
    let started = Instant::now();

    // Proxies are created at a steady pace (never more than `window` unfinished) while the
    // controller is killed.
    let created = Arc::new(AtomicUsize::new(0));
    let creator = {
        let (proxies, created, only_proxies) =
            (proxies.clone(), created.clone(), only_proxies.clone());
        let namespace = ns.name.clone();
        let plan = plan.clone();
        let (window, gap) = (size.window, size.creation_gap);
        tokio::spawn(async move {
            let mut finished = 0;
            for (i, (name, want, run_for)) in plan.iter().enumerate() {
                while i - finished >= window {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    finished = count_terminal(&proxies, &only_proxies).await;
                }
                let pod = proxy(
                    KEY,
                    &namespace,
                    name,
                    want.pinned.as_deref(),
                    run_for,
                    want.exit_code,
                );
                // The apiserver of the source is never the fault here: a creation must work.
                let mut attempts = 0;
                while let Err(e) = proxies.create(&PostParams::default(), &pod).await {
                    attempts += 1;
                    assert!(attempts < 10, "cannot create {name}: {e}");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                created.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(gap).await;
            }
        })
    };

    let mut kill_moments = Vec::new();
    let mut down_total = Duration::ZERO;
    for _ in 0..size.kills {
        tokio::time::sleep(rng.duration(size.kill_gap.0, size.kill_gap.1)).await;
        sync.process.assert_running();
        sync.process.kill();
        kill_moments.push(json!({
            "at_seconds": started.elapsed().as_secs_f64(),
            "proxies_created": created.load(Ordering::Relaxed),
        }));
        let down = rng.duration(Duration::ZERO, Duration::from_millis(1500));
        down_total += down;
        tokio::time::sleep(down).await;
        sync.process.start();
    }
    sync.process
        .wait_ready(sync.admin, Duration::from_secs(60))
        .await;
    creator.await.unwrap();

    let all = size.pods;
    let finished_in = wait_until("every proxy ends", size.timeout, async || {
        sync.process.assert_running();
        let done = count_terminal(&proxies, &only_proxies).await;
        Ok((done < all).then(|| format!("{done} of {all} proxies ended")))
    })
    .await;
    let run_seconds = started.elapsed().as_secs_f64();
    let verdict = judge(&proxies, &delegates, &expected).await.unwrap();

    // Cleanup: every proxy deleted, one more kill meanwhile; nothing may remain.
    let cleanup_started = Instant::now();
    proxies
        .delete_collection(&DeleteParams::default(), &only_proxies)
        .await
        .unwrap();
    tokio::time::sleep(rng.duration(Duration::from_millis(200), Duration::from_millis(1500))).await;
    sync.process.kill();
    sync.process.start();
    let cleaned = wait_until("proxies and delegates gone", size.timeout, async || {
        let left_proxies = proxies.list(&only_proxies).await?.items.len();
        let mut left_delegates = 0;
        for (_, api) in &delegates {
            left_delegates += api
                .list(&ListParams::default().labels(&format!("{DELEGATE_LABEL}=true")))
                .await?
                .items
                .len();
        }
        Ok((left_proxies + left_delegates > 0)
            .then(|| format!("{left_proxies} proxies and {left_delegates} delegates left")))
    })
    .await;

    report(
        "sigkill",
        &json!({
            "full": full(),
            "seed": rng.seed,
            "pods": verdict.pods,
            "finished_correctly": verdict.finished,
            "kills": size.kills + 1,
            "kills_during_run": size.kills,
            "kills_during_cleanup": 1,
            "lost": verdict.lost,
            "duplicated": verdict.duplicated,
            "orphans": verdict.orphans,
            "misplaced": verdict.misplaced,
            "delegates_per_cluster": verdict.delegates_per_cluster,
            "controller_down_seconds": down_total.as_secs_f64(),
            "wall_seconds": run_seconds,
            "cleanup_seconds": cleanup_started.elapsed().as_secs_f64(),
            "kill_moments": kill_moments,
            "problems": verdict.problems.iter().take(20).collect::<Vec<_>>(),
        }),
    );
    finished_in.unwrap();
    assert!(
        verdict.ok() && verdict.finished == size.pods,
        "{verdict:#?}\nlast lines of the delegate-sync log:\n{}",
        sync.process.log_tail(40)
    );
    cleaned.unwrap();
}

async fn count_terminal(proxies: &Api<Pod>, only_proxies: &ListParams) -> usize {
    match proxies.list(only_proxies).await {
        Ok(list) => list.items.iter().filter(|p| terminal(p)).count(),
        Err(_) => 0,
    }
}
