//! A target's credentials, kept current while delegate-sync runs.
//!
//! - The kubeconfig file is read again when it changes (a Secret volume swaps its `..data`
//!   link when the Secret is updated): new requests use the new credentials at once, requests
//!   and watches in flight finish on the old ones. A file that does not load keeps the old
//!   credentials, with a Warning Event and a metric.
//! - A kubeconfig whose context carries the [`TOKEN_REQUEST_EXTENSION`] holds a credential
//!   that may only request tokens (`serviceaccounts/token`) for one ServiceAccount of the
//!   target. delegate-sync acts with short-lived tokens of that account, renewed at 80 % of
//!   their life and never used past it. Each token is bound to the requester's token Secret,
//!   so that deleting that one Secret in the target revokes every token at once.
//!
//! Every target's [`kube::Client`] forwards each request to the client built from the
//! credentials current at that moment, so caches and watches never need restarting.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    task::{Context, Poll},
    time::Duration,
};

use contract::{TOKEN_REQUEST_EXTENSION, TokenRequestExtension};
use futures::future::BoxFuture;
use http::{Request, Response};
use k8s_openapi::{
    api::{
        authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
        core::v1::{ObjectReference, ServiceAccount},
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::PostParams,
    client::Body,
    config::{AuthInfo, KubeConfigOptions, Kubeconfig},
    runtime::events::{Event, EventType, Recorder},
};
use tokio::time::Instant;

use crate::metrics::Metrics;

/// How often the kubeconfig file is looked at (a Secret volume's update takes up to about a
/// minute to reach the file; this adds at most this much).
pub const RELOAD_EVERY: Duration = Duration::from_secs(10);

/// A token is renewed once this share of its life has passed.
const RENEW_AT: f64 = 0.8;

/// The shortest token the apiserver issues (`expirationSeconds` below it is refused). Shorter
/// lifetimes are still honoured here: the token is renewed and dropped on their schedule.
const SHORTEST_ISSUED: Duration = Duration::from_secs(600);

/// After a failed token request, the next attempt.
const RETRY_EVERY: Duration = Duration::from_secs(5);

/// Why a target's credentials could not be loaded or renewed.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a usable kubeconfig: {detail}")]
    Kubeconfig { path: PathBuf, detail: String },
    #[error("{path}: extension {TOKEN_REQUEST_EXTENSION} of the context: {detail}")]
    Extension { path: PathBuf, detail: String },
    #[error("cannot request a token for ServiceAccount {service_account}: {detail}")]
    TokenRequest {
        service_account: String,
        detail: String,
    },
}

/// `namespace` and `name` of the account the extension names, when it names one.
fn account(spec: &TokenRequestExtension) -> Option<(&str, &str)> {
    spec.service_account
        .split_once('/')
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
}

/// A kubeconfig file, loaded.
struct Loaded {
    config: kube::Config,
    token_request: Option<TokenRequestExtension>,
}

/// The token-request extension of the context `context` (or the current one), if any.
fn token_request_of(
    kubeconfig: &Kubeconfig,
    path: &Path,
    context: Option<&str>,
) -> Result<Option<TokenRequestExtension>, CredentialError> {
    let name = context.or(kubeconfig.current_context.as_deref());
    let Some(named) = kubeconfig
        .contexts
        .iter()
        .find(|c| Some(c.name.as_str()) == name)
    else {
        return Ok(None);
    };
    let Some(extension) = named
        .context
        .as_ref()
        .and_then(|c| c.extensions.as_ref())
        .and_then(|e| e.iter().find(|e| e.name == TOKEN_REQUEST_EXTENSION))
    else {
        return Ok(None);
    };
    let bad = |detail: String| CredentialError::Extension {
        path: path.to_path_buf(),
        detail,
    };
    let spec: TokenRequestExtension =
        serde_json::from_value(extension.extension.clone()).map_err(|e| bad(e.to_string()))?;
    if account(&spec).is_none() {
        return Err(bad(format!(
            "serviceAccount {:?} is not namespace/name",
            spec.service_account
        )));
    }
    if spec.expiration_seconds == 0 {
        return Err(bad("expirationSeconds must be at least 1".into()));
    }
    Ok(Some(spec))
}

