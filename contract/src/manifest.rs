//! The saved manifest: the original pod, stored by the webhook in annotation
//! [`SOURCEPOD_MANIFEST`](crate::SOURCEPOD_MANIFEST) and verified by delegate-sync before it
//! becomes a delegate, so that an edit by the pod's owner after admission never runs anywhere.
//!
//! Format: `v1.<MAC>.<compact JSON>`, where MAC is HMAC-SHA256 (base64url, no padding) over a
//! domain-separation tag, the pod's namespace and the JSON. Binding the namespace stops a
//! manifest copied from another namespace's pod from verifying. The JSON stays readable with
//! `kubectl get pod -o yaml`.

use alloc::{format, string::String, vec::Vec};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::hmac;

const VERSION: &str = "v1";
const TAG: &[u8] = b"multicluster.admiralty.io/sourcepod-manifest/v1\0";
/// Keys shorter than this are refused: HMAC-SHA256 wants at least 256 bits.
pub const MIN_KEY_BYTES: usize = 32;

/// Why a manifest or key cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("the integrity key has {0} bytes; at least {MIN_KEY_BYTES} are required")]
    ShortKey(usize),
    #[error("the saved manifest is not in the `v1.<mac>.<json>` format")]
    Malformed,
    #[error("the saved manifest has format {0:?}; this build reads v1 only")]
    UnknownVersion(String),
    #[error(
        "the saved manifest does not verify: it was edited after admission or signed with another key"
    )]
    BadSignature,
}

impl ManifestError {
    /// A bounded label for metrics and Event reasons.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::ShortKey(_) => "short_key",
            Self::Malformed => "malformed",
            Self::UnknownVersion(_) => "unknown_version",
            Self::BadSignature => "bad_signature",
        }
    }
}

/// A key shared by the webhook (signs) and delegate-sync (verifies).
#[derive(Clone)]
pub struct ManifestKey(hmac::Key);

impl core::fmt::Debug for ManifestKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ManifestKey(..)")
    }
}

impl ManifestKey {
    /// A key from the bytes of a key file (surrounding whitespace ignored, so a trailing
    /// newline does not change the key).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ManifestError> {
        let trimmed = bytes.trim_ascii();
        if trimmed.len() < MIN_KEY_BYTES {
            return Err(ManifestError::ShortKey(trimmed.len()));
        }
        Ok(Self(hmac::Key::new(hmac::HMAC_SHA256, trimmed)))
    }

    /// Seals the pod JSON saved for a pod of `namespace`.
    pub fn seal(&self, namespace: &str, json: &str) -> String {
        let tag =
            URL_SAFE_NO_PAD.encode(hmac::sign(&self.0, &signed_message(namespace, json)).as_ref());
        format!("{VERSION}.{tag}.{json}")
    }

    /// The pod JSON of a sealed manifest, if it verifies for `namespace` under this key.
    pub fn open<'a>(&self, namespace: &str, sealed: &'a str) -> Result<&'a str, ManifestError> {
        open_with_any(core::slice::from_ref(self), namespace, sealed)
    }
}

/// Verifies with any of `keys` (the current key first, then keys being rotated out).
pub fn open_with_any<'a>(
    keys: &[ManifestKey],
    namespace: &str,
    sealed: &'a str,
) -> Result<&'a str, ManifestError> {
    let (version, rest) = sealed.split_once('.').ok_or(ManifestError::Malformed)?;
    if version != VERSION {
        if version.len() <= 8 && version.starts_with('v') {
            return Err(ManifestError::UnknownVersion(version.into()));
        }
        return Err(ManifestError::Malformed);
    }
    let (tag, json) = rest.split_once('.').ok_or(ManifestError::Malformed)?;
    let tag: Vec<u8> = URL_SAFE_NO_PAD
        .decode(tag)
        .map_err(|_| ManifestError::Malformed)?;
    let message = signed_message(namespace, json);
    let verifies = |key: &ManifestKey| hmac::verify(&key.0, &message, &tag).is_ok();
    if keys.iter().any(verifies) {
        Ok(json)
    } else {
        Err(ManifestError::BadSignature)
    }
}

/// What the MAC covers: a domain-separation tag, the namespace, and the JSON.
fn signed_message(namespace: &str, json: &str) -> Vec<u8> {
    let mut message = Vec::with_capacity(TAG.len() + namespace.len() + 1 + json.len());
    message.extend_from_slice(TAG);
    message.extend_from_slice(namespace.as_bytes());
    message.push(0);
    message.extend_from_slice(json.as_bytes());
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> ManifestKey {
        ManifestKey::from_bytes(&[byte; 32]).unwrap()
    }

    const POD: &str =
        r#"{"metadata":{"name":"p"},"spec":{"containers":[{"name":"main","image":"busybox"}]}}"#;

    #[test]
    fn a_sealed_manifest_opens_in_its_namespace_only() {
        let sealed = key(1).seal("team-a", POD);
        assert!(sealed.starts_with("v1."));
        assert!(sealed.ends_with(POD), "the JSON stays readable");
        assert_eq!(key(1).open("team-a", &sealed), Ok(POD));
        assert_eq!(
            key(1).open("team-b", &sealed),
            Err(ManifestError::BadSignature)
        );
        assert_eq!(
            key(2).open("team-a", &sealed),
            Err(ManifestError::BadSignature)
        );
    }

    #[test]
    fn any_edit_breaks_the_seal() {
        let sealed = key(1).seal("ns", POD);
        let edited = sealed.replace("busybox", "evil/miner");
        assert_eq!(key(1).open("ns", &edited), Err(ManifestError::BadSignature));
        let mut flipped = sealed.clone().into_bytes();
        flipped[5] ^= 1;
        let flipped = String::from_utf8(flipped).unwrap();
        assert!(key(1).open("ns", &flipped).is_err());
    }

    #[test]
    fn rotation_accepts_any_listed_key() {
        let sealed = key(1).seal("ns", POD);
        assert_eq!(open_with_any(&[key(2), key(1)], "ns", &sealed), Ok(POD));
        assert_eq!(
            open_with_any(&[], "ns", &sealed),
            Err(ManifestError::BadSignature)
        );
    }

    #[test]
    fn malformed_versions_and_short_keys_are_refused() {
        assert_eq!(key(1).open("ns", "garbage"), Err(ManifestError::Malformed));
        assert_eq!(
            key(1).open("ns", "v1.***.{}"),
            Err(ManifestError::Malformed)
        );
        assert_eq!(
            key(1).open("ns", "v2.abc.{}"),
            Err(ManifestError::UnknownVersion("v2".into()))
        );
        assert_eq!(
            ManifestKey::from_bytes(b"short\n").unwrap_err(),
            ManifestError::ShortKey(5)
        );
        let padded = [b"  ".as_slice(), &[7u8; 32], b"\n"].concat();
        assert_eq!(
            ManifestKey::from_bytes(&padded).unwrap().seal("n", "{}"),
            key(7).seal("n", "{}")
        );
    }
}
