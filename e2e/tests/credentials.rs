//! Target credentials that change under a running delegate-sync (a real process): cluster2 is
//! bootstrapped by `certs bootstrap-target` with short-lived tokens, and its kubeconfig is
//! handed to delegate-sync as a Secret volume hands it over (a `..data` link swapped at each
//! update). In turn: tokens are renewed on schedule; a rotation in the middle of a burst of
//! 200 proxies loses nothing and fails no call; deleting the requester's token Secret stops
//! access at once (`TargetUnauthorized` on the affected proxies) and a new credential recovers
//! them; a kubeconfig that does not load keeps the old credentials (Warning Event, metric);
//! and a rotation back to a long-lived token is picked up the same way.
//!
//! A second test has a real kubelet hand a rotated long-lived kubeconfig over, and measures how
//! long that takes.
//!
//! The tests take turns ([`ONE_AT_A_TIME`]): every delegate-sync watches the proxies of all
//! namespaces, so two at once would handle each other's.

mod common;

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use certs::bootstrap::{self, Options, Report};
use common::{Process, Scratch, free_port, http_get, metric_sum, proxy, workspace_binary};
use contract::DELEGATE_NAME;
use e2e::{TestEnv, support::TestNamespace};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::{
    authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec},
    core::v1::{Event, Pod, Secret},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, PostParams},
    config::Kubeconfig,
};

const KEY: &[u8] = b"credentials-test-manifest-key-0123456789";
const ACCOUNT: &str = "delegate-sync-creds";
/// Renewed every 16 s.
const LIFETIME: Duration = Duration::from_secs(20);
/// delegate-sync's pod as its Warning Events name it (POD_NAME, POD_NAMESPACE).
const OWN_POD: &str = "delegate-sync-under-test";
const BURST: usize = 200;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A directory laid out as the kubelet lays out a Secret volume: `kubeconfig` links to
/// `..data/kubeconfig`, and `..data` links to a directory of the current content, swapped by
/// an atomic rename at each update.
struct Mount {
    dir: PathBuf,
    generation: u32,
}

impl Mount {
    fn new(dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        std::os::unix::fs::symlink("..data/kubeconfig", dir.join("kubeconfig"))?;
        Ok(Self { dir, generation: 0 })
    }

    fn write(&mut self, text: &str) -> anyhow::Result<()> {
        self.generation += 1;
        let content = format!("..{}", self.generation);
        std::fs::create_dir(self.dir.join(&content))?;
        std::fs::write(self.dir.join(&content).join("kubeconfig"), text)?;
        let link = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&content, &link)?;
        std::fs::rename(&link, self.dir.join("..data"))?;
        if self.generation > 1 {
            std::fs::remove_dir_all(self.dir.join(format!("..{}", self.generation - 1)))?;
        }
        Ok(())
    }
}

/// The cluster-scoped RBAC bootstrap makes in cluster2 (the rest is in the test namespace).
struct Cleanup {
    kubeconfig: PathBuf,
    cluster_role: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (kubeconfig, role) = (self.kubeconfig.clone(), self.cluster_role.clone());
        let _ = e2e::support::clean_up_now(async move || {
            let client = e2e::testbed::kubeconfig::client(&kubeconfig, "cluster2").await?;
            let params = DeleteParams::background();
            let _ = Api::<ClusterRoleBinding>::all(client.clone())
                .delete(&role, &params)
                .await;
            let _ = Api::<ClusterRole>::all(client).delete(&role, &params).await;
            Ok(())
        });
    }
}

struct Scene {
    env: &'static TestEnv,
    ns: TestNamespace,
    cluster1: Client,
    cluster2: Client,
    /// Where delegate-sync reads the kubeconfig, when the test hands it over itself.
    mount: Option<Mount>,
    admin: SocketAddr,
}

