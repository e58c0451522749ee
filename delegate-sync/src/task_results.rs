//! Argo Workflows' task results across clusters.
//!
//! From Argo 3.6, a step's outputs reach the workflow only through a `WorkflowTaskResult` in the
//! workflow's own cluster, named after the step's node ID, and a node does not succeed while its
//! result is labelled incomplete. The delegate's `wait` container writes that result in the
//! delegate's cluster instead, owned by a Workflow that does not exist there, so:
//!
//! - **claim**: as soon as the delegate exists, the result is created in its cluster (or taken
//!   over) owned by the delegate pod, so the garbage collector keeps it exactly as long as the
//!   delegate. Argo's executor then finds it there and only patches its outputs and labels;
//! - **mirror**: the result is copied to the proxy's namespace, owned by the real Workflow, and
//!   always before the proxy's own result is recorded, so Argo never sees the step end without
//!   its outputs. Once the delegate ended no one writes the result any more: the copy is marked
//!   complete.
//!
//! The node ID and workflow name come from the verified saved manifest, never from the proxy's
//! live annotations, which the pod's owner may edit after admission.

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, ResourceExt as _,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
};
use serde_json::{Map, Value, json};

use crate::delegate::{DELEGATE_LABEL, PROXY_CLUSTER};

/// Argo's labels and annotation (`workflow/common/common.go`).
pub use contract::argo::{
    INSTANCE_ID_LABEL, NODE_ID, OUTPUTS_COMPLETED_LABEL as COMPLETED_LABEL, WORKFLOW_LABEL,
};

const FIELD_MANAGER: &str = "delegate-sync";

/// The Argo step a proxy stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub node_id: String,
    pub workflow: String,
    /// The instance ID of the workflow's controller, if it has one: that controller sees only
    /// task results labelled with it.
    pub instance_id: Option<String>,
}

/// The step, from the saved manifest's annotations and labels; None for pods Argo did not make.
pub fn step_of(saved: &Value) -> Option<Step> {
    let text = |map: &str, key: &str| saved.get("metadata")?.get(map)?.get(key)?.as_str();
    let node_id = text("annotations", NODE_ID)?;
    let workflow = text("labels", WORKFLOW_LABEL)?;
    Some(Step {
        node_id: node_id.to_string(),
        workflow: workflow.to_string(),
        instance_id: text("labels", INSTANCE_ID_LABEL).map(str::to_string),
    })
}

fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("argoproj.io", "v1alpha1", "WorkflowTaskResult"),
        "workflowtaskresults",
    )
}

fn api(client: &Client, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, &resource())
}

/// Makes the delegate pod the owner of the step's result in the delegate's cluster (creating
/// the result, as Argo's executor would, if it is not there yet).
pub async fn claim(
    target: &Client,
    step: &Step,
    delegate: &Pod,
    source_cluster: &str,
) -> Result<(), kube::Error> {
    let namespace = delegate.namespace().unwrap_or_default();
    let claim = claimed_result(step, delegate, source_cluster);
    api(target, &namespace)
        .patch(
            &step.node_id,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(claim),
        )
        .await
        .map(drop)
}

fn claimed_result(step: &Step, delegate: &Pod, source_cluster: &str) -> Value {
    let mut claim = json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "WorkflowTaskResult",
        "metadata": {
            "name": step.node_id,
            "labels": {
                WORKFLOW_LABEL: step.workflow,
                DELEGATE_LABEL: "true",
                PROXY_CLUSTER: source_cluster,
            },
            "ownerReferences": [{
                "apiVersion": "v1",
                "kind": "Pod",
                "name": delegate.name_any(),
                "uid": delegate.uid().unwrap_or_default(),
            }],
        },
    });
    // As Argo's executor labels the result it creates (from its ARGO_INSTANCE_ID).
    if let Some(id) = &step.instance_id {
        claim["metadata"]["labels"][INSTANCE_ID_LABEL] = json!(id);
    }
    claim
}

