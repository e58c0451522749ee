//! `testbed`: bring the local multi-cluster test bed up or down, and hand out kubeconfigs.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use e2e::testbed::{self, Preset, Testbed, TestbedConfig};

/// Local Kubernetes clusters from real binaries (etcd, kube-apiserver, kube-scheduler,
/// kube-controller-manager), with fake nodes played by kwok and real nodes (a kubelet and a
/// containerd each) beside them.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// State directory of the test bed (kubeconfig, logs, PKI, etcd data).
    #[arg(long, env = "TESTBED_DIR", global = true, default_value_os_t = testbed::default_dir())]
    dir: PathBuf,
    /// Log filter, e.g. `info` or `e2e=debug`.
    #[arg(
        long,
        env = "TESTBED_LOG_LEVEL",
        global = true,
        default_value = "info,kube_client=off"
    )]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the clusters (or keep them if already up) and wait until they are usable.
    Up(UpArgs),
    /// Stop every process of the test bed and delete its state.
    Down,
    /// Tell whether the test bed is up, and how to talk to it.
    Status,
    /// Print a kubeconfig that authenticates as a ServiceAccount (which must exist).
    SaKubeconfig(SaArgs),
}

#[derive(Args)]
struct UpArgs {
    /// Number of clusters, named cluster1..clusterN.
    #[arg(long, env = "CLUSTERS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=8))]
    clusters: u16,
    /// Node shapes and placeholder pods: `blog`, or the path of a preset JSON file.
    #[arg(long, env = "TESTBED_PRESET", default_value = "blog")]
    preset: String,
    /// Real nodes per cluster (a kubelet and a containerd each, tainted
    /// `testbed.multicluster.admiralty.io/node=real:NoSchedule`), instead of the preset's
    /// `realNodesPerCluster` (3 in `blog`). 0 for fake nodes only.
    #[arg(long, env = "TESTBED_REAL_NODES", value_parser = clap::value_parser!(u8).range(0..=9))]
    real_nodes: Option<u8>,
}

#[derive(Args)]
struct SaArgs {
    /// Cluster (kubeconfig context) of the ServiceAccount.
    #[arg(long)]
    context: String,
    #[arg(long, short)]
    namespace: String,
    /// Name of the ServiceAccount.
    #[arg(long)]
    service_account: String,
    /// Lifetime of the token, in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl_seconds: u64,
    /// Write the kubeconfig here instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    quiet_on_closed_pipe();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log_level)
                .context("invalid --log-level")?,
        )
        .with_writer(std::io::stderr)
        .init();
    rustls_provider();
    match cli.command {
        Command::Up(args) => up(cli.dir, args).await,
        Command::Down => {
            Testbed::down(&cli.dir)?;
            println!("test bed in {} is down", cli.dir.display());
            Ok(())
        }
        Command::Status => status(cli.dir).await,
        Command::SaKubeconfig(args) => sa_kubeconfig(cli.dir, args).await,
    }
}

/// `testbed status | head` ends quietly, like any Unix tool, instead of panicking in
/// `println!` (Rust ignores SIGPIPE; the processes the test bed starts get the default back).
fn quiet_on_closed_pipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: SIG_DFL installs no handler, so no code of ours runs in signal context.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

fn rustls_provider() {
    // Err only means a provider is already installed, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

async fn up(dir: PathBuf, args: UpArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut config = TestbedConfig::new(&dir, usize::from(args.clusters))?;
    config.preset = Preset::named(&args.preset)?;
    if let Some(real_nodes) = args.real_nodes {
        config.preset.real_nodes_per_cluster = usize::from(real_nodes);
    }
    println!(
        "starting {} clusters in {} ...",
        args.clusters,
        dir.display()
    );
    let testbed = Testbed::up(&config).await?;
    println!(
        "test bed up: {} ready in {:.1} s",
        testbed.cluster_names().join(", "),
        started.elapsed().as_secs_f64()
    );
    print_how_to_use(&testbed);
    Ok(())
}

async fn status(dir: PathBuf) -> anyhow::Result<()> {
    let testbed = Testbed::attach(&dir)?;
    testbed.check().await?;
    println!("test bed up: {}", testbed.cluster_names().join(", "));
    print_how_to_use(&testbed);
    Ok(())
}

fn print_how_to_use(testbed: &Testbed) {
    let kubeconfig = testbed.kubeconfig_path();
    println!("  export KUBECONFIG={}", kubeconfig.display());
    for name in testbed.cluster_names() {
        println!("  kubectl --context {name} get nodes");
    }
}

async fn sa_kubeconfig(dir: PathBuf, args: SaArgs) -> anyhow::Result<()> {
    let testbed = Testbed::attach(&dir)?;
    let text = testbed
        .service_account_kubeconfig(
            &args.context,
            &args.namespace,
            &args.service_account,
            Duration::from_secs(args.ttl_seconds),
        )
        .await?;
    match args.output {
        Some(path) => std::fs::write(&path, text)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(())
}
