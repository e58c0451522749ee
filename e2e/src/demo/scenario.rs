//! The blog's scenarios as Kubernetes Jobs: their namespaces, the Jobs themselves, live
//! progress while they run, and the runs read back from the pods' (or delegates') status.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use k8s_openapi::{
    api::{
        batch::v1::Job,
        core::v1::{Event, Namespace, Pod, ServiceAccount},
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

use crate::{DEMO_LABEL, DEMO_LABEL_VALUE, Env, SOURCE, report::Run};

/// Label delegate-sync puts on every delegate (`delegate-sync/src/delegate.rs`).
const DELEGATE_LABEL: &str = "multicluster.admiralty.io/delegate";
/// Labels and annotations the Job controller puts on its pods.
const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// What every step runs (the blog's `sleep 10`, for real, on the test bed's real nodes, with a
/// line of log before and after, which the proxy's log shows), and what it requests.
const STEP_SCRIPT: &str = "echo \"step started in pod $(hostname) at $(date -u +%T)\"; sleep 10; echo \"step done at $(date -u +%T)\"";
const CPU_REQUEST: &str = "200m";

/// One Job of a scenario: `completions` pods at once, each a step.
pub struct JobSpec {
    pub name: &'static str,
    pub completions: i32,
    /// `multicluster.admiralty.io/clustername` on the pod template.
    pub pin: Option<&'static str>,
}

pub struct Scenario {
    /// File name stem of its SVG, e.g. `scenario-a-multi`.
    pub key: &'static str,
    pub title: &'static str,
    pub namespace: &'static str,
    /// Pod templates carry `multicluster.admiralty.io/elect` (and the namespace is labelled).
    pub elected: bool,
    /// Jobs of a phase run at once; a phase starts when the previous one completed.
    pub phases: Vec<Vec<JobSpec>>,
    /// What the blog measured, for comparison.
    pub blog: &'static str,
}

impl Scenario {
    fn jobs(&self) -> impl Iterator<Item = &JobSpec> {
        self.phases.iter().flatten()
    }
}

/// The three runs of the demo, in order.
pub fn scenarios() -> Vec<Scenario> {
    let ten = || {
        vec![vec![JobSpec {
            name: "sleep",
            completions: 10,
            pin: None,
        }]]
    };
    let one = |name, pin| JobSpec {
        name,
        completions: 1,
        pin,
    };
    vec![
        Scenario {
            key: "scenario-a-single",
            title: "Scenario A, single cluster",
            namespace: "demo-a-single",
            elected: false,
            phases: ten(),
            blog: "1 min 16 s, 4 waves",
        },
        Scenario {
            key: "scenario-a-multi",
            title: "Scenario A, multicluster",
            namespace: "demo-a-multi",
            elected: true,
            phases: ten(),
            blog: "31 s, 2 waves",
        },
        Scenario {
            key: "scenario-b",
            title: "Scenario B, multicluster DAG (B pinned to cluster2)",
            namespace: "demo-b",
            elected: true,
            phases: vec![
                vec![one("a", None), one("b", Some("cluster2"))],
                vec![one("c", None)],
            ],
            blog: "26 s",
        },
    ]
}

/// A scenario as it ran.
pub struct Outcome {
    pub runs: Vec<Run>,
    /// From the creation of its first Job until its last Job was seen complete.
    pub total: Duration,
}

fn job(spec: &JobSpec, elected: bool) -> anyhow::Result<Job> {
    let mut annotations: BTreeMap<String, &str> = BTreeMap::new();
    if elected {
        annotations.insert(contract::ELECT.into(), "");
    }
    if let Some(cluster) = spec.pin {
        annotations.insert(contract::CLUSTER_NAME.into(), cluster);
    }
    Ok(serde_json::from_value(json!({
        "metadata": { "name": spec.name, "labels": { DEMO_LABEL: DEMO_LABEL_VALUE } },
        "spec": {
            "parallelism": spec.completions,
            "completions": spec.completions,
            "completionMode": "Indexed",
            "backoffLimit": 0,
            "template": {
                "metadata": {
                    "labels": { DEMO_LABEL: DEMO_LABEL_VALUE },
                    "annotations": annotations,
                },
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{
                        "name": "main",
                        "image": e2e::nodes::BUSYBOX_IMAGE,
                        "command": ["sh", "-c", STEP_SCRIPT],
                        "resources": { "requests": { "cpu": CPU_REQUEST } },
                    }],
                    // The real nodes of the test bed (tainted so that only pods asking go there).
                    "nodeSelector": { e2e::nodes::KIND_LABEL: e2e::nodes::REAL },
                    "tolerations": [e2e::nodes::real_node_toleration()],
                },
            },
        },
    }))?)
}

