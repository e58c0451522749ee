//! The Helm charts (`charts/`): `helm lint --strict`, `helm template` for each supported
//! combination of values, every rendered manifest accepted by a real kube-apiserver
//! (`kubectl apply --server-side --dry-run=server`, strict field validation), the content that
//! matters asserted, and the RBAC that matters exercised for real: the certs hook's
//! by-name Secret and webhook-configuration rights, the target chart's token used the way
//! docs/install.md builds a kubeconfig from it, and delegate-sync's exec narrowed to the log
//! relay by its ValidatingAdmissionPolicy. Helm never reaches the network (no dependencies, no
//! repositories, its homes in a temporary directory).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use clap::Parser as _;
use e2e::{TestEnv, support::unique_name, testbed::workspace_target_dir};
use serde_json::{Value, json};

const WEBHOOK_NAME: &str = "proxies.multicluster.admiralty.io";

fn tool(name: &str) -> PathBuf {
    workspace_target_dir().join("tools/bin").join(name)
}

fn chart(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts")
        .join(name)
}

/// A scratch directory for values files, kubeconfigs and Helm's homes; removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(unique_name("charts-test"));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }

    fn write(&self, name: &str, contents: &str) -> anyhow::Result<PathBuf> {
        let path = self.0.join(name);
        std::fs::write(&path, contents)?;
        Ok(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs helm with homes of its own (no user repositories, plugins or cache).
fn helm(scratch: &Scratch, args: &[&str]) -> anyhow::Result<Output> {
    let home = scratch.0.join("helm");
    Command::new(tool("helm"))
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG")
        .output()
        .context("cannot run helm (run `make tools`)")
}

fn kubectl(env: &TestEnv, context: &str, args: &[&str]) -> anyhow::Result<Output> {
    Command::new(tool("kubectl"))
        .arg("--kubeconfig")
        .arg(env.kubeconfig())
        .args(["--context", context])
        .args(args)
        .output()
        .context("cannot run kubectl (run `make tools`)")
}

fn succeed(out: Output, what: &str) -> anyhow::Result<String> {
    ensure!(out.status.success(), "{what} failed:\n{}", text(&out));
    Ok(String::from_utf8(out.stdout)?)
}

/// The apiserver's version, so templates gated on it (the webhook's preStop sleep) render as a
/// real `helm install` would render them there.
async fn kube_version(env: &TestEnv) -> anyhow::Result<String> {
    Ok(env
        .client("cluster1")
        .await?
        .apiserver_version()
        .await?
        .git_version)
}

/// `helm template` of a chart with `values`, as documents.
fn render(
    scratch: &Scratch,
    chart_name: &str,
    release: &str,
    namespace: &str,
    kube_version: &str,
    values: &Value,
) -> anyhow::Result<Vec<Value>> {
    let file = scratch.write(
        &format!("{}.values.json", unique_name(chart_name)),
        &values.to_string(),
    )?;
    render_file(scratch, chart_name, release, namespace, kube_version, &file)
        .with_context(|| format!("values {values}"))
}

/// `helm template` of a chart with a values file, as documents.
fn render_file(
    scratch: &Scratch,
    chart_name: &str,
    release: &str,
    namespace: &str,
    kube_version: &str,
    values: &Path,
) -> anyhow::Result<Vec<Value>> {
    let chart = chart(chart_name);
    let out = helm(
        scratch,
        &[
            "template",
            release,
            chart.to_str().context("chart path")?,
            "--namespace",
            namespace,
            "--kube-version",
            kube_version,
            "--values",
            values.to_str().context("values path")?,
        ],
    )?;
    let yaml = succeed(
        out,
        &format!("helm template {chart_name} -f {}", values.display()),
    )?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&yaml)
        .with_context(|| format!("rendered {chart_name} is not YAML:\n{yaml}"))?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// `helm template` that must fail; returns helm's message.
fn render_error(scratch: &Scratch, chart_name: &str, values: &Value) -> anyhow::Result<String> {
    let file = scratch.write(
        &format!("{}.values.json", unique_name(chart_name)),
        &values.to_string(),
    )?;
    let chart = chart(chart_name);
    let out = helm(
        scratch,
        &[
            "template",
            "bad",
            chart.to_str().context("chart path")?,
            "--values",
            file.to_str().context("values path")?,
        ],
    )?;
    ensure!(
        !out.status.success(),
        "{chart_name} rendered with {values} but should have been refused:\n{}",
        text(&out)
    );
    Ok(text(&out))
}

/// Base64 as Kubernetes encodes Secret data.
fn base64_decode(text: &str) -> anyhow::Result<Vec<u8>> {
    let bytes: k8s_openapi::ByteString = serde_json::from_value(json!(text))?;
    Ok(bytes.0)
}

fn kind_of(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn name_of(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> anyhow::Result<&'a Value> {
    docs.iter()
        .find(|d| kind_of(d) == kind && name_of(d) == name)
        .with_context(|| {
            let rendered: Vec<String> = docs
                .iter()
                .map(|d| format!("{}/{}", kind_of(d), name_of(d)))
                .collect();
            format!("no {kind} {name} among {rendered:?}")
        })
}

fn all_of<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| kind_of(d) == kind).collect()
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

const CLUSTER_SCOPED: &[&str] = &[
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "MutatingWebhookConfiguration",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "Namespace",
];

/// Every document applied with a server-side dry-run in `namespace` of cluster1: schema, field
/// validation (strict), defaulting and admission of the real apiserver. Kinds whose CRDs the
/// test bed lacks (cert-manager's) are left out and returned.
fn dry_run(
    env: &TestEnv,
    scratch: &Scratch,
    docs: &[Value],
    namespace: &str,
) -> anyhow::Result<Vec<Value>> {
    let (crds, built_in): (Vec<&Value>, Vec<&Value>) = docs.iter().partition(|d| {
        d["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("cert-manager.io/"))
    });
    for doc in &built_in {
        let namespaced = !CLUSTER_SCOPED.contains(&kind_of(doc));
        let declared = doc["metadata"]["namespace"].as_str();
        ensure!(
            !namespaced || declared == Some(namespace),
            "{} {} should declare namespace {namespace}, has {declared:?}",
            kind_of(doc),
            name_of(doc)
        );
    }
    let list = json!({ "apiVersion": "v1", "kind": "List", "items": built_in });
    let file = scratch.write(
        &format!("{}.json", unique_name("dry-run")),
        &list.to_string(),
    )?;
    let out = kubectl(
        env,
        "cluster1",
        &[
            "apply",
            "--server-side",
            "--field-manager=charts-test",
            "--dry-run=server",
            "--validate=strict",
            "-n",
            namespace,
            "-f",
            file.to_str().context("path")?,
        ],
    )?;
    let applied = succeed(out, "kubectl apply --dry-run=server")?;
    ensure!(
        applied.lines().count() == built_in.len(),
        "the apiserver answered for {} objects, {} were rendered:\n{applied}",
        applied.lines().count(),
        built_in.len()
    );
    Ok(crds.into_iter().cloned().collect())
}

/// No RBAC rule of any rendered role grants a wildcard, or Secrets other than by name.
fn assert_no_wildcards(docs: &[Value]) -> anyhow::Result<()> {
    assert_no_wildcards_but(docs, |_| false)
}

/// As [`assert_no_wildcards`], but the roles `copies` picks may reach Secrets by kind (what
/// --copy-references needs, opt-in; their exact rules are the caller's to check).
fn assert_no_wildcards_but(docs: &[Value], copies: impl Fn(&Value) -> bool) -> anyhow::Result<()> {
    for role in docs
        .iter()
        .filter(|d| matches!(kind_of(d), "Role" | "ClusterRole"))
    {
        for rule in role["rules"].as_array().into_iter().flatten() {
            for field in ["verbs", "resources", "apiGroups", "resourceNames"] {
                ensure!(
                    !strings(&rule[field]).contains(&"*"),
                    "{} {} grants * in {field}: {rule}",
                    kind_of(role),
                    name_of(role)
                );
            }
            if strings(&rule["resources"]).contains(&"secrets") && !copies(role) {
                ensure!(
                    !strings(&rule["resourceNames"]).is_empty(),
                    "{} {} reaches every Secret: {rule}",
                    kind_of(role),
                    name_of(role)
                );
            }
        }
    }
    Ok(())
}

/// The rules of a role as (apiGroups, resources, resourceNames, verbs) sets, order-free.
fn rules(role: &Value) -> BTreeSet<(String, String, String, BTreeSet<String>)> {
    role["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                strings(&r["apiGroups"]).join(","),
                strings(&r["resources"]).join(","),
                strings(&r["resourceNames"]).join(","),
                set(&strings(&r["verbs"])),
            )
        })
        .collect()
}

fn rule(
    groups: &str,
    resources: &str,
    names: &str,
    verbs: &[&str],
) -> (String, String, String, BTreeSet<String>) {
    (groups.into(), resources.into(), names.into(), set(verbs))
}

/// The hardened pod and container security context both Deployments share.
fn assert_hardened(pod_spec: &Value, container: &Value) -> anyhow::Result<()> {
    let pod = &pod_spec["securityContext"];
    ensure!(pod["runAsNonRoot"] == json!(true), "pod: {pod}");
    ensure!(pod["runAsUser"] == json!(65532), "pod: {pod}");
    ensure!(
        pod["seccompProfile"]["type"] == json!("RuntimeDefault"),
        "pod: {pod}"
    );
    let c = &container["securityContext"];
    ensure!(c["runAsNonRoot"] == json!(true), "container: {c}");
    ensure!(c["runAsUser"] == json!(65532), "container: {c}");
    ensure!(c["readOnlyRootFilesystem"] == json!(true), "container: {c}");
    ensure!(
        c["allowPrivilegeEscalation"] == json!(false),
        "container: {c}"
    );
    ensure!(
        c["capabilities"]["drop"] == json!(["ALL"]),
        "container: {c}"
    );
    ensure!(
        c["seccompProfile"]["type"] == json!("RuntimeDefault"),
        "container: {c}"
    );
    for (probe, path) in [("livenessProbe", "/livez"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        ensure!(
            get["path"] == json!(path) && get["port"] == json!("admin"),
            "{probe}: {get}"
        );
        ensure!(
            get["scheme"] == json!("HTTP"),
            "{probe} is on the plain admin port: {get}"
        );
    }
    let admin = container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == json!("admin"))
        .context("no admin port")?;
    ensure!(admin["containerPort"] == json!(8080), "{admin}");
    Ok(())
}

fn args(container: &Value) -> Vec<&str> {
    strings(&container["args"])
}

fn volume_secret<'a>(pod_spec: &'a Value, volume: &str) -> Option<&'a str> {
    pod_spec["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == json!(volume))?["secret"]["secretName"]
        .as_str()
}

fn webhook_values(mode: &str, extra: Value) -> Value {
    let mut values = json!({ "certificates": { "mode": mode } });
    merge(&mut values, extra);
    values
}

fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(base), Value::Object(extra)) => {
            for (k, v) in extra {
                merge(base.entry(k).or_insert(Value::Null), v);
            }
        }
        (base, extra) => *base = extra,
    }
}

/// `base` with `extra` merged in.
fn merged(mut base: Value, extra: Value) -> Value {
    merge(&mut base, extra);
    base
}

fn delegate_sync_values(targets: Value) -> Value {
    json!({
        "clusterName": "cluster1",
        "manifestKey": { "existingSecret": "webhook-manifest-key" },
        "targets": targets,
    })
}

/// Valid delegate-sync values but for `logRelay`.
fn log_relay_values(log_relay: Value) -> Value {
    let mut values = delegate_sync_values(json!([{ "name": "cluster1", "self": true }]));
    merge(&mut values, json!({ "logRelay": log_relay }));
    values
}

#[test]
fn every_chart_passes_helm_lint_strict() -> anyhow::Result<()> {
    let scratch = Scratch::new()?;
    let cases = [
        ("webhook", webhook_values("certs-tool", json!({}))),
        (
            "webhook",
            webhook_values(
                "provided",
                json!({ "certificates": { "provided": { "secretName": "tls", "caBundle": "Q0E=" } } }),
            ),
        ),
        ("webhook", webhook_values("cert-manager", json!({}))),
        (
            "delegate-sync",
            delegate_sync_values(json!([
                { "name": "cluster1", "self": true },
                { "name": "cluster2", "kubeconfigSecret": "cluster2-kubeconfig" },
            ])),
        ),
        (
            "delegate-sync",
            log_relay_values(json!({ "enabled": false, "maxStreams": 0 })),
        ),
        (
            "delegate-sync",
            merged(
                log_relay_values(json!({ "enabled": true })),
                json!({
                    "createNamespaces": true,
                    "copyReferences": { "namespaces": ["blog", "shop"] },
                }),
            ),
        ),
        ("target", json!({ "namespaces": ["blog"] })),
        (
            "target",
            json!({ "tokenRequest": { "enabled": true, "expirationSeconds": 600 } }),
        ),
        (
            "target",
            json!({ "copies": { "enabled": true, "createNamespaces": true } }),
        ),
    ];
    for (chart_name, values) in cases {
        let file = scratch.write(
            &format!("{}.json", unique_name("lint")),
            &values.to_string(),
        )?;
        let chart = chart(chart_name);
        let out = helm(
            &scratch,
            &[
                "lint",
                "--strict",
                chart.to_str().context("path")?,
                "--values",
                file.to_str().context("path")?,
            ],
        )?;
        succeed(
            out,
            &format!("helm lint --strict {chart_name} with {values}"),
        )?;
    }
    Ok(())
}

