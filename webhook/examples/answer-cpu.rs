//! CPU cost of answering one AdmissionReview (no network): `answer-cpu [ITERATIONS]`.
//! Used to see where the webhook's time goes; `make bench` measures it end to end.

use std::time::Instant;

use contract::manifest::ManifestKey;
use webhook::{
    mutate::ProxySettings,
    review::{Exclusions, answer},
};

fn main() -> anyhow::Result<()> {
    let iterations: u32 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let pod: serde_json::Value =
        serde_json::from_str(include_str!("../tests/fixtures/argo-v3-emissary.pod.json"))?;
    let body = serde_json::to_vec(&serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": { "uid": "u", "kind": { "group": "", "version": "v1", "kind": "Pod" },
                     "namespace": "team-a", "operation": "CREATE", "object": pod },
    }))?;
    let key = ManifestKey::from_bytes(&[7; 32])?;
    let settings = ProxySettings::default();
    let exclusions = Exclusions {
        namespaces: vec!["kube-system".into()],
    };
    let started = Instant::now();
    let mut bytes = 0;
    for _ in 0..iterations {
        let (response, _, _) = answer(&body, &settings, &key, &exclusions)?;
        bytes += response.len();
    }
    let per_call = started.elapsed() / iterations;
    println!(
        "{per_call:?} per review ({} bytes in, {} bytes out)",
        body.len(),
        bytes / iterations as usize
    );
    Ok(())
}
