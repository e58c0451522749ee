//! `certs bootstrap-target` as a process, against the test bed: flags from the environment, a
//! dry run printing one line per object and writing nothing, and clear failures (exit 1) for
//! a context that is not there. The bootstrap itself is tested in e2e/tests/bootstrap.rs.

use std::process::Command;

use e2e::{TestEnv, support::unique_name};
use k8s_openapi::api::{core::v1::Namespace, rbac::v1::ClusterRole};
use kube::Api;

fn certs(envs: &[(&str, &str)], args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_certs"))
        .arg("bootstrap-target")
        .args(args)
        .envs(envs.iter().copied())
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn dry_run_prints_a_line_per_object_and_a_missing_context_is_named() {
    let env = TestEnv::get().await.unwrap();
    let ns = env.namespace("certs-boot").await.unwrap();
    let target_namespace = unique_name("certs-boot-sa");
    let kubeconfig = env.kubeconfig().display().to_string();
    let flags = [
        ("CERTS_KUBECONFIG", kubeconfig.as_str()),
        ("CERTS_SOURCE_CONTEXT", "cluster1"),
        ("CERTS_TARGET_CONTEXT", "cluster2"),
        ("CERTS_TARGET_NAME", "cluster2"),
        ("CERTS_NAMESPACE", ns.name.as_str()),
        ("CERTS_TARGET_NAMESPACE", target_namespace.as_str()),
    ];
    let (ok, stdout, stderr) = certs(&flags, &["--dry-run"]);
    assert!(ok, "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            format!("certs: cluster2: Namespace {target_namespace} would be created (dry run)"),
            format!(
                "certs: cluster2: ServiceAccount {target_namespace}/delegate-sync-cluster1 would \
                 be created (dry run), not validated: its namespace does not exist yet"
            ),
            format!(
                "certs: cluster2: ClusterRole {target_namespace}-delegate-sync-cluster1 would be \
                 created (dry run)"
            ),
            format!(
                "certs: cluster2: ClusterRoleBinding {target_namespace}-delegate-sync-cluster1 \
                 would be created (dry run)"
            ),
            format!(
                "certs: cluster2: Secret {target_namespace}/delegate-sync-cluster1-token would \
                 be created (dry run), not validated: its namespace does not exist yet"
            ),
            format!("certs: cluster1: Namespace {} unchanged (dry run)", ns.name),
            format!(
                "certs: cluster1: Secret {}/cluster2-kubeconfig would be created (dry run)",
                ns.name
            ),
        ],
        "{stdout}{stderr}"
    );
    // The test bed's servers are on loopback: said so.
    assert!(stderr.contains("loopback"), "{stderr}");
    let cluster2 = env.client("cluster2").await.unwrap();
    assert!(
        Api::<Namespace>::all(cluster2.clone())
            .get_opt(&target_namespace)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        Api::<ClusterRole>::all(cluster2)
            .get_opt(&format!("{target_namespace}-delegate-sync-cluster1"))
            .await
            .unwrap()
            .is_none()
    );

    let (ok, stdout, stderr) = certs(&flags, &["--target-context", "cluster9", "--dry-run"]);
    assert!(!ok && stdout.is_empty(), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!(
            "context \"cluster9\" (--target-context) is not in the kubeconfig {kubeconfig}"
        )),
        "{stderr}"
    );
}
