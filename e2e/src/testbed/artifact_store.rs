//! The test bed's artifact store: one S3-compatible server (`artifact-store`, gofakes3 in
//! memory, built by `make tools`) for all clusters, as a real bucket is one for all of them.
//! Argo's artifact examples write and read it from pods on the real nodes, whose gateways
//! relay [`ADDRESS`]:443 to it. It serves TLS with a certificate of its own CA for
//! [`ADDRESS`], so that Argo's executor checks it as it would check a real endpoint.
//!
//! A test fixture: it checks no request signature, so any access key is accepted.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use super::process::{self, ProcessRecord};

/// The program, as `process::started_in` names it.
pub const PROGRAM: &str = "artifact-store";
/// Where pods on real nodes reach the store (port 443): an address of the Service range that
/// no Service of the test bed takes, held by every real node's gateway.
pub const ADDRESS: &str = "10.96.0.2";
/// The endpoint Argo's artifact repository names.
pub const ENDPOINT: &str = "10.96.0.2:443";
/// The bucket made at start.
pub const BUCKET: &str = "argo-artifacts";

const VALIDITY: Duration = Duration::from_secs(30 * 86_400);

/// What the state file remembers of the store.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArtifactStoreState {
    pub process: ProcessRecord,
    /// Where it listens, on the host's loopback (the gateways relay to it).
    pub local: SocketAddr,
    /// The CA of its serving certificate (PEM).
    pub ca_file: PathBuf,
}

impl ArtifactStoreState {
    /// The CA that signed the store's certificate, PEM.
    pub fn ca_pem(&self) -> anyhow::Result<String> {
        std::fs::read_to_string(&self.ca_file)
            .with_context(|| format!("cannot read {}", self.ca_file.display()))
    }
}

/// Starts the store in `dir` (its CA, certificate, log and address file go there) and waits
/// until it serves.
pub async fn start(dir: &Path, program: &Path) -> anyhow::Result<ArtifactStoreState> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ca = certs::Authority::generate("artifact-store-ca", VALIDITY)?;
    ca.pem().write(dir, "ca")?;
    ca.issue_serving(PROGRAM, &[ADDRESS, "127.0.0.1"], VALIDITY)?
        .write(dir, "tls")?;
    let address_file = dir.join("address");
    let _ = std::fs::remove_file(&address_file);
    let args = vec![
        "--bind-address=127.0.0.1:0".to_string(),
        format!("--tls-cert-file={}", dir.join("tls.crt").display()),
        format!("--tls-private-key-file={}", dir.join("tls.key").display()),
        format!("--buckets={BUCKET}"),
        format!("--address-file={}", address_file.display()),
    ];
    let record = process::spawn(PROGRAM, program, &args, &dir.join("artifact-store.log"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let local = loop {
        if let Some(local) = std::fs::read_to_string(&address_file)
            .ok()
            .and_then(|a| a.trim().parse().ok())
        {
            break local;
        }
        if !record.is_running() {
            bail!(
                "the artifact store exited at start:\n{}",
                record.log_tail(10)
            );
        }
        if Instant::now() > deadline {
            process::stop_all(std::slice::from_ref(&record), Duration::from_secs(2));
            bail!(
                "the artifact store did not serve within 10 s:\n{}",
                record.log_tail(10)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Ok(ArtifactStoreState {
        process: record,
        local,
        ca_file: dir.join("ca.crt"),
    })
}
