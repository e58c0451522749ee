//! Flags (each also an environment variable) and the plain [`Config`] they become.

use std::{path::PathBuf, str::FromStr, time::Duration};

use admin::process::LogFormat;
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
    /// Repeat, or separate with commas. Adds to the targets of --config. The file is read
    /// again when it changes (a rotated Secret), no restart needed.
    #[arg(
        long = "target",
        env = "DELEGATE_SYNC_TARGETS",
        value_delimiter = ',',
        required_unless_present = "config"
    )]
    pub targets: Vec<TargetSpec>,
    /// YAML file listing targets: `targets: [{name: cluster2, kubeconfig: /path, context: c2},
    /// {name: cluster1, self: true}]`.
    #[arg(long, env = "DELEGATE_SYNC_CONFIG")]
    pub config: Option<PathBuf>,
    /// File with the key that verifies saved manifests (the webhook's --manifest-key-file).
    #[arg(long, env = "DELEGATE_SYNC_MANIFEST_KEY_FILE")]
    pub manifest_key_file: PathBuf,
    /// Seconds between attempts to place a proxy that fits nowhere yet. A safety net only:
    /// pending proxies are retried as soon as a pod ends or a node changes in a target.
    #[arg(
        long,
        env = "DELEGATE_SYNC_PENDING_RETRY_SECONDS",
        default_value_t = 30
    )]
    pub pending_retry_seconds: u64,
    /// After this long unreachable, a target is lost: its running proxies fail with reason
    /// ClusterLost and deleted proxies are released without deleting their delegates there
    /// (a duration: 90s, 15m, 1h).
    #[arg(long, env = "DELEGATE_SYNC_CLUSTER_LOST_TIMEOUT", default_value = "15m", value_parser = parse_duration)]
    pub cluster_lost_timeout: Duration,
    /// Proxies reconciled at the same time (each may hold a connection to an apiserver).
    #[arg(long, env = "DELEGATE_SYNC_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Delegate container logs relayed live to their proxies at once (each holds a log stream
    /// from a target and an exec into a proxy container). Past it, a proxy gets its
    /// delegate's log when the container ended, with an Event that says so.
    #[arg(long, env = "DELEGATE_SYNC_MAX_LOG_STREAMS", default_value_t = 100)]
    pub max_log_streams: usize,
    /// Relay each delegate container's log into its proxy container, so that `kubectl logs`
    /// on a proxy shows it (needs pods/exec in the source and pods/log in targets).
    #[arg(long, env = "DELEGATE_SYNC_LOG_RELAY", default_value_t = true, action = clap::ArgAction::Set)]
    pub log_relay: bool,
    /// Create a delegate's namespace in its target when missing (labelled as made by
    /// delegate-sync, deleted by it once it holds nothing).
    #[arg(long, env = "DELEGATE_SYNC_CREATE_NAMESPACES")]
    pub create_namespaces: bool,
    /// Make what a pod references in its delegate's target: its ServiceAccount (no token), and
    /// copies of its ConfigMaps and Secrets when its namespace is labelled
    /// multicluster.admiralty.io/copy-references=true (needs read access to them here).
    #[arg(long, env = "DELEGATE_SYNC_COPY_REFERENCES")]
    pub copy_references: bool,
    /// Run only while holding a Lease, so that several replicas are safe (one works, the
    /// others wait to take over).
    #[arg(long, env = "DELEGATE_SYNC_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Namespace of the Lease (default: the pod's own, from POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE", required_if_eq("leader_elect", "true"))]
    pub leader_election_namespace: Option<String>,
    /// Name of the Lease.
    #[arg(
        long,
        env = "DELEGATE_SYNC_LEADER_ELECTION_LEASE_NAME",
        default_value = "delegate-sync"
    )]
    pub leader_election_lease_name: String,
    /// Who this replica is in the Lease (default: POD_NAME, else the host name).
    #[arg(long, env = "POD_NAME")]
    pub leader_election_identity: Option<String>,
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
    /// Log format.
    #[arg(long, env = "DELEGATE_SYNC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
}

