//! Step 5: a delegate that will never report: gone before it ended, or in a target that has
//! not answered for longer than `--cluster-lost-timeout`. A proxy whose `restartPolicy`
//! restarts its containers gets a new delegate (`restart`); any other fails with the reason,
//! so that its owner can run it again.

use std::time::Duration;

use kube::runtime::{controller::Action, events::EventType};

use super::{Context, Error, Proxy, restart, result, stop};
use crate::{
    outcome,
    targets::Target,
    task_results::{self, Step},
};

/// The reason of proxies failed because their target stopped answering.
pub const CLUSTER_LOST: &str = "ClusterLost";

/// The reason of the Events of proxies whose target refuses delegate-sync's credentials.
pub const TARGET_UNAUTHORIZED: &str = "TargetUnauthorized";

/// A proxy whose target does not answer waits for it, up to `--cluster-lost-timeout`; then it
/// fails with reason `ClusterLost` so that its owner can run it again elsewhere. A target that
/// refuses delegate-sync's credentials does not answer either, and the proxy says why.
pub async fn cluster_unreachable(
    proxy: &Proxy,
    target: &Target,
    down: Duration,
    context: &Context,
) -> Result<Action, Error> {
    if let Some(why) = target.refused() {
        let note = format!(
            "cannot follow delegate {} in {}: {why}; waiting for new credentials",
            proxy.delegate_name, target.name
        );
        super::proxy::publish(
            context,
            &proxy.pod,
            EventType::Warning,
            TARGET_UNAUTHORIZED,
            note,
        )
        .await;
    }
    let timeout = context.timing.cluster_lost_timeout;
    if down < timeout {
        return Ok(Action::requeue(timeout - down + Duration::from_millis(100)));
    }
    let message = format!(
        "target cluster {} has not answered for {}s (--cluster-lost-timeout {}s)",
        target.name,
        down.as_secs(),
        timeout.as_secs()
    );
    if restart::replaces(restart::policy(proxy), None) {
        let why = format!("delegate {} is lost: {message}", proxy.delegate_name);
        return restart::run(proxy, context, target, restart::Old::ClusterLost, &why).await;
    }
    result::record(
        proxy,
        context,
        outcome::lost(CLUSTER_LOST, message.clone()),
        EventType::Warning,
        CLUSTER_LOST,
        message,
    )
    .await
}

/// A delegate that was created is gone and the proxy has no result. When the proxy had
/// stopped, the delegate went because of that stop (this pass's own, whose result write lost
/// a race with another update of the proxy, or another replica's): the result is the stop.
/// Otherwise the delegate was lost before it ended. Decided on the live proxy, which the cache
/// may not show yet; an Argo step's copied task result is completed first, since no one will
/// write it again and Argo would hold the workflow open for it.
pub async fn delegate_gone(
    proxy: &Proxy,
    step: Option<&Step>,
    target: &Target,
    context: &Context,
) -> Result<Action, Error> {
    if let Some(step) = step {
        task_results::complete_mirror(&context.source, &proxy.pod, step)
            .await
            .map_err(Error::Source)?;
    }
    let live = proxy.live().await?;
    let delegate_name = &proxy.delegate_name;
    if stop::stopped(&live).is_none() && restart::replaces(restart::policy(proxy), None) {
        let why = format!(
            "delegate {delegate_name} disappeared from {} before it ended",
            target.name
        );
        return restart::run(proxy, context, target, restart::Old::Gone, &why).await;
    }
    let (ended, type_, reason, message) = match stop::stopped(&live) {
        Some(why) => {
            let (ended, message) = stop::stop_outcome(&live, &why, delegate_name, target);
            (ended, EventType::Normal, "DelegateStopped", message)
        }
        None => {
            let message = format!(
                "delegate {delegate_name} disappeared from {} before it ended",
                target.name
            );
            let ended = outcome::lost("DelegateLost", message.clone());
            (ended, EventType::Warning, "DelegateLost", message)
        }
    };
    result::record_over(&proxy.api, &live, context, ended, type_, reason, message).await
}
