//! `webhook`: see `webhook --help` and `docs/webhook.md`.

use admin::process::{init_logging, shutdown_signal};
use clap::Parser as _;
use webhook::args::Args;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    // Err only means a provider is already installed; ours is passed explicitly anyway.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    init_logging(&args.log.log_level, args.log.log_format)?;
    let config = args.into_config()?;
    webhook::run(config, provider, shutdown_signal()).await
}
