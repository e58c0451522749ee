//! The proxy being reconciled, and what every step writes on it: annotations (optionally only
//! over the version it read) and Events.

use std::sync::Arc;

use contract::RESTARTS;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, Resource as _, ResourceExt as _,
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use serde_json::{Value, json};

use super::{Context, Error};
use crate::delegate::{self, ProxyRef};

/// A proxy pod as one reconciliation sees it.
pub struct Proxy {
    /// The proxy as the cache showed it when the reconciliation began.
    pub pod: Arc<Pod>,
    /// Pods of the proxy's namespace in the source cluster.
    pub api: Api<Pod>,
    pub reference: ProxyRef,
    /// Its delegate's name, the same in every target.
    pub delegate_name: String,
}

impl Proxy {
    pub fn new(pod: Arc<Pod>, context: &Context) -> Result<Self, Error> {
        let namespace = pod.namespace().ok_or(Error::NoNamespace)?;
        let reference = ProxyRef {
            cluster: context.cluster_name.clone(),
            namespace: namespace.clone(),
            name: pod.name_any(),
            uid: pod.uid().unwrap_or_default(),
            restart: pod
                .annotations()
                .get(RESTARTS)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
        };
        Ok(Self {
            api: Api::namespaced(context.source.clone(), &namespace),
            delegate_name: delegate::delegate_name(&reference),
            reference,
            pod,
        })
    }

    pub fn namespace(&self) -> &str {
        &self.reference.namespace
    }

    /// The proxy as it is now (the cache may lag behind our own writes).
    pub async fn live(&self) -> Result<Pod, Error> {
        self.api
            .get(&self.pod.name_any())
            .await
            .map_err(Error::Source)
    }
}

pub fn api_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Like [`patch_annotations`], only if the proxy is still at `proxy`'s resourceVersion: false
/// when it changed meanwhile (its next pass decides again on what it is now).
pub async fn patch_annotations_at(
    api: &Api<Pod>,
    proxy: &Pod,
    annotations: Value,
) -> Result<bool, Error> {
    let patch = json!({ "metadata": {
        "resourceVersion": proxy.resource_version(),
        "annotations": annotations,
    }});
    match api
        .patch(
            &proxy.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if api_code(&e) == Some(409) => Ok(false),
        Err(e) => Err(Error::Source(e)),
    }
}

/// What else must hold for [`set_annotation_once`] to write.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Unless {
    /// Only that the annotation is unset.
    Set,
    /// Also that the proxy is not being deleted.
    SetOrDeleting,
}

/// What [`set_annotation_once`] did.
pub enum Once {
    Written,
    /// Another write got there first; the proxy as read to tell so.
    Refused(Box<Pod>),
}

