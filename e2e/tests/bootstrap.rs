//! `certs bootstrap-target` on the test bed: cluster2 bootstrapped as a target of cluster1.
//! A dry run changes nothing; a second run changes nothing; the kubeconfig it stores in
//! cluster1 can do in cluster2 exactly what the target chart grants (pods and node reads, no
//! Secrets, no node deletion); and delegate-sync running with exactly that kubeconfig places a
//! proxy's delegate in cluster2 and the proxy ends Succeeded.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, ensure};
use certs::bootstrap::{self, Options, Outcome, Report, Step};
use contract::{
    CLEANUP_FINALIZER, CLUSTER_NAME, ELECT, PROXY_LABEL, SOURCEPOD_MANIFEST, manifest::ManifestKey,
};
use delegate_sync::args::{Config, TargetSpec};
use e2e::{
    TestEnv, lifecycle,
    support::{unique_name, wait_for},
    testbed::workspace_target_dir,
};
use k8s_openapi::api::{
    authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec},
    core::v1::{Namespace, Node, Pod, Secret, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, PostParams},
    config::Kubeconfig,
};
use serde_json::{Value, json};

const KEY: &[u8] = b"bootstrap-test-manifest-key-0123456789ab";

/// Deletes what the test creates outside its test namespace (the target namespace and the
/// cluster-scoped RBAC in cluster2, the scratch directory), pass or fail.
struct Cleanup {
    kubeconfig: PathBuf,
    target_namespace: String,
    cluster_role: String,
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let (kubeconfig, namespace, role) = (
            self.kubeconfig.clone(),
            self.target_namespace.clone(),
            self.cluster_role.clone(),
        );
        // Drop may run inside the test's runtime: delete from a thread with its own.
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let client = e2e::testbed::kubeconfig::client(&kubeconfig, "cluster2").await?;
                let params = DeleteParams::background();
                for role in [role.clone(), format!("{role}-copies")] {
                    gone(
                        Api::<ClusterRoleBinding>::all(client.clone())
                            .delete(&role, &params)
                            .await,
                    )?;
                    gone(
                        Api::<ClusterRole>::all(client.clone())
                            .delete(&role, &params)
                            .await,
                    )?;
                }
                gone(
                    Api::<Namespace>::all(client)
                        .delete(&namespace, &params)
                        .await,
                )
            })
        })
        .join();
        if !matches!(deleted, Ok(Ok(()))) {
            eprintln!("warning: could not clean up after the bootstrap test: {deleted:?}");
        }
    }
}

