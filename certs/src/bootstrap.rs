//! `certs bootstrap-target`: let a source cluster's delegate-sync into a target cluster.
//!
//! In the target: a ServiceAccount with the target chart's ClusterRole (pods and the reads
//! placement needs) and a long-lived token Secret. In the source: a Secret holding a kubeconfig
//! that authenticates with that token, which delegate-sync's chart mounts
//! (`targets[].kubeconfigSecret`). Everything is written by server-side apply, so a second run
//! changes nothing; a dry run has the API servers validate every write (`dryRun=All`) and keeps
//! none.

pub mod objects;

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        core::v1::{Namespace, Node, Secret},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
};
use kube::{
    Api, Client, Resource,
    api::{ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde::{Serialize, de::DeserializeOwned};

use objects::{FIELD_MANAGER, Names, TargetAccess};

/// What to bootstrap; the CLI's flags.
#[derive(Clone, Debug)]
pub struct Options {
    /// None: `$KUBECONFIG` (a list of files, merged) or `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    pub source_context: String,
    pub target_context: String,
    /// delegate-sync's name for the target (its `--target NAME=...`), a DNS label.
    pub target_name: String,
    /// Of the source, where delegate-sync runs and the kubeconfig Secret goes.
    pub namespace: String,
    /// In the target. None: `delegate-sync-<source context as a DNS label>`.
    pub service_account: Option<String>,
    /// Of the target, where the ServiceAccount and its token live (created when missing).
    pub target_namespace: String,
    /// None: `<target name>-kubeconfig`.
    pub secret_name: Option<String>,
    /// The target's API server as the source's pods reach it. None: the target context's.
    pub target_server: Option<String>,
    /// How long the token controller may take to fill the token Secret.
    pub token_timeout: Duration,
    /// Some: delegate-sync acts with tokens of this lifetime, requested through a requester
    /// account whose long-lived token may do nothing else. None: the long-lived token of the
    /// service account itself.
    pub token_lifetime: Option<Duration>,
    /// A new long-lived token Secret (the kubeconfig is written with it); the ones it replaces
    /// are listed in the report for [`revoke_replaced`].
    pub rotate: bool,
    /// Grant what delegate-sync's `--copy-references` does in the target.
    pub copies: bool,
    /// Grant what delegate-sync's `--create-namespaces` does in the target.
    pub create_namespaces: bool,
    pub dry_run: bool,
}

/// Default of [`Options::target_namespace`].
pub const DEFAULT_TARGET_NAMESPACE: &str = "multicluster";
/// Default of [`Options::token_timeout`].
pub const DEFAULT_TOKEN_TIMEOUT: Duration = Duration::from_secs(60);

/// A cluster as the messages name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterRef {
    /// "source" or "target".
    pub role: &'static str,
    pub context: String,
    pub server: String,
}

impl fmt::Display for ClusterRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the {} cluster (context {:?}, {})",
            self.role, self.context, self.server
        )
    }
}

/// Why a bootstrap failed. Each names the flag, the context or the cluster concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid --{flag} {value:?}: {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("cannot load the kubeconfig {where_}: {detail}")]
    Kubeconfig { where_: String, detail: String },
    #[error(
        "context {context:?} (--{flag}) is not in the kubeconfig {where_} (it has: {available})"
    )]
    ContextNotFound {
        flag: &'static str,
        context: String,
        where_: String,
        available: String,
    },
    #[error("context {context:?} (--{flag}) is not usable: {detail}")]
    BadContext {
        flag: &'static str,
        context: String,
        detail: String,
    },
    #[error("{cluster} is unreachable: {detail}")]
    Unreachable { cluster: ClusterRef, detail: String },
    #[error("{cluster} refused the credentials of its context: {detail}")]
    Unauthorized { cluster: ClusterRef, detail: String },
    #[error("{cluster} forbids the user of its context to {action}: {detail}")]
    Forbidden {
        cluster: ClusterRef,
        action: String,
        detail: String,
    },
    #[error("{cluster}: cannot {action}: {detail}")]
    Api {
        cluster: ClusterRef,
        action: String,
        detail: String,
    },
    #[error(
        "{cluster}: the token controller did not fill Secret {secret} (token and ca.crt) within \
         {timeout:?}; is kube-controller-manager running, with --service-account-private-key-file \
         and --root-ca-file?"
    )]
    TokenTimeout {
        cluster: ClusterRef,
        secret: String,
        timeout: Duration,
    },
    #[error("cannot write the kubeconfig: {0}")]
    Render(String),
}

