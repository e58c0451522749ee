//! The orphan sweep: delegates whose proxy is gone (deleted while their target was away, or
//! deleted by hand with its finalizer removed), whose proxy failed `ClusterLost`, or that a
//! newer delegate replaced while their target was away are deleted, so that nothing runs in a
//! target that no proxy waits for.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use contract::{RESTARTS, RESULT, result::DelegateResult};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, ResourceExt as _, api::ObjectMeta, runtime::reflector::Store};
use tokio::sync::Notify;

use crate::{
    controller::{CLUSTER_LOST, Context},
    delegate::PROXY_UID,
    listed::Listed,
    targets::{Target, proxy_of},
};

const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Sweeps every answering target now and then, and as soon as a target answers again, until
/// aborted. `proxies` is the controller's cache of the proxies, used once `listed` says its
/// first list is in: a delegate it shows no current proxy for is checked on a fresh read
/// before it goes, so the cache costs no safety, and a sweep costs no list of every proxy
/// (with their saved manifests).
pub async fn run(
    context: Arc<Context>,
    proxies: Store<Pod>,
    mut listed: Listed,
    target_back: Arc<Notify>,
) {
    if !listed.wait().await {
        return; // The controller is gone.
    }
    loop {
        for target in context
            .targets
            .iter()
            .filter(|t| t.synced() && t.unreachable_for().is_none())
        {
            sweep(&context, &proxies, target).await;
        }
        tokio::select! {
            () = tokio::time::sleep(SWEEP_EVERY) => {}
            () = target_back.notified() => {}
        }
    }
}

/// Why a delegate must go, if it must.
fn orphaned(delegate: &Pod, proxy: Option<&ObjectMeta>) -> Option<&'static str> {
    let Some(proxy) = proxy else {
        return Some("its proxy is gone");
    };
    let wanted_uid = delegate.labels().get(PROXY_UID);
    if wanted_uid.is_some() && proxy.uid.as_ref() != wanted_uid {
        return Some("its proxy was replaced by another pod of the same name");
    }
    let annotations = proxy.annotations.as_ref();
    let restarts = |a: Option<&BTreeMap<String, String>>| -> u32 {
        a.and_then(|a| a.get(RESTARTS))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    if restarts(delegate.metadata.annotations.as_ref()) < restarts(annotations) {
        return Some("a newer delegate replaced it while this cluster was away");
    }
    let lost = annotations
        .and_then(|a| a.get(RESULT))
        .and_then(|r| DelegateResult::decode(r).ok())
        .is_some_and(|r| r.reason.as_deref() == Some(CLUSTER_LOST));
    lost.then_some("its proxy failed ClusterLost while this cluster was away")
}

async fn sweep(context: &Context, proxies: &Store<Pod>, target: &Target) {
    for delegate in target.delegates.state() {
        let Some(proxy_ref) = proxy_of(&delegate) else {
            continue;
        };
        let cached = proxies.get(&proxy_ref);
        if orphaned(&delegate, cached.as_deref().map(|p| &p.metadata)).is_none() {
            continue;
        }
        // The cache may lag (a proxy made since): only a fresh read decides.
        let namespace = proxy_ref.namespace.as_deref().unwrap_or_default();
        let source: Api<Pod> = Api::namespaced(context.source.clone(), namespace);
        let proxy = match source.get_metadata_opt(&proxy_ref.name).await {
            Ok(proxy) => proxy,
            Err(e) => {
                tracing::warn!(proxy = %proxy_ref, "orphan sweep: cannot read proxy: {e}");
                continue;
            }
        };
        let Some(why) = orphaned(&delegate, proxy.as_ref().map(|p| &p.metadata)) else {
            continue;
        };
        delete(context, target, &delegate, why).await;
    }
}

async fn delete(context: &Context, target: &Target, delegate: &Pod, why: &str) {
    let namespace = delegate.namespace().unwrap_or_default();
    match target.delete_delegate(delegate).await {
        Ok(()) => {
            tracing::info!(target = %target.name, %namespace, delegate = %delegate.name_any(), "orphan deleted: {why}");
            context
                .metrics
                .orphans_deleted
                .get_or_create(&crate::metrics::Metrics::cluster(&target.name))
                .inc();
        }
        Err(e) => {
            tracing::warn!(target = %target.name, delegate = %delegate.name_any(), "orphan sweep: cannot delete: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contract::result::Phase;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn delegates_go_when_their_proxy_is_gone_replaced_or_lost() {
        let delegate = pod(json!({"metadata": {"name": "d", "labels": {PROXY_UID: "u1"}}}));
        assert_eq!(orphaned(&delegate, None), Some("its proxy is gone"));
        let other = pod(json!({"metadata": {"name": "p", "uid": "u2"}}));
        assert!(
            orphaned(&delegate, Some(&other.metadata))
                .unwrap()
                .contains("replaced")
        );
        let running = pod(json!({"metadata": {"name": "p", "uid": "u1"}}));
        assert_eq!(orphaned(&delegate, Some(&running.metadata)), None);
        let lost = crate::outcome::lost(CLUSTER_LOST, "away".into()).encode();
        let failed =
            pod(json!({"metadata": {"name": "p", "uid": "u1", "annotations": {RESULT: lost}}}));
        assert!(
            orphaned(&delegate, Some(&failed.metadata))
                .unwrap()
                .contains("ClusterLost")
        );
        let mut ended = crate::outcome::lost("DelegateLost", "gone".into());
        ended.phase = Phase::Succeeded;
        let done = pod(
            json!({"metadata": {"name": "p", "uid": "u1", "annotations": {RESULT: ended.encode()}}}),
        );
        assert_eq!(orphaned(&delegate, Some(&done.metadata)), None);
        let moved =
            pod(json!({"metadata": {"name": "p", "uid": "u1", "annotations": {RESTARTS: "1"}}}));
        assert!(
            orphaned(&delegate, Some(&moved.metadata))
                .unwrap()
                .contains("newer delegate")
        );
        let current = pod(
            json!({"metadata": {"name": "d", "labels": {PROXY_UID: "u1"}, "annotations": {RESTARTS: "1"}}}),
        );
        assert_eq!(orphaned(&current, Some(&moved.metadata)), None);
    }
}