impl Scene {
    /// A namespace `<prefix>-…` in both clusters and delegate-sync's admin port; the cleanup
    /// of what bootstrap makes outside the namespace.
    async fn new(
        env: &'static TestEnv,
        prefix: &str,
        mount: Option<Mount>,
    ) -> anyhow::Result<(Self, Cleanup)> {
        let ns = env.namespace(prefix).await?;
        let cleanup = Cleanup {
            kubeconfig: env.kubeconfig().clone(),
            cluster_role: format!("{}-{ACCOUNT}", ns.name),
        };
        let scene = Scene {
            env,
            cluster1: env.client("cluster1").await?,
            cluster2: env.client("cluster2").await?,
            mount,
            admin: SocketAddr::from(([127, 0, 0, 1], free_port())),
            ns,
        };
        Ok((scene, cleanup))
    }

    fn options(&self, lifetime: Option<Duration>, rotate: bool) -> Options {
        Options {
            kubeconfig: Some(self.env.kubeconfig().clone()),
            source_context: "cluster1".into(),
            target_context: "cluster2".into(),
            target_name: "cluster2".into(),
            namespace: self.ns.name.clone(),
            service_account: Some(ACCOUNT.into()),
            target_namespace: self.ns.name.clone(),
            secret_name: None,
            target_server: None,
            token_timeout: Duration::from_secs(60),
            token_lifetime: lifetime,
            rotate,
            copies: false,
            create_namespaces: false,
            dry_run: false,
        }
    }

    /// Bootstraps, then hands the kubeconfig Secret's new content to the mount, if any.
    async fn bootstrap(&mut self, options: &Options) -> anyhow::Result<Report> {
        let report = bootstrap::bootstrap_target(options, |_| {}).await?;
        ensure!(report.verified == Some(Ok(())), "{:?}", report.verified);
        if let Some(mount) = &mut self.mount {
            let secret = Api::<Secret>::namespaced(self.cluster1.clone(), &self.ns.name)
                .get(&report.names.secret)
                .await?;
            let text = secret
                .data
                .and_then(|d| d.get("kubeconfig").cloned())
                .context("no kubeconfig in the Secret")?;
            mount.write(&String::from_utf8(text.0)?)?;
        }
        Ok(report)
    }

    /// delegate-sync as a real process, cluster2's kubeconfig read from `kubeconfig`.
    async fn start_sync(&self, kubeconfig: &Path, scratch: &Scratch) -> anyhow::Result<Process> {
        let key_file = scratch.path("manifest-key");
        std::fs::write(&key_file, KEY)?;
        let binary = workspace_binary("delegate-sync", "delegate-sync");
        let mut sync = Process::new(
            "delegate-sync",
            &binary,
            vec![
                "--cluster-name=cluster1".into(),
                format!("--kubeconfig={}", self.env.kubeconfig().display()),
                "--context=cluster1".into(),
                format!("--target=cluster2={}", kubeconfig.display()),
                format!("--manifest-key-file={}", key_file.display()),
                format!("--admin-address={}", self.admin),
            ],
            scratch.path("delegate-sync.log"),
        )
        .with_env(&[("POD_NAME", OWN_POD), ("POD_NAMESPACE", &self.ns.name)]);
        sync.start();
        sync.wait_ready(self.admin, Duration::from_secs(60)).await;
        Ok(sync)
    }

    async fn metric(&self, prefix: &str) -> anyhow::Result<f64> {
        let (_, body) = http_get(self.admin, "/metrics").await?;
        Ok(metric_sum(&body, prefix))
    }

    async fn create_proxies(&self, names: &[String], run_for: &str) -> anyhow::Result<()> {
        let proxies: Api<Pod> = Api::namespaced(self.cluster1.clone(), &self.ns.name);
        futures::stream::iter(names)
            .map(|name| {
                let proxies = proxies.clone();
                let pod = proxy(KEY, &self.ns.name, name, Some("cluster2"), run_for, 0);
                async move { proxies.create(&PostParams::default(), &pod).await }
            })
            .buffer_unordered(20)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(())
    }

