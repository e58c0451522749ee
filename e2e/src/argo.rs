//! Argo Workflows on the test bed: the real workflow-controller (v3.7.18, built by
//! `e2e/tools/build.sh argo` into `target/tools/bin/`), its CRDs and RBAC, and what tests need
//! to drive it: submit a Workflow, wait for its end, stop or terminate it as the `argo` CLI
//! does, and play the executor's `wait` container (task results), since kwok runs no
//! containers.
//!
//! One controller per test bed cluster, shared by every test and test process: [`start`] finds
//! a running one again (a process record named [`PROCESS_NAME`] in the test bed's
//! `state.json`) or starts one, under a file lock. `testbed down` stops it like any other
//! component of the bed. It runs as Argo's own ServiceAccount `argo` with the RBAC of Argo's
//! manifests (`e2e/testbed/argo/rbac.yaml`), so it has no more rights than a real install.

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    os::unix::{fs::OpenOptionsExt as _, io::AsRawFd as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use k8s_openapi::{
    api::core::v1::Pod,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, ResourceExt as _,
    api::{
        ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
        PostParams,
    },
    discovery::{self, Scope},
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    support::{unique_name, wait_for},
    testbed::{TOOLS_BIN_ENV, Testbed, process, workspace_target_dir},
};

/// The Argo Workflows release the test bed builds (`e2e/tools/argo/go.mod`) and that tests
/// and the demo run unless they say otherwise ([`Release::V3_7`]).
pub const VERSION: &str = "v3.7.18";
/// Namespace of the controller, its ConfigMap and its ServiceAccount.
pub const NAMESPACE: &str = "argo";
/// Name of the controller's record among its cluster's processes in `state.json`.
pub const PROCESS_NAME: &str = "workflow-controller";
/// The only CRD a cluster that runs delegates (and not Argo) needs: the executor of a step pod
/// writes its outputs there.
pub const TASK_RESULT_CRD_FILE: &str = "argoproj.io_workflowtaskresults.yaml";

pub use contract::argo::{
    INSTANCE_ID_LABEL, NODE_ID as ANNOTATION_NODE_ID, NODE_NAME as ANNOTATION_NODE_NAME,
    OUTPUTS_COMPLETED_LABEL as LABEL_REPORT_OUTPUTS_COMPLETED, WORKFLOW_LABEL as LABEL_WORKFLOW,
};

/// An Argo release the test bed builds and runs: 3.7, and 4.0 beside it in the same cluster (a
/// test fixture: `e2e/tools/argo4/go.mod`). Argo 4's controller has an instance ID and takes only
/// the Workflows labelled with it ([`Release::claim`]); 3.7's takes only unlabelled ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    V3_7,
    V4_0,
}

impl Release {
    pub const ALL: [Release; 2] = [Release::V3_7, Release::V4_0];

    pub fn version(self) -> &'static str {
        match self {
            Self::V3_7 => VERSION,
            Self::V4_0 => "v4.0.5",
        }
    }

    /// Suffix of its files in the tools directory (`workflow-controller4`, `argo4-examples`).
    fn suffix(self) -> &'static str {
        match self {
            Self::V3_7 => "",
            Self::V4_0 => "4",
        }
    }

    /// Namespace of its controller, ConfigMap and ServiceAccount.
    pub fn namespace(self) -> &'static str {
        match self {
            Self::V3_7 => NAMESPACE,
            Self::V4_0 => "argo4",
        }
    }

    /// The executor image its controller names in step pods: on real nodes, the argoexec
    /// `make tools` builds (`make node-images` imports it; never pulled); kwok runs no
    /// containers.
    pub fn executor_image(self) -> String {
        format!("quay.io/argoproj/argoexec:{}", self.version())
    }

    /// Name of its controller's record among its cluster's processes in `state.json`.
    pub fn process_name(self) -> String {
        format!("{PROCESS_NAME}{}", self.suffix())
    }

    fn instance_id(self) -> Option<&'static str> {
        match self {
            Self::V3_7 => None,
            Self::V4_0 => Some("argo4"),
        }
    }

    /// Makes a Workflow (JSON) this release's: its controller's instance ID as a label.
    pub fn claim(self, workflow: &mut Value) {
        if let Some(id) = self.instance_id() {
            workflow["metadata"]["labels"][INSTANCE_ID_LABEL] = json!(id);
        }
    }
}

const FIELD_MANAGER: &str = "e2e-argo";
const RBAC_YAML: &str = include_str!("../testbed/argo/rbac.yaml");
const CONFIGMAP: &str = "workflow-controller-configmap";
const SERVICE_ACCOUNT: &str = "argo";
/// Lifetime of the controller's ServiceAccount token: longer than any test bed lives.
const TOKEN_TTL: Duration = Duration::from_secs(30 * 86_400);
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Where the controller binary and the CRDs are.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// `workflow-controller`.
    pub controller: PathBuf,
    /// Directory of Argo's minimal CRDs (`argoproj.io_*.yaml`).
    pub crds: PathBuf,
    /// Directory of the example workflows of the same release (`examples/*.yaml`).
    pub examples: PathBuf,
}

/// The controller and CRDs in `$TESTBED_TOOLS_BIN`, else in `target/tools/bin` of the
/// workspace; a clear error says how to build them when missing.
pub fn binaries() -> anyhow::Result<Binaries> {
    binaries_of(Release::V3_7)
}

/// Like [`binaries`], of `release`. The CRDs are always 3.7's: both releases' minimal CRDs
/// differ only in descriptions, and one cluster holds one set.
pub fn binaries_of(release: Release) -> anyhow::Result<Binaries> {
    let dir = std::env::var_os(TOOLS_BIN_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_target_dir().join("tools/bin"));
    let suffix = release.suffix();
    let found = Binaries {
        controller: dir.join(format!("{PROCESS_NAME}{suffix}")),
        crds: dir.join("argo-crds"),
        examples: dir.join(format!("argo{suffix}-examples")),
    };
    if !found.controller.is_file() || !found.crds.join(TASK_RESULT_CRD_FILE).is_file() {
        bail!(
            "Argo {}'s workflow-controller or CRDs not found in {} (run `make tools` or \
             `e2e/tools/build.sh argo argo4`; `make test` builds them)",
            release.version(),
            dir.display()
        );
    }
    Ok(found)
}

/// True when the controller and its CRDs are built.
pub fn available() -> bool {
    binaries().is_ok()
}

