//! Step 4: a proxy that stopped on its own while its delegate runs (its containers were
//! killed, e.g. by Argo's kill command; it ended; or Argo gave up on it) stops the delegate:
//! deleted in its cluster with its own grace period, like a kubelet stopping a pod, and the
//! stop recorded as the proxy's result.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use contract::{argo::POD_COMPLETED_LABEL, result::DelegateResult};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    ResourceExt as _,
    runtime::{controller::Action, events::EventType},
};

use super::{Context, Error, Proxy, follow, result};
use crate::{outcome, targets::Target, task_results::Step};

/// Why the proxy stopped on its own while its delegate runs (its containers were killed, e.g.
/// by Argo's kill command, or Argo gave up on it); None while it waits for the delegate.
pub fn stopped(proxy: &Pod) -> Option<String> {
    ended_or_killed(proxy).or_else(|| argo_gave_up(proxy))
}

/// The proxy ended, or a container of it was killed (and will not restart).
fn ended_or_killed(proxy: &Pod) -> Option<String> {
    let status = proxy.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return Some(format!(
            "the proxy ended ({})",
            status.phase.as_deref().unwrap_or_default()
        ));
    }
    let never_restarts = proxy
        .spec
        .as_ref()
        .is_none_or(|s| s.restart_policy.as_deref().is_none_or(|p| p == "Never"));
    if never_restarts {
        let killed = status.container_statuses.iter().flatten().find_map(|c| {
            let ended = c.state.as_ref()?.terminated.as_ref()?;
            Some(format!(
                "proxy container {} ended with exit code {}",
                c.name, ended.exit_code
            ))
        });
        if killed.is_some() {
            return killed;
        }
    }
    None
}

/// Argo labelled the proxy completed while it runs.
fn argo_gave_up(proxy: &Pod) -> Option<String> {
    (proxy.labels().get(POD_COMPLETED_LABEL).map(String::as_str) == Some("true"))
        .then(|| format!("Argo labelled the proxy {POD_COMPLETED_LABEL}=true while it ran"))
}

/// Deletes a stopped proxy's delegate in its cluster and records the stop as the proxy's
/// result, once Argo's kill command had its grace. An Argo step's task result is mirrored
/// complete first, before that grace (it goes with the delegate, and nobody will write it
/// again): Argo stops watching a pod it labelled completed, and a step whose result it still
/// waits for then ends "pod deleted".
pub async fn run(
    proxy: &Proxy,
    context: &Context,
    target: &Target,
    delegate: &Pod,
    step: Option<&Step>,
    why: &str,
) -> Result<Action, Error> {
    if let Some(step) = step {
        follow::mirror_task_result(&proxy.pod, delegate, step, true, target, context).await?;
    }
    if let Some(wait) = grace_left(&proxy.pod, &context.argo_completed_seen) {
        return Ok(Action::requeue(wait));
    }
    if outcome::result_of(delegate).is_none() {
        target
            .delete_delegate(delegate)
            .await
            .map_err(Error::on(target))?;
    }
    let (stopped, message) = stop_outcome(&proxy.pod, why, &delegate.name_any(), target);
    result::record(
        proxy,
        context,
        stopped,
        EventType::Normal,
        "DelegateStopped",
        message,
    )
    .await
}

/// The result of a proxy stopped for `why`: every container 143.
pub fn stop_outcome(
    proxy: &Pod,
    why: &str,
    delegate_name: &str,
    target: &Target,
) -> (DelegateResult, String) {
    let containers = proxy
        .spec
        .iter()
        .flat_map(|s| s.containers.iter().map(|c| c.name.clone()));
    let message = format!(
        "stopped: {why}; delegate {delegate_name} deleted in {}",
        target.name
    );
    (outcome::stopped(containers, &message), message)
}

/// How long Argo's kill command may still take to end a proxy that Argo labelled completed
/// while it runs. Argo labels the pod as it execs `proxy-waiter kill` into its containers
/// (`argo stop`, `terminate`, deadlines); on a real kubelet the exec ends the proxy's
/// containers with the kill command's exit code and message, 1 to 4 s after the label as
/// measured with Argo 3.7 (its execs take seconds and go one container after another). The
/// label alone stops the delegate only after this grace: when the exec cannot reach the
/// containers, or Argo gave up on the pod.
pub const KILL_COMMAND_GRACE: Duration = Duration::from_secs(10);