/// True when the result in the delegate's cluster is owned by the delegate.
pub fn is_claimed(result: &DynamicObject, delegate: &Pod) -> bool {
    let uid = delegate.uid();
    result
        .owner_references()
        .iter()
        .any(|o| o.kind == "Pod" && Some(&o.uid) == uid.as_ref())
}

/// The step's result in the delegate's cluster; None when there is none, or no
/// WorkflowTaskResult kind at all there (Argo before 3.3 reads outputs from annotations).
pub async fn fetch(
    target: &Client,
    namespace: &str,
    step: &Step,
) -> Result<Option<DynamicObject>, kube::Error> {
    match api(target, namespace).get_opt(&step.node_id).await {
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        other => other,
    }
}

/// Copies the delegate's result to the proxy's namespace, owned by the proxy's Workflow. A copy
/// marked complete is final, and every write is conditional on the version read (a create on
/// none): a pass working from caches that lag behind (a delegate still running there), or
/// another replica, must never make Argo wait again or bring back older outputs. A conflict is
/// an error: the caller's next pass writes again.
pub async fn mirror(
    source: &Client,
    proxy: &Pod,
    step: &Step,
    found: &DynamicObject,
    delegate_ended: bool,
) -> Result<(), kube::Error> {
    let namespace = proxy.namespace().unwrap_or_default();
    let mirrors = api(source, &namespace);
    let mut wanted = mirrored_result(proxy, step, found, delegate_ended);
    match mirrors.get_opt(&step.node_id).await? {
        Some(current) if is_complete(&current) || says_already(&current, &wanted) => Ok(()),
        Some(current) => {
            wanted["metadata"]["resourceVersion"] = json!(current.resource_version());
            mirrors
                .patch(
                    &step.node_id,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(wanted),
                )
                .await
                .map(drop)
        }
        None => {
            let first: DynamicObject =
                serde_json::from_value(wanted).map_err(kube::Error::SerdeError)?;
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            mirrors.create(&params, &first).await.map(drop)
        }
    }
}

/// Marks the proxy's copy of the step's result complete, as it is, when the delegate went
/// without a last mirror (lost, or stopped by another replica): Argo keeps a workflow running
/// for up to ten minutes while a task result is incomplete. Conditional on the version read,
/// like [`mirror`]; no copy, nothing to do.
pub async fn complete_mirror(source: &Client, proxy: &Pod, step: &Step) -> Result<(), kube::Error> {
    let namespace = proxy.namespace().unwrap_or_default();
    let mirrors = api(source, &namespace);
    match mirrors.get_opt(&step.node_id).await? {
        Some(current) if !is_complete(&current) => {
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            let patch = json!({ "metadata": {
                "resourceVersion": current.resource_version(),
                "labels": { COMPLETED_LABEL: "true" },
            }});
            mirrors
                .patch(&step.node_id, &params, &Patch::Merge(patch))
                .await
                .map(drop)
        }
        _ => Ok(()),
    }
}

