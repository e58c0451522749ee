//! The blog's Argo workflows ([`e2e::argo::blog`]) on Argo's real workflow-controller
//! (v3.7.18, built by `make tools`) in the source cluster, their steps on the real nodes with
//! Argo's real executor.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use e2e::argo;

use crate::{
    Env, SOURCE,
    scenario::{self, Outcome, Scenario},
};

/// One workflow of the blog and the namespace it runs in.
pub struct ArgoScenario {
    pub scenario: Scenario,
    pub workflow: String,
}

/// The blog's scenario A on one cluster and on two, and scenario B, each step running 10 s.
pub fn scenarios() -> Vec<ArgoScenario> {
    let scenario = |key, namespace, title, elected, blog, workflow| ArgoScenario {
        scenario: Scenario {
            key,
            title,
            namespace,
            elected,
            phases: Vec::new(),
            blog,
        },
        workflow,
    };
    vec![
        scenario(
            "argo-a-single",
            "demo-argo-a-single",
            "Argo, scenario A, single cluster",
            false,
            "1 min 16 s, 4 waves",
            argo::blog::scenario_a(false, argo::blog::Steps::OnRealNodes),
        ),
        scenario(
            "argo-a-multi",
            "demo-argo-a-multi",
            "Argo, scenario A, multicluster",
            true,
            "31 s, 2 waves",
            argo::blog::scenario_a(true, argo::blog::Steps::OnRealNodes),
        ),
        scenario(
            "argo-b",
            "demo-argo-b",
            "Argo, scenario B, multicluster DAG (B pinned to cluster2)",
            true,
            "26 s",
            argo::blog::scenario_b(argo::blog::Steps::OnRealNodes),
        ),
    ]
}

/// Installs Argo in the source cluster (the task-result CRD in the targets) and starts its
/// controller, or finds it running.
pub async fn start(env: &Env) -> anyhow::Result<()> {
    let testbed = e2e::Testbed::attach(&env.testbed_dir)?;
    let targets: Vec<&str> = env
        .clusters
        .iter()
        .map(String::as_str)
        .filter(|c| *c != SOURCE)
        .collect();
    argo::install(&testbed, SOURCE, &targets).await?;
    let controller = argo::start(&testbed, SOURCE).await?;
    println!(
        "  workflow-controller {} in {SOURCE} (pid {}, log {}); WorkflowTaskResult CRD in {}",
        argo::VERSION,
        controller.pid,
        crate::shown(&controller.log),
        targets.join(", ")
    );
    Ok(())
}

/// Gives the namespace's `default` ServiceAccount what Argo's executor needs, in every cluster
/// the scenario's step pods or delegates run in.
pub async fn grant_executor(env: &Env, scenario: &Scenario) -> anyhow::Result<()> {
    let clusters: Vec<&str> = if scenario.elected {
        env.clusters.iter().map(String::as_str).collect()
    } else {
        vec![SOURCE]
    };
    for cluster in clusters {
        argo::grant_executor(&env.client(cluster)?, scenario.namespace, "default").await?;
    }
    Ok(())
}

/// Submits the workflow, shows its progress, and reads back where and when each step ran.
pub async fn run(
    env: &Env,
    s: &ArgoScenario,
    timeout: Duration,
    alive: &mut dyn FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Outcome> {
    let client = env.client(SOURCE)?;
    let namespace = s.scenario.namespace;
    let t0 = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .context("clock before 1970")?
            .as_secs(),
    )?;
    let started = Instant::now();
    let name = argo::submit_yaml(&client, namespace, &s.workflow).await?;
    println!("  +  0.0s  submitted Workflow {name}");
    let mut last = String::new();
    let status = loop {
        alive().with_context(|| format!("{} cannot go on", s.scenario.title))?;
        let status = argo::status(&client, namespace, &name).await?;
        let line = progress(&status);
        if line != last {
            println!("  +{:5.1}s  {line}", started.elapsed().as_secs_f64());
            last = line;
        }
        if status.finished() {
            break status;
        }
        if started.elapsed() > timeout {
            bail!(
                "{}: not finished after {} s: {}",
                s.scenario.title,
                timeout.as_secs(),
                status.message
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let total = started.elapsed();
    if status.phase != "Succeeded" {
        bail!(
            "{}: Workflow {name} {}: {}",
            s.scenario.title,
            status.phase,
            status.message
        );
    }
    let mut runs = Vec::new();
    for pod in argo::pods(&client, namespace, &name).await? {
        let step = argo::step_name(&pod).unwrap_or_default().to_string();
        // Only the elected steps must have become proxies (scenario B elects B alone).
        let elected = pod
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(contract::ELECT));
        runs.push(scenario::run_of(env, namespace, elected, step, &pod, t0).await?);
    }
    runs.sort_by(|a, b| (a.start, &a.step).cmp(&(b.start, &b.step)));
    Ok(Outcome { runs, total })
}

/// The workflow's phase and its step pods by phase, e.g. `Running: 7 Running, 3 Pending`.
fn progress(status: &argo::WorkflowStatus) -> String {
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for node in status.nodes.values().filter(|n| n.type_ == "Pod") {
        *counts.entry(node.phase.as_str()).or_default() += 1;
    }
    let steps: Vec<String> = counts.iter().map(|(p, n)| format!("{n} {p}")).collect();
    let phase = if status.phase.is_empty() {
        "Pending"
    } else {
        &status.phase
    };
    format!(
        "{phase}: steps {}",
        if steps.is_empty() {
            "none yet".into()
        } else {
            steps.join(", ")
        }
    )
}
