//! Step 7: a deleted proxy deletes its delegate (wherever the proxy's annotations recorded it),
//! waits until it is gone, then releases its finalizer. A target lost for longer than
//! `--cluster-lost-timeout` does not hold the proxy: its delegate is left to the orphan sweep.

use std::time::Duration;

use contract::{CLEANUP_FINALIZER, DELEGATE_NAME, TARGET_CLUSTER};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt as _,
    api::{DeleteParams, Patch, PatchParams},
    runtime::{controller::Action, events::EventType},
};
use serde_json::json;

use super::{
    CLUSTER_LOST, Context, Error, Proxy,
    proxy::{api_code, publish},
};
use crate::targets::bounded;

pub async fn run(proxy: &Proxy, context: &Context) -> Result<Action, Error> {
    // Decided and never created (it waited, e.g. for a copy): its room is free again.
    for target in &context.targets {
        super::place::forget_in_flight(context, &target.name, &proxy.delegate_name);
    }
    let Some(position) = proxy
        .pod
        .finalizers()
        .iter()
        .position(|f| f == CLEANUP_FINALIZER)
    else {
        return Ok(Action::await_change());
    };
    let annotations = proxy.pod.annotations();
    if let (Some(target), Some(delegate_name)) = (
        annotations
            .get(TARGET_CLUSTER)
            .and_then(|t| context.target(t)),
        annotations.get(DELEGATE_NAME),
    ) {
        if let Some(down) = target.unreachable_for() {
            let timeout = context.timing.cluster_lost_timeout;
            if down < timeout {
                return Ok(Action::requeue(timeout - down + Duration::from_millis(100)));
            }
            let note = format!(
                "delegate {delegate_name} left in {}, which has not answered for {}s; the orphan sweep deletes it if the cluster returns",
                target.name,
                down.as_secs()
            );
            publish(context, &proxy.pod, EventType::Warning, CLUSTER_LOST, note).await;
            return release_finalizer(proxy, position).await;
        }
        let delegates: Api<Pod> = Api::namespaced(target.client.clone(), proxy.namespace());
        match bounded(delegates.delete(delegate_name, &DeleteParams::background())).await {
            Ok(either) if either.is_left() => return Ok(Action::requeue(Duration::from_secs(1))),
            Ok(_) => {}
            Err(e) if api_code(&e) == Some(404) => {}
            Err(source) => return Err(Error::on(target)(source)),
        }
        if bounded(delegates.get_opt(delegate_name))
            .await
            .map_err(Error::on(target))?
            .is_some()
        {
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
    }
    release_finalizer(proxy, position).await
}

async fn release_finalizer(proxy: &Proxy, position: usize) -> Result<Action, Error> {
    let path = format!("/metadata/finalizers/{position}");
    let patch: json_patch::Patch = serde_json::from_value(json!([
        { "op": "test", "path": path, "value": CLEANUP_FINALIZER },
        { "op": "remove", "path": path },
    ]))
    .map_err(|e| Error::Source(kube::Error::SerdeError(e)))?;
    match proxy
        .api
        .patch(
            &proxy.pod.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
    {
        Ok(_) => Ok(Action::await_change()),
        // Gone, or the finalizer moved: the next event brings the current list.
        Err(e) if matches!(api_code(&e), Some(404 | 422)) => Ok(Action::await_change()),
        Err(e) => Err(Error::Source(e)),
    }
}
