//! Step 3: a delegate that exists is followed wherever it runs (found by its deterministic name
//! and the proxy's uid, whatever the proxy's annotations say now) and mirrored onto the proxy:
//! its annotations, an Argo step's task result, and its result once it ended.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use contract::{CONTAINER_RESTARTS, DELEGATE_NAME, SOURCEPOD_MANIFEST, TARGET_CLUSTER, is_own_key};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    ResourceExt as _,
    runtime::{controller::Action, events::EventType},
};
use serde_json::{Value, json};

use super::{
    Context, Error, Proxy, RESYNC, lost, place,
    proxy::{patch_annotations, patch_annotations_at, publish, seconds_since},
    restart, result, stop,
};
use crate::{
    delegate, outcome,
    targets::{Target, bounded},
    task_results::{self, Step},
};

/// This proxy's delegate in any target's cache (its recorded target first): the deterministic
/// name, and the proxy's uid on it (a delegate of an earlier pod of the same name is not it).
pub fn find<'a>(proxy: &Proxy, context: &'a Context) -> Option<(&'a Target, Arc<Pod>)> {
    let recorded = proxy.pod.annotations().get(TARGET_CLUSTER);
    let (first, others): (Vec<&Target>, Vec<&Target>) = context
        .targets
        .iter()
        .partition(|t| Some(&t.name) == recorded);
    first.into_iter().chain(others).find_map(|target| {
        let delegate = target.delegate(proxy.namespace(), &proxy.delegate_name)?;
        let ours = delegate.labels().get(delegate::PROXY_UID) == Some(&proxy.reference.uid);
        ours.then_some((target, delegate))
    })
}

/// Follows a delegate [`find`] found, with the Argo step of the proxy's manifest if that still
/// verifies.
pub async fn run_found(
    proxy: &Proxy,
    context: &Context,
    target: &Target,
    delegate: &Pod,
) -> Result<Action, Error> {
    let step = verified_step(proxy, context).await;
    run(proxy, context, target, delegate, step).await
}

/// Mirrors (or stops) an existing delegate; first puts back the placement annotations if they
/// no longer say where it runs.
pub async fn run(
    proxy: &Proxy,
    context: &Context,
    target: &Target,
    delegate: &Pod,
    step: Option<Step>,
) -> Result<Action, Error> {
    place::forget_in_flight(context, &target.name, &delegate.name_any());
    restore_placement(proxy, context, target, delegate).await?;
    if let Some(down) = target.unreachable_for() {
        return lost::cluster_unreachable(proxy, target, down, context).await;
    }
    match stop::stopped(&proxy.pod) {
        Some(why) => stop::run(proxy, context, target, delegate, step.as_ref(), &why).await,
        None => mirror(proxy, context, target, delegate, step.as_ref()).await,
    }
}

/// Writes the target and delegate name back when the proxy's annotations disagree with where
/// the delegate runs. A mismatch seen in the cache is checked on the live proxy first (our own
/// last write may not be in the cache yet); a missing delegate name alone is our own unfinished
/// work (a restart between creating the delegate and recording its name), not an edit.
async fn restore_placement(
    proxy: &Proxy,
    context: &Context,
    target: &Target,
    delegate: &Pod,
) -> Result<(), Error> {
    let delegate_name = delegate.name_any();
    let agrees = |p: &Pod| {
        let a = p.annotations();
        let target_ok = a.get(TARGET_CLUSTER) == Some(&target.name);
        let name_ok = a.get(DELEGATE_NAME).is_none_or(|n| *n == delegate_name);
        (
            target_ok && name_ok,
            target_ok && a.contains_key(DELEGATE_NAME),
        )
    };
    if agrees(&proxy.pod) == (true, true) {
        return Ok(());
    }
    let live = proxy.live().await?;
    let (consistent, complete) = agrees(&live);
    if consistent && complete {
        return Ok(());
    }
    let placement = json!({ TARGET_CLUSTER: target.name, DELEGATE_NAME: delegate_name });
    if !patch_annotations_at(&proxy.api, &live, placement).await? {
        return Ok(()); // Changed meanwhile: the next pass looks again.
    }
    if !consistent {
        let a = live.annotations();
        let note = format!(
            "{TARGET_CLUSTER} said {:?} and {DELEGATE_NAME} {:?}, but the delegate {delegate_name} runs in {}: put back (these annotations are delegate-sync's; editing them changes nothing)",
            a.get(TARGET_CLUSTER),
            a.get(DELEGATE_NAME),
            target.name
        );
        publish(
            context,
            &proxy.pod,
            EventType::Warning,
            "PlacementEdited",
            note,
        )
        .await;
    }
    Ok(())
}

