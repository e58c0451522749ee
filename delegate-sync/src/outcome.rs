//! The delegate's result as the proxy records it ([`contract::result`]): only once the
//! delegate's end is decided, and never different afterwards (a pod's terminal status does
//! not change, nor does a container that ended under `restartPolicy: Never`), so delivering it
//! again is harmless.

use std::collections::BTreeMap;

use contract::result::{ContainerResult, DelegateResult, FORMAT_VERSION, Phase};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodStatus};

/// The result of a delegate whose end is decided; None while it still runs.
pub fn result_of(delegate: &Pod) -> Option<DelegateResult> {
    let status = delegate.status.as_ref()?;
    let phase = match status.phase.as_deref()? {
        "Succeeded" => Phase::Succeeded,
        "Failed" => Phase::Failed,
        "Running" => settled_phase(delegate, status)?,
        _ => return None,
    };
    let containers: BTreeMap<String, ContainerResult> =
        statuses(delegate).filter_map(terminated).collect();
    Some(DelegateResult {
        version: FORMAT_VERSION,
        phase,
        reason: status.reason.clone(),
        message: status.message.clone(),
        containers,
    })
}

/// The statuses of every container of a pod, init containers (sidecars) first.
pub fn statuses(pod: &Pod) -> impl Iterator<Item = &ContainerStatus> {
    pod.status.iter().flat_map(|s| {
        s.init_container_statuses
            .iter()
            .flatten()
            .chain(s.container_statuses.iter().flatten())
    })
}

/// The phase of a running delegate whose containers (sidecars included) have all ended under
/// `restartPolicy: Never`: nothing of it can run again, so its phase is decided, as the
/// kubelet will report it: Failed if a container failed. A real kubelet reports the ended
/// containers about a second before the phase (it stops the pod's sandbox in between); the
/// proxy need not wait for that.
fn settled_phase(delegate: &Pod, status: &PodStatus) -> Option<Phase> {
    let spec = delegate.spec.as_ref()?;
    if spec.restart_policy.as_deref() != Some("Never") {
        return None;
    }
    let exit_code = |statuses: &Option<Vec<ContainerStatus>>, name: &str| {
        statuses
            .iter()
            .flatten()
            .find(|s| s.name == name)
            .and_then(|s| s.state.as_ref()?.terminated.as_ref())
            .map(|t| t.exit_code)
    };
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    for sidecar in sidecars {
        exit_code(&status.init_container_statuses, &sidecar.name)?;
    }
    let mut failed = false;
    for container in &spec.containers {
        failed |= exit_code(&status.container_statuses, &container.name)? != 0;
    }
    Some(if failed {
        Phase::Failed
    } else {
        Phase::Succeeded
    })
}

/// A result for a delegate that will never report: lost before it ended.
pub fn lost(reason: &str, message: String) -> DelegateResult {
    DelegateResult {
        version: FORMAT_VERSION,
        phase: Phase::Failed,
        reason: Some(reason.to_string()),
        message: Some(message),
        containers: BTreeMap::new(),
    }
}

/// The result of a proxy stopped before its delegate ended (the delegate is deleted): each of
/// `containers` ends as if it had received SIGTERM, the conventional 143.
pub fn stopped(containers: impl Iterator<Item = String>, message: &str) -> DelegateResult {
    let containers = containers
        .map(|name| {
            let stopped = ContainerResult {
                exit_code: STOPPED_EXIT_CODE,
                reason: Some("Stopped".into()),
                message: Some(message.to_string()),
            };
            (name, stopped)
        })
        .collect();
    DelegateResult {
        version: FORMAT_VERSION,
        phase: Phase::Failed,
        reason: Some("Stopped".into()),
        message: Some(message.to_string()),
        containers,
    }
}

/// 128 + SIGTERM.
pub const STOPPED_EXIT_CODE: i32 = 143;