/// Sets annotation `key` on `proxy` only if it is unset, on the same pod (uid) and, per
/// `unless`, not being deleted; refused when another write got there first (its next pass
/// follows what that write says).
///
/// The condition is on what matters (JSON Patch `test` operations), not on the whole version
/// read as in [`patch_annotations_at`]: a running proxy's first seconds are its kubelet's
/// status updates, and each would refuse a resourceVersion precondition, costing a re-read and
/// another write.
pub async fn set_annotation_once(
    api: &Api<Pod>,
    proxy: &Pod,
    key: &str,
    value: &str,
    unless: Unless,
) -> Result<Once, Error> {
    let live = || async { api.get(&proxy.name_any()).await.map_err(Error::Source) };
    if proxy.metadata.annotations.is_none() {
        // No map for a `test` to look into: the version read is the condition.
        return Ok(
            if patch_annotations_at(api, proxy, json!({ key: value })).await? {
                Once::Written
            } else {
                Once::Refused(Box::new(live().await?))
            },
        );
    }
    let patch = once_patch(proxy.uid().unwrap_or_default(), key, value, unless)
        .map_err(|e| Error::Source(kube::Error::SerdeError(e)))?;
    match api
        .patch(
            &proxy.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
    {
        Ok(_) => Ok(Once::Written),
        // A failed `test` is a 422 with no detail, like a write the apiserver finds invalid:
        // the live proxy tells them apart.
        Err(e) if api_code(&e) == Some(422) => {
            let live = live().await?;
            let deleting =
                unless == Unless::SetOrDeleting && live.metadata.deletion_timestamp.is_some();
            if live.uid() != proxy.uid() || live.annotations().contains_key(key) || deleting {
                Ok(Once::Refused(Box::new(live)))
            } else {
                Err(Error::Source(e))
            }
        }
        Err(e) => Err(Error::Source(e)),
    }
}

/// The JSON Patch of [`set_annotation_once`].
fn once_patch(
    uid: String,
    key: &str,
    value: &str,
    unless: Unless,
) -> Result<json_patch::Patch, serde_json::Error> {
    let path = format!(
        "/metadata/annotations/{}",
        key.replace('~', "~0").replace('/', "~1")
    );
    let mut operations = vec![
        json!({ "op": "test", "path": "/metadata/uid", "value": uid }),
        json!({ "op": "test", "path": path, "value": null }),
    ];
    if unless == Unless::SetOrDeleting {
        operations
            .push(json!({ "op": "test", "path": "/metadata/deletionTimestamp", "value": null }));
    }
    operations.push(json!({ "op": "add", "path": path, "value": value }));
    serde_json::from_value(Value::Array(operations))
}

pub async fn patch_annotations(
    api: &Api<Pod>,
    proxy: &Pod,
    annotations: Value,
) -> Result<(), Error> {
    let patch = json!({ "metadata": { "annotations": annotations } });
    api.patch(
        &proxy.name_any(),
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await
    .map(|_| ())
    .map_err(Error::Source)
}

/// Where the proxies' Events go. A warning repeats while its cause lasts (no room, a cluster
/// away), so warnings share one recorder, which makes a repeated one a series: one Event,
/// counted. A Normal Event is said once per proxy, so each gets a recorder of its own: kube's
/// recorder keeps every Event it published for six minutes and scans them all at each publish,
/// which at 10,000 proxies was tens of megabytes, and a scan of them per Event.
#[derive(Clone)]
pub struct Events {
    client: Client,
    reporter: Reporter,
    warnings: Recorder,
}

impl Events {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self {
            warnings: Recorder::new(client.clone(), reporter.clone()),
            client,
            reporter,
        }
    }

    fn recorder(&self, type_: EventType) -> Recorder {
        match type_ {
            EventType::Warning => self.warnings.clone(),
            EventType::Normal => Recorder::new(self.client.clone(), self.reporter.clone()),
        }
    }
}

pub async fn publish(context: &Context, proxy: &Pod, type_: EventType, reason: &str, note: String) {
    publish_with(&context.events, proxy, type_, reason, note).await;
}

/// [`publish`] through `events` (the log relays', which run beside reconciles).
pub async fn publish_with(
    events: &Events,
    proxy: &Pod,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let namespace = proxy.namespace().unwrap_or_default();
    let name = proxy.name_any();
    // The log tells the same story as the Events, for operators who read logs.
    match type_ {
        EventType::Normal => tracing::info!(%namespace, proxy = %name, reason, "{note}"),
        EventType::Warning => tracing::warn!(%namespace, proxy = %name, reason, "{note}"),
    }
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Delegate".into(),
        secondary: None,
    };
    let recorder = events.recorder(type_);
    let reference = proxy.object_ref(&());
    let reason = reason.to_string();
    let publishing = async move {
        if let Err(e) = recorder.publish(&event, &reference).await {
            tracing::warn!("cannot publish event {reason}: {e}");
        }
    };
    // Normal Events are the hot path of every proxy: they need not delay the next step.
    // Warnings explain why nothing happens, so they are written before the reconcile returns.
    match type_ {
        EventType::Normal => drop(tokio::spawn(publishing)),
        EventType::Warning => publishing.await,
    }
}

pub fn seconds_since(then: &k8s_openapi::jiff::Timestamp) -> f64 {
    k8s_openapi::jiff::Timestamp::now()
        .duration_since(*then)
        .as_secs_f64()
        .max(0.0)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{Unless, once_patch};

    #[test]
    fn a_once_patch_tests_the_uid_and_the_unset_annotation_before_adding_it() {
        let patch = once_patch(
            "u-1".into(),
            "multicluster.admiralty.io/target~x",
            "c2",
            Unless::Set,
        );
        let path = "/metadata/annotations/multicluster.admiralty.io~1target~0x";
        assert_eq!(
            serde_json::to_value(patch.ok()).ok(),
            Some(json!([
                { "op": "test", "path": "/metadata/uid", "value": "u-1" },
                { "op": "test", "path": path, "value": null },
                { "op": "add", "path": path, "value": "c2" },
            ]))
        );
    }

    #[test]
    fn a_decision_is_also_not_written_on_a_proxy_being_deleted() {
        let patch = once_patch("u-1".into(), "a", "c2", Unless::SetOrDeleting);
        let value = serde_json::to_value(patch.ok()).unwrap_or_default();
        assert_eq!(
            value[2],
            json!({ "op": "test", "path": "/metadata/deletionTimestamp", "value": null })
        );
        assert_eq!(value[3]["op"], "add");
    }
}