/// The kubeconfig at `path`, read as kube reads one (paths in it relative to its directory).
async fn parse(path: &Path, context: Option<&str>) -> Result<Loaded, CredentialError> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| CredentialError::Kubeconfig {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let token_request = token_request_of(&kubeconfig, path, context)?;
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| CredentialError::Kubeconfig {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    Ok(Loaded {
        config,
        token_request,
    })
}

fn build(config: kube::Config, path: &Path) -> Result<Client, CredentialError> {
    Client::try_from(config).map_err(|e| CredentialError::Kubeconfig {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

/// A token, and when it is renewed and dropped.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub renew_at: Instant,
    pub expires_at: Instant,
}

/// The soonest a token is renewed after it was issued, whatever its life: a clock or an
/// apiserver that says a token is already expired must not make a loop of token requests.
const SOONEST_RENEWAL: Duration = Duration::from_secs(1);

/// When to renew and drop a token issued now for `issued_for` (the apiserver's word) when
/// `wanted` was asked for: the shorter of the two is its life.
pub fn schedule(now: Instant, wanted: Duration, issued_for: Duration) -> Schedule {
    let life = wanted.min(issued_for).max(SOONEST_RENEWAL);
    Schedule {
        renew_at: now + life.mul_f64(RENEW_AT).max(SOONEST_RENEWAL),
        expires_at: now + life,
    }
}

/// A short-lived token of the account the spec names, through the requester's client.
async fn request_token(
    requester: &Client,
    spec: &TokenRequestExtension,
) -> Result<(String, Schedule, Timestamp), CredentialError> {
    let (namespace, name) = account(spec).unwrap_or_default();
    let failed = |detail: String| CredentialError::TokenRequest {
        service_account: spec.service_account.clone(),
        detail,
    };
    let wanted = Duration::from_secs(spec.expiration_seconds);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(
                i64::try_from(wanted.max(SHORTEST_ISSUED).as_secs()).unwrap_or(i64::MAX),
            ),
            bound_object_ref: spec
                .bound_secret
                .as_ref()
                .map(|secret| BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Secret".into()),
                    name: Some(secret.clone()),
                    uid: None,
                }),
        },
        ..Default::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(requester.clone(), namespace);
    let asked = Instant::now();
    let issued =
        crate::targets::bounded(api.create_token_request(name, &PostParams::default(), &request))
            .await
            .map_err(|e| failed(e.to_string()))?;
    let status = issued
        .status
        .ok_or_else(|| failed("the apiserver returned no token".into()))?;
    let expiry = status.expiration_timestamp.0;
    // The lifetime the apiserver granted, from its answer: comparing its expiry with this
    // machine's clock would count any clock skew against the token.
    let issued_for = issued
        .spec
        .expiration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(wanted, Duration::from_secs);
    Ok((status.token, schedule(asked, wanted, issued_for), expiry))
}

/// Why a call to a target was not sent: no credentials to send it with.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NoCredentials(Arc<str>);

/// The client in use for a target, or why there is none.
type Slot = Arc<RwLock<Result<Client, Arc<str>>>>;

/// The [`tower_service::Service`] under a target's [`Client`]: each request goes to the
/// client in the slot at that moment.
#[derive(Clone)]
struct Current(Slot);

impl tower_service::Service<Request<Body>> for Current {
    type Response = Response<Body>;
    type Error = kube::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, kube::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let current = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        Box::pin(async move {
            match current {
                Ok(client) => client.send(request).await,
                Err(why) => Err(kube::Error::Service(Box::new(NoCredentials(why)))),
            }
        })
    }
}