/// Installs Argo in `cluster` (every CRD, namespace `argo`, the controller's ConfigMap, its
/// ServiceAccount and RBAC) and only the WorkflowTaskResult CRD in each of `targets`. Server-side
/// apply, so it is idempotent and safe to run from parallel tests; waits until the CRDs are
/// established.
pub async fn install(testbed: &Testbed, cluster: &str, targets: &[&str]) -> anyhow::Result<()> {
    install_release(testbed, cluster, targets, Release::V3_7).await
}

/// Like [`install`], for `release` (its own namespace, ConfigMap and ServiceAccount).
pub async fn install_release(
    testbed: &Testbed,
    cluster: &str,
    targets: &[&str],
    release: Release,
) -> anyhow::Result<()> {
    let binaries = binaries_of(release)?;
    let namespace = release.namespace();
    let client = testbed.client(cluster).await?;
    let mut crd_files: Vec<PathBuf> = fs::read_dir(&binaries.crds)
        .with_context(|| format!("cannot read {}", binaries.crds.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    crd_files.sort();
    let mut crds = Vec::new();
    for file in &crd_files {
        crds.extend(apply_file(&client, file).await?);
    }
    let mut data = json!({
        "metricsConfig": "{enabled: false}",
        "executor": "{resources: {requests: {cpu: 100m}}}",
        "images": format!("{{\"{}\": {{cmd: [sh]}}}}", crate::nodes::BUSYBOX_IMAGE),
        "instanceID": release.instance_id().unwrap_or_default(),
    });
    if testbed.artifact_store().is_some() {
        data["artifactRepository"] = json!(artifact_repository());
    }
    let namespace_and_config = json!([
        { "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": namespace } },
        {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": CONFIGMAP, "namespace": namespace },
            // Metrics would listen on the fixed port 9090 of every interface and panic when
            // another test bed's controller holds it. A one-line value must be flow-style YAML.
            // The wait container requests 100m CPU, as in the blog's clusters. `images` gives
            // the entrypoint of the real nodes' busybox, which the controller would otherwise
            // ask a registry for when a step names no command.
            "data": data,
        },
    ]);
    for doc in namespace_and_config.as_array().into_iter().flatten() {
        apply(&client, doc)
            .await
            .with_context(|| format!("{cluster}: cannot install Argo"))?;
    }
    for doc in rbac(release)? {
        apply(&client, &doc)
            .await
            .with_context(|| format!("{cluster}: cannot install Argo's RBAC"))?;
    }
    wait_established(&client, cluster, &crds).await?;

    let task_result_crd = binaries.crds.join(TASK_RESULT_CRD_FILE);
    for target in targets.iter().filter(|t| **t != cluster) {
        let client = testbed.client(target).await?;
        let names = apply_file(&client, &task_result_crd)
            .await
            .with_context(|| format!("{target}: cannot install the WorkflowTaskResult CRD"))?;
        wait_established(&client, target, &names).await?;
    }
    Ok(())
}

/// Argo's RBAC for `release`'s controller: in its namespace, with a ClusterRoleBinding of its
/// own (the ClusterRole is the same for both releases: their manifests do not differ).
fn rbac(release: Release) -> anyhow::Result<Vec<Value>> {
    let namespace = release.namespace();
    let mut docs = Vec::new();
    for text in RBAC_YAML.split("\n---\n") {
        let mut doc: Value = serde_saphyr::from_str(text).context("Argo's RBAC YAML")?;
        if doc.pointer("/metadata/namespace").is_some() {
            doc["metadata"]["namespace"] = json!(namespace);
        }
        for subject in doc
            .get_mut("subjects")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            subject["namespace"] = json!(namespace);
        }
        if doc["kind"] == "ClusterRoleBinding" {
            doc["metadata"]["name"] = json!(format!("argo{}-binding", release.suffix()));
        }
        docs.push(doc);
    }
    Ok(docs)
}

async fn apply_file(client: &Client, file: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    apply_yaml(client, &text)
        .await
        .with_context(|| format!("cannot apply {}", file.display()))
}

/// Server-side applies every document of `yaml`; returns their names.
async fn apply_yaml(client: &Client, yaml: &str) -> anyhow::Result<Vec<String>> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).context("invalid YAML")?;
    let mut names = Vec::new();
    for doc in docs.iter().filter(|d| !d.is_null()) {
        names.push(apply(client, doc).await?);
    }
    Ok(names)
}

/// Server-side applies one object of any kind the apiserver serves; returns its name.
async fn apply(client: &Client, doc: &Value) -> anyhow::Result<String> {
    let field = |f: &str| doc.pointer(f).and_then(Value::as_str).unwrap_or_default();
    let (api_version, kind, name) = (
        field("/apiVersion"),
        field("/kind"),
        field("/metadata/name"),
    );
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (resource, capabilities) = discovery::pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("the apiserver does not serve {api_version} {kind}"))?;
    let api: Api<DynamicObject> = match capabilities.scope {
        Scope::Namespaced => {
            Api::namespaced_with(client.clone(), field("/metadata/namespace"), &resource)
        }
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(doc),
    )
    .await
    .with_context(|| format!("cannot apply {kind} {name}"))?;
    Ok(name.to_string())
}

async fn wait_established(client: &Client, cluster: &str, crds: &[String]) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in crds {
        wait_for(
            &api,
            name,
            Duration::from_secs(30),
            kube::runtime::conditions::is_crd_established(),
        )
        .await
        .with_context(|| format!("{cluster}: CRD {name} not established"))?;
    }
    Ok(())
}

/// The workflow-controller of one test bed cluster. Dropping it leaves the controller running
/// for later tests; `testbed down` (or [`stop_controller`]) stops it.
#[derive(Debug)]
pub struct Controller {
    pub cluster: String,
    /// Pid of its supervisor, the recorded process (see [`start`]).
    pub pid: i32,
    /// Its log, `<test bed>/<cluster>/argo/workflow-controller.log`.
    pub log: PathBuf,
    /// False when an already running controller was found.
    pub started: bool,
    pub release: Release,
}