/// Each chart's `ci/*-values.yaml` (the files chart-testing's `ct lint` installs the chart
/// with): `helm lint --strict -f` and `helm template -f` pass with every one of them, each
/// chart has one, and the delegate-sync and target charts have one that turns the copies on.
#[test]
fn every_chart_lints_and_templates_with_each_of_its_ci_values_files() -> anyhow::Result<()> {
    let scratch = Scratch::new()?;
    for chart_name in ["webhook", "delegate-sync", "target"] {
        let chart = chart(chart_name);
        let mut files = Vec::new();
        for entry in std::fs::read_dir(chart.join("ci"))
            .with_context(|| format!("{chart_name} has no ci/ directory"))?
        {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .context("file name")?
                .to_string();
            // chart-testing only reads ci/*-values.yaml: anything else there is silently unused.
            ensure!(
                name.ends_with("-values.yaml"),
                "{chart_name}/ci/{name}: chart-testing only reads *-values.yaml"
            );
            files.push(path);
        }
        files.sort();
        ensure!(!files.is_empty(), "{chart_name}/ci/ holds no values file");
        let mut copies = false;
        for file in &files {
            let what = format!("{chart_name} -f {}", file.display());
            let out = helm(
                &scratch,
                &[
                    "lint",
                    "--strict",
                    chart.to_str().context("path")?,
                    "--values",
                    file.to_str().context("path")?,
                ],
            )?;
            succeed(out, &format!("helm lint --strict {what}"))?;
            let docs = render_file(
                &scratch,
                chart_name,
                "ci",
                "multicluster",
                TEMPLATE_KUBE_VERSION,
                file,
            )?;
            ensure!(!docs.is_empty(), "{what} renders nothing");
            match chart_name {
                "delegate-sync" => {
                    let deployment = find(&docs, "Deployment", "ci-delegate-sync")?;
                    let args = args(&deployment["spec"]["template"]["spec"]["containers"][0]);
                    let on = args.contains(&"--copy-references");
                    ensure!(
                        on == args.contains(&"--create-namespaces"),
                        "{what}: turn both copies options on, or neither: {args:?}"
                    );
                    ensure!(
                        on == find(&docs, "Role", "ci-delegate-sync-copy-references").is_ok(),
                        "{what}: --copy-references without its Roles, or the reverse"
                    );
                    copies |= on;
                    assert_no_wildcards_but(&docs, |role| {
                        name_of(role) == "ci-delegate-sync-copy-references"
                    })
                    .with_context(|| what.clone())?;
                }
                "target" => {
                    let name = "multicluster-ci-target-copies";
                    copies |= find(&docs, "ClusterRole", name).is_ok();
                    assert_no_wildcards_but(&docs, |role| name_of(role) == name)
                        .with_context(|| what.clone())?;
                }
                _ => assert_no_wildcards(&docs).with_context(|| what.clone())?,
            }
        }
        ensure!(
            chart_name == "webhook" || copies,
            "no ci/ values file of {chart_name} turns the copies on"
        );
    }
    Ok(())
}

