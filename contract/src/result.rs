//! The delegate's result, as `delegate-sync` records it on the proxy (annotation
//! [`RESULT`](crate::RESULT)) and hands it to each proxy container's `proxy-waiter`.
//!
//! Compact, versioned JSON: `{"v":1,"phase":"Failed","containers":{"main":{"exitCode":3,
//! "message":"disk full"}}}`. Unknown fields are ignored within a version; a new version is
//! refused by older waiters rather than misread.

use alloc::{
    borrow::Cow,
    collections::BTreeMap,
    format,
    string::{String, ToString},
};

use serde::{Deserialize, Serialize};

/// The format version this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Kubernetes keeps at most this many bytes of a container's termination message.
pub const TERMINATION_MESSAGE_LIMIT: usize = 4096;

/// How the delegate pod ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegateResult {
    #[serde(rename = "v")]
    pub version: u32,
    pub phase: Phase,
    /// Pod-level reason, e.g. `DelegateLost`, when the pod failed as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Per container name, how it ended.
    #[serde(default)]
    pub containers: BTreeMap<String, ContainerResult>,
}

/// Terminal phase of the delegate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Succeeded,
    Failed,
}

/// How one delegate container ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerResult {
    pub exit_code: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Why a result cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResultError {
    #[error("result is not valid JSON of the expected shape: {0}")]
    Malformed(String),
    #[error("result has format version {found}; this build reads version {FORMAT_VERSION} only")]
    UnknownVersion { found: u64 },
    #[error("result has no entry for container {container:?} and the pod did not fail as a whole")]
    MissingContainer { container: String },
}

impl ResultError {
    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::UnknownVersion { .. } => "unknown_version",
            Self::MissingContainer { .. } => "missing_container",
        }
    }
}

/// What a proxy container must do: exit with `exit_code`, leaving `message` as its
/// termination message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub exit_code: u8,
    pub message: String,
    /// One line for the container's log.
    pub summary: String,
}

/// Exit code of a proxy container whose delegate failed as a whole with no record of that
/// container (e.g. the delegate was lost before it started).
pub const POD_FAILED_EXIT_CODE: u8 = 1;

impl DelegateResult {
    /// Decodes a result, checking the format version before the shape so that a newer format
    /// is reported as such.
    pub fn decode(text: &str) -> Result<Self, ResultError> {
        #[derive(Deserialize)]
        struct Version {
            v: Option<u64>,
        }
        let version: Version =
            serde_json::from_str(text).map_err(|e| ResultError::Malformed(e.to_string()))?;
        match version.v {
            Some(v) if v == u64::from(FORMAT_VERSION) => {}
            Some(found) => return Err(ResultError::UnknownVersion { found }),
            None => return Err(ResultError::Malformed("missing field `v`".into())),
        }
        serde_json::from_str(text).map_err(|e| ResultError::Malformed(e.to_string()))
    }

    /// The compact JSON form.
    pub fn encode(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|e| unreachable!("a result always serializes: {e}"))
    }

    /// What the proxy container named `container` must do.
    pub fn outcome_for(&self, container: &str) -> Result<Outcome, ResultError> {
        if let Some(c) = self.containers.get(container) {
            let exit_code = exit_status(c.exit_code);
            let reason = c.reason.as_deref().unwrap_or(if c.exit_code == 0 {
                "Completed"
            } else {
                "Error"
            });
            let message = c.message.clone().unwrap_or_default();
            let summary = summary(
                &format!(
                    "delegate container {container} exited {} ({reason})",
                    c.exit_code
                ),
                &message,
            );
            return Ok(Outcome {
                exit_code,
                message,
                summary,
            });
        }
        if self.phase == Phase::Failed {
            // Without a pod-level reason (eviction, loss), the cause is a container that failed.
            let failed = self.containers.iter().find(|(_, c)| c.exit_code != 0);
            if let (None, Some((name, failed))) = (&self.reason, failed) {
                return Ok(failed_before(container, name, failed));
            }
            let reason = self.reason.as_deref().unwrap_or("Failed");
            let message = self
                .message
                .clone()
                .unwrap_or_else(|| format!("delegate pod failed: {reason}"));
            let summary = summary(
                &format!("delegate pod failed ({reason}) before container {container} ran"),
                &message,
            );
            return Ok(Outcome {
                exit_code: POD_FAILED_EXIT_CODE,
                message,
                summary,
            });
        }
        Err(ResultError::MissingContainer {
            container: container.to_string(),
        })
    }
}

/// The outcome of a container that never ran because container `name` of the delegate failed
/// first (an init container, typically): its code, and a message that names it the way Argo
/// Workflows reports a failed container (`init: Error (exit code 2): …`).
fn failed_before(container: &str, name: &str, failed: &ContainerResult) -> Outcome {
    let reason = failed.reason.as_deref().unwrap_or("Error");
    let mut message = format!("{name}: {reason} (exit code {})", failed.exit_code);
    if let Some(text) = failed.message.as_deref().filter(|m| !m.is_empty()) {
        message.push_str(": ");
        message.push_str(text);
    }
    let summary = summary(
        &format!("delegate container {name} failed before container {container} ran"),
        &message,
    );
    Outcome {
        exit_code: exit_status(failed.exit_code),
        message,
        summary,
    }
}