/// Where a Warning about a target's credentials goes: delegate-sync's own pod.
#[derive(Clone)]
pub struct Notice {
    pub recorder: Recorder,
    pub pod: ObjectReference,
}

impl Notice {
    /// delegate-sync's pod from POD_NAME and POD_NAMESPACE (the chart sets both), if known.
    pub fn from_env(source: &Client) -> Option<Self> {
        let name = std::env::var("POD_NAME").ok()?;
        let namespace = std::env::var("POD_NAMESPACE").ok()?;
        let reporter = kube::runtime::events::Reporter {
            controller: "delegate-sync".into(),
            instance: Some(name.clone()),
        };
        Some(Self {
            recorder: Recorder::new(source.clone(), reporter),
            pod: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(name),
                namespace: Some(namespace),
                ..Default::default()
            },
        })
    }

    async fn warn(&self, reason: &str, note: String) {
        let event = Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(note),
            action: "LoadCredentials".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &self.pod).await {
            tracing::warn!("cannot publish event {reason}: {e}");
        }
    }
}

/// A target's kubeconfig file and what was made of it.
struct Keeper {
    target: String,
    path: PathBuf,
    context: Option<String>,
    slot: Slot,
    metrics: Arc<Metrics>,
    notice: Option<Notice>,
    /// The file's text last loaded, so that an unchanged file is not loaded again.
    seen: Option<String>,
    /// Why the file last failed to load, so that a failure is reported once, not every look.
    refused: Option<String>,
    /// Token mode: the requester's client and spec, and the current token's schedule (None
    /// until one was issued).
    requester: Option<(Client, kube::Config, TokenRequestExtension)>,
    token: Option<Schedule>,
}

/// The client delegate-sync uses for a target whose credentials are in the kubeconfig at
/// `path`, kept current by a task of its own. When the file cannot be loaded now, the client
/// fails every call with the reason until it can.
pub async fn client(
    target: &str,
    path: &Path,
    context: Option<&str>,
    metrics: Arc<Metrics>,
    notice: Option<Notice>,
) -> Client {
    let slot: Slot = Arc::new(RwLock::new(Err(Arc::from("credentials not loaded yet"))));
    let mut keeper = Keeper {
        target: target.to_string(),
        path: path.to_path_buf(),
        context: context.map(str::to_string),
        slot: slot.clone(),
        metrics,
        notice,
        seen: None,
        refused: None,
        requester: None,
        token: None,
    };
    keeper.reload().await;
    tokio::spawn(async move { keeper.run().await });
    Client::new(Current(slot), "default")
}

impl Keeper {
    async fn run(mut self) {
        loop {
            let next_look = Instant::now() + RELOAD_EVERY;
            let wake = match (&self.requester, self.token) {
                (Some(_), Some(token)) => next_look.min(token.renew_at),
                (Some(_), None) => Instant::now() + RETRY_EVERY,
                _ => next_look,
            };
            tokio::time::sleep_until(wake).await;
            self.reload().await;
            self.renew_if_due().await;
        }
    }

    fn install(&self, client: Result<Client, Arc<str>>) {
        *self.slot.write().unwrap_or_else(|e| e.into_inner()) = client;
    }

    fn label(&self) -> crate::metrics::ClusterLabel {
        Metrics::cluster(&self.target)
    }