/// The time left of [`KILL_COMMAND_GRACE`] for a proxy stopped by Argo's label alone; None
/// when it is over or the proxy stopped otherwise.
fn grace_left(proxy: &Pod, first_seen: &Mutex<HashMap<String, Instant>>) -> Option<Duration> {
    let uid = proxy.uid()?;
    let mut seen = first_seen.lock().unwrap_or_else(|e| e.into_inner());
    if ended_or_killed(proxy).is_some() || argo_gave_up(proxy).is_none() {
        seen.remove(&uid);
        return None;
    }
    let first = *seen.entry(uid.clone()).or_insert_with(Instant::now);
    let left = KILL_COMMAND_GRACE.saturating_sub(first.elapsed());
    if left.is_zero() {
        seen.remove(&uid);
        return None;
    }
    Some(left)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn proxy(status: Value, labels: Value, restart_policy: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": "p", "labels": labels },
            "spec": { "restartPolicy": restart_policy, "containers": [{ "name": "main" }, { "name": "wait" }] },
            "status": status,
        }))
        .unwrap()
    }

    fn container(name: &str, state: Value) -> Value {
        json!({ "name": name, "image": "w", "imageID": "", "ready": false, "restartCount": 0, "state": state })
    }

    #[test]
    fn a_waiting_proxy_is_not_stopped() {
        let running = json!({ "phase": "Running", "containerStatuses": [
            container("main", json!({ "running": {} })), container("wait", json!({ "running": {} })) ] });
        assert_eq!(stopped(&proxy(running.clone(), json!({}), "Never")), None);
        let argo_running = json!({ "workflows.argoproj.io/completed": "false" });
        assert_eq!(stopped(&proxy(running, argo_running, "Never")), None);
    }

    #[test]
    fn argos_label_alone_stops_the_delegate_only_after_the_kill_commands_grace() {
        let running = json!({ "phase": "Running", "containerStatuses": [
            container("main", json!({ "running": {} })) ] });
        let done = json!({ "workflows.argoproj.io/completed": "true" });
        let mut labelled = proxy(running, done.clone(), "Never");
        labelled.metadata.uid = Some("u1".into());
        let seen = Mutex::new(HashMap::new());
        let grace = |p: &Pod| grace_left(p, &seen);
        let first = grace(&labelled).expect("the kill command gets its grace");
        assert!(first <= KILL_COMMAND_GRACE && first > KILL_COMMAND_GRACE / 2);
        assert!(
            grace(&labelled).unwrap() <= first,
            "the grace runs from the first sight"
        );
        seen.lock()
            .unwrap()
            .insert("u1".into(), Instant::now() - KILL_COMMAND_GRACE);
        assert_eq!(grace(&labelled), None, "over: the label stops the delegate");
        assert!(seen.lock().unwrap().is_empty(), "forgotten once over");

        let killed = json!({ "phase": "Running", "containerStatuses": [
            container("main", json!({ "terminated": { "exitCode": 143 } })) ] });
        let mut killed = proxy(killed, done, "Never");
        killed.metadata.uid = Some("u2".into());
        assert_eq!(
            grace(&killed),
            None,
            "the kill command ended it: stop at once"
        );
    }

    #[test]
    fn a_killed_container_an_ended_proxy_or_argos_completed_label_stop_it() {
        let killed = json!({ "phase": "Running", "containerStatuses": [
            container("main", json!({ "terminated": { "exitCode": 143 } })),
            container("wait", json!({ "running": {} })) ] });
        let why = stopped(&proxy(killed.clone(), json!({}), "Never")).unwrap();
        assert!(why.contains("main") && why.contains("143"), "{why}");
        // Restarted by its kubelet: not a stop.
        assert_eq!(stopped(&proxy(killed, json!({}), "OnFailure")), None);
        let ended = json!({ "phase": "Failed" });
        assert!(stopped(&proxy(ended, json!({}), "Always")).is_some());
        let given_up = json!({ "phase": "Running" });
        let done = json!({ "workflows.argoproj.io/completed": "true" });
        assert!(
            stopped(&proxy(given_up, done, "Never"))
                .unwrap()
                .contains("Argo")
        );
    }
}
