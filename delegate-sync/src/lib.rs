//! delegate-sync: places the delegate of each proxy pod in a target cluster, creates it,
//! mirrors it back and cleans up (steps 3–7 of the pod's journey, issue #5).
//!
//! - [`placement`]: which cluster fits the most replicas of a pod, counting delegates in flight;
//!   [`capacity`]: what targets' pods use per node, kept from a watch.
//! - [`delegate`]: the delegate pod from a verified saved manifest.
//! - [`outcome`]: the result a terminal delegate gives its proxy.
//! - [`controller`]: the reconciliation of proxies; [`targets`]: clients and caches per cluster;
//!   [`credentials`]: target credentials reloaded and renewed while running.
//! - [`needs`], [`copies`]: what a pod needs in its target (namespace, ServiceAccount,
//!   ConfigMaps, Secrets), made there before its delegate.
//! - [`logs`]: the delegates' logs, relayed into their proxies' containers.
//! - [`quantity`]: Kubernetes quantities as exact integers; [`cached`]: what the caches keep of
//!   proxies and delegates.

pub mod args;
pub mod cached;
pub mod capacity;
pub mod controller;
pub mod copies;
pub mod credentials;
pub mod delegate;
pub mod leader;
pub mod listed;
pub mod logs;
pub mod metrics;
pub mod needs;
pub mod outcome;
pub mod placement;
pub mod quantity;
pub mod retry;
pub mod sweep;
pub mod targets;
pub mod task_results;

use std::sync::Arc;

use futures::StreamExt as _;

/// Connects to the source and every target, serves the admin port, then reconciles proxies
/// until `shutdown`.
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
        cluster_lost_timeout,
        concurrency,
        max_log_streams,
        log_relay,
        copies,
        leader_election,
        admin_address,
    } = config;
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(metrics::Metrics::register(&mut registry));
    let admin = Arc::new(admin::Admin {
        ready: false.into(),
        registry,
    });
    let listener = tokio::net::TcpListener::bind(admin_address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on --admin-address {admin_address}: {e}"))?;
    let admin_task = tokio::spawn(admin::serve(listener, admin.clone()));

    let source = targets::client(kubeconfig.as_deref(), context.as_deref()).await?;
    let mut started = Vec::new();
    let mut wakeups = Vec::new();
    let signals = targets::Signals::default();
    let notice = credentials::Notice::from_env(&source);
    for spec in &targets {
        let (target, events) = targets::Target::start(
            spec,
            &source,
            &cluster_name,
            &signals,
            &metrics,
            notice.clone(),
        )
        .await;
        started.push(target);
        wakeups.push(events);
    }
    wait_for_caches(&started).await;
    let readiness = tokio::spawn(track_readiness(
        started.clone(),
        admin.clone(),
        metrics.clone(),
    ));
    // Standby replicas keep their caches warm, so that taking over is quick.
    // Flips to true when the Lease could not be renewed; without leader election the sender
    // lives (unused) until the end, so the controller only stops on `shutdown`.
    let (lease_lost, mut lease_watch) = tokio::sync::watch::channel(false);
    let mut holding = None;
    if let Some(settings) = &leader_election {
        let mut candidate = leader::Candidate::new(source.clone(), settings.clone());
        tokio::select! {
            () = candidate.acquire() => {}
            () = shutdown.clone() => {
                readiness.abort();
                admin_task.abort();
                return Ok(());
            }
        }
        let lease_lost = lease_lost.clone();
        holding = Some(tokio::spawn(async move {
            candidate.hold().await;
            let _ = lease_lost.send(true);
        }));
    }
    let stop = {
        let shutdown = shutdown.clone();
        let mut lost = lease_watch.clone();
        async move {
            tokio::select! {
                () = shutdown => {}
                _ = lost.wait_for(|lost| *lost) => {}
            }
        }
    };
    tracing::info!(cluster = %cluster_name, targets = ?targets.iter().map(|t| &t.name).collect::<Vec<_>>(), "reconciling proxies");
    let context_source = source.clone();
    let context = Arc::new(controller::Context::new(
        cluster_name,
        source,
        started,
        key,
        controller::Timing {
            pending_retry,
            cluster_lost_timeout,
            concurrency,
        },
        controller::Features {
            max_log_streams: log_relay.then_some(max_log_streams),
            copies,
        },
        metrics,
    ));
    controller::run(
        context,
        futures::stream::select_all(wakeups).boxed(),
        signals,
        stop,
    )
    .await;
    if let Some(holding) = holding {
        holding.abort();
    }
    drop(lease_lost);
    if *lease_watch.borrow_and_update() {
        anyhow::bail!("lost the leader lease: stopping so that only the new leader works");
    }
    if let Some(settings) = &leader_election {
        leader::release(context_source, settings).await;
    }
    admin
        .ready
        .store(false, std::sync::atomic::Ordering::Relaxed);
    readiness.abort();
    admin_task.abort();
    Ok(())
}

/// Ready while at least one target's caches are loaded; each target's state is a metric and
/// is logged when it changes.
async fn track_readiness(
    targets: Vec<targets::Target>,
    admin: Arc<admin::Admin>,
    metrics: Arc<metrics::Metrics>,
) {
    let mut last: Vec<Option<bool>> = vec![None; targets.len()];
    loop {
        for (target, last) in targets.iter().zip(last.iter_mut()) {
            let synced = target.synced();
            metrics
                .target_synced
                .get_or_create(&metrics::Metrics::cluster(&target.name))
                .set(i64::from(synced));
            metrics
                .target_reachable
                .get_or_create(&metrics::Metrics::cluster(&target.name))
                .set(i64::from(target.unreachable_for().is_none()));
            if *last != Some(synced) {
                if synced {
                    tracing::info!(target = %target.name, "target caches loaded");
                } else {
                    tracing::warn!(target = %target.name, "target not loaded (unreachable or still listing); retrying");
                }
                *last = Some(synced);
            }
        }
        admin.ready.store(
            last.contains(&Some(true)),
            std::sync::atomic::Ordering::Relaxed,
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Gives every target a moment to load its caches, so that the first placements see whole
/// clusters; a target that is still unreachable afterwards is left out of placement until its
/// caches load.
async fn wait_for_caches(targets: &[targets::Target]) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    while tokio::time::Instant::now() < deadline {
        if targets.iter().all(targets::Target::synced) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for target in targets.iter().filter(|t| !t.synced()) {
        tracing::warn!(target = %target.name, "caches not loaded yet: left out of placement until they are");
    }
}