    /// Waits until every named proxy ended Succeeded; fails at once on one that failed.
    async fn all_succeed(&self, names: &[String], timeout: Duration) -> anyhow::Result<()> {
        let proxies: Api<Pod> = Api::namespaced(self.cluster1.clone(), &self.ns.name);
        let wanted: BTreeSet<&str> = names.iter().map(String::as_str).collect();
        common::wait_until("proxies Succeeded", timeout, async || {
            let pods = proxies.list(&ListParams::default()).await?;
            let mut left = 0;
            for pod in pods.items.iter() {
                let name = pod.metadata.name.as_deref().unwrap_or_default();
                if !wanted.contains(name) {
                    continue;
                }
                match common::phase(pod) {
                    Some("Succeeded") => {}
                    Some("Failed") => anyhow::bail!("proxy {name} failed: {:?}", pod.status),
                    _ => left += 1,
                }
            }
            Ok((left > 0).then(|| format!("{left} of {} not ended", names.len())))
        })
        .await
    }

    /// Warning Events of `reason` in the namespace, by the name of the object they regard.
    async fn warnings(&self, reason: &str) -> anyhow::Result<BTreeSet<String>> {
        let events = Api::<Event>::namespaced(self.cluster1.clone(), &self.ns.name)
            .list(&ListParams::default())
            .await?;
        Ok(events
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .filter_map(|e| e.involved_object.name)
            .collect())
    }
}

