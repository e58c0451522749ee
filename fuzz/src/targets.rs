//! The properties checked on every input, one function per target. Each panics (with what
//! broke) when a property does not hold, and otherwise returns a short class of what happened,
//! which the deterministic runner uses to keep inputs that reached something new.

use std::{collections::BTreeMap, sync::OnceLock};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use contract::{
    CLEANUP_FINALIZER, ELECT, PROXY_LABEL, SOURCEPOD_MANIFEST,
    downward::{annotation, parse_annotations, unquote_go},
    manifest::{MIN_KEY_BYTES, ManifestError, ManifestKey, open_with_any},
    result::{
        ContainerResult, DelegateResult, FORMAT_VERSION, POD_FAILED_EXIT_CODE, Phase, ResultError,
        TERMINATION_MESSAGE_LIMIT, exit_status, truncate_termination_message,
    },
};
use serde_json::Value;
use webhook::{
    mutate::{ANNOTATIONS_LIMIT_BYTES, Mutation, ProxySettings, mutate},
    review::{Exclusions, Outcome, answer},
};

use crate::rng::fnv;

/// The namespace of the seeds (and of the golden fixtures' seals).
pub const NAMESPACE: &str = "team-a";
/// Namespaces the fuzzed webhook excludes: kube-system and its own.
pub const EXCLUDED: [&str; 2] = ["kube-system", "webhook-system"];
pub const WAITER_IMAGE: &str = "proxy-waiter:golden";
/// A 4xx body or a denial message never carries more than this: hostile input is not echoed.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// The golden fixtures' key, so that their proxies are genuine ones.
pub fn key() -> &'static ManifestKey {
    static KEY: OnceLock<ManifestKey> = OnceLock::new();
    KEY.get_or_init(|| {
        ManifestKey::from_bytes(b"golden-fixtures-key-0123456789abcdef").expect("a long key")
    })
}

fn other_key() -> &'static ManifestKey {
    static KEY: OnceLock<ManifestKey> = OnceLock::new();
    KEY.get_or_init(|| ManifestKey::from_bytes(&[7; 32]).expect("a long key"))
}

pub fn settings() -> &'static ProxySettings {
    static SETTINGS: OnceLock<ProxySettings> = OnceLock::new();
    SETTINGS.get_or_init(|| ProxySettings {
        waiter_image: WAITER_IMAGE.into(),
        ..ProxySettings::default()
    })
}

fn exclusions() -> &'static Exclusions {
    static EXCLUSIONS: OnceLock<Exclusions> = OnceLock::new();
    EXCLUSIONS.get_or_init(|| Exclusions {
        namespaces: EXCLUDED.iter().map(|n| n.to_string()).collect(),
    })
}

/// Spec fields a proxy may have: those the webhook keeps from the pod, and its own.
const PROXY_SPEC_FIELDS: &[&str] = &[
    "restartPolicy",
    "terminationGracePeriodSeconds",
    "activeDeadlineSeconds",
    "serviceAccountName",
    "serviceAccount",
    "tolerations",
    "priorityClassName",
    "priority",
    "preemptionPolicy",
    "schedulerName",
    "imagePullSecrets",
    "hostname",
    "subdomain",
    "readinessGates",
    "containers",
    "initContainers",
    "automountServiceAccountToken",
    "securityContext",
    "volumes",
];

