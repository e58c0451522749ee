//! What integration tests use: the test bed (shared, or private to the test process), a
//! client per cluster, unique namespaces that clean up after themselves, and waits.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::{
    Api, Client, Resource,
    api::{DeleteParams, ObjectMeta, PostParams},
    runtime::wait::{Condition, await_condition},
};
use serde::de::DeserializeOwned;
use tokio::sync::OnceCell;

use crate::testbed::{self, Testbed, TestbedConfig};

/// Label on every namespace a test creates, so leftovers are easy to find.
pub const TEST_NAMESPACE_LABEL: &str = "testbed.multicluster.admiralty.io/test";

/// The test bed as tests see it. Holds paths only, so it can be shared by the runtimes of
/// several `#[tokio::test]`s; clients are made per call.
#[derive(Debug)]
pub struct TestEnv {
    dir: PathBuf,
    clusters: Vec<String>,
    kubeconfig: PathBuf,
}

static ENV: OnceCell<TestEnv> = OnceCell::const_new();
static PRIVATE_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

impl TestEnv {
    /// The shared test bed (`make testbed-up`, or `$TESTBED_DIR`) when it is up; otherwise a
    /// private one for this test process, stopped when the process exits (set
    /// `TESTBED_CLUSTERS` to choose its size, default 2).
    pub async fn get() -> anyhow::Result<&'static TestEnv> {
        ENV.get_or_try_init(|| async {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let shared = testbed::default_dir();
            let testbed = match Testbed::attach(&shared) {
                Ok(testbed) if testbed.check().await.is_ok() => testbed,
                _ => start_private().await?,
            };
            Ok(TestEnv {
                dir: testbed.dir().to_path_buf(),
                clusters: testbed.cluster_names(),
                kubeconfig: testbed.kubeconfig_path(),
            })
        })
        .await
    }

    /// Cluster names, `cluster1`..`clusterN`.
    pub fn clusters(&self) -> &[String] {
        &self.clusters
    }

    /// The admin kubeconfig (a context per cluster).
    pub fn kubeconfig(&self) -> &PathBuf {
        &self.kubeconfig
    }

    /// The test bed itself, e.g. for ServiceAccount kubeconfigs.
    pub fn testbed(&self) -> anyhow::Result<Testbed> {
        Testbed::attach(&self.dir)
    }

    /// Fails, saying how to get them, unless every cluster has a real node (`make test`'s test
    /// bed has one per cluster).
    pub fn require_real_nodes(&self) -> anyhow::Result<()> {
        let testbed = self.testbed()?;
        for cluster in &self.clusters {
            anyhow::ensure!(
                !testbed.cluster(cluster)?.real_nodes.is_empty(),
                "{cluster} of the test bed in {} has no real node (`testbed up --real-nodes 1`)",
                self.dir.display()
            );
        }
        Ok(())
    }

    /// An admin client for `cluster`.
    pub async fn client(&self, cluster: &str) -> anyhow::Result<Client> {
        testbed::kubeconfig::client(&self.kubeconfig, cluster).await
    }

    /// A new namespace named `<prefix>-<unique suffix>` in every cluster, deleted when dropped.
    pub async fn namespace(&self, prefix: &str) -> anyhow::Result<TestNamespace> {
        self.namespace_with_labels(prefix, BTreeMap::new()).await
    }

    /// Like [`TestEnv::namespace`], with labels (e.g. the webhook's opt-in label).
    pub async fn namespace_with_labels(
        &self,
        prefix: &str,
        labels: BTreeMap<String, String>,
    ) -> anyhow::Result<TestNamespace> {
        let all: Vec<&str> = self.clusters.iter().map(String::as_str).collect();
        self.namespace_only_in(prefix, labels, &all).await
    }

    /// Like [`TestEnv::namespace_with_labels`], created in `clusters` only (the others may get
    /// it from the code under test); deleted from every cluster on drop.
    pub async fn namespace_only_in(
        &self,
        prefix: &str,
        mut labels: BTreeMap<String, String>,
        clusters: &[&str],
    ) -> anyhow::Result<TestNamespace> {
        labels.insert(TEST_NAMESPACE_LABEL.into(), "true".into());
        let ns = TestNamespace {
            name: unique_name(prefix),
            clusters: self.clusters.clone(),
            kubeconfig: self.kubeconfig.clone(),
        };
        for cluster in clusters {
            let client = self.client(cluster).await?;
            let namespace = Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.name.clone()),
                    labels: Some(labels.clone()),
                    ..Default::default()
                },
                ..Default::default()
            };
            Api::<Namespace>::all(client.clone())
                .create(&PostParams::default(), &namespace)
                .await
                .with_context(|| format!("cannot create namespace {} in {cluster}", ns.name))?;
            // Pods are refused until the namespace's default ServiceAccount exists.
            let accounts: Api<ServiceAccount> = Api::namespaced(client, &ns.name);
            wait_for(
                &accounts,
                "default",
                Duration::from_secs(30),
                |sa: Option<&ServiceAccount>| sa.is_some(),
            )
            .await
            .with_context(|| {
                format!(
                    "{cluster}: namespace {} got no default ServiceAccount",
                    ns.name
                )
            })?;
        }
        Ok(ns)
    }
}