#[test]
fn schemas_and_templates_refuse_mistakes_with_a_clear_message() -> anyhow::Result<()> {
    let scratch = Scratch::new()?;
    let cases = [
        (
            "webhook",
            json!({ "replicas": 3 }),
            "additional properties 'replicas'",
        ),
        (
            "webhook",
            json!({ "certificates": { "mode": "self-signed" } }),
            "/certificates/mode",
        ),
        (
            "webhook",
            json!({ "admission": { "failurePolicy": "Retry" } }),
            "/admission/failurePolicy",
        ),
        (
            "webhook",
            json!({ "certificates": { "mode": "provided", "provided": { "secretName": "tls" } } }),
            "/certificates/provided/caBundle",
        ),
        (
            "webhook",
            json!({ "certificates": { "certsTool": { "validityDays": 30, "renewBeforeDays": 30 } } }),
            "renewBeforeDays must be less than validityDays",
        ),
        ("delegate-sync", json!({}), "/clusterName"),
        (
            "delegate-sync",
            json!({ "clusterName": "c1", "targets": [{ "name": "c1", "self": true }] }),
            "/manifestKey",
        ),
        (
            "delegate-sync",
            delegate_sync_values(json!([{ "name": "c2", "self": true, "kubeconfigSecret": "x" }])),
            "/targets/0",
        ),
        (
            "delegate-sync",
            delegate_sync_values(json!([{ "name": "Cluster_2", "kubeconfigSecret": "x" }])),
            "/targets/0",
        ),
        (
            "delegate-sync",
            delegate_sync_values(json!([
                { "name": "c2", "kubeconfigSecret": "x" },
                { "name": "c2", "kubeconfigSecret": "y" },
            ])),
            "\"c2\" is listed twice",
        ),
        (
            "delegate-sync",
            delegate_sync_values(json!([
                { "name": "a", "self": true },
                { "name": "b", "self": true },
            ])),
            "at most one target can be self",
        ),
        (
            "delegate-sync",
            json!({ "clusterLostTimeout": "fifteen minutes" }),
            "/clusterLostTimeout",
        ),
        (
            "delegate-sync",
            log_relay_values(json!({ "maxStreams": "many" })),
            "/logRelay/maxStreams",
        ),
        (
            "delegate-sync",
            log_relay_values(json!({ "maxStreams": -1 })),
            "/logRelay/maxStreams",
        ),
        (
            "delegate-sync",
            log_relay_values(json!({ "enabled": "yes" })),
            "/logRelay/enabled",
        ),
        (
            "delegate-sync",
            log_relay_values(json!({ "maxStream": 5 })),
            "additional properties 'maxStream'",
        ),
        (
            "target",
            json!({ "namespaces": ["Not A Name"] }),
            "/namespaces/0",
        ),
        (
            "target",
            json!({ "rbac": { "create": false } }),
            "additional properties 'rbac'",
        ),
        (
            "target",
            json!({ "tokenRequest": { "expirationSeconds": 0 } }),
            "/tokenRequest/expirationSeconds",
        ),
        (
            "target",
            json!({ "tokenRequest": { "enabled": "yes" } }),
            "/tokenRequest/enabled",
        ),
        (
            "target",
            json!({ "tokenRequest": { "lifetime": "1h" } }),
            "additional properties 'lifetime'",
        ),
        (
            "delegate-sync",
            merged(
                log_relay_values(json!({})),
                json!({ "createNamespaces": "yes" }),
            ),
            "/createNamespaces",
        ),
        (
            "delegate-sync",
            merged(
                log_relay_values(json!({})),
                json!({ "copyReferences": ["blog"] }),
            ),
            "/copyReferences",
        ),
        (
            "delegate-sync",
            merged(
                log_relay_values(json!({})),
                json!({ "copyReferences": { "namespaces": "blog" } }),
            ),
            "/copyReferences/namespaces",
        ),
        (
            "delegate-sync",
            merged(
                log_relay_values(json!({})),
                json!({ "copyReferences": { "namespaces": ["blog", "Not A Name"] } }),
            ),
            "/copyReferences/namespaces/1",
        ),
        (
            "delegate-sync",
            merged(
                log_relay_values(json!({})),
                json!({ "copyReferences": { "namespaces": ["blog", "blog"] } }),
            ),
            "/copyReferences/namespaces",
        ),
        (
            "delegate-sync",
            merged(
                log_relay_values(json!({})),
                json!({ "copyReferences": { "enabled": true, "namespaces": ["blog"] } }),
            ),
            "additional properties 'enabled'",
        ),
        (
            "target",
            json!({ "copies": { "enabled": "yes" } }),
            "/copies/enabled",
        ),
        (
            "target",
            json!({ "copies": { "createNamespaces": 1 } }),
            "/copies/createNamespaces",
        ),
        ("target", json!({ "copies": true }), "/copies"),
        (
            "target",
            json!({ "copies": { "namespaces": ["blog"] } }),
            "additional properties 'namespaces'",
        ),
    ];
    for (chart_name, values, expected) in cases {
        let message = render_error(&scratch, chart_name, &values)?;
        ensure!(
            message.contains(expected),
            "{chart_name} with {values}: expected {expected:?} in:\n{message}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn webhook_renders_in_each_certificate_mode_and_the_apiserver_accepts_it()
-> anyhow::Result<()> {
    let env = TestEnv::get().await?;
    let version = kube_version(env).await?;
    let scratch = Scratch::new()?;
    let ns = env.namespace("charts-webhook").await?;
    let release = "mc";
    let fullname = "mc-webhook";
    let configuration = format!("{}-{fullname}", ns.name);
    let service_dns = format!("{fullname}.{}.svc", ns.name);

    let modes = [
        ("certs-tool", json!({})),
        (
            "provided",
            json!({
                "certificates": { "provided": { "secretName": "my-tls", "caBundle": "Q0EgYnVuZGxl" } },
                // A selector of the user's own: the exclusions are added to it, not replaced.
                "admission": {
                    "namespaceSelector": {
                        // Helm merges maps with the defaults: null drops the default label.
                        "matchLabels": { "team": "a", "multicluster-scheduler": null },
                        "matchExpressions": [{ "key": "tier", "operator": "In", "values": ["batch"] }],
                    },
                    "excludedNamespaces": ["monitoring"],
                    "failurePolicy": "Ignore",
                },
                "manifestKey": { "existingSecret": "shared-key" },
                "preStopSleepSeconds": 0,
                "waiter": {
                    "nodeSelector": { "pool": "proxies" },
                    "tolerations": [
                        { "key": "pool", "value": "proxies", "effect": "NoSchedule" },
                        { "key": "dedicated" },
                    ],
                },
            }),
        ),
        ("cert-manager", json!({ "replicaCount": 1 })),
    ];
    for (mode, extra) in modes {
        let values = webhook_values(mode, extra.clone());
        let docs = render(&scratch, "webhook", release, &ns.name, &version, &values)?;
        let context = || format!("webhook chart, certificates.mode={mode}");

        // The registration: pods v1 CREATE only, kube-system and the release namespace always out.
        let mwc =
            find(&docs, "MutatingWebhookConfiguration", &configuration).with_context(context)?;
        let webhook = &mwc["webhooks"][0];
        ensure!(webhook["name"] == json!(WEBHOOK_NAME), "{webhook}");
        ensure!(
            webhook["rules"]
                == json!([{ "operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced" }]),
            "{mode}: rules {}",
            webhook["rules"]
        );
        ensure!(webhook["admissionReviewVersions"] == json!(["v1"]));
        ensure!(webhook["sideEffects"] == json!("None"));
        ensure!(webhook["matchPolicy"] == json!("Equivalent"));
        ensure!(webhook["reinvocationPolicy"] == json!("IfNeeded"));
        ensure!(webhook["timeoutSeconds"] == json!(5));
        let policy = if mode == "provided" { "Ignore" } else { "Fail" };
        ensure!(webhook["failurePolicy"] == json!(policy), "{webhook}");
        ensure!(
            webhook["clientConfig"]["service"]
                == json!({ "name": fullname, "namespace": ns.name, "path": "/mutate", "port": 443 }),
            "{mode}: {}",
            webhook["clientConfig"]
        );
        let selector = &webhook["namespaceSelector"];
        let expressions = selector["matchExpressions"]
            .as_array()
            .context("no matchExpressions")?;
        let exclusion = expressions
            .iter()
            .find(|e| e["key"] == json!("kubernetes.io/metadata.name"))
            .with_context(|| format!("{mode}: no namespace exclusion in {selector}"))?;
        ensure!(exclusion["operator"] == json!("NotIn"), "{exclusion}");
        let excluded = strings(&exclusion["values"]);
        ensure!(
            excluded.contains(&"kube-system") && excluded.contains(&ns.name.as_str()),
            "{mode}: kube-system and {} must always be excluded: {exclusion}",
            ns.name
        );
        if mode == "provided" {
            ensure!(excluded.contains(&"monitoring"), "{exclusion}");
            ensure!(
                selector["matchLabels"] == json!({ "team": "a" }),
                "{selector}"
            );
            ensure!(
                expressions.iter().any(|e| e["key"] == json!("tier")),
                "the user's expressions are kept: {selector}"
            );
            ensure!(webhook["clientConfig"]["caBundle"] == json!("Q0EgYnVuZGxl"));
        } else {
            ensure!(
                selector["matchLabels"] == json!({ "multicluster-scheduler": "enabled" }),
                "{selector}"
            );
            ensure!(
                webhook["clientConfig"].get("caBundle").is_none(),
                "{mode}: the caBundle is not the chart's to render: {webhook}"
            );
        }

        // The Deployment: hardened, no API access, the binary's real flags.
        let deployment = find(&docs, "Deployment", fullname).with_context(context)?;
        let replicas = if mode == "cert-manager" { 1 } else { 2 };
        ensure!(deployment["spec"]["replicas"] == json!(replicas));
        let pod = &deployment["spec"]["template"]["spec"];
        ensure!(pod["automountServiceAccountToken"] == json!(false), "{pod}");
        let container = &pod["containers"][0];
        assert_hardened(pod, container).with_context(context)?;
        let https = container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == json!("https"))
            .context("no https port")?;
        ensure!(https["containerPort"] == json!(8443));
        let args = args(container);
        let key_secret = if mode == "provided" {
            "shared-key"
        } else {
            "mc-webhook-manifest-key"
        };
        for flag in [
            "--secure-port=8443",
            "--tls-cert-file=/etc/webhook/tls/tls.crt",
            "--tls-private-key-file=/etc/webhook/tls/tls.key",
            "--manifest-key-file=/etc/webhook/manifest-key/manifest-key",
            "--waiter-image=proxy-waiter:0.1.0",
            "--admin-address=0.0.0.0:8080",
            "--log-format=json",
        ] {
            ensure!(args.contains(&flag), "{mode}: {flag} missing from {args:?}");
        }
        // Where proxies run: flags only when set, in the syntax the binary parses.
        let placement: Vec<&&str> = args.iter().filter(|a| a.starts_with("--proxy-")).collect();
        if mode == "provided" {
            ensure!(
                placement
                    == [
                        &"--proxy-node-selector=pool=proxies",
                        &"--proxy-tolerations=pool=proxies:NoSchedule,dedicated"
                    ],
                "{placement:?}"
            );
            let tolerations: webhook::args::Tolerations = "pool=proxies:NoSchedule,dedicated"
                .parse()
                .map_err(anyhow::Error::msg)?;
            ensure!(
                serde_json::to_value(&tolerations.0)?
                    == json!([
                        { "key": "pool", "operator": "Equal", "value": "proxies", "effect": "NoSchedule" },
                        { "key": "dedicated", "operator": "Exists" },
                    ])
            );
        } else {
            ensure!(placement.is_empty(), "{mode}: {placement:?}");
        }
        ensure!(
            container["env"]
                == json!([{ "name": "POD_NAMESPACE", "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } } }]),
            "{}",
            container["env"]
        );
        let tls_secret = if mode == "provided" {
            "my-tls"
        } else {
            "mc-webhook-tls"
        };
        ensure!(volume_secret(pod, "tls") == Some(tls_secret), "{pod}");
        ensure!(
            volume_secret(pod, "manifest-key") == Some(key_secret),
            "{pod}"
        );
        let sleep = &container["lifecycle"]["preStop"]["sleep"]["seconds"];
        ensure!(
            *sleep
                == if mode == "provided" {
                    Value::Null
                } else {
                    json!(5)
                },
            "{mode}: preStop {sleep}"
        );
        let anti = &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
            [0];
        ensure!(
            anti["podAffinityTerm"]["topologyKey"] == json!("kubernetes.io/hostname"),
            "soft anti-affinity: {}",
            pod["affinity"]
        );

        let service = find(&docs, "Service", fullname)?;
        ensure!(
            service["spec"]["ports"][0]
                == json!({ "name": "https", "port": 443, "targetPort": "https", "protocol": "TCP" }),
            "{service}"
        );
        let pdbs = all_of(&docs, "PodDisruptionBudget");
        if replicas > 1 {
            ensure!(pdbs.len() == 1 && pdbs[0]["spec"]["minAvailable"] == json!(1));
        } else {
            ensure!(pdbs.is_empty(), "a PDB on one replica blocks drains");
        }
        let service_account = find(&docs, "ServiceAccount", fullname)?;
        ensure!(service_account["automountServiceAccountToken"] == json!(false));

        // The manifest key: generated (48 characters) unless an existing Secret is named.
        let secrets = all_of(&docs, "Secret");
        if mode == "provided" {
            ensure!(secrets.is_empty(), "{secrets:?}");
        } else {
            let secret = find(&docs, "Secret", "mc-webhook-manifest-key")?;
            ensure!(secret["metadata"]["annotations"]["helm.sh/resource-policy"] == json!("keep"));
            let encoded = secret["data"]["manifest-key"].as_str().context("no key")?;
            let key = base64_decode(encoded)?;
            ensure!(key.len() == 48, "manifest key of {} bytes", key.len());
        }

        assert_no_wildcards(&docs).with_context(context)?;
        match mode {
            "certs-tool" => assert_certs_tool(&docs, &ns.name, &configuration, &service_dns)?,
            "cert-manager" => {
                let certificate = find(&docs, "Certificate", "mc-webhook-serving")?;
                ensure!(
                    certificate["spec"]["secretName"] == json!("mc-webhook-tls"),
                    "{certificate}"
                );
                ensure!(
                    strings(&certificate["spec"]["dnsNames"]).contains(&service_dns.as_str()),
                    "{certificate}"
                );
                find(&docs, "Issuer", "mc-webhook-selfsigned")?;
                ensure!(
                    mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
                        == json!(format!("{}/mc-webhook-serving", ns.name)),
                    "{}",
                    mwc["metadata"]
                );
                ensure!(all_of(&docs, "Job").is_empty() && all_of(&docs, "CronJob").is_empty());
            }
            _ => {
                ensure!(all_of(&docs, "Job").is_empty() && all_of(&docs, "CronJob").is_empty());
                ensure!(all_of(&docs, "Certificate").is_empty());
            }
        }

        let left_out = dry_run(env, &scratch, &docs, &ns.name).with_context(context)?;
        let left_out: BTreeSet<&str> = left_out.iter().map(kind_of).collect();
        let expected: BTreeSet<&str> = if mode == "cert-manager" {
            ["Certificate", "Issuer"].into()
        } else {
            BTreeSet::new()
        };
        ensure!(
            left_out == expected,
            "{mode}: left out of the dry-run: {left_out:?}"
        );
    }
    Ok(())
}

fn hook(doc: &Value) -> &str {
    doc["metadata"]["annotations"]["helm.sh/hook"]
        .as_str()
        .unwrap_or_default()
}

/// certs-tool mode: Secrets first (pre hook), caBundle once the configuration exists (post
/// hook), renewal by a CronJob; each with rights on its two Secrets and one configuration only.
fn assert_certs_tool(
    docs: &[Value],
    namespace: &str,
    configuration: &str,
    service_dns: &str,
) -> anyhow::Result<()> {
    let secret_flag = format!("--secret={namespace}/mc-webhook-tls");
    let name_flag = format!("--name={service_dns}");
    let configuration_flag = format!("--webhook-configuration={configuration}");
    let job_args = |doc: &Value| -> Vec<String> {
        args(&doc["spec"]["template"]["spec"]["containers"][0])
            .into_iter()
            .map(String::from)
            .collect()
    };
    let pre = find(docs, "Job", "mc-webhook-certs-pre")?;
    ensure!(hook(pre) == "pre-install,pre-upgrade", "{pre}");
    let pre_args = job_args(pre);
    ensure!(pre_args[0] == "ensure", "{pre_args:?}");
    ensure!(
        pre_args.contains(&secret_flag) && pre_args.contains(&name_flag),
        "{pre_args:?}"
    );
    ensure!(
        !pre_args
            .iter()
            .any(|a| a.starts_with("--webhook-configuration")),
        "the configuration does not exist before install: {pre_args:?}"
    );
    let post = find(docs, "Job", "mc-webhook-certs-post")?;
    ensure!(hook(post) == "post-install,post-upgrade", "{post}");
    let post_args = job_args(post);
    ensure!(
        post_args.contains(&secret_flag) && post_args.contains(&configuration_flag),
        "{post_args:?}"
    );
    let cron = find(docs, "CronJob", "mc-webhook-certs")?;
    let cron_args: Vec<&str> =
        args(&cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]);
    ensure!(
        cron_args.contains(&configuration_flag.as_str()),
        "{cron_args:?}"
    );
    for job in [pre, post] {
        let pod = &job["spec"]["template"]["spec"];
        ensure!(
            pod["serviceAccountName"] == json!("mc-webhook-certs-hook"),
            "{pod}"
        );
        ensure!(pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] == json!(true));
    }

    let secrets_rule = rule(
        "",
        "secrets",
        "mc-webhook-tls,mc-webhook-tls-ca",
        &["get", "create", "patch"],
    );
    let configuration_rule = rule(
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        configuration,
        &["get", "patch"],
    );
    for name in ["mc-webhook-certs-hook", "mc-webhook-certs"] {
        let role = find(docs, "Role", name)?;
        ensure!(
            rules(role) == BTreeSet::from([secrets_rule.clone()]),
            "Role {name}: {}",
            role["rules"]
        );
        let cluster_role = find(docs, "ClusterRole", &format!("{namespace}-{name}"))?;
        ensure!(
            rules(cluster_role) == BTreeSet::from([configuration_rule.clone()]),
            "ClusterRole {name}: {}",
            cluster_role["rules"]
        );
    }
    // Hook RBAC lives only while hooks run; the configuration rights only for the post hook.
    let hook_role = find(docs, "Role", "mc-webhook-certs-hook")?;
    ensure!(hook(hook_role) == "pre-install,pre-upgrade,post-install,post-upgrade");
    ensure!(
        hook(find(
            docs,
            "ClusterRole",
            &format!("{namespace}-mc-webhook-certs-hook")
        )?) == "post-install,post-upgrade"
    );
    for doc in docs.iter().filter(|d| !hook(d).is_empty()) {
        ensure!(
            doc["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
                == json!("before-hook-creation,hook-succeeded"),
            "{} {} outlives its hook",
            kind_of(doc),
            name_of(doc)
        );
    }
    Ok(())
}

/// Cluster-scoped objects a test created for real; deleted on drop, pass or fail.
struct ClusterScoped<'a> {
    env: &'a TestEnv,
    context: &'static str,
    objects: Vec<String>,
}

impl Drop for ClusterScoped<'_> {
    fn drop(&mut self) {
        for object in &self.objects {
            let _ = kubectl(
                self.env,
                self.context,
                &["delete", object, "--ignore-not-found", "--wait=false"],
            );
        }
    }
}

/// The certs hook's RBAC applied for real, then exercised as its ServiceAccount with the calls
/// `certs ensure` makes: server-side apply of the two Secrets (creating them), reads, and the
/// caBundle JSON patch of the configuration; anything else is forbidden.
#[tokio::test]
async fn certs_hook_can_write_its_two_secrets_and_patch_its_configuration_only()
-> anyhow::Result<()> {
    let env = TestEnv::get().await?;
    let version = kube_version(env).await?;
    let scratch = Scratch::new()?;
    let ns = env.namespace("charts-certs").await?;
    let configuration = format!("{}-mc-webhook", ns.name);
    // Selects no namespace and fails open: a real registration must not disturb other tests.
    let values = webhook_values(
        "certs-tool",
        json!({ "admission": {
            "namespaceSelector": { "matchLabels": { "charts-test": ns.name } },
            "failurePolicy": "Ignore",
        }}),
    );
    let docs = render(&scratch, "webhook", "mc", &ns.name, &version, &values)?;
    let wanted: Vec<Value> = docs
        .iter()
        .filter(|d| {
            (hook(d).contains("install") && !matches!(kind_of(d), "Job"))
                || kind_of(d) == "MutatingWebhookConfiguration"
        })
        .cloned()
        .collect();
    let kinds: BTreeSet<&str> = wanted.iter().map(kind_of).collect();
    ensure!(
        kinds
            == BTreeSet::from([
                "ClusterRole",
                "ClusterRoleBinding",
                "MutatingWebhookConfiguration",
                "Role",
                "RoleBinding",
                "ServiceAccount"
            ]),
        "{kinds:?}"
    );
    let _cleanup = ClusterScoped {
        env,
        context: "cluster1",
        objects: wanted
            .iter()
            .filter(|d| CLUSTER_SCOPED.contains(&kind_of(d)))
            .map(|d| format!("{}/{}", kind_of(d).to_lowercase(), name_of(d)))
            .collect(),
    };
    let file = scratch.write(
        "hook-rbac.json",
        &json!({ "apiVersion": "v1", "kind": "List", "items": wanted }).to_string(),
    )?;
    succeed(
        kubectl(
            env,
            "cluster1",
            &["apply", "-f", file.to_str().context("path")?],
        )?,
        "applying the certs hook's RBAC",
    )?;

    let as_hook = format!(
        "--as=system:serviceaccount:{}:mc-webhook-certs-hook",
        ns.name
    );
    let secret = |name: &str| -> anyhow::Result<PathBuf> {
        scratch.write(
            &format!("{name}.json"),
            &json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": { "name": name, "namespace": ns.name },
                "type": "Opaque", "stringData": { "ca.crt": "x" },
            })
            .to_string(),
        )
    };
    let apply_as_hook = |name: &str| -> anyhow::Result<Output> {
        let path = secret(name)?;
        kubectl(
            env,
            "cluster1",
            &[
                &as_hook,
                "apply",
                "--server-side",
                "--field-manager=multicluster-certs",
                "-f",
                path.to_str().context("path")?,
            ],
        )
    };
    // Created by server-side apply, then applied again (the renewal's update).
    for name in ["mc-webhook-tls-ca", "mc-webhook-tls", "mc-webhook-tls"] {
        succeed(
            apply_as_hook(name)?,
            &format!("server-side apply of {name} as the hook"),
        )?;
    }
    succeed(
        kubectl(
            env,
            "cluster1",
            &[&as_hook, "-n", &ns.name, "get", "secret", "mc-webhook-tls"],
        )?,
        "get of the TLS Secret as the hook",
    )?;
    let forbidden = |out: Output, what: &str| -> anyhow::Result<()> {
        let message = text(&out);
        ensure!(
            !out.status.success() && message.contains("Forbidden"),
            "{what} should be forbidden:\n{message}"
        );
        Ok(())
    };
    forbidden(apply_as_hook("someone-elses")?, "creating another Secret")?;
    forbidden(
        kubectl(
            env,
            "cluster1",
            &[&as_hook, "-n", &ns.name, "get", "secrets"],
        )?,
        "listing Secrets",
    )?;
    forbidden(
        kubectl(
            env,
            "cluster1",
            &[
                &as_hook,
                "-n",
                &ns.name,
                "delete",
                "secret",
                "mc-webhook-tls",
            ],
        )?,
        "deleting the TLS Secret",
    )?;

    let patch = json!([
        { "op": "test", "path": "/webhooks/0/name", "value": WEBHOOK_NAME },
        { "op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": "Q0E=" },
    ])
    .to_string();
    succeed(
        kubectl(
            env,
            "cluster1",
            &[
                &as_hook,
                "patch",
                "mutatingwebhookconfiguration",
                &configuration,
                "--type=json",
                "-p",
                &patch,
            ],
        )?,
        "the caBundle patch as the hook",
    )?;
    let bundle = succeed(
        kubectl(
            env,
            "cluster1",
            &[
                "get",
                "mutatingwebhookconfiguration",
                &configuration,
                "-o",
                "jsonpath={.webhooks[0].clientConfig.caBundle}",
            ],
        )?,
        "reading the caBundle",
    )?;
    ensure!(bundle == "Q0E=", "caBundle {bundle:?}");
    forbidden(
        kubectl(
            env,
            "cluster1",
            &[&as_hook, "get", "mutatingwebhookconfigurations"],
        )?,
        "listing webhook configurations",
    )?;
    forbidden(
        kubectl(
            env,
            "cluster1",
            &[
                &as_hook,
                "delete",
                "mutatingwebhookconfiguration",
                &configuration,
            ],
        )?,
        "deleting the webhook configuration",
    )?;

    Ok(())
}