/// What a write did (or, in a dry run, would do).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Unchanged,
    Updated,
    Deleted,
}

/// One object written, for the one-line report of each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The context of the cluster it is in.
    pub context: String,
    pub kind: String,
    /// `namespace/name` or `name`.
    pub name: String,
    pub outcome: Outcome,
    pub dry_run: bool,
    /// In a dry run: not checked by the API server, because its namespace does not exist yet.
    pub unchecked: bool,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let outcome = match self.outcome {
            Outcome::Created => "created",
            Outcome::Unchanged => "unchanged",
            Outcome::Updated => "updated",
            Outcome::Deleted => "deleted",
        };
        write!(f, "{}: {} {} ", self.context, self.kind, self.name)?;
        match (self.dry_run, self.outcome) {
            (false, _) => f.write_str(outcome)?,
            (true, Outcome::Unchanged) => f.write_str("unchanged (dry run)")?,
            (true, _) => write!(f, "would be {outcome} (dry run)")?,
        }
        if self.unchecked {
            f.write_str(", not validated: its namespace does not exist yet")?;
        }
        Ok(())
    }
}

/// What was done.
pub struct Report {
    pub names: Names,
    pub steps: Vec<Step>,
    /// The server the kubeconfig points at.
    pub server: String,
    /// The kubeconfig stored in the source (None in a dry run without a token yet).
    pub kubeconfig: Option<String>,
    /// Whether the kubeconfig was seen to work from here (listing nodes of the target), and
    /// why not. None in a dry run.
    pub verified: Option<Result<(), String>>,
    /// Long-lived token Secrets of the service account or its requester in the target that the
    /// kubeconfig no longer uses: still valid until [`revoke_replaced`] deletes them.
    pub replaced: Vec<String>,
}

/// Without the token.
impl fmt::Debug for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Report")
            .field("names", &self.names)
            .field("steps", &self.steps)
            .field("server", &self.server)
            .field(
                "kubeconfig",
                &self.kubeconfig.as_ref().map(|_| "<redacted>"),
            )
            .field("verified", &self.verified)
            .field("replaced", &self.replaced)
            .finish()
    }
}

/// One cluster: a client and how to name it.
struct Cluster {
    client: Client,
    cluster: ClusterRef,
    /// From the kubeconfig, for the target's kubeconfig.
    tls_server_name: Option<String>,
}