/// May the user of `client` do `verb` on `resource` (named `name`) in `namespace`?
async fn can(
    client: &Client,
    verb: &str,
    resource: &str,
    subresource: Option<&str>,
    name: Option<&str>,
    namespace: &str,
) -> anyhow::Result<bool> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                resource: Some(resource.into()),
                subresource: subresource.map(str::to_string),
                name: name.map(str::to_string),
                namespace: Some(namespace.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

async fn client_of(path: &Path) -> anyhow::Result<Client> {
    let config =
        kube::Config::from_custom_kubeconfig(Kubeconfig::read_from(path)?, &Default::default())
            .await?;
    Ok(Client::try_from(config)?)
}

fn names(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test]
async fn target_credentials_renew_rotate_and_revoke_under_a_running_delegate_sync()
-> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::get().await?;
    let scratch = Scratch::new("credentials-test");
    let mount = Mount::new(scratch.path("cluster2-kubeconfig"))?;
    let (mut scene, _cleanup) = Scene::new(env, "creds", Some(mount)).await?;

    // Short-lived tokens, through a requester that may do nothing else.
    let first = scene
        .bootstrap(&scene.options(Some(LIFETIME), false))
        .await?;
    let path = scratch.path("cluster2-kubeconfig/kubeconfig");
    let requester = client_of(&path).await?;
    let ns_name = scene.ns.name.clone();
    ensure!(
        can(
            &requester,
            "create",
            "serviceaccounts",
            Some("token"),
            Some(ACCOUNT),
            &ns_name
        )
        .await?
    );
    for (verb, resource, subresource, name) in [
        ("create", "serviceaccounts", Some("token"), Some("default")),
        ("list", "pods", None, None),
        ("create", "pods", None, None),
        (
            "get",
            "secrets",
            None,
            Some(first.names.token_secret.as_str()),
        ),
    ] {
        ensure!(
            !can(&requester, verb, resource, subresource, name, &ns_name).await?,
            "the requester must not {verb} {resource}"
        );
    }

    let mut sync = scene.start_sync(&path, &scratch).await?;
    let renewals = "delegate_sync_target_token_renewals_total{cluster=\"cluster2\"}";
    let errors = "delegate_sync_api_errors_total{cluster=\"cluster2\"}";

    // Renewed on schedule: at 80 % of 20 s, so twice in the next 35 s.
    let before = scene.metric(renewals).await?;
    ensure!(before >= 1.0, "no token was requested at start");
    tokio::time::sleep(Duration::from_secs(35)).await;
    let renewed = scene.metric(renewals).await? - before;
    ensure!(
        (2.0..=3.0).contains(&renewed),
        "{renewed} renewals in 35 s with a 20 s lifetime (expected every 16 s)"
    );
    let expiry = scene
        .metric("delegate_sync_target_token_expiry_timestamp_seconds{cluster=\"cluster2\"}")
        .await?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    ensure!(
        expiry > now.as_secs_f64(),
        "the token in use expired at {expiry}, now is {now:?}"
    );

    // A rotation in the middle of a burst: nothing lost, no call failed.
    let burst = names("burst", BURST);
    let started = Instant::now();
    scene.create_proxies(&burst[..BURST / 3], "3s").await?;
    let rotated = scene
        .bootstrap(&scene.options(Some(LIFETIME), true))
        .await?;
    let rotated_at = Instant::now();
    ensure!(
        rotated.replaced == [first.names.token_secret.clone()],
        "{:?}",
        rotated.replaced
    );
    scene
        .create_proxies(&burst[BURST / 3..2 * BURST / 3], "3s")
        .await?;
    let reloads = "delegate_sync_target_credential_reloads_total{cluster=\"cluster2\"}";
    common::wait_until(
        "the rotated kubeconfig reloaded",
        Duration::from_secs(20),
        async || Ok((scene.metric(reloads).await? < 1.0).then(|| "not yet".to_string())),
    )
    .await?;
    let picked_up = rotated_at.elapsed();
    bootstrap::revoke_replaced(&scene.options(Some(LIFETIME), true), &rotated, |_| {}).await?;
    ensure!(
        Api::<Secret>::namespaced(scene.cluster2.clone(), &ns_name)
            .get_opt(&first.names.token_secret)
            .await?
            .is_none(),
        "the replaced token Secret is still there"
    );
    scene.create_proxies(&burst[2 * BURST / 3..], "3s").await?;
    scene.all_succeed(&burst, Duration::from_secs(240)).await?;
    let burst_took = started.elapsed();
    sync.assert_running();
    ensure!(
        scene.metric(errors).await? == 0.0,
        "calls to cluster2 failed:\n{}",
        sync.log_tail(40)
    );
    for reason in ["TargetUnauthorized", "DelegateNotCreated", "ClusterLost"] {
        let warned = scene.warnings(reason).await?;
        ensure!(warned.is_empty(), "{reason} on {warned:?}");
    }
    let delegates = Api::<Pod>::namespaced(scene.cluster2.clone(), &ns_name)
        .list(&ListParams::default())
        .await?;
    ensure!(
        delegates.items.len() == BURST,
        "{} delegates for {BURST} proxies",
        delegates.items.len()
    );

    // Revoked: deleting the requester's token Secret stops every token bound to it at once.
    let held = names("held", 5);
    scene.create_proxies(&held, "25s").await?;
    let proxies: Api<Pod> = Api::namespaced(scene.cluster1.clone(), &ns_name);
    common::wait_until(
        "delegates of the held proxies",
        Duration::from_secs(30),
        async || {
            let mut missing = 0;
            for name in &held {
                let pod = proxies.get(name).await?;
                let annotations = pod.metadata.annotations.unwrap_or_default();
                missing += usize::from(!annotations.contains_key(DELEGATE_NAME));
            }
            Ok((missing > 0).then(|| format!("{missing} without a delegate")))
        },
    )
    .await?;
    let revoked_at = Instant::now();
    Api::<Secret>::namespaced(scene.cluster2.clone(), &ns_name)
        .delete(&rotated.names.token_secret, &DeleteParams::default())
        .await?;
    common::wait_until(
        "TargetUnauthorized on every held proxy",
        Duration::from_secs(20),
        async || {
            let warned = scene.warnings("TargetUnauthorized").await?;
            let left: Vec<&String> = held.iter().filter(|n| !warned.contains(*n)).collect();
            Ok((!left.is_empty()).then(|| format!("not yet on {left:?}")))
        },
    )
    .await?;
    let refused_after = revoked_at.elapsed();
    // The gauge is sampled every 500 ms, the Warnings said at once.
    common::wait_until(
        "cluster2 counted unreachable",
        Duration::from_secs(5),
        async || {
            let reachable = scene
                .metric("delegate_sync_target_reachable{cluster=\"cluster2\"}")
                .await?;
            Ok((reachable != 0.0).then(|| "still counted reachable".to_string()))
        },
    )
    .await?;
    // A new credential, mounted: the held proxies end as their delegates did.
    scene
        .bootstrap(&scene.options(Some(LIFETIME), true))
        .await?;
    let recovered_at = Instant::now();
    let reachable = "delegate_sync_target_reachable{cluster=\"cluster2\"}";
    common::wait_until(
        "cluster2 reachable again",
        Duration::from_secs(30),
        async || Ok((scene.metric(reachable).await? < 1.0).then(|| "not yet".to_string())),
    )
    .await?;
    let reachable_after = recovered_at.elapsed();
    scene.all_succeed(&held, Duration::from_secs(60)).await?;
    let recovered_after = recovered_at.elapsed();

    // A kubeconfig that does not load: the credentials in use stay, and it says why.
    let credential_errors = "delegate_sync_target_credential_errors_total{cluster=\"cluster2\"}";
    let errors_before = scene.metric(credential_errors).await?;
    let current = std::fs::read_to_string(&path)?;
    let mount = scene.mount.as_mut().context("mounted")?;
    mount.write("apiVersion: v1\nclusters: [oops\n")?;
    common::wait_until(
        "TargetCredentialInvalid",
        Duration::from_secs(20),
        async || {
            let warned = scene.warnings("TargetCredentialInvalid").await?;
            Ok((!warned.contains(OWN_POD)).then(|| format!("Warnings on {warned:?}")))
        },
    )
    .await?;
    ensure!(scene.metric(credential_errors).await? > errors_before);
    let during = names("broken-file", 1);
    scene.create_proxies(&during, "1s").await?;
    scene.all_succeed(&during, Duration::from_secs(30)).await?;
    scene.mount.as_mut().context("mounted")?.write(&current)?;

    // Back to a long-lived token of the account itself: picked up the same way.
    let reloads_before = scene.metric(reloads).await?;
    let long_lived = scene.bootstrap(&scene.options(None, true)).await?;
    common::wait_until("the long-lived kubeconfig reloaded", Duration::from_secs(20), async || {
        Ok((scene.metric(reloads).await? <= reloads_before).then(|| "not yet".to_string()))
    })
    .await?;
    bootstrap::revoke_replaced(&scene.options(None, true), &long_lived, |_| {}).await?;
    let after = names("long-lived", 3);
    scene.create_proxies(&after, "1s").await?;
    scene.all_succeed(&after, Duration::from_secs(30)).await?;
    sync.assert_running();
    ensure!(
        scene.metric(errors).await? == 0.0,
        "calls to cluster2 failed:\n{}",
        sync.log_tail(40)
    );

    common::report(
        "credentials",
        &serde_json::json!({
            "burst_proxies": BURST,
            "burst_seconds": burst_took.as_secs_f64(),
            "rotation_picked_up_seconds": picked_up.as_secs_f64(),
            "revoked_to_target_unauthorized_seconds": refused_after.as_secs_f64(),
            "new_credential_to_target_reachable_seconds": reachable_after.as_secs_f64(),
            "new_credential_to_held_proxies_ended_seconds": recovered_after.as_secs_f64(),
        }),
    );
    sync.stop(Duration::from_secs(10));
    Ok(())
}

