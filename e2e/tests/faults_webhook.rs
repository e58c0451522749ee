//! Faults of the webhook, through cluster1's real kube-apiserver (a MutatingWebhookConfiguration
//! with `failurePolicy: Fail` that selects only the test's labelled namespace):
//! - the webhook down (its port closed, then a listener that never answers) refuses pod
//!   creation in the opted-in namespace only, with an error naming the webhook; other
//!   namespaces are unaffected (and not slowed); when it returns, creation works again;
//! - an expiring serving certificate renewed by `certs ensure` (the real binary, i.e.
//!   `certs::renew::ensure`) while clients hammer admissions: no admission fails;
//! - the same when the CA itself expires and is replaced (the files reach the webhook as a
//!   Secret volume does, after `certs` has updated the caBundle).
//!
//! Figures in `target/faults/webhook-*.json`.

mod common;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::*;
use contract::{ELECT, PROXY_LABEL, manifest::ManifestKey};
use e2e::{TestEnv, TestNamespace, WebhookRegistration, support::unique_name};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::PostParams};
use serde_json::json;

const KEY: &[u8] = b"faults-webhook-manifest-key-0123456789abcd";
const WEBHOOK: &str = "proxies.multicluster.admiralty.io";
const DAY: Duration = Duration::from_secs(86_400);

