//! The real server over real TLS on loopback: routing, the review protocol, hostile clients,
//! certificate rotation, health, metrics and graceful shutdown.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use common::*;
use http::StatusCode;
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn response(body: &Bytes) -> Value {
    let review: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    review["response"].clone()
}

#[tokio::test]
async fn elected_pods_get_a_patch_over_http1_and_http2() {
    let certs = CertDir::new("patch");
    let server = Server::start(config(&certs, "127.0.0.1:0")).await;
    for h2 in [false, true] {
        let body = review("uid-1", "team-a", "CREATE", fixture("argo-v3-emissary")).to_string();
        let (status, bytes) = send(server.addr, &certs.ca_pem, h2, post(body)).await;
        assert_eq!(status, StatusCode::OK);
        let r = response(&bytes);
        assert_eq!(r["uid"], "uid-1");
        assert_eq!(r["allowed"], true);
        assert_eq!(r["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(r["patch"].as_str().unwrap())
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
        let mut pod = fixture("argo-v3-emissary");
        json_patch::patch(&mut pod, &patch).unwrap();
        assert_eq!(pod["spec"]["containers"][1]["image"], "proxy-waiter:test");
    }
}

#[tokio::test]
async fn everything_but_elected_pod_creation_passes_unchanged() {
    let certs = CertDir::new("unchanged");
    let server = Server::start(config(&certs, "127.0.0.1:0")).await;
    let cases = [
        review("u1", "team-a", "CREATE", fixture("not-elected")),
        review("u2", "team-a", "UPDATE", elected_pod("p")),
        review("u3", "kube-system", "CREATE", elected_pod("p")),
        review("u4", "webhook-system", "CREATE", elected_pod("p")),
        {
            let mut r = review("u5", "team-a", "CREATE", elected_pod("p"));
            r["request"]["kind"] =
                json!({ "group": "apps", "version": "v1", "kind": "Deployment" });
            r
        },
    ];
    for case in cases {
        let (status, bytes) = send(server.addr, &certs.ca_pem, false, post(case.to_string())).await;
        assert_eq!(status, StatusCode::OK);
        let r = response(&bytes);
        assert_eq!(r["uid"], case["request"]["uid"]);
        assert_eq!(r["allowed"], true, "{case}");
        assert!(r.get("patch").is_none(), "{case}");
    }
}

#[tokio::test]
async fn bad_requests_get_clear_4xx_or_denials_never_panics() {
    let certs = CertDir::new("bad");
    let server = Server::start(config(&certs, "127.0.0.1:0")).await;
    let request = |method: http::Method, path: &str, content_type: &str, body: &str| {
        http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    let valid = review("u", "team-a", "CREATE", elected_pod("p")).to_string();
    let mut beta = review("u", "team-a", "CREATE", elected_pod("p"));
    beta["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let cases: Vec<(http::Request<Full<Bytes>>, StatusCode, &str)> = vec![
        (
            request(http::Method::POST, "/other", "application/json", &valid),
            StatusCode::NOT_FOUND,
            "not found",
        ),
        (
            request(http::Method::GET, "/mutate", "application/json", ""),
            StatusCode::METHOD_NOT_ALLOWED,
            "POST",
        ),
        (
            request(http::Method::POST, "/mutate", "text/plain", &valid),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "application/json",
        ),
        (
            post("{\"apiVersion\": "),
            StatusCode::BAD_REQUEST,
            "not an AdmissionReview",
        ),
        (
            post(beta.to_string()),
            StatusCode::BAD_REQUEST,
            "admission.k8s.io/v1",
        ),
        (
            post(r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#),
            StatusCode::BAD_REQUEST,
            "no request",
        ),
        (
            post(
                r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":7}}"#,
            ),
            StatusCode::BAD_REQUEST,
            "not an AdmissionReview",
        ),
        (
            post("x".repeat(2 * 1024 * 1024)),
            StatusCode::PAYLOAD_TOO_LARGE,
            "over",
        ),
    ];
    for (request, expected, message) in cases {
        let (status, body) = send(server.addr, &certs.ca_pem, false, request).await;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, expected, "{body}");
        assert!(body.contains(message), "{expected}: {body}");
    }
    // A valid review with a missing object is answered with a denial, not an HTTP error.
    let mut no_object = review("u-none", "team-a", "CREATE", json!(null));
    no_object["request"]
        .as_object_mut()
        .unwrap()
        .remove("object");
    let (status, bytes) = send(
        server.addr,
        &certs.ca_pem,
        false,
        post(no_object.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let r = response(&bytes);
    assert_eq!(
        (r["uid"].as_str(), r["allowed"].as_bool()),
        (Some("u-none"), Some(false))
    );
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("no pod object")
    );
}

#[tokio::test]
async fn slow_clients_are_cut_off_and_plaintext_is_not_served() {
    let certs = CertDir::new("slow");
    let server = Server::start(config(&certs, "127.0.0.1:0")).await;
    // Headers that never finish: the server closes the connection after its read timeout.
    let mut tls = tls_connect(server.addr, client_config(&certs.ca_pem, b"http/1.1"))
        .await
        .unwrap();
    tls.write_all(b"POST /mutate HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut buf))
        .await
        .expect("connection closed");
    assert!(started.elapsed() < Duration::from_secs(4));

    // A TCP client that never starts TLS is dropped after the handshake timeout.
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /mutate HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf))
        .await
        .expect("closed");
    assert!(
        read.is_err() || !String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"),
        "no plaintext answers"
    );
}

#[tokio::test]
async fn rotated_certificates_are_served_without_a_restart() {
    let mut certs = CertDir::new("rotate");
    let server = Server::start(config(&certs, "127.0.0.1:0")).await;
    let old_ca = certs.ca_pem.clone();
    let body = review("u", "team-a", "CREATE", elected_pod("p")).to_string();
    assert_eq!(
        send(server.addr, &old_ca, false, post(body.clone()))
            .await
            .0,
        StatusCode::OK
    );

    certs.rotate(&["127.0.0.1"]);
    let (status, _) = send(server.addr, &certs.ca_pem, false, post(body.clone())).await;
    assert_eq!(status, StatusCode::OK, "the new certificate is served");
    assert!(
        tls_connect(server.addr, client_config(&old_ca, b"http/1.1"))
            .await
            .is_err(),
        "the old certificate is no longer served"
    );
}

#[tokio::test]
async fn health_metrics_and_graceful_shutdown() {
    let certs = CertDir::new("admin");
    let server = Server::start(config(&certs, "127.0.0.1:0")).await;
    let body = review("u", "team-a", "CREATE", elected_pod("p")).to_string();
    send(server.addr, &certs.ca_pem, false, post(body)).await;
    send(server.addr, &certs.ca_pem, false, post("garbage")).await;

    let get = |path: &'static str| {
        let admin = server.admin;
        async move {
            let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
            tcp.write_all(
                format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut text = String::new();
            tcp.read_to_string(&mut text).await.unwrap();
            text
        }
    };
    assert!(get("/livez").await.starts_with("HTTP/1.1 200"));
    assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
    let metrics = get("/metrics").await;
    assert!(
        metrics.contains(r#"webhook_admission_requests_total{outcome="patched"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"webhook_admission_requests_total{outcome="bad_request"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("webhook_patches_applied_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("webhook_admission_duration_seconds_bucket"),
        "{metrics}"
    );

    // An idle keep-alive connection must not hold shutdown up.
    let _idle = tls_connect(server.addr, client_config(&certs.ca_pem, b"h2"))
        .await
        .unwrap();
    let addr = server.addr;
    tokio::time::timeout(Duration::from_secs(6), server.stop())
        .await
        .expect("drained in time")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}

#[tokio::test]
async fn invalid_certificates_fail_before_binding_with_the_flag_named() {
    let certs = CertDir::new("invalid");
    std::fs::write(certs.dir.join("garbage.crt"), "not a certificate").unwrap();
    let mut cfg = config(&certs, "127.0.0.1:0");
    cfg.tls_cert_file = certs.dir.join("garbage.crt");
    let error = webhook::bind(cfg, provider())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("no PEM certificate"), "{error}");
    let mut cfg = config(&certs, "127.0.0.1:0");
    cfg.tls_private_key_file = certs.dir.join("missing.key");
    let error = webhook::bind(cfg, provider())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("--tls-private-key-file"), "{error}");
}

/// A ClientHello with `version` in its legacy field and no supported_versions extension (how
/// TLS 1.0–1.2 clients offer their version), with what a TLS 1.2 handshake with this server
/// needs: an ECDSA GCM cipher suite, the x25519 group and ECDSA signatures.
fn client_hello(version: [u8; 2]) -> Vec<u8> {
    let extension = |kind: u16, data: &[u8]| {
        let mut e = kind.to_be_bytes().to_vec();
        e.extend((data.len() as u16).to_be_bytes());
        e.extend(data);
        e
    };
    let mut extensions = Vec::new();
    extensions.extend(extension(10, &[0, 2, 0x00, 0x1d])); // supported_groups: x25519
    extensions.extend(extension(11, &[1, 0])); // ec_point_formats: uncompressed
    extensions.extend(extension(13, &[0, 2, 0x04, 0x03])); // signature_algorithms: ecdsa_secp256r1_sha256
    let mut body = Vec::new();
    body.extend(version);
    body.extend([7u8; 32]); // random
    body.push(0); // no session id
    body.extend([0, 2, 0xc0, 0x2b]); // TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    body.extend([1, 0]); // null compression
    body.extend((extensions.len() as u16).to_be_bytes());
    body.extend(extensions);
    let mut handshake = vec![1u8]; // ClientHello
    handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![22u8, 3, 1]; // a handshake record, framed as TLS 1.0 as clients do
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

/// The type of the first record a server answers a ClientHello with and, for an alert,
/// its (level, description).
async fn answer_to(addr: std::net::SocketAddr, hello: &[u8]) -> (u8, Option<(u8, u8)>) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(hello).await.unwrap();
    let mut header = [0u8; 7];
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut header)).await;
    assert!(matches!(read, Ok(Ok(_))), "no answer: {read:?}");
    (
        header[0],
        (header[0] == 21).then_some((header[5], header[6])),
    )
}

#[tokio::test]
async fn tls_below_1_2_is_refused_with_a_protocol_version_alert() {
    const ALERT: u8 = 21;
    const HANDSHAKE: u8 = 22;
    const FATAL: u8 = 2;
    const PROTOCOL_VERSION: u8 = 70;
    let certs = CertDir::new("tls-versions");
    let server = Server::start(config(&certs, "127.0.0.1:0")).await;
    for (name, version) in [
        ("SSL 3.0", [3, 0]),
        ("TLS 1.0", [3, 1]),
        ("TLS 1.1", [3, 2]),
    ] {
        assert_eq!(
            answer_to(server.addr, &client_hello(version)).await,
            (ALERT, Some((FATAL, PROTOCOL_VERSION))),
            "{name}"
        );
    }
    // The very same hello as TLS 1.2 gets a ServerHello: the alerts are about the version.
    assert_eq!(
        answer_to(server.addr, &client_hello([3, 3])).await,
        (HANDSHAKE, None)
    );
    // And a real client limited to TLS 1.2 completes its handshake.
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(certs.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls12_only = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connected = tls_connect(server.addr, tls12_only).await.unwrap();
    assert_eq!(
        connected.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
}