/// Runs the bootstrap, calling `on_step` after each object as it is written.
pub async fn bootstrap_target(
    options: &Options,
    mut on_step: impl FnMut(&Step),
) -> Result<Report, Error> {
    let names = plan(options)?;
    let kubeconfig = load_kubeconfig(options.kubeconfig.as_deref())?;
    let where_ = kubeconfig_description(options.kubeconfig.as_deref());
    if let Some(server) = &options.target_server {
        server
            .strip_prefix("https://")
            .filter(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace))
            .ok_or(Error::Invalid {
                flag: "target-server",
                value: server.clone(),
                reason: "not an https:// URL",
            })?;
    }
    let source = connect(
        &kubeconfig,
        &where_,
        "source-context",
        "source",
        &options.source_context,
    )
    .await?;
    let target = connect(
        &kubeconfig,
        &where_,
        "target-context",
        "target",
        &options.target_context,
    )
    .await?;
    // Both reachable and accepting their credentials before anything is written.
    for cluster in [&target, &source] {
        cluster
            .client
            .apiserver_version()
            .await
            .map_err(|e| api_error(&cluster.cluster, "read the server version", e))?;
    }
    let server = options
        .target_server
        .clone()
        .unwrap_or_else(|| target.cluster.server.clone());

    let mut run = Run {
        dry_run: options.dry_run,
        steps: Vec::new(),
        on_step: &mut on_step,
    };

    // The target.
    let target_ns_exists = run
        .namespace(&target, &names.target_namespace, &names)
        .await?;
    let in_target = Placement {
        cluster: &target,
        unchecked: options.dry_run && !target_ns_exists,
    };
    run.apply_namespaced(in_target, &names.target_namespace, &names.service_account())
        .await?;
    run.apply_cluster(&target, &names.cluster_role()).await?;
    run.apply_cluster(&target, &names.cluster_role_binding())
        .await?;
    let copies_rules = objects::copies_rules(options.copies, options.create_namespaces);
    match names.copies_cluster_role(copies_rules) {
        Some((role, binding)) => {
            run.apply_cluster(&target, &role).await?;
            run.apply_cluster(&target, &binding).await?;
        }
        // Rights granted by an earlier run with --copies or --create-namespaces go with them.
        None => {
            let name = names.copies_cluster_role_name();
            run.delete_cluster::<ClusterRoleBinding>(&target, &name)
                .await?;
            run.delete_cluster::<ClusterRole>(&target, &name).await?;
        }
    }
    if let Some((account, role, binding)) = names.requester_objects() {
        run.apply_namespaced(in_target, &names.target_namespace, &account)
            .await?;
        run.apply_namespaced(in_target, &names.target_namespace, &role)
            .await?;
        run.apply_namespaced(in_target, &names.target_namespace, &binding)
            .await?;
    }
    run.apply_namespaced(in_target, &names.target_namespace, &names.token_secret())
        .await?;
    let token = if options.dry_run {
        // Only an existing, filled token can be used; otherwise a stand-in is validated.
        match in_target.unchecked {
            true => None,
            false => read_token(&target, &names).await?,
        }
    } else {
        Some(wait_for_token(&target, &names, options.token_timeout).await?)
    };

    // The source.
    let token_request = options
        .token_lifetime
        .map(|lifetime| contract::TokenRequestExtension {
            service_account: format!("{}/{}", names.target_namespace, names.service_account),
            expiration_seconds: lifetime.as_secs().max(1),
            bound_secret: Some(names.token_secret.clone()),
        });
    let kubeconfig_text = match &token {
        Some(token) => Some(
            objects::render_kubeconfig(&TargetAccess {
                name: &names.target,
                server: &server,
                tls_server_name: target.tls_server_name.as_deref(),
                ca: &token.ca,
                user: names.token_account(),
                token: &token.token,
                token_request: token_request.clone(),
            })
            .map_err(|e| Error::Render(e.to_string()))?,
        ),
        None => None,
    };
    let source_ns_exists = run.namespace(&source, &names.namespace, &names).await?;
    let secret = names.kubeconfig_secret(
        kubeconfig_text
            .as_deref()
            .unwrap_or("# the token is not minted yet (dry run)\n"),
    );
    run.apply_namespaced(
        Placement {
            cluster: &source,
            unchecked: options.dry_run && !source_ns_exists,
        },
        &names.namespace,
        &secret,
    )
    .await?;

    let verified = match (&kubeconfig_text, options.dry_run) {
        (Some(text), false) => Some(verify(text, token_request.as_ref()).await),
        _ => None,
    };
    let replaced = match in_target.unchecked {
        true => Vec::new(),
        false => replaced_tokens(&target, &names).await?,
    };
    Ok(Report {
        names,
        steps: run.steps,
        server,
        kubeconfig: kubeconfig_text,
        verified,
        replaced,
    })
}

/// The long-lived token Secrets of the service account and of its requester, but the one the
/// kubeconfig now holds.
async fn replaced_tokens(target: &Cluster, names: &Names) -> Result<Vec<String>, Error> {
    let api: Api<Secret> = Api::namespaced(target.client.clone(), &names.target_namespace);
    let action = format!("list Secrets in {}", names.target_namespace);
    let tokens = api
        .list(&ListParams::default().fields("type=kubernetes.io/service-account-token"))
        .await
        .map_err(|e| api_error(&target.cluster, &action, e))?;
    let requester = objects::requester_name(&names.service_account);
    let accounts = [names.service_account.as_str(), requester.as_str()];
    let mut replaced: Vec<String> = tokens
        .items
        .into_iter()
        .filter(|secret| {
            secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("kubernetes.io/service-account.name"))
                .is_some_and(|account| accounts.contains(&account.as_str()))
        })
        .filter_map(|secret| secret.metadata.name)
        .filter(|name| *name != names.token_secret)
        .collect();
    replaced.sort();
    Ok(replaced)
}

