//! AdmissionReview (admission.k8s.io/v1) in and out: decoding, the decision for a request, and
//! the response. Denials are ordinary reviews (HTTP 200); only a body that is not a review at
//! all gets a 4xx.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use contract::manifest::ManifestKey;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::mutate::{Mutation, ProxySettings, mutate};

pub const API_VERSION: &str = "admission.k8s.io/v1";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    api_version: Option<String>,
    kind: Option<String>,
    request: Option<Request>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    uid: String,
    kind: Option<GroupVersionKind>,
    sub_resource: Option<String>,
    namespace: Option<String>,
    operation: Option<String>,
    object: Option<Value>,
}

#[derive(Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    kind: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Response<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: ResponseBody<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseBody<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
}

#[derive(Serialize)]
struct Status {
    code: u16,
    message: String,
}

/// Why a body is not an AdmissionReview we can answer (answered with HTTP 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadReview {
    #[error("the body is not an AdmissionReview: {0}")]
    NotJson(String),
    #[error(
        "expected an AdmissionReview of apiVersion {API_VERSION}, got {kind:?} of {api_version:?}"
    )]
    WrongType { api_version: String, kind: String },
    #[error("the AdmissionReview has no request")]
    NoRequest,
}

/// How a review was answered, for logs and metrics (bounded values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Patched,
    Unchanged(&'static str),
    Denied,
    Invalid,
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Patched => "patched",
            Self::Unchanged(_) => "unchanged",
            Self::Denied => "denied",
            Self::Invalid => "invalid",
        }
    }
}

/// Context of one answered review, for the log line.
#[derive(Debug, Default)]
pub struct Details {
    pub uid: String,
    pub namespace: String,
    pub name: String,
}

/// Namespaces the webhook never changes, whatever its configuration says.
pub struct Exclusions {
    pub namespaces: Vec<String>,
}

/// Answers a review body: Ok(JSON response) or Err for a body that is not a review.
pub fn answer(
    body: &[u8],
    settings: &ProxySettings,
    key: &ManifestKey,
    exclusions: &Exclusions,
) -> Result<(Vec<u8>, Outcome, Details), BadReview> {
    let review: Review =
        serde_json::from_slice(body).map_err(|e| BadReview::NotJson(e.to_string()))?;
    let (api_version, kind) = (
        review.api_version.unwrap_or_default(),
        review.kind.unwrap_or_default(),
    );
    if api_version != API_VERSION || kind != "AdmissionReview" {
        return Err(BadReview::WrongType { api_version, kind });
    }
    let request = review.request.ok_or(BadReview::NoRequest)?;
    let namespace = request.namespace.clone().unwrap_or_default();
    let details = Details {
        uid: request.uid.clone(),
        name: object_name(request.object.as_ref()),
        namespace: namespace.clone(),
    };
    let (body, outcome) = match decide(&request, &namespace, settings, key, exclusions) {
        Mutation::Unchanged(reason) => (allowed(&request.uid, None), Outcome::Unchanged(reason)),
        Mutation::Patch(patch) => {
            let patch =
                serde_json::to_vec(&patch).map_err(|e| BadReview::NotJson(e.to_string()))?;
            (patched(&request.uid, &patch), Outcome::Patched)
        }
        Mutation::Deny { code, message } => {
            let outcome = if code == 400 {
                Outcome::Invalid
            } else {
                Outcome::Denied
            };
            (denied(&request.uid, code, message), outcome)
        }
    };
    Ok((body, outcome, details))
}

fn decide(
    request: &Request,
    namespace: &str,
    settings: &ProxySettings,
    key: &ManifestKey,
    exclusions: &Exclusions,
) -> Mutation {
    let is_pod = request
        .kind
        .as_ref()
        .is_some_and(|k| k.group.is_empty() && k.version == "v1" && k.kind == "Pod");
    if !is_pod
        || request
            .sub_resource
            .as_deref()
            .is_some_and(|s| !s.is_empty())
    {
        return Mutation::Unchanged("not a pod");
    }
    if request.operation.as_deref() != Some("CREATE") {
        return Mutation::Unchanged("not a create");
    }
    if exclusions.namespaces.iter().any(|n| n == namespace) {
        return Mutation::Unchanged("excluded namespace");
    }
    match &request.object {
        Some(pod @ Value::Object(_)) => mutate(pod, namespace, settings, key),
        _ => Mutation::Deny {
            code: 400,
            message: "the admission request has no pod object".into(),
        },
    }
}

fn object_name(object: Option<&Value>) -> String {
    let metadata = object.and_then(|o| o.get("metadata"));
    let field = |f| metadata.and_then(|m| m.get(f)).and_then(Value::as_str);
    field("name")
        .map(str::to_string)
        .or_else(|| field("generateName").map(|g| format!("{g}*")))
        .unwrap_or_default()
}

fn allowed(uid: &str, patch: Option<String>) -> Vec<u8> {
    encode(ResponseBody {
        uid,
        allowed: true,
        status: None,
        patch_type: patch.as_ref().map(|_| "JSONPatch"),
        patch,
    })
}

/// An allowed response with a patch, written directly: base64 needs no JSON escaping, and the
/// patch is the largest part of the answer.
fn patched(uid: &str, patch: &[u8]) -> Vec<u8> {
    let uid = serde_json::to_string(uid).unwrap_or_default();
    let mut out = Vec::with_capacity(160 + uid.len() + patch.len() * 4 / 3);
    out.extend_from_slice(
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"#,
    );
    out.extend_from_slice(uid.as_bytes());
    out.extend_from_slice(br#","allowed":true,"patchType":"JSONPatch","patch":""#);
    let start = out.len();
    out.resize(
        start + base64::encoded_len(patch.len(), true).unwrap_or(0),
        0,
    );
    let written = STANDARD.encode_slice(patch, &mut out[start..]).unwrap_or(0);
    out.truncate(start + written);
    out.extend_from_slice(br#""}}"#);
    out
}

fn denied(uid: &str, code: u16, message: String) -> Vec<u8> {
    encode(ResponseBody {
        uid,
        allowed: false,
        status: Some(Status { code, message }),
        patch_type: None,
        patch: None,
    })
}

fn encode(response: ResponseBody<'_>) -> Vec<u8> {
    let review = Response {
        api_version: API_VERSION,
        kind: "AdmissionReview",
        response,
    };
    // Serializing these plain structs cannot fail.
    serde_json::to_vec(&review).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_written_patched_response_is_the_serialized_one() {
        let patch = br#"[{"op":"add","path":"/x","value":"\u00e9\"quoted\""}]"#;
        let by_hand: Value = serde_json::from_slice(&patched("u\"id", patch)).unwrap();
        let by_serde: Value =
            serde_json::from_slice(&allowed("u\"id", Some(STANDARD.encode(patch)))).unwrap();
        assert_eq!(by_hand, by_serde);
    }
}