/// At most `max` bytes of `text`, cut on a character boundary.
fn head(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A short class of a message: its head up to the first quoted value, without digits, plus
/// the field name of serde's `missing field` and `duplicate field` (values come from the
/// input and would make every message a class of its own).
fn class_of(message: &str) -> String {
    let cut = message.find(['"', '`']).unwrap_or(message.len());
    let mut class: String = message[..cut]
        .chars()
        .filter(|c| !c.is_ascii_digit())
        .take(48)
        .collect();
    if class.ends_with("field ") {
        let name = message[cut..].trim_start_matches('`').split('`').next();
        class.extend(name.unwrap_or_default().chars().take(16));
    }
    class
}

/// The webhook's whole answer to a request body: parse, decide, patch.
///
/// - The same body always gets the same answer.
/// - A body that is not a review gets an error (HTTP 400) with a bounded message.
/// - Otherwise the answer is a well-formed AdmissionReview response with the request's uid.
/// - Only an elected pod created in a namespace that is not excluded is patched; everything
///   that is not such a creation passes unchanged; only genuine proxies pass unchanged when
///   elected; forged ones are denied (403).
/// - A patch decodes, applies to the pod, and yields a proxy: same metadata plus the label,
///   finalizer, a saved manifest that opens with the key to the original pod, and Argo's kill
///   command (`proxy-waiter kill`) for each container in place of the owner's; a spec with
///   only the kept fields and waiter containers of the same names; annotations under 256 KiB;
///   and the webhook leaves that proxy unchanged when it comes back.
pub fn webhook(body: &[u8]) -> String {
    let first = answer(body, settings(), key(), exclusions());
    let second = answer(body, settings(), key(), exclusions());
    let (bytes, outcome, details) = match (first, second) {
        (Err(e), Err(again)) => {
            assert_eq!(e, again, "the same body got two different errors");
            let message = e.to_string();
            assert!(!message.is_empty());
            assert!(
                message.len() <= MAX_MESSAGE_BYTES,
                "a 400 message of {} bytes echoes the request: {}...",
                message.len(),
                head(&message, 200)
            );
            return format!("bad: {}", class_of(&message));
        }
        (Ok((bytes, outcome, details)), Ok((again, outcome_again, _))) => {
            assert_eq!(bytes, again, "the same body got two different answers");
            assert_eq!(outcome, outcome_again);
            (bytes, outcome, details)
        }
        (first, second) => panic!(
            "the same body was answered once and refused once: {:?} / {:?}",
            first.err(),
            second.err()
        ),
    };
    // What the webhook reads of a review, each field as plain JSON: the model the properties
    // below are stated on. (Not a `Value` of the whole body: serde_json tolerates a lone
    // surrogate escape in a field it skips, which a `Value` refuses.)
    #[derive(serde::Deserialize)]
    struct Model {
        request: ModelRequest,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct ModelRequest {
        uid: String,
        kind: Option<ModelKind>,
        #[serde(default)]
        sub_resource: Value,
        #[serde(default)]
        namespace: Value,
        #[serde(default)]
        operation: Value,
        #[serde(default)]
        object: Value,
    }
    // The webhook skips unknown members (at any depth: serde_json skips without recursion).
    #[derive(serde::Deserialize)]
    struct ModelKind {
        group: Option<String>,
        version: Option<String>,
        kind: Option<String>,
    }
    assert_eq!(
        body.trim_ascii_start().first(),
        Some(&b'{'),
        "only a JSON object is a review"
    );
    let Model { request } = serde_json::from_slice(body).expect("an answered body is a review");
    if let Ok(whole) = serde_json::from_slice::<Value>(body) {
        let kind = &whole["request"]["kind"];
        assert!(
            kind.is_object() || kind.is_null(),
            "only an object is a kind"
        );
    }
    let uid = request.uid.as_str();
    let response: Value = serde_json::from_slice(&bytes).expect("the response is JSON");
    assert_eq!(response["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(response["kind"], "AdmissionReview");
    let r = &response["response"];
    assert_eq!(r["uid"], uid, "the response carries the request's uid");
    assert_eq!(details.uid, uid);
    let allowed = r["allowed"].as_bool().expect("allowed is a boolean");

    let namespace = request.namespace.as_str().unwrap_or("");
    let gated = request.kind.as_ref().is_some_and(|k| {
        k.group.as_deref().unwrap_or("").is_empty()
            && k.version.as_deref() == Some("v1")
            && k.kind.as_deref() == Some("Pod")
    }) && request.sub_resource.as_str().unwrap_or("").is_empty()
        && request.operation == "CREATE"
        && !EXCLUDED.contains(&namespace);
    let pod = &request.object;
    let annotations = pod["metadata"]["annotations"].as_object();
    let elected = annotations.is_some_and(|a| a.contains_key(ELECT));
    let claims_proxy = annotations.is_some_and(|a| a.contains_key(SOURCEPOD_MANIFEST))
        || pod["metadata"]["labels"]
            .as_object()
            .is_some_and(|l| l.contains_key(PROXY_LABEL));
    let opens = annotations
        .and_then(|a| a.get(SOURCEPOD_MANIFEST))
        .and_then(Value::as_str)
        .is_some_and(|sealed| key().open(namespace, sealed).is_ok());

    match outcome {
        Outcome::Unchanged(reason) => {
            assert!(allowed);
            for absent in ["patch", "patchType", "status"] {
                assert!(r.get(absent).is_none(), "unchanged with {absent}");
            }
            if gated && pod.is_object() && elected {
                assert!(
                    claims_proxy && opens,
                    "an elected pod passed unchanged ({reason}) without being a genuine proxy"
                );
            }
            format!("unchanged: {reason}")
        }
        Outcome::Denied | Outcome::Invalid => {
            assert!(!allowed);
            assert!(r.get("patch").is_none());
            assert!(gated, "a request the webhook does not handle was denied");
            let code = r["status"]["code"].as_u64().expect("a denial has a code");
            let message = r["status"]["message"]
                .as_str()
                .expect("a denial has a message");
            assert!(!message.is_empty() && message.len() <= MAX_MESSAGE_BYTES);
            assert_eq!(outcome == Outcome::Invalid, code == 400);
            match code {
                403 => assert!(
                    claims_proxy && !opens,
                    "403 for a pod that is no forged proxy"
                ),
                400 => assert!(!claims_proxy, "400 for a pod that claims to be a proxy"),
                other => panic!("denied with code {other}"),
            }
            format!("denied {code}: {}", class_of(message))
        }
        Outcome::Patched => {
            assert!(allowed);
            assert!(
                gated && elected && !claims_proxy,
                "patched a request that is not the creation of an elected pod"
            );
            assert_eq!(r["patchType"], "JSONPatch");
            let patch = STANDARD
                .decode(r["patch"].as_str().expect("the patch is a string"))
                .expect("the patch is base64");
            let patch: json_patch::Patch =
                serde_json::from_slice(&patch).expect("the patch is a JSON patch");
            let mut proxy = pod.clone();
            json_patch::patch(&mut proxy, &patch).expect("the patch applies to the pod");
            check_proxy(pod, &proxy, namespace);
            "patched".into()
        }
    }
}

fn without<'a>(value: &'a Value, keys: &[&str]) -> BTreeMap<&'a str, &'a Value> {
    value
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !keys.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v))
        .collect()
}

fn check_proxy(pod: &Value, proxy: &Value, namespace: &str) {
    let (metadata, proxy_metadata) = (&pod["metadata"], &proxy["metadata"]);
    assert_eq!(
        without(pod, &["spec", "metadata"]),
        without(proxy, &["spec", "metadata"])
    );
    let ours = ["annotations", "labels", "finalizers"];
    assert_eq!(without(metadata, &ours), without(proxy_metadata, &ours));

    let mut annotations = proxy_metadata["annotations"]
        .as_object()
        .expect("the proxy has annotations")
        .clone();
    let sealed = annotations
        .remove(SOURCEPOD_MANIFEST)
        .expect("the proxy has a saved manifest");
    // Argo's kill command for each container with a valid key, in place of the owner's.
    let mut expected = metadata["annotations"].as_object().cloned();
    for name in pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
    {
        if let (Some(expected), Some(key)) = (&mut expected, contract::argo_kill_cmd_key(name)) {
            expected.insert(key, r#"["/proxy-waiter","kill","%d"]"#.into());
        }
    }
    assert_eq!(Some(&annotations), expected.as_ref());
    let size: usize = proxy_metadata["annotations"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
        .sum();
    assert!(
        size <= ANNOTATIONS_LIMIT_BYTES,
        "annotations of {size} bytes"
    );
    let mut labels = metadata["labels"].as_object().cloned().unwrap_or_default();
    labels.insert(PROXY_LABEL.into(), "true".into());
    assert_eq!(proxy_metadata["labels"], Value::Object(labels));
    let mut finalizers = metadata["finalizers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    finalizers.push(CLEANUP_FINALIZER.into());
    assert_eq!(proxy_metadata["finalizers"], Value::Array(finalizers));

    let sealed = sealed.as_str().expect("the saved manifest is a string");
    let saved = key()
        .open(namespace, sealed)
        .expect("the saved manifest opens with the key");
    let saved: Value = serde_json::from_str(saved).expect("the saved manifest is JSON");
    assert_eq!(saved["spec"], pod["spec"], "the saved spec is the pod's");
    assert_eq!(saved["metadata"]["namespace"], namespace);
    for field in ["name", "generateName", "labels"] {
        assert_eq!(saved["metadata"].get(field), metadata.get(field), "{field}");
    }
    let mut saved_annotations = metadata["annotations"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    saved_annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    assert_eq!(
        saved["metadata"]["annotations"],
        Value::Object(saved_annotations)
    );

    let spec = proxy["spec"].as_object().expect("the proxy has a spec");
    for field in spec.keys() {
        assert!(
            PROXY_SPEC_FIELDS.contains(&field.as_str()),
            "the proxy kept spec.{field}"
        );
    }
    for field in ["containers", "initContainers"] {
        let Some(originals) = pod["spec"][field].as_array() else {
            assert!(spec.get(field).is_none_or(|_| field == "containers"));
            continue;
        };
        let containers = spec[field]
            .as_array()
            .expect("the proxy has its containers");
        let names = |cs: &[Value]| cs.iter().map(|c| c["name"].clone()).collect::<Vec<_>>();
        assert_eq!(
            names(containers),
            names(originals),
            "{field} keep their names and order"
        );
        for c in containers {
            assert_eq!(c["image"], WAITER_IMAGE);
            assert_eq!(c["command"], serde_json::json!(["/proxy-waiter"]));
            assert_eq!(c["securityContext"]["privileged"], false);
            assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
            for dropped in ["env", "volumeMounts"] {
                if let Some(items) = c.get(dropped).and_then(Value::as_array) {
                    assert!(
                        items.iter().all(|i| {
                            i["name"].as_str().is_some_and(|n| {
                                n.starts_with("PROXY_WAITER_") || n == "proxy-waiter-podinfo"
                            })
                        }),
                        "{dropped} of the real container kept"
                    );
                }
            }
        }
    }
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert_eq!(spec["volumes"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        mutate(proxy, namespace, settings(), key()),
        Mutation::Unchanged("already a proxy"),
        "the webhook leaves its own proxy unchanged"
    );
}

/// The saved-manifest opener.
///
/// Input: a namespace, a newline, then text (opened as a sealed manifest, and sealed as JSON).
/// - Opening anything never panics, and what opens is exactly what the key seals (no second
///   encoding of a tag verifies).
/// - Sealing round-trips; the seal does not open under another key or another namespace;
///   any one-character change is refused.
/// - A key file of at least 32 bytes (whitespace trimmed) is accepted, a shorter one refused.
pub fn manifest(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    let (namespace, rest) = text.split_once('\n').unwrap_or(("", &text));
    let opened = key().open(namespace, rest);
    let class = match &opened {
        Ok(json) => {
            assert_eq!(
                key().seal(namespace, json),
                rest,
                "only the canonical seal opens"
            );
            "opened".to_string()
        }
        Err(ManifestError::UnknownVersion(v)) => {
            assert!(v.starts_with('v') && v.len() <= 8 && v != "v1");
            "unknown version".to_string()
        }
        Err(e @ (ManifestError::Malformed | ManifestError::BadSignature)) => {
            e.metric_label().into()
        }
        Err(e) => panic!("opening reported {e:?}"),
    };

    let sealed = key().seal(namespace, rest);
    assert_eq!(key().open(namespace, &sealed), Ok(rest));
    assert_eq!(
        open_with_any(&[other_key().clone(), key().clone()], namespace, &sealed),
        Ok(rest)
    );
    assert_eq!(
        other_key().open(namespace, &sealed),
        Err(ManifestError::BadSignature)
    );
    assert_eq!(
        open_with_any(&[], namespace, &sealed),
        Err(ManifestError::BadSignature)
    );
    // The MAC covers tag, namespace, NUL, JSON: unambiguous while neither holds a NUL, which
    // Kubernetes namespaces (DNS labels) and serde_json's output never do.
    if !namespace.contains('\0') && !rest.contains('\0') {
        for other in [
            format!("{namespace}x"),
            format!("x{namespace}"),
            namespace.to_uppercase(),
        ] {
            if other != namespace {
                assert_eq!(
                    key().open(&other, &sealed),
                    Err(ManifestError::BadSignature)
                );
            }
        }
    }
    let chars: Vec<(usize, char)> = sealed.char_indices().collect();
    let (at, original) = chars[(fnv(data) % chars.len() as u64) as usize];
    let replacement = ['A', '.', 'v', '0', '_', '{', 'é']
        .into_iter()
        .find(|c| *c != original)
        .unwrap_or('B');
    let mut tampered = sealed.clone();
    tampered.replace_range(
        at..at + original.len_utf8(),
        replacement.encode_utf8(&mut [0; 4]),
    );
    assert!(
        key().open(namespace, &tampered).is_err(),
        "a changed seal opened: {tampered:?}"
    );

    let trimmed = data.trim_ascii().len();
    match ManifestKey::from_bytes(data) {
        Ok(_) => assert!(trimmed >= MIN_KEY_BYTES),
        Err(ManifestError::ShortKey(n)) => assert!(n == trimmed && n < MIN_KEY_BYTES),
        Err(e) => panic!("a key was refused with {e:?}"),
    }
    class
}

/// Reads structured values from fuzz bytes (zeros once they run out).
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> u8 {
        let Some((first, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        *first
    }

    fn string(&mut self) -> String {
        let len = usize::from(self.byte() % 40);
        let (head, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        String::from_utf8_lossy(head).into_owned()
    }

    fn optional(&mut self) -> Option<String> {
        (self.byte() % 2 == 1).then(|| self.string())
    }

    fn i32(&mut self) -> i32 {
        i32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
}

/// The result decoder.
///
/// - Decoding anything never panics; a decoded result re-encodes to text that decodes to it
///   again, and encoding is canonical (encode ∘ decode ∘ encode = encode).
/// - A result built from the input's bytes round-trips through encode and decode.
/// - `outcome_for` any container: the exit status is 0 only for a container that exited 0;
///   a container without an entry gets 1 when the pod failed, and an error otherwise; the
///   termination message is cut to Kubernetes' limit on a character boundary.
pub fn result(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    let class = match DelegateResult::decode(&text) {
        Ok(decoded) => {
            assert_eq!(decoded.version, FORMAT_VERSION);
            check_result(&decoded, &text);
            "decoded".to_string()
        }
        Err(ResultError::UnknownVersion { found }) => {
            assert_ne!(found, u64::from(FORMAT_VERSION));
            "unknown version".to_string()
        }
        Err(ResultError::Malformed(m)) => format!("malformed: {}", class_of(&m)),
        Err(e) => panic!("decoding reported {e:?}"),
    };
    let mut reader = Reader(data);
    let built = DelegateResult {
        version: FORMAT_VERSION,
        phase: if reader.byte() % 2 == 0 {
            Phase::Succeeded
        } else {
            Phase::Failed
        },
        reason: reader.optional(),
        message: reader.optional(),
        containers: (0..reader.byte() % 4)
            .map(|_| {
                (
                    reader.string(),
                    ContainerResult {
                        exit_code: reader.i32(),
                        reason: reader.optional(),
                        message: reader.optional(),
                    },
                )
            })
            .collect(),
    };
    assert_eq!(DelegateResult::decode(&built.encode()).as_ref(), Ok(&built));
    check_result(&built, &reader.string());
    class
}

fn check_result(result: &DelegateResult, extra_name: &str) {
    let encoded = result.encode();
    let again = DelegateResult::decode(&encoded).expect("an encoded result decodes");
    assert_eq!(&again, result);
    assert_eq!(again.encode(), encoded);
    let names = result
        .containers
        .keys()
        .map(String::as_str)
        .chain(["main", "", extra_name]);
    for name in names {
        match result.outcome_for(name) {
            Ok(outcome) => {
                match result.containers.get(name) {
                    Some(c) => {
                        assert_eq!(outcome.exit_code, exit_status(c.exit_code));
                        assert_eq!(
                            outcome.exit_code == 0,
                            c.exit_code == 0,
                            "exit 0 only for success"
                        );
                        assert_eq!(outcome.message, c.message.clone().unwrap_or_default());
                    }
                    None => {
                        assert_eq!(result.phase, Phase::Failed);
                        // Without a pod-level reason, the first container that failed speaks
                        // for those that never ran; otherwise the pod failed as a whole.
                        let failed = result.containers.iter().find(|(_, c)| c.exit_code != 0);
                        match (&result.reason, failed) {
                            (None, Some((first, c))) => {
                                assert_eq!(outcome.exit_code, exit_status(c.exit_code));
                                assert!(outcome.message.starts_with(&format!("{first}: ")));
                            }
                            _ => assert_eq!(outcome.exit_code, POD_FAILED_EXIT_CODE),
                        }
                        assert_ne!(outcome.exit_code, 0);
                    }
                }
                assert!(outcome.summary.starts_with("delegate "));
                let cut = truncate_termination_message(&outcome.message);
                assert!(cut.len() <= TERMINATION_MESSAGE_LIMIT);
                if outcome.message.len() <= TERMINATION_MESSAGE_LIMIT {
                    assert_eq!(cut, outcome.message);
                } else {
                    let kept = cut
                        .strip_suffix("\n[truncated by proxy-waiter]")
                        .expect("a cut message says so");
                    assert!(outcome.message.starts_with(kept));
                }
            }
            Err(ResultError::MissingContainer { container }) => {
                assert_eq!(container, name);
                assert!(!result.containers.contains_key(name));
                assert_eq!(result.phase, Phase::Succeeded);
            }
            Err(e) => panic!("outcome_for({name:?}) reported {e:?}"),
        }
    }
}

/// Go's `strconv.Quote`, with the escape of each character chosen by `choose` among the forms
/// Go's unquoting accepts (Go itself writes only the shortest): the kubelet's projection
/// format, and more.
pub fn quote_go(value: &str, mut choose: impl FnMut() -> u8) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => match choose() % 5 {
                0 if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
                1 => out.push_str(&format!("\\U{:08X}", c as u32)),
                2 => {
                    for b in c.encode_utf8(&mut [0; 4]).bytes() {
                        out.push_str(&format!("\\x{b:02X}"));
                    }
                }
                3 => {
                    for b in c.encode_utf8(&mut [0; 4]).bytes() {
                        out.push_str(&format!("\\{b:03o}"));
                    }
                }
                _ => out.push(c),
            },
        }
    }
    out.push('"');
    out
}

/// The downward-API projection reader.
///
/// - Parsing, looking up and unquoting anything never panics; errors name a line that exists.
/// - Where the whole projection parses, looking up a key that appears once gives its value.
/// - Annotations built from the input's bytes, written as the kubelet does (with any escape
///   form Go accepts), read back exactly, whole and one by one.
pub fn downward(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    let class = match parse_annotations(&text) {
        Ok(map) => {
            for (k, v) in &map {
                let lines = text
                    .lines()
                    .filter(|l| l.split_once('=').is_some_and(|(key, _)| key == k))
                    .count();
                if lines == 1 {
                    assert_eq!(annotation(&text, k), Some(Ok(v.clone())), "{k}");
                }
            }
            format!("parsed {}", map.len().min(3))
        }
        Err(e) => {
            assert!(e.line >= 1 && e.line <= text.lines().count());
            e.problem.to_string()
        }
    };
    for line in text.lines().take(8) {
        if let Some((k, quoted)) = line.split_once('=') {
            let _ = annotation(&text, k);
            let _ = unquote_go(quoted);
        }
    }
    let _ = unquote_go(&text);

    let mut reader = Reader(data);
    let mut annotations = BTreeMap::new();
    for _ in 0..reader.byte() % 5 {
        const KEY_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789.-_/";
        let key: String = (0..1 + reader.byte() % 24)
            .map(|_| char::from(KEY_CHARS[usize::from(reader.byte()) % KEY_CHARS.len()]))
            .collect();
        annotations.insert(key, reader.string());
    }
    let projection: String = annotations
        .iter()
        .map(|(k, v)| format!("{k}={}\n", quote_go(v, || reader.byte())))
        .collect();
    assert_eq!(
        parse_annotations(&projection).as_ref(),
        Ok(&annotations),
        "{projection:?}"
    );
    for (k, v) in &annotations {
        assert_eq!(annotation(&projection, k), Some(Ok(v.clone())));
        let quoted = quote_go(v, || reader.byte());
        assert_eq!(unquote_go(&quoted).as_deref(), Ok(v.as_str()), "{quoted:?}");
    }
    class
}