/// Deletes the token Secrets a rotation replaced (`report.replaced`): their tokens, and every
/// short-lived token bound to them, stop working at once. Run it once delegate-sync has read
/// the new kubeconfig (a Secret volume takes up to about a minute, delegate-sync 10 s more).
pub async fn revoke_replaced(
    options: &Options,
    report: &Report,
    mut on_step: impl FnMut(&Step),
) -> Result<(), Error> {
    if options.dry_run || report.replaced.is_empty() {
        return Ok(());
    }
    let kubeconfig = load_kubeconfig(options.kubeconfig.as_deref())?;
    let where_ = kubeconfig_description(options.kubeconfig.as_deref());
    let target = connect(
        &kubeconfig,
        &where_,
        "target-context",
        "target",
        &options.target_context,
    )
    .await?;
    let api: Api<Secret> = Api::namespaced(target.client.clone(), &report.names.target_namespace);
    for name in &report.replaced {
        let full = format!("{}/{name}", report.names.target_namespace);
        match api.delete(name, &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => {
                return Err(api_error(
                    &target.cluster,
                    &format!("delete Secret {full}"),
                    e,
                ));
            }
        }
        on_step(&Step {
            context: target.cluster.context.clone(),
            kind: "Secret".into(),
            name: full,
            outcome: Outcome::Deleted,
            dry_run: false,
            unchecked: false,
        });
    }
    Ok(())
}

/// The names of everything, from the options; refuses names the API would refuse.
pub fn plan(options: &Options) -> Result<Names, Error> {
    let invalid = |flag, value: &str, reason| Error::Invalid {
        flag,
        value: value.to_string(),
        reason,
    };
    let label = "not a DNS label (lowercase letters, digits and -, at most 63)";
    let subdomain = "not a DNS subdomain (lowercase letters, digits, - and ., at most 253)";
    if !objects::is_dns_label(&options.target_name) {
        return Err(invalid("target-name", &options.target_name, label));
    }
    for (flag, value) in [
        ("namespace", &options.namespace),
        ("target-namespace", &options.target_namespace),
    ] {
        if !objects::is_dns_label(value) {
            return Err(invalid(flag, value, label));
        }
    }
    let source = match objects::dns_label_from(&options.source_context, 49) {
        label if label.is_empty() => "source".to_string(),
        label => label,
    };
    let service_account = options
        .service_account
        .clone()
        .unwrap_or_else(|| format!("delegate-sync-{source}"));
    let secret = options
        .secret_name
        .clone()
        .unwrap_or_else(|| format!("{}-kubeconfig", options.target_name));
    for (flag, value) in [
        ("service-account", &service_account),
        ("secret-name", &secret),
    ] {
        if !objects::is_dns_subdomain(value) {
            return Err(invalid(flag, value, subdomain));
        }
    }
    // The longest name made from it: `<service account>-requester-token-<unix time>`.
    let longest = "-requester-token-".len() + 10;
    if service_account.len() > 253 - longest {
        return Err(invalid(
            "service-account",
            &service_account,
            "too long (at most 226)",
        ));
    }
    let requester = options
        .token_lifetime
        .map(|_| objects::requester_name(&service_account));
    let account = requester.as_deref().unwrap_or(&service_account);
    let token_secret = match options.rotate {
        false => format!("{account}-token"),
        true => format!("{account}-token-{}", unix_seconds()),
    };
    Ok(Names {
        source,
        target: options.target_name.clone(),
        cluster_role: format!("{}-{service_account}", options.target_namespace),
        token_secret,
        target_namespace: options.target_namespace.clone(),
        requester,
        service_account,
        namespace: options.namespace.clone(),
        secret,
    })
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn kubeconfig_description(path: Option<&Path>) -> String {
    match path {
        Some(path) => path.display().to_string(),
        None => match std::env::var_os("KUBECONFIG") {
            Some(list) if !list.is_empty() => format!("$KUBECONFIG ({})", list.to_string_lossy()),
            _ => "~/.kube/config".into(),
        },
    }
}

fn load_kubeconfig(path: Option<&Path>) -> Result<Kubeconfig, Error> {
    let loaded = match path {
        Some(path) => Kubeconfig::read_from(path),
        None => Kubeconfig::read(),
    };
    loaded.map_err(|e| Error::Kubeconfig {
        where_: kubeconfig_description(path),
        detail: chain(&e),
    })
}

/// A client for one context, with short timeouts: an unreachable cluster fails in seconds.
async fn connect(
    kubeconfig: &Kubeconfig,
    where_: &str,
    flag: &'static str,
    role: &'static str,
    context: &str,
) -> Result<Cluster, Error> {
    let Some(named) = kubeconfig.contexts.iter().find(|c| c.name == context) else {
        let available: Vec<&str> = kubeconfig
            .contexts
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        return Err(Error::ContextNotFound {
            flag,
            context: context.to_string(),
            where_: where_.to_string(),
            available: if available.is_empty() {
                "no contexts".into()
            } else {
                available.join(", ")
            },
        });
    };
    let bad = |detail: String| Error::BadContext {
        flag,
        context: context.to_string(),
        detail,
    };
    let cluster_name = named
        .context
        .as_ref()
        .map(|c| c.cluster.clone())
        .filter(|c| !c.is_empty())
        .ok_or_else(|| bad("it names no cluster".into()))?;
    let entry = kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.as_ref())
        .ok_or_else(|| {
            bad(format!(
                "its cluster {cluster_name:?} is not in the kubeconfig"
            ))
        })?;
    let server = entry
        .server
        .clone()
        .ok_or_else(|| bad(format!("its cluster {cluster_name:?} has no server")))?;
    let options = KubeConfigOptions {
        context: Some(context.to_string()),
        ..Default::default()
    };
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig.clone(), &options)
        .await
        .map_err(|e| bad(chain(&e)))?;
    config.connect_timeout = Some(Duration::from_secs(10));
    config.read_timeout = Some(Duration::from_secs(30));
    let client = Client::try_from(config).map_err(|e| bad(chain(&e)))?;
    Ok(Cluster {
        client,
        cluster: ClusterRef {
            role,
            context: context.to_string(),
            server,
        },
        tls_server_name: entry.tls_server_name.clone(),
    })
}

