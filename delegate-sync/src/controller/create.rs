//! Step 2: the delegate, created once in the chosen target from the verified saved manifest;
//! an Argo step's task result is claimed there at once. A delegate that was created and is
//! gone is never created again.

use std::time::Duration;

use contract::DELEGATE_NAME;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt as _,
    api::PostParams,
    runtime::{controller::Action, events::EventType},
};
use serde_json::{Value, json};

use super::{
    Context, Error, Proxy, RESYNC, follow, lost,
    proxy::{api_code, patch_annotations, publish, seconds_since},
    result,
};
use crate::{
    copies, delegate,
    targets::{Target, bounded},
    task_results::{self, Step},
};

/// The delegate in `target`: created, or followed when it exists already.
pub async fn run(
    proxy: &Proxy,
    manifest: &Value,
    target: &Target,
    context: &Context,
) -> Result<Action, Error> {
    if let Some(down) = target.unreachable_for() {
        return lost::cluster_unreachable(proxy, target, down, context).await;
    }
    let step = task_results::step_of(manifest);
    let recorded = proxy.pod.annotations().contains_key(DELEGATE_NAME);
    match target.delegate(proxy.namespace(), &proxy.delegate_name) {
        // Made since `follow::find` looked (another replica, or a cache that just caught up).
        Some(delegate) => follow::run(proxy, context, target, &delegate, step).await,
        // Created once: a cache still loading cannot tell whether it is gone, and a delegate
        // that is must never be created again.
        None if recorded && !target.synced() => Ok(Action::requeue(Duration::from_secs(1))),
        None if recorded => {
            // Created once, gone now, no result: lost before it ended. Check the API, not the cache.
            let delegates: Api<Pod> = Api::namespaced(target.client.clone(), proxy.namespace());
            match bounded(delegates.get_opt(&proxy.delegate_name)).await {
                Ok(Some(_)) => Ok(Action::requeue(Duration::from_secs(1))),
                Ok(None) => lost::delegate_gone(proxy, step.as_ref(), target, context).await,
                Err(source) => Err(Error::on(target)(source)),
            }
        }
        None => create(proxy, manifest, step.as_ref(), target, context).await,
    }
}

/// What the pod needs in the target ([`copies::prepare`]); Err: the delegate waits, with a
/// Warning Event saying why.
async fn needs_made(
    proxy: &Proxy,
    needs: &crate::needs::Needs,
    target: &Target,
    context: &Context,
) -> Result<Result<copies::Made, Action>, Error> {
    if target.is_source || context.copies == copies::Settings::default() {
        return Ok(Ok(copies::Made::default()));
    }
    let prepared = copies::prepare(
        context.copies,
        &context.source,
        &context.cluster_name,
        target,
        proxy.namespace(),
        needs,
    )
    .await
    .map_err(Error::on(target))?;
    match prepared {
        Ok(made) => Ok(Ok(made)),
        Err(wait) => {
            let note = format!("delegate {} waits: {wait}", proxy.delegate_name);
            publish(context, &proxy.pod, EventType::Warning, wait.reason(), note).await;
            Ok(Err(Action::requeue(Duration::from_secs(10))))
        }
    }
}

async fn create(
    proxy: &Proxy,
    manifest: &Value,
    step: Option<&Step>,
    target: &Target,
    context: &Context,
) -> Result<Action, Error> {
    let delegate_name = &proxy.delegate_name;
    let delegate = match delegate::build(manifest, &proxy.reference) {
        Ok(delegate) => delegate,
        Err(e) => return result::reject(proxy, context, &e.to_string()).await,
    };
    // What the delegate references, as built: the source's own token volume is gone.
    let needs = crate::needs::of(&delegate);
    let delegate: Pod = match serde_json::from_value(delegate) {
        Ok(pod) => pod,
        Err(e) => {
            let why = format!("the delegate is not a valid pod: {e}");
            return result::reject(proxy, context, &why).await;
        }
    };
    let made = match needs_made(proxy, &needs, target, context).await? {
        Ok(made) => made,
        Err(action) => return Ok(action),
    };
    let delegates: Api<Pod> = Api::namespaced(target.client.clone(), proxy.namespace());
    let created_now = match bounded(delegates.create(&PostParams::default(), &delegate)).await {
        // At once, before the delegate's executor can write a result its cluster would collect.
        Ok(created) => {
            if let Some(step) = step {
                follow::claim_task_result(&proxy.pod, &created, step, target, context).await;
            }
            // Failing here only delays it: the refresh adopts copies whose owner is missing.
            if let Err(e) = copies::adopt(target, &created, &made).await {
                tracing::warn!(target = %target.name, delegate = %delegate_name, "copies not adopted yet: {e}");
            }
            true
        }
        // Made by an earlier pass: recorded and said below unless that pass did (this one saw
        // a cache behind its writes).
        Err(e) if api_code(&e) == Some(409) => false,
        Err(kube::Error::Api(status)) if status.code == 401 => {
            let note = format!(
                "cannot create delegate {delegate_name} in {}: the apiserver refuses delegate-sync's credentials ({})",
                target.name, status.message
            );
            publish(
                context,
                &proxy.pod,
                EventType::Warning,
                lost::TARGET_UNAUTHORIZED,
                note,
            )
            .await;
            return Ok(Action::requeue(Duration::from_secs(5)));
        }
        Err(kube::Error::Api(status)) => {
            let note = format!(
                "cannot create delegate {delegate_name} in {}: {}",
                target.name, status.message
            );
            publish(
                context,
                &proxy.pod,
                EventType::Warning,
                "DelegateNotCreated",
                note,
            )
            .await;
            return Ok(Action::requeue(Duration::from_secs(10)));
        }
        Err(source) => return Err(Error::on(target)(source)),
    };
    if !created_now && proxy.live().await?.annotations().get(DELEGATE_NAME) == Some(delegate_name) {
        return Ok(Action::requeue(RESYNC));
    }
    patch_annotations(
        &proxy.api,
        &proxy.pod,
        json!({ DELEGATE_NAME: delegate_name }),
    )
    .await?;
    if let Some(created) = &proxy.pod.metadata.creation_timestamp {
        context
            .metrics
            .delegate_created_seconds
            .observe(seconds_since(&created.0));
    }
    let note = format!(
        "Scheduled to {}: created delegate {delegate_name} there",
        target.name
    );
    publish(context, &proxy.pod, EventType::Normal, "Scheduled", note).await;
    Ok(Action::requeue(RESYNC))
}