impl Controller {
    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

/// Starts the workflow-controller of `cluster` (after [`install`]), or finds the one that
/// runs already, and waits until it is ready: a probe Workflow in namespace `argo` got a
/// status from it.
///
/// The recorded process is a small `sh` supervisor (in its own process group, like the other
/// components) that runs the controller, restarts it if it exits, and stops it on SIGTERM, so
/// `testbed down` stops it with the rest of the bed. It also stops the controller within a
/// second when the file `<test bed>/<cluster>/argo/generation` no longer holds its generation
/// (the bed was removed or replaced, or its record was lost), so no controller outlives its
/// test bed. Logs go to `<test bed>/<cluster>/argo/workflow-controller.log`.
///
/// The controller runs with leader election disabled (one per cluster), a requeue time of
/// 1 s, metrics disabled, the executor image [`Release::executor_image`], and a kubeconfig of the
/// ServiceAccount `argo/argo`. Its health endpoint takes the fixed port 6060 of every
/// interface; when another controller holds it, it only logs that.
pub async fn start(testbed: &Testbed, cluster: &str) -> anyhow::Result<Controller> {
    start_release(testbed, cluster, Release::V3_7).await
}

/// Like [`start`], the controller of `release` (files in `<cluster>/argo<suffix>/`).
pub async fn start_release(
    testbed: &Testbed,
    cluster: &str,
    release: Release,
) -> anyhow::Result<Controller> {
    let binaries = binaries_of(release)?;
    let process_name = release.process_name();
    let dir = controller_dir(testbed, cluster, release)?;
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let _lock = FileLock::acquire(&dir.join("lock")).await?;
    let log = dir.join("workflow-controller.log");
    let generation_file = dir.join("generation");

    // Another test (process) may have started it since `testbed` was read.
    let fresh = Testbed::attach(testbed.dir())?;
    let running = fresh
        .cluster(cluster)?
        .processes
        .iter()
        .find(|p| p.name == process_name && p.is_running())
        .map(|p| p.pid)
        .filter(|_| generation_file.exists());
    let controller = match running {
        Some(pid) => Controller {
            cluster: cluster.to_string(),
            pid,
            log,
            started: false,
            release,
        },
        None => {
            let kubeconfig = dir.join("kubeconfig");
            let text = testbed
                .service_account_kubeconfig(
                    cluster,
                    release.namespace(),
                    SERVICE_ACCOUNT,
                    TOKEN_TTL,
                )
                .await
                .with_context(|| format!("{cluster}: is Argo installed (argo::install)?"))?;
            write_private(&kubeconfig, text.as_bytes())?;
            let generation = format!("{}-{}", std::process::id(), now_nanos());
            certs::write_atomically(&generation_file, generation.as_bytes())?;
            let pid = spawn_supervised(
                &binaries.controller,
                release,
                &kubeconfig,
                &generation_file,
                &generation,
                &log,
            )?;
            record(testbed.dir(), cluster, &process_name, pid, &log)?;
            Controller {
                cluster: cluster.to_string(),
                pid,
                log,
                started: true,
                release,
            }
        }
    };
    wait_ready(testbed, &controller).await?;
    Ok(controller)
}

/// Stops the workflow-controller of `cluster` if one runs, and removes its record.
pub async fn stop_controller(testbed: &Testbed, cluster: &str) -> anyhow::Result<()> {
    stop_release(testbed, cluster, Release::V3_7).await
}

/// Like [`stop_controller`], the controller of `release`.
pub async fn stop_release(
    testbed: &Testbed,
    cluster: &str,
    release: Release,
) -> anyhow::Result<()> {
    let process_name = release.process_name();
    let dir = controller_dir(testbed, cluster, release)?;
    if !dir.exists() {
        return Ok(());
    }
    let _lock = FileLock::acquire(&dir.join("lock")).await?;
    // Without its generation the supervisor stops the controller even if its record is lost.
    let _ = fs::remove_file(dir.join("generation"));
    let fresh = Testbed::attach(testbed.dir())?;
    if let Some(p) = fresh
        .cluster(cluster)?
        .processes
        .iter()
        .find(|p| p.name == process_name && p.is_running())
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p.pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while p.is_running() {
            if Instant::now() > deadline {
                bail!("{cluster}: {process_name} (pid {}) did not stop", p.pid);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    update_records(testbed.dir(), cluster, &process_name, |_| {})
}

/// Where the controller of `release` keeps its files: `<test bed>/<cluster>/argo<suffix>/`.
fn controller_dir(testbed: &Testbed, cluster: &str, release: Release) -> anyhow::Result<PathBuf> {
    Ok(testbed
        .cluster(cluster)?
        .dir
        .join(format!("argo{}", release.suffix())))
}

/// The supervisor: `$1` generation file, `$2` generation, then the controller's command line.
const SUPERVISOR: &str = r#"
gen_file=$1 gen=$2; shift 2
child=
stop() { if [ -n "$child" ]; then kill "$child" 2>/dev/null; wait "$child"; fi; exit 0; }
trap stop TERM INT HUP
while [ "$(cat "$gen_file" 2>/dev/null)" = "$gen" ]; do
  if [ -z "$child" ] || ! kill -0 "$child" 2>/dev/null; then
    if [ -n "$child" ]; then wait "$child"; echo "supervisor: workflow-controller exited ($?); starting it again"; fi
    "$@" &
    child=$!
  fi
  sleep 1
done
echo "supervisor: $gen_file no longer holds $gen (test bed down or replaced); stopping"
stop
"#;

fn spawn_supervised(
    program: &Path,
    release: Release,
    kubeconfig: &Path,
    generation_file: &Path,
    generation: &str,
    log: &Path,
) -> anyhow::Result<i32> {
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let err = out.try_clone()?;
    let child = Command::new("sh")
        .arg("-c")
        .arg(SUPERVISOR)
        .arg("workflow-controller-supervisor")
        .arg(generation_file)
        .arg(generation)
        .arg(program)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--namespace={}", release.namespace()))
        .arg("--namespaced=false")
        .arg(format!("--executor-image={}", release.executor_image()))
        .env("LEADER_ELECTION_DISABLE", "true")
        .env("DEFAULT_REQUEUE_TIME", "1s")
        // Nothing may leave this machine. The controller asks an image's registry for its
        // entrypoint when a step gives no command and the image is not in the ConfigMap's
        // `images`: that request now fails at once against a closed loopback port, without a
        // DNS lookup. Loopback (its apiserver) is never proxied.
        .env("HTTPS_PROXY", "http://127.0.0.1:1")
        .env("HTTP_PROXY", "http://127.0.0.1:1")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    i32::try_from(child.id()).context("pid out of range")
}

/// Adds (or replaces) the controller's record among its cluster's processes in `state.json`,
/// so `testbed down` stops it with the rest of the bed.
fn record(dir: &Path, cluster: &str, name: &str, pid: i32, log: &Path) -> anyhow::Result<()> {
    let start_ticks =
        process::start_ticks(pid).context("the workflow-controller exited at once")?;
    update_records(dir, cluster, name, |processes| {
        processes.push(json!({
            "name": name, "pid": pid, "log": log, "start_ticks": start_ticks,
        }));
    })
}

/// Removes the controller's record of `cluster` from `state.json`, then lets `add` add one.
fn update_records(
    dir: &Path,
    cluster: &str,
    name: &str,
    add: impl FnOnce(&mut Vec<Value>),
) -> anyhow::Result<()> {
    let path = dir.join("state.json");
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut state: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is corrupt", path.display()))?;
    let processes = state
        .get_mut("clusters")
        .and_then(Value::as_array_mut)
        .and_then(|clusters| {
            clusters
                .iter_mut()
                .find(|c| c.get("name").and_then(Value::as_str) == Some(cluster))
        })
        .and_then(|c| c.get_mut("processes"))
        .and_then(Value::as_array_mut)
        .with_context(|| format!("no processes of {cluster} in {}", path.display()))?;
    processes.retain(|p| p.get("name").and_then(Value::as_str) != Some(name));
    add(processes);
    certs::write_atomically(&path, serde_json::to_string_pretty(&state)?.as_bytes())?;
    Ok(())
}

/// Waits until the controller gives a probe Workflow (one suspended step: no pod) a status.
async fn wait_ready(testbed: &Testbed, controller: &Controller) -> anyhow::Result<()> {
    let client = testbed.client(&controller.cluster).await?;
    let mut probe = json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": { "name": unique_name("ready") },
        "spec": { "entrypoint": "wait", "templates": [{ "name": "wait", "suspend": {} }] },
    });
    controller.release.claim(&mut probe);
    let namespace = controller.release.namespace();
    let name = submit(&client, namespace, &probe).await?;
    let api = workflows(&client, namespace);
    let process_name = controller.release.process_name();
    let deadline = Instant::now() + READY_TIMEOUT;
    let result = loop {
        let fresh = Testbed::attach(testbed.dir())?;
        let alive = fresh
            .cluster(&controller.cluster)?
            .processes
            .iter()
            .any(|p| p.name == process_name && p.pid == controller.pid && p.is_running());
        if !alive {
            break Err(anyhow::anyhow!(
                "{}: the workflow-controller exited; last lines of {}:\n{}",
                controller.cluster,
                controller.log.display(),
                controller.log_tail(20)
            ));
        }
        if let Some(wf) = api.get_opt(&name).await?
            && phase_of(&wf).is_some()
        {
            break Ok(());
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!(
                "{}: the workflow-controller gave no status to a Workflow within {READY_TIMEOUT:?}; \
                 last lines of {}:\n{}",
                controller.cluster,
                controller.log.display(),
                controller.log_tail(20)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = api.delete(&name, &DeleteParams::background()).await;
    result
}

/// Argo's Workflow (argoproj.io/v1alpha1).
pub fn workflow_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Workflow"),
        "workflows",
    )
}

/// Argo's WorkflowTaskResult (argoproj.io/v1alpha1).
pub fn task_result_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("argoproj.io", "v1alpha1", "WorkflowTaskResult"),
        "workflowtaskresults",
    )
}

