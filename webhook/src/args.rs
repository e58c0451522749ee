//! Command-line flags (Kubernetes conventions, each also an environment variable) and the plain
//! [`Config`] they become; tests build a `Config` directly.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    str::FromStr,
    time::Duration,
};

use anyhow::Context as _;
use clap::{Args as ClapArgs, Parser};
use contract::manifest::ManifestKey;
use serde_json::{Map, Value};

use crate::{mutate::ProxySettings, server::Limits};

/// Mutating admission webhook: turns pods annotated `multicluster.admiralty.io/elect` into
/// proxy pods whose delegates delegate-sync runs in another cluster.
#[derive(Debug, Parser)]
#[command(name = "webhook", version, about, long_about = None)]
pub struct Args {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub proxy: ProxyArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, ClapArgs)]
#[command(next_help_heading = "Serving admissions")]
pub struct ServerArgs {
    /// IP address to serve admissions on.
    #[arg(long, env = "WEBHOOK_BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,
    /// HTTPS port to serve admissions on.
    #[arg(long, env = "WEBHOOK_SECURE_PORT", default_value_t = 8443)]
    pub secure_port: u16,
    /// URL path of the webhook (the MutatingWebhookConfiguration's service path).
    #[arg(long, env = "WEBHOOK_PATH", default_value = "/mutate")]
    pub path: String,
    /// Namespace the webhook runs in: never mutated, whatever the webhook configuration says.
    #[arg(long, env = "POD_NAMESPACE")]
    pub own_namespace: Option<String>,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "WEBHOOK_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Admission requests answered at the same time (the rest queue).
    #[arg(long, env = "WEBHOOK_MAX_CONCURRENT_REQUESTS", default_value_t = 64)]
    pub max_concurrent_requests: usize,
    /// Open connections accepted at the same time.
    #[arg(long, env = "WEBHOOK_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Seconds a client may take for the TLS handshake, the headers, or the body.
    #[arg(long, env = "WEBHOOK_REQUEST_TIMEOUT_SECONDS", default_value_t = 10)]
    pub request_timeout_seconds: u64,
    /// Seconds to drain in-flight requests after SIGTERM (a second signal exits at once).
    #[arg(long, env = "WEBHOOK_SHUTDOWN_TIMEOUT_SECONDS", default_value_t = 25)]
    pub shutdown_timeout_seconds: u64,
}

#[derive(Debug, ClapArgs)]
#[command(next_help_heading = "TLS")]
pub struct TlsArgs {
    /// PEM certificate chain to serve; re-read when it changes.
    #[arg(long, env = "WEBHOOK_TLS_CERT_FILE")]
    pub tls_cert_file: PathBuf,
    /// PEM private key of the certificate; re-read when it changes.
    #[arg(long, env = "WEBHOOK_TLS_PRIVATE_KEY_FILE")]
    pub tls_private_key_file: PathBuf,
}

#[derive(Debug, ClapArgs)]
#[command(next_help_heading = "Proxy pods")]
pub struct ProxyArgs {
    /// Image of proxy-waiter, which every proxy container runs.
    #[arg(long, env = "WEBHOOK_WAITER_IMAGE", default_value = concat!("proxy-waiter:", env!("CARGO_PKG_VERSION")))]
    pub waiter_image: String,
    /// Pull policy of the waiter image.
    #[arg(
        long,
        env = "WEBHOOK_WAITER_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    pub waiter_image_pull_policy: String,
    /// Resource requests of each proxy container.
    #[arg(
        long,
        env = "WEBHOOK_WAITER_REQUESTS",
        default_value = "cpu=1m,memory=8Mi"
    )]
    pub waiter_requests: Resources,
    /// Resource limits of each proxy container.
    #[arg(
        long,
        env = "WEBHOOK_WAITER_LIMITS",
        default_value = "cpu=10m,memory=16Mi"
    )]
    pub waiter_limits: Resources,
    /// Non-root user (and group) proxy containers run as.
    #[arg(long, env = "WEBHOOK_WAITER_RUN_AS_USER", default_value_t = 65532, value_parser = clap::value_parser!(i64).range(1..))]
    pub waiter_run_as_user: i64,
    /// Node selector of every proxy pod, `key=value,...` (e.g. a small pool for proxies). The
    /// pod's own node selector always goes to the delegate only.
    #[arg(long, env = "WEBHOOK_PROXY_NODE_SELECTOR", default_value = "")]
    pub proxy_node_selector: NodeSelector,
    /// Tolerations added to every proxy pod, `key[=value][:Effect],...` as in `kubectl taint`
    /// (no value: any value; no effect: any effect). The pod's own tolerations are kept.
    #[arg(long, env = "WEBHOOK_PROXY_TOLERATIONS", default_value = "")]
    pub proxy_tolerations: Tolerations,
    /// File with the key (32 bytes or more) that seals saved manifests; delegate-sync verifies
    /// with the same key.
    #[arg(long, env = "WEBHOOK_MANIFEST_KEY_FILE")]
    pub manifest_key_file: PathBuf,
}

