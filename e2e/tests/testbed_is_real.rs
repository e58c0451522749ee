//! The test bed runs real control planes: real kubectl output, the real Job controller, the
//! kwok lifecycle our stages define.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use e2e::{TestEnv, lifecycle, support::wait_for, testbed::workspace_target_dir};
use k8s_openapi::api::{batch::v1::Job, core::v1::Pod};
use kube::api::PostParams;
use serde_json::json;

fn kubectl() -> std::path::PathBuf {
    workspace_target_dir().join("tools/bin/kubectl")
}

#[tokio::test]
async fn kubectl_sees_the_preset_nodes_ready_in_cluster2() -> anyhow::Result<()> {
    let env = TestEnv::get().await?;
    let out = Command::new(kubectl())
        .arg("--kubeconfig")
        .arg(env.kubeconfig())
        .args(["--context", "cluster2", "get", "nodes", "--no-headers"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout)?;
    let ready: Vec<&str> = stdout
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("Ready"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut expected = vec!["cluster2-kwok1", "cluster2-kwok2", "cluster2-kwok3"];
    let testbed = env.testbed()?;
    let real: Vec<&str> = testbed
        .cluster("cluster2")?
        .real_nodes
        .iter()
        .map(|n| n.name.as_str())
        .collect();
    expected.extend(real);
    assert_eq!(ready, expected, "{stdout}");
    Ok(())
}

#[tokio::test]
async fn job_whose_pod_exits_3_is_failed_by_the_job_controller() -> anyhow::Result<()> {
    let env = TestEnv::get().await?;
    let ns = env.namespace("job-exit").await?;
    let jobs = ns.api::<Job>("cluster1").await?;
    let job: Job = serde_json::from_value(json!({
        "metadata": { "name": "exit3" },
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": { "annotations": {
                    lifecycle::RUN_FOR: "1s",
                    lifecycle::exit_code_of("main"): "3",
                    lifecycle::message_of("main"): "disk full",
                }},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{ "name": "main", "image": "busybox" }, { "name": "side", "image": "busybox" }],
                },
            },
        },
    }))?;
    jobs.create(&PostParams::default(), &job).await?;
    let failed = |job: Option<&Job>| {
        job.and_then(|j| j.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Failed" && c.status == "True"))
    };
    let job = wait_for(&jobs, "exit3", Duration::from_secs(60), failed)
        .await?
        .unwrap();
    assert_eq!(job.status.as_ref().and_then(|s| s.failed), Some(1));

    let pods = ns.api::<Pod>("cluster1").await?;
    let pod = pods.list(&Default::default()).await?.items.remove(0);
    let status = pod.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    let terminated = |name: &str| {
        status
            .container_statuses
            .iter()
            .flatten()
            .find(|c| c.name == name)
            .and_then(|c| c.state.as_ref()?.terminated.clone())
            .unwrap()
    };
    assert_eq!(terminated("main").exit_code, 3);
    assert_eq!(terminated("main").message.as_deref(), Some("disk full"));
    assert_eq!(terminated("side").exit_code, 0);
    Ok(())
}

#[tokio::test]
async fn pod_asking_for_10s_runs_about_10s() -> anyhow::Result<()> {
    let env = TestEnv::get().await?;
    let ns = env.namespace("run-for").await?;
    let pods = ns.api::<Pod>("cluster2").await?;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "sleeper", "annotations": { lifecycle::RUN_FOR: "10s" } },
        "spec": { "restartPolicy": "Never", "containers": [{ "name": "main", "image": "busybox" }] },
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let phase_is = |phase: &'static str| {
        move |p: Option<&Pod>| p.and_then(|p| p.status.as_ref()?.phase.as_deref()) == Some(phase)
    };
    wait_for(
        &pods,
        "sleeper",
        Duration::from_secs(30),
        phase_is("Running"),
    )
    .await?;
    let running_seen = Instant::now();
    wait_for(
        &pods,
        "sleeper",
        Duration::from_secs(30),
        phase_is("Succeeded"),
    )
    .await?;
    let observed = running_seen.elapsed();
    assert!(
        (Duration::from_secs(9)..Duration::from_secs(13)).contains(&observed),
        "ran for {observed:?}"
    );
    Ok(())
}

#[tokio::test]
async fn proxy_pods_end_from_the_recorded_result_and_jobs_judge_them() -> anyhow::Result<()> {
    let env = TestEnv::get().await?;
    let ns = env.namespace("proxy-stage").await?;
    let jobs = ns.api::<Job>("cluster1").await?;
    let job: Job = serde_json::from_value(json!({
        "metadata": { "name": "proxied" },
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": { "labels": { contract::PROXY_LABEL: "true" } },
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{ "name": "main", "image": "proxy-waiter" }, { "name": "wait", "image": "proxy-waiter" }],
                },
            },
        },
    }))?;
    jobs.create(&PostParams::default(), &job).await?;
    let pods = ns.api::<Pod>("cluster1").await?;
    let running =
        |p: Option<&Pod>| p.and_then(|p| p.status.as_ref()?.phase.as_deref()) == Some("Running");
    let name = loop {
        if let Some(pod) = pods
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .next()
        {
            break pod.metadata.name.unwrap_or_default();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    wait_for(&pods, &name, Duration::from_secs(30), running).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        running(pods.get_opt(&name).await?.as_ref()),
        "a proxy without a result keeps running"
    );

    let result = r#"{"v":1,"phase":"Failed","containers":{"main":{"exitCode":3,"message":"disk full"},"wait":{"exitCode":0}}}"#;
    let patch = json!({ "metadata": { "annotations": { contract::RESULT: result } } });
    pods.patch(&name, &Default::default(), &kube::api::Patch::Merge(patch))
        .await?;
    let failed =
        |p: Option<&Pod>| p.and_then(|p| p.status.as_ref()?.phase.as_deref()) == Some("Failed");
    let pod = wait_for(&pods, &name, Duration::from_secs(30), failed)
        .await?
        .unwrap();
    let statuses = pod.status.unwrap().container_statuses.unwrap();
    let terminated = |n: &str| {
        statuses
            .iter()
            .find(|c| c.name == n)
            .and_then(|c| c.state.as_ref()?.terminated.clone())
            .unwrap()
    };
    assert_eq!(terminated("main").exit_code, 3);
    assert_eq!(terminated("main").message.as_deref(), Some("disk full"));
    assert_eq!(terminated("wait").exit_code, 0);
    let job_failed = |j: Option<&Job>| {
        j.and_then(|j| j.status.as_ref()?.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Failed" && c.status == "True"))
    };
    wait_for(&jobs, "proxied", Duration::from_secs(30), job_failed).await?;
    Ok(())
}