/// An error and its causes on one line.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn api_error(cluster: &ClusterRef, action: &str, error: kube::Error) -> Error {
    let cluster = cluster.clone();
    let action = action.to_string();
    match error {
        kube::Error::Api(status) if status.code == 401 => Error::Unauthorized {
            cluster,
            detail: status.message,
        },
        kube::Error::Api(status) if status.code == 403 => Error::Forbidden {
            cluster,
            action,
            detail: status.message,
        },
        kube::Error::Api(status) => Error::Api {
            cluster,
            action,
            detail: format!("{} ({})", status.message, status.code),
        },
        e @ (kube::Error::HyperError(_) | kube::Error::Service(_)) => Error::Unreachable {
            cluster,
            detail: chain(&e),
        },
        e => Error::Api {
            cluster,
            action,
            detail: chain(&e),
        },
    }
}

/// Where a namespaced object goes.
#[derive(Clone, Copy)]
struct Placement<'a> {
    cluster: &'a Cluster,
    /// A dry run whose namespace does not exist yet: the server cannot check the object.
    unchecked: bool,
}

struct Run<'a, F> {
    dry_run: bool,
    steps: Vec<Step>,
    on_step: &'a mut F,
}

impl<F: FnMut(&Step)> Run<'_, F> {
    fn record(
        &mut self,
        cluster: &Cluster,
        kind: &str,
        name: String,
        outcome: Outcome,
        unchecked: bool,
    ) {
        let step = Step {
            context: cluster.cluster.context.clone(),
            kind: kind.to_string(),
            name,
            outcome,
            dry_run: self.dry_run,
            unchecked,
        };
        (self.on_step)(&step);
        self.steps.push(step);
    }

    /// Creates the namespace when missing (an existing one is left alone); whether it existed.
    async fn namespace(
        &mut self,
        cluster: &Cluster,
        name: &str,
        names: &Names,
    ) -> Result<bool, Error> {
        let api: Api<Namespace> = Api::all(cluster.client.clone());
        let action = format!("read Namespace {name}");
        let existing = api
            .get_opt(name)
            .await
            .map_err(|e| api_error(&cluster.cluster, &action, e))?;
        if existing.is_some() {
            self.record(cluster, "Namespace", name.into(), Outcome::Unchanged, false);
            return Ok(true);
        }
        let params = PostParams {
            dry_run: self.dry_run,
            field_manager: Some(FIELD_MANAGER.into()),
        };
        match api.create(&params, &names.namespace(name)).await {
            Ok(_) => {
                self.record(cluster, "Namespace", name.into(), Outcome::Created, false);
                Ok(false)
            }
            // Created meanwhile by someone else: as good.
            Err(kube::Error::Api(status)) if status.code == 409 => {
                self.record(cluster, "Namespace", name.into(), Outcome::Unchanged, false);
                Ok(true)
            }
            Err(e) => Err(api_error(
                &cluster.cluster,
                &format!("create Namespace {name}"),
                e,
            )),
        }
    }

    async fn apply_namespaced<K>(
        &mut self,
        placement: Placement<'_>,
        namespace: &str,
        object: &K,
    ) -> Result<(), Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + Serialize
            + DeserializeOwned
            + fmt::Debug,
    {
        let name = object.meta().name.clone().unwrap_or_default();
        let full = format!("{namespace}/{name}");
        let cluster = placement.cluster;
        if placement.unchecked {
            self.record(cluster, &K::kind(&()), full, Outcome::Created, true);
            return Ok(());
        }
        let api: Api<K> = Api::namespaced(cluster.client.clone(), namespace);
        let outcome = apply(&api, &cluster.cluster, &full, object, self.dry_run).await?;
        self.record(cluster, &K::kind(&()), full, outcome, false);
        Ok(())
    }

    /// Deletes a cluster-scoped object this tool made, if it is there (a step only then).
    async fn delete_cluster<K>(&mut self, cluster: &Cluster, name: &str) -> Result<(), Error>
    where
        K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + fmt::Debug,
    {
        let api: Api<K> = Api::all(cluster.client.clone());
        let kind = K::kind(&());
        let exists = api
            .get_opt(name)
            .await
            .map_err(|e| api_error(&cluster.cluster, &format!("read {kind} {name}"), e))?
            .is_some();
        if !exists {
            return Ok(());
        }
        let params = kube::api::DeleteParams {
            dry_run: self.dry_run,
            ..Default::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
            Err(e) => {
                return Err(api_error(
                    &cluster.cluster,
                    &format!("delete {kind} {name}"),
                    e,
                ));
            }
        }
        self.record(cluster, &kind, name.to_string(), Outcome::Deleted, false);
        Ok(())
    }

    async fn apply_cluster<K>(&mut self, cluster: &Cluster, object: &K) -> Result<(), Error>
    where
        K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + fmt::Debug,
    {
        let name = object.meta().name.clone().unwrap_or_default();
        let api: Api<K> = Api::all(cluster.client.clone());
        let outcome = apply(&api, &cluster.cluster, &name, object, self.dry_run).await?;
        self.record(cluster, &K::kind(&()), name, outcome, false);
        Ok(())
    }
}