/// The Argo step of the proxy from its saved manifest, if that still verifies. One that no
/// longer does (edited after admission, or a replica with another key) changes nothing for a
/// delegate that already runs: it is still followed, without Argo task results.
async fn verified_step(proxy: &Proxy, context: &Context) -> Option<Step> {
    let opened = match proxy.pod.annotations().get(SOURCEPOD_MANIFEST) {
        Some(sealed) => place::open_manifest(context, proxy.namespace(), sealed),
        None => Err("it is missing".into()),
    };
    match opened {
        Ok(saved) => task_results::step_of(&saved),
        Err(why) => {
            let note = format!(
                "the saved manifest does not verify ({why}): edited after admission, or this replica has another --manifest-key-file; the running delegate is left as it is"
            );
            publish(
                context,
                &proxy.pod,
                EventType::Warning,
                "ManifestKeyMismatch",
                note,
            )
            .await;
            None
        }
    }
}

/// Mirrors the delegate's annotations and Argo task result, and its result once it ended.
async fn mirror(
    proxy: &Proxy,
    context: &Context,
    target: &Target,
    delegate: &Pod,
    step: Option<&Step>,
) -> Result<Action, Error> {
    let current = proxy.pod.annotations();
    let mut changed: serde_json::Map<String, Value> = delegate
        .annotations()
        .iter()
        // The delegate carries the owner's kill commands: the proxy's must stay proxy-waiter's.
        .filter(|(k, _)| {
            !is_own_key(k)
                && !k.starts_with("kubectl.kubernetes.io/")
                && !contract::is_argo_kill_cmd_key(k)
        })
        .filter(|(k, v)| current.get(*k) != Some(v))
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let restarts = restart_counts(delegate);
    let shown: BTreeMap<String, i32> = current
        .get(CONTAINER_RESTARTS)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    if restarts != shown {
        let text = (!restarts.is_empty()).then(|| json!(restarts).to_string());
        changed.insert(CONTAINER_RESTARTS.into(), json!(text));
    }
    if !changed.is_empty() {
        patch_annotations(&proxy.api, &proxy.pod, Value::Object(changed)).await?;
    }
    if restarts != shown {
        publish_container_restarts(proxy, context, delegate, &shown).await;
    }
    let ended = outcome::result_of(delegate);
    context
        .relays
        .follow(&proxy.pod, target, delegate, ended.is_some());
    if let Some(step) = step {
        // Before the proxy's result: Argo must never see the step end without its outputs.
        mirror_task_result(&proxy.pod, delegate, step, ended.is_some(), target, context).await?;
    }
    let Some(ended) = ended else {
        return Ok(Action::requeue(RESYNC));
    };
    if restart::replaces(restart::policy(proxy), Some(ended.phase)) {
        let why = format!(
            "delegate {} in {} ended ({:?}{})",
            delegate.name_any(),
            target.name,
            ended.phase,
            ended
                .reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
        let old = restart::Old::Present(delegate);
        return restart::run(proxy, context, target, old, &why).await;
    }
    if let Some(wait) = wait_for_logs(proxy, context, delegate).await {
        return Ok(wait);
    }
    let reason = if ended.phase == contract::result::Phase::Succeeded {
        "DelegateSucceeded"
    } else {
        "DelegateFailed"
    };
    let note = format!("delegate {} ended: {:?}", delegate.name_any(), ended.phase);
    let recorded = result::record(proxy, context, ended, EventType::Normal, reason, note).await;
    if let (Ok(_), Some(ended)) = (&recorded, ended_at(delegate)) {
        context
            .metrics
            .result_recorded_seconds
            .observe(seconds_since(&ended));
    }
    recorded
}

/// How long a proxy's result waits for its log relays once the delegate ended.
const LOG_RELAY_GRACE: Duration = Duration::from_secs(60);

/// Holds the result until the delegate's logs are all in the proxy's containers (a proxy
/// container that ended has its whole log); not past [`LOG_RELAY_GRACE`] after the delegate's
/// last container ended (its own status says when, so a restart changes nothing), which a
/// Warning says.
async fn wait_for_logs(proxy: &Proxy, context: &Context, delegate: &Pod) -> Option<Action> {
    if context.relays.settled(&proxy.pod, delegate) {
        return None;
    }
    let ended = ended_at(delegate)?;
    if seconds_since(&ended) < LOG_RELAY_GRACE.as_secs_f64() {
        // The relay's end wakes this proxy; the requeue is a safety net.
        return Some(Action::requeue(Duration::from_secs(5)));
    }
    let note = format!(
        "the delegate's log was not all relayed within {LOG_RELAY_GRACE:?} of its end; the result is written anyway (the rest stays in {}'s log)",
        delegate.name_any()
    );
    publish(
        context,
        &proxy.pod,
        EventType::Warning,
        "LogRelayIncomplete",
        note,
    )
    .await;
    None
}

/// The step's task result, kept claimed in the target while the delegate runs, and copied
/// next to the proxy (complete once the delegate ended).
pub async fn mirror_task_result(
    proxy: &Pod,
    delegate: &Pod,
    step: &Step,
    delegate_ended: bool,
    target: &Target,
    context: &Context,
) -> Result<(), Error> {
    let namespace = delegate.namespace().unwrap_or_default();
    let found = bounded(task_results::fetch(&target.client, &namespace, step))
        .await
        .map_err(Error::on(target))?;
    let Some(found) = found else {
        // Not written yet (claimed now, mirrored on the next pass), or never will be.
        if !delegate_ended {
            claim_task_result(proxy, delegate, step, target, context).await;
        }
        return Ok(());
    };
    if !delegate_ended && !task_results::is_claimed(&found, delegate) {
        claim_task_result(proxy, delegate, step, target, context).await;
    }
    // A delegate that never ran its executor (still unscheduled, say) must not make Argo wait
    // for a result: after `argo stop`, Argo would mark the step "pod deleted" once it labels the
    // proxy completed. Ended, the claim is mirrored complete.
    if !delegate_ended && task_results::holds_only_the_claim(&found) {
        return Ok(());
    }
    task_results::mirror(&context.source, proxy, step, &found, delegate_ended)
        .await
        .map_err(Error::Source)
}

/// Best effort: a step whose result cannot be kept still runs (its outputs may be lost, which
/// the Warning says).
pub async fn claim_task_result(
    proxy: &Pod,
    delegate: &Pod,
    step: &Step,
    target: &Target,
    context: &Context,
) {
    if let Err(e) = bounded(task_results::claim(
        &target.client,
        step,
        delegate,
        &context.cluster_name,
    ))
    .await
    {
        let note = format!(
            "cannot keep Argo's task result {} in {}; the step's outputs may be lost: {e} (does {} have the WorkflowTaskResult CRD and the target chart's RBAC?)",
            step.node_id, target.name, target.name
        );
        publish(
            context,
            proxy,
            EventType::Warning,
            "TaskResultNotClaimed",
            note,
        )
        .await;
    }
}

/// How often the kubelet restarted each container of the delegate (those it restarted), as
/// the proxy shows it in compact JSON (`{"main":2}`).
fn restart_counts(delegate: &Pod) -> BTreeMap<String, i32> {
    outcome::statuses(delegate)
        .filter(|c| c.restart_count > 0)
        .map(|c| (c.name.clone(), c.restart_count))
        .collect()
}

/// An Event per container restarted since the proxy last showed it, with how it last ended,
/// so that `kubectl describe` on the proxy tells.
async fn publish_container_restarts(
    proxy: &Proxy,
    context: &Context,
    delegate: &Pod,
    shown: &BTreeMap<String, i32>,
) {
    let restarted = outcome::statuses(delegate)
        .filter(|c| c.restart_count > shown.get(&c.name).copied().unwrap_or(0));
    for c in restarted {
        let last = c
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .map(|t| {
                format!(
                    "; it last ended with exit code {}{}",
                    t.exit_code,
                    t.reason
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                )
            })
            .unwrap_or_default();
        let note = format!(
            "container {} of delegate {} restarted: {} time(s) in all{last}",
            c.name,
            delegate.name_any(),
            c.restart_count
        );
        publish(
            context,
            &proxy.pod,
            EventType::Warning,
            "DelegateContainerRestarted",
            note,
        )
        .await;
    }
}

/// When the delegate's last container ended.
fn ended_at(delegate: &Pod) -> Option<k8s_openapi::jiff::Timestamp> {
    outcome::statuses(delegate)
        .filter_map(|c| {
            c.state
                .as_ref()?
                .terminated
                .as_ref()?
                .finished_at
                .as_ref()
                .map(|t| t.0)
        })
        .max()
}