/// The Workflows of a namespace.
pub fn workflows(client: &Client, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, &workflow_resource())
}

/// The WorkflowTaskResults of a namespace.
pub fn task_results(client: &Client, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, &task_result_resource())
}

/// Creates a Workflow (`metadata.name` or `generateName`; apiVersion and kind may be left out)
/// and returns its name.
pub async fn submit(client: &Client, namespace: &str, workflow: &Value) -> anyhow::Result<String> {
    let mut workflow = workflow.clone();
    let object = workflow
        .as_object_mut()
        .context("a Workflow must be a JSON object")?;
    object.insert("apiVersion".into(), "argoproj.io/v1alpha1".into());
    object.insert("kind".into(), "Workflow".into());
    let object: DynamicObject = serde_json::from_value(workflow)?;
    let created = workflows(client, namespace)
        .create(&PostParams::default(), &object)
        .await
        .with_context(|| format!("cannot submit a Workflow in {namespace}"))?;
    Ok(created.name_any())
}

/// Like [`submit`], from YAML.
pub async fn submit_yaml(client: &Client, namespace: &str, yaml: &str) -> anyhow::Result<String> {
    let workflow: Value = serde_saphyr::from_str(yaml).context("invalid Workflow YAML")?;
    submit(client, namespace, &workflow).await
}

/// What tests read of a Workflow's status.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowStatus {
    /// Pending, Running, Succeeded, Failed or Error; empty until the controller saw it.
    #[serde(default)]
    pub phase: String,
    #[serde(default)]
    pub message: String,
    /// By node ID.
    #[serde(default)]
    pub nodes: BTreeMap<String, NodeStatus>,
    /// The whole status, for what the fields above leave out.
    #[serde(skip)]
    pub raw: Value,
}

/// One node of a Workflow.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    #[serde(default)]
    pub id: String,
    /// e.g. `wf[0].a`.
    #[serde(default)]
    pub name: String,
    /// e.g. `a`.
    #[serde(default)]
    pub display_name: String,
    /// Pod, Steps, StepGroup, DAG, Suspend…
    #[serde(default, rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub phase: String,
    #[serde(default)]
    pub message: String,
    /// `{parameters: [{name, value}], exitCode, result, artifacts}` as Argo records them.
    #[serde(default)]
    pub outputs: Option<Value>,
}

impl WorkflowStatus {
    /// Ended: Succeeded, Failed or Error.
    pub fn finished(&self) -> bool {
        matches!(self.phase.as_str(), "Succeeded" | "Failed" | "Error")
    }

    /// The node with this display name (a step's name), if any.
    pub fn node(&self, display_name: &str) -> Option<&NodeStatus> {
        self.nodes.values().find(|n| n.display_name == display_name)
    }
}

impl NodeStatus {
    /// The value of an output parameter.
    pub fn output_parameter(&self, name: &str) -> Option<&str> {
        self.outputs
            .as_ref()?
            .get("parameters")?
            .as_array()?
            .iter()
            .find(|p| p.get("name").and_then(Value::as_str) == Some(name))?
            .get("value")?
            .as_str()
    }
}