#[tokio::test]
async fn delegate_sync_renders_for_self_and_secret_targets_with_exact_rbac() -> anyhow::Result<()> {
    let env = TestEnv::get().await?;
    let version = kube_version(env).await?;
    let scratch = Scratch::new()?;
    let ns = env.namespace("charts-delegate-sync").await?;
    let fullname = "mc-delegate-sync";
    let cluster_role_name = format!("{}-{fullname}", ns.name);

    let source_only = [
        rule("", "pods", "", &["get", "list", "watch", "patch"]),
        rule(
            "argoproj.io",
            "workflowtaskresults",
            "",
            &["create", "patch"],
        ),
        rule("events.k8s.io", "events", "", &["create", "patch"]),
    ];
    let with_self = [
        rule(
            "",
            "pods",
            "",
            &["get", "list", "watch", "patch", "create", "delete"],
        ),
        rule("", "nodes", "", &["get", "list", "watch"]),
        rule(
            "argoproj.io",
            "workflowtaskresults",
            "",
            &["get", "create", "patch"],
        ),
        rule("events.k8s.io", "events", "", &["create", "patch"]),
    ];
    // The log relay: exec into proxies (the exec policy narrows it), and logs of delegates
    // placed in the source cluster itself.
    let relay_exec = rule("", "pods/exec", "", &["create", "get"]);
    let relay_log = rule("", "pods/log", "", &["get"]);
    let self_and_secret = delegate_sync_values(json!([
        { "name": "cluster1", "self": true },
        { "name": "cluster2", "kubeconfigSecret": "cluster2-kubeconfig", "context": "cluster2" },
    ]));
    let cases = [
        (
            "self and a Secret target",
            self_and_secret.clone(),
            with_self
                .iter()
                .chain([&relay_exec, &relay_log])
                .cloned()
                .collect::<BTreeSet<_>>(),
        ),
        (
            "Secret targets only",
            {
                let mut values = delegate_sync_values(json!([
                    { "name": "cluster2", "kubeconfigSecret": "cluster2-kubeconfig" },
                    { "name": "cluster3", "kubeconfigSecret": "all-targets", "key": "cluster3.yaml" },
                ]));
                merge(
                    &mut values,
                    json!({
                        "leaderElection": { "leaseName": "ds-lease" },
                        "clusterLostTimeout": "5m",
                        // Helm merges maps: the relay stays enabled.
                        "logRelay": { "maxStreams": 7 },
                    }),
                );
                values
            },
            source_only
                .iter()
                .chain([&relay_exec])
                .cloned()
                .collect::<BTreeSet<_>>(),
        ),
        (
            "self and a Secret target, log relay off",
            {
                let mut values = self_and_secret;
                merge(&mut values, json!({ "logRelay": { "enabled": false } }));
                values
            },
            BTreeSet::from(with_self),
        ),
    ];
    // The only shape in which pods/exec may be granted, and only by the ClusterRole.
    let relay_exec_rule =
        json!({ "apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create", "get"] });
    let exec_policy_name = format!("{}-{fullname}-exec", ns.name);
    for (case, values, expected_rules) in cases {
        let docs = render(&scratch, "delegate-sync", "mc", &ns.name, &version, &values)?;
        let context = || format!("delegate-sync chart, {case}");
        let self_target = case.starts_with("self");
        let relay = !case.ends_with("log relay off");

        let cluster_role = find(&docs, "ClusterRole", &cluster_role_name).with_context(context)?;
        ensure!(
            rules(cluster_role) == expected_rules,
            "{case}: ClusterRole rules {}",
            cluster_role["rules"]
        );
        for role in all_of(&docs, "ClusterRole")
            .into_iter()
            .chain(all_of(&docs, "Role"))
        {
            for rule in role["rules"].as_array().into_iter().flatten() {
                let resources = strings(&rule["resources"]);
                let relay_exec_allowed = relay
                    && kind_of(role) == "ClusterRole"
                    && name_of(role) == cluster_role_name
                    && *rule == relay_exec_rule;
                ensure!(
                    !resources.iter().any(|r| matches!(
                        *r,
                        "secrets" | "configmaps" | "serviceaccounts" | "*"
                    ) || (*r == "pods/exec" && !relay_exec_allowed)
                        || (*r == "pods/log" && !relay)),
                    "{case}: {} {} grants {rule}",
                    kind_of(role),
                    name_of(role)
                );
                ensure!(!strings(&rule["verbs"]).contains(&"*"), "{case}: {rule}");
            }
        }
        assert_no_wildcards(&docs)?;
        let binding = find(&docs, "ClusterRoleBinding", &cluster_role_name)?;
        ensure!(
            binding["subjects"]
                == json!([{ "kind": "ServiceAccount", "name": fullname, "namespace": ns.name }]),
            "{binding}"
        );

        let lease = if self_target { fullname } else { "ds-lease" };
        let role = find(&docs, "Role", &format!("{fullname}-leader-election"))?;
        ensure!(
            role["metadata"]["namespace"] == json!(ns.name),
            "the Lease Role is namespaced"
        );
        ensure!(
            rules(role)
                == BTreeSet::from([
                    rule("coordination.k8s.io", "leases", "", &["create"]),
                    rule("coordination.k8s.io", "leases", lease, &["get", "update"]),
                ]),
            "{case}: Lease rules {}",
            role["rules"]
        );

        let deployment = find(&docs, "Deployment", fullname).with_context(context)?;
        ensure!(deployment["spec"]["replicas"] == json!(2));
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        assert_hardened(pod, container).with_context(context)?;
        let args = args(container);
        let mut expected_args = vec![
            "--cluster-name=cluster1".to_string(),
            "--manifest-key-file=/etc/delegate-sync/manifest-key/manifest-key".into(),
            "--admin-address=0.0.0.0:8080".into(),
            "--log-format=json".into(),
            "--leader-elect".into(),
            "--leader-election-namespace=$(POD_NAMESPACE)".into(),
            format!("--leader-election-lease-name={lease}"),
            "--pending-retry-seconds=30".into(),
        ];
        if self_target {
            expected_args.extend([
                "--target=cluster1=self".to_string(),
                "--target=cluster2=/etc/delegate-sync/targets/cluster2/kubeconfig#cluster2".into(),
                "--cluster-lost-timeout=15m".into(),
            ]);
        } else {
            expected_args.extend([
                "--target=cluster2=/etc/delegate-sync/targets/cluster2/kubeconfig".to_string(),
                "--target=cluster3=/etc/delegate-sync/targets/cluster3/cluster3.yaml".into(),
                "--cluster-lost-timeout=5m".into(),
            ]);
        }
        for flag in &expected_args {
            ensure!(
                args.contains(&flag.as_str()),
                "{case}: {flag} missing from {args:?}"
            );
        }
        // The log relay's flags: exactly these (no stream bound when it is off).
        let relay_args: Vec<&str> = args
            .iter()
            .copied()
            .filter(|a| a.starts_with("--log-relay") || a.starts_with("--max-log-streams"))
            .collect();
        let expected_relay_args = match (relay, self_target) {
            (true, true) => vec!["--log-relay=true", "--max-log-streams=100"],
            (true, false) => vec!["--log-relay=true", "--max-log-streams=7"],
            (false, _) => vec!["--log-relay=false"],
        };
        ensure!(
            relay_args == expected_relay_args,
            "{case}: log relay flags {relay_args:?}"
        );
        // And the binary reads them so.
        let parsed = delegate_sync::args::Args::try_parse_from(
            std::iter::once("delegate-sync").chain(args.iter().copied()),
        )
        .with_context(|| format!("{case}: delegate-sync refuses {args:?}"))?;
        ensure!(parsed.log_relay == relay, "{case}: {parsed:?}");
        if relay {
            ensure!(
                parsed.max_log_streams == if self_target { 100 } else { 7 },
                "{case}: {parsed:?}"
            );
        }
        // Targets keep their listed order (ties go to the first).
        let targets: Vec<&str> = args
            .iter()
            .copied()
            .filter(|a| a.starts_with("--target="))
            .collect();
        ensure!(
            targets.len() == 2
                && targets[0].starts_with(if self_target {
                    "--target=cluster1"
                } else {
                    "--target=cluster2"
                }),
            "{targets:?}"
        );
        ensure!(
            container["env"][0]["valueFrom"]["fieldRef"]["fieldPath"]
                == json!("metadata.namespace")
                && container["env"][0]["name"] == json!("POD_NAMESPACE"),
            "{}",
            container["env"]
        );
        ensure!(volume_secret(pod, "manifest-key") == Some("webhook-manifest-key"));
        ensure!(volume_secret(pod, "target-cluster2") == Some("cluster2-kubeconfig"));
        ensure!(
            volume_secret(pod, "target-cluster1").is_none(),
            "self needs no kubeconfig"
        );
        let mounts = container["volumeMounts"].as_array().context("no mounts")?;
        for mount in mounts {
            ensure!(mount["readOnly"] == json!(true), "{mount}");
        }
        ensure!(
            mounts.iter().any(|m| m["name"] == json!("target-cluster2")
                && m["mountPath"] == json!("/etc/delegate-sync/targets/cluster2")),
            "{mounts:?}"
        );

        // The exec policy: with the relay, this release's ServiceAccount only, CONNECT of
        // pods/exec, Deny; without it, none.
        let policies = all_of(&docs, "ValidatingAdmissionPolicy");
        let exec_policies: Vec<&&Value> = policies
            .iter()
            .filter(|p| p.to_string().contains("pods/exec"))
            .collect();
        if relay {
            let policy = find(&docs, "ValidatingAdmissionPolicy", &exec_policy_name)
                .with_context(context)?;
            ensure!(
                exec_policies.len() == 1 && name_of(exec_policies[0]) == exec_policy_name,
                "{case}: {exec_policies:?}"
            );
            let spec = &policy["spec"];
            ensure!(spec["failurePolicy"] == json!("Fail"), "{policy}");
            ensure!(
                spec["matchConstraints"]
                    == json!({ "resourceRules": [{
                        "apiGroups": [""], "apiVersions": ["v1"],
                        "operations": ["CONNECT"], "resources": ["pods/exec"],
                    }] }),
                "{case}: {}",
                spec["matchConstraints"]
            );
            ensure!(
                spec["matchConditions"]
                    == json!([{
                        "name": "delegate-sync",
                        "expression": format!(
                            "request.userInfo.username == 'system:serviceaccount:{}:{fullname}'",
                            ns.name
                        ),
                    }]),
                "{case}: {}",
                spec["matchConditions"]
            );
            let validations = spec["validations"].as_array().context("no validations")?;
            ensure!(validations.len() == 1, "{validations:?}");
            let expression = validations[0]["expression"].as_str().unwrap_or_default();
            for part in [
                "'/proxy-waiter'",
                "'relay'",
                "'--container'",
                "object.command[3] == object.container",
                "object.tty",
            ] {
                ensure!(
                    expression.contains(part),
                    "{case}: {part} not in {expression}"
                );
            }
            let binding = find(&docs, "ValidatingAdmissionPolicyBinding", &exec_policy_name)
                .with_context(context)?;
            ensure!(
                binding["spec"]
                    == json!({ "policyName": exec_policy_name, "validationActions": ["Deny"] }),
                "{case}: {binding}"
            );
        } else {
            ensure!(exec_policies.is_empty(), "{case}: {exec_policies:?}");
            ensure!(
                find(&docs, "ValidatingAdmissionPolicy", &exec_policy_name).is_err()
                    && find(&docs, "ValidatingAdmissionPolicyBinding", &exec_policy_name).is_err(),
                "{case}: the exec policy rendered without the relay"
            );
        }

        let left_out = dry_run(env, &scratch, &docs, &ns.name).with_context(context)?;
        ensure!(left_out.is_empty(), "{left_out:?}");
    }
    Ok(())
}

