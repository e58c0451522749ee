//! A real webhook server on loopback with real TLS, and clients for it.

#![allow(dead_code)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use certs::Authority;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::{ClientConfig, RootCertStore, pki_types::ServerName};
use serde_json::{Value, json};
use tokio::{net::TcpStream, sync::oneshot, task::JoinHandle};
use tokio_rustls::TlsConnector;
use webhook::{args::Config, mutate::ProxySettings, server::Limits};

pub const DAY: Duration = Duration::from_secs(86_400);

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A directory of certificates laid out like a Secret volume: files are symlinks through
/// `..data`, swapped atomically by [`CertDir::rotate`].
pub struct CertDir {
    pub dir: PathBuf,
    pub ca_pem: String,
    generation: u32,
}

impl CertDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("webhook-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut certs = Self {
            dir,
            ca_pem: String::new(),
            generation: 0,
        };
        certs.rotate(&["127.0.0.1"]);
        std::os::unix::fs::symlink("..data/tls.crt", certs.cert()).unwrap();
        std::os::unix::fs::symlink("..data/tls.key", certs.key()).unwrap();
        certs
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.join("tls.key")
    }

    /// A new CA and serving certificate, swapped in the way the kubelet updates Secret volumes.
    pub fn rotate(&mut self, names: &[&str]) {
        self.generation += 1;
        let ca = Authority::generate(&format!("test-ca-{}", self.generation), DAY).unwrap();
        let leaf = ca.issue_serving("webhook", names, DAY).unwrap();
        let data = self.dir.join(format!("..gen{}", self.generation));
        std::fs::create_dir_all(&data).unwrap();
        leaf.write(&data, "tls").unwrap();
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(data.file_name().unwrap(), &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        self.ca_pem = ca.pem().cert;
    }
}

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub const KEY: &[u8] = b"webhook-tests-manifest-key-0123456789";

pub fn config(certs: &CertDir, bind: &str) -> Config {
    Config {
        listen: bind.parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        path: "/mutate".into(),
        tls_cert_file: certs.cert(),
        tls_private_key_file: certs.key(),
        settings: ProxySettings {
            waiter_image: "proxy-waiter:test".into(),
            ..ProxySettings::default()
        },
        key: contract::manifest::ManifestKey::from_bytes(KEY).unwrap(),
        excluded_namespaces: vec!["kube-system".into(), "webhook-system".into()],
        max_body_bytes: 1024 * 1024,
        max_concurrent_requests: 8,
        limits: Limits {
            max_connections: 64,
            handshake_timeout: Duration::from_secs(2),
            header_read_timeout: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(5),
        },
    }
}

/// A running webhook; stopped (gracefully) when dropped or by [`Server::stop`].
pub struct Server {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    pub async fn start(config: Config) -> Self {
        let bound = webhook::bind(config, provider()).await.unwrap();
        let (addr, admin) = (bound.local_addr().unwrap(), bound.admin_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(bound.serve(async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            admin,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await?
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

pub fn client_config(ca_pem: &str, alpn: &[u8]) -> ClientConfig {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    config
}

pub async fn tls_connect(
    addr: SocketAddr,
    config: ClientConfig,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
}

/// Sends one request over a fresh TLS connection with HTTP/1.1 (`h2 = false`) or HTTP/2.
pub async fn send(
    addr: SocketAddr,
    ca_pem: &str,
    h2: bool,
    request: http::Request<Full<Bytes>>,
) -> (http::StatusCode, Bytes) {
    let tls = tls_connect(
        addr,
        client_config(ca_pem, if h2 { b"h2" } else { b"http/1.1" }),
    )
    .await
    .unwrap();
    let response = if h2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(connection);
        sender.send_request(request).await.unwrap()
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(connection);
        sender.send_request(request).await.unwrap()
    };
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

pub fn post(body: impl Into<Bytes>) -> http::Request<Full<Bytes>> {
    http::Request::post("/mutate")
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap()
}

pub fn review(uid: &str, namespace: &str, operation: &str, pod: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": { "group": "", "version": "v1", "kind": "Pod" },
            "resource": { "group": "", "version": "v1", "resource": "pods" },
            "namespace": namespace,
            "operation": operation,
            "userInfo": { "username": "tester" },
            "object": pod,
            "dryRun": false,
        }
    })
}

pub fn elected_pod(name: &str) -> Value {
    json!({
        "metadata": { "name": name, "annotations": { contract::ELECT: "" } },
        "spec": { "containers": [{ "name": "main", "image": "busybox" }] },
    })
}

pub fn fixture(name: &str) -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/{name}.pod.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}