/// Server-side apply (forced: these objects are this tool's to define); the outcome compares
/// the object before and after, ignoring bookkeeping (managedFields, resourceVersion).
async fn apply<K>(
    api: &Api<K>,
    cluster: &ClusterRef,
    full_name: &str,
    object: &K,
    dry_run: bool,
) -> Result<Outcome, Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + fmt::Debug,
{
    let kind = K::kind(&());
    let name = object.meta().name.clone().unwrap_or_default();
    let before = api
        .get_opt(&name)
        .await
        .map_err(|e| api_error(cluster, &format!("read {kind} {full_name}"), e))?;
    let mut params = PatchParams::apply(FIELD_MANAGER).force();
    params.dry_run = dry_run;
    let after = api
        .patch(&name, &params, &Patch::Apply(object))
        .await
        .map_err(|e| api_error(cluster, &format!("apply {kind} {full_name}"), e))?;
    Ok(match before {
        None => Outcome::Created,
        Some(before) if comparable(&before) == comparable(&after) => Outcome::Unchanged,
        Some(_) => Outcome::Updated,
    })
}

fn comparable<K: Serialize>(object: &K) -> serde_json::Value {
    let mut value = serde_json::to_value(object).unwrap_or_default();
    if let Some(metadata) = value
        .get_mut("metadata")
        .and_then(serde_json::Value::as_object_mut)
    {
        metadata.remove("managedFields");
        metadata.remove("resourceVersion");
    }
    value
}