#[tokio::test]
async fn a_rotated_kubeconfig_secret_reaches_delegate_sync_through_a_real_kubelet()
-> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::get().await?;
    env.require_real_nodes()?;
    let scratch = Scratch::new("credentials-kubelet-test");
    let (mut scene, _cleanup) = Scene::new(env, "creds-kubelet", None).await?;
    let ns_name = scene.ns.name.clone();
    let first = scene.bootstrap(&scene.options(None, false)).await?;

    // The kubeconfig Secret, mounted by cluster1's real kubelet into a pod of its own.
    let mut spec: k8s_openapi::api::core::v1::PodSpec =
        serde_json::from_value(serde_json::json!({
            "containers": [{
                "name": "main",
                "image": e2e::nodes::BUSYBOX_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["sleep", "3600"],
                "volumeMounts": [{ "name": "creds", "mountPath": "/etc/creds", "readOnly": true }],
            }],
            "volumes": [{ "name": "creds", "secret": { "secretName": first.names.secret } }],
            "terminationGracePeriodSeconds": 0,
        }))?;
    e2e::nodes::on_real_nodes(&mut spec);
    let holder = Pod {
        metadata: kube::api::ObjectMeta {
            name: Some("mounts-kubeconfig".into()),
            ..Default::default()
        },
        spec: Some(spec),
        ..Default::default()
    };
    let pods: Api<Pod> = Api::namespaced(scene.cluster1.clone(), &ns_name);
    pods.create(&PostParams::default(), &holder).await?;
    let running = e2e::support::wait_for(
        &pods,
        "mounts-kubeconfig",
        Duration::from_secs(60),
        |p: Option<&Pod>| p.and_then(common::phase) == Some("Running"),
    )
    .await?
    .context("the pod is gone")?;
    let uid = running.metadata.uid.context("uid")?;
    let node_name = running
        .spec
        .and_then(|s| s.node_name)
        .context("not bound")?;
    let testbed = env.testbed()?;
    let node = testbed
        .cluster("cluster1")?
        .real_nodes
        .iter()
        .find(|n| n.name == node_name)
        .context("not on a real node of the test bed")?;
    let path = node.secret_volume(&uid, "creds").join("kubeconfig");
    ensure!(path.is_file(), "the kubelet shows no {}", path.display());

    let mut sync = scene.start_sync(&path, &scratch).await?;
    let before = names("before", 1);
    scene.create_proxies(&before, "1s").await?;
    scene.all_succeed(&before, Duration::from_secs(30)).await?;

    // Rotated: the kubelet updates the file, delegate-sync reloads it, the old token goes.
    let old_text = std::fs::read_to_string(&path)?;
    let rotated = scene.bootstrap(&scene.options(None, true)).await?;
    ensure!(
        rotated.replaced == [first.names.token_secret.clone()],
        "{:?}",
        rotated.replaced
    );
    let rotated_at = Instant::now();
    let reloads = "delegate_sync_target_credential_reloads_total{cluster=\"cluster2\"}";
    let mut file_changed = None;
    common::wait_until(
        "the kubelet's update reloaded",
        Duration::from_secs(180),
        async || {
            if file_changed.is_none() && std::fs::read_to_string(&path)? != old_text {
                file_changed = Some(rotated_at.elapsed());
            }
            Ok((scene.metric(reloads).await? < 1.0).then(|| "not yet".to_string()))
        },
    )
    .await?;
    let reloaded = rotated_at.elapsed();
    bootstrap::revoke_replaced(&scene.options(None, true), &rotated, |_| {}).await?;
    let after = names("after", 3);
    scene.create_proxies(&after, "1s").await?;
    scene.all_succeed(&after, Duration::from_secs(30)).await?;
    sync.assert_running();
    ensure!(
        scene
            .metric("delegate_sync_api_errors_total{cluster=\"cluster2\"}")
            .await?
            == 0.0,
        "calls to cluster2 failed:\n{}",
        sync.log_tail(40)
    );
    common::report(
        "credentials_kubelet",
        &serde_json::json!({
            "secret_updated_to_file_changed_seconds": file_changed.map(|d| d.as_secs_f64()),
            "secret_updated_to_reloaded_seconds": reloaded.as_secs_f64(),
        }),
    );
    sync.stop(Duration::from_secs(10));
    Ok(())
}
