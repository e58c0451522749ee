//! `delegate-sync`: see `delegate-sync --help` and `docs/delegate-sync.md`.

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Err only means a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = delegate_sync::args::Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .map_err(|e| anyhow::anyhow!("--log-level: {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let config = args.into_config()?;
    delegate_sync::run(config, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