fn phase_of(workflow: &DynamicObject) -> Option<&str> {
    workflow
        .data
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
}

fn status_of(workflow: &DynamicObject) -> anyhow::Result<WorkflowStatus> {
    let raw = workflow.data.get("status").cloned().unwrap_or(Value::Null);
    let mut status: WorkflowStatus = if raw.is_null() {
        WorkflowStatus::default()
    } else {
        serde_json::from_value(raw.clone()).context("unexpected Workflow status")?
    };
    status.raw = raw;
    Ok(status)
}

/// The status of a Workflow now.
pub async fn status(
    client: &Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<WorkflowStatus> {
    let workflow = workflows(client, namespace)
        .get(name)
        .await
        .with_context(|| format!("no Workflow {namespace}/{name}"))?;
    status_of(&workflow)
}

/// Waits until `done` holds for the status of a Workflow; fails after `timeout` with the last
/// status seen.
pub async fn wait_status(
    client: &Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
    done: impl Fn(&WorkflowStatus) -> bool,
) -> anyhow::Result<WorkflowStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        let status = status(client, namespace, name).await?;
        if done(&status) {
            return Ok(status);
        }
        if Instant::now() > deadline {
            bail!(
                "Workflow {namespace}/{name}: not the case within {timeout:?}; last status: {:#}",
                status.raw
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until a Workflow ended (Succeeded, Failed or Error) and returns its status.
pub async fn wait_finished(
    client: &Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<WorkflowStatus> {
    wait_status(client, namespace, name, timeout, WorkflowStatus::finished).await
}

/// `argo stop`: the controller runs exit handlers, then fails the Workflow.
pub async fn stop(client: &Client, namespace: &str, name: &str) -> anyhow::Result<()> {
    shutdown(client, namespace, name, "Stop").await
}

/// `argo terminate`: the controller fails the Workflow without running exit handlers.
pub async fn terminate(client: &Client, namespace: &str, name: &str) -> anyhow::Result<()> {
    shutdown(client, namespace, name, "Terminate").await
}

/// Resumes a suspended Workflow as `argo resume` does: marks its running Suspend nodes
/// Succeeded and clears `spec.suspend`.
pub async fn resume(client: &Client, namespace: &str, name: &str) -> anyhow::Result<()> {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let current = status(client, namespace, name).await?;
    let resumed: serde_json::Map<String, Value> = current
        .nodes
        .iter()
        .filter(|(_, n)| n.type_ == "Suspend" && n.phase == "Running")
        .map(|(id, _)| {
            (
                id.clone(),
                json!({ "phase": "Succeeded", "finishedAt": now }),
            )
        })
        .collect();
    workflows(client, namespace)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "suspend": null }, "status": { "nodes": resumed } })),
        )
        .await
        .with_context(|| format!("cannot resume {namespace}/{name}"))?;
    Ok(())
}

/// What `argo stop` / `argo terminate` do (`patchShutdownStrategy` in
/// `workflow/util/util.go`): refuse a completed Workflow, else a JSON merge patch of
/// `spec.shutdown`, retried on conflicts and transient errors (the CLI adds user-action labels
/// only when it knows the user's claims, which a kubeconfig does not give).
async fn shutdown(
    client: &Client,
    namespace: &str,
    name: &str,
    strategy: &str,
) -> anyhow::Result<()> {
    let api = workflows(client, namespace);
    let patch = Patch::Merge(json!({ "spec": { "shutdown": strategy } }));
    let mut attempt = 0;
    loop {
        attempt += 1;
        let status = status(client, namespace, name).await?;
        if status.finished() {
            bail!(
                "cannot shutdown a completed workflow: workflow: {name:?}, namespace: {namespace:?}"
            );
        }
        match api.patch(name, &PatchParams::default(), &patch).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if attempt < 5 && (s.code == 409 || s.code >= 500) => {
                tokio::time::sleep(Duration::from_millis(10 << attempt)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot {strategy} {name}")),
        }
    }
}

/// What a Pod node of a Workflow ended with, as its user reads it: the fields that must be the
/// same whether the step ran in its own cluster or through a proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepOutcome {
    pub phase: String,
    pub message: String,
    pub exit_code: Option<String>,
    pub result: Option<String>,
    /// Output parameters, by name.
    pub parameters: BTreeMap<String, String>,
    /// Output artifacts, by name: where each was stored, with the workflow's name and pod
    /// names' hashes left out (`s3:{workflow}/{workflow}-hello-world-to-file-#/hello-art.tgz`).
    pub artifacts: BTreeMap<String, String>,
}

impl WorkflowStatus {
    /// The outcome of every node of the Workflow named `workflow`, by its name in the workflow
    /// (`[0].hello1`, `.onExit`, `(0)`…: the node's name less the workflow's), so that two runs
    /// of one workflow compare.
    /// Node IDs in messages (`child 'wf-1234' failed`) become such names too.
    pub fn step_outcomes(&self, workflow: &str) -> BTreeMap<String, StepOutcome> {
        let relative = |n: &NodeStatus| {
            let name = n.name.strip_prefix(workflow).unwrap_or(&n.name);
            format!("{name} ({})", n.type_)
        };
        // Longest first: the workflow's own node ID is a prefix of every other.
        let mut ids: Vec<(&String, String)> = self
            .nodes
            .iter()
            .map(|(id, n)| (id, format!("'{}'", relative(n))))
            .collect();
        ids.sort_by_key(|(id, _)| std::cmp::Reverse(id.len()));
        self.nodes
            .values()
            .map(|n| {
                let mut outcome = n.outcome(workflow);
                for (id, name) in &ids {
                    outcome.message = outcome.message.replace(&format!("'{id}'"), name);
                }
                (relative(n), outcome)
            })
            .collect()
    }
}

impl NodeStatus {
    fn outcome(&self, workflow: &str) -> StepOutcome {
        let outputs = self.outputs.clone().unwrap_or(Value::Null);
        let text = |key: &str| outputs.get(key).and_then(Value::as_str).map(str::to_string);
        let parameters = outputs
            .get("parameters")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p.get("name")?.as_str()?.to_string(),
                    p.get("value")?.as_str()?.to_string(),
                ))
            })
            .collect();
        let artifacts = outputs
            .get("artifacts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|a| {
                Some((
                    a.get("name")?.as_str()?.to_string(),
                    artifact_place(a, workflow),
                ))
            })
            .collect();
        StepOutcome {
            phase: self.phase.clone(),
            message: self.message.clone(),
            exit_code: text("exitCode"),
            result: text("result"),
            parameters,
            artifacts,
        }
    }
}