fn terminated(status: &ContainerStatus) -> Option<(String, ContainerResult)> {
    let state = status.state.as_ref()?.terminated.as_ref()?;
    Some((
        status.name.clone(),
        ContainerResult {
            exit_code: state.exit_code,
            reason: state.reason.clone(),
            message: state.message.clone(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({ "metadata": { "name": "d" }, "status": status })).unwrap()
    }

    #[test]
    fn running_delegates_have_no_result() {
        assert_eq!(result_of(&pod(json!({ "phase": "Running" }))), None);
        assert_eq!(result_of(&pod(json!({}))), None);
    }

    #[test]
    fn terminal_delegates_give_each_containers_exit_code_and_message() {
        let failed = pod(json!({
            "phase": "Failed",
            "initContainerStatuses": [{ "name": "init", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": { "terminated": { "exitCode": 0, "reason": "Completed" } } }],
            "containerStatuses": [
                { "name": "main", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                  "state": { "terminated": { "exitCode": 3, "reason": "Error", "message": "disk full" } } },
                { "name": "wait", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                  "state": { "waiting": { "reason": "PodInitializing" } } },
            ],
        }));
        let result = result_of(&failed).unwrap();
        assert_eq!(result.phase, Phase::Failed);
        assert_eq!(result.containers["main"].exit_code, 3);
        assert_eq!(
            result.containers["main"].message.as_deref(),
            Some("disk full")
        );
        assert_eq!(result.containers["init"].exit_code, 0);
        assert!(
            !result.containers.contains_key("wait"),
            "never ran: its waiter reports the container that failed"
        );
        let wait = result.outcome_for("wait").unwrap();
        assert_eq!(wait.exit_code, 3);
        assert_eq!(wait.message, "main: Error (exit code 3): disk full");
    }

    fn ended(name: &str, code: i32) -> serde_json::Value {
        json!({ "name": name, "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": { "terminated": { "exitCode": code, "reason": "Completed" } } })
    }

    fn running(name: &str) -> serde_json::Value {
        json!({ "name": name, "image": "x", "imageID": "", "ready": true, "restartCount": 0,
                "state": { "running": {} } })
    }

    fn delegate(policy: &str, status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": "d" },
            "spec": {
                "restartPolicy": policy,
                "initContainers": [{ "name": "proxy", "restartPolicy": "Always" }],
                "containers": [{ "name": "main" }, { "name": "wait" }],
            },
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn a_running_delegate_whose_containers_all_ended_under_never_is_decided() {
        let all_ended = |main: i32| {
            json!({
                "phase": "Running",
                "initContainerStatuses": [ended("proxy", 137)],
                "containerStatuses": [ended("main", main), ended("wait", 0)],
            })
        };
        let failed = result_of(&delegate("Never", all_ended(3))).unwrap();
        assert_eq!(failed.phase, Phase::Failed);
        assert_eq!(failed.containers["main"].exit_code, 3);
        let succeeded = result_of(&delegate("Never", all_ended(0))).unwrap();
        assert_eq!(
            succeeded.phase,
            Phase::Succeeded,
            "a sidecar's exit code does not count"
        );

        // Not yet: a container or a sidecar still runs, or the kubelet would restart them.
        let main_runs = json!({
            "phase": "Running",
            "initContainerStatuses": [ended("proxy", 0)],
            "containerStatuses": [running("main"), ended("wait", 0)],
        });
        assert_eq!(result_of(&delegate("Never", main_runs)), None);
        let sidecar_runs = json!({
            "phase": "Running",
            "initContainerStatuses": [running("proxy")],
            "containerStatuses": [ended("main", 0), ended("wait", 0)],
        });
        assert_eq!(result_of(&delegate("Never", sidecar_runs)), None);
        for policy in ["OnFailure", "Always"] {
            assert_eq!(result_of(&delegate(policy, all_ended(3))), None, "{policy}");
        }
    }

    #[test]
    fn evicted_delegates_carry_the_pod_reason() {
        let evicted = pod(
            json!({ "phase": "Failed", "reason": "Evicted", "message": "The node was low on memory." }),
        );
        let result = result_of(&evicted).unwrap();
        assert_eq!(result.reason.as_deref(), Some("Evicted"));
        assert!(
            result
                .outcome_for("main")
                .unwrap()
                .summary
                .contains("Evicted")
        );
        let lost = lost("DelegateLost", "deleted in cluster2 before it ended".into());
        assert_eq!(
            lost.outcome_for("main").unwrap().message,
            "deleted in cluster2 before it ended"
        );
    }
}
