//! `certs bootstrap-target`: flags, and the report printed as it goes.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use certs::bootstrap::{self, DEFAULT_TARGET_NAMESPACE, Options};
use clap::Args;

#[derive(Args)]
pub struct BootstrapArgs {
    /// Kubeconfig holding both contexts (default: $KUBECONFIG, a list of files merged, then
    /// ~/.kube/config).
    #[arg(long, env = "CERTS_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Context of the source cluster (where delegate-sync runs).
    #[arg(long, env = "CERTS_SOURCE_CONTEXT")]
    source_context: String,
    /// Context of the target cluster (where delegates will run).
    #[arg(long, env = "CERTS_TARGET_CONTEXT")]
    target_context: String,
    /// delegate-sync's name for the target (a DNS label): the name in its `targets` values.
    #[arg(long, env = "CERTS_TARGET_NAME")]
    target_name: String,
    /// Namespace of the source where delegate-sync runs; the kubeconfig Secret goes there
    /// (created when missing).
    #[arg(long, short = 'n', env = "CERTS_NAMESPACE")]
    namespace: String,
    /// The target's ServiceAccount [default: delegate-sync-<source context as a DNS label>].
    #[arg(long, env = "CERTS_SERVICE_ACCOUNT")]
    service_account: Option<String>,
    /// Namespace of the target for the ServiceAccount and its token (created when missing).
    #[arg(long, env = "CERTS_TARGET_NAMESPACE", default_value = DEFAULT_TARGET_NAMESPACE)]
    target_namespace: String,
    /// The kubeconfig Secret in the source [default: <target name>-kubeconfig].
    #[arg(long, env = "CERTS_SECRET_NAME")]
    secret_name: Option<String>,
    /// The target's API server URL as the source's pods reach it [default: the target
    /// context's server].
    #[arg(long, env = "CERTS_TARGET_SERVER")]
    target_server: Option<String>,
    /// How long to wait for the token controller to fill the token Secret.
    #[arg(long, env = "CERTS_TOKEN_TIMEOUT_SECONDS", default_value_t = 60)]
    token_timeout_seconds: u64,
    /// Give delegate-sync short-lived tokens of this lifetime (e.g. 1h) instead of a long-lived
    /// one: the kubeconfig then holds the token of a requester account that may only request
    /// tokens for the ServiceAccount, and delegate-sync renews them at 80 % of their life.
    #[arg(long, env = "CERTS_TOKEN_LIFETIME", value_parser = contract::parse_duration)]
    token_lifetime: Option<Duration>,
    /// Replace the long-lived token: write the kubeconfig with a new one, wait --rotate-grace
    /// for delegate-sync to read it, then delete the old ones (which revokes them).
    #[arg(long, env = "CERTS_ROTATE")]
    rotate: bool,
    /// With --rotate: how long the old tokens stay valid after the new kubeconfig is written.
    /// The kubelet updates a mounted Secret at its next sync of the pod (45–65 s measured on the
    /// test bed), and delegate-sync reads the file within 10 s.
    #[arg(long, env = "CERTS_ROTATE_GRACE", default_value = "2m", value_parser = contract::parse_duration)]
    rotate_grace: Duration,
    /// Also grant what delegate-sync's --copy-references does in the target: ServiceAccounts
    /// created, ConfigMaps and Secrets copied (a second ClusterRole, `<cluster role>-copies`).
    #[arg(long, env = "CERTS_COPIES")]
    copies: bool,
    /// Also grant what delegate-sync's --create-namespaces does in the target: namespaces
    /// created, and deleted once they hold nothing.
    #[arg(long, env = "CERTS_CREATE_NAMESPACES")]
    create_namespaces: bool,
    /// Show what would be done; the API servers validate every write (dryRun=All) and keep none.
    #[arg(long, env = "CERTS_DRY_RUN")]
    dry_run: bool,
}

pub async fn run(args: BootstrapArgs) -> anyhow::Result<()> {
    let BootstrapArgs {
        kubeconfig,
        source_context,
        target_context,
        target_name,
        namespace,
        service_account,
        target_namespace,
        secret_name,
        target_server,
        token_timeout_seconds,
        token_lifetime,
        rotate,
        rotate_grace,
        copies,
        create_namespaces,
        dry_run,
    } = args;
    if token_lifetime.is_some_and(|l| l.is_zero()) {
        anyhow::bail!("--token-lifetime must be at least 1s");
    }
    let options = Options {
        kubeconfig,
        source_context,
        target_context,
        target_name,
        namespace,
        service_account,
        target_namespace,
        secret_name,
        target_server,
        token_timeout: Duration::from_secs(token_timeout_seconds),
        token_lifetime,
        rotate,
        copies,
        create_namespaces,
        dry_run,
    };
    let report = bootstrap::bootstrap_target(&options, |step| println!("certs: {step}"))
        .await
        .with_context(|| {
            format!(
                "bootstrap of target {:?} (context {:?}) for source context {:?} failed",
                options.target_name, options.target_context, options.source_context
            )
        })?;
    let names = &report.names;
    if is_loopback(&report.server) {
        eprintln!(
            "certs: warning: the kubeconfig points at {}, a loopback address: pods of the \
             source cluster cannot reach it (give --target-server)",
            report.server
        );
    }
    match &report.verified {
        Some(Ok(())) => println!(
            "certs: the kubeconfig works from here (it lists the target's nodes as {}/{})",
            names.target_namespace, names.service_account
        ),
        Some(Err(why)) => eprintln!(
            "certs: warning: the kubeconfig did not work from here ({why}); from the source's \
             pods it may"
        ),
        None => {}
    }
    if !options.dry_run {
        println!(
            "certs: delegate-sync values: targets: [{{name: {}, kubeconfigSecret: {}}}] \
             (in namespace {} of the source)",
            names.target, names.secret, names.namespace
        );
    }
    if report.replaced.is_empty() || options.dry_run {
        return Ok(());
    }
    if options.rotate && report.verified != Some(Ok(())) {
        anyhow::bail!(
            "the new kubeconfig did not work from here, so the old tokens ({}) were not revoked; \
             once delegate-sync works with the new one, delete them in the target by hand",
            report.replaced.join(", ")
        );
    }
    if !options.rotate {
        println!(
            "certs: token Secrets no longer in the kubeconfig, still valid: {} (run again with \
             --rotate to revoke them)",
            report.replaced.join(", ")
        );
        return Ok(());
    }
    println!(
        "certs: revoking {} in {rotate_grace:?} (--rotate-grace), once delegate-sync has read the new kubeconfig",
        report.replaced.join(", ")
    );
    tokio::time::sleep(rotate_grace).await;
    bootstrap::revoke_replaced(&options, &report, |step| println!("certs: {step}"))
        .await
        .context("revoking the replaced tokens failed (delete them by hand)")?;
    Ok(())
}

fn is_loopback(server: &str) -> bool {
    let host = server
        .strip_prefix("https://")
        .unwrap_or(server)
        .split(['/', '?'])
        .next()
        .unwrap_or_default();
    let host = match host.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => host,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_servers_are_recognised() {
        for server in [
            "https://127.0.0.1:6443",
            "https://localhost",
            "https://[::1]:443/",
        ] {
            assert!(super::is_loopback(server), "{server}");
        }
        for server in ["https://10.0.0.1:6443", "https://api.example.com"] {
            assert!(!super::is_loopback(server), "{server}");
        }
    }
}
