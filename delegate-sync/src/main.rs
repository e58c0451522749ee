//! `delegate-sync`: see `delegate-sync --help` and `docs/delegate-sync.md`.

use admin::process::{init_logging, shutdown_signal};
use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Err only means a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = delegate_sync::args::Args::parse();
    init_logging(&args.log_level, args.log_format)?;
    let config = args.into_config()?;
    delegate_sync::run(config, shutdown_signal()).await
}
