//! Hostile-input fuzzing of the webhook's review handling (parse → decide → patch, through
//! [`webhook::review::answer`], the function that turns request bytes into response bytes) and
//! of the contract's decoders (saved manifest, result, downward-API projection).
//!
//! - [`targets`]: the properties checked on each input, beyond "no panic".
//! - [`mutator`] and [`seeds`]: structure-aware mutations of the golden fixtures and
//!   hand-made hostile inputs.
//! - [`runner`]: a deterministic, seeded run of N inputs per target on stable Rust (the smoke
//!   test in `cargo test`, and `fuzz run`).
//! - `libfuzzer/`: the same targets and mutator under libFuzzer's coverage guidance
//!   (`make fuzz`).
//!
//! See `docs/reliability.md`.

pub mod mutator;
pub mod rng;
pub mod runner;
pub mod seeds;
pub mod targets;

use contract::{CLEANUP_FINALIZER, ELECT, PROXY_LABEL, SOURCEPOD_MANIFEST};
use serde_json::Value;
use webhook::mutate::{Mutation, mutate};

use crate::{
    mutator::{JSON_TOKENS, Shape, mutate_json, mutate_text, mutate_tree, render},
    rng::Rng,
};

/// What is fuzzed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// `webhook::review::answer`: an AdmissionReview body in, a response out.
    Webhook,
    /// `contract::manifest`: sealing and opening saved manifests, key files.
    Manifest,
    /// `contract::result`: `DelegateResult::decode`, `encode`, `outcome_for`.
    Result,
    /// `contract::downward`: the kubelet's projection of annotations, Go-quoted.
    Downward,
}

impl Target {
    pub const ALL: [Self; 4] = [Self::Webhook, Self::Manifest, Self::Result, Self::Downward];

    pub fn name(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Manifest => "manifest",
            Self::Result => "result",
            Self::Downward => "downward",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Largest input worth generating: the webhook's bodies must be able to pass the 256 KiB
    /// annotation limit; the decoders' inputs are small.
    pub fn max_len(self) -> usize {
        match self {
            Self::Webhook => 512 * 1024,
            Self::Manifest | Self::Result | Self::Downward => 8 * 1024,
        }
    }

    /// Checks every property on `input`; panics on a violation. Returns a short class of
    /// what happened.
    pub fn check(self, input: &[u8]) -> String {
        match self {
            Self::Webhook => targets::webhook(input),
            Self::Manifest => targets::manifest(input),
            Self::Result => targets::result(input),
            Self::Downward => targets::downward(input),
        }
    }

    /// The seed inputs.
    pub fn seeds(self) -> &'static [Vec<u8>] {
        seeds::bytes(self)
    }

    /// A structure-aware mutation of `input` (or of a seed).
    pub fn mutate(self, input: &[u8], rng: &mut Rng, max_len: usize) -> Vec<u8> {
        let mut mutated = match self {
            Self::Webhook if rng.one_in(12) => become_proxy(input, rng),
            Self::Webhook => mutate_json(input, rng, &WEBHOOK, seeds::webhook_values(), max_len),
            Self::Result if rng.one_in(3) => {
                mutate_text(input, rng, self.seeds(), JSON_TOKENS, max_len)
            }
            Self::Result => mutate_json(input, rng, &RESULT, seeds::result_values(), max_len),
            Self::Manifest => mutate_text(input, rng, self.seeds(), MANIFEST_TOKENS, max_len),
            Self::Downward => mutate_text(input, rng, self.seeds(), DOWNWARD_TOKENS, max_len),
        };
        mutated.truncate(max_len);
        mutated
    }
}