    /// Loads the file if it changed since it was last loaded. A file that does not load is
    /// tried again at every look (a file it references may appear), and reported once.
    async fn reload(&mut self) {
        let text = match tokio::fs::read_to_string(&self.path).await {
            Ok(text) => text,
            Err(source) => {
                let error = CredentialError::Read {
                    path: self.path.clone(),
                    source,
                };
                return self.refuse(error).await;
            }
        };
        if self.seen.as_ref() == Some(&text) {
            return;
        }
        let loaded = match parse(&self.path, self.context.as_deref()).await {
            Ok(loaded) => loaded,
            Err(error) => return self.refuse(error).await,
        };
        let first = self.seen.is_none();
        self.seen = Some(text);
        self.refused = None;
        match loaded.token_request {
            None => match build(loaded.config, &self.path) {
                Ok(client) => {
                    self.requester = None;
                    self.token = None;
                    self.install(Ok(client));
                    self.loaded(first);
                }
                Err(error) => self.refuse(error).await,
            },
            Some(spec) => {
                let requester_config = loaded.config.clone();
                match build(loaded.config, &self.path) {
                    Ok(requester) => {
                        self.requester = Some((requester, requester_config, spec));
                        // A new requester (a rotation) binds tokens to its own Secret: renew
                        // now, keeping the token in use until a new one comes or it expires.
                        if let Some(token) = &mut self.token {
                            token.renew_at = Instant::now();
                        }
                        self.renew().await;
                        self.loaded(first);
                    }
                    Err(error) => self.refuse(error).await,
                }
            }
        }
    }

    fn loaded(&self, first: bool) {
        if !first {
            self.metrics
                .credential_reloads
                .get_or_create(&self.label())
                .inc();
            tracing::info!(target = %self.target, path = %self.path.display(), "target credentials reloaded");
        }
    }

    /// A file that does not load: the credentials in use stay (or, at start, there are none).
    /// Reported once per reason.
    async fn refuse(&mut self, error: CredentialError) {
        let reason = error.to_string();
        if self.refused.as_ref() == Some(&reason) {
            return;
        }
        self.refused = Some(reason);
        self.metrics
            .credential_errors
            .get_or_create(&self.label())
            .inc();
        let keeping = self.slot.read().unwrap_or_else(|e| e.into_inner()).is_ok();
        let note = match keeping {
            true => format!(
                "target {}: {error}; keeping the credentials loaded before",
                self.target
            ),
            false => format!(
                "target {}: {error}; no credentials for it until the file is fixed",
                self.target
            ),
        };
        tracing::warn!(target = %self.target, "{note}");
        if !keeping {
            self.install(Err(Arc::from(note.as_str())));
        }
        if let Some(notice) = &self.notice {
            notice.warn("TargetCredentialInvalid", note).await;
        }
    }

    async fn renew_if_due(&mut self) {
        if self.requester.is_none() {
            return;
        }
        match self.token {
            Some(token) if Instant::now() < token.renew_at => {}
            _ => self.renew().await,
        }
    }

    /// Requests a token; on failure keeps the current one until its expiry, then drops it.
    async fn renew(&mut self) {
        let Some((requester, config, spec)) = &self.requester else {
            return;
        };
        match request_token(requester, spec).await {
            Ok((token, schedule, expiry)) => {
                let mut config = config.clone();
                config.auth_info = AuthInfo {
                    token: Some(token.into()),
                    ..Default::default()
                };
                match build(config, &self.path) {
                    Ok(client) => {
                        self.install(Ok(client));
                        self.token = Some(schedule);
                        self.metrics
                            .token_renewals
                            .get_or_create(&self.label())
                            .inc();
                        self.metrics
                            .token_expiry
                            .get_or_create(&self.label())
                            .set(expiry.as_second());
                        tracing::debug!(target = %self.target, "short-lived token renewed");
                    }
                    Err(error) => self.not_renewed(error),
                }
            }
            Err(error) => self.not_renewed(error),
        }
    }

