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
    request: Option<Object<Request>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    uid: String,
    kind: Option<Object<GroupVersionKind>>,
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

/// A struct read from a JSON object only: serde's derive also takes a struct's fields from an
/// array (`["admission.k8s.io/v1", "AdmissionReview", {...}]`), which is no AdmissionReview.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapOnly<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for MapOnly<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(MapOnly(std::marker::PhantomData))
            .map(Object)
    }
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

/// Why a body is not an AdmissionReview we can answer (answered with HTTP 400). Values from
/// the body are shortened (see [`shorten`]): hostile input is not echoed in full into the
/// response or the logs.
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
    let Object(review): Object<Review> = serde_json::from_slice(body)
        .map_err(|e| BadReview::NotJson(shorten(&e.to_string(), 160, 96)))?;
    let (api_version, kind) = (
        review.api_version.unwrap_or_default(),
        review.kind.unwrap_or_default(),
    );
    if api_version != API_VERSION || kind != "AdmissionReview" {
        return Err(BadReview::WrongType {
            api_version: shorten(&api_version, 64, 0),
            kind: shorten(&kind, 64, 0),
        });
    }
    let Object(request) = review.request.ok_or(BadReview::NoRequest)?;
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

/// `text` itself when short; otherwise its first `head` and last `tail` bytes (on character
/// boundaries) around an ellipsis, so that e.g. serde's "at line 1 column 9" survives.
fn shorten(text: &str, head: usize, tail: usize) -> String {
    if text.len() <= head + tail + 3 {
        return text.to_string();
    }
    let mut end = head;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut start = text.len() - tail;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("{}…{}", &text[..end], &text[start..])
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
        .is_some_and(|Object(k)| k.group.is_empty() && k.version == "v1" && k.kind == "Pod");
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

    fn answer_of(body: &[u8]) -> Result<(Vec<u8>, Outcome, Details), BadReview> {
        let key = ManifestKey::from_bytes(&[1; 32]).unwrap();
        let exclusions = Exclusions { namespaces: vec![] };
        answer(body, &ProxySettings::default(), &key, &exclusions)
    }

    // Found by fuzzing: serde's derive read a struct from an array, so an array was answered.
    #[test]
    fn arrays_in_place_of_the_review_request_or_kind_are_not_reviews() {
        let request = r#"{"uid":"u","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE","object":{}}"#;
        let as_object = format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{request}}}"#
        );
        assert!(answer_of(as_object.as_bytes()).is_ok());
        for body in [
            format!(r#"["admission.k8s.io/v1","AdmissionReview",{request}]"#),
            as_object.replace(request, r#"["u",{"group":"","version":"v1","kind":"Pod"}]"#),
            as_object.replace(
                r#"{"group":"","version":"v1","kind":"Pod"}"#,
                r#"["","v1","Pod"]"#,
            ),
        ] {
            let Err(BadReview::NotJson(message)) = answer_of(body.as_bytes()) else {
                panic!("{body} was answered")
            };
            assert!(message.contains("expected a JSON object"), "{message}");
        }
    }

    // Found by fuzzing: a 400 echoed the whole offending value (up to --max-body-bytes).
    #[test]
    fn errors_do_not_echo_hostile_input_in_full() {
        let huge = "é".repeat(100_000);
        for body in [
            format!(r#"{{"apiVersion":"{huge}","kind":"AdmissionReview"}}"#),
            format!(r#"{{"apiVersion":"admission.k8s.io/v1","kind":"{huge}"}}"#),
            format!(
                r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u","kind":"{huge}"}}}}"#
            ),
        ] {
            let message = answer_of(body.as_bytes()).err().unwrap().to_string();
            assert!(message.len() < 400, "{} bytes", message.len());
            assert!(message.contains("éé…"), "{message}");
        }
        let body = format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u","kind":"{}"}}}}"#,
            "x".repeat(5000)
        );
        let message = answer_of(body.as_bytes()).err().unwrap().to_string();
        assert!(
            message.ends_with("expected a JSON object at line 1 column 5091"),
            "the position is kept: {message}"
        );
    }
}