/// What the token controller filled in.
struct Token {
    token: String,
    ca: Vec<u8>,
}

async fn read_token(target: &Cluster, names: &Names) -> Result<Option<Token>, Error> {
    let api: Api<Secret> = Api::namespaced(target.client.clone(), &names.target_namespace);
    let action = format!(
        "read Secret {}/{}",
        names.target_namespace, names.token_secret
    );
    let secret = api
        .get_opt(&names.token_secret)
        .await
        .map_err(|e| api_error(&target.cluster, &action, e))?;
    let data = secret.and_then(|s| s.data).unwrap_or_default();
    let field = |key: &str| data.get(key).map(|b| b.0.clone()).filter(|b| !b.is_empty());
    Ok(match (field("token"), field("ca.crt")) {
        (Some(token), Some(ca)) => String::from_utf8(token)
            .ok()
            .map(|token| Token { token, ca }),
        _ => None,
    })
}

async fn wait_for_token(
    target: &Cluster,
    names: &Names,
    timeout: Duration,
) -> Result<Token, Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(token) = read_token(target, names).await? {
            return Ok(token);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::TokenTimeout {
                cluster: target.cluster.clone(),
                secret: format!("{}/{}", names.target_namespace, names.token_secret),
                timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Lists nodes of the target with the new kubeconfig (from here: a `--target-server` meant
/// for the source's pods may not be reachable from this machine), with a token requested
/// through it when it is a requester's.
async fn verify(
    kubeconfig: &str,
    token_request: Option<&contract::TokenRequestExtension>,
) -> Result<(), String> {
    let parsed = Kubeconfig::from_yaml(kubeconfig).map_err(|e| chain(&e))?;
    let mut config = kube::Config::from_custom_kubeconfig(parsed, &Default::default())
        .await
        .map_err(|e| chain(&e))?;
    config.connect_timeout = Some(Duration::from_secs(5));
    let mut last = String::new();
    for _ in 0..20 {
        let attempt = async {
            let config = match token_request {
                None => config.clone(),
                Some(request) => with_requested_token(&config, request).await?,
            };
            let client = Client::try_from(config)?;
            Api::<Node>::all(client)
                .list(&ListParams::default().limit(1))
                .await
        };
        match attempt.await {
            Ok(_) => return Ok(()),
            // A new token Secret, or RBAC just written, takes the apiserver a moment to see.
            Err(kube::Error::Api(status)) if matches!(status.code, 401 | 403) => {
                last = status.message
            }
            Err(e) => return Err(chain(&e)),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(last)
}

/// `config` with a short-lived token of the service account, requested with its credentials
/// as delegate-sync does (the shortest lifetime the apiserver issues).
async fn with_requested_token(
    config: &kube::Config,
    request: &contract::TokenRequestExtension,
) -> Result<kube::Config, kube::Error> {
    use k8s_openapi::api::authentication::v1::{
        BoundObjectReference, TokenRequest, TokenRequestSpec,
    };
    let (namespace, name) = request.service_account.split_once('/').unwrap_or_default();
    let requester = Client::try_from(config.clone())?;
    let token_request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(600),
            bound_object_ref: request
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
    let issued =
        Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(requester, namespace)
            .create_token_request(name, &PostParams::default(), &token_request)
            .await?;
    let mut config = config.clone();
    config.auth_info = kube::config::AuthInfo {
        token: issued.status.map(|s| s.token.into()),
        ..Default::default()
    };
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Options {
        Options {
            kubeconfig: None,
            source_context: "kind-Cluster_1".into(),
            target_context: "cluster2".into(),
            target_name: "cluster2".into(),
            namespace: "multicluster".into(),
            service_account: None,
            target_namespace: DEFAULT_TARGET_NAMESPACE.into(),
            secret_name: None,
            target_server: None,
            token_timeout: DEFAULT_TOKEN_TIMEOUT,
            token_lifetime: None,
            rotate: false,
            copies: false,
            create_namespaces: false,
            dry_run: false,
        }
    }

    #[test]
    fn names_follow_the_target_chart_and_the_delegate_sync_chart() {
        let names = plan(&options()).unwrap();
        assert_eq!(names.source, "kind-cluster-1");
        assert_eq!(names.service_account, "delegate-sync-kind-cluster-1");
        assert_eq!(
            names.cluster_role,
            "multicluster-delegate-sync-kind-cluster-1"
        );
        assert_eq!(names.token_secret, "delegate-sync-kind-cluster-1-token");
        assert_eq!(names.secret, "cluster2-kubeconfig");
        let named = plan(&Options {
            service_account: Some("sa".into()),
            secret_name: Some("creds".into()),
            ..options()
        })
        .unwrap();
        assert_eq!(
            (named.service_account.as_str(), named.secret.as_str()),
            ("sa", "creds")
        );
    }

    #[test]
    fn bad_names_are_refused_naming_the_flag() {
        let refused = |options: Options| plan(&options).unwrap_err().to_string();
        assert!(
            refused(Options {
                target_name: "Cluster2".into(),
                ..options()
            })
            .starts_with("invalid --target-name \"Cluster2\"")
        );
        assert!(
            refused(Options {
                namespace: "a/b".into(),
                ..options()
            })
            .starts_with("invalid --namespace")
        );
        assert!(
            refused(Options {
                service_account: Some("x_y".into()),
                ..options()
            })
            .starts_with("invalid --service-account")
        );
    }

    #[test]
    fn steps_read_as_one_line_each() {
        let step = Step {
            context: "cluster2".into(),
            kind: "ServiceAccount".into(),
            name: "multicluster/sa".into(),
            outcome: Outcome::Created,
            dry_run: false,
            unchecked: false,
        };
        assert_eq!(
            step.to_string(),
            "cluster2: ServiceAccount multicluster/sa created"
        );
        let dry = Step {
            dry_run: true,
            unchecked: true,
            ..step.clone()
        };
        assert_eq!(
            dry.to_string(),
            "cluster2: ServiceAccount multicluster/sa would be created (dry run), not validated: \
             its namespace does not exist yet"
        );
        let same = Step {
            dry_run: true,
            outcome: Outcome::Unchanged,
            ..step
        };
        assert_eq!(
            same.to_string(),
            "cluster2: ServiceAccount multicluster/sa unchanged (dry run)"
        );
    }

    #[tokio::test]
    async fn a_missing_context_is_named_with_the_ones_there_are() {
        let dir = std::env::temp_dir().join(format!("certs-bootstrap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c1\n  cluster:\n    server: https://127.0.0.1:1\n\
             users:\n- name: u\n  user: {token: t}\ncontexts:\n- name: one\n  context: {cluster: c1, user: u}\n\
             - name: two\n  context: {cluster: c1, user: u}\n",
        )
        .unwrap();
        let error = bootstrap_target(
            &Options {
                kubeconfig: Some(path.clone()),
                source_context: "one".into(),
                target_context: "cluster9".into(),
                ..options()
            },
            |_| {},
        )
        .await
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "context \"cluster9\" (--target-context) is not in the kubeconfig {} (it has: one, two)",
                path.display()
            )
        );
        // Nothing listens on port 1: unreachable, naming the cluster, before any write.
        let error = bootstrap_target(
            &Options {
                kubeconfig: Some(path.clone()),
                source_context: "one".into(),
                target_context: "two".into(),
                ..options()
            },
            |_| panic!("nothing may be written"),
        )
        .await
        .unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            error.to_string().starts_with(
                "the target cluster (context \"two\", https://127.0.0.1:1) is unreachable: "
            ),
            "{error}"
        );
    }
}