    /// Keeps the token in use until its life ends (then drops it), and tries again soon.
    fn not_renewed(&mut self, error: CredentialError) {
        self.metrics
            .credential_errors
            .get_or_create(&self.label())
            .inc();
        let now = Instant::now();
        tracing::warn!(target = %self.target, "{error} (retrying in {RETRY_EVERY:?})");
        match &mut self.token {
            Some(token) if now < token.expires_at => {
                token.renew_at = (now + RETRY_EVERY).min(token.expires_at);
            }
            _ => {
                // Never used past its life, nor kept in memory.
                self.token = None;
                self.install(Err(Arc::from(format!(
                    "target {}: no valid token: {error}",
                    self.target
                ))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECONFIG: &str = "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
        clusters:\n- name: c\n  cluster: {server: 'https://127.0.0.1:1'}\n\
        users:\n- name: u\n  user: {token: t}\n\
        contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n";

    fn with_extension(extension: &str) -> String {
        format!(
            "{KUBECONFIG}    extensions:\n    - name: {TOKEN_REQUEST_EXTENSION}\n      extension: {extension}\n"
        )
    }

    fn spec_of(text: &str) -> Result<Option<TokenRequestExtension>, String> {
        let kubeconfig = Kubeconfig::from_yaml(text).map_err(|e| e.to_string())?;
        token_request_of(&kubeconfig, Path::new("/k"), None).map_err(|e| e.to_string())
    }

    #[test]
    fn the_extension_turns_on_short_lived_tokens() {
        assert_eq!(spec_of(KUBECONFIG), Ok(None));
        assert_eq!(
            spec_of(&with_extension(
                "{serviceAccount: ns/sa, expirationSeconds: 3600, boundSecret: sa-requester-token}"
            )),
            Ok(Some(TokenRequestExtension {
                service_account: "ns/sa".into(),
                expiration_seconds: 3600,
                bound_secret: Some("sa-requester-token".into()),
            }))
        );
    }

    #[test]
    fn a_bad_extension_is_named() {
        let error = spec_of(&with_extension(
            "{serviceAccount: sa, expirationSeconds: 60}",
        ))
        .unwrap_err();
        assert_eq!(
            error,
            format!(
                "/k: extension {TOKEN_REQUEST_EXTENSION} of the context: serviceAccount \"sa\" is not namespace/name"
            )
        );
        let error = spec_of(&with_extension("{serviceAccount: a/b, lifetime: 60}")).unwrap_err();
        assert!(error.contains("unknown field `lifetime`"), "{error}");
    }

    #[test]
    fn tokens_are_renewed_at_four_fifths_of_the_shorter_life() {
        let now = Instant::now();
        // Asked for 30 s, issued for the apiserver's minimum of 10 minutes: 30 s it is.
        let short = schedule(now, Duration::from_secs(30), Duration::from_secs(600));
        assert_eq!(short.renew_at - now, Duration::from_secs(24));
        assert_eq!(short.expires_at - now, Duration::from_secs(30));
        // An apiserver (or a clock) that says no life is left: renewed a second later, no loop.
        let none = schedule(now, Duration::from_secs(30), Duration::ZERO);
        assert_eq!(none.renew_at - now, Duration::from_secs(1));
        // Asked for a day, cut to an hour by the apiserver.
        let cut = schedule(now, Duration::from_secs(86_400), Duration::from_secs(3600));
        assert_eq!(cut.renew_at - now, Duration::from_secs(2880));
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_that_does_not_load_says_why_and_calls_fail_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(&path, "not: [a kubeconfig").unwrap();
        let metrics = Arc::new(Metrics::register(&mut Default::default()));
        let client = client("c2", &path, None, metrics.clone(), None).await;
        let error = client.apiserver_version().await.unwrap_err().to_string();
        assert!(
            error.contains("is not a usable kubeconfig")
                && error.contains("no credentials for it until the file is fixed"),
            "{error}"
        );
        assert_eq!(
            metrics
                .credential_errors
                .get_or_create(&Metrics::cluster("c2"))
                .get(),
            1
        );
        // Fixed: the next look loads it (nothing listens on port 1: the call now fails there).
        std::fs::write(&path, KUBECONFIG).unwrap();
        tokio::time::sleep(RELOAD_EVERY + Duration::from_secs(1)).await;
        let error = client.apiserver_version().await.unwrap_err().to_string();
        assert!(!error.contains("kubeconfig"), "{error}");
    }
}
