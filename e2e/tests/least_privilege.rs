//! Least privilege: the pieces run under exactly the RBAC the Helm charts grant, nothing more.
//!
//! The charts are rendered with `helm template`; their ServiceAccounts and RBAC objects (and
//! nothing else) are applied to the test bed; each piece then runs as a real process with a
//! token of its chart's ServiceAccount and no other credentials, with the arguments of the
//! rendered workload (paths, ports and `$(POD_NAMESPACE)` substituted):
//! - `certs ensure` as the webhook chart's renewal CronJob (`<release>-webhook-certs`): writes
//!   the TLS Secrets and patches the chart's MutatingWebhookConfiguration (applied with a
//!   selector that matches no namespace: the test bed cannot reach a Service);
//! - the webhook with no credentials at all (its chart binds no role to it and mounts no
//!   token), serving the certificate `certs` stored, called by the apiserver;
//! - delegate-sync as the delegate-sync chart's ServiceAccount in cluster1 (source, and target
//!   `self`) and the target chart's ServiceAccount in cluster2, through a whole lifecycle:
//!   placement (pinned and by capacity), delegate creation, mirrored annotations, results
//!   with exit codes and messages, a lost delegate, an unknown cluster, Events, the leader
//!   Lease, deletion and cleanup, and the orphan sweep after a SIGKILL; then, with the charts'
//!   `createNamespaces`, `copyReferences` and `copies`, a pod whose namespace exists in cluster1
//!   only and whose Secret and ConfigMap follow it to cluster2 (and go with its delegate).
//!
//! Any request refused by RBAC (`forbidden` in a log) fails the test and names the verb and
//! resource the chart lacks.

mod common;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use anyhow::{Context as _, ensure};
use common::*;
use contract::{
    CLUSTER_NAME, DELEGATE_NAME, ELECT, RESULT, TARGET_CLUSTER, result::DelegateResult,
};
use e2e::{TestEnv, WebhookRegistration, lifecycle, support::unique_name};
use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration,
    coordination::v1::Lease,
    core::v1::{ConfigMap, Event, Pod, Secret},
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

const RELEASE: &str = "mc";

fn tool(name: &str) -> PathBuf {
    e2e::testbed::workspace_target_dir()
        .join("tools/bin")
        .join(name)
}

