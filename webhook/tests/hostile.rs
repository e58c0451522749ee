//! A catalogue of hostile requests against the real webhook, over real TLS on loopback. Each
//! row is an input and the exact answer expected: the HTTP status, and for reviews whether it
//! is allowed, patched or denied (with the code), and a substring of the message. Answers to
//! bodies are also checked to be deterministic (the same body twice gets the same bytes), 4xx
//! bodies never to echo a large part of the request, and patches to apply to the pod as the
//! webhook read it, giving a saved manifest that opens with the key.
//!
//! The plainer bad requests (wrong path and method, text/plain, a 2 MiB body, a numeric uid,
//! missing request or object, plaintext TCP, unfinished headers) are in `server.rs`.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use common::*;
use contract::{ELECT, PROXY_LABEL, SOURCEPOD_MANIFEST, manifest::ManifestKey};
use http::StatusCode;
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What is sent.
enum Send {
    /// POST /mutate, `Content-Type: application/json`, this body, over HTTP/1.1.
    Body(Vec<u8>),
    /// The same over HTTP/2.
    BodyH2(Vec<u8>),
    /// Any request over HTTP/1.1 (built afresh for each send).
    Request(fn() -> http::Request<Full<Bytes>>),
    /// Raw bytes over TLS (ALPN http/1.1), read until the server closes.
    Raw(Vec<u8>),
}

/// What must come back.
enum Expect {
    /// This HTTP status; the (plain-text) body contains this.
    Status(StatusCode, &'static str),
    /// HTTP 200 with an AdmissionReview answering `uid`: allowed without a patch.
    Unchanged,
    /// Allowed with a patch that applies to the pod as sent (duplicate keys: the last wins).
    Patched,
    /// Denied with this code; the message contains this.
    Denied(u16, &'static str),
}

struct Row {
    name: &'static str,
    send: Send,
    expect: Expect,
}

fn row(name: &'static str, send: Send, expect: Expect) -> Row {
    Row { name, send, expect }
}

fn body(value: &Value) -> Send {
    Send::Body(value.to_string().into_bytes())
}

fn text(text: impl Into<String>) -> Send {
    Send::Body(text.into().into_bytes())
}

const UID: &str = "hostile-uid";

/// A review of an elected pod, with `edit` applied to it.
fn elected(edit: impl FnOnce(&mut Value)) -> Value {
    let mut review = review(UID, "team-a", "CREATE", elected_pod("p"));
    edit(&mut review);
    review
}

/// The review's text with the pod's metadata written as given (duplicate keys included).
fn with_metadata(metadata: &str) -> String {
    format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"{UID}","kind":{{"group":"","version":"v1","kind":"Pod"}},"namespace":"team-a","operation":"CREATE","object":{{"metadata":{metadata},"spec":{{"containers":[{{"name":"main","image":"busybox"}}]}}}}}}}}"#
    )
}

/// `depth` opening brackets, then as many closing ones.
fn nested(depth: usize) -> String {
    "[".repeat(depth) + &"]".repeat(depth)
}

fn key() -> ManifestKey {
    ManifestKey::from_bytes(KEY).unwrap()
}

/// The pod as the webhook would make it a proxy (the same function the server runs).
fn proxy_of(pod: &Value, namespace: &str) -> Value {
    let settings = webhook::mutate::ProxySettings {
        waiter_image: "proxy-waiter:test".into(),
        ..Default::default()
    };
    let webhook::mutate::Mutation::Patch(patch) =
        webhook::mutate::mutate(pod, namespace, &settings, &key())
    else {
        panic!("not patched")
    };
    let mut proxy = pod.clone();
    json_patch::patch(&mut proxy, &patch).unwrap();
    proxy
}

