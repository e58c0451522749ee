//! What every binary does the same way: logging to stderr (plain or JSON) and stopping on
//! SIGTERM/SIGINT.

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, thiserror::Error)]
#[error("--log-level {level:?}: {reason}")]
pub struct BadLogLevel {
    level: String,
    reason: String,
}

/// Installs the global subscriber: `level` is an `EnvFilter` directive such as `info` or
/// `delegate_sync=debug`.
pub fn init_logging(level: &str, format: LogFormat) -> Result<(), BadLogLevel> {
    let filter = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| BadLogLevel {
        level: level.into(),
        reason: e.to_string(),
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// Completes on the first SIGTERM or SIGINT; a second one exits at once.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for signals; running until killed");
        return std::future::pending().await;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("signal received: draining (send another to exit at once)");
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::warn!("second signal: exiting now");
        std::process::exit(1);
    });
}