/// Runs `work` to the end from a thread with a runtime of its own, for a `Drop` that cleans
/// up: a drop may run inside a test's runtime, which must not be blocked on.
pub fn clean_up_now<F, Fut>(work: F) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(work())
    })
    .join()
    .unwrap_or_else(|_| Err(anyhow::anyhow!("the clean-up thread panicked")))
}

/// A namespace that exists in every cluster for one test; deleted on drop, pass or fail,
/// unless `KEEP_TEST_NAMESPACES=1`.
#[derive(Debug)]
pub struct TestNamespace {
    pub name: String,
    clusters: Vec<String>,
    kubeconfig: PathBuf,
}

impl TestNamespace {
    /// A namespaced API for `cluster` in this namespace.
    pub async fn api<K>(&self, cluster: &str) -> anyhow::Result<Api<K>>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        let client = testbed::kubeconfig::client(&self.kubeconfig, cluster).await?;
        Ok(Api::namespaced(client, &self.name))
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::env::var_os("KEEP_TEST_NAMESPACES").is_some_and(|v| v == "1") {
            eprintln!("keeping namespace {} (KEEP_TEST_NAMESPACES=1)", self.name);
            return;
        }
        let (name, clusters, kubeconfig) = (
            self.name.clone(),
            self.clusters.clone(),
            self.kubeconfig.clone(),
        );
        let deleted = clean_up_now(async move || {
            for cluster in &clusters {
                let client = testbed::kubeconfig::client(&kubeconfig, cluster).await?;
                release_finalizers(&client, &name).await;
                match Api::<Namespace>::all(client)
                    .delete(&name, &DeleteParams::background())
                    .await
                {
                    Ok(_) | Err(kube::Error::Api(_)) => {}
                    Err(e) => return Err(anyhow::Error::from(e)),
                }
            }
            Ok(())
        });
        if let Err(e) = deleted {
            eprintln!(
                "warning: could not delete test namespace {}: {e:#}",
                self.name
            );
        }
    }
}

/// Proxy pods carry a finalizer that only delegate-sync releases; a test that ends without
/// one running must not leave its namespace stuck in Terminating.
async fn release_finalizers(client: &Client, namespace: &str) {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), namespace);
    let Ok(list) = pods.list(&Default::default()).await else {
        return;
    };
    let unfinalize =
        kube::api::Patch::Merge(serde_json::json!({ "metadata": { "finalizers": null } }));
    for pod in list.items {
        if let (Some(name), Some(_)) = (pod.metadata.name, pod.metadata.finalizers) {
            let _ = pods.patch(&name, &Default::default(), &unfinalize).await;
        }
    }
}

/// Waits until `condition` holds for the object `name` (or its absence), or fails after `timeout`
/// with the object's last state in the error.
pub async fn wait_for<K, C>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    condition: C,
) -> anyhow::Result<Option<K>>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    C: Condition<K>,
{
    match tokio::time::timeout(timeout, await_condition(api.clone(), name, condition)).await {
        Ok(result) => Ok(result?),
        Err(_) => {
            let last = api.get_opt(name).await.ok().flatten();
            anyhow::bail!("{name}: condition not met within {timeout:?}; last seen: {last:#?}")
        }
    }
}

/// `<prefix>-<pid>-<counter><time>`: unique across parallel test processes, ≤ 63 characters.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let prefix: String = prefix.chars().take(30).collect();
    format!("{prefix}-{}-{n}{:x}", std::process::id(), nanos % 0xfffff)
}

async fn start_private() -> anyhow::Result<Testbed> {
    let clusters = std::env::var("TESTBED_CLUSTERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let dir =
        testbed::workspace_target_dir().join(format!("testbed-private-{}", std::process::id()));
    eprintln!(
        "no shared test bed is up: starting a private one in {}",
        dir.display()
    );
    *PRIVATE_DIR.lock().unwrap_or_else(|e| e.into_inner()) = Some(dir.clone());
    // SAFETY: registers a plain `extern "C"` function that takes no arguments; it only runs
    // at process exit, when the test harness calls `exit`.
    unsafe {
        libc::atexit(stop_private);
    }
    let mut config = TestbedConfig::new(&dir, clusters)?;
    // As `make test`'s test bed: one real node per cluster (`TESTBED_REAL_NODES` to change).
    config.preset.real_nodes_per_cluster = std::env::var("TESTBED_REAL_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    Testbed::up(&config).await
}

extern "C" fn stop_private() {
    let dir = PRIVATE_DIR.lock().ok().and_then(|mut d| d.take());
    if let Some(dir) = dir
        && let Err(e) = Testbed::down(&dir)
    {
        eprintln!(
            "warning: could not stop the private test bed in {}: {e:#}",
            dir.display()
        );
    }
}
