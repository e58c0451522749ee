//! Flags (each also an environment variable) and the plain [`Config`] they become.

use std::{path::PathBuf, str::FromStr, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use contract::manifest::ManifestKey;

/// Places the delegate of each proxy pod in a target cluster, mirrors it back onto the proxy,
/// and cleans up.
#[derive(Debug, Parser)]
#[command(name = "delegate-sync", version, about, long_about = None)]
pub struct Args {
    /// Name of the source cluster (the one with the proxies); it prefixes delegate names.
    #[arg(long, env = "DELEGATE_SYNC_CLUSTER_NAME")]
    pub cluster_name: String,
    /// Kubeconfig of the source cluster (default: in-cluster, then ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Context of --kubeconfig.
    #[arg(long, env = "DELEGATE_SYNC_CONTEXT")]
    pub context: Option<String>,
    /// A target cluster: NAME=KUBECONFIG[#CONTEXT]; NAME=self targets the source cluster.
    /// Repeat, or separate with commas.
    #[arg(
        long = "target",
        env = "DELEGATE_SYNC_TARGETS",
        value_delimiter = ',',
        required = true
    )]
    pub targets: Vec<TargetSpec>,
    /// File with the key that verifies saved manifests (the webhook's --manifest-key-file).
    #[arg(long, env = "DELEGATE_SYNC_MANIFEST_KEY_FILE")]
    pub manifest_key_file: PathBuf,
    /// Seconds between attempts to place a proxy that fits nowhere yet. A safety net only:
    /// pending proxies are retried as soon as a pod ends or a node changes in a target.
    #[arg(long, env = "DELEGATE_SYNC_PENDING_RETRY_SECONDS", default_value_t = 30)]
    pub pending_retry_seconds: u64,
    /// Plain-HTTP address of /livez, /readyz and /metrics.
    #[arg(
        long,
        env = "DELEGATE_SYNC_ADMIN_ADDRESS",
        default_value = "0.0.0.0:8080"
    )]
    pub admin_address: std::net::SocketAddr,
    /// Log filter, e.g. `info` or `delegate_sync=debug`.
    #[arg(long, env = "DELEGATE_SYNC_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// Where a target cluster is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetSpec {
    pub name: String,
    /// None for `self` (the source cluster's own client).
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
}

impl FromStr for TargetSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (name, location) = text.split_once('=').ok_or_else(|| {
            format!("--target {text:?} is not NAME=KUBECONFIG[#CONTEXT] or NAME=self")
        })?;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(format!(
                "--target name {name:?} must be a DNS label (lowercase letters, digits, -)"
            ));
        }
        if location == "self" {
            return Ok(Self {
                name: name.into(),
                kubeconfig: None,
                context: None,
            });
        }
        let (path, context) = match location.split_once('#') {
            Some((path, context)) => (path, Some(context.to_string())),
            None => (location, None),
        };
        Ok(Self {
            name: name.into(),
            kubeconfig: Some(path.into()),
            context,
        })
    }
}

/// Everything the controller needs, free of CLI concerns.
pub struct Config {
    pub cluster_name: String,
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub targets: Vec<TargetSpec>,
    pub key: ManifestKey,
    pub pending_retry: Duration,
    pub admin_address: std::net::SocketAddr,
}

impl Args {
    pub fn into_config(self) -> anyhow::Result<Config> {
        let Self {
            cluster_name,
            kubeconfig,
            context,
            targets,
            manifest_key_file,
            pending_retry_seconds,
            admin_address,
            log_level: _,
        } = self;
        let bytes = std::fs::read(&manifest_key_file).with_context(|| {
            format!(
                "cannot read --manifest-key-file {}",
                manifest_key_file.display()
            )
        })?;
        let key = ManifestKey::from_bytes(&bytes)
            .with_context(|| format!("--manifest-key-file {}", manifest_key_file.display()))?;
        Ok(Config {
            cluster_name,
            kubeconfig,
            context,
            targets,
            key,
            pending_retry: Duration::from_secs(pending_retry_seconds.max(1)),
            admin_address,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_context_and_self() {
        assert_eq!(
            "cluster2=/etc/kube/c2.yaml#admin".parse::<TargetSpec>(),
            Ok(TargetSpec {
                name: "cluster2".into(),
                kubeconfig: Some("/etc/kube/c2.yaml".into()),
                context: Some("admin".into())
            })
        );
        assert_eq!(
            "cluster1=self".parse::<TargetSpec>().unwrap().kubeconfig,
            None
        );
        assert!(
            "nope"
                .parse::<TargetSpec>()
                .unwrap_err()
                .contains("NAME=KUBECONFIG")
        );
        assert!(
            "Bad_Name=x"
                .parse::<TargetSpec>()
                .unwrap_err()
                .contains("DNS label")
        );
    }
}