/// A process exit status for a container exit code: equal within 0..=255; any other value
/// (Kubernetes stores an int32) becomes 255, never 0.
pub fn exit_status(code: i32) -> u8 {
    u8::try_from(code).unwrap_or(255)
}

/// `message` cut to Kubernetes' termination-message limit, visibly, on a character boundary.
pub fn truncate_termination_message(message: &str) -> Cow<'_, str> {
    const MARKER: &str = "\n[truncated by proxy-waiter]";
    if message.len() <= TERMINATION_MESSAGE_LIMIT {
        return message.into();
    }
    let mut end = TERMINATION_MESSAGE_LIMIT - MARKER.len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARKER}", &message[..end]).into()
}

fn summary(head: &str, message: &str) -> String {
    let first_line = message.lines().next().unwrap_or("");
    if first_line.is_empty() {
        head.to_string()
    } else {
        format!("{head}: {first_line}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed_main() -> DelegateResult {
        DelegateResult {
            version: FORMAT_VERSION,
            phase: Phase::Failed,
            reason: None,
            message: None,
            containers: BTreeMap::from([
                (
                    "main".into(),
                    ContainerResult {
                        exit_code: 3,
                        reason: Some("Error".into()),
                        message: Some("disk full\nat /data".into()),
                    },
                ),
                (
                    "wait".into(),
                    ContainerResult {
                        exit_code: 0,
                        reason: None,
                        message: None,
                    },
                ),
            ]),
        }
    }

    #[test]
    fn round_trips_in_compact_form() {
        let result = failed_main();
        let text = result.encode();
        assert!(
            text.starts_with(r#"{"v":1,"phase":"Failed","containers":{"main":{"exitCode":3"#),
            "{text}"
        );
        assert_eq!(DelegateResult::decode(&text).unwrap(), result);
    }

    #[test]
    fn each_container_gets_its_own_outcome() {
        let result = failed_main();
        let main = result.outcome_for("main").unwrap();
        assert_eq!(main.exit_code, 3);
        assert_eq!(main.message, "disk full\nat /data");
        assert_eq!(
            main.summary,
            "delegate container main exited 3 (Error): disk full"
        );
        assert_eq!(result.outcome_for("wait").unwrap().exit_code, 0);
    }

    #[test]
    fn missing_container_is_an_error_unless_the_pod_failed_as_a_whole() {
        let mut result = failed_main();
        result.phase = Phase::Succeeded;
        assert_eq!(
            result.outcome_for("sidecar"),
            Err(ResultError::MissingContainer {
                container: "sidecar".into()
            })
        );
        result.phase = Phase::Failed;
        result.reason = Some("DelegateLost".into());
        let outcome = result.outcome_for("sidecar").unwrap();
        assert_eq!(outcome.exit_code, POD_FAILED_EXIT_CODE);
        assert!(
            outcome.summary.contains("DelegateLost"),
            "{}",
            outcome.summary
        );
    }

    #[test]
    fn a_failed_init_container_is_named_by_the_containers_that_never_ran() {
        let result = DelegateResult::decode(
            r#"{"v":1,"phase":"Failed","containers":{"init":{"exitCode":2,"reason":"Error","message":"no artifact"}}}"#,
        )
        .unwrap();
        let main = result.outcome_for("main").unwrap();
        assert_eq!(main.exit_code, 2);
        assert_eq!(main.message, "init: Error (exit code 2): no artifact");
        assert!(
            main.summary
                .contains("init failed before container main ran"),
            "{}",
            main.summary
        );
        // A container that did run keeps its own outcome.
        assert_eq!(result.outcome_for("init").unwrap().message, "no artifact");
    }

    #[test]
    fn newer_versions_and_garbage_are_refused_with_reasons() {
        assert_eq!(
            DelegateResult::decode(r#"{"v":2,"phase":"Succeeded"}"#),
            Err(ResultError::UnknownVersion { found: 2 })
        );
        assert!(matches!(
            DelegateResult::decode("{"),
            Err(ResultError::Malformed(_))
        ));
        assert!(matches!(
            DelegateResult::decode(r#"{"phase":"Succeeded"}"#),
            Err(ResultError::Malformed(_))
        ));
        assert!(matches!(
            DelegateResult::decode(r#"{"v":1,"phase":"Maybe"}"#),
            Err(ResultError::Malformed(_))
        ));
        assert!(matches!(
            DelegateResult::decode(
                r#"{"v":1,"phase":"Succeeded","containers":{"main":{"exitCode":"0"}}}"#
            ),
            Err(ResultError::Malformed(_))
        ));
    }

    #[test]
    fn exit_codes_outside_a_byte_never_become_success() {
        assert_eq!(exit_status(0), 0);
        assert_eq!(exit_status(137), 137);
        assert_eq!(exit_status(256), 255);
        assert_eq!(exit_status(-1), 255);
    }

    #[test]
    fn long_messages_are_truncated_visibly_on_a_char_boundary() {
        let long = "é".repeat(3000);
        let cut = truncate_termination_message(&long);
        assert!(cut.len() <= TERMINATION_MESSAGE_LIMIT);
        assert!(cut.ends_with("[truncated by proxy-waiter]"));
        assert_eq!(truncate_termination_message("short"), "short");
    }
}