#[derive(Debug, ClapArgs)]
#[command(next_help_heading = "Health and metrics")]
pub struct AdminArgs {
    /// Plain-HTTP address of /livez, /readyz and /metrics.
    #[arg(long, env = "WEBHOOK_ADMIN_ADDRESS", default_value = "0.0.0.0:8080")]
    pub admin_address: SocketAddr,
}

#[derive(Debug, ClapArgs)]
#[command(next_help_heading = "Logging")]
pub struct LogArgs {
    /// Log filter, e.g. `info` or `webhook=debug`.
    #[arg(long, env = "WEBHOOK_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log format.
    #[arg(long, env = "WEBHOOK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
}

pub use admin::process::LogFormat;

/// `name=quantity,...`, e.g. `cpu=1m,memory=8Mi`.
#[derive(Clone, Debug, PartialEq)]
pub struct Resources(pub Map<String, Value>);

impl FromStr for Resources {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut map = Map::new();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, quantity) = item
                .split_once('=')
                .filter(|(n, q)| !n.is_empty() && !q.is_empty())
                .ok_or_else(|| format!("{item:?} is not name=quantity (e.g. cpu=1m,memory=8Mi)"))?;
            map.insert(name.to_string(), Value::String(quantity.to_string()));
        }
        Ok(Self(map))
    }
}

/// `key=value,...`, e.g. `pool=proxies`.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSelector(pub Map<String, Value>);

impl FromStr for NodeSelector {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut map = Map::new();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| format!("{item:?} is not key=value (e.g. pool=proxies)"))?;
            map.insert(key.to_string(), Value::String(value.to_string()));
        }
        Ok(Self(map))
    }
}

/// `key[=value][:Effect],...`, e.g. `pool=proxies:NoSchedule,dedicated`.
#[derive(Clone, Debug, PartialEq)]
pub struct Tolerations(pub Vec<Value>);

impl FromStr for Tolerations {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];
        let mut tolerations = Vec::new();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (taint, effect) = match item.rsplit_once(':') {
                Some((taint, effect)) if EFFECTS.contains(&effect) => (taint, Some(effect)),
                Some(_) => {
                    return Err(format!(
                        "{item:?}: the effect after ':' must be one of {}",
                        EFFECTS.join(", ")
                    ));
                }
                None => (item, None),
            };
            let (key, value) = match taint.split_once('=') {
                Some((key, value)) => (key, Some(value)),
                None => (taint, None),
            };
            if key.is_empty() {
                return Err(format!(
                    "{item:?} is not key[=value][:Effect] (e.g. pool=proxies:NoSchedule)"
                ));
            }
            let mut toleration = Map::new();
            toleration.insert("key".into(), key.into());
            match value {
                Some(value) => {
                    toleration.insert("operator".into(), "Equal".into());
                    toleration.insert("value".into(), value.into());
                }
                None => {
                    toleration.insert("operator".into(), "Exists".into());
                }
            }
            if let Some(effect) = effect {
                toleration.insert("effect".into(), effect.into());
            }
            tolerations.push(Value::Object(toleration));
        }
        Ok(Self(tolerations))
    }
}

/// Everything the webhook needs, free of CLI concerns.
pub struct Config {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub path: String,
    pub tls_cert_file: PathBuf,
    pub tls_private_key_file: PathBuf,
    pub settings: ProxySettings,
    pub key: ManifestKey,
    pub excluded_namespaces: Vec<String>,
    pub max_body_bytes: usize,
    pub max_concurrent_requests: usize,
    pub limits: Limits,
}