/// The webhook in this process over real TLS; stopped (gracefully) by [`Webhook::stop`].
struct Webhook {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Webhook {
    async fn start(cert: &Path, key: &Path, listen: SocketAddr) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = webhook::args::Config {
            listen,
            admin: "127.0.0.1:0".parse().unwrap(),
            path: "/mutate".into(),
            tls_cert_file: cert.to_path_buf(),
            tls_private_key_file: key.to_path_buf(),
            settings: webhook::mutate::ProxySettings {
                waiter_image: "proxy-waiter:faults".into(),
                ..Default::default()
            },
            key: ManifestKey::from_bytes(KEY).unwrap(),
            excluded_namespaces: vec!["kube-system".into()],
            max_body_bytes: 4 << 20,
            max_concurrent_requests: 64,
            limits: webhook::server::Limits {
                max_connections: 256,
                handshake_timeout: Duration::from_secs(5),
                header_read_timeout: Duration::from_secs(5),
                shutdown_timeout: Duration::from_secs(5),
            },
        };
        let bound = webhook::bind(config, provider).await.unwrap();
        let addr = bound.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(bound.serve(async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let stopped = tokio::time::timeout(Duration::from_secs(20), &mut self.task).await;
        assert!(stopped.is_ok(), "the webhook did not stop within 20 s");
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn pod(name: &str, elected: bool) -> Pod {
    let annotations = if elected {
        json!({ ELECT: "" })
    } else {
        json!({})
    };
    serde_json::from_value(json!({
        "metadata": { "name": name, "annotations": annotations },
        "spec": { "containers": [{ "name": "main", "image": "busybox" }] },
    }))
    .unwrap()
}

fn is_proxy(pod: &Pod) -> bool {
    pod.metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.get(PROXY_LABEL).map(String::as_str) == Some("true"))
        && pod.spec.as_ref().unwrap().containers[0].image.as_deref() == Some("proxy-waiter:faults")
}

const DRY_RUN: PostParams = PostParams {
    dry_run: true,
    field_manager: None,
};

/// A namespace opted in for this test's webhook registration only, and the registration.
async fn opted_in(
    env: &TestEnv,
    prefix: &str,
    port: u16,
    ca_pem: &str,
) -> (TestNamespace, WebhookRegistration) {
    let selector = unique_name("sel");
    let labels = BTreeMap::from([
        (
            contract::NAMESPACE_OPT_IN_LABEL.to_string(),
            contract::NAMESPACE_OPT_IN_VALUE.to_string(),
        ),
        ("faults-webhook".to_string(), selector),
    ]);
    let registration = WebhookRegistration::create(env, "cluster1", port, ca_pem, labels.clone())
        .await
        .unwrap();
    let ns = env.namespace_with_labels(prefix, labels).await.unwrap();
    (ns, registration)
}

/// Waits until the apiserver calls the webhook for the namespace (a dry-run creation of an
/// elected pod comes back as a proxy).
async fn wait_effective(pods: &Api<Pod>) -> Duration {
    let started = Instant::now();
    wait_until("webhook effective", Duration::from_secs(30), async || {
        let answer = pods.create(&DRY_RUN, &pod("probe", true)).await;
        Ok(match answer {
            Ok(p) if is_proxy(&p) => None,
            Ok(_) => Some("not a proxy yet".into()),
            Err(e) => Some(e.to_string()),
        })
    })
    .await
    .unwrap();
    started.elapsed()
}

fn refusal(result: kube::Result<Pod>) -> kube::core::Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected the apiserver to refuse, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_down_refuses_only_opted_in_namespaces_clearly_and_recovers() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = TestEnv::get().await.unwrap();
    let scratch = Scratch::new("faults-webhook-down");
    let ca = certs::Authority::generate("faults-webhook-ca", DAY).unwrap();
    ca.issue_serving("webhook", &["127.0.0.1"], DAY)
        .unwrap()
        .write(&scratch.0, "tls")
        .unwrap();
    let (cert, key) = (scratch.path("tls.crt"), scratch.path("tls.key"));
    let server = Webhook::start(&cert, &key, "127.0.0.1:0".parse().unwrap()).await;
    let addr = server.addr;
    let (ns, _registration) = opted_in(env, "faults-wh-on", addr.port(), &ca.pem().cert).await;
    let other = env.namespace("faults-wh-off").await.unwrap();
    let pods = ns.api::<Pod>("cluster1").await.unwrap();
    let elsewhere = other.api::<Pod>("cluster1").await.unwrap();
    wait_effective(&pods).await;
    let up = pods
        .create(&PostParams::default(), &pod("before", true))
        .await
        .unwrap();
    assert!(is_proxy(&up));

    // Down: nothing listens on its port.
    server.stop().await;
    let asked = Instant::now();
    let refused = refusal(
        pods.create(&PostParams::default(), &pod("down-elected", true))
            .await,
    );
    let refused_after = asked.elapsed();
    let also_refused = refusal(
        pods.create(&PostParams::default(), &pod("down-plain", false))
            .await,
    );
    for status in [&refused, &also_refused] {
        assert!(
            status
                .message
                .contains(&format!("failed calling webhook \"{WEBHOOK}\""))
                && status.message.contains("connection refused"),
            "the error names the webhook and the cause: {status:?}"
        );
        assert_eq!(status.code, 500, "{status:?}");
    }
    let asked = Instant::now();
    for (name, elected) in [("down-elected", true), ("down-plain", false)] {
        let created = elsewhere
            .create(&PostParams::default(), &pod(name, elected))
            .await
            .unwrap();
        assert!(!is_proxy(&created), "other namespaces are not touched");
    }
    let elsewhere_down = asked.elapsed() / 2;

    // Hung: its port accepts connections but never answers (timeoutSeconds: 5).
    let black_hole = tokio::net::TcpListener::bind(addr).await.unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let holder = {
        let held = held.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = black_hole.accept().await {
                held.lock().unwrap().push(socket);
            }
        })
    };
    let asked = Instant::now();
    let timed_out = refusal(
        pods.create(&PostParams::default(), &pod("hung-elected", true))
            .await,
    );
    let timed_out_after = asked.elapsed();
    assert!(
        timed_out
            .message
            .contains(&format!("failed calling webhook \"{WEBHOOK}\""))
            && (timed_out.message.contains("deadline exceeded")
                || timed_out.message.contains("timeout")),
        "{timed_out:?}"
    );
    let asked = Instant::now();
    let created = elsewhere
        .create(&PostParams::default(), &pod("hung-elected", true))
        .await
        .unwrap();
    let elsewhere_hung = asked.elapsed();
    assert!(!is_proxy(&created));
    assert!(
        elsewhere_hung < Duration::from_secs(2),
        "other namespaces are not slowed by a hung webhook: {elsewhere_hung:?}"
    );
    // Gone again: the listener and every connection it accepted are closed.
    holder.abort();
    let _ = holder.await;
    held.lock().unwrap().clear();

    // Back, on the same address: creation works again.
    let returned = Instant::now();
    let _server = Webhook::start(&cert, &key, addr).await;
    let recovered_after = wait_effective(&pods).await;
    let after = pods
        .create(&PostParams::default(), &pod("after", true))
        .await
        .unwrap();
    assert!(
        is_proxy(&after),
        "after it returns, elected pods are proxies"
    );
    let plain = pods
        .create(&PostParams::default(), &pod("after-plain", false))
        .await
        .unwrap();
    assert!(!is_proxy(&plain));

    report(
        "webhook-down",
        &json!({
            "refused_message": refused.message,
            "refused_code": refused.code,
            "refused_after_seconds": refused_after.as_secs_f64(),
            "hung_message": timed_out.message,
            "hung_refused_after_seconds": timed_out_after.as_secs_f64(),
            "other_namespace_create_seconds_while_down": elsewhere_down.as_secs_f64(),
            "other_namespace_create_seconds_while_hung": elsewhere_hung.as_secs_f64(),
            "working_again_after_seconds": recovered_after.as_secs_f64(),
            "since_restart_seconds": returned.elapsed().as_secs_f64(),
        }),
    );
}

