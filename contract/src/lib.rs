//! The contract shared by the webhook, `proxy-waiter` and `delegate-sync`.
//!
//! It holds only names and formats, no client or network code, so that `proxy-waiter` can
//! depend on it and stay tiny. The keys are the 2019 design's so that existing workflow
//! YAML keeps working unchanged.

#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod argo;
pub mod downward;
#[cfg(feature = "integrity")]
pub mod manifest;
pub mod relay;
pub mod result;

/// Domain of every annotation and label the product reads or writes.
pub const DOMAIN: &str = "multicluster.admiralty.io";

/// Pod annotation that elects a pod for delegation. Presence is enough; the value is ignored.
pub const ELECT: &str = "multicluster.admiralty.io/elect";

/// Pod annotation that pins the delegate to a named target cluster.
pub const CLUSTER_NAME: &str = "multicluster.admiralty.io/clustername";

/// Proxy annotation holding the original pod, saved by the webhook.
pub const SOURCEPOD_MANIFEST: &str = "multicluster.admiralty.io/sourcepod-manifest";

/// Proxy annotation holding the delegate's result ([`result::DelegateResult`]), written by
/// `delegate-sync` and read by `proxy-waiter` through the downward API.
pub const RESULT: &str = "multicluster.admiralty.io/result";

/// Proxy annotation recording the target cluster delegate-sync chose for the current delegate
/// (removed when a delegate is replaced, see [`RESTARTS`]).
pub const TARGET_CLUSTER: &str = "multicluster.admiralty.io/target-cluster";

/// Proxy annotation recording the name of the delegate once delegate-sync created it.
pub const DELEGATE_NAME: &str = "multicluster.admiralty.io/delegate-name";

/// How many times delegate-sync replaced the delegate of a proxy whose `restartPolicy` is
/// `Always` or `OnFailure` (a decimal number; absent: never). On the proxy, and on each
/// delegate: the number of the replacement it is.
pub const RESTARTS: &str = "multicluster.admiralty.io/restarts";

/// Proxy annotation: when delegate-sync last replaced its delegate (RFC 3339).
pub const RESTARTED_AT: &str = "multicluster.admiralty.io/restarted-at";

/// Proxy annotation: how often each container of the current delegate was restarted by its
/// kubelet, as compact JSON (`{"main":2}`); absent while none was.
pub const CONTAINER_RESTARTS: &str = "multicluster.admiralty.io/container-restarts";

/// Pod annotation: `off` keeps the delegate's log where it is (no relay to the proxy).
pub const LOG_RELAY: &str = "multicluster.admiralty.io/log-relay";

/// Pod annotation: at most this many bytes of each delegate container's log are relayed to
/// the proxy container (a decimal number; the rest stays in the target).
pub const LOG_RELAY_LIMIT_BYTES: &str = "multicluster.admiralty.io/log-relay-limit-bytes";

/// Label on every proxy pod (value `true`).
pub const PROXY_LABEL: &str = "multicluster.admiralty.io/proxy";

/// Finalizer on every proxy pod: delegate-sync deletes the delegate before releasing it.
pub const CLEANUP_FINALIZER: &str = "multicluster.admiralty.io/delegate-cleanup";

/// Namespace label that opts a namespace in to the webhook.
pub const NAMESPACE_OPT_IN_LABEL: &str = "multicluster-scheduler";

/// Value of [`NAMESPACE_OPT_IN_LABEL`] that opts a namespace in.
pub const NAMESPACE_OPT_IN_VALUE: &str = "enabled";

/// Prefix of the pod annotation that tells the Argo Workflows controller how to stop a
/// container: `workflows.argoproj.io/kill-cmd-<container>`, a JSON array of strings whose `%d`
/// becomes the signal number. The webhook sets it for each proxy container (the proxy has none
/// of the binaries Argo's default command names); it belongs to the proxy, so it is never
/// mirrored back from the delegate.
pub const ARGO_KILL_CMD_PREFIX: &str = "workflows.argoproj.io/kill-cmd-";

/// Longest name part (after the `/`) of an annotation key that Kubernetes accepts.
const ANNOTATION_NAME_LIMIT: usize = 63;