/// Creates the scenario's namespace in the source cluster (labelled for the webhook when
/// elected) and, when elected, in every target, where the delegates go.
pub async fn create_namespace(env: &Env, scenario: &Scenario) -> anyhow::Result<()> {
    let clusters: Vec<&str> = if scenario.elected {
        env.clusters.iter().map(String::as_str).collect()
    } else {
        vec![SOURCE]
    };
    for cluster in clusters {
        let mut labels = BTreeMap::from([(DEMO_LABEL.to_string(), DEMO_LABEL_VALUE.to_string())]);
        if scenario.elected && cluster == SOURCE {
            labels.insert(
                contract::NAMESPACE_OPT_IN_LABEL.into(),
                contract::NAMESPACE_OPT_IN_VALUE.into(),
            );
        }
        let namespace: Namespace = serde_json::from_value(json!({
            "metadata": { "name": scenario.namespace, "labels": labels },
        }))?;
        let client = env.client(cluster)?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .with_context(|| {
                format!(
                    "cannot create namespace {} in {cluster}",
                    scenario.namespace
                )
            })?;
        // Pods are refused until the namespace's default ServiceAccount exists.
        let accounts: Api<ServiceAccount> = Api::namespaced(client, scenario.namespace);
        let deadline = Instant::now() + Duration::from_secs(30);
        while accounts.get_opt("default").await?.is_none() {
            if Instant::now() > deadline {
                bail!(
                    "{cluster}: namespace {} got no default ServiceAccount within 30 s \
                     (is kube-controller-manager running?)",
                    scenario.namespace
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Deletes every namespace labelled as the demo's in every cluster and waits until they are
/// gone. Proxies keep a finalizer that only delegate-sync releases: after `grace` (time for a
/// running delegate-sync to clean up after itself) the remaining pods' finalizers are removed.
/// Returns the namespaces deleted, as `cluster/namespace`.
pub async fn delete_namespaces(env: &Env, grace: Duration) -> anyhow::Result<Vec<String>> {
    let selector = format!("{DEMO_LABEL}={DEMO_LABEL_VALUE}");
    let mut pending: Vec<(String, String)> = Vec::new();
    for cluster in &env.clusters {
        let namespaces = Api::<Namespace>::all(env.client(cluster)?);
        let list = namespaces
            .list(&ListParams::default().labels(&selector))
            .await
            .with_context(|| format!("cannot list the demo's namespaces in {cluster}"))?;
        for ns in list.items {
            let Some(name) = ns.metadata.name else {
                continue;
            };
            match namespaces.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.is_not_found() => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot delete namespace {name} in {cluster}"));
                }
            }
            pending.push((cluster.clone(), name));
        }
    }
    let deleted: Vec<String> = pending.iter().map(|(c, n)| format!("{c}/{n}")).collect();
    let started = Instant::now();
    let unfinalize = Patch::Merge(json!({ "metadata": { "finalizers": null } }));
    while !pending.is_empty() {
        let mut still = Vec::new();
        for (cluster, name) in pending {
            let client = env.client(&cluster)?;
            if Api::<Namespace>::all(client.clone())
                .get_opt(&name)
                .await?
                .is_none()
            {
                continue;
            }
            if started.elapsed() > grace {
                let pods: Api<Pod> = Api::namespaced(client, &name);
                for pod in pods.list(&ListParams::default()).await?.items {
                    if let (Some(pod), Some(_)) = (pod.metadata.name, pod.metadata.finalizers) {
                        let _ = pods.patch(&pod, &PatchParams::default(), &unfinalize).await;
                    }
                }
            }
            still.push((cluster, name));
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        if started.elapsed() > grace + Duration::from_secs(60) {
            let names: Vec<String> = pending.iter().map(|(c, n)| format!("{c}/{n}")).collect();
            bail!(
                "namespaces still terminating after deletion: {}",
                names.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(deleted)
}

/// Runs the scenario: each phase's Jobs at once, the next phase when they all completed.
/// Prints progress while it runs; fails on a failed Job, after `timeout`, or as soon as
/// `alive` (called at every poll) fails.
pub async fn run(
    env: &Env,
    scenario: &Scenario,
    timeout: Duration,
    alive: &mut dyn FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Outcome> {
    let source = env.client(SOURCE)?;
    let jobs: Api<Job> = Api::namespaced(source.clone(), scenario.namespace);
    let started = Instant::now();
    let t0 = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("clock before 1970")?
        .as_secs();
    let t0 = i64::try_from(t0)?;
    let mut last_line = String::new();
    let mut expected = 0;
    for phase in &scenario.phases {
        for spec in phase {
            jobs.create(&PostParams::default(), &job(spec, scenario.elected)?)
                .await
                .with_context(|| {
                    format!("cannot create Job {} in {}", spec.name, scenario.namespace)
                })?;
            expected += spec.completions;
            let what = match spec.pin {
                Some(cluster) => format!(" (pinned to {cluster})"),
                None => String::new(),
            };
            println!(
                "  +{:5.1}s  created Job {}: {} pod(s) of {CPU_REQUEST} CPU running `sleep 10` between two log lines{what}",
                started.elapsed().as_secs_f64(),
                spec.name,
                spec.completions
            );
        }
        let mut waiting: Vec<&str> = phase.iter().map(|s| s.name).collect();
        while !waiting.is_empty() {
            alive().with_context(|| format!("{} cannot go on", scenario.title))?;
            if started.elapsed() > timeout {
                let why = diagnose(env, scenario).await;
                bail!(
                    "{}: Job(s) {} not complete within {timeout:?}\n{why}",
                    scenario.title,
                    waiting.join(", ")
                );
            }
            let mut still = Vec::new();
            for name in waiting {
                let job = jobs
                    .get(name)
                    .await
                    .with_context(|| format!("cannot read Job {name}"))?;
                match job_state(&job) {
                    JobState::Complete => println!(
                        "  +{:5.1}s  Job {name} complete",
                        started.elapsed().as_secs_f64()
                    ),
                    JobState::Failed(why) => {
                        let more = diagnose(env, scenario).await;
                        bail!("{}: Job {name} failed: {why}\n{more}", scenario.title);
                    }
                    JobState::Running => still.push(name),
                }
            }
            waiting = still;
            if waiting.is_empty() {
                break;
            }
            match progress(env, scenario, expected).await {
                Ok(line) if line != last_line => {
                    println!("  +{:5.1}s  {line}", started.elapsed().as_secs_f64());
                    last_line = line;
                }
                Ok(_) => {}
                Err(e) => println!("  (cannot read progress: {e:#})"),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let total = started.elapsed();
    let runs = collect(env, scenario, t0).await?;
    Ok(Outcome { runs, total })
}

enum JobState {
    Running,
    Complete,
    Failed(String),
}

fn job_state(job: &Job) -> JobState {
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    for c in conditions.iter().filter(|c| c.status == "True") {
        match c.type_.as_str() {
            "Complete" => return JobState::Complete,
            "Failed" => {
                return JobState::Failed(format!(
                    "{}: {}",
                    c.reason.as_deref().unwrap_or("Failed"),
                    c.message.as_deref().unwrap_or("")
                ));
            }
            _ => {}
        }
    }
    JobState::Running
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn has_label(pod: &Pod, key: &str) -> bool {
    pod.metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(key))
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// `running: cluster1 3, cluster2 4 | waiting 3 | finished 0/10`, counting the pods that do
/// the work (delegates when elected).
async fn progress(env: &Env, scenario: &Scenario, expected: i32) -> anyhow::Result<String> {
    let mut running: BTreeMap<&str, usize> = BTreeMap::new();
    let mut finished = 0;
    let clusters: Vec<&str> = if scenario.elected {
        env.clusters.iter().map(String::as_str).collect()
    } else {
        vec![SOURCE]
    };
    for cluster in clusters {
        let pods: Api<Pod> = Api::namespaced(env.client(cluster)?, scenario.namespace);
        for pod in pods.list(&ListParams::default()).await?.items {
            let worker = if scenario.elected {
                has_label(&pod, DELEGATE_LABEL)
            } else {
                has_label(&pod, JOB_NAME_LABEL)
            };
            if !worker {
                continue;
            }
            match phase(&pod) {
                "Running" => *running.entry(cluster).or_default() += 1,
                "Succeeded" | "Failed" => finished += 1,
                _ => {}
            }
        }
    }
    let expected = usize::try_from(expected).unwrap_or(0);
    let now_running: usize = running.values().sum();
    let per_cluster: Vec<String> = running
        .iter()
        .map(|(cluster, n)| format!("{cluster} {n}"))
        .collect();
    let per_cluster = if per_cluster.is_empty() {
        "none".to_string()
    } else {
        per_cluster.join(", ")
    };
    Ok(format!(
        "running: {per_cluster} | waiting {} | finished {finished}/{expected}",
        expected.saturating_sub(now_running + finished)
    ))
}

fn seconds(time: Option<&Time>) -> Option<i64> {
    time.map(|t| t.0.as_second())
}

/// The runs of a finished scenario, from the Job's pods in the source cluster and, for
/// proxies, from their delegates in the target cluster the proxy names.
async fn collect(env: &Env, scenario: &Scenario, t0: i64) -> anyhow::Result<Vec<Run>> {
    let pods: Api<Pod> = Api::namespaced(env.client(SOURCE)?, scenario.namespace);
    let list = pods
        .list(&ListParams::default().labels(JOB_NAME_LABEL))
        .await
        .context("cannot list the Jobs' pods")?;
    let mut runs = Vec::new();
    for pod in list.items {
        let job = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(JOB_NAME_LABEL))
            .cloned()
            .unwrap_or_default();
        let completions = scenario
            .jobs()
            .find(|j| j.name == job)
            .map_or(1, |j| j.completions);
        let step = match annotation(&pod, COMPLETION_INDEX) {
            Some(index) if completions > 1 => format!("{job}({index})"),
            _ => job.to_uppercase(),
        };
        runs.push(run_of(env, scenario.namespace, scenario.elected, step, &pod, t0).await?);
    }
    let expected: i32 = scenario.jobs().map(|j| j.completions).sum();
    if runs.len() != usize::try_from(expected).unwrap_or(0) {
        bail!(
            "{}: {} pods ran for {expected} steps (a retried pod?)",
            scenario.title,
            runs.len()
        );
    }
    runs.sort_by(|a, b| (a.start, &a.step).cmp(&(b.start, &b.step)));
    Ok(runs)
}

/// One step as it ran: the pod the workflow made in the source cluster and, for a proxy, its
/// delegate in the target cluster the proxy names (where the work ran).
pub async fn run_of(
    env: &Env,
    namespace: &str,
    elected: bool,
    step: String,
    pod: &Pod,
    t0: i64,
) -> anyhow::Result<Run> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let proxy = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(contract::PROXY_LABEL))
        .is_some_and(|v| v == "true");
    if elected && !proxy {
        bail!("{name} is not a proxy: the webhook did not mutate it");
    }
    let (cluster, worker) = if proxy {
        let cluster = annotation(pod, contract::TARGET_CLUSTER)
            .with_context(|| format!("proxy {name} has no target cluster"))?
            .to_string();
        let delegate = annotation(pod, contract::DELEGATE_NAME)
            .with_context(|| format!("proxy {name} names no delegate"))?;
        let delegates: Api<Pod> = Api::namespaced(env.client(&cluster)?, namespace);
        let worker = delegates
            .get(delegate)
            .await
            .with_context(|| format!("cannot read delegate {delegate} in {cluster}"))?;
        (cluster, worker)
    } else {
        (SOURCE.to_string(), pod.clone())
    };
    let status = worker.status.as_ref();
    let start = seconds(status.and_then(|s| s.start_time.as_ref()))
        .with_context(|| format!("{name}: its pod never started"))?;
    let end = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref())
        .filter_map(|t| seconds(t.finished_at.as_ref()))
        .max()
        .with_context(|| format!("{name}: its pod has no finished container"))?;
    let created = seconds(pod.metadata.creation_timestamp.as_ref()).unwrap_or(start);
    Ok(Run {
        step,
        pod: name,
        cluster,
        node: worker
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        created: created - t0,
        start: start - t0,
        end: end - t0,
    })
}

/// Why a scenario is stuck or failed: each unfinished pod of the source namespace with its
/// phase, placement, recorded result and unmet conditions, and the last Warning events.
async fn diagnose(env: &Env, scenario: &Scenario) -> String {
    let mut out = String::new();
    let Ok(client) = env.client(SOURCE) else {
        return out;
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), scenario.namespace);
    match pods.list(&ListParams::default()).await {
        Ok(list) => {
            for pod in list.items.iter().filter(|p| phase(p) != "Succeeded") {
                let conditions: Vec<String> = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .into_iter()
                    .flatten()
                    .filter(|c| c.status != "True")
                    .map(|c| {
                        format!(
                            "{}={} {}",
                            c.type_,
                            c.status,
                            c.message.as_deref().unwrap_or_default()
                        )
                    })
                    .collect();
                let kind = if has_label(pod, DELEGATE_LABEL) {
                    "delegate"
                } else if has_label(pod, contract::PROXY_LABEL) {
                    "proxy"
                } else {
                    "pod"
                };
                out.push_str(&format!(
                    "  {kind} {SOURCE}/{}: {}, target {}, result {}; {}\n",
                    pod.metadata.name.as_deref().unwrap_or_default(),
                    phase(pod),
                    annotation(pod, contract::TARGET_CLUSTER).unwrap_or("-"),
                    annotation(pod, contract::RESULT).unwrap_or("-"),
                    conditions.join("; ")
                ));
            }
        }
        Err(e) => out.push_str(&format!("  (cannot list pods: {e})\n")),
    }
    let events: Api<Event> = Api::namespaced(client, scenario.namespace);
    match events.list(&ListParams::default()).await {
        Ok(list) => {
            let mut warnings: Vec<Event> = list
                .items
                .into_iter()
                .filter(|e| e.type_.as_deref() == Some("Warning"))
                .collect();
            // events.k8s.io events (delegate-sync's) have an eventTime and no lastTimestamp.
            let when = |e: &Event| {
                e.last_timestamp
                    .as_ref()
                    .map(|t| t.0)
                    .or(e.event_time.as_ref().map(|t| t.0))
            };
            warnings.sort_by_key(when);
            for e in warnings.iter().rev().take(8).rev() {
                out.push_str(&format!(
                    "  event {} {}: {}\n",
                    e.involved_object.name.as_deref().unwrap_or_default(),
                    e.reason.as_deref().unwrap_or_default(),
                    e.message.as_deref().unwrap_or_default()
                ));
            }
        }
        Err(e) => out.push_str(&format!("  (cannot list events: {e})\n")),
    }
    out.push_str(&format!(
        "  logs: {}, {}",
        crate::shown(&env.work_dir.join("webhook.log")),
        crate::shown(&env.work_dir.join("delegate-sync.log"))
    ));
    out
}

/// The proxies of an elected scenario whose log is their delegate's, of those that have a
/// delegate: `kubectl logs` on a Job's pod shows the step's output.
pub async fn compare_logs(env: &Env, scenario: &Scenario) -> anyhow::Result<(usize, usize)> {
    let proxies: Api<Pod> = Api::namespaced(env.client(SOURCE)?, scenario.namespace);
    let listed = proxies
        .list(&ListParams::default().labels(&format!("{}=true", contract::PROXY_LABEL)))
        .await?;
    let (mut equal, mut compared) = (0, 0);
    for proxy in &listed.items {
        let annotations = proxy.metadata.annotations.clone().unwrap_or_default();
        let (Some(target), Some(delegate), Some(name)) = (
            annotations.get(contract::TARGET_CLUSTER),
            annotations.get(contract::DELEGATE_NAME),
            proxy.metadata.name.as_deref(),
        ) else {
            continue;
        };
        let delegates: Api<Pod> = Api::namespaced(env.client(target)?, scenario.namespace);
        let params = kube::api::LogParams {
            container: Some("main".into()),
            ..Default::default()
        };
        let relayed = proxies.logs(name, &params).await?;
        let written = delegates.logs(delegate, &params).await?;
        compared += 1;
        if relayed == written {
            equal += 1;
        } else {
            println!("  {name}: its log {relayed:?} is not its delegate's {written:?}");
        }
    }
    Ok((equal, compared))
}