/// Clients creating elected pods (server-side dry-run: admitted, never stored) as fast as the
/// apiserver answers, counting answers that are not proxies.
struct Hammer {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Hammer {
    fn start(pods: &Api<Pod>, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|i| {
                let (pods, stop, ok, failed, failures) = (
                    pods.clone(),
                    stop.clone(),
                    ok.clone(),
                    failed.clone(),
                    failures.clone(),
                );
                tokio::spawn(async move {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let name = format!("hammer-{i}-{n}");
                        match pods.create(&DRY_RUN, &pod(&name, true)).await {
                            Ok(p) if is_proxy(&p) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            other => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                let mut f = failures.lock().unwrap();
                                if f.len() < 10 {
                                    f.push(match other {
                                        Ok(_) => format!("{name}: admitted without the webhook"),
                                        Err(e) => format!("{name}: {e}"),
                                    });
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            ok,
            failed,
            failures,
            tasks,
        }
    }

    fn counts(&self) -> (usize, usize) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    async fn finish(self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let (ok, failed) = (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        );
        (ok, failed, self.failures.lock().unwrap().clone())
    }
}

/// `certs ensure` for the webhook's name, keeping files in `out_dir` and the caBundle of
/// `registration` current; returns what it printed.
fn certs_ensure(certs: &Path, env: &TestEnv, out_dir: &Path, registration: &str) -> String {
    let out = std::process::Command::new(certs)
        .args(["ensure", "--name", "127.0.0.1", "--out-dir"])
        .arg(out_dir)
        .args(["--webhook-configuration", registration, "--kubeconfig"])
        .arg(env.kubeconfig())
        .args([
            "--context",
            "cluster1",
            "--validity-days",
            "40",
            "--renew-before-days",
            "30",
        ])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "certs ensure failed:\n{text}");
    text
}

/// The first certificate the server at `addr` presents, trusting `ca_pem`.
async fn served_certificate(addr: SocketAddr, ca_pem: &str) -> Vec<u8> {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    let ca_pem = ca_pem.to_string();
    tokio::task::spawn_blocking(move || {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut connection = rustls::ClientConnection::new(
            Arc::new(config),
            ServerName::try_from("127.0.0.1").unwrap(),
        )
        .unwrap();
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        while connection.is_handshaking() {
            connection.complete_io(&mut tcp).unwrap();
        }
        connection.peer_certificates().unwrap()[0].to_vec()
    })
    .await
    .unwrap()
}

fn first_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// Concurrent clients, and how long they hammer before and after each step.
fn hammer_size() -> (usize, Duration) {
    if full() {
        (12, Duration::from_secs(10))
    } else {
        (6, Duration::from_secs(3))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_serving_certificate_renewed_by_certs_fails_no_admission() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = TestEnv::get().await.unwrap();
    let certs = workspace_binary("certs", "certs");
    // certs' --out-dir is the webhook's own directory: files are replaced one by one under
    // the running server (a certificate and its key do not change at the same instant).
    let scratch = Scratch::new("faults-webhook-renewal");
    let dir = scratch.0.clone();
    let ca = certs::Authority::generate("faults-renewal-ca", 120 * DAY).unwrap();
    ca.pem().write(&dir, "ca").unwrap();
    let expiring = ca
        .issue_serving("127.0.0.1", &["127.0.0.1"], Duration::from_secs(3600))
        .unwrap();
    expiring.write(&dir, "tls").unwrap();
    let ca_pem = ca.pem().cert;
    let server = Webhook::start(
        &dir.join("tls.crt"),
        &dir.join("tls.key"),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    let (ns, registration) = opted_in(env, "faults-renewal", server.addr.port(), &ca_pem).await;
    let pods = ns.api::<Pod>("cluster1").await.unwrap();
    wait_effective(&pods).await;
    assert_eq!(
        served_certificate(server.addr, &ca_pem).await,
        first_der(&expiring.cert)
    );

    let (clients, settle) = hammer_size();
    let hammer = Hammer::start(&pods, clients);
    let started = Instant::now();
    tokio::time::sleep(settle).await;
    let before = hammer.counts();
    let printed = certs_ensure(&certs, env, &dir, &registration.name);
    assert!(
        printed.contains("issued a serving certificate") && !printed.contains("renewed the CA"),
        "{printed}"
    );
    let renewed = std::fs::read_to_string(dir.join("tls.crt")).unwrap();
    assert_ne!(first_der(&renewed), first_der(&expiring.cert));
    tokio::time::sleep(settle).await;
    assert_eq!(
        served_certificate(server.addr, &ca_pem).await,
        first_der(&renewed),
        "the webhook serves the renewed certificate without a restart"
    );
    // The apiserver keeps its connection to the webhook while the caBundle is unchanged: an
    // equivalent bundle (one more newline) makes it connect again, to the renewed certificate.
    let client = env.client("cluster1").await.unwrap();
    registration
        .set_ca_bundle(&client, &format!("{}\n", ca_pem.trim_end()))
        .await
        .unwrap();
    tokio::time::sleep(settle + Duration::from_secs(1)).await;
    let (ok, failed, failures) = hammer.finish().await;
    let seconds = started.elapsed().as_secs_f64();
    report(
        "webhook-serving-renewal",
        &json!({
            "admissions": ok + failed,
            "failed": failed,
            "admissions_before_renewal": before.0 + before.1,
            "seconds": seconds,
            "admissions_per_second": (ok + failed) as f64 / seconds,
            "clients": clients,
            "certs_output": printed,
            "failures": failures,
        }),
    );
    assert_eq!(failed, 0, "failed admissions: {failures:?}");
    assert!(ok > 0);
}

/// A directory laid out like a Secret volume: `tls.crt` and `tls.key` are symlinks through
/// `..data`, which is swapped atomically to a new `..genN` directory.
struct SecretVolume {
    dir: PathBuf,
    generation: u32,
}

impl SecretVolume {
    fn new(dir: PathBuf, from: &Path) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        let mut volume = Self { dir, generation: 0 };
        volume.project(from);
        for file in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{file}"), volume.dir.join(file)).unwrap();
        }
        volume
    }

    /// What the kubelet does when the Secret changed: the new files appear at once.
    fn project(&mut self, from: &Path) {
        self.generation += 1;
        let data = self.dir.join(format!("..gen{}", self.generation));
        std::fs::create_dir_all(&data).unwrap();
        for file in ["tls.crt", "tls.key"] {
            std::fs::copy(from.join(file), data.join(file)).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(data.file_name().unwrap(), &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_ca_renewed_by_certs_fails_no_admission() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = TestEnv::get().await.unwrap();
    let certs = workspace_binary("certs", "certs");
    let scratch = Scratch::new("faults-webhook-ca");
    let store = scratch.path("store");
    std::fs::create_dir_all(&store).unwrap();
    // A CA with 10 days left (certs renews below 30) and its serving certificate.
    let old_ca = certs::Authority::generate("faults-expiring-ca", 10 * DAY).unwrap();
    old_ca.pem().write(&store, "ca").unwrap();
    let old_serving = old_ca
        .issue_serving("127.0.0.1", &["127.0.0.1"], 5 * DAY)
        .unwrap();
    old_serving.write(&store, "tls").unwrap();
    let mut volume = SecretVolume::new(scratch.path("volume"), &store);
    let old_ca_pem = old_ca.pem().cert;
    let server = Webhook::start(
        &volume.dir.join("tls.crt"),
        &volume.dir.join("tls.key"),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    let (ns, registration) = opted_in(env, "faults-ca", server.addr.port(), &old_ca_pem).await;
    let pods = ns.api::<Pod>("cluster1").await.unwrap();
    wait_effective(&pods).await;

    let (clients, settle) = hammer_size();
    let hammer = Hammer::start(&pods, clients);
    let started = Instant::now();
    tokio::time::sleep(settle).await;
    let printed = certs_ensure(&certs, env, &store, &registration.name);
    assert!(
        printed.contains("renewed the CA") && printed.contains("caBundle updated"),
        "{printed}"
    );
    let new_ca_pem = std::fs::read_to_string(store.join("ca.crt")).unwrap();
    assert_ne!(first_der(&new_ca_pem), first_der(&old_ca_pem));
    // The kubelet updates Secret volumes a while after the Secret changed.
    tokio::time::sleep(settle).await;
    volume.project(&store);
    tokio::time::sleep(settle).await;
    let renewed = std::fs::read_to_string(store.join("tls.crt")).unwrap();
    assert_eq!(
        served_certificate(server.addr, &new_ca_pem).await,
        first_der(&renewed),
        "the webhook serves the certificate of the new CA"
    );
    // Once the old CA has expired, certs drops it from the caBundle: the apiserver then
    // connects again and must trust the new certificate through the new CA alone.
    let client = env.client("cluster1").await.unwrap();
    registration
        .set_ca_bundle(&client, &new_ca_pem)
        .await
        .unwrap();
    tokio::time::sleep(settle + Duration::from_secs(1)).await;
    let (ok, failed, failures) = hammer.finish().await;
    let seconds = started.elapsed().as_secs_f64();
    report(
        "webhook-ca-renewal",
        &json!({
            "admissions": ok + failed,
            "failed": failed,
            "seconds": seconds,
            "admissions_per_second": (ok + failed) as f64 / seconds,
            "clients": clients,
            "certs_output": printed,
            "failures": failures,
        }),
    );
    assert_eq!(failed, 0, "failed admissions: {failures:?}");
    assert!(ok > 0);
}
