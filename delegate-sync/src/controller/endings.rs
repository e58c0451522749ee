//! The endings lane: a delegate that ended has its result written on its proxy at once, not
//! behind the placements of a burst. An ending is the cheaper and the more urgent work (a
//! workflow waits for the step it ends, and a placement queued behind it only waits longer
//! for room it already lacks), so it gets reconciles of its own beside the controller's queue.
//!
//! The lane runs the same level-triggered steps as the queue ([`super::reconcile`]); a proxy is
//! never reconciled by both at once ([`Busy`]): each waits for the other's pass to end.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use contract::RESULT;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    ResourceExt as _,
    runtime::reflector::{ObjectRef, Store},
};

use super::{Context, Proxy, follow, restart, stop};
use crate::outcome;

/// The proxies being reconciled now, by the queue or by the lane.
#[derive(Default)]
pub struct Busy(Mutex<HashSet<ObjectRef<Pod>>>);

/// A proxy claimed in [`Busy`], released when dropped.
pub struct Claim<'a> {
    busy: &'a Busy,
    proxy: ObjectRef<Pod>,
}

impl Busy {
    /// Claims `proxy`; None while someone else reconciles it.
    pub fn claim(&self, proxy: &ObjectRef<Pod>) -> Option<Claim<'_>> {
        let mut busy = self.0.lock().unwrap_or_else(|e| e.into_inner());
        busy.insert(proxy.clone()).then(|| Claim {
            busy: self,
            proxy: proxy.clone(),
        })
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut busy = self.busy.0.lock().unwrap_or_else(|e| e.into_inner());
        busy.remove(&self.proxy);
    }
}

/// Whether `pod`'s delegate ended for good (its policy does not replace it), its proxy still
/// waits for the result, and nothing else is under way for it (a deletion, a stop).
pub fn is_ending(pod: &Arc<Pod>, context: &Context) -> bool {
    if pod.metadata.deletion_timestamp.is_some()
        || pod.annotations().contains_key(RESULT)
        || stop::stopped(pod).is_some()
    {
        return false;
    }
    let Ok(proxy) = Proxy::new(pod.clone(), context) else {
        return false;
    };
    let Some((_, delegate)) = follow::find(&proxy, context) else {
        return false;
    };
    outcome::result_of(&delegate)
        .is_some_and(|ended| !restart::replaces(restart::policy(&proxy), Some(ended.phase)))
}

/// Reconciles the proxies woken by `woken` whose delegate ended, `concurrency` at a time.
pub async fn run(
    context: Arc<Context>,
    proxies: Store<Pod>,
    mut woken: tokio::sync::mpsc::Receiver<ObjectRef<Pod>>,
    concurrency: usize,
) {
    futures::stream::poll_fn(move |cx| woken.poll_recv(cx))
        .for_each_concurrent(concurrency, |proxy| {
            let (context, proxies) = (context.clone(), proxies.clone());
            async move { end(&proxy, &proxies, context).await }
        })
        .await;
}

/// How long the lane waits for the queue to finish a pass over a proxy whose delegate ended
/// (typically the pass that created the delegate, still recording its name).
const WAIT_FOR_QUEUE: Duration = Duration::from_secs(10);

/// One pass of the lane over `reference`, if its delegate ended: after the queue's pass if the
/// queue is at it (left to the queue if that takes longer than [`WAIT_FOR_QUEUE`]).
async fn end(reference: &ObjectRef<Pod>, proxies: &Store<Pod>, context: Arc<Context>) {
    let ending = || {
        proxies
            .get(reference)
            .filter(|pod| is_ending(pod, &context))
    };
    if ending().is_none() {
        return;
    }
    let started = tokio::time::Instant::now();
    let _claim = loop {
        if let Some(claim) = context.busy.claim(reference) {
            break claim;
        }
        if started.elapsed() > WAIT_FOR_QUEUE {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // As the queue's pass left it.
    let Some(pod) = ending() else {
        return;
    };
    let outcome = match super::reconcile(pod, context.clone()).await {
        Ok(_) => "ok",
        // The queue, woken by the same change, retries with its own backoff.
        Err(e) => {
            tracing::debug!(proxy = %reference, "ending not recorded yet: {e}");
            "error"
        }
    };
    context
        .metrics
        .reconciliations
        .get_or_create(&crate::metrics::OutcomeLabel { outcome })
        .inc();
}