impl Args {
    /// The configuration, reading the manifest key file.
    pub fn into_config(self) -> anyhow::Result<Config> {
        let Self {
            server,
            tls,
            proxy,
            admin,
            log: _,
        } = self;
        let key_bytes = std::fs::read(&proxy.manifest_key_file).with_context(|| {
            format!(
                "cannot read --manifest-key-file {}",
                proxy.manifest_key_file.display()
            )
        })?;
        let key = ManifestKey::from_bytes(&key_bytes).with_context(|| {
            format!("--manifest-key-file {}", proxy.manifest_key_file.display())
        })?;
        let timeout = Duration::from_secs(server.request_timeout_seconds);
        let mut excluded_namespaces = vec!["kube-system".to_string()];
        excluded_namespaces.extend(server.own_namespace);
        Ok(Config {
            listen: SocketAddr::new(server.bind_address, server.secure_port),
            admin: admin.admin_address,
            path: server.path,
            tls_cert_file: tls.tls_cert_file,
            tls_private_key_file: tls.tls_private_key_file,
            settings: ProxySettings {
                waiter_image: proxy.waiter_image,
                image_pull_policy: proxy.waiter_image_pull_policy,
                requests: proxy.waiter_requests.0,
                limits: proxy.waiter_limits.0,
                run_as_user: proxy.waiter_run_as_user,
                node_selector: proxy.proxy_node_selector.0,
                tolerations: proxy.proxy_tolerations.0,
            },
            key,
            excluded_namespaces,
            max_body_bytes: server.max_body_bytes,
            max_concurrent_requests: server.max_concurrent_requests.max(1),
            limits: Limits {
                max_connections: server.max_connections.max(1),
                handshake_timeout: timeout,
                header_read_timeout: timeout,
                shutdown_timeout: Duration::from_secs(server.shutdown_timeout_seconds),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_parse_and_explain_mistakes() {
        let r: Resources = "cpu=1m, memory=8Mi".parse().unwrap();
        assert_eq!(r.0["cpu"], "1m");
        assert_eq!(r.0["memory"], "8Mi");
        assert!(
            "cpu"
                .parse::<Resources>()
                .unwrap_err()
                .contains("name=quantity")
        );
        assert_eq!("".parse::<Resources>().unwrap().0.len(), 0);
    }

    #[test]
    fn proxy_placement_parses_like_kubectl_and_explains_mistakes() {
        let selector: NodeSelector = "pool=proxies, zone=a".parse().unwrap();
        assert_eq!(selector.0["pool"], "proxies");
        assert_eq!(selector.0["zone"], "a");
        assert!(
            "pool"
                .parse::<NodeSelector>()
                .unwrap_err()
                .contains("key=value")
        );
        let tolerations: Tolerations = "pool=proxies:NoSchedule,dedicated,gpu:NoExecute,x=y"
            .parse()
            .unwrap();
        assert_eq!(
            serde_json::to_value(&tolerations.0).unwrap(),
            serde_json::json!([
                { "key": "pool", "operator": "Equal", "value": "proxies", "effect": "NoSchedule" },
                { "key": "dedicated", "operator": "Exists" },
                { "key": "gpu", "operator": "Exists", "effect": "NoExecute" },
                { "key": "x", "operator": "Equal", "value": "y" },
            ])
        );
        assert!(
            "pool=proxies:Never"
                .parse::<Tolerations>()
                .unwrap_err()
                .contains("NoSchedule, PreferNoSchedule, NoExecute")
        );
        assert!("=x:NoSchedule".parse::<Tolerations>().is_err());
        assert!("".parse::<Tolerations>().unwrap().0.is_empty());
    }

    #[test]
    fn kube_system_and_the_own_namespace_are_always_excluded() {
        let dir = std::env::temp_dir().join(format!("webhook-args-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key");
        std::fs::write(&key, [1u8; 32]).unwrap();
        let args = Args::try_parse_from([
            "webhook",
            "--tls-cert-file=c",
            "--tls-private-key-file=k",
            "--own-namespace=multicluster",
            &format!("--manifest-key-file={}", key.display()),
        ])
        .unwrap();
        let config = args.into_config().unwrap();
        assert_eq!(config.excluded_namespaces, ["kube-system", "multicluster"]);
        assert_eq!(config.listen.port(), 8443);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_short_key_names_the_flag() {
        let dir = std::env::temp_dir().join(format!("webhook-args-short-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key");
        std::fs::write(&key, b"too short").unwrap();
        let args = Args::try_parse_from([
            "webhook",
            "--tls-cert-file=c",
            "--tls-private-key-file=k",
            &format!("--manifest-key-file={}", key.display()),
        ])
        .unwrap();
        let error = format!("{:#}", args.into_config().err().unwrap());
        assert!(
            error.contains("--manifest-key-file") && error.contains("at least 32"),
            "{error}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