/// The review with its pod turned into a proxy by the webhook itself (a genuine proxy), then
/// sometimes changed: re-admissions, tampered manifests, proxies moved between namespaces.
fn become_proxy(input: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut review = serde_json::from_slice::<Value>(input)
        .unwrap_or_else(|_| rng.pick(seeds::webhook_values()).clone());
    let namespace = review["request"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if let Some(pod) = review.get_mut("request").and_then(|r| r.get_mut("object"))
        && let Mutation::Patch(patch) = mutate(pod, &namespace, targets::settings(), targets::key())
    {
        let _ = json_patch::patch(pod, &patch);
    }
    if rng.one_in(2) {
        mutate_tree(&mut review, rng, &WEBHOOK, seeds::webhook_values());
    }
    let duplicates = rng.one_in(6);
    render(&review, rng, duplicates)
}

macro_rules! paths {
    ($($path:expr),* $(,)?) => { &[$($path),*] };
}

/// What the webhook reads.
const WEBHOOK: Shape = Shape {
    hot_paths: paths![
        &["apiVersion"],
        &["kind"],
        &["request"],
        &["request", "uid"],
        &["request", "kind"],
        &["request", "kind", "group"],
        &["request", "kind", "version"],
        &["request", "kind", "kind"],
        &["request", "subResource"],
        &["request", "namespace"],
        &["request", "operation"],
        &["request", "object"],
        &["request", "object", "metadata"],
        &["request", "object", "metadata", "name"],
        &["request", "object", "metadata", "generateName"],
        &["request", "object", "metadata", "annotations"],
        &["request", "object", "metadata", "annotations", ELECT],
        &[
            "request",
            "object",
            "metadata",
            "annotations",
            SOURCEPOD_MANIFEST
        ],
        &[
            "request",
            "object",
            "metadata",
            "annotations",
            "kubectl.kubernetes.io/last-applied-configuration"
        ],
        &["request", "object", "metadata", "labels"],
        &["request", "object", "metadata", "labels", PROXY_LABEL],
        &["request", "object", "metadata", "finalizers"],
        &["request", "object", "spec"],
        &["request", "object", "spec", "containers"],
        &["request", "object", "spec", "containers", "0"],
        &["request", "object", "spec", "containers", "0", "name"],
        &[
            "request",
            "object",
            "spec",
            "containers",
            "0",
            "terminationMessagePath"
        ],
        &["request", "object", "spec", "initContainers"],
        &[
            "request",
            "object",
            "spec",
            "initContainers",
            "0",
            "restartPolicy"
        ],
        &["request", "object", "spec", "tolerations"],
    ],
    words: &[
        "admission.k8s.io/v1",
        "admission.k8s.io/v1beta1",
        "AdmissionReview",
        "v1",
        "Pod",
        "pods",
        "apps",
        "CREATE",
        "UPDATE",
        "DELETE",
        "CONNECT",
        "status",
        "ephemeralcontainers",
        "kube-system",
        "webhook-system",
        "team-a",
        "main",
        "Always",
        "true",
        ELECT,
        SOURCEPOD_MANIFEST,
        PROXY_LABEL,
        CLEANUP_FINALIZER,
        "metadata",
        "annotations",
        "labels",
        "finalizers",
        "spec",
        "containers",
        "initContainers",
        "name",
        "uid",
        "object",
        "request",
        "apiVersion",
        "kind",
    ],
};

/// What the result decoder reads.
const RESULT: Shape = Shape {
    hot_paths: paths![
        &["v"],
        &["phase"],
        &["reason"],
        &["message"],
        &["containers"],
        &["containers", "main"],
        &["containers", "main", "exitCode"],
        &["containers", "main", "reason"],
        &["containers", "main", "message"],
    ],
    words: &[
        "v",
        "phase",
        "Succeeded",
        "Failed",
        "Running",
        "reason",
        "message",
        "containers",
        "main",
        "wait",
        "exitCode",
        "DelegateLost",
        "OOMKilled",
    ],
};

const MANIFEST_TOKENS: &[&[u8]] = &[
    b"\n",
    b".",
    b"v1.",
    b"v2.",
    b"v1..",
    b"{}",
    b"\"",
    b"\x00",
    b"=",
    b"+/",
    b"-_",
    b"AAAA",
    b"\xff",
    b"team-a\n",
    b"\r\n",
];

const DOWNWARD_TOKENS: &[&[u8]] = &[
    b"\\x",
    b"\\xff",
    b"\\xc3\\xa9",
    b"\\u",
    b"\\ud800",
    b"\\u00e9",
    b"\\U",
    b"\\U00110000",
    b"\\U0001F600",
    b"\\777",
    b"\\377",
    b"\\0",
    b"\\",
    b"\"",
    b"=",
    b"\n",
    b"\r",
    b"\\q",
    b"\xff",
];

/// libFuzzer's custom mutator for `target` (see `libfuzzer/`): half the time libFuzzer's own
/// byte-level mutation (`default`), half the time the structure-aware one.
pub fn libfuzzer_mutate(
    target: Target,
    data: &mut [u8],
    size: usize,
    max_size: usize,
    seed: u32,
    default: impl FnOnce(&mut [u8], usize, usize) -> usize,
) -> usize {
    let mut rng = Rng::new(u64::from(seed));
    if rng.one_in(2) {
        return default(data, size, max_size);
    }
    let (size, max_size) = (size.min(data.len()), max_size.min(data.len()));
    let mutated = target.mutate(&data[..size], &mut rng, max_size);
    data[..mutated.len()].copy_from_slice(&mutated);
    mutated.len()
}