/// Where an output artifact went, the same for two runs of one workflow: its kind (`s3`) and
/// key, with the workflow's name as `{workflow}` and the hash that ends a pod's name as `#`.
fn artifact_place(artifact: &Value, workflow: &str) -> String {
    const KINDS: [&str; 3] = ["s3", "raw", "http"];
    let Some(kind) = KINDS.iter().find(|k| artifact.get(**k).is_some()) else {
        return "(nowhere)".into();
    };
    let key = artifact[*kind]["key"].as_str().unwrap_or_default();
    let key = key
        .replace(workflow, "{workflow}")
        .split('/')
        .map(|segment| match segment.rsplit_once('-') {
            Some((pod, hash))
                if segment.starts_with("{workflow}-")
                    && !hash.is_empty()
                    && hash.bytes().all(|b| b.is_ascii_digit()) =>
            {
                format!("{pod}-#")
            }
            _ => segment.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/");
    format!("{kind}:{key}")
}

/// Puts every step of a Workflow (JSON) on the test bed's real nodes: their node selector and
/// the toleration of their taint, at the workflow's level.
pub fn on_real_nodes(workflow: &mut Value) {
    let spec = &mut workflow["spec"];
    spec["nodeSelector"] = json!({ crate::nodes::KIND_LABEL: crate::nodes::REAL });
    spec["tolerations"] = json!([crate::nodes::real_node_toleration()]);
}

/// Elects every step of a Workflow (JSON) through `spec.podMetadata`, pinned to `cluster`.
pub fn elect_every_step(workflow: &mut Value, cluster: &str) {
    workflow["spec"]["podMetadata"]["annotations"] = json!({
        contract::ELECT: "",
        contract::CLUSTER_NAME: cluster,
    });
}

/// Gives `service_account` of `namespace` what Argo's emissary executor needs (Argo's
/// recommended `executor` Role: create and patch WorkflowTaskResults), in a cluster where step
/// pods or their delegates run.
pub async fn grant_executor(
    client: &Client,
    namespace: &str,
    service_account: &str,
) -> anyhow::Result<()> {
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": { "name": "argo-executor", "namespace": namespace },
        "rules": [{
            "apiGroups": ["argoproj.io"],
            "resources": ["workflowtaskresults"],
            "verbs": ["create", "patch"],
        }],
    });
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": { "name": format!("argo-executor-{service_account}"), "namespace": namespace },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "argo-executor" },
        "subjects": [{ "kind": "ServiceAccount", "name": service_account, "namespace": namespace }],
    });
    for doc in [role, binding] {
        apply(client, &doc)
            .await
            .with_context(|| format!("cannot grant the executor its rights in {namespace}"))?;
    }
    Ok(())
}

/// The Secret of the artifact repository's credentials and CA, in every namespace whose
/// workflows use artifacts.
pub const ARTIFACT_SECRET: &str = "artifact-store";

/// The controllers' default artifact repository (flow-style YAML for their ConfigMap): the
/// test bed's artifact store, over TLS checked against its CA, with the keys of
/// [`ARTIFACT_SECRET`]. Argo mounts that Secret into the `init` and `wait` containers of the
/// steps that have artifacts, so a proxied step's delegate needs a copy of it in its target
/// (delegate-sync's `--copy-references`).
pub fn artifact_repository() -> String {
    use crate::testbed::artifact_store::{BUCKET, ENDPOINT};
    format!(
        "{{s3: {{bucket: {BUCKET}, endpoint: \"{ENDPOINT}\", insecure: false, \
         caSecret: {{name: {ARTIFACT_SECRET}, key: ca.crt}}, \
         accessKeySecret: {{name: {ARTIFACT_SECRET}, key: accessKey}}, \
         secretKeySecret: {{name: {ARTIFACT_SECRET}, key: secretKey}}}}}}"
    )
}

/// Creates [`ARTIFACT_SECRET`] in `namespace`: the test bed's artifact store's CA, and keys
/// (the store checks none).
pub async fn put_artifact_secret(
    client: &Client,
    namespace: &str,
    store: &crate::testbed::ArtifactStoreState,
) -> anyhow::Result<()> {
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": ARTIFACT_SECRET, "namespace": namespace },
        "stringData": {
            "accessKey": "testbed",
            "secretKey": "testbed-secret",
            "ca.crt": store.ca_pem()?,
        },
    });
    apply(client, &secret)
        .await
        .with_context(|| format!("cannot create Secret {namespace}/{ARTIFACT_SECRET}"))?;
    Ok(())
}

/// The step pods of a Workflow (label `workflows.argoproj.io/workflow`).
pub async fn pods(client: &Client, namespace: &str, workflow: &str) -> anyhow::Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    Ok(pods
        .list(&ListParams::default().labels(&format!("{LABEL_WORKFLOW}={workflow}")))
        .await?
        .items)
}

/// The step a pod runs, from its node name: `a` for `wf[0].a`, `sleep(3:3)` for
/// `wf[0].sleep(3:3)`, `A` for `wf.A` (the workflow's name for a one-step workflow).
pub fn step_name(pod: &Pod) -> Option<&str> {
    pod.annotations()
        .get(ANNOTATION_NODE_NAME)?
        .rsplit('.')
        .next()
}