/// The target chart installed for real in cluster2; a kubeconfig built from its token Secret
/// exactly as docs/install.md does; that identity can do what delegate-sync does in a target
/// and nothing else.
#[tokio::test]
async fn target_chart_token_can_place_delegates_and_nothing_else() -> anyhow::Result<()> {
    let env = TestEnv::get().await?;
    let version = kube_version(env).await?;
    let scratch = Scratch::new()?;
    let ns = env.namespace("charts-target").await?;
    let delegates_ns = unique_name("charts-delegates");
    let values = json!({ "namespaces": [delegates_ns] });

    let docs = render(&scratch, "target", "mc", &ns.name, &version, &values)?;
    let cluster_role = find(&docs, "ClusterRole", &format!("{}-mc-target", ns.name))?;
    ensure!(
        rules(cluster_role)
            == BTreeSet::from([
                rule(
                    "",
                    "pods",
                    "",
                    &["create", "delete", "get", "list", "watch"]
                ),
                rule("", "pods/log", "", &["get"]),
                rule("", "nodes", "", &["get", "list", "watch"]),
                rule(
                    "argoproj.io",
                    "workflowtaskresults",
                    "",
                    &["get", "create", "patch"]
                ),
            ]),
        "{}",
        cluster_role["rules"]
    );
    assert_no_wildcards(&docs)?;
    let token = find(&docs, "Secret", "mc-target-token")?;
    ensure!(token["type"] == json!("kubernetes.io/service-account-token"));
    ensure!(
        token["metadata"]["annotations"]["kubernetes.io/service-account.name"]
            == json!("mc-target")
    );
    find(&docs, "Namespace", &delegates_ns)?;
    ensure!(dry_run(env, &scratch, &docs, &ns.name)?.is_empty());

    // Installed for real (no pods: nothing to wait for).
    let kubeconfig = env.kubeconfig().to_str().context("path")?.to_string();
    let chart = chart("target");
    let values_file = scratch.write("target.json", &values.to_string())?;
    let _namespace_cleanup = ClusterScoped {
        env,
        context: "cluster2",
        objects: vec![format!("namespace/{delegates_ns}")],
    };
    succeed(
        helm(
            &scratch,
            &[
                "install",
                "mc",
                chart.to_str().context("path")?,
                "--kubeconfig",
                &kubeconfig,
                "--kube-context",
                "cluster2",
                "--namespace",
                &ns.name,
                "--values",
                values_file.to_str().context("path")?,
            ],
        )?,
        "helm install of the target chart",
    )?;
    let uninstall = || {
        helm(
            &scratch,
            &[
                "uninstall",
                "mc",
                "--kubeconfig",
                &kubeconfig,
                "--kube-context",
                "cluster2",
                "--namespace",
                &ns.name,
            ],
        )
    };
    let result = check_target_token(env, &scratch, &ns.name, &delegates_ns).await;
    let uninstalled = uninstall();
    result?;
    succeed(uninstalled?, "helm uninstall of the target chart")?;
    Ok(())
}

/// Argo steps in a target: the task-result CRD when asked, and for each listed ServiceAccount
/// exactly what Argo's executor does with task results, in its own namespace.
#[tokio::test]
async fn target_chart_grants_argo_executors_task_results_only() -> anyhow::Result<()> {
    let env = TestEnv::get().await?;
    let version = kube_version(env).await?;
    let scratch = Scratch::new()?;
    let ns = env.namespace("charts-target-argo").await?;
    let values = json!({ "namespaces": [], "argo": {
        "taskResultCRD": true,
        "executorServiceAccounts": [{ "namespace": ns.name, "name": "runner" }],
    }});
    let docs = render(&scratch, "target", "mc", &ns.name, &version, &values)?;
    let crd = find(
        &docs,
        "CustomResourceDefinition",
        "workflowtaskresults.argoproj.io",
    )?;
    ensure!(crd["spec"]["names"]["kind"] == json!("WorkflowTaskResult"));
    let role = find(&docs, "Role", "mc-target-argo-executor-runner")?;
    ensure!(role["metadata"]["namespace"] == json!(ns.name));
    ensure!(
        rules(role)
            == BTreeSet::from([rule(
                "argoproj.io",
                "workflowtaskresults",
                "",
                &["create", "patch"]
            )]),
        "{}",
        role["rules"]
    );
    let binding = find(&docs, "RoleBinding", "mc-target-argo-executor-runner")?;
    ensure!(
        binding["subjects"]
            == json!([{ "kind": "ServiceAccount", "name": "runner", "namespace": ns.name }])
    );
    assert_no_wildcards(&docs)?;
    ensure!(dry_run(env, &scratch, &docs, &ns.name)?.is_empty());

    let without = render(
        &scratch,
        "target",
        "mc",
        &ns.name,
        &version,
        &json!({ "namespaces": [] }),
    )?;
    ensure!(
        find(
            &without,
            "CustomResourceDefinition",
            "workflowtaskresults.argoproj.io"
        )
        .is_err()
    );
    ensure!(all_of(&without, "Role").is_empty());
    Ok(())
}

/// `helm template` without an apiserver: what does not depend on one.
const TEMPLATE_KUBE_VERSION: &str = "v1.34.0";

/// The names `certs bootstrap-target` decides for service account `service_account` in
/// `namespace`, with a requester or not: the accounts and the token Secret as the target chart
/// names them by default.
fn bootstrap_names(
    namespace: &str,
    service_account: &str,
    requester: bool,
) -> certs::bootstrap::objects::Names {
    let requester = requester.then(|| certs::bootstrap::objects::requester_name(service_account));
    let account = requester.as_deref().unwrap_or(service_account);
    certs::bootstrap::objects::Names {
        source: "cluster1".into(),
        target: "cluster2".into(),
        target_namespace: namespace.into(),
        service_account: service_account.into(),
        token_secret: format!("{account}-token"),
        requester,
        cluster_role: format!("{namespace}-{service_account}"),
        namespace: "multicluster".into(),
        secret: "cluster2-kubeconfig".into(),
    }
}

/// `tokenRequest.enabled` renders what `certs bootstrap-target --token-lifetime` writes: the
/// requester ServiceAccount `<sa>-requester`, its Role (creating tokens of `<sa>`, by name, and
/// nothing else: the same rules as certs', as JSON) and RoleBinding, and the long-lived token
/// Secret for the requester. Off by default: none of that, the Secret for `<sa>` itself.
#[test]
fn target_chart_token_request_renders_what_certs_bootstrap_writes() -> anyhow::Result<()> {
    let scratch = Scratch::new()?;
    let namespace = "multicluster";
    let cases = [
        // The chart's defaults: the fullname.
        ("mc-target", json!({})),
        // certs' default name (`delegate-sync-<source>`).
        (
            "delegate-sync-cluster1",
            json!({ "serviceAccount": { "name": "delegate-sync-cluster1" } }),
        ),
    ];
    for (service_account, base) in cases {
        let mut values = base.clone();
        merge(&mut values, json!({ "tokenRequest": { "enabled": true } }));
        let docs = render(
            &scratch,
            "target",
            "mc",
            namespace,
            TEMPLATE_KUBE_VERSION,
            &values,
        )?;
        let names = bootstrap_names(namespace, service_account, true);
        let requester = format!("{service_account}-requester");
        let (certs_account, certs_role, certs_binding) = names
            .requester_objects()
            .context("certs makes a requester")?;
        ensure!(certs_account.metadata.name.as_deref() == Some(requester.as_str()));

        let account = find(&docs, "ServiceAccount", &requester)?;
        ensure!(
            account["metadata"]["namespace"] == json!(namespace),
            "{account}"
        );
        ensure!(
            account["automountServiceAccountToken"]
                == serde_json::to_value(certs_account.automount_service_account_token)?,
            "{account}"
        );
        ensure!(
            account["metadata"]["labels"]["app.kubernetes.io/part-of"]
                == json!("multicluster-delegation"),
            "{account}"
        );
        // The ServiceAccount delegate-sync acts as is still there, bound to the ClusterRole.
        find(&docs, "ServiceAccount", service_account)?;
        let cluster_binding = find(
            &docs,
            "ClusterRoleBinding",
            &format!("{namespace}-mc-target"),
        )?;
        ensure!(
            cluster_binding["subjects"]
                == json!([{ "kind": "ServiceAccount", "name": service_account, "namespace": namespace }]),
            "{cluster_binding}"
        );

        let role = find(&docs, "Role", &requester)?;
        ensure!(role["metadata"]["namespace"] == json!(namespace), "{role}");
        let certs_rules = serde_json::to_value(&certs_role.rules)?;
        ensure!(
            role["rules"] == certs_rules,
            "the chart's requester rules {} differ from certs' {certs_rules}",
            role["rules"]
        );
        ensure!(
            role["rules"]
                == json!([{
                    "apiGroups": [""],
                    "resources": ["serviceaccounts/token"],
                    "resourceNames": [service_account],
                    "verbs": ["create"],
                }]),
            "{}",
            role["rules"]
        );

        let binding = find(&docs, "RoleBinding", &requester)?;
        ensure!(
            binding["metadata"]["namespace"] == json!(namespace),
            "{binding}"
        );
        ensure!(
            binding["roleRef"] == serde_json::to_value(&certs_binding.role_ref)?,
            "{binding}"
        );
        ensure!(
            binding["subjects"] == serde_json::to_value(&certs_binding.subjects)?,
            "{binding}"
        );
        ensure!(
            binding["subjects"]
                == json!([{ "kind": "ServiceAccount", "name": requester, "namespace": namespace }]),
            "{binding}"
        );
        assert_no_wildcards(&docs)?;

        // The token Secret: the requester's, named as certs names it.
        let certs_token = names.token_secret();
        ensure!(names.token_secret == format!("{requester}-token"));
        let token = find(&docs, "Secret", &names.token_secret)?;
        ensure!(
            token["type"] == serde_json::to_value(&certs_token.type_)?,
            "{token}"
        );
        ensure!(
            token["metadata"]["annotations"]
                == serde_json::to_value(&certs_token.metadata.annotations)?,
            "{token}"
        );
        ensure!(
            token["metadata"]["annotations"]["kubernetes.io/service-account.name"]
                == json!(requester),
            "{token}"
        );
        ensure!(all_of(&docs, "Secret").len() == 1, "one token Secret only");

        // tokenSecret.name still wins; tokenSecret.create=false still means no Secret.
        let mut named = values.clone();
        merge(&mut named, json!({ "tokenSecret": { "name": "mine" } }));
        let docs = render(
            &scratch,
            "target",
            "mc",
            namespace,
            TEMPLATE_KUBE_VERSION,
            &named,
        )?;
        let token = find(&docs, "Secret", "mine")?;
        ensure!(
            token["metadata"]["annotations"]["kubernetes.io/service-account.name"]
                == json!(requester),
            "{token}"
        );
        let mut uncreated = values.clone();
        merge(
            &mut uncreated,
            json!({ "tokenSecret": { "create": false } }),
        );
        let docs = render(
            &scratch,
            "target",
            "mc",
            namespace,
            TEMPLATE_KUBE_VERSION,
            &uncreated,
        )?;
        ensure!(all_of(&docs, "Secret").is_empty());
        find(&docs, "Role", &requester)?;

        // Disabled (the default): nothing of the requester; the token is the account's own.
        let docs = render(
            &scratch,
            "target",
            "mc",
            namespace,
            TEMPLATE_KUBE_VERSION,
            &base,
        )?;
        let leftovers: Vec<String> = docs
            .iter()
            .filter(|d| {
                name_of(d).contains("requester")
                    || matches!(kind_of(d), "Role" | "RoleBinding")
                    || d.to_string().contains("serviceaccounts/token")
            })
            .map(|d| format!("{}/{}", kind_of(d), name_of(d)))
            .collect();
        ensure!(
            leftovers.is_empty(),
            "rendered without tokenRequest: {leftovers:?}"
        );
        ensure!(
            all_of(&docs, "ServiceAccount")
                .iter()
                .map(|d| name_of(d))
                .collect::<Vec<_>>()
                == [service_account]
        );
        let names = bootstrap_names(namespace, service_account, false);
        ensure!(names.requester_objects().is_none());
        let certs_token = names.token_secret();
        let token = find(&docs, "Secret", &format!("{service_account}-token"))?;
        ensure!(
            token["metadata"]["annotations"]
                == serde_json::to_value(&certs_token.metadata.annotations)?,
            "{token}"
        );
        ensure!(
            token["metadata"]["annotations"]["kubernetes.io/service-account.name"]
                == json!(service_account),
            "{token}"
        );
    }
    Ok(())
}