fn chart(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts")
        .join(name)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `helm template` with homes of its own (no repositories, no network), as documents.
fn render(
    scratch: &Scratch,
    chart_name: &str,
    namespace: &str,
    kube_version: &str,
    values: &Value,
) -> anyhow::Result<Vec<Value>> {
    let values_file = scratch.path(&format!("{chart_name}.values.json"));
    std::fs::write(&values_file, values.to_string())?;
    let home = scratch.path("helm");
    let out = Command::new(tool("helm"))
        .arg("template")
        .arg(RELEASE)
        .arg(chart(chart_name))
        .args(["--namespace", namespace, "--kube-version", kube_version])
        .arg("--values")
        .arg(&values_file)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG")
        .output()
        .context("cannot run helm (run `make tools`)")?;
    ensure!(
        out.status.success(),
        "helm template {chart_name}:\n{}",
        text(&out)
    );
    let docs: Vec<Value> = serde_saphyr::from_multiple(&String::from_utf8(out.stdout)?)?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

fn kind_of(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn name_of(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| kind_of(d) == kind && name_of(d) == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

const RBAC_KINDS: &[&str] = &[
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ClusterRole",
    "ClusterRoleBinding",
];

/// Applies `docs` with the admin kubeconfig (server-side, as Helm would create them).
fn apply(env: &TestEnv, scratch: &Scratch, context: &str, docs: &[Value]) -> anyhow::Result<()> {
    let file = scratch.path(&format!("{}.json", unique_name("apply")));
    std::fs::write(
        &file,
        json!({ "apiVersion": "v1", "kind": "List", "items": docs }).to_string(),
    )?;
    let out = Command::new(tool("kubectl"))
        .arg("--kubeconfig")
        .arg(env.kubeconfig())
        .args([
            "--context",
            context,
            "apply",
            "--server-side",
            "--field-manager=least-privilege-test",
            "-f",
        ])
        .arg(&file)
        .output()?;
    ensure!(out.status.success(), "kubectl apply:\n{}", text(&out));
    Ok(())
}

/// Cluster-scoped objects the test applied, deleted on drop (namespaces take the rest).
struct ClusterScoped {
    kubeconfig: PathBuf,
    objects: Vec<(String, String)>,
}

impl Drop for ClusterScoped {
    fn drop(&mut self) {
        for (context, object) in &self.objects {
            let _ = Command::new(tool("kubectl"))
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .args([
                    "--context",
                    context,
                    "delete",
                    "--ignore-not-found",
                    "--wait=false",
                    object,
                ])
                .output();
        }
    }
}

fn container_args(workload: &Value) -> Vec<String> {
    let spec = if kind_of(workload) == "CronJob" {
        &workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    } else {
        &workload["spec"]["template"]["spec"]
    };
    spec["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// Rewrites the rendered arguments for a process on this machine: `(from, to)` substring
/// replacements, in order.
fn localize(args: &[String], replacements: &[(&str, String)]) -> Vec<String> {
    args.iter()
        .map(|arg| {
            replacements
                .iter()
                .fold(arg.clone(), |arg, (from, to)| arg.replace(from, to))
        })
        .collect()
}

/// Every request RBAC refused, as the log reports it: the apiserver's "cannot VERB resource
/// \"R\" in API group \"G\"" (JSON logs escape the quotes).
fn forbidden_requests(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("forbidden") || l.contains("Forbidden"))
        .map(|l| {
            let line = l.replace("\\\"", "\"");
            let from = line.find("forbidden").unwrap_or(0);
            match line[from..].find("cannot ") {
                Some(at) => {
                    let rest = &line[from + at..];
                    let end = [" in the namespace", " at the cluster scope", ": ", "\","]
                        .iter()
                        .filter_map(|stop| rest.find(stop))
                        .min()
                        .unwrap_or(rest.len().min(160));
                    rest[..end].to_string()
                }
                None => line.chars().take(300).collect(),
            }
        })
        .collect()
}

#[test]
fn forbidden_requests_name_the_missing_verb() {
    let json = r#"{"level":"WARN","fields":{"message":"reconcile failed: ApiError: pods \"p\" is forbidden: User \"system:serviceaccount:ns:mc-delegate-sync\" cannot patch resource \"pods/status\" in API group \"\" in the namespace \"work\": Forbidden (ErrorResponse { status: \"Failure\" })"}}"#;
    let plain = r#"WARN cannot publish event Scheduled: ApiError: events.events.k8s.io is forbidden: User "system:serviceaccount:ns:sa" cannot create resource "events" in API group "events.k8s.io" in the namespace "work": Forbidden"#;
    let cluster = r#"WARN watch failed: nodes is forbidden: User "system:serviceaccount:ns:sa" cannot list resource "nodes" in API group "" at the cluster scope"#;
    assert_eq!(
        forbidden_requests(&format!("{json}\nINFO fine\n{plain}\n{cluster}")),
        [
            r#"cannot patch resource "pods/status" in API group """#,
            r#"cannot create resource "events" in API group "events.k8s.io""#,
            r#"cannot list resource "nodes" in API group """#,
        ]
    );
}

fn elected(name: &str, pinned: Option<&str>, run_for: Option<&str>, code: i32) -> Pod {
    let mut annotations = json!({
        ELECT: "",
        lifecycle::exit_code_of("main"): code.to_string(),
        lifecycle::message_of("main"): format!("{name} says {code}"),
    });
    if let Some(cluster) = pinned {
        annotations[CLUSTER_NAME] = json!(cluster);
    }
    if let Some(run_for) = run_for {
        annotations[lifecycle::RUN_FOR] = json!(run_for);
    }
    serde_json::from_value(json!({
        "metadata": { "name": name, "annotations": annotations },
        "spec": { "restartPolicy": "Never", "containers": [{ "name": "main", "image": "busybox" }] },
    }))
    .unwrap()
}

fn annotation(pod: &Pod, key: &str) -> Option<String> {
    pod.metadata.annotations.as_ref()?.get(key).cloned()
}

async fn wait_pod(
    api: &Api<Pod>,
    name: &str,
    what: &str,
    timeout: Duration,
    done: impl Fn(Option<&Pod>) -> bool,
) -> Option<Pod> {
    let mut last = None;
    let waited = wait_until(&format!("{name}: {what}"), timeout, async || {
        last = api.get_opt(name).await?;
        Ok((!done(last.as_ref())).then(|| format!("{last:?}").chars().take(2000).collect()))
    })
    .await;
    waited.unwrap();
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegate_sync_and_the_webhook_run_under_exactly_the_charts_rbac() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = TestEnv::get().await.unwrap();
    let testbed = env.testbed().unwrap();
    let version = env
        .client("cluster1")
        .await
        .unwrap()
        .apiserver_version()
        .await
        .unwrap()
        .git_version;
    let scratch = Scratch::new("least-privilege");
    // The release namespace (both clusters) and the workload namespace, opted in for this
    // test's webhook registration only.
    let system = env.namespace("lp-system").await.unwrap();
    let release_ns = system.name.clone();
    let selector = unique_name("sel");
    let opt_in = BTreeMap::from([
        (
            contract::NAMESPACE_OPT_IN_LABEL.to_string(),
            contract::NAMESPACE_OPT_IN_VALUE.to_string(),
        ),
        ("least-privilege".to_string(), selector),
    ]);
    let work = env
        .namespace_with_labels("lp-work", opt_in.clone())
        .await
        .unwrap();
    // A namespace of cluster1 only, whose pods' references follow them (created before the
    // charts are applied: the delegate-sync chart grants reads in it by a Role there).
    let mut follow_labels = opt_in.clone();
    follow_labels.insert(contract::COPY_REFERENCES_LABEL.into(), "true".into());
    let follow = env
        .namespace_only_in("lp-follow", follow_labels, &["cluster1"])
        .await
        .unwrap();

    // Render the three charts as an operator would install them.
    let webhook_docs = render(&scratch, "webhook", &release_ns, &version, &json!({})).unwrap();
    let sync_docs = render(
        &scratch,
        "delegate-sync",
        &release_ns,
        &version,
        &json!({
            "clusterName": "cluster1",
            "manifestKey": { "existingSecret": format!("{RELEASE}-webhook-manifest-key") },
            "targets": [
                { "name": "cluster1", "self": true },
                { "name": "cluster2", "kubeconfigSecret": "cluster2-kubeconfig", "context": "cluster2" },
            ],
            "createNamespaces": true,
            "copyReferences": { "namespaces": [follow.name] },
        }),
    )
    .unwrap();
    let target_docs = render(
        &scratch,
        "target",
        &release_ns,
        &version,
        &json!({ "copies": { "enabled": true, "createNamespaces": true } }),
    )
    .unwrap();

    // The webhook has no rights at all: no token, no binding names its ServiceAccount.
    let webhook_sa = format!("{RELEASE}-webhook");
    let deployment = find(&webhook_docs, "Deployment", &webhook_sa);
    assert_eq!(
        deployment["spec"]["template"]["spec"]["automountServiceAccountToken"],
        json!(false)
    );
    assert_eq!(
        find(&webhook_docs, "ServiceAccount", &webhook_sa)["automountServiceAccountToken"],
        json!(false)
    );
    for binding in webhook_docs
        .iter()
        .filter(|d| matches!(kind_of(d), "RoleBinding" | "ClusterRoleBinding"))
    {
        for subject in binding["subjects"].as_array().into_iter().flatten() {
            assert_ne!(
                subject["name"],
                json!(webhook_sa),
                "{} binds the webhook",
                name_of(binding)
            );
        }
    }

    // Only ServiceAccounts and RBAC go to the clusters: of the webhook chart, the renewal
    // CronJob's (the hook's are the same rules for a Job, tested in charts.rs), plus its
    // MutatingWebhookConfiguration, whose selector is replaced by one that matches nothing.
    let certs_sa = format!("{RELEASE}-webhook-certs");
    let mut cluster1_docs: Vec<Value> = webhook_docs
        .iter()
        .filter(|d| RBAC_KINDS.contains(&kind_of(d)))
        .filter(|d| {
            (kind_of(d) == "ServiceAccount" && name_of(d) == webhook_sa)
                || (d["metadata"]["labels"]["app.kubernetes.io/component"] == json!("certs")
                    && !name_of(d).ends_with("-hook"))
        })
        .cloned()
        .collect();
    let configuration_name = format!("{release_ns}-{RELEASE}-webhook");
    let mut configuration = find(
        &webhook_docs,
        "MutatingWebhookConfiguration",
        &configuration_name,
    )
    .clone();
    for webhook in configuration["webhooks"].as_array_mut().unwrap() {
        webhook["namespaceSelector"] =
            json!({ "matchLabels": { "least-privilege-test": "matches-nothing" } });
    }
    cluster1_docs.push(configuration);
    cluster1_docs.extend(
        sync_docs
            .iter()
            .filter(|d| RBAC_KINDS.contains(&kind_of(d)))
            .cloned(),
    );
    let cluster2_docs: Vec<Value> = target_docs
        .iter()
        .filter(|d| RBAC_KINDS.contains(&kind_of(d)))
        .cloned()
        .collect();
    let mut cleanup = ClusterScoped {
        kubeconfig: env.kubeconfig().clone(),
        objects: Vec::new(),
    };
    for (context, docs) in [("cluster1", &cluster1_docs), ("cluster2", &cluster2_docs)] {
        for doc in docs.iter().filter(|d| {
            matches!(
                kind_of(d),
                "ClusterRole" | "ClusterRoleBinding" | "MutatingWebhookConfiguration"
            )
        }) {
            cleanup.objects.push((
                context.to_string(),
                format!("{}/{}", kind_of(doc).to_lowercase(), name_of(doc)),
            ));
        }
        apply(env, &scratch, context, docs).unwrap();
    }
    let applied: Vec<String> = cluster1_docs
        .iter()
        .map(|d| format!("cluster1 {}/{}", kind_of(d), name_of(d)))
        .chain(
            cluster2_docs
                .iter()
                .map(|d| format!("cluster2 {}/{}", kind_of(d), name_of(d))),
        )
        .collect();
    println!("applied: {applied:#?}");

    // Tokens of the charts' ServiceAccounts.
    let hour = Duration::from_secs(3600);
    let kubeconfig_of = async |cluster: &str, account: &str| {
        let text = testbed
            .service_account_kubeconfig(cluster, &release_ns, account, hour)
            .await
            .unwrap();
        let path = scratch.path(&format!("{cluster}-{account}.kubeconfig"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let certs_kubeconfig = kubeconfig_of("cluster1", &certs_sa).await;
    let sync_sa = format!("{RELEASE}-delegate-sync");
    let source_kubeconfig = kubeconfig_of("cluster1", &sync_sa).await;
    let target_kubeconfig = kubeconfig_of("cluster2", &format!("{RELEASE}-target")).await;

    // certs, as the renewal CronJob runs it (plus the loopback address the test bed's
    // apiserver calls the webhook on).
    let cronjob = find(&webhook_docs, "CronJob", &certs_sa);
    let mut certs_args = container_args(cronjob);
    certs_args.push("--name=127.0.0.1".into());
    let certs_binary = workspace_binary("certs", "certs");
    let mut certs_output = String::new();
    wait_until(
        "certs ensure as the CronJob's ServiceAccount",
        Duration::from_secs(20),
        async || {
            let out = Command::new(&certs_binary)
                .args(&certs_args)
                .env_clear()
                .env("KUBECONFIG", &certs_kubeconfig)
                .output()?;
            certs_output = text(&out);
            // RBAC objects take effect moments after they are stored.
            Ok((!out.status.success()).then(|| certs_output.clone()))
        },
    )
    .await
    .unwrap();
    println!("certs ensure (as {certs_sa}):\n{certs_output}");
    let secrets: Api<Secret> = system.api("cluster1").await.unwrap();
    let tls = secrets
        .get(&format!("{RELEASE}-webhook-tls"))
        .await
        .unwrap()
        .data
        .unwrap();
    // The kubelet's part: the Secret as files.
    let volume = scratch.path("webhook-tls");
    std::fs::create_dir_all(&volume).unwrap();
    for file in ["tls.crt", "tls.key"] {
        std::fs::write(volume.join(file), &tls[file].0).unwrap();
    }
    let configurations: Api<MutatingWebhookConfiguration> =
        Api::all(env.client("cluster1").await.unwrap());
    let ca_bundle = configurations
        .get(&configuration_name)
        .await
        .unwrap()
        .webhooks
        .unwrap()[0]
        .client_config
        .ca_bundle
        .clone()
        .expect("certs patched the caBundle");
    let ca_bundle = String::from_utf8(ca_bundle.0).unwrap();

    // The manifest key the webhook chart generated, shared by both pieces.
    let key_secret = find(
        &webhook_docs,
        "Secret",
        &format!("{RELEASE}-webhook-manifest-key"),
    );
    let key: k8s_openapi::ByteString =
        serde_json::from_value(key_secret["data"]["manifest-key"].clone()).unwrap();
    let key_file = scratch.path("manifest-key");
    std::fs::write(&key_file, &key.0).unwrap();

    // The webhook: rendered arguments, no credentials of any kind in its environment.
    let webhook_port = free_port();
    let webhook_admin = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut webhook_args = localize(
        &container_args(deployment),
        &[
            ("/etc/webhook/tls/", format!("{}/", volume.display())),
            (
                "/etc/webhook/manifest-key/",
                format!("{}/", scratch.0.display()),
            ),
            (
                "--secure-port=8443",
                format!("--secure-port={webhook_port}"),
            ),
            ("0.0.0.0:8080", webhook_admin.to_string()),
        ],
    );
    webhook_args.push("--bind-address=127.0.0.1".into());
    let mut webhook = Process::new(
        "webhook",
        &workspace_binary("webhook", "webhook"),
        webhook_args,
        scratch.path("webhook.log"),
    )
    .with_env_only(&[("POD_NAMESPACE", &release_ns)]);
    webhook.start();
    webhook
        .wait_ready(webhook_admin, Duration::from_secs(30))
        .await;
    let _registration =
        WebhookRegistration::create(env, "cluster1", webhook_port, &ca_bundle, opt_in)
            .await
            .unwrap();

    // delegate-sync: rendered arguments; the source (and target self) as its ServiceAccount
    // (KUBECONFIG stands in for in-cluster credentials), cluster2 as the target chart's.
    let sync_admin = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let sync_deployment = find(&sync_docs, "Deployment", &sync_sa);
    let sync_args = localize(
        &container_args(sync_deployment),
        &[
            (
                "/etc/delegate-sync/targets/cluster2/kubeconfig",
                target_kubeconfig.display().to_string(),
            ),
            (
                "/etc/delegate-sync/manifest-key/manifest-key",
                key_file.display().to_string(),
            ),
            ("0.0.0.0:8080", sync_admin.to_string()),
            ("$(POD_NAMESPACE)", release_ns.clone()),
        ],
    );
    let sync_binary = workspace_binary("delegate-sync", "delegate-sync");
    let source = source_kubeconfig.display().to_string();
    let new_sync = |pod_name: &'static str| {
        Process::new(
            "delegate-sync",
            &sync_binary,
            sync_args.clone(),
            scratch.path("delegate-sync.log"),
        )
        .with_env_only(&[
            ("KUBECONFIG", &source),
            ("POD_NAMESPACE", &release_ns),
            ("POD_NAME", pod_name),
        ])
    };
    let mut sync = new_sync("delegate-sync-0");
    sync.start();
    sync.wait_ready(sync_admin, Duration::from_secs(60)).await;

    let result = match journey(env, &work, &release_ns, &mut sync, sync_admin, new_sync).await {
        Ok(mut steps) => follow_the_pod(env, &follow.name).await.map(|more| {
            steps.extend(more);
            steps
        }),
        Err(e) => Err(e),
    };
    let sync_log = sync.log_text();
    let refused = forbidden_requests(&sync_log);
    let webhook_refused = forbidden_requests(&webhook.log_text());
    let (_, metrics) = http_get(sync_admin, "/metrics").await.unwrap_or_default();
    report(
        "least-privilege",
        &json!({
            "applied": applied,
            "forbidden_delegate_sync": refused,
            "forbidden_webhook": webhook_refused,
            "api_errors_total": metric_sum(&metrics, "delegate_sync_api_errors_total") + 0.0,
            "journey": result.as_ref().map_err(|e| format!("{e:#}")),
        }),
    );
    assert!(
        refused.is_empty(),
        "delegate-sync was refused by the charts' RBAC (missing in the chart):\n{}",
        refused.join("\n")
    );
    result.unwrap();
}

/// The lifecycle, through the webhook and delegate-sync running with the charts' rights.
async fn journey(
    env: &TestEnv,
    work: &e2e::TestNamespace,
    release_ns: &str,
    sync: &mut Process,
    sync_admin: std::net::SocketAddr,
    new_sync: impl Fn(&'static str) -> Process,
) -> anyhow::Result<Vec<String>> {
    let mut steps = Vec::new();
    let proxies: Api<Pod> = work.api("cluster1").await?;
    let cluster2: Api<Pod> = work.api("cluster2").await?;
    // The apiserver picks a new webhook registration up within moments.
    wait_until("webhook effective", Duration::from_secs(30), async || {
        let probe = proxies
            .create(
                &PostParams {
                    dry_run: true,
                    ..Default::default()
                },
                &elected("probe", None, None, 0),
            )
            .await?;
        Ok(annotation(&probe, contract::SOURCEPOD_MANIFEST)
            .is_none()
            .then(|| "not a proxy yet".into()))
    })
    .await?;

    let pods = [
        elected("c2-ok", Some("cluster2"), Some("3s"), 0),
        elected("c2-fail", Some("cluster2"), Some("3s"), 3),
        elected("self-ok", Some("cluster1"), Some("3s"), 0),
        elected("anywhere", None, Some("3s"), 0),
        elected("long", Some("cluster2"), None, 0),
        elected("lost", Some("cluster2"), None, 0),
        elected("nowhere", Some("cluster9"), Some("1s"), 0),
    ];
    for pod in &pods {
        let created = proxies.create(&PostParams::default(), pod).await?;
        ensure!(
            annotation(&created, contract::SOURCEPOD_MANIFEST).is_some(),
            "{} was not turned into a proxy",
            pod.metadata.name.as_deref().unwrap_or_default()
        );
    }
    steps.push("webhook (no credentials) turned 7 elected pods into proxies".to_string());

    let minute = Duration::from_secs(60);
    for (name, cluster, phase_wanted, code) in [
        ("c2-ok", "cluster2", "Succeeded", 0),
        ("c2-fail", "cluster2", "Failed", 3),
        ("self-ok", "cluster1", "Succeeded", 0),
        ("anywhere", "", "Succeeded", 0),
    ] {
        let pod = wait_pod(&proxies, name, phase_wanted, minute, |p| {
            p.is_some_and(|p| phase(p) == Some(phase_wanted))
        })
        .await
        .unwrap();
        let result = DelegateResult::decode(&annotation(&pod, RESULT).context("no result")?)?;
        let main = &result.containers["main"];
        ensure!(
            main.exit_code == code
                && main.message.as_deref() == Some(&format!("{name} says {code}")),
            "{name}: {result:?}"
        );
        let target = annotation(&pod, TARGET_CLUSTER).unwrap_or_default();
        ensure!(
            cluster.is_empty() || target == cluster,
            "{name} went to {target}"
        );
    }
    steps.push("pinned (cluster2, self) and capacity-placed proxies ended with their delegates' exit codes and messages".into());

    // Mirroring: an annotation written on the running delegate (as Argo 2.x writes outputs).
    let long = wait_pod(&proxies, "long", "delegate created", minute, |p| {
        p.and_then(|p| annotation(p, DELEGATE_NAME)).is_some()
    })
    .await
    .unwrap();
    let long_delegate = annotation(&long, DELEGATE_NAME).unwrap();
    wait_pod(&cluster2, &long_delegate, "Running", minute, |p| {
        p.is_some_and(|p| phase(p) == Some("Running"))
    })
    .await;
    cluster2
        .patch(
            &long_delegate,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "annotations": { "workflows.argoproj.io/outputs": "{\"result\":\"7\"}" } } })),
        )
        .await?;
    wait_pod(&proxies, "long", "outputs mirrored", minute, |p| {
        p.and_then(|p| annotation(p, "workflows.argoproj.io/outputs"))
            .as_deref()
            == Some("{\"result\":\"7\"}")
    })
    .await;
    steps.push("delegate annotations mirrored onto the proxy".into());

    // A delegate lost before it ended fails its proxy.
    let lost = wait_pod(&proxies, "lost", "delegate created", minute, |p| {
        p.and_then(|p| annotation(p, DELEGATE_NAME)).is_some()
    })
    .await
    .unwrap();
    let lost_delegate = annotation(&lost, DELEGATE_NAME).unwrap();
    wait_pod(&cluster2, &lost_delegate, "Running", minute, |p| {
        p.is_some_and(|p| phase(p) == Some("Running"))
    })
    .await;
    cluster2
        .delete(
            &lost_delegate,
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await?;
    let lost = wait_pod(&proxies, "lost", "Failed", minute, |p| {
        p.is_some_and(|p| phase(p) == Some("Failed"))
    })
    .await
    .unwrap();
    ensure!(
        annotation(&lost, RESULT).is_some_and(|r| r.contains("DelegateLost")),
        "{:?}",
        annotation(&lost, RESULT)
    );
    steps.push("a lost delegate failed its proxy (DelegateLost)".into());

    // Events on the proxies, written as delegate-sync's ServiceAccount.
    let events: Api<Event> = work.api("cluster1").await?;
    let mut reasons = Vec::new();
    wait_until("Events", Duration::from_secs(30), async || {
        reasons = events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|e| Some(format!("{}:{}", e.involved_object.name?, e.reason?)))
            .collect();
        let wanted = [
            "c2-ok:Scheduled",
            "c2-ok:DelegateSucceeded",
            "nowhere:UnknownCluster",
            "lost:DelegateLost",
        ];
        let missing: Vec<_> = wanted
            .iter()
            .filter(|w| !reasons.iter().any(|r| r == *w))
            .collect();
        Ok((!missing.is_empty()).then(|| format!("missing {missing:?} in {reasons:?}")))
    })
    .await?;
    steps.push(format!("Events recorded: {}", reasons.len()));

    // The leader Lease in the release namespace.
    let leases: Api<Lease> = Api::namespaced(env.client("cluster1").await?, release_ns);
    let lease = leases.get(&format!("{RELEASE}-delegate-sync")).await?;
    ensure!(
        lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some("delegate-sync-0"),
        "{lease:?}"
    );
    steps.push("leader Lease held".into());

    // Deleting a proxy deletes its delegate, then releases the proxy.
    proxies.delete("long", &DeleteParams::default()).await?;
    wait_pod(&cluster2, &long_delegate, "deleted", minute, |p| {
        p.is_none()
    })
    .await;
    wait_pod(&proxies, "long", "released", minute, |p| p.is_none()).await;
    steps.push("deleted proxy: delegate deleted, finalizer released".into());

    // Orphan sweep: delegate-sync killed, a proxy with a live delegate removed meanwhile
    // (finalizer dropped by an admin), a new replica (after the Lease expires) deletes the
    // delegate nobody waits for.
    proxies
        .create(
            &PostParams::default(),
            &elected("orphaned", Some("cluster2"), None, 0),
        )
        .await?;
    let orphaned = wait_pod(&proxies, "orphaned", "delegate created", minute, |p| {
        p.and_then(|p| annotation(p, DELEGATE_NAME)).is_some()
    })
    .await
    .unwrap();
    let orphan = annotation(&orphaned, DELEGATE_NAME).unwrap();
    wait_pod(&cluster2, &orphan, "exists", minute, |p| p.is_some()).await;
    sync.kill();
    proxies
        .patch(
            "orphaned",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
        )
        .await?;
    proxies.delete("orphaned", &DeleteParams::default()).await?;
    wait_pod(&proxies, "orphaned", "gone", minute, |p| p.is_none()).await;
    let mut replica = new_sync("delegate-sync-1");
    replica.start();
    wait_pod(&cluster2, &orphan, "swept", Duration::from_secs(90), |p| {
        p.is_none()
    })
    .await;
    replica
        .wait_ready(sync_admin, Duration::from_secs(10))
        .await;
    *sync = replica;
    steps.push("orphaned delegate swept after a SIGKILL and a new replica".into());

    // Everything else cleaned up.
    proxies
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels(&format!("{}=true", contract::PROXY_LABEL)),
        )
        .await?;
    wait_until("cleanup", minute, async || {
        let left = proxies.list(&ListParams::default()).await?.items.len()
            + cluster2.list(&ListParams::default()).await?.items.len();
        Ok((left > 0).then(|| format!("{left} pods left")))
    })
    .await?;
    steps.push("every proxy deleted: no pod left in either cluster".into());
    Ok(steps)
}

/// A pod in a namespace cluster2 does not have, referencing a Secret and a ConfigMap: its
/// namespace is created there, the two are copied, it succeeds, and the copies go with its
/// delegate.
async fn follow_the_pod(env: &TestEnv, namespace: &str) -> anyhow::Result<Vec<String>> {
    let cluster1 = env.client("cluster1").await?;
    let cluster2 = env.client("cluster2").await?;
    let params = PostParams::default();
    Api::<Secret>::namespaced(cluster1.clone(), namespace)
        .create(
            &params,
            &serde_json::from_value(
                json!({ "metadata": { "name": "lp-secret" }, "stringData": { "k": "v" } }),
            )?,
        )
        .await?;
    Api::<ConfigMap>::namespaced(cluster1.clone(), namespace)
        .create(
            &params,
            &serde_json::from_value(
                json!({ "metadata": { "name": "lp-config" }, "data": { "k": "v" } }),
            )?,
        )
        .await?;
    let mut pod = elected("follows", Some("cluster2"), Some("2s"), 0);
    let spec = pod.spec.as_mut().context("spec")?;
    spec.volumes = Some(serde_json::from_value(
        json!([{ "name": "s", "secret": { "secretName": "lp-secret" } }]),
    )?);
    spec.containers[0].env = Some(serde_json::from_value(json!([{
        "name": "K",
        "valueFrom": { "configMapKeyRef": { "name": "lp-config", "key": "k" } },
    }]))?);
    let proxies: Api<Pod> = Api::namespaced(cluster1.clone(), namespace);
    proxies.create(&params, &pod).await?;
    let minute = Duration::from_secs(60);
    wait_pod(&proxies, "follows", "Succeeded", minute, |p| {
        p.and_then(phase) == Some("Succeeded")
    })
    .await;
    let secrets2: Api<Secret> = Api::namespaced(cluster2.clone(), namespace);
    let config_maps2: Api<ConfigMap> = Api::namespaced(cluster2.clone(), namespace);
    ensure!(
        secrets2.get_opt("lp-secret").await?.is_some(),
        "Secret not copied"
    );
    ensure!(
        config_maps2.get_opt("lp-config").await?.is_some(),
        "ConfigMap not copied"
    );
    proxies.delete("follows", &DeleteParams::default()).await?;
    wait_until("copies gone with the delegate", minute, async || {
        let left = secrets2.get_opt("lp-secret").await?.is_some()
            || config_maps2.get_opt("lp-config").await?.is_some();
        Ok(left.then(|| "copies left".into()))
    })
    .await?;
    Ok(vec![
        "a pod of a namespace cluster1 alone has: namespace created in cluster2, Secret and \
         ConfigMap copied, Succeeded, copies gone with the delegate"
            .into(),
    ])
}

/// `kubectl exec` as a kubeconfig's identity; the output and whether it succeeded.
fn exec_as(
    kubeconfig: &Path,
    namespace: &str,
    pod: &str,
    stdin: &[u8],
    command: &[&str],
) -> (bool, String) {
    use std::io::Write as _;
    let mut child = Command::new(tool("kubectl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["exec", "-i", "-n", namespace, pod, "-c", "main", "--"])
        .args(command)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), text(&out))
}

/// The log relay's exec right, as the delegate-sync chart grants it: its ServiceAccount may
/// run `/proxy-waiter relay` in a proxy container on a real node, and nothing else there (the
/// chart's ValidatingAdmissionPolicy, on the real apiserver); the target chart's may read logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegate_sync_may_exec_only_the_relay_and_targets_only_read_logs() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = TestEnv::get().await.unwrap();
    env.require_real_nodes().unwrap();
    let testbed = env.testbed().unwrap();
    let version = env
        .client("cluster1")
        .await
        .unwrap()
        .apiserver_version()
        .await
        .unwrap()
        .git_version;
    let scratch = Scratch::new("least-privilege-exec");
    let system = env.namespace("lp-exec").await.unwrap();
    let release_ns = system.name.clone();
    let sync_docs = render(
        &scratch,
        "delegate-sync",
        &release_ns,
        &version,
        &json!({
            "clusterName": "cluster1",
            "manifestKey": { "existingSecret": "key" },
            "targets": [{ "name": "cluster2", "kubeconfigSecret": "cluster2-kubeconfig" }],
        }),
    )
    .unwrap();
    let policy_kinds = [
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ];
    let exec_policy: Vec<Value> = sync_docs
        .iter()
        .filter(|d| policy_kinds.contains(&kind_of(d)) && name_of(d).ends_with("-exec"))
        .cloned()
        .collect();
    assert_eq!(
        exec_policy.len(),
        2,
        "the chart renders the exec policy and its binding"
    );
    let cluster1_docs: Vec<Value> = sync_docs
        .iter()
        .filter(|d| RBAC_KINDS.contains(&kind_of(d)))
        .cloned()
        .chain(exec_policy)
        .collect();
    let target_docs: Vec<Value> = render(&scratch, "target", &release_ns, &version, &json!({}))
        .unwrap()
        .into_iter()
        .filter(|d| RBAC_KINDS.contains(&kind_of(d)))
        .collect();
    let mut cleanup = ClusterScoped {
        kubeconfig: env.kubeconfig().clone(),
        objects: Vec::new(),
    };
    for (context, docs) in [("cluster1", &cluster1_docs), ("cluster2", &target_docs)] {
        for doc in docs.iter().filter(|d| {
            matches!(kind_of(d), "ClusterRole" | "ClusterRoleBinding")
                || policy_kinds.contains(&kind_of(d))
        }) {
            cleanup.objects.push((
                context.to_string(),
                format!("{}/{}", kind_of(doc).to_lowercase(), name_of(doc)),
            ));
        }
        apply(env, &scratch, context, docs).unwrap();
    }

    // A proxy container as the webhook makes it, on a real node of each cluster.
    let waiter: Pod = serde_json::from_value(json!({
        "metadata": { "name": "waiter" },
        "spec": {
            "containers": [{
                "name": "main",
                "image": format!("proxy-waiter:{}", env!("CARGO_PKG_VERSION")),
                "env": [{ "name": "PROXY_WAITER_CONTAINER", "value": "main" }],
            }],
        },
    }))
    .unwrap();
    let mut waiter = waiter;
    e2e::nodes::on_real_nodes(waiter.spec.as_mut().unwrap());
    for cluster in ["cluster1", "cluster2"] {
        let pods: Api<Pod> = system.api(cluster).await.unwrap();
        pods.create(&PostParams::default(), &waiter).await.unwrap();
        wait_pod(&pods, "waiter", "running", Duration::from_secs(60), |p| {
            p.and_then(|p| p.status.as_ref()?.phase.as_deref()) == Some("Running")
        })
        .await;
    }

    let hour = Duration::from_secs(3600);
    let kubeconfig_of = async |cluster: &str, account: &str| {
        let text = testbed
            .service_account_kubeconfig(cluster, &release_ns, account, hour)
            .await
            .unwrap();
        let path = scratch.path(&format!("{cluster}-{account}.kubeconfig"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let source = kubeconfig_of("cluster1", &format!("{RELEASE}-delegate-sync")).await;
    let target = kubeconfig_of("cluster2", &format!("{RELEASE}-target")).await;

    // RBAC and the policy take effect moments after they are stored.
    let relay = ["/proxy-waiter", "relay", "--container", "main"];
    let mut said = String::new();
    wait_until(
        "the relay exec allowed",
        Duration::from_secs(20),
        async || {
            let (ok, out) = exec_as(&source, &release_ns, "waiter", b"END\n", &relay);
            said = out.clone();
            Ok((!ok).then_some(out))
        },
    )
    .await
    .unwrap();
    assert_eq!(said, "AT -\nAT -\n", "the waiter answered the relay");
    for command in [
        &["/proxy-waiter", "deliver", "{}"][..],
        &["/proxy-waiter", "relay", "--container", "other"],
        &["sh", "-c", "id"],
    ] {
        let (ok, out) = exec_as(&source, &release_ns, "waiter", b"", command);
        assert!(
            !ok && out.contains("delegate-sync may only exec /proxy-waiter relay"),
            "{command:?} must be refused by the policy: {out}"
        );
    }
    // The target chart's account reads logs, and execs nothing.
    let logs = Command::new(tool("kubectl"))
        .arg("--kubeconfig")
        .arg(&target)
        .args(["logs", "-n", &release_ns, "waiter", "-c", "main"])
        .output()
        .unwrap();
    assert!(logs.status.success(), "target reads logs: {}", text(&logs));
    let (ok, out) = exec_as(&target, &release_ns, "waiter", b"END\n", &relay);
    assert!(
        !ok && out.contains("forbidden"),
        "the target account execs nothing: {out}"
    );
    drop(cleanup);
}
