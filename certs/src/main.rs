//! `certs`: create, store and renew the webhook's CA and serving certificate, and keep the
//! webhook configuration's `caBundle` in step. Idempotent: safe as a Job, a CronJob or an init
//! container. `certs bootstrap-target` gives a source cluster's delegate-sync credentials for a
//! target cluster.

mod bootstrap_cmd;
mod stores;

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use stores::{FileStore, KubeTarget};

/// Certificates for the multicluster webhook, and credentials for target clusters.
#[derive(Parser)]
#[command(name = "certs", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the CA and serving certificate if missing, renew them before they expire, store
    /// them, and patch the CA into a MutatingWebhookConfiguration. Changes nothing when all is
    /// up to date.
    Ensure(EnsureArgs),
    /// Let a source cluster's delegate-sync into a target cluster: in the target a
    /// ServiceAccount with the target chart's RBAC and a long-lived token, in the source a
    /// Secret with a kubeconfig using that token. Idempotent; --dry-run changes nothing.
    BootstrapTarget(bootstrap_cmd::BootstrapArgs),
}

#[derive(Args)]
struct EnsureArgs {
    /// A DNS name or IP address the serving certificate must carry (repeat), e.g.
    /// `webhook.multicluster.svc`.
    #[arg(
        long = "name",
        env = "CERTS_NAMES",
        value_delimiter = ',',
        required = true
    )]
    names: Vec<String>,
    /// Lifetime of the serving certificate, in days (the CA lives four times as long).
    #[arg(long, env = "CERTS_VALIDITY_DAYS", default_value_t = 365)]
    validity_days: u64,
    /// Renew when fewer days than this are left.
    #[arg(long, env = "CERTS_RENEW_BEFORE_DAYS", default_value_t = 30)]
    renew_before_days: u64,
    /// Keep the certificates as files in this directory (ca.crt, ca.key, tls.crt, tls.key).
    #[arg(long, env = "CERTS_OUT_DIR")]
    out_dir: Option<PathBuf>,
    /// Keep the serving certificate in this kubernetes.io/tls Secret (NAMESPACE/NAME); the CA goes
    /// to NAMESPACE/NAME-ca.
    #[arg(long, env = "CERTS_SECRET")]
    secret: Option<String>,
    /// Set the caBundle of every webhook of this MutatingWebhookConfiguration.
    #[arg(long, env = "CERTS_WEBHOOK_CONFIGURATION")]
    webhook_configuration: Option<String>,
    /// Kubeconfig for --secret and --webhook-configuration (default: in-cluster, then ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Context of the kubeconfig.
    #[arg(long, env = "CERTS_CONTEXT")]
    context: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Cli::parse().command {
        Command::Ensure(args) => ensure(args).await,
        Command::BootstrapTarget(args) => bootstrap_cmd::run(args).await,
    }
}

async fn ensure(args: EnsureArgs) -> anyhow::Result<()> {
    let EnsureArgs {
        names,
        validity_days,
        renew_before_days,
        out_dir,
        secret,
        webhook_configuration,
        kubeconfig,
        context,
    } = args;
    anyhow::ensure!(
        out_dir.is_some() || secret.is_some(),
        "nowhere to keep the certificates: give --out-dir and/or --secret"
    );
    anyhow::ensure!(
        renew_before_days < validity_days,
        "--renew-before-days must be less than --validity-days"
    );
    let wanted = certs::renew::Wanted {
        names,
        validity: Duration::from_secs(validity_days * 86_400),
        renew_before: Duration::from_secs(renew_before_days * 86_400),
    };
    let kube = match (&secret, &webhook_configuration) {
        (None, None) => None,
        _ => Some(
            KubeTarget::connect(kubeconfig.as_deref(), context.as_deref(), secret.as_deref())
                .await?,
        ),
    };
    // The Secret, when given, is the source of truth (it survives pod restarts); files mirror it.
    let stored = match (&kube, &out_dir) {
        (Some(kube), _) if kube.has_secret() => kube.load().await?,
        (_, Some(dir)) => FileStore::new(dir).load()?,
        _ => Default::default(),
    };
    let ensured = certs::renew::ensure(stored, &wanted, time::OffsetDateTime::now_utc())?;
    for action in &ensured.actions {
        println!("certs: {}", describe(action));
    }
    // The caBundle first: it trusts the previous CA and the new one, so a webhook may serve a
    // certificate of either as soon as the Secret or the files change, never before.
    if let (Some(kube), Some(name)) = (&kube, &webhook_configuration) {
        let patched = kube.set_ca_bundle(name, &ensured.ca_bundle).await?;
        println!(
            "certs: MutatingWebhookConfiguration {name}: caBundle {}",
            if patched {
                "updated"
            } else {
                "already current"
            }
        );
    }
    if let Some(kube) = kube.as_ref().filter(|k| k.has_secret()) {
        let written = kube.save(&ensured.stored).await?;
        println!("certs: Secret {written} is current");
    }
    if let Some(dir) = &out_dir {
        FileStore::new(dir).save(&ensured.stored)?;
        println!("certs: files in {} are current", dir.display());
    }
    Ok(())
}

fn describe(action: &certs::renew::Action) -> String {
    use certs::renew::Action::*;
    match action {
        UpToDate => "certificates are up to date".into(),
        CreatedCa => "created a CA".into(),
        RenewedCa => "renewed the CA (the previous one stays trusted until it expires)".into(),
        IssuedServing(why) => format!("issued a serving certificate: {why}"),
    }
}
