//! Step 5 for pods that restart: under `restartPolicy: Always` or `OnFailure` the delegate is
//! the pod's "containers". When it is lost, or ends in a way its policy would restart (any end
//! for `Always`, a failure for `OnFailure`), a new delegate replaces it, placed again; the
//! proxy's waiters keep waiting (no result is written), its `restarts` annotation counts the
//! replacements and an Event says why. The old delegate is confirmed gone, by uid, before the
//! replacement is recorded, so no two delegates of one proxy run at once, except when the old
//! one's cluster has not answered for `--cluster-lost-timeout`: then it cannot be confirmed
//! gone, and the orphan sweep deletes it when that cluster returns (a newer delegate
//! supersedes it).

use std::time::Duration;

use contract::{
    CONTAINER_RESTARTS, DELEGATE_NAME, RESTARTED_AT, RESTARTS, TARGET_CLUSTER, result::Phase,
};
use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::{
    Api, ResourceExt as _,
    runtime::{controller::Action, events::EventType},
};
use serde_json::json;

use super::{
    Context, Error, Proxy,
    proxy::{patch_annotations_at, publish},
};
use crate::{
    metrics::Metrics,
    targets::{Target, bounded},
};

/// Whether a proxy with `policy` (its `restartPolicy`; Kubernetes' default is `Always`) gets
/// a new delegate when the current one ended with `phase` (None: lost before it ended).
pub fn replaces(policy: Option<&str>, phase: Option<Phase>) -> bool {
    match policy.unwrap_or("Always") {
        "Never" => false,
        "OnFailure" => phase != Some(Phase::Succeeded),
        _ => true,
    }
}

/// The policy of the proxy (immutable, the pod's own).
pub fn policy(proxy: &Proxy) -> Option<&str> {
    proxy.pod.spec.as_ref()?.restart_policy.as_deref()
}

/// The old delegate, as far as it can be known.
pub enum Old<'a> {
    /// Still there (it ended): deleted first.
    Present(&'a Pod),
    /// Confirmed gone from its cluster.
    Gone,
    /// Its cluster has not answered for `--cluster-lost-timeout`.
    ClusterLost,
}

/// Replaces the delegate in `target`: the old one deleted and confirmed gone (unless its
/// cluster is lost), then the replacement recorded on the proxy (the next pass places and
/// creates it).
pub async fn run(
    proxy: &Proxy,
    context: &Context,
    target: &Target,
    old: Old<'_>,
    why: &str,
) -> Result<Action, Error> {
    if let Old::Present(delegate) = old
        && !deleted(target, delegate).await?
    {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let live = proxy.live().await?;
    let restart = proxy.reference.restart + 1;
    let record = json!({
        RESTARTS: restart.to_string(),
        RESTARTED_AT: Timestamp::now().to_string(),
        TARGET_CLUSTER: null,
        DELEGATE_NAME: null,
        CONTAINER_RESTARTS: null,
    });
    // Over the proxy this pass decided on: a replica that recorded the replacement first wins.
    if live.annotations().get(RESTARTS) != proxy.pod.annotations().get(RESTARTS)
        || !patch_annotations_at(&proxy.api, &live, record).await?
    {
        return Ok(Action::requeue(Duration::from_millis(100)));
    }
    context
        .metrics
        .restarts
        .get_or_create(&Metrics::cluster(&target.name))
        .inc();
    let wait = backoff(restart);
    let note = format!(
        "{why}; its restartPolicy restarts it: replacing it with a new delegate (restart {restart}){}",
        if wait.is_zero() {
            String::new()
        } else {
            format!(" in {} s", wait.as_secs())
        }
    );
    publish(
        context,
        &live,
        EventType::Warning,
        "DelegateRestarted",
        note,
    )
    .await;
    Ok(Action::requeue(wait))
}

/// Deletes the old delegate (its uid only) and tells whether it is gone.
async fn deleted(target: &Target, delegate: &Pod) -> Result<bool, Error> {
    target
        .delete_delegate(delegate)
        .await
        .map_err(Error::on(target))?;
    let delegates: Api<Pod> = Api::namespaced(
        target.client.clone(),
        &delegate.namespace().unwrap_or_default(),
    );
    let now = bounded(delegates.get_opt(&delegate.name_any()))
        .await
        .map_err(Error::on(target))?;
    Ok(now.is_none_or(|p| p.uid() != delegate.uid()))
}

/// How long the replacement waits: the first at once (a lost replica comes back quickly), then
/// 10 s doubling up to 5 min, as a kubelet backs off restarting a crashing container.
pub fn backoff(restart: u32) -> Duration {
    match restart {
        0 | 1 => Duration::ZERO,
        n => Duration::from_secs(10u64.saturating_mul(1 << (n - 2).min(5)).min(300)),
    }
}

/// The time left before the proxy's replacement may be placed, if any.
pub fn waiting(proxy: &Proxy) -> Option<Duration> {
    let wait = backoff(proxy.reference.restart);
    if wait.is_zero() {
        return None;
    }
    let at: Timestamp = proxy.pod.annotations().get(RESTARTED_AT)?.parse().ok()?;
    let since = Timestamp::now().duration_since(at).unsigned_abs();
    let left = wait.saturating_sub(since);
    (!left.is_zero()).then_some(left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_replace_what_a_kubelet_would_restart() {
        for phase in [None, Some(Phase::Failed), Some(Phase::Succeeded)] {
            assert!(!replaces(Some("Never"), phase), "Never: {phase:?}");
            assert!(replaces(Some("Always"), phase), "Always: {phase:?}");
            assert!(replaces(None, phase), "the default is Always: {phase:?}");
        }
        assert!(replaces(Some("OnFailure"), None), "lost");
        assert!(replaces(Some("OnFailure"), Some(Phase::Failed)));
        assert!(!replaces(Some("OnFailure"), Some(Phase::Succeeded)));
    }

    #[test]
    fn replacements_back_off_like_crashing_containers() {
        let secs: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [0, 10, 20, 40, 80, 160, 300, 300, 300]);
    }
}