/// At most `max` bytes of `text`, on a character boundary.
fn head(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn sealed(proxy: &Value) -> String {
    proxy["metadata"]["annotations"][SOURCEPOD_MANIFEST]
        .as_str()
        .unwrap()
        .to_string()
}

fn catalogue() -> Vec<Row> {
    use Expect::*;
    let valid = elected(|_| {}).to_string();
    let proxy = proxy_of(&elected_pod("p"), "team-a");
    let as_proxy = |namespace: &str, edit: &dyn Fn(&mut Value)| {
        let mut pod = proxy.clone();
        edit(&mut pod);
        body(&review(UID, namespace, "CREATE", pod))
    };
    let bad = StatusCode::BAD_REQUEST;
    vec![
        // Truncated JSON.
        row(
            "truncated in the middle",
            text(&valid[..valid.len() / 2]),
            Status(bad, "EOF while parsing"),
        ),
        row(
            "truncated inside the uid",
            text(&valid[..valid.find(UID).unwrap() + 3]),
            Status(bad, "EOF while parsing a string"),
        ),
        row(
            "truncated before the last brace",
            text(&valid[..valid.len() - 1]),
            Status(bad, "EOF while parsing an object"),
        ),
        row(
            "empty body",
            text(""),
            Status(bad, "EOF while parsing a value"),
        ),
        row(
            "whitespace only",
            text(" \n\t "),
            Status(bad, "EOF while parsing a value"),
        ),
        // Deep nesting.
        row(
            "100k [ as the body (refused at the first: not an object)",
            text("[".repeat(100_000)),
            Status(
                bad,
                "invalid type: sequence, expected a JSON object at line 1 column 0",
            ),
        ),
        row(
            "100k nested arrays as the pod",
            text(with_metadata("{}").replace(
                r#""object":{"metadata":{}"#,
                &format!(r#""object":{},"x":{{"metadata":{{}}"#, nested(100_000)),
            )),
            Status(bad, "recursion limit exceeded"),
        ),
        row(
            "100k nested arrays in a field the webhook skips",
            body(&elected(|r| r["request"]["userInfo"]["extra"] = json!("X")))
                .replace_body(|b| b.replace(r#""X""#, &nested(100_000))),
            Patched,
        ),
        row(
            "nesting just under serde's limit of 128, in the pod, is saved",
            body(&elected(|r| {
                r["request"]["object"]["spec"]["containers"][0]["args"] = json!("X")
            }))
            .replace_body(|b| b.replace(r#""X""#, &nested(115))),
            Patched,
        ),
        row(
            "nesting past serde's limit, in the pod",
            body(&elected(|r| {
                r["request"]["object"]["spec"]["containers"][0]["args"] = json!("X")
            }))
            .replace_body(|b| b.replace(r#""X""#, &nested(130))),
            Status(bad, "recursion limit exceeded"),
        ),
        // Huge strings, within and beyond --max-body-bytes (1 MiB here).
        row(
            "a 600 KiB uid is answered with that uid",
            body(&elected(|r| {
                r["request"]["uid"] = json!("u".repeat(600 * 1024))
            })),
            Patched,
        ),
        row(
            "a 300 KiB annotation cannot be saved",
            body(&elected(|r| {
                r["request"]["object"]["metadata"]["annotations"]["big"] =
                    json!("x".repeat(300 * 1024))
            })),
            Denied(400, "too large to be delegated"),
        ),
        row(
            "a 200 KiB environment value still fits",
            body(&elected(|r| {
                r["request"]["object"]["spec"]["containers"][0]["env"] =
                    json!([{ "name": "X", "value": "x".repeat(200 * 1024) }])
            })),
            Patched,
        ),
        row(
            "a 600 KiB apiVersion is not echoed",
            body(&elected(|r| {
                r["apiVersion"] = json!("é".repeat(300 * 1024))
            })),
            Status(bad, "éé…"),
        ),
        row(
            "a 600 KiB string of the wrong type is not echoed",
            body(&elected(|r| {
                r["request"]["kind"] = json!("k".repeat(600 * 1024))
            })),
            Status(bad, "kk…kk"),
        ),
        row(
            "a 2 MiB uid is over --max-body-bytes",
            body(&elected(|r| {
                r["request"]["uid"] = json!("u".repeat(2 << 20))
            })),
            Status(StatusCode::PAYLOAD_TOO_LARGE, "over 1048576 bytes"),
        ),
        row(
            "a 2 MiB body over HTTP/2",
            Send::BodyH2(vec![b' '; 2 << 20]),
            Status(StatusCode::PAYLOAD_TOO_LARGE, "over 1048576 bytes"),
        ),
        row(
            "exactly --max-body-bytes is read",
            text(format!("{valid}{}", " ".repeat((1 << 20) - valid.len()))),
            Patched,
        ),
        row(
            "one byte over --max-body-bytes",
            text(format!(
                "{valid}{}",
                " ".repeat((1 << 20) + 1 - valid.len())
            )),
            Status(StatusCode::PAYLOAD_TOO_LARGE, "over"),
        ),
        // Wrong types in every field the webhook reads.
        row(
            "the body is an array of the review's fields",
            text(format!(
                r#"["admission.k8s.io/v1","AdmissionReview",{}]"#,
                elected(|_| {})["request"]
            )),
            Status(bad, "expected a JSON object"),
        ),
        row(
            "apiVersion is a number",
            body(&elected(|r| r["apiVersion"] = json!(1))),
            Status(bad, "invalid type: integer `1`, expected a string"),
        ),
        row(
            "kind is an array",
            body(&elected(|r| r["kind"] = json!(["AdmissionReview"]))),
            Status(bad, "invalid type: sequence, expected a string"),
        ),
        row(
            "request is a string",
            body(&elected(|r| r["request"] = json!("x"))),
            Status(bad, "invalid type: string \"x\", expected a JSON object"),
        ),
        row(
            "request is an array of its fields",
            body(&elected(
                |r| r["request"] = json!([UID, { "group": "", "version": "v1", "kind": "Pod" }]),
            )),
            Status(bad, "expected a JSON object"),
        ),
        row(
            "request.uid is null",
            body(&elected(|r| r["request"]["uid"] = Value::Null)),
            Status(bad, "invalid type: null, expected a string"),
        ),
        row(
            "request.uid is missing",
            body(&elected(|r| {
                drop(r["request"].as_object_mut().unwrap().remove("uid"))
            })),
            Status(bad, "missing field `uid`"),
        ),
        row(
            "request.kind is a string",
            body(&elected(|r| r["request"]["kind"] = json!("Pod"))),
            Status(bad, "expected a JSON object"),
        ),
        row(
            "request.kind is an array of its fields",
            body(&elected(|r| {
                r["request"]["kind"] = json!(["", "v1", "Pod"])
            })),
            Status(bad, "expected a JSON object"),
        ),
        row(
            "request.kind.version is a number",
            body(&elected(|r| r["request"]["kind"]["version"] = json!(1))),
            Status(bad, "invalid type: integer"),
        ),
        row(
            "request.subResource is an object",
            body(&elected(|r| r["request"]["subResource"] = json!({}))),
            Status(bad, "invalid type: map"),
        ),
        row(
            "request.namespace is an array",
            body(&elected(|r| r["request"]["namespace"] = json!(["team-a"]))),
            Status(bad, "invalid type: sequence"),
        ),
        row(
            "request.operation is a boolean",
            body(&elected(|r| r["request"]["operation"] = json!(true))),
            Status(bad, "invalid type: boolean"),
        ),
        row(
            "request.object is a string",
            body(&elected(|r| r["request"]["object"] = json!("pod"))),
            Denied(400, "no pod object"),
        ),
        row(
            "request.object is an array",
            body(&elected(|r| {
                r["request"]["object"] = json!([elected_pod("p")])
            })),
            Denied(400, "no pod object"),
        ),
        row(
            "metadata is a string",
            body(&elected(|r| {
                r["request"]["object"]["metadata"] = json!(ELECT)
            })),
            Unchanged,
        ),
        row(
            "annotations is an array holding the elect key",
            body(&elected(|r| {
                r["request"]["object"]["metadata"]["annotations"] = json!([ELECT])
            })),
            Unchanged,
        ),
        row(
            "the elect annotation's value is a number (presence is enough)",
            body(&elected(|r| {
                r["request"]["object"]["metadata"]["annotations"][ELECT] = json!(1)
            })),
            Patched,
        ),
        row(
            "the saved manifest is a number",
            body(&elected(|r| {
                r["request"]["object"]["metadata"]["annotations"][SOURCEPOD_MANIFEST] = json!(7)
            })),
            Denied(403, "only the webhook makes proxy pods"),
        ),
        row(
            "labels is a string (replaced by the proxy label)",
            body(&elected(|r| {
                r["request"]["object"]["metadata"]["labels"] = json!("x")
            })),
            Patched,
        ),
        row(
            "the proxy label's value is false",
            body(&elected(|r| {
                r["request"]["object"]["metadata"]["labels"] = json!({ PROXY_LABEL: false })
            })),
            Denied(403, "only the webhook makes proxy pods"),
        ),
        row(
            "finalizers is a string (replaced by ours)",
            body(&elected(|r| {
                r["request"]["object"]["metadata"]["finalizers"] = json!("x")
            })),
            Patched,
        ),
        row(
            "spec is an array",
            body(&elected(|r| r["request"]["object"]["spec"] = json!([]))),
            Denied(400, "no spec"),
        ),
        row(
            "spec.containers is an object",
            body(&elected(|r| {
                r["request"]["object"]["spec"]["containers"] = json!({ "name": "main" })
            })),
            Denied(400, "spec.containers"),
        ),
        row(
            "spec.containers is empty",
            body(&elected(|r| {
                r["request"]["object"]["spec"]["containers"] = json!([])
            })),
            Denied(400, "spec.containers"),
        ),
        row(
            "a container is a string",
            body(&elected(|r| {
                r["request"]["object"]["spec"]["containers"] = json!(["main"])
            })),
            Denied(400, "a container has no name"),
        ),
        row(
            "a container's name is a number",
            body(&elected(|r| {
                r["request"]["object"]["spec"]["containers"][0]["name"] = json!(7)
            })),
            Denied(400, "a container has no name"),
        ),
        row(
            "an init container has no name",
            body(&elected(|r| {
                r["request"]["object"]["spec"]["initContainers"] = json!([{ "image": "x" }])
            })),
            Denied(400, "a container has no name"),
        ),
        row(
            "initContainers is a string (ignored)",
            body(&elected(|r| {
                r["request"]["object"]["spec"]["initContainers"] = json!("x")
            })),
            Patched,
        ),
        row(
            "an init container's restartPolicy is a number",
            body(&elected(|r| {
                r["request"]["object"]["spec"]["initContainers"] =
                    json!([{ "name": "i", "restartPolicy": 1 }])
            })),
            Patched,
        ),
        // Duplicate keys: serde refuses them in the review's own fields; in the pod, whose
        // JSON it keeps as a tree, the last one wins, for the checks and the saved manifest
        // alike.
        row(
            "request twice",
            text(valid.replacen(
                r#""request":"#,
                r#""request":{"uid":"first"},"request":"#,
                1,
            )),
            Status(bad, "duplicate field `request`"),
        ),
        row(
            "uid twice",
            text(valid.replacen(
                &format!(r#""uid":"{UID}""#),
                &format!(r#""uid":"a","uid":"{UID}""#),
                1,
            )),
            Status(bad, "duplicate field `uid`"),
        ),
        row(
            "apiVersion twice",
            text(valid.replacen(
                r#""apiVersion":"admission.k8s.io/v1""#,
                r#""apiVersion":"admission.k8s.io/v1","apiVersion":"admission.k8s.io/v1""#,
                1,
            )),
            Status(bad, "duplicate field `apiVersion`"),
        ),
        row(
            "namespace twice: kube-system cannot be smuggled",
            text(valid.replacen(
                r#""namespace":"team-a""#,
                r#""namespace":"kube-system","namespace":"team-a""#,
                1,
            )),
            Status(bad, "duplicate field `namespace`"),
        ),
        row(
            "request.kind.kind twice",
            text(valid.replacen(r#""kind":"Pod""#, r#""kind":"Deployment","kind":"Pod""#, 1)),
            Status(bad, "duplicate field `kind`"),
        ),
        row(
            "object twice",
            text(valid.replacen(r#""object":"#, r#""object":null,"object":"#, 1)),
            Status(bad, "duplicate field `object`"),
        ),
        row(
            "annotations twice, elect first: the last wins, not elected",
            text(with_metadata(&format!(
                r#"{{"name":"p","annotations":{{"{ELECT}":""}},"annotations":{{}}}}"#
            ))),
            Unchanged,
        ),
        row(
            "annotations twice, elect last: elected",
            text(with_metadata(&format!(
                r#"{{"name":"p","annotations":{{}},"annotations":{{"{ELECT}":""}}}}"#
            ))),
            Patched,
        ),
        row(
            "annotations twice, a forged manifest first: our own seal is added",
            text(with_metadata(&format!(
                r#"{{"name":"p","annotations":{{"{ELECT}":"","{SOURCEPOD_MANIFEST}":"v1.AAAA.{{}}"}},"annotations":{{"{ELECT}":""}}}}"#
            ))),
            Patched,
        ),
        row(
            "annotations twice, a forged manifest last",
            text(with_metadata(&format!(
                r#"{{"name":"p","annotations":{{"{ELECT}":""}},"annotations":{{"{ELECT}":"","{SOURCEPOD_MANIFEST}":"v1.AAAA.{{}}"}}}}"#
            ))),
            Denied(403, "not written by this webhook"),
        ),
        row(
            "a genuine manifest then a forged one under the same key",
            text(with_metadata(&format!(
                r#"{{"name":"p","annotations":{{"{ELECT}":"","{SOURCEPOD_MANIFEST}":{},"{SOURCEPOD_MANIFEST}":"v1.AAAA.{{}}"}}}}"#,
                serde_json::to_string(&sealed(&proxy)).unwrap()
            ))),
            Denied(403, "not written by this webhook"),
        ),
        row(
            "labels twice, the proxy label first",
            text(with_metadata(&format!(
                r#"{{"name":"p","annotations":{{"{ELECT}":""}},"labels":{{"{PROXY_LABEL}":"true"}},"labels":{{"app":"x"}}}}"#
            ))),
            Patched,
        ),
        // Pods that already are proxies, genuine or forged.
        row(
            "a genuine proxy comes back",
            as_proxy("team-a", &|_| {}),
            Unchanged,
        ),
        row(
            "a genuine proxy with its spec put back: the manifest, not the spec, is delegated",
            as_proxy("team-a", &|p| p["spec"] = elected_pod("p")["spec"].clone()),
            Unchanged,
        ),
        row(
            "a genuine proxy without the elect annotation",
            as_proxy("team-a", &|p| {
                drop(
                    p["metadata"]["annotations"]
                        .as_object_mut()
                        .unwrap()
                        .remove(ELECT),
                )
            }),
            Unchanged,
        ),
        row(
            "a proxy whose saved manifest was edited",
            as_proxy("team-a", &|p| {
                let s = sealed(p).replace("busybox", "evil/miner");
                p["metadata"]["annotations"][SOURCEPOD_MANIFEST] = json!(s)
            }),
            Denied(403, "not written by this webhook"),
        ),
        row(
            "a proxy moved to another namespace",
            as_proxy("team-b", &|_| {}),
            Denied(403, "not written by this webhook"),
        ),
        row(
            "a proxy sealed with another key",
            as_proxy("team-a", &|p| {
                p["metadata"]["annotations"][SOURCEPOD_MANIFEST] = json!(
                    ManifestKey::from_bytes(&[b'k'; 32])
                        .unwrap()
                        .seal("team-a", r#"{"spec":{}}"#)
                )
            }),
            Denied(403, "edited after admission or signed with another key"),
        ),
        row(
            "a proxy with a manifest of a future format",
            as_proxy("team-a", &|p| {
                p["metadata"]["annotations"][SOURCEPOD_MANIFEST] = json!("v2.AAAA.{}")
            }),
            Denied(403, "this build reads v1 only"),
        ),
        row(
            "a proxy whose manifest has no MAC",
            as_proxy("team-a", &|p| {
                p["metadata"]["annotations"][SOURCEPOD_MANIFEST] = json!(r#"v1.{"spec":{}}"#)
            }),
            Denied(403, "not in the `v1.<mac>.<json>` format"),
        ),
        row(
            "the proxy label without a manifest",
            body(&elected(|r| {
                r["request"]["object"]["metadata"]["labels"] = json!({ PROXY_LABEL: "true" })
            })),
            Denied(403, "only the webhook makes proxy pods"),
        ),
        // Namespaces the webhook never changes, even with forged proxies; exact names only.
        row(
            "kube-system with a forged manifest",
            body(&review(UID, "kube-system", "CREATE", {
                let mut p = elected_pod("p");
                p["metadata"]["annotations"][SOURCEPOD_MANIFEST] = json!("v1.AAAA.{}");
                p
            })),
            Unchanged,
        ),
        row(
            "the webhook's namespace with the proxy label",
            body(&review(UID, "webhook-system", "CREATE", {
                let mut p = elected_pod("p");
                p["metadata"]["labels"] = json!({ PROXY_LABEL: "true" });
                p
            })),
            Unchanged,
        ),
        row(
            "KUBE-SYSTEM is another namespace",
            body(&review(UID, "KUBE-SYSTEM", "CREATE", elected_pod("p"))),
            Patched,
        ),
        row(
            "an ephemeral-containers update of an elected pod",
            body(&elected(|r| {
                r["request"]["operation"] = json!("UPDATE");
                r["request"]["subResource"] = json!("ephemeralcontainers")
            })),
            Unchanged,
        ),
        // Bytes that are not UTF-8 or not JSON.
        row(
            "random binary",
            Send::Body(vec![0xff, 0xfe, 0x00, 0x80, 0x7b]),
            Status(bad, "expected value"),
        ),
        row(
            "a raw 0xff inside the uid",
            Send::Body({
                let mut b = valid.clone().into_bytes();
                b[valid.find(UID).unwrap()] = 0xff;
                b
            }),
            Status(bad, "invalid unicode code point"),
        ),
        row(
            "a lone surrogate escape in the uid",
            text(valid.replacen(UID, r"\ud800", 1)),
            Status(bad, "unexpected end of hex escape"),
        ),
        row(
            "a lone surrogate escape in a field the webhook skips",
            body(&elected(|r| {
                r["request"]["userInfo"]["username"] = json!("X")
            }))
            .replace_body(|b| b.replace(r#""X""#, r#""\udc00""#)),
            Patched,
        ),
        row(
            "a byte-order mark before the JSON",
            Send::Body([b"\xef\xbb\xbf".as_slice(), valid.as_bytes()].concat()),
            Status(bad, "expected value"),
        ),
        row(
            "a NUL between tokens",
            text(valid.replacen(':', ":\u{0}", 1)),
            Status(bad, "expected value"),
        ),
        // Headers.
        row(
            "no Content-Type",
            Send::Request(|| {
                http::Request::post("/mutate")
                    .body(Full::new(Bytes::from(elected(|_| {}).to_string())))
                    .unwrap()
            }),
            Status(StatusCode::UNSUPPORTED_MEDIA_TYPE, "application/json"),
        ),
        row(
            "Content-Type with a charset",
            Send::Request(|| typed("application/json; charset=utf-8")),
            Patched,
        ),
        row(
            "Content-Type in capitals",
            Send::Request(|| typed("Application/JSON")),
            Patched,
        ),
        row(
            "Content-Type application/json-patch+json",
            Send::Request(|| typed("application/json-patch+json")),
            Status(StatusCode::UNSUPPORTED_MEDIA_TYPE, "application/json"),
        ),
        row(
            "Content-Type application/jsonx",
            Send::Request(|| typed("application/jsonx")),
            Status(StatusCode::UNSUPPORTED_MEDIA_TYPE, "application/json"),
        ),
        row(
            "Content-Type application/yaml",
            Send::Request(|| typed("application/yaml")),
            Status(StatusCode::UNSUPPORTED_MEDIA_TYPE, "application/json"),
        ),
        row(
            "two Content-Types, text/plain first",
            Send::Request(|| {
                http::Request::post("/mutate")
                    .header("content-type", "text/plain")
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(elected(|_| {}).to_string())))
                    .unwrap()
            }),
            Status(StatusCode::UNSUPPORTED_MEDIA_TYPE, "application/json"),
        ),
        row(
            "the kube-apiserver's ?timeout= query",
            Send::Request(|| {
                http::Request::post("/mutate?timeout=10s")
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(elected(|_| {}).to_string())))
                    .unwrap()
            }),
            Patched,
        ),
        row(
            "a path with a trailing slash",
            Send::Request(|| {
                http::Request::post("/mutate/")
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(elected(|_| {}).to_string())))
                    .unwrap()
            }),
            Status(StatusCode::NOT_FOUND, "not found"),
        ),
        row(
            "PUT",
            Send::Request(|| {
                http::Request::put("/mutate")
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(elected(|_| {}).to_string())))
                    .unwrap()
            }),
            Status(StatusCode::METHOD_NOT_ALLOWED, "POSTed"),
        ),
        // HTTP framing, raw.
        row(
            "HTTP/1.0 with Content-Length",
            Send::Raw(raw_request(
                "HTTP/1.0",
                &[("Content-Length", &valid.len().to_string())],
                valid.as_bytes(),
            )),
            Patched,
        ),
        row(
            "HTTP/1.0 without Content-Length: no body",
            Send::Raw(raw_request("HTTP/1.0", &[], valid.as_bytes())),
            Status(bad, "EOF while parsing a value"),
        ),
        row(
            "chunked transfer encoding",
            Send::Raw(raw_request(
                "HTTP/1.1",
                &[("Transfer-Encoding", "chunked"), ("Connection", "close")],
                &chunked(valid.as_bytes()),
            )),
            Patched,
        ),
        row(
            "chunked past --max-body-bytes",
            Send::Raw(raw_request(
                "HTTP/1.1",
                &[("Transfer-Encoding", "chunked"), ("Connection", "close")],
                &chunked(&vec![b' '; 1_100_000]),
            )),
            Status(StatusCode::PAYLOAD_TOO_LARGE, "over"),
        ),
        row(
            "a Content-Length of 10 GB is refused at once",
            Send::Raw(raw_request(
                "HTTP/1.1",
                &[("Content-Length", "10000000000"), ("Connection", "close")],
                b"{}",
            )),
            Status(StatusCode::PAYLOAD_TOO_LARGE, "over"),
        ),
        row(
            "Content-Length and chunked together: chunked wins (RFC 9112 6.1)",
            Send::Raw(raw_request(
                "HTTP/1.1",
                &[
                    ("Content-Length", "5"),
                    ("Transfer-Encoding", "chunked"),
                    ("Connection", "close"),
                ],
                &chunked(valid.as_bytes()),
            )),
            Patched,
        ),
        row(
            "a header line that is not UTF-8",
            Send::Raw(raw_request(
                "HTTP/1.1",
                &[
                    ("X-Bytes", "\u{ff}\u{fe}"),
                    ("Content-Length", &valid.len().to_string()),
                    ("Connection", "close"),
                ],
                valid.as_bytes(),
            )),
            Patched,
        ),
        row(
            "Expect: 100-continue",
            Send::Raw(raw_request(
                "HTTP/1.1",
                &[
                    ("Expect", "100-continue"),
                    ("Content-Length", &valid.len().to_string()),
                    ("Connection", "close"),
                ],
                valid.as_bytes(),
            )),
            Patched,
        ),
        row(
            "HTTP/0.9",
            Send::Raw(b"GET /mutate\r\n\r\n".to_vec()),
            Status(bad, ""),
        ),
    ]
}

/// POST /mutate of an elected pod's review with this Content-Type.
fn typed(content_type: &str) -> http::Request<Full<Bytes>> {
    http::Request::post("/mutate")
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(elected(|_| {}).to_string())))
        .unwrap()
}

fn raw_request(version: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out =
        format!("POST /mutate {version}\r\nHost: webhook\r\nContent-Type: application/json\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    // Header values given as U+00FF / U+00FE stand for those raw bytes.
    let mut bytes: Vec<u8> = out
        .chars()
        .map(|c| if c as u32 <= 0xff { c as u8 } else { b'?' })
        .collect();
    bytes.extend_from_slice(body);
    bytes
}

fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in body.chunks(4096) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

trait ReplaceBody {
    fn replace_body(self, edit: impl FnOnce(String) -> String) -> Send;
}

impl ReplaceBody for Send {
    fn replace_body(self, edit: impl FnOnce(String) -> String) -> Send {
        match self {
            Send::Body(b) => text(edit(String::from_utf8(b).unwrap())),
            other => other,
        }
    }
}

/// The body a row sends, when it is one (to compare with what the webhook read).
fn sent_body(send: &Send) -> Option<&[u8]> {
    match send {
        Send::Body(b) | Send::BodyH2(b) => Some(b),
        Send::Raw(raw) => raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|at| &raw[at + 4..]),
        Send::Request(_) => None,
    }
}

async fn exchange(server: &Server, ca: &str, send: &Send) -> (StatusCode, Bytes) {
    match send {
        Send::Body(b) => send_request(server, ca, false, post(b.clone())).await,
        Send::BodyH2(b) => send_request(server, ca, true, post(b.clone())).await,
        Send::Request(build) => send_request(server, ca, false, build()).await,
        Send::Raw(bytes) => {
            let mut tls = tls_connect(server.addr, client_config(ca, b"http/1.1"))
                .await
                .unwrap();
            tls.write_all(bytes).await.unwrap();
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut buf)).await;
            parse_response(&buf)
        }
    }
}

async fn send_request(
    server: &Server,
    ca: &str,
    h2: bool,
    request: http::Request<Full<Bytes>>,
) -> (StatusCode, Bytes) {
    send(server.addr, ca, h2, request).await
}

/// The final status and body of a raw HTTP/1.x response (after any 100 Continue).
fn parse_response(raw: &[u8]) -> (StatusCode, Bytes) {
    let mut rest = raw;
    loop {
        let text = String::from_utf8_lossy(rest);
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP response: {:?}", &text[..text.len().min(200)]));
        let end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("end of headers")
            + 4;
        if status == 100 {
            rest = &rest[end..];
            continue;
        }
        return (
            StatusCode::from_u16(status).unwrap(),
            Bytes::copy_from_slice(&rest[end..]),
        );
    }
}

/// Checks one answer against its row; returns what went wrong.
fn verify(row: &Row, status: StatusCode, answer: &Bytes) -> Result<(), String> {
    let text = String::from_utf8_lossy(answer);
    let head = head(&text, 300);
    let review_status = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(format!("{what}: {status} {head}"))
        }
    };
    match &row.expect {
        Expect::Status(code, message) => {
            review_status(status == *code, &format!("expected {code}"))?;
            review_status(
                text.contains(message),
                &format!("expected {message:?} in the body"),
            )?;
            review_status(answer.len() < 1024, "a 4xx body under 1 KiB")
        }
        expect => {
            review_status(status == StatusCode::OK, "expected 200")?;
            let review: Value =
                serde_json::from_slice(answer).map_err(|e| format!("{e}: {head}"))?;
            let r = &review["response"];
            review_status(
                review["apiVersion"] == "admission.k8s.io/v1"
                    && review["kind"] == "AdmissionReview",
                "a review",
            )?;
            let sent: Option<Value> =
                sent_body(&row.send).and_then(|b| serde_json::from_slice(b).ok());
            let uid = sent
                .as_ref()
                .map_or(UID, |s| s["request"]["uid"].as_str().unwrap_or(UID));
            review_status(r["uid"] == uid, "the request's uid")?;
            match expect {
                Expect::Unchanged => review_status(
                    r["allowed"] == true && r.get("patch").is_none() && r.get("status").is_none(),
                    "allowed without a patch",
                ),
                Expect::Denied(code, message) => {
                    review_status(r["allowed"] == false && r.get("patch").is_none(), "denied")?;
                    review_status(r["status"]["code"] == *code, &format!("code {code}"))?;
                    review_status(
                        r["status"]["message"]
                            .as_str()
                            .is_some_and(|m| m.contains(message)),
                        &format!("a message with {message:?}"),
                    )
                }
                Expect::Patched => {
                    review_status(
                        r["allowed"] == true && r["patchType"] == "JSONPatch",
                        "patched",
                    )?;
                    let patch = base64::engine::general_purpose::STANDARD
                        .decode(r["patch"].as_str().unwrap_or_default())
                        .map_err(|e| e.to_string())?;
                    let patch: json_patch::Patch =
                        serde_json::from_slice(&patch).map_err(|e| e.to_string())?;
                    let sent = sent.unwrap_or_else(|| elected(|_| {}));
                    let mut pod = sent["request"]["object"].clone();
                    json_patch::patch(&mut pod, &patch)
                        .map_err(|e| format!("the patch does not apply: {e}"))?;
                    let namespace = sent["request"]["namespace"].as_str().unwrap_or_default();
                    let saved = key()
                        .open(
                            namespace,
                            pod["metadata"]["annotations"][SOURCEPOD_MANIFEST]
                                .as_str()
                                .unwrap_or_default(),
                        )
                        .map_err(|e| format!("the saved manifest does not open: {e}"))?;
                    let saved: Value = serde_json::from_str(saved).map_err(|e| e.to_string())?;
                    review_status(
                        saved["spec"] == sent["request"]["object"]["spec"],
                        "the saved spec is the pod's",
                    )?;
                    review_status(
                        pod["metadata"]["labels"][PROXY_LABEL] == "true",
                        "the proxy label",
                    )?;
                    review_status(
                        pod["spec"]["containers"][0]["image"] == "proxy-waiter:test",
                        "waiter containers",
                    )
                }
                Expect::Status(..) => unreachable!(),
            }
        }
    }
}

#[tokio::test]
async fn every_hostile_request_gets_its_expected_answer() {
    let certs = CertDir::new("hostile");
    let server = Server::start(config(&certs, "127.0.0.1:0")).await;
    let rows = catalogue();
    let mut failures = Vec::new();
    for row in &rows {
        let (status, answer) = exchange(&server, &certs.ca_pem, &row.send).await;
        let mut outcome = verify(row, status, &answer);
        if outcome.is_ok() && !matches!(row.send, Send::Raw(_)) {
            let (again_status, again) = exchange(&server, &certs.ca_pem, &row.send).await;
            if (again_status, &again) != (status, &answer) {
                outcome = Err("a second send got another answer".into());
            }
        }
        if let Err(e) = outcome {
            failures.push(format!("{}: {e}", row.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    // The server is still healthy after all of it.
    let (status, _) = send(
        server.addr,
        &certs.ca_pem,
        false,
        post(elected(|_| {}).to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

/// Every row can fail: each expectation rejects the answer of a contrasting row.
#[test]
fn every_row_can_fail() {
    let rows = catalogue();
    let answers = [
        (
            StatusCode::OK,
            Bytes::from(
                r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"hostile-uid","allowed":true}}"#,
            ),
        ),
        (
            StatusCode::OK,
            Bytes::from(
                r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"hostile-uid","allowed":false,"status":{"code":403,"message":"x"}}}"#,
            ),
        ),
        (StatusCode::BAD_REQUEST, Bytes::from("something else\n")),
    ];
    for row in &rows {
        let rejected = answers
            .iter()
            .filter(|(s, a)| verify(row, *s, a).is_err())
            .count();
        assert!(
            rejected >= 2,
            "{}: accepts {} of 3 unrelated answers",
            row.name,
            3 - rejected
        );
    }
}

/// How a slow or silent client must be treated.
struct SlowRow {
    name: &'static str,
    /// Runs the client against the server; returns what happened.
    client: fn(std::net::SocketAddr, String) -> tokio::task::JoinHandle<Slow>,
    expect: SlowExpect,
}

/// What a slow client saw.
#[derive(Debug)]
struct Slow {
    elapsed: Duration,
    response: Vec<u8>,
}

enum SlowExpect {
    /// The server closed the connection, between these many seconds, without answering 2xx.
    ClosedWithin(f64, f64),
    /// The server answered this status within this many seconds.
    Status(u16, &'static str, f64),
}

/// Sends `head` then trickles `trickle` one byte per 100 ms; reads until the server closes.
fn trickle(
    addr: std::net::SocketAddr,
    ca: String,
    alpn: &'static [u8],
    head: Vec<u8>,
    trickle: Vec<u8>,
) -> tokio::task::JoinHandle<Slow> {
    tokio::spawn(async move {
        let tls = tls_connect(addr, client_config(&ca, alpn)).await.unwrap();
        let (mut read, mut write) = tokio::io::split(tls);
        let started = Instant::now();
        write.write_all(&head).await.unwrap();
        let writer = tokio::spawn(async move {
            for byte in trickle {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if write.write_all(&[byte]).await.is_err() {
                    break;
                }
            }
            std::future::pending::<()>().await;
        });
        let mut response = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(12), read.read_to_end(&mut response)).await;
        writer.abort();
        Slow {
            elapsed: started.elapsed(),
            response,
        }
    })
}

const HEADERS: &str =
    "POST /mutate HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\n";

fn slow_catalogue() -> Vec<SlowRow> {
    use SlowExpect::*;
    vec![
        SlowRow {
            name: "headers trickled one byte per 100 ms",
            client: |addr, ca| {
                trickle(
                    addr,
                    ca,
                    b"http/1.1",
                    vec![],
                    format!("{HEADERS}Content-Length: 2\r\n\r\n{{}}").into_bytes(),
                )
            },
            expect: ClosedWithin(0.9, 2.5),
        },
        SlowRow {
            name: "the body trickled one byte per 100 ms",
            client: |addr, ca| {
                trickle(
                    addr,
                    ca,
                    b"http/1.1",
                    format!("{HEADERS}Content-Length: 500\r\n\r\n").into_bytes(),
                    vec![b' '; 500],
                )
            },
            expect: Status(408, "took too long", 2.5),
        },
        SlowRow {
            name: "a body promised by Content-Length and never sent",
            client: |addr, ca| {
                trickle(
                    addr,
                    ca,
                    b"http/1.1",
                    format!("{HEADERS}Content-Length: 500\r\n\r\n{{").into_bytes(),
                    vec![],
                )
            },
            expect: Status(408, "took too long", 2.5),
        },
        SlowRow {
            name: "silent after the TLS handshake, http/1.1",
            client: |addr, ca| trickle(addr, ca, b"http/1.1", vec![], vec![]),
            expect: ClosedWithin(0.9, 2.5),
        },
        SlowRow {
            name: "silent after the TLS handshake, h2",
            client: |addr, ca| trickle(addr, ca, b"h2", vec![], vec![]),
            expect: ClosedWithin(0.9, 2.5),
        },
        SlowRow {
            name: "the HTTP/2 preface, then nothing",
            client: |addr, ca| {
                trickle(
                    addr,
                    ca,
                    b"h2",
                    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
                    vec![],
                )
            },
            expect: ClosedWithin(0.9, 2.5),
        },
        SlowRow {
            name: "the TLS ClientHello trickled one byte per 100 ms",
            client: |addr, ca| {
                tokio::spawn(async move {
                    let mut client = rustls::ClientConnection::new(
                        std::sync::Arc::new(client_config(&ca, b"http/1.1")),
                        rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
                    )
                    .unwrap();
                    let mut hello = Vec::new();
                    client.write_tls(&mut hello).unwrap();
                    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                    let (mut read, mut write) = tcp.into_split();
                    let started = Instant::now();
                    let writer = tokio::spawn(async move {
                        for byte in hello {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            if write.write_all(&[byte]).await.is_err() {
                                break;
                            }
                        }
                        std::future::pending::<()>().await;
                    });
                    let mut response = Vec::new();
                    let _ = tokio::time::timeout(
                        Duration::from_secs(12),
                        read.read_to_end(&mut response),
                    )
                    .await;
                    writer.abort();
                    Slow {
                        elapsed: started.elapsed(),
                        response,
                    }
                })
            },
            expect: ClosedWithin(1.9, 3.5),
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_clients_are_cut_off_at_the_timeouts() {
    let certs = CertDir::new("slow-loris");
    // Header and body reads: 1 s; TLS handshake: 2 s.
    let server = Server::start(config(&certs, "127.0.0.1:0")).await;
    let rows = slow_catalogue();
    let clients: Vec<_> = rows
        .iter()
        .map(|row| (row.client)(server.addr, certs.ca_pem.clone()))
        .collect();
    let mut failures = Vec::new();
    for (row, client) in rows.iter().zip(clients) {
        let slow = client.await.unwrap();
        let secs = slow.elapsed.as_secs_f64();
        let text = String::from_utf8_lossy(&slow.response);
        let ok = match row.expect {
            SlowExpect::ClosedWithin(min, max) => {
                (min..=max).contains(&secs) && !text.contains(" 200 ")
            }
            SlowExpect::Status(code, message, max) => {
                text.starts_with(&format!("HTTP/1.1 {code} "))
                    && text.contains(message)
                    && secs <= max
            }
        };
        if !ok {
            failures.push(format!(
                "{}: after {secs:.2} s: {:?}",
                row.name,
                head(&text, 200)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_clients_at_the_connection_limit_do_not_lock_out_the_kube_apiserver() {
    let certs = CertDir::new("slow-loris-limit");
    let cfg = config(&certs, "127.0.0.1:0");
    let limit = cfg.limits.max_connections;
    let server = Server::start(cfg).await;
    // As many clients as the limit: half trickle their headers for 10 s, half send nothing.
    let slow: Vec<_> = (0..limit)
        .map(|i| {
            let trickled = if i % 2 == 0 {
                HEADERS.repeat(4).into_bytes()
            } else {
                vec![]
            };
            trickle(
                server.addr,
                certs.ca_pem.clone(),
                b"http/1.1",
                vec![],
                trickled,
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let body = review("after-the-storm", "team-a", "CREATE", elected_pod("p")).to_string();
    let (status, answer) = tokio::time::timeout(
        Duration::from_secs(5),
        send(server.addr, &certs.ca_pem, false, post(body)),
    )
    .await
    .expect("answered while slow clients hold every slot");
    assert_eq!(status, StatusCode::OK, "{answer:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    for client in slow {
        let slow = client.await.unwrap();
        assert!(
            slow.elapsed < Duration::from_secs(3),
            "a slow client kept its slot for {:?}",
            slow.elapsed
        );
    }
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_and_are_served_once_a_slot_frees() {
    let certs = CertDir::new("limit");
    let mut cfg = config(&certs, "127.0.0.1:0");
    cfg.limits.max_connections = 4;
    cfg.limits.header_read_timeout = Duration::from_secs(5);
    let server = Server::start(cfg).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(
            tls_connect(server.addr, client_config(&certs.ca_pem, b"http/1.1"))
                .await
                .unwrap(),
        );
    }
    // The fifth connection is not served (its handshake does not complete) while four are open.
    let fifth = tokio::time::timeout(
        Duration::from_millis(700),
        tls_connect(server.addr, client_config(&certs.ca_pem, b"http/1.1")),
    )
    .await;
    assert!(
        fifth.is_err(),
        "a fifth connection was served beyond --max-connections=4"
    );
    // The admin port is a listener of its own: health and metrics still answer.
    let mut admin = tokio::net::TcpStream::connect(server.admin).await.unwrap();
    admin
        .write_all(b"GET /livez HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut livez = String::new();
    admin.read_to_string(&mut livez).await.unwrap();
    assert!(livez.starts_with("HTTP/1.1 200"), "{livez}");
    // Closing one frees a slot for the next client.
    drop(held.pop());
    let body = review("next", "team-a", "CREATE", elected_pod("p")).to_string();
    let (status, _) = tokio::time::timeout(
        Duration::from_secs(3),
        send(server.addr, &certs.ca_pem, false, post(body)),
    )
    .await
    .expect("served once a slot is free");
    assert_eq!(status, StatusCode::OK);
}