/// True when the copy holds what `wanted` would write (labels, owners, node result): a running
/// step's result is mirrored on every pass, and most passes have nothing new.
fn says_already(current: &DynamicObject, wanted: &Value) -> bool {
    let labels = current.labels();
    let same_labels = wanted["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str());
    let owners: Vec<Value> = current
        .owner_references()
        .iter()
        .map(|o| json!({ "apiVersion": o.api_version, "kind": o.kind, "name": o.name, "uid": o.uid }))
        .collect();
    let same_owners = wanted["metadata"]["ownerReferences"] == json!(owners);
    let same_result = wanted
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
        .all(|(k, v)| current.data.get(k) == Some(v));
    same_labels && same_owners && same_result
}

/// True while the result holds nothing but delegate-sync's claim: no executor wrote to it (the
/// delegate has not started its `wait` container). Such a result is not mirrored: at home a
/// step whose pod never ran has no task result, and Argo waits for none.
pub fn holds_only_the_claim(result: &DynamicObject) -> bool {
    !is_complete(result)
        && result.data.as_object().is_none_or(|body| {
            body.keys()
                .all(|k| matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
        })
}

fn is_complete(result: &DynamicObject) -> bool {
    result.labels().get(COMPLETED_LABEL).map(String::as_str) == Some("true")
}

fn mirrored_result(proxy: &Pod, step: &Step, found: &DynamicObject, delegate_ended: bool) -> Value {
    let mut labels: Map<String, Value> = found
        .labels()
        .iter()
        .filter(|(k, _)| k.as_str() != DELEGATE_LABEL && k.as_str() != PROXY_CLUSTER)
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    labels.insert(WORKFLOW_LABEL.into(), json!(step.workflow));
    // Which controller reads the copy is the workflow's business, never the delegate's.
    match &step.instance_id {
        Some(id) => labels.insert(INSTANCE_ID_LABEL.into(), json!(id)),
        None => labels.remove(INSTANCE_ID_LABEL),
    };
    let complete = delegate_ended || is_complete(found);
    labels.insert(COMPLETED_LABEL.into(), json!(complete.to_string()));
    let owners: Vec<Value> = proxy
        .owner_references()
        .iter()
        .filter(|o| {
            o.kind == "Workflow" && o.api_version.starts_with("argoproj.io/") && o.name == step.workflow
        })
        .map(|o| json!({ "apiVersion": o.api_version, "kind": o.kind, "name": o.name, "uid": o.uid }))
        .collect();
    let mut result = Map::new();
    result.insert("apiVersion".into(), json!("argoproj.io/v1alpha1"));
    result.insert("kind".into(), json!("WorkflowTaskResult"));
    result.insert(
        "metadata".into(),
        json!({ "name": step.node_id, "labels": labels, "ownerReferences": owners }),
    );
    // The node result (phase, message, outputs, progress): everything but the object's identity.
    if let Some(body) = found.data.as_object() {
        for (key, value) in body {
            if !matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                result.insert(key.clone(), value.clone());
            }
        }
    }
    Value::Object(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(value: Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    fn step() -> Step {
        Step {
            node_id: "wf-123".into(),
            workflow: "wf".into(),
            instance_id: None,
        }
    }

    /// A step of a workflow whose controller has the instance ID `i`.
    fn step_of_instance() -> Step {
        Step {
            instance_id: Some("i".into()),
            ..step()
        }
    }

    #[test]
    fn steps_come_from_the_saved_manifest_of_argo_pods_only() {
        let saved = json!({ "metadata": {
            "labels": { WORKFLOW_LABEL: "wf" },
            "annotations": { NODE_ID: "wf-123", "other": "x" },
        }});
        assert_eq!(step_of(&saved), Some(step()));
        let mut labelled = saved.clone();
        labelled["metadata"]["labels"][INSTANCE_ID_LABEL] = json!("i");
        assert_eq!(step_of(&labelled), Some(step_of_instance()));
        assert_eq!(
            step_of(&json!({ "metadata": { "labels": { WORKFLOW_LABEL: "wf" } } })),
            None
        );
        assert_eq!(
            step_of(&json!({ "metadata": { "annotations": { NODE_ID: "x" } } })),
            None
        );
    }

    #[test]
    fn a_claim_makes_the_delegate_the_owner_and_keeps_argos_labels() {
        let delegate = pod(
            json!({ "metadata": { "name": "c1-ns-wf-123", "namespace": "ns", "uid": "d-uid" } }),
        );
        let claim = claimed_result(&step(), &delegate, "cluster1");
        assert_eq!(claim["metadata"]["name"], "wf-123");
        assert_eq!(claim["metadata"]["labels"][WORKFLOW_LABEL], "wf");
        assert_eq!(claim["metadata"]["labels"][DELEGATE_LABEL], "true");
        assert_eq!(
            claim["metadata"]["ownerReferences"],
            json!([{ "apiVersion": "v1", "kind": "Pod", "name": "c1-ns-wf-123", "uid": "d-uid" }])
        );
        assert!(claim["metadata"]["labels"].get(INSTANCE_ID_LABEL).is_none());
        // No node result: the executor's patches of outputs must not be overwritten.
        assert!(claim.get("outputs").is_none() && claim.get("phase").is_none());
        // The executor only patches a claimed result's outputs: the instance ID its own
        // create would have set comes with the claim.
        let claim = claimed_result(&step_of_instance(), &delegate, "cluster1");
        assert_eq!(claim["metadata"]["labels"][INSTANCE_ID_LABEL], "i");
    }

    #[test]
    fn a_result_no_executor_wrote_to_is_only_a_claim() {
        let claim: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTaskResult",
            "metadata": { "name": "wf-1", "labels": { DELEGATE_LABEL: "true" } },
        }))
        .unwrap();
        assert!(holds_only_the_claim(&claim));
        let mut written = claim.clone();
        written.data = json!({ "outputs": { "parameters": [] } });
        assert!(!holds_only_the_claim(&written));
        let mut complete = claim;
        complete
            .metadata
            .labels
            .get_or_insert_default()
            .insert(COMPLETED_LABEL.into(), "true".into());
        assert!(!holds_only_the_claim(&complete));
    }

    #[test]
    fn the_mirror_is_owned_by_the_real_workflow_and_complete_once_the_delegate_ended() {
        let proxy = pod(
            json!({ "metadata": { "name": "wf-123-pod", "namespace": "ns", "ownerReferences": [
            { "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "name": "wf", "uid": "wf-uid", "controller": true },
            { "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "name": "other", "uid": "o-uid" },
        ] } }),
        );
        let found: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTaskResult",
            "metadata": { "name": "wf-123", "namespace": "ns", "resourceVersion": "7", "uid": "t-uid",
                "labels": { WORKFLOW_LABEL: "forged", COMPLETED_LABEL: "false", DELEGATE_LABEL: "true",
                            PROXY_CLUSTER: "cluster1", INSTANCE_ID_LABEL: "forged" } },
            "phase": "Succeeded",
            "outputs": { "parameters": [{ "name": "x", "value": "42" }] },
        }))
        .unwrap();
        let running = mirrored_result(&proxy, &step_of_instance(), &found, false);
        assert_eq!(running["metadata"]["labels"][COMPLETED_LABEL], "false");
        assert_eq!(running["metadata"]["labels"][WORKFLOW_LABEL], "wf");
        assert_eq!(running["metadata"]["labels"][INSTANCE_ID_LABEL], "i");
        let without_instance = mirrored_result(&proxy, &step(), &found, false);
        assert!(
            without_instance["metadata"]["labels"]
                .get(INSTANCE_ID_LABEL)
                .is_none(),
            "a label the delegate's side set never picks the controller"
        );
        assert!(running["metadata"]["labels"].get(DELEGATE_LABEL).is_none());
        assert!(running["metadata"].get("resourceVersion").is_none());
        assert_eq!(
            running["metadata"]["ownerReferences"],
            json!([{ "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "name": "wf", "uid": "wf-uid" }])
        );
        assert_eq!(running["outputs"]["parameters"][0]["value"], "42");
        assert_eq!(running["phase"], "Succeeded");
        let ended = mirrored_result(&proxy, &step_of_instance(), &found, true);
        assert_eq!(ended["metadata"]["labels"][COMPLETED_LABEL], "true");

        // A copy that holds all this needs no write; one that lacks the end does.
        let copy: DynamicObject = serde_json::from_value(running.clone()).unwrap();
        assert!(says_already(&copy, &running));
        assert!(!says_already(&copy, &ended));
    }
}
