//! Step 6: the result, written once on the proxy (durably, before any delivery), where the
//! waiters read it through the downward API; never changed afterwards.

use std::time::Duration;

use contract::{RESULT, TARGET_CLUSTER, result::DelegateResult};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt as _,
    runtime::{controller::Action, events::EventType},
};

use super::{
    Context, Error, Proxy,
    proxy::{Once, Unless, publish, set_annotation_once},
};
use crate::outcome;

/// Writes `result` on the proxy unless it has one, with an Event.
pub async fn record(
    proxy: &Proxy,
    context: &Context,
    result: DelegateResult,
    type_: EventType,
    reason: &str,
    note: String,
) -> Result<Action, Error> {
    // A result is written once and never changed. The proxy cache can lag behind a result this
    // controller has just written (a delegate deleted by a stop wakes this proxy before its own
    // update arrives), so the result is written only where none is: checked by the apiserver
    // on the cached proxy first (no read), else on the live one (read when refused).
    let cached = &proxy.pod;
    let live = if cached.annotations().contains_key(RESULT) {
        proxy.live().await?
    } else {
        match set_annotation_once(&proxy.api, cached, RESULT, &result.encode(), Unless::Set).await?
        {
            Once::Written => {
                publish(context, cached, type_, reason, note).await;
                return Ok(Action::await_change());
            }
            Once::Refused(live) => *live,
        }
    };
    record_over(&proxy.api, &live, context, result, type_, reason, note).await
}

/// Like [`record`], over `live`, a proxy just read from the API.
pub async fn record_over(
    api: &Api<Pod>,
    live: &Pod,
    context: &Context,
    result: DelegateResult,
    type_: EventType,
    reason: &str,
    note: String,
) -> Result<Action, Error> {
    if live.annotations().contains_key(RESULT) {
        return Ok(Action::await_change());
    }
    if let Once::Refused(_) =
        set_annotation_once(api, live, RESULT, &result.encode(), Unless::Set).await?
    {
        return Ok(Action::requeue(Duration::from_millis(100)));
    }
    publish(context, live, type_, reason, note).await;
    Ok(Action::await_change())
}

/// A proxy whose saved manifest cannot become a delegate: nothing is created anywhere, the
/// proxy fails with the reason.
pub async fn reject(proxy: &Proxy, context: &Context, why: &str) -> Result<Action, Error> {
    if let Some(target) = proxy.pod.annotations().get(TARGET_CLUSTER) {
        // Placed already, so a replica whose key verified it is at work: this one has another
        // key (a rotation in progress, or a misconfiguration) and must not fail the proxy.
        let note = format!(
            "placed in {target}, but this replica cannot verify the saved manifest ({why}); is --manifest-key-file the same on every replica?"
        );
        publish(
            context,
            &proxy.pod,
            EventType::Warning,
            "ManifestKeyMismatch",
            note,
        )
        .await;
        return Ok(Action::requeue(Duration::from_secs(60)));
    }
    let message = format!("no delegate was created: {why}");
    record(
        proxy,
        context,
        outcome::lost("ManifestRejected", message.clone()),
        EventType::Warning,
        "ManifestRejected",
        message,
    )
    .await
}
