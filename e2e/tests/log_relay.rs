//! The log relay on real kubelets: `kubectl logs` on a proxy is its delegate's log, byte for
//! byte (long lines the runtime splits, bytes that are not UTF-8, a last line without newline),
//! live while the delegate runs, and whole once the proxy container ended; across a
//! delegate-sync killed with SIGKILL and a leader handing over to its standby mid-stream, and a target
//! apiserver that stops answering mid-stream; with the per-pod annotations (off, a byte limit)
//! and `--max-log-streams` (past it, the log comes at the end, and an Event says so).
//!
//! The outage test is in `log_relay_outage.rs`: it freezes cluster2's apiserver, which would
//! slow these.

mod common;
mod pieces;
mod relaying;

use std::time::Duration;

use common::Scratch;
use contract::{LOG_RELAY, LOG_RELAY_LIMIT_BYTES};
use k8s_openapi::api::core::v1::Pod;
use relaying::*;

/// What a workload's log can hold: stdout and stderr lines, a line over the runtime's 16 KiB
/// (split in pieces on the node, joined by the kubelet), bytes that are not UTF-8 and a last
/// line without newline; first a line, then a pause, so that the relay is seen live (20 s: on
/// a busy machine a proxy's container on a real node took 9 s to start, and the relay's exec 5 s).
const EVERYTHING: &str = r#"echo first; sleep 20
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
    let script = "echo early; sleep 20; echo late";
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

#[tokio::test]
async fn nothing_is_lost_or_repeated_when_delegate_sync_is_killed_or_hands_over_mid_stream() {
    let (env, ns, _pieces) = scene("relay-kill", true).await;
    let scratch = Scratch::new("relay-kill");
    let mut sync = own_sync(env, &scratch, "delegate-sync.log", &[]);
    sync.start_ready().await;
    let delegate = create(&ns, &elected("steady", STEADY, &[])).await;
    wait_for_lines(&ns, "steady", &delegate, 40).await;
    sync.process.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Two replicas with leader election: the first holds the Lease and relays.
    let replica = |name: &str| {
        let lease = [
            "--leader-elect".to_string(),
            format!("--leader-election-namespace={}", ns.name),
            format!("--leader-election-identity={name}"),
        ];
        let args: Vec<&str> = lease.iter().map(String::as_str).collect();
        own_sync(env, &scratch, &format!("{name}.log"), &args)
    };
    let mut leader = replica("replica-a");
    leader.start_ready().await;
    wait_for_lines(&ns, "steady", &delegate, 100).await;
    let mut standby = replica("replica-b");
    standby.start_ready().await;
    wait_for_lines(&ns, "steady", &delegate, 140).await;
    // The leader stops (SIGTERM releases the Lease) mid-stream: the standby takes over.
    assert!(
        leader.process.stop(Duration::from_secs(10)),
        "stopped on SIGTERM"
    );
    let (relayed, original) = logs_at_the_end(&ns, "steady", &delegate).await;
    assert_eq!(numbered(&original), expected_lines());
    assert_same("steady", &relayed, &original);
}