/// The annotation key Argo reads for `container`'s kill command, or `None` when that key would
/// not be a valid annotation key (Kubernetes would then refuse the whole pod): its name part
/// must be at most 63 characters of `[A-Za-z0-9._-]`, ending alphanumeric.
pub fn argo_kill_cmd_key(container: &str) -> Option<alloc::string::String> {
    let key = alloc::format!("{ARGO_KILL_CMD_PREFIX}{container}");
    let (_, name) = key.split_once('/')?;
    let valid = name.len() <= ANNOTATION_NAME_LIMIT
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    valid.then_some(key)
}

/// True for an [`ARGO_KILL_CMD_PREFIX`] key: the proxy's own, never copied from the delegate.
pub fn is_argo_kill_cmd_key(key: &str) -> bool {
    key.starts_with(ARGO_KILL_CMD_PREFIX)
}

/// True when `key` is one of the product's own annotation or label keys (exactly under
/// [`DOMAIN`]; subdomains such as the test bed's are not the product's).
pub fn is_own_key(key: &str) -> bool {
    key.split_once('/')
        .is_some_and(|(prefix, _)| prefix == DOMAIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_live_under_the_product_domain() {
        for key in [
            ELECT,
            CLUSTER_NAME,
            SOURCEPOD_MANIFEST,
            RESTARTS,
            CONTAINER_RESTARTS,
        ] {
            assert!(is_own_key(key), "{key}");
        }
    }

    #[test]
    fn argo_kill_cmd_keys_are_valid_annotation_keys_or_none() {
        assert_eq!(
            argo_kill_cmd_key("main").as_deref(),
            Some("workflows.argoproj.io/kill-cmd-main")
        );
        assert!(is_argo_kill_cmd_key(&argo_kill_cmd_key("wait").unwrap()));
        let longest = "c".repeat(54);
        assert!(argo_kill_cmd_key(&longest).is_some());
        assert_eq!(argo_kill_cmd_key(&(longest + "c")), None);
        for invalid in ["", "a/b", "ends-", "sp ace", "é"] {
            assert_eq!(argo_kill_cmd_key(invalid), None, "{invalid:?}");
        }
        assert!(!is_argo_kill_cmd_key("workflows.argoproj.io/outputs"));
    }

    #[test]
    fn foreign_keys_are_not_ours() {
        assert!(!is_own_key("workflows.argoproj.io/outputs"));
        assert!(!is_own_key("evilmulticluster.admiralty.io/elect"));
        assert!(!is_own_key("multicluster.admiralty.io"));
        assert!(!is_own_key("testbed.multicluster.admiralty.io/run-for"));
    }
}

/// Extension of a target kubeconfig's context (written by `certs bootstrap-target
/// --token-lifetime`, read by delegate-sync): the context's user is a requester that may only
/// request tokens for one ServiceAccount, and delegate-sync acts with short-lived tokens of
/// that account. Its value is a [`TokenRequestExtension`].
pub const TOKEN_REQUEST_EXTENSION: &str = "multicluster.admiralty.io/token-request";

/// The value of [`TOKEN_REQUEST_EXTENSION`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenRequestExtension {
    /// `namespace/name` of the ServiceAccount delegate-sync acts as in the target.
    pub service_account: alloc::string::String,
    /// How long each token lives (at least 1 second).
    pub expiration_seconds: u64,
    /// The requester's token Secret (in the ServiceAccount's namespace) the tokens are bound
    /// to: deleting it revokes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_secret: Option<alloc::string::String>,
}

/// A Go-style duration of whole units: `90s`, `15m`, `1h30m`.
pub fn parse_duration(text: &str) -> Result<core::time::Duration, alloc::string::String> {
    let bad = || alloc::format!("{text:?} is not a duration like 90s, 15m or 1h30m");
    let mut total = 0u64;
    let mut digits = alloc::string::String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(bad()),
        };
        let value: u64 = digits.parse().map_err(|_| bad())?;
        total = value
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        digits.clear();
    }
    if !digits.is_empty() || text.is_empty() {
        return Err(bad());
    }
    Ok(core::time::Duration::from_secs(total))
}

/// Namespace label (value `true`) of a source cluster: delegate-sync copies the ConfigMaps and
/// Secrets its pods reference into their delegates' namespaces (with `--copy-references`).
pub const COPY_REFERENCES_LABEL: &str = "multicluster.admiralty.io/copy-references";