/// The targets of a --config file.
pub fn targets_file(text: &str) -> anyhow::Result<Vec<TargetSpec>> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        targets: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Entry {
        name: String,
        kubeconfig: Option<PathBuf>,
        context: Option<String>,
        #[serde(default, rename = "self")]
        is_self: bool,
    }
    let file: File = serde_saphyr::from_str(text).context("not a targets file")?;
    file.targets
        .into_iter()
        .map(|e| {
            let location = match (e.is_self, e.kubeconfig, e.context) {
                (true, None, None) => "self".to_string(),
                (false, Some(path), context) => {
                    let path = path.display().to_string();
                    match context {
                        Some(context) => format!("{path}#{context}"),
                        None => path,
                    }
                }
                _ => anyhow::bail!(
                    "target {:?}: give either `self: true` or `kubeconfig` (and optionally `context`)",
                    e.name
                ),
            };
            format!("{}={location}", e.name)
                .parse::<TargetSpec>()
                .map_err(anyhow::Error::msg)
        })
        .collect()
}

fn check_unique(targets: &[TargetSpec]) -> anyhow::Result<()> {
    if targets.is_empty() {
        anyhow::bail!("no targets: give --target or --config");
    }
    let mut seen = std::collections::BTreeSet::new();
    for target in targets {
        if !seen.insert(&target.name) {
            anyhow::bail!("target {:?} is given twice", target.name);
        }
    }
    Ok(())
}

pub use contract::parse_duration;

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
    pub cluster_lost_timeout: Duration,
    pub concurrency: u16,
    pub max_log_streams: usize,
    pub log_relay: bool,
    /// What is made in targets for the pods delegated there.
    pub copies: crate::copies::Settings,
    /// None: no leader election (one replica).
    pub leader_election: Option<crate::leader::LeaseSettings>,
    pub admin_address: std::net::SocketAddr,
}

impl Args {
    pub fn into_config(self) -> anyhow::Result<Config> {
        let Self {
            cluster_name,
            kubeconfig,
            context,
            mut targets,
            config,
            manifest_key_file,
            pending_retry_seconds,
            cluster_lost_timeout,
            concurrency,
            max_log_streams,
            log_relay,
            create_namespaces,
            copy_references,
            leader_elect,
            leader_election_namespace,
            leader_election_lease_name,
            leader_election_identity,
            admin_address,
            log_level: _,
            log_format: _,
        } = self;
        let leader_election = match (leader_elect, leader_election_namespace) {
            (false, _) => None,
            (true, None) => anyhow::bail!("--leader-elect needs --leader-election-namespace"),
            (true, Some(namespace)) => Some(crate::leader::LeaseSettings::new(
                namespace,
                leader_election_lease_name,
                leader_election_identity.unwrap_or_else(crate::leader::host_name),
            )),
        };
        if let Some(path) = &config {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --config {}", path.display()))?;
            let file =
                targets_file(&text).with_context(|| format!("--config {}", path.display()))?;
            targets.splice(0..0, file);
        }
        check_unique(&targets)?;
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
            cluster_lost_timeout,
            concurrency,
            max_log_streams,
            log_relay,
            copies: crate::copies::Settings {
                create_namespaces,
                copy_references,
            },
            leader_election,
            admin_address,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_come_from_a_file_too_and_mistakes_are_named() {
        let targets = targets_file(
            "targets:\n  - name: cluster2\n    kubeconfig: /etc/c2\n    context: admin\n  - name: cluster1\n    self: true\n",
        )
        .unwrap();
        assert_eq!(targets[0], "cluster2=/etc/c2#admin".parse().unwrap());
        assert_eq!(targets[1].kubeconfig, None);
        let both = targets_file("targets: [{name: x, self: true, kubeconfig: /k}]").unwrap_err();
        assert!(format!("{both:#}").contains("either"), "{both:#}");
        assert!(targets_file("targets: [{name: x, kubeconfig: /k, color: red}]").is_err());
        let twice = check_unique(&targets.iter().chain(&targets).cloned().collect::<Vec<_>>());
        assert!(twice.unwrap_err().to_string().contains("twice"));
        assert!(check_unique(&[]).is_err());
    }

    #[test]
    fn durations_read_like_go() {
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h30m5s"), Ok(Duration::from_secs(5405)));
        for bad in ["", "15", "m", "1d", "-1s", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

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
