//! Keys of Argo Workflows (`workflow/common/common.go`) that the pieces read or write on step
//! pods and task results: the contract with Argo, as `lib.rs` is the contract between the pieces.

/// Label of step pods and task results naming their Workflow.
pub const WORKFLOW_LABEL: &str = "workflows.argoproj.io/workflow";
/// Label of a step pod: "false" while Argo waits for it, "true" once Argo is done with it.
pub const POD_COMPLETED_LABEL: &str = "workflows.argoproj.io/completed";
/// Label of a task result: "false" while its executor is still reporting, then "true".
pub const OUTPUTS_COMPLETED_LABEL: &str = "workflows.argoproj.io/report-outputs-completed";
/// Annotation of a step pod: the ID of its node (and the name of its task result).
pub const NODE_ID: &str = "workflows.argoproj.io/node-id";
/// Annotation of a step pod: the name of its node, e.g. `wf[0].a`.
pub const NODE_NAME: &str = "workflows.argoproj.io/node-name";
/// Label of a Workflow, its step pods and task results when its controller has an instance ID
/// (`instanceID` in the controller's ConfigMap): a controller only sees objects with its own.
pub const INSTANCE_ID_LABEL: &str = "workflows.argoproj.io/controller-instanceid";
