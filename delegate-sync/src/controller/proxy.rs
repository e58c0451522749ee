//! The proxy being reconciled, and what every step writes on it: annotations (optionally only
//! over the version it read) and Events.

use std::sync::Arc;

use contract::RESTARTS;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Resource as _, ResourceExt as _,
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder},
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

pub async fn publish(context: &Context, proxy: &Pod, type_: EventType, reason: &str, note: String) {
    publish_with(&context.recorder, proxy, type_, reason, note).await;
}

/// [`publish`] with a recorder of its own (the log relays', which run beside reconciles).
pub async fn publish_with(
    recorder: &Recorder,
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
    let recorder = recorder.clone();
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