/// Deleted, or already gone.
fn gone<T>(result: Result<T, kube::Error>) -> anyhow::Result<()> {
    match result {
        Ok(_) | Err(kube::Error::Api(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn outcomes(report: &Report) -> Vec<(String, String, Outcome)> {
    report
        .steps
        .iter()
        .map(|s| (s.context.clone(), s.kind.clone(), s.outcome))
        .collect()
}

fn step(context: &str, kind: &str, outcome: Outcome) -> (String, String, Outcome) {
    (context.into(), kind.into(), outcome)
}

/// The rules of the target chart's ClusterRoles, rendered by helm with `sets`: the main one
/// first.
fn rendered_rules(dir: &Path, sets: &[&str]) -> anyhow::Result<Vec<Value>> {
    let helm = workspace_target_dir().join("tools/bin/helm");
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/target");
    let home = dir.join("helm");
    let out = Command::new(helm)
        .args(["template", "t", chart.to_str().context("path")?])
        .args(["--namespace", "ns"])
        .args(sets.iter().flat_map(|s| ["--set", s]))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG")
        .output()
        .context("cannot run helm (run `make tools`)")?;
    ensure!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> = serde_saphyr::from_multiple(&String::from_utf8(out.stdout)?)?;
    let mut roles: Vec<(String, Value)> = docs
        .into_iter()
        .filter(|d| d["kind"] == json!("ClusterRole"))
        .map(|d| {
            let name = d["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            (name, d["rules"].clone())
        })
        .collect();
    // The main one first, then the copies one (helm renders templates by file name).
    roles.sort_by_key(|(name, _)| name.ends_with("-copies"));
    Ok(roles.into_iter().map(|(_, rules)| rules).collect())
}

/// The rules of the target chart's main ClusterRole.
fn chart_rules(dir: &Path) -> anyhow::Result<Value> {
    rendered_rules(dir, &[])?
        .into_iter()
        .next()
        .context("the target chart renders no ClusterRole")
}

/// A rule set comparable whatever the order of rules and verbs.
fn rule_set(rules: &Value) -> BTreeSet<(String, Vec<String>)> {
    rules
        .as_array()
        .into_iter()
        .flatten()
        .map(|rule| {
            let resources = rule["resources"].to_string();
            let mut verbs: Vec<String> = rule["verbs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| v.as_str().unwrap_or_default().to_string())
                .collect();
            verbs.sort();
            (resources, verbs)
        })
        .collect()
}

#[test]
fn certs_grants_what_the_target_chart_grants_for_copies_and_namespaces() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(unique_name("bootstrap-copies"));
    std::fs::create_dir_all(&dir)?;
    let checked = (|| {
        for (copies, namespaces) in [(true, false), (false, true), (true, true)] {
            let sets = [
                format!("copies.enabled={copies}"),
                format!("copies.createNamespaces={namespaces}"),
            ];
            let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
            let rendered = rendered_rules(&dir, &sets)?;
            ensure!(
                rendered.len() == 2,
                "{} ClusterRoles rendered",
                rendered.len()
            );
            let ours =
                serde_json::to_value(certs::bootstrap::objects::copies_rules(copies, namespaces))?;
            ensure!(
                rule_set(&ours) == rule_set(&rendered[1]),
                "copies={copies} createNamespaces={namespaces}: certs {ours} chart {}",
                rendered[1]
            );
        }
        ensure!(rendered_rules(&dir, &[])?.len() == 1);
        ensure!(certs::bootstrap::objects::copies_rules(false, false).is_empty());
        anyhow::Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    checked
}

/// May the user of `client` do `verb` on `resource` (in `namespace`)?
async fn can(
    client: &Client,
    verb: &str,
    resource: &str,
    namespace: Option<&str>,
) -> anyhow::Result<bool> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                resource: Some(resource.into()),
                namespace: namespace.map(str::to_string),
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

fn forbidden<T>(result: Result<T, kube::Error>) -> bool {
    matches!(result, Err(kube::Error::Api(status)) if status.code == 403)
}

/// A proxy as the webhook stores it, pinned to cluster2, whose delegate runs 2 s and exits 0.
fn proxy(namespace: &str, name: &str) -> Pod {
    let mut annotations = BTreeMap::from([
        (ELECT.to_string(), String::new()),
        (CLUSTER_NAME.to_string(), "cluster2".to_string()),
        (lifecycle::RUN_FOR.to_string(), "2s".to_string()),
        (lifecycle::exit_code_of("main"), "0".to_string()),
    ]);
    let saved = json!({
        "metadata": { "name": name, "namespace": namespace, "annotations": annotations },
        "spec": { "restartPolicy": "Never", "containers": [{ "name": "main", "image": "busybox" }] },
    });
    annotations.insert(
        SOURCEPOD_MANIFEST.into(),
        ManifestKey::from_bytes(KEY)
            .unwrap()
            .seal(namespace, &saved.to_string()),
    );
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": { PROXY_LABEL: "true" },
            "annotations": annotations,
            "finalizers": [CLEANUP_FINALIZER],
        },
        "spec": { "restartPolicy": "Never", "containers": [{ "name": "main", "image": "proxy-waiter" }] },
    }))
    .unwrap()
}

fn phase(pod: Option<&Pod>) -> Option<&str> {
    pod.and_then(|p| p.status.as_ref()?.phase.as_deref())
}

#[tokio::test]
async fn bootstrapped_credentials_let_delegate_sync_place_a_pod_and_nothing_more()
-> anyhow::Result<()> {
    let env = TestEnv::get().await?;
    let ns = env.namespace("bootstrap").await?;
    let target_namespace = unique_name("bootstrap-sa");
    let dir = std::env::temp_dir().join(unique_name("bootstrap-test"));
    std::fs::create_dir_all(&dir)?;
    let options = Options {
        kubeconfig: Some(env.kubeconfig().clone()),
        source_context: "cluster1".into(),
        target_context: "cluster2".into(),
        target_name: "cluster2".into(),
        namespace: ns.name.clone(),
        service_account: None,
        target_namespace: target_namespace.clone(),
        secret_name: None,
        target_server: None,
        token_timeout: Duration::from_secs(60),
        token_lifetime: None,
        rotate: false,
        copies: false,
        create_namespaces: false,
        dry_run: true,
    };
    let names = bootstrap::plan(&options)?;
    let _cleanup = Cleanup {
        kubeconfig: env.kubeconfig().clone(),
        target_namespace: target_namespace.clone(),
        cluster_role: names.cluster_role.clone(),
        dir: dir.clone(),
    };
    let cluster1 = env.client("cluster1").await?;
    let cluster2 = env.client("cluster2").await?;
    let source_secrets: Api<Secret> = Api::namespaced(cluster1.clone(), &ns.name);
    let roles: Api<ClusterRole> = Api::all(cluster2.clone());
    let bindings: Api<ClusterRoleBinding> = Api::all(cluster2.clone());
    let namespaces2: Api<Namespace> = Api::all(cluster2.clone());

    // A dry run: reported, nothing written.
    let mut printed = Vec::new();
    let dry = bootstrap::bootstrap_target(&options, |s: &Step| printed.push(s.to_string())).await?;
    use Outcome::*;
    assert_eq!(
        outcomes(&dry),
        [
            step("cluster2", "Namespace", Created),
            step("cluster2", "ServiceAccount", Created),
            step("cluster2", "ClusterRole", Created),
            step("cluster2", "ClusterRoleBinding", Created),
            step("cluster2", "Secret", Created),
            step("cluster1", "Namespace", Unchanged),
            step("cluster1", "Secret", Created),
        ]
    );
    assert_eq!(printed.len(), 7);
    assert!(
        printed[2].ends_with(&format!(
            "ClusterRole {} would be created (dry run)",
            names.cluster_role
        )),
        "{printed:#?}"
    );
    assert!(dry.kubeconfig.is_none() && dry.verified.is_none());
    assert!(namespaces2.get_opt(&target_namespace).await?.is_none());
    assert!(roles.get_opt(&names.cluster_role).await?.is_none());
    assert!(bindings.get_opt(&names.cluster_role).await?.is_none());
    assert!(source_secrets.get_opt(&names.secret).await?.is_none());

    // For real, then again: everything created, then everything unchanged.
    let real = Options {
        dry_run: false,
        ..options.clone()
    };
    let first = bootstrap::bootstrap_target(&real, |_| {}).await?;
    let created: Vec<_> = outcomes(&dry);
    assert_eq!(outcomes(&first), created);
    assert_eq!(first.verified, Some(Ok(())));
    let again = bootstrap::bootstrap_target(&real, |_| {}).await?;
    assert!(
        again.steps.iter().all(|s| s.outcome == Unchanged),
        "{:#?}",
        again.steps
    );
    assert_eq!(again.kubeconfig, first.kubeconfig);
    // The copies rights come with --copies and --create-namespaces, and go without them.
    let copies_role = format!("{}-copies", names.cluster_role);
    bootstrap::bootstrap_target(
        &Options {
            copies: true,
            create_namespaces: true,
            ..real.clone()
        },
        |_| {},
    )
    .await?;
    ensure!(roles.get_opt(&copies_role).await?.is_some());
    ensure!(bindings.get_opt(&copies_role).await?.is_some());
    let without = bootstrap::bootstrap_target(&real, |_| {}).await?;
    let deleted: Vec<String> = without
        .steps
        .iter()
        .filter(|s| s.outcome == Deleted)
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        deleted,
        [
            format!("cluster2: ClusterRoleBinding {copies_role} deleted"),
            format!("cluster2: ClusterRole {copies_role} deleted"),
        ]
    );
    ensure!(roles.get_opt(&copies_role).await?.is_none());
    // A dry run with everything in place is validated by the servers: unchanged; one with
    // another server address would update the Secret only, and does not.
    let dry_again = bootstrap::bootstrap_target(&options, |_| {}).await?;
    assert!(dry_again.steps.iter().all(|s| s.outcome == Unchanged));
    let moved = bootstrap::bootstrap_target(
        &Options {
            target_server: Some("https://cluster2.example:6443".into()),
            ..options.clone()
        },
        |_| {},
    )
    .await?;
    assert_eq!(
        moved.steps.last().map(|s| (s.kind.as_str(), s.outcome)),
        Some(("Secret", Updated))
    );

    // What is in the target: the chart's rules exactly, the account not mounting its token.
    let role = roles.get(&names.cluster_role).await?;
    assert_eq!(serde_json::to_value(&role.rules)?, chart_rules(&dir)?);
    let account = Api::<ServiceAccount>::namespaced(cluster2.clone(), &target_namespace)
        .get(&names.service_account)
        .await?;
    assert_eq!(account.automount_service_account_token, Some(false));

    // The kubeconfig in cluster1's Secret.
    let secret = source_secrets.get(&names.secret).await?;
    assert_eq!(
        secret
            .metadata
            .labels
            .as_ref()
            .map(|l| l["multicluster.admiralty.io/target-cluster"].clone()),
        Some("cluster2".to_string())
    );
    let text = String::from_utf8(
        secret
            .data
            .and_then(|d| d.get("kubeconfig").cloned())
            .context("no kubeconfig key")?
            .0,
    )?;
    assert_eq!(Some(&text), first.kubeconfig.as_ref());
    let kubeconfig_file = dir.join("cluster2.kubeconfig");
    std::fs::write(&kubeconfig_file, &text)?;
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&kubeconfig_file)?,
        &Default::default(),
    )
    .await?;
    let as_target = Client::try_from(config)?;

    // It may do what delegate-sync does, and nothing else.
    for (verb, resource, namespace) in [
        ("create", "pods", Some(ns.name.as_str())),
        ("delete", "pods", Some(ns.name.as_str())),
        ("watch", "pods", None),
        ("list", "nodes", None),
    ] {
        ensure!(
            can(&as_target, verb, resource, namespace).await?,
            "should be able to {verb} {resource}"
        );
    }
    for (verb, resource, namespace) in [
        ("get", "secrets", Some(ns.name.as_str())),
        ("list", "secrets", None),
        ("patch", "pods", Some(ns.name.as_str())),
        ("delete", "nodes", None),
        ("create", "namespaces", None),
    ] {
        ensure!(
            !can(&as_target, verb, resource, namespace).await?,
            "must not be able to {verb} {resource}"
        );
    }
    let pods: Api<Pod> = Api::namespaced(as_target.clone(), &ns.name);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "by-hand" },
        "spec": { "containers": [{ "name": "main", "image": "busybox" }] },
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    pods.delete("by-hand", &DeleteParams::default()).await?;
    let nodes = Api::<Node>::all(as_target.clone())
        .list(&ListParams::default())
        .await?;
    ensure!(!nodes.items.is_empty(), "no nodes listed");
    let node = nodes.items[0].metadata.name.clone().context("node name")?;
    ensure!(forbidden(
        Api::<Secret>::namespaced(as_target.clone(), &ns.name)
            .list(&ListParams::default())
            .await
    ));
    ensure!(forbidden(
        Api::<Node>::all(as_target.clone())
            .delete(&node, &DeleteParams::default())
            .await
    ));

    // The decisive one: delegate-sync with exactly that credential for cluster2.
    let admin = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let config = Config {
        cluster_name: "cluster1".into(),
        kubeconfig: Some(env.kubeconfig().clone()),
        context: Some("cluster1".into()),
        targets: vec![TargetSpec {
            name: "cluster2".into(),
            kubeconfig: Some(kubeconfig_file.clone()),
            context: None,
        }],
        key: ManifestKey::from_bytes(KEY)?,
        pending_retry: Duration::from_secs(600),
        cluster_lost_timeout: Duration::from_secs(3600),
        leader_election: None,
        concurrency: 16,
        max_log_streams: 100,
        log_relay: true,
        copies: Default::default(),
        admin_address: admin,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(delegate_sync::run(config, async move {
        let _ = stopped.await;
    }));
    let placed = async {
        let proxies: Api<Pod> = Api::namespaced(cluster1.clone(), &ns.name);
        proxies
            .create(&PostParams::default(), &proxy(&ns.name, "step"))
            .await?;
        let delegates: Api<Pod> = Api::namespaced(cluster2.clone(), &ns.name);
        let delegate_name = format!("cluster1-{}-step", ns.name);
        wait_for(
            &delegates,
            &delegate_name,
            Duration::from_secs(30),
            |d: Option<&Pod>| d.is_some(),
        )
        .await?;
        wait_for(
            &proxies,
            "step",
            Duration::from_secs(40),
            |p: Option<&Pod>| phase(p) == Some("Succeeded"),
        )
        .await?;
        // Deleting the proxy deletes the delegate, through the same credential.
        proxies.delete("step", &DeleteParams::default()).await?;
        wait_for(
            &delegates,
            &delegate_name,
            Duration::from_secs(30),
            |d: Option<&Pod>| d.is_none(),
        )
        .await?;
        anyhow::Ok(())
    }
    .await;
    let _ = stop.send(());
    let stopped = tokio::time::timeout(Duration::from_secs(20), controller).await;
    placed?;
    match stopped {
        Ok(Ok(result)) => result.context("delegate-sync ended with an error")?,
        Ok(Err(join)) => anyhow::bail!("delegate-sync panicked: {join}"),
        Err(_) => anyhow::bail!("delegate-sync did not stop within 20 s"),
    }
    Ok(())
}