/// The delegate-sync chart's copy options: `createNamespaces` only passes
/// `--create-namespaces` (it acts in targets only); `copyReferences.namespaces` passes
/// `--copy-references`, adds get of namespaces to the ClusterRole (the opt-in label) and, in
/// each listed namespace and nowhere else, a Role reading its ConfigMaps and Secrets bound to
/// the chart's ServiceAccount. With the defaults, none of it: no rule on ConfigMaps, Secrets,
/// ServiceAccounts or namespaces anywhere.
#[test]
fn delegate_sync_chart_reads_configmaps_and_secrets_of_listed_namespaces_only() -> anyhow::Result<()>
{
    let scratch = Scratch::new()?;
    let namespace = "multicluster";
    let fullname = "mc-delegate-sync";
    let copy_role = format!("{fullname}-copy-references");
    let cluster_role_name = format!("{namespace}-{fullname}");
    let base = delegate_sync_values(json!([
        { "name": "cluster1", "self": true },
        { "name": "cluster2", "kubeconfigSecret": "cluster2-kubeconfig" },
    ]));
    // The ClusterRole with a self target and the log relay (the defaults).
    let cluster_rules = BTreeSet::from([
        rule(
            "",
            "pods",
            "",
            &["get", "list", "watch", "patch", "create", "delete"],
        ),
        rule("", "nodes", "", &["get", "list", "watch"]),
        rule(
            "argoproj.io",
            "workflowtaskresults",
            "",
            &["get", "create", "patch"],
        ),
        rule("events.k8s.io", "events", "", &["create", "patch"]),
        rule("", "pods/exec", "", &["create", "get"]),
        rule("", "pods/log", "", &["get"]),
    ]);
    let namespaces_get = rule("", "namespaces", "", &["get"]);
    let copy_rules = BTreeSet::from([rule("", "configmaps,secrets", "", &["get"])]);

    // (case, extra values, --create-namespaces, namespaces copied from, ServiceAccount, RBAC)
    let cases = [
        ("defaults", json!({}), false, vec![], fullname, true),
        (
            "createNamespaces",
            json!({ "createNamespaces": true }),
            true,
            vec![],
            fullname,
            true,
        ),
        (
            "copyReferences",
            json!({ "copyReferences": { "namespaces": ["a", "b"] } }),
            false,
            vec!["a", "b"],
            fullname,
            true,
        ),
        (
            "both, own ServiceAccount name",
            json!({
                "createNamespaces": true,
                "copyReferences": { "namespaces": ["a", "b"] },
                "serviceAccount": { "name": "ds" },
            }),
            true,
            vec!["a", "b"],
            "ds",
            true,
        ),
        (
            "copyReferences, empty list",
            json!({ "createNamespaces": false, "copyReferences": { "namespaces": [] } }),
            false,
            vec![],
            fullname,
            true,
        ),
        (
            "copyReferences without rbac.create",
            json!({ "copyReferences": { "namespaces": ["a"] }, "rbac": { "create": false } }),
            false,
            vec!["a"],
            fullname,
            false,
        ),
    ];
    for (case, extra, create_namespaces, copied, account, rbac) in cases {
        let values = merged(base.clone(), extra);
        let docs = render(
            &scratch,
            "delegate-sync",
            "mc",
            namespace,
            TEMPLATE_KUBE_VERSION,
            &values,
        )?;
        let copy = !copied.is_empty();

        // The flags, and the binary reads them so.
        let deployment = find(&docs, "Deployment", fullname)?;
        let args = args(&deployment["spec"]["template"]["spec"]["containers"][0]);
        let copy_args: Vec<&str> = args
            .iter()
            .copied()
            .filter(|a| a.starts_with("--copy") || a.starts_with("--create"))
            .collect();
        let mut expected_args = Vec::new();
        if create_namespaces {
            expected_args.push("--create-namespaces");
        }
        if copy {
            expected_args.push("--copy-references");
        }
        ensure!(copy_args == expected_args, "{case}: {args:?}");
        let parsed = delegate_sync::args::Args::try_parse_from(
            std::iter::once("delegate-sync").chain(args.iter().copied()),
        )
        .with_context(|| format!("{case}: delegate-sync refuses {args:?}"))?;
        ensure!(
            parsed.create_namespaces == create_namespaces && parsed.copy_references == copy,
            "{case}: {parsed:?}"
        );

        if !rbac {
            let roles: Vec<String> = docs
                .iter()
                .filter(|d| kind_of(d).contains("Role"))
                .map(|d| format!("{}/{}", kind_of(d), name_of(d)))
                .collect();
            ensure!(
                roles.is_empty(),
                "{case}: rbac.create=false renders {roles:?}"
            );
            continue;
        }

        // The ClusterRole: get of namespaces only with copies.
        let cluster_role = find(&docs, "ClusterRole", &cluster_role_name)?;
        let mut expected = cluster_rules.clone();
        if copy {
            expected.insert(namespaces_get.clone());
        }
        ensure!(
            rules(cluster_role) == expected,
            "{case}: ClusterRole rules {}",
            cluster_role["rules"]
        );
        ensure!(
            all_of(&docs, "ClusterRole").len() == 1,
            "{case}: one ClusterRole"
        );

        // Roles: the Lease's in the release namespace, one copy Role per listed namespace.
        let mut roles: Vec<(String, String)> = all_of(&docs, "Role")
            .iter()
            .map(|r| {
                (
                    r["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or_default()
                        .into(),
                    name_of(r).into(),
                )
            })
            .collect();
        roles.sort();
        let mut expected_roles =
            vec![(namespace.to_string(), format!("{fullname}-leader-election"))];
        expected_roles.extend(copied.iter().map(|n| (n.to_string(), copy_role.clone())));
        expected_roles.sort();
        ensure!(roles == expected_roles, "{case}: Roles {roles:?}");
        let mut bindings: Vec<(String, String)> = all_of(&docs, "RoleBinding")
            .iter()
            .map(|r| {
                (
                    r["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or_default()
                        .into(),
                    name_of(r).into(),
                )
            })
            .collect();
        bindings.sort();
        ensure!(
            bindings == expected_roles,
            "{case}: RoleBindings {bindings:?}"
        );
        for listed in &copied {
            let in_listed =
                |d: &&Value| name_of(d) == copy_role && d["metadata"]["namespace"] == json!(listed);
            let role = all_of(&docs, "Role")
                .into_iter()
                .find(in_listed)
                .with_context(|| format!("{case}: no Role {copy_role} in {listed}"))?;
            ensure!(
                rules(role) == copy_rules,
                "{case}: Role {copy_role} in {listed}: {}",
                role["rules"]
            );
            let binding = all_of(&docs, "RoleBinding")
                .into_iter()
                .find(in_listed)
                .with_context(|| format!("{case}: no RoleBinding {copy_role} in {listed}"))?;
            ensure!(
                binding["roleRef"]
                    == json!({ "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": copy_role }),
                "{case}: {binding}"
            );
            ensure!(
                binding["subjects"]
                    == json!([{ "kind": "ServiceAccount", "name": account, "namespace": namespace }]),
                "{case}: {binding}"
            );
        }

        // Nothing else reads ConfigMaps, Secrets or ServiceAccounts, or reaches namespaces.
        for role in all_of(&docs, "ClusterRole")
            .into_iter()
            .chain(all_of(&docs, "Role"))
        {
            let copy_role_here = kind_of(role) == "Role"
                && name_of(role) == copy_role
                && copied
                    .iter()
                    .any(|n| role["metadata"]["namespace"] == json!(n));
            for rule in role["rules"].as_array().into_iter().flatten() {
                for resource in strings(&rule["resources"]) {
                    let allowed = match resource {
                        "configmaps" | "secrets" => copy_role_here,
                        "namespaces" => {
                            copy && kind_of(role) == "ClusterRole"
                                && name_of(role) == cluster_role_name
                        }
                        "serviceaccounts" => false,
                        _ => true,
                    };
                    ensure!(
                        allowed,
                        "{case}: {} {} grants {rule}",
                        kind_of(role),
                        name_of(role)
                    );
                }
            }
        }
        assert_no_wildcards_but(&docs, |role| {
            kind_of(role) == "Role" && name_of(role) == copy_role
        })
        .with_context(|| case.to_string())?;
    }
    Ok(())
}

/// The target chart's `copies` ClusterRole, `<ClusterRole>-copies`: exactly what delegate-sync
/// does in a target with --copy-references (`copies.enabled`), --create-namespaces
/// (`copies.createNamespaces`) or both, the rules `certs bootstrap-target --copies
/// --create-namespaces` writes, bound to the chart's ServiceAccount; nothing with the
/// defaults, and the main ClusterRole never changes.
#[test]
fn target_chart_copies_cluster_role_grants_exactly_what_the_flags_need() -> anyhow::Result<()> {
    let scratch = Scratch::new()?;
    let namespace = "multicluster";
    let main_name = format!("{namespace}-mc-target");
    let copies_name = format!("{main_name}-copies");
    let main_rules = BTreeSet::from([
        rule(
            "",
            "pods",
            "",
            &["create", "delete", "get", "list", "watch"],
        ),
        rule("", "pods/log", "", &["get"]),
        rule("", "nodes", "", &["get", "list", "watch"]),
        rule(
            "argoproj.io",
            "workflowtaskresults",
            "",
            &["get", "create", "patch"],
        ),
    ]);
    let objects = ["get", "create", "update", "patch", "delete"];
    let cases = [
        ("defaults", json!({}), None),
        (
            "both off",
            json!({ "copies": { "enabled": false, "createNamespaces": false } }),
            None,
        ),
        (
            "copies",
            json!({ "copies": { "enabled": true } }),
            Some((
                true,
                false,
                BTreeSet::from([
                    rule("", "configmaps", "", &objects),
                    rule("", "secrets", "", &objects),
                    rule("", "serviceaccounts", "", &["get", "create"]),
                ]),
            )),
        ),
        (
            "createNamespaces",
            json!({ "copies": { "createNamespaces": true } }),
            Some((
                false,
                true,
                BTreeSet::from([
                    rule("", "namespaces", "", &["get", "create", "list", "delete"]),
                    rule("", "persistentvolumeclaims", "", &["list"]),
                    rule("", "services", "", &["list"]),
                    rule("", "configmaps", "", &["list"]),
                    rule("", "secrets", "", &["list"]),
                    rule("", "serviceaccounts", "", &["list"]),
                ]),
            )),
        ),
        (
            "both",
            json!({ "copies": { "enabled": true, "createNamespaces": true } }),
            Some((
                true,
                true,
                BTreeSet::from([
                    rule("", "namespaces", "", &["get", "create", "list", "delete"]),
                    rule("", "persistentvolumeclaims", "", &["list"]),
                    rule("", "services", "", &["list"]),
                    rule(
                        "",
                        "configmaps",
                        "",
                        &["get", "create", "update", "patch", "delete", "list"],
                    ),
                    rule(
                        "",
                        "secrets",
                        "",
                        &["get", "create", "update", "patch", "delete", "list"],
                    ),
                    rule("", "serviceaccounts", "", &["get", "create", "list"]),
                ]),
            )),
        ),
    ];
    let names = bootstrap_names(namespace, "mc-target", false);
    ensure!(
        names.copies_cluster_role_name() == copies_name,
        "certs names it {}",
        names.copies_cluster_role_name()
    );
    for (case, values, expected) in cases {
        let docs = render(
            &scratch,
            "target",
            "mc",
            namespace,
            TEMPLATE_KUBE_VERSION,
            &values,
        )?;
        let main = find(&docs, "ClusterRole", &main_name)?;
        ensure!(
            rules(main) == main_rules,
            "{case}: the main ClusterRole changed: {}",
            main["rules"]
        );
        let Some((copies, create_namespaces, expected)) = expected else {
            let cluster_roles: Vec<&str> = all_of(&docs, "ClusterRole")
                .into_iter()
                .chain(all_of(&docs, "ClusterRoleBinding"))
                .map(name_of)
                .collect();
            ensure!(
                cluster_roles == [main_name.as_str(), main_name.as_str()],
                "{case}: {cluster_roles:?}"
            );
            for role in all_of(&docs, "ClusterRole")
                .into_iter()
                .chain(all_of(&docs, "Role"))
            {
                for rule in role["rules"].as_array().into_iter().flatten() {
                    ensure!(
                        !strings(&rule["resources"]).iter().any(|r| matches!(
                            *r,
                            "configmaps" | "secrets" | "serviceaccounts" | "namespaces"
                        )),
                        "{case}: {} {} grants {rule} without the copies options",
                        kind_of(role),
                        name_of(role)
                    );
                }
            }
            assert_no_wildcards(&docs)?;
            ensure!(
                certs::bootstrap::objects::copies_rules(false, false).is_empty(),
                "certs grants copies by default"
            );
            continue;
        };
        let role = find(&docs, "ClusterRole", &copies_name)?;
        ensure!(
            rules(role) == expected,
            "{case}: copies rules {}",
            role["rules"]
        );
        // The same rules, in the same order, as certs bootstrap-target writes.
        let certs_rules = serde_json::to_value(certs::bootstrap::objects::copies_rules(
            copies,
            create_namespaces,
        ))?;
        ensure!(
            role["rules"] == certs_rules,
            "{case}: the chart's copies rules {} differ from certs' {certs_rules}",
            role["rules"]
        );
        let binding = find(&docs, "ClusterRoleBinding", &copies_name)?;
        ensure!(
            binding["roleRef"]
                == json!({ "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": copies_name }),
            "{case}: {binding}"
        );
        ensure!(
            binding["subjects"]
                == json!([{ "kind": "ServiceAccount", "name": "mc-target", "namespace": namespace }]),
            "{case}: {binding}"
        );
        ensure!(
            all_of(&docs, "ClusterRole").len() == 2 && all_of(&docs, "Role").is_empty(),
            "{case}: the main and the copies ClusterRoles only"
        );
        assert_no_wildcards_but(&docs, |r| name_of(r) == copies_name)
            .with_context(|| case.to_string())?;
    }

    // The binding follows the ServiceAccount's name.
    let docs = render(
        &scratch,
        "target",
        "mc",
        namespace,
        TEMPLATE_KUBE_VERSION,
        &json!({ "serviceAccount": { "name": "delegate-sync-cluster1" }, "copies": { "enabled": true } }),
    )?;
    let binding = find(&docs, "ClusterRoleBinding", &copies_name)?;
    ensure!(
        binding["subjects"]
            == json!([{ "kind": "ServiceAccount", "name": "delegate-sync-cluster1", "namespace": namespace }]),
        "{binding}"
    );
    Ok(())
}

async fn check_target_token(
    env: &TestEnv,
    scratch: &Scratch,
    namespace: &str,
    delegates_ns: &str,
) -> anyhow::Result<()> {
    // The token controller fills the Secret.
    let mut token = String::new();
    for _ in 0..100 {
        token = succeed(
            kubectl(
                env,
                "cluster2",
                &[
                    "-n",
                    namespace,
                    "get",
                    "secret",
                    "mc-target-token",
                    "-o",
                    "jsonpath={.data.token}",
                ],
            )?,
            "reading the token",
        )?;
        if !token.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(!token.is_empty(), "the token Secret was never filled");
    let token = String::from_utf8(base64_decode(&token)?)?;
    let ca = succeed(
        kubectl(
            env,
            "cluster2",
            &[
                "-n",
                namespace,
                "get",
                "secret",
                "mc-target-token",
                "-o",
                "jsonpath={.data.ca\\.crt}",
            ],
        )?,
        "reading the CA",
    )?;
    let ca = base64_decode(&ca)?;
    let ca_file = scratch.0.join("cluster2-ca.crt");
    std::fs::write(&ca_file, ca)?;
    let server = succeed(
        kubectl(
            env,
            "cluster2",
            &[
                "config",
                "view",
                "--minify",
                "-o",
                "jsonpath={.clusters[0].cluster.server}",
            ],
        )?,
        "reading the server URL",
    )?;

    // docs/install.md's steps.
    let target_kubeconfig = scratch.0.join("cluster2.kubeconfig");
    let config = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new(tool("kubectl"))
            .arg("config")
            .arg("--kubeconfig")
            .arg(&target_kubeconfig)
            .args(args)
            .output()?;
        succeed(out, &format!("kubectl config {args:?}")).map(|_| ())
    };
    config(&[
        "set-cluster",
        "cluster2",
        &format!("--server={server}"),
        &format!("--certificate-authority={}", ca_file.display()),
        "--embed-certs",
    ])?;
    config(&[
        "set-credentials",
        "delegate-sync",
        &format!("--token={token}"),
    ])?;
    config(&[
        "set-context",
        "cluster2",
        "--cluster=cluster2",
        "--user=delegate-sync",
    ])?;
    config(&["use-context", "cluster2"])?;

    let as_target = |args: &[&str]| -> anyhow::Result<Output> {
        Ok(Command::new(tool("kubectl"))
            .arg("--kubeconfig")
            .arg(&target_kubeconfig)
            .args(args)
            .output()?)
    };
    let can = |args: &[&str]| -> anyhow::Result<bool> {
        let mut full = vec!["auth", "can-i"];
        full.extend_from_slice(args);
        let out = as_target(&full)?;
        match String::from_utf8_lossy(&out.stdout).trim() {
            "yes" => Ok(true),
            "no" => Ok(false),
            _ => bail!("kubectl auth can-i {args:?}: {}", text(&out)),
        }
    };
    for args in [
        &["create", "pods", "-n", delegates_ns][..],
        &["delete", "pods", "-n", delegates_ns],
        &["watch", "pods", "-A"],
        &["list", "nodes"],
        // The log relay follows delegates' logs.
        &["get", "pods", "--subresource=log", "-n", delegates_ns],
    ] {
        ensure!(can(args)?, "the target token should be able to {args:?}");
    }
    for args in [
        &["get", "secrets", "-n", delegates_ns][..],
        &["patch", "pods", "-n", delegates_ns],
        &["create", "pods", "--subresource=exec", "-A"],
        &["create", "pods", "--subresource=exec", "-n", delegates_ns],
        &["get", "pods", "--subresource=exec", "-n", delegates_ns],
        &["create", "pods", "--subresource=attach", "-n", delegates_ns],
        &["create", "deployments", "-n", delegates_ns],
        &["delete", "nodes"],
        &["create", "namespaces"],
    ] {
        ensure!(!can(args)?, "the target token must not be able to {args:?}");
    }
    // The same for real: authorization comes before the pod is looked up, so a log of a pod
    // that does not exist is NotFound, an exec into it Forbidden.
    let log = as_target(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/{delegates_ns}/pods/nobody/log"),
    ])?;
    ensure!(
        !log.status.success()
            && text(&log).contains("NotFound")
            && !text(&log).contains("Forbidden"),
        "reading a log with the target kubeconfig: {}",
        text(&log)
    );
    let body = scratch.write("exec-body.json", "{}")?;
    let exec = as_target(&[
        "create",
        "--raw",
        &format!("/api/v1/namespaces/{delegates_ns}/pods/nobody/exec?command=id&stdout=true"),
        "-f",
        body.to_str().context("path")?,
    ])?;
    ensure!(
        !exec.status.success() && text(&exec).contains("Forbidden"),
        "an exec with the target kubeconfig: {}",
        text(&exec)
    );
    // And a real read through that kubeconfig: the nodes placement needs.
    let nodes = succeed(
        as_target(&["get", "nodes", "-o", "name"])?,
        "listing nodes with the target kubeconfig",
    )?;
    ensure!(nodes.lines().count() > 0, "no nodes seen: {nodes}");
    // The namespace for delegates exists.
    let namespace_of_delegates = kubectl(env, "cluster2", &["get", "namespace", delegates_ns])?;
    if !namespace_of_delegates.status.success() {
        bail!("namespace {delegates_ns} was not created");
    }
    Ok(())
}

/// Installed for real (without hooks: their Jobs would never finish on fake nodes), an upgrade
/// keeps the generated manifest key (lookup) and the caBundle `certs ensure` patched in; an
/// uninstall keeps the key.
#[tokio::test]
async fn webhook_upgrade_keeps_the_manifest_key_and_the_live_ca_bundle() -> anyhow::Result<()> {
    let env = TestEnv::get().await?;
    let scratch = Scratch::new()?;
    let ns = env.namespace("charts-upgrade").await?;
    let configuration = format!("{}-mc-webhook", ns.name);
    let _cleanup = ClusterScoped {
        env,
        context: "cluster1",
        objects: vec![
            format!("mutatingwebhookconfiguration/{configuration}"),
            format!("clusterrole/{}-mc-webhook-certs", ns.name),
            format!("clusterrolebinding/{}-mc-webhook-certs", ns.name),
        ],
    };
    // Selects no namespace and fails open: a real registration must not disturb other tests.
    let values = webhook_values(
        "certs-tool",
        json!({ "admission": {
            "namespaceSelector": { "matchLabels": { "charts-test": ns.name, "multicluster-scheduler": null } },
            "failurePolicy": "Ignore",
        }}),
    );
    let values_file = scratch.write("webhook.json", &values.to_string())?;
    let kubeconfig = env.kubeconfig().to_str().context("path")?.to_string();
    let chart = chart("webhook");
    let helm_release = |command: &str| -> anyhow::Result<String> {
        let mut args = vec![command, "mc"];
        if command != "uninstall" {
            args.extend([
                chart.to_str().context("path")?,
                "--values",
                values_file.to_str().context("path")?,
            ]);
        }
        args.extend([
            "--no-hooks",
            "--kubeconfig",
            &kubeconfig,
            "--kube-context",
            "cluster1",
            "--namespace",
            &ns.name,
        ]);
        succeed(helm(&scratch, &args)?, &format!("helm {command}"))
    };
    let key = || -> anyhow::Result<String> {
        succeed(
            kubectl(
                env,
                "cluster1",
                &[
                    "-n",
                    &ns.name,
                    "get",
                    "secret",
                    "mc-webhook-manifest-key",
                    "-o",
                    "jsonpath={.data.manifest-key}",
                ],
            )?,
            "reading the manifest key",
        )
    };
    let ca_bundle = || -> anyhow::Result<String> {
        succeed(
            kubectl(
                env,
                "cluster1",
                &[
                    "get",
                    "mutatingwebhookconfiguration",
                    &configuration,
                    "-o",
                    "jsonpath={.webhooks[0].clientConfig.caBundle}",
                ],
            )?,
            "reading the caBundle",
        )
    };

    helm_release("install")?;
    let installed_key = key()?;
    ensure!(base64_decode(&installed_key)?.len() == 48);
    ensure!(ca_bundle()?.is_empty(), "no caBundle before certs ran");
    // What the post-install hook's `certs ensure` does.
    let patch =
        json!([{ "op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": "Q0E=" }])
            .to_string();
    succeed(
        kubectl(
            env,
            "cluster1",
            &[
                "patch",
                "mutatingwebhookconfiguration",
                &configuration,
                "--type=json",
                "-p",
                &patch,
            ],
        )?,
        "patching the caBundle",
    )?;

    helm_release("upgrade")?;
    ensure!(
        key()? == installed_key,
        "the upgrade changed the manifest key"
    );
    ensure!(ca_bundle()? == "Q0E=", "the upgrade lost the caBundle");
    let manifest = succeed(
        helm(
            &scratch,
            &[
                "get",
                "manifest",
                "mc",
                "--kubeconfig",
                &kubeconfig,
                "--kube-context",
                "cluster1",
                "--namespace",
                &ns.name,
            ],
        )?,
        "helm get manifest",
    )?;
    ensure!(
        manifest.contains("caBundle: Q0E="),
        "the upgrade renders the live caBundle, so even --force keeps it"
    );

    helm_release("uninstall")?;
    ensure!(
        key()? == installed_key,
        "the manifest key outlives the release"
    );
    let gone = kubectl(
        env,
        "cluster1",
        &["get", "mutatingwebhookconfiguration", &configuration],
    )?;
    ensure!(
        !gone.status.success(),
        "the registration went with the release"
    );
    Ok(())
}

/// The delegate-sync chart's ValidatingAdmissionPolicy, applied for real (scoped to the test's
/// namespace): edits of a proxy's own keys are refused to everyone but the chart's
/// ServiceAccount, with a message naming them; other edits (Argo's labels) pass.
#[tokio::test]
async fn delegate_sync_chart_refuses_edits_of_a_proxys_keys_to_all_but_delegate_sync()
-> anyhow::Result<()> {
    let env = TestEnv::get().await?;
    let version = kube_version(env).await?;
    let scratch = Scratch::new()?;
    let ns = env.namespace("charts-protection").await?;
    let mut values = delegate_sync_values(json!([{ "name": "cluster1", "self": true }]));
    merge(
        &mut values,
        json!({ "proxyProtection": { "namespaceSelector": {
            "matchLabels": { "kubernetes.io/metadata.name": ns.name } } } }),
    );
    let docs = render(&scratch, "delegate-sync", "mc", &ns.name, &version, &values)?;
    let policy_name = format!("{}-mc-delegate-sync-proxies", ns.name);
    let applied: Vec<&Value> = [
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]
    .iter()
    .map(|kind| find(&docs, kind, &policy_name))
    .chain([find(&docs, "ServiceAccount", "mc-delegate-sync")])
    .collect::<anyhow::Result<_>>()?;
    let _cleanup = ClusterScoped {
        env,
        context: "cluster1",
        objects: vec![
            format!("validatingadmissionpolicybinding/{policy_name}"),
            format!("validatingadmissionpolicy/{policy_name}"),
        ],
    };
    let file = scratch.write(
        "protection.json",
        &json!({ "apiVersion": "v1", "kind": "List", "items": applied }).to_string(),
    )?;
    succeed(
        kubectl(
            env,
            "cluster1",
            &[
                "-n",
                &ns.name,
                "apply",
                "--server-side",
                "-f",
                file.to_str().context("path")?,
            ],
        )?,
        "applying the policy",
    )?;
    // Pods of the namespace are this test's; the chart's ServiceAccount may edit them.
    succeed(
        kubectl(
            env,
            "cluster1",
            &[
                "-n",
                &ns.name,
                "create",
                "rolebinding",
                "edit-pods",
                "--clusterrole=edit",
                &format!("--serviceaccount={}:mc-delegate-sync", ns.name),
            ],
        )?,
        "granting the ServiceAccount pod edits",
    )?;
    let proxy = json!({ "apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "proxy", "namespace": ns.name,
        "labels": { contract::PROXY_LABEL: "true" },
        "annotations": { contract::TARGET_CLUSTER: "cluster2", contract::SOURCEPOD_MANIFEST: "v1.x.y" },
        "finalizers": [contract::CLEANUP_FINALIZER],
    }, "spec": { "containers": [{ "name": "main", "image": "proxy-waiter" }] } });
    let pod_file = scratch.write("proxy.json", &proxy.to_string())?;
    succeed(
        kubectl(
            env,
            "cluster1",
            &["create", "-f", pod_file.to_str().context("path")?],
        )?,
        "creating the proxy",
    )?;

    let admin_patch = |patch: Value| {
        kubectl(
            env,
            "cluster1",
            &[
                "-n",
                &ns.name,
                "patch",
                "pod",
                "proxy",
                "--type=merge",
                "-p",
                &patch.to_string(),
            ],
        )
    };
    let move_to = |cluster: String| json!({ "metadata": { "annotations": { contract::TARGET_CLUSTER: cluster } } });
    // A new policy takes a moment to be enforced: edit until refused, each time to a new value
    // (an update that changes nothing is never refused).
    let mut refused = None;
    for attempt in 0..100 {
        let out = admin_patch(move_to(format!("elsewhere-{attempt}")))?;
        if !out.status.success() {
            refused = Some(text(&out));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let refused = refused.context("the policy never refused an edit of target-cluster")?;
    ensure!(
        refused.contains("multicluster.admiralty.io/target-cluster")
            && refused.contains("belong to delegate-sync"),
        "{refused}"
    );
    for (what, patch) in [
        (
            "the saved manifest",
            json!({ "metadata": { "annotations": { contract::SOURCEPOD_MANIFEST: "v1.a.b" } } }),
        ),
        (
            "a forged result",
            json!({ "metadata": { "annotations": { contract::RESULT: "{}" } } }),
        ),
        (
            "the restart count",
            json!({ "metadata": { "annotations": { contract::RESTARTS: "7" } } }),
        ),
        (
            "the proxy label",
            json!({ "metadata": { "labels": { contract::PROXY_LABEL: null } } }),
        ),
        ("the finalizer", json!({ "metadata": { "finalizers": [] } })),
    ] {
        let out = admin_patch(patch)?;
        ensure!(!out.status.success(), "{what}: an edit was allowed");
        ensure!(
            text(&out).contains("delegate-sync"),
            "{what}: {}",
            text(&out)
        );
    }
    succeed(
        admin_patch(
            json!({ "metadata": { "labels": { "workflows.argoproj.io/completed": "true" } } }),
        )?,
        "Argo's label",
    )?;

    // delegate-sync itself edits them.
    let kubeconfig = env
        .testbed()?
        .service_account_kubeconfig(
            "cluster1",
            &ns.name,
            "mc-delegate-sync",
            Duration::from_secs(600),
        )
        .await?;
    let sa_file = scratch.write("sa.kubeconfig", &kubeconfig)?;
    let as_delegate_sync = |patch: Value| {
        Command::new(tool("kubectl"))
            .arg("--kubeconfig")
            .arg(&sa_file)
            .args([
                "-n",
                &ns.name,
                "patch",
                "pod",
                "proxy",
                "--type=merge",
                "-p",
                &patch.to_string(),
            ])
            .output()
            .context("cannot run kubectl")
    };
    succeed(
        as_delegate_sync(move_to("cluster2".into()))?,
        "delegate-sync placing the proxy",
    )?;
    succeed(
        as_delegate_sync(json!({ "metadata": { "finalizers": [] } }))?,
        "delegate-sync releasing the finalizer",
    )?;
    Ok(())
}

/// The delegate-sync chart's exec policy applied for real, with its ClusterRole (bound in the
/// test's namespace only): its ServiceAccount may exec `/proxy-waiter relay --container C` into
/// container C and nothing else (no other command, container or TTY); no one else is concerned.
/// The pod is never scheduled, so an exec the policy admits ends, without any kubelet, in the
/// apiserver's "does not have a host assigned".
#[tokio::test]
async fn delegate_sync_chart_lets_its_account_exec_the_log_relay_only() -> anyhow::Result<()> {
    const ADMITTED: &str = "does not have a host assigned";
    const REFUSED: &str = "delegate-sync may only exec /proxy-waiter relay";
    let env = TestEnv::get().await?;
    let version = kube_version(env).await?;
    let scratch = Scratch::new()?;
    let ns = env.namespace("charts-exec").await?;
    let values = delegate_sync_values(json!([{ "name": "cluster1", "self": true }]));
    let docs = render(&scratch, "delegate-sync", "mc", &ns.name, &version, &values)?;
    let policy_name = format!("{}-mc-delegate-sync-exec", ns.name);
    let cluster_role_name = format!("{}-mc-delegate-sync", ns.name);
    let applied: Vec<&Value> = [
        ("ValidatingAdmissionPolicy", policy_name.as_str()),
        ("ValidatingAdmissionPolicyBinding", &policy_name),
        ("ClusterRole", &cluster_role_name),
        ("ServiceAccount", "mc-delegate-sync"),
    ]
    .into_iter()
    .map(|(kind, name)| find(&docs, kind, name))
    .collect::<anyhow::Result<_>>()?;
    let _cleanup = ClusterScoped {
        env,
        context: "cluster1",
        objects: vec![
            format!("validatingadmissionpolicybinding/{policy_name}"),
            format!("validatingadmissionpolicy/{policy_name}"),
            format!("clusterrole/{cluster_role_name}"),
        ],
    };
    let file = scratch.write(
        "exec-protection.json",
        &json!({ "apiVersion": "v1", "kind": "List", "items": applied }).to_string(),
    )?;
    succeed(
        kubectl(
            env,
            "cluster1",
            &[
                "-n",
                &ns.name,
                "apply",
                "--server-side",
                "-f",
                file.to_str().context("path")?,
            ],
        )?,
        "applying the policy and the ClusterRole",
    )?;
    succeed(
        kubectl(
            env,
            "cluster1",
            &[
                "-n",
                &ns.name,
                "create",
                "rolebinding",
                "delegate-sync",
                &format!("--clusterrole={cluster_role_name}"),
                &format!("--serviceaccount={}:mc-delegate-sync", ns.name),
            ],
        )?,
        "binding the chart's ClusterRole in the namespace",
    )?;
    let proxy = json!({ "apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "proxy", "namespace": ns.name,
    }, "spec": {
        "schedulerName": "charts-test-no-scheduler",
        "containers": [{ "name": "main", "image": "proxy-waiter" }],
    } });
    let pod_file = scratch.write("proxy.json", &proxy.to_string())?;
    succeed(
        kubectl(
            env,
            "cluster1",
            &["create", "-f", pod_file.to_str().context("path")?],
        )?,
        "creating the proxy",
    )?;

    let as_delegate_sync = format!("--as=system:serviceaccount:{}:mc-delegate-sync", ns.name);
    // An exec never succeeds here; its error says who stopped it.
    let exec = |who: Option<&str>, command: &[&str]| -> anyhow::Result<String> {
        let mut args = vec!["-n", &ns.name, "exec", "proxy", "-c", "main"];
        args.extend(who);
        args.push("--");
        args.extend_from_slice(command);
        let out = kubectl(env, "cluster1", &args)?;
        ensure!(
            !out.status.success(),
            "exec {command:?} ran in a pod without a node"
        );
        Ok(text(&out))
    };
    // A new policy takes a moment to be enforced.
    let mut refused = None;
    for _ in 0..100 {
        let out = exec(Some(&as_delegate_sync), &["sh", "-c", "id"])?;
        if out.contains(REFUSED) {
            refused = Some(out);
            break;
        }
        ensure!(out.contains(ADMITTED), "{out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let refused = refused.context("the policy never refused an exec of sh")?;
    ensure!(
        refused.contains("Forbidden") && refused.contains("not sh -c id"),
        "{refused}"
    );

    let relay = ["/proxy-waiter", "relay", "--container", "main"];
    let out = exec(Some(&as_delegate_sync), &relay)?;
    ensure!(
        out.contains(ADMITTED) && !out.contains(REFUSED),
        "the relay itself: {out}"
    );
    for command in [
        &["/proxy-waiter", "relay", "--container", "other"][..],
        &["/proxy-waiter", "relay", "--container", "main", "--extra"],
        &["/proxy-waiter", "relay", "--container"],
        &["/proxy-waiter", "relay"],
        &["/proxy-waiter", "run", "--container", "main"],
        &["proxy-waiter", "relay", "--container", "main"],
        &["/bin/sh", "relay", "--container", "main"],
    ] {
        let out = exec(Some(&as_delegate_sync), command)?;
        ensure!(
            out.contains(REFUSED) && out.contains(&command.join(" ")),
            "{command:?}: {out}"
        );
    }
    // With a TTY (kubectl drops -t without a terminal: the request by hand).
    let body = scratch.write("exec-body.json", "{}")?;
    let raw_exec = |tty: bool| -> anyhow::Result<String> {
        let path = format!(
            "/api/v1/namespaces/{}/pods/proxy/exec?command=/proxy-waiter&command=relay\
             &command=--container&command=main&container=main&stdout=true&tty={tty}",
            ns.name
        );
        let out = kubectl(
            env,
            "cluster1",
            &[
                &as_delegate_sync,
                "create",
                "--raw",
                &path,
                "-f",
                body.to_str().context("path")?,
            ],
        )?;
        ensure!(!out.status.success(), "exec with tty={tty} ran");
        Ok(text(&out))
    };
    let out = raw_exec(true)?;
    ensure!(out.contains(REFUSED), "with a TTY: {out}");
    let out = raw_exec(false)?;
    ensure!(
        out.contains(ADMITTED) && !out.contains(REFUSED),
        "without a TTY: {out}"
    );
    // Anyone else: not the policy's business.
    let out = exec(None, &["sh", "-c", "id"])?;
    ensure!(
        out.contains(ADMITTED) && !out.contains(REFUSED),
        "an administrator's exec: {out}"
    );
    Ok(())
}
