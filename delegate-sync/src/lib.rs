//! delegate-sync: places the delegate of each proxy pod in a target cluster, creates it,
//! mirrors it back and cleans up (steps 3–7 of the pod's journey, issue #5).
//!
//! - [`placement`]: which cluster fits the most replicas of a pod, counting delegates in flight.
//! - [`delegate`]: the delegate pod from a verified saved manifest.
//! - [`outcome`]: the result a terminal delegate gives its proxy.
//! - [`controller`]: the reconciliation of proxies; [`targets`]: clients and caches per cluster.
//! - [`quantity`]: Kubernetes quantities as exact integers.

pub mod args;
pub mod controller;
pub mod delegate;
pub mod outcome;
pub mod placement;
pub mod quantity;
pub mod targets;

use std::sync::Arc;

use futures::StreamExt as _;

/// Connects to the source and every target, then reconciles proxies until `shutdown`.
pub async fn run(
    config: args::Config,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let args::Config {
        cluster_name,
        kubeconfig,
        context,
        targets,
        key,
        pending_retry,
    } = config;
    let source = targets::client(kubeconfig.as_deref(), context.as_deref()).await?;
    let mut started = Vec::new();
    let mut wakeups = Vec::new();
    for spec in &targets {
        let (target, events) = targets::Target::start(spec, &source, &cluster_name).await?;
        started.push(target);
        wakeups.push(events);
    }
    tracing::info!(cluster = %cluster_name, targets = ?targets.iter().map(|t| &t.name).collect::<Vec<_>>(), "reconciling proxies");
    let context = Arc::new(controller::Context::new(
        cluster_name,
        source,
        started,
        key,
        pending_retry,
    ));
    controller::run(
        context,
        futures::stream::select_all(wakeups).boxed(),
        shutdown,
    )
    .await;
    Ok(())
}