/// The first step pod of `workflow` that `pick` accepts, once there is one; after `timeout`,
/// an error with the workflow's status.
pub async fn wait_for_pod(
    client: &Client,
    namespace: &str,
    workflow: &str,
    timeout: Duration,
    pick: impl Fn(&Pod) -> bool,
) -> anyhow::Result<Pod> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(pod) = pods(client, namespace, workflow)
            .await?
            .into_iter()
            .find(|p| pick(p))
        {
            return Ok(pod);
        }
        if Instant::now() > deadline {
            let status = status(client, namespace, workflow).await?;
            bail!(
                "no such pod of {workflow} after {timeout:?}: {:#}",
                status.raw
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The pod of `workflow` that runs `step` (see [`step_name`]), once it exists.
pub async fn wait_for_step_pod(
    client: &Client,
    namespace: &str,
    workflow: &str,
    step: &str,
    timeout: Duration,
) -> anyhow::Result<Pod> {
    wait_for_pod(client, namespace, workflow, timeout, |p| {
        step_name(p) == Some(step)
    })
    .await
}

/// Plays the executor of one step pod (Argo's `wait` container, `workflow/executor/` of the
/// release), writing the task result in the cluster and namespace of `client`: the
/// WorkflowTaskResult named after the node, labelled with its Workflow and "outputs not yet
/// complete", owned by the Workflow.
#[derive(Debug)]
pub struct Executor {
    api: Api<DynamicObject>,
    node_id: String,
    workflow_name: String,
    workflow_uid: String,
    /// As the executor's `taskResultCreated`: whether its create succeeded (or found one).
    created: bool,
}

impl Executor {
    pub fn new(
        client: &Client,
        namespace: &str,
        node_id: &str,
        workflow_name: &str,
        workflow_uid: &str,
    ) -> Self {
        Self {
            api: task_results(client, namespace),
            node_id: node_id.to_string(),
            workflow_name: workflow_name.to_string(),
            workflow_uid: workflow_uid.to_string(),
            created: false,
        }
    }

    /// `InitializeOutput`, as the `wait` container starts: an empty result, incomplete.
    pub async fn initialize_output(&mut self) -> anyhow::Result<()> {
        self.upsert(json!({})).await
    }

    /// `ReportOutputs`, once the main container ended: the template's outputs with their
    /// values, e.g. `{"parameters": [{"name": "x", "value": "7", "valueFrom": {"path": "/tmp/x"}}]}`.
    pub async fn report_outputs(&mut self, outputs: Value) -> anyhow::Result<()> {
        self.upsert(json!({ "outputs": outputs })).await
    }

    /// `FinalizeOutput`, last: the result is labelled complete.
    pub async fn finalize_output(&self) -> anyhow::Result<()> {
        // What `json.Marshal(WorkflowTaskResult{ObjectMeta: {Labels: …}})` sends.
        let patch = json!({ "metadata": {
            "labels": { LABEL_REPORT_OUTPUTS_COMPLETED: "true" },
            "creationTimestamp": null,
        }});
        self.api
            .patch(
                &self.node_id,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .with_context(|| format!("cannot finalize task result {}", self.node_id))?;
        Ok(())
    }

    /// `upsertTaskResult` with a NodeResult (`phase`, `message`, `outputs`, `progress`, each
    /// left out when empty): create, or on AlreadyExists a merge patch of the result alone
    /// (labels and owner references untouched); once created, patch, or create on NotFound.
    pub async fn upsert(&mut self, node_result: Value) -> anyhow::Result<()> {
        let result = if !self.created {
            match self.create(&node_result).await {
                Err(kube::Error::Api(s)) if s.is_already_exists() => self.patch(node_result).await,
                other => other.map(drop),
            }
        } else {
            match self.patch(node_result.clone()).await {
                Err(kube::Error::Api(s)) if s.is_not_found() => {
                    self.create(&node_result).await.map(drop)
                }
                other => other,
            }
        };
        result.with_context(|| format!("cannot write task result {}", self.node_id))
    }

    async fn create(&mut self, node_result: &Value) -> Result<DynamicObject, kube::Error> {
        let mut object = json!({
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "WorkflowTaskResult",
            "metadata": {
                "name": self.node_id,
                "labels": {
                    LABEL_WORKFLOW: self.workflow_name,
                    LABEL_REPORT_OUTPUTS_COMPLETED: "false",
                },
                "ownerReferences": [{
                    "apiVersion": "argoproj.io/v1alpha1",
                    "kind": "Workflow",
                    "name": self.workflow_name,
                    "uid": self.workflow_uid,
                }],
            },
        });
        if let (Some(object), Some(result)) = (object.as_object_mut(), node_result.as_object()) {
            object.extend(result.clone());
        }
        let object: DynamicObject =
            serde_json::from_value(object).map_err(kube::Error::SerdeError)?;
        let result = self.api.create(&PostParams::default(), &object).await;
        self.created = match &result {
            Ok(_) => true,
            Err(kube::Error::Api(s)) => s.is_already_exists(),
            Err(_) => false,
        };
        result
    }

    async fn patch(&self, node_result: Value) -> Result<(), kube::Error> {
        // What `json.Marshal(WorkflowTaskResult{NodeResult: result})` sends.
        let mut patch = json!({ "metadata": { "creationTimestamp": null } });
        if let (Some(patch), Value::Object(result)) = (patch.as_object_mut(), node_result) {
            patch.extend(result);
        }
        self.api
            .patch(
                &self.node_id,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        Ok(())
    }
}

/// Does in the cluster of `client` what Argo's `wait` container does for a step that produced
/// `outputs`: [`Executor::initialize_output`], [`Executor::report_outputs`],
/// [`Executor::finalize_output`].
pub async fn play_executor(
    client: &Client,
    namespace: &str,
    node_id: &str,
    workflow_name: &str,
    workflow_uid: &str,
    outputs: Value,
) -> anyhow::Result<()> {
    let mut executor = Executor::new(client, namespace, node_id, workflow_name, workflow_uid);
    executor.initialize_output().await?;
    executor.report_outputs(outputs).await?;
    executor.finalize_output().await
}

/// An exclusive `flock` on a file, across threads and processes; released on drop.
struct FileLock {
    _file: fs::File,
}

impl FileLock {
    async fn acquire(path: &Path) -> anyhow::Result<Self> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            // SAFETY: flock on a descriptor that `file` owns and keeps open.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Self { _file: file });
            }
            if Instant::now() > deadline {
                bail!("{} stayed locked for 5 minutes", path.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents)?;
    Ok(())
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The blog's workflows (`../shared/seed/`), as its posts submitted them apart from where the
/// steps run ([`Steps`]) and a quoted `"10"` (Argo 3.7 refuses a number in `command`; the posts
/// ran Argo 2.x).
pub mod blog {
    use crate::{lifecycle::RUN_FOR, nodes};

    /// Where a workflow's steps run.
    #[derive(Clone, Copy, Debug)]
    pub enum Steps<'a> {
        /// On kwok's fake nodes, each ending after `run_for` (the test bed's annotation standing
        /// for `sleep 10`); tests play Argo's executor there.
        OnFakeNodes { run_for: &'a str },
        /// On the test bed's real nodes: `sleep 10` runs, with Argo's real executor.
        OnRealNodes,
    }

    impl Steps<'_> {
        /// The image of the blog's `busybox`: one the real nodes have (`busybox` is `latest`,
        /// which Kubernetes always pulls).
        fn image(self) -> &'static str {
            match self {
                Self::OnFakeNodes { .. } => "busybox",
                Self::OnRealNodes => nodes::BUSYBOX_IMAGE,
            }
        }

        /// Workflow `spec` lines that put every step where it runs.
        fn placement(self) -> String {
            match self {
                Self::OnFakeNodes { .. } => String::new(),
                Self::OnRealNodes => format!(
                    "  nodeSelector:\n    {kind}: {real}\n  tolerations:\n  - {{key: {kind}, operator: Equal, value: {real}, effect: NoSchedule}}\n",
                    kind = nodes::KIND_LABEL,
                    real = nodes::REAL
                ),
            }
        }

        /// Step annotation lines (each followed by `indent`) for the fake nodes' run time.
        fn annotations(self, indent: &str) -> String {
            match self {
                Self::OnFakeNodes { run_for } => format!("{RUN_FOR}: {run_for}\n{indent}"),
                Self::OnRealNodes => String::new(),
            }
        }
    }

    /// The value of an `annotations:` key whose lines (each followed by its indent) are `lines`:
    /// `{}` when there are none.
    fn annotations_value(lines: &str) -> String {
        if lines.is_empty() {
            "{}".into()
        } else {
            format!("\n        {lines}")
        }
    }

    /// Scenario A: ten parallel steps of 100m (plus Argo's 100m wait container), elected or not.
    pub fn scenario_a(multicluster: bool, steps: Steps<'_>) -> String {
        let (prefix, elect) = if multicluster {
            (
                "multicluster",
                "multicluster.admiralty.io/elect: \"\"\n        ",
            )
        } else {
            ("singlecluster", "")
        };
        let (image, placement) = (steps.image(), steps.placement());
        let annotations = annotations_value(&format!("{elect}{}", steps.annotations("        ")));
        format!(
            r#"
metadata:
  generateName: {prefix}-parallel-
spec:
  entrypoint: {prefix}-parallel
{placement}  templates:
  - name: {prefix}-parallel
    steps:
    - - name: sleep
        template: sleep
        withItems: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
  - name: sleep
    container:
      image: {image}
      command: [sleep, "10"]
      resources:
        requests:
          cpu: 100m # Note: Argo sidecar adds another 100m
    metadata:
      annotations: {annotations}
"#
        )
    }

    /// Scenario B: a DAG where B must run in cluster2 and C runs after A and B.
    pub fn scenario_b(steps: Steps<'_>) -> String {
        let (image, placement) = (steps.image(), steps.placement());
        let run_for = steps.annotations("        ");
        let annotations = annotations_value(&run_for);
        format!(
            r#"
metadata:
  generateName: multicluster-dag-
spec:
  entrypoint: multicluster-dag
{placement}  templates:
  - name: multicluster-dag
    dag:
      tasks:
      - name: A
        template: sleep
      - name: B
        template: sleep-remote
        arguments:
          parameters:
          - name: clustername
            value: cluster2 # change me
      - name: C
        dependencies: [A, B]
        template: sleep
  - name: sleep
    container:
      image: {image}
      command: [sleep, "10"]
    metadata:
      annotations: {annotations}
  - name: sleep-remote
    inputs:
      parameters:
      - name: clustername
    container:
      image: {image}
      command: [sleep, "10"]
    metadata:
      annotations:
        multicluster.admiralty.io/elect: ""
        multicluster.admiralty.io/clustername: "{{{{inputs.parameters.clustername}}}}"
        {run_for}
"#
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_artifact_is_placed_alike_in_two_runs_of_a_workflow() {
        let artifact = |wf: &str, hash: &str| json!({ "name": "hello-art", "s3": { "key": format!("{wf}/{wf}-hello-world-to-file-{hash}/hello-art.tgz") } });
        let a = artifact_place(
            &artifact("artifact-passing-abcde", "123"),
            "artifact-passing-abcde",
        );
        let b = artifact_place(
            &artifact("artifact-passing-xyz12", "98765"),
            "artifact-passing-xyz12",
        );
        assert_eq!(
            a,
            "s3:{workflow}/{workflow}-hello-world-to-file-#/hello-art.tgz"
        );
        assert_eq!(a, b);
        let fixed = json!({ "name": "file", "s3": { "key": "my-file" } });
        assert_eq!(artifact_place(&fixed, "wf"), "s3:my-file");
        assert_eq!(artifact_place(&json!({ "name": "x" }), "wf"), "(nowhere)");
    }

    #[test]
    fn the_blog_workflows_parse_with_their_steps_where_asked() {
        use blog::{Steps, scenario_a, scenario_b};
        for steps in [Steps::OnFakeNodes { run_for: "3s" }, Steps::OnRealNodes] {
            for (yaml, elected) in [
                (scenario_a(false, steps), false),
                (scenario_a(true, steps), true),
                (scenario_b(steps), true),
            ] {
                let workflow: Value = serde_saphyr::from_str(&yaml).unwrap();
                let sleep = workflow["spec"]["templates"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|t| t["name"] == "sleep")
                    .unwrap();
                let annotations = sleep["metadata"]["annotations"].as_object().unwrap();
                let real = matches!(steps, Steps::OnRealNodes);
                assert_eq!(
                    annotations.contains_key(crate::lifecycle::RUN_FOR),
                    !real,
                    "{yaml}"
                );
                assert_eq!(
                    workflow["spec"]["nodeSelector"][crate::nodes::KIND_LABEL]
                        == crate::nodes::REAL,
                    real,
                    "{yaml}"
                );
                let elects = yaml.contains("multicluster.admiralty.io/elect");
                assert_eq!(elects, elected, "{yaml}");
            }
        }
    }

    /// The controller names the executor image by these versions, and `make node-images` tags
    /// the image it imports by the tools modules' versions: they must agree, or step pods wait
    /// for an image nothing can pull.
    #[test]
    fn each_release_is_the_version_its_tools_module_builds() {
        for (release, go_mod, module) in [
            (
                Release::V3_7,
                include_str!("../tools/argo/go.mod"),
                "github.com/argoproj/argo-workflows/v3",
            ),
            (
                Release::V4_0,
                include_str!("../tools/argo4/go.mod"),
                "github.com/argoproj/argo-workflows/v4",
            ),
        ] {
            let required = go_mod
                .lines()
                .find_map(|l| l.trim().strip_prefix("require ")?.strip_prefix(module))
                .map(str::trim);
            assert_eq!(required, Some(release.version()), "{release:?}");
        }
    }
}
