//! What a pod needs follows it to its target ([`crate::needs`]): before its delegate is
//! created, its namespace (with `--create-namespaces`), its ServiceAccount, and copies of the
//! ConfigMaps and Secrets it references (with `--copy-references`, from source namespaces
//! labelled [`contract::COPY_REFERENCES_LABEL`]).
//!
//! - A copy is labelled with the source cluster ([`COPIED_FROM`]) and remembers the source's
//!   resourceVersion ([`SOURCE_VERSION`]). An object of the same name that delegate-sync did not
//!   make is never touched: the delegate waits, with a Warning Event.
//! - Each delegate that needs a copy is one of its owners, so the target's garbage collector
//!   deletes the copy with the last of them, even when delegate-sync is not running.
//! - [`refresh`] (every 15 s, leader only) updates copies whose source changed, adds delegates
//!   missing from their owners (a restart between creating a delegate and adopting its copies),
//!   and deletes namespaces it created once they hold nothing.
//! - A required reference missing in the source is a Warning Event and the delegate waits; an
//!   optional one stays missing. The ServiceAccount is created without any token (the target
//!   issues its own) and is left in place.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    NamespaceResourceScope,
    api::core::v1::{
        ConfigMap, Namespace, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{
    Api, Client, Resource, ResourceExt as _,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;

use crate::{
    needs::{Need, Needs},
    targets::{Target, bounded},
};

/// Label on everything delegate-sync makes in a target for a source's pods: the source
/// cluster's name.
pub const COPIED_FROM: &str = "multicluster.admiralty.io/copied-from-cluster";
/// Annotation on a copy: the resourceVersion of the source object it was made from.
pub const SOURCE_VERSION: &str = "multicluster.admiralty.io/source-resource-version";

/// How often copies are compared with their sources.
pub const REFRESH_EVERY: Duration = Duration::from_secs(15);
/// A namespace delegate-sync made is deleted once it held nothing for this long after its
/// creation (a delegate about to be created in it must not lose it).
const NAMESPACE_GRACE: Duration = Duration::from_secs(120);

/// What delegate-sync makes in targets for the pods it delegates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Create a delegate's namespace in its target when missing.
    pub create_namespaces: bool,
    /// Copy ConfigMaps and Secrets (from opted-in namespaces) and create ServiceAccounts.
    pub copy_references: bool,
}

/// What is copied (ConfigMaps, Secrets): a namespaced object kube reads and writes.
pub trait Copyable:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Serialize
    + DeserializeOwned
    + std::fmt::Debug
{
}

impl<K> Copyable for K where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug
{
}

/// Why a delegate is not created yet.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Wait {
    #[error(
        "{kind} {name} does not exist in {namespace} of the source cluster (required by the pod)"
    )]
    Missing {
        kind: &'static str,
        namespace: String,
        name: String,
    },
    #[error(
        "{kind} {namespace}/{name} exists in {target} and delegate-sync did not make it: it is left alone; delete or rename it"
    )]
    Conflict {
        kind: &'static str,
        namespace: String,
        name: String,
        target: String,
    },
    #[error("cannot {action} in {target}: {message}")]
    Refused {
        action: String,
        target: String,
        message: String,
    },
    #[error(
        "Secret {namespace}/{name} is a service-account token of the source cluster: it is never copied (the target issues its own)"
    )]
    SourceToken { namespace: String, name: String },
    #[error(
        "namespace {namespace} is being deleted in {target}; the delegate is created once it is gone (and made again)"
    )]
    Terminating { namespace: String, target: String },
}

impl Wait {
    /// The reason of its Warning Event.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing { .. } => "ReferenceMissing",
            Self::Conflict { .. } => "CopyConflict",
            Self::Refused { .. } | Self::SourceToken { .. } => "CopyRefused",
            Self::Terminating { .. } => "NamespaceTerminating",
        }
    }
}

/// The copies made for one delegate, to adopt once it exists.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Made {
    pub config_maps: Vec<String>,
    pub secrets: Vec<String>,
}

/// Makes what `needs` names in `namespace` of `target`, copying from the source; Ok(made) once
/// the delegate may be created.
pub async fn prepare(
    settings: Settings,
    source: &Client,
    source_cluster: &str,
    target: &Target,
    namespace: &str,
    needs: &Needs,
) -> Result<Result<Made, Wait>, kube::Error> {
    let scene = Scene {
        source,
        source_cluster,
        target,
        namespace,
    };
    if settings.create_namespaces
        && let Err(wait) = scene.namespace().await?
    {
        return Ok(Err(wait));
    }
    if !settings.copy_references {
        return Ok(Ok(Made::default()));
    }
    if let Some(account) = &needs.service_account
        && let Err(wait) = scene.service_account(account).await?
    {
        return Ok(Err(wait));
    }
    if !scene.opted_in().await? {
        return Ok(Ok(Made::default()));
    }
    // Everything is checked before anything is made: a pod that waits leaves no copy behind.
    let config_maps = match scene.check_all::<ConfigMap>(&needs.config_maps).await? {
        Ok(found) => found,
        Err(wait) => return Ok(Err(wait)),
    };
    let secrets = match scene.check_all::<Secret>(&needs.secrets).await? {
        Ok(found) => found,
        Err(wait) => return Ok(Err(wait)),
    };
    let made = Made {
        config_maps: match scene.make_all(config_maps).await? {
            Ok(made) => made,
            Err(wait) => return Ok(Err(wait)),
        },
        secrets: match scene.make_all(secrets).await? {
            Ok(made) => made,
            Err(wait) => return Ok(Err(wait)),
        },
    };
    Ok(Ok(made))
}

/// An object to copy: the original, and its copy when there is one already.
struct Found<K> {
    original: K,
    existing: Option<K>,
}

/// Makes `delegate` an owner of the copies it needs (merged by uid: other owners stay).
pub async fn adopt(target: &Target, delegate: &Pod, made: &Made) -> Result<(), kube::Error> {
    let namespace = delegate.namespace().unwrap_or_default();
    for name in &made.config_maps {
        add_owner::<ConfigMap>(&target.client, &namespace, name, delegate).await?;
    }
    for name in &made.secrets {
        add_owner::<Secret>(&target.client, &namespace, name, delegate).await?;
    }
    Ok(())
}

async fn add_owner<K>(
    client: &Client,
    namespace: &str,
    name: &str,
    owner: &Pod,
) -> Result<(), kube::Error>
where
    K: Copyable,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let patch = json!({ "metadata": { "ownerReferences": [owner_of(owner)] } });
    match bounded(api.patch(name, &PatchParams::default(), &Patch::Strategic(&patch))).await {
        Ok(_) => Ok(()),
        // Deleted meanwhile (the delegate's other owners all went): made again next time.
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// A delegate as an owner of the copies it needs (not a controller, not blocking its
/// deletion: the copy simply goes with the last of its owners).
fn owner_of(delegate: &Pod) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: delegate.name_any(),
        uid: delegate.uid().unwrap_or_default(),
        ..Default::default()
    }
}

struct Scene<'a> {
    source: &'a Client,
    source_cluster: &'a str,
    target: &'a Target,
    namespace: &'a str,
}

impl Scene<'_> {
    fn refused(&self, action: String, error: kube::Error) -> Result<Wait, kube::Error> {
        match error {
            kube::Error::Api(status) if matches!(status.code, 403 | 422) => Ok(Wait::Refused {
                action,
                target: self.target.name.clone(),
                message: status.message,
            }),
            e => Err(e),
        }
    }

    fn ours(&self, meta: &ObjectMeta) -> bool {
        meta.labels
            .as_ref()
            .and_then(|l| l.get(COPIED_FROM))
            .is_some_and(|c| c == self.source_cluster)
    }

    fn made_by_us(&self, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(
                COPIED_FROM.to_string(),
                self.source_cluster.to_string(),
            )])),
            ..Default::default()
        }
    }

    /// The delegate's namespace in the target, created when missing.
    async fn namespace(&self) -> Result<Result<(), Wait>, kube::Error> {
        let api: Api<Namespace> = Api::all(self.target.client.clone());
        match bounded(api.get_opt(self.namespace)).await? {
            Some(namespace) if namespace.metadata.deletion_timestamp.is_some() => {
                return Ok(Err(Wait::Terminating {
                    namespace: self.namespace.into(),
                    target: self.target.name.clone(),
                }));
            }
            Some(_) => return Ok(Ok(())),
            None => {}
        }
        let namespace = Namespace {
            metadata: self.made_by_us(self.namespace),
            ..Default::default()
        };
        match bounded(api.create(&PostParams::default(), &namespace)).await {
            Ok(_) => {
                tracing::info!(target = %self.target.name, namespace = self.namespace, "namespace created");
                Ok(Ok(()))
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Ok(())),
            Err(e) => self
                .refused(format!("create namespace {}", self.namespace), e)
                .map(Err),
        }
    }

    /// The pod's ServiceAccount in the target, created (without any token) when missing.
    async fn service_account(&self, name: &str) -> Result<Result<(), Wait>, kube::Error> {
        let api: Api<ServiceAccount> = Api::namespaced(self.target.client.clone(), self.namespace);
        let action = || format!("create ServiceAccount {}/{name}", self.namespace);
        match bounded(api.get_opt(name)).await {
            Ok(Some(_)) => return Ok(Ok(())),
            Ok(None) => {}
            Err(e) => return self.refused(action(), e).map(Err),
        }
        let account = ServiceAccount {
            metadata: self.made_by_us(name),
            ..Default::default()
        };
        match bounded(api.create(&PostParams::default(), &account)).await {
            Ok(_) => Ok(Ok(())),
            Err(e) if conflict(&e) => Ok(Ok(())),
            Err(e) => self.refused(action(), e).map(Err),
        }
    }

    /// Whether the source namespace asks for its ConfigMaps and Secrets to be copied.
    async fn opted_in(&self) -> Result<bool, kube::Error> {
        let api: Api<Namespace> = Api::all(self.source.clone());
        let namespace = bounded(api.get_opt(self.namespace)).await?;
        Ok(namespace.is_some_and(|n| {
            n.labels()
                .get(contract::COPY_REFERENCES_LABEL)
                .map(String::as_str)
                == Some("true")
        }))
    }

    /// Whether an object can be copied: None for an optional one missing in the source; a
    /// Wait for a required one missing, or a copy that delegate-sync did not make.
    async fn check<K>(
        &self,
        name: &str,
        need: Need,
    ) -> Result<Result<Option<Found<K>>, Wait>, kube::Error>
    where
        K: Copyable,
    {
        let kind = kind_of::<K>();
        let source: Api<K> = Api::namespaced(self.source.clone(), self.namespace);
        let Some(original) = bounded(source.get_opt(name)).await? else {
            return Ok(match need {
                Need::Optional => Ok(None),
                Need::Required => Err(Wait::Missing {
                    kind,
                    namespace: self.namespace.into(),
                    name: name.into(),
                }),
            });
        };
        if source_token(&original) {
            return Ok(Err(Wait::SourceToken {
                namespace: self.namespace.into(),
                name: name.into(),
            }));
        }
        let copies: Api<K> = Api::namespaced(self.target.client.clone(), self.namespace);
        let existing = match bounded(copies.get_opt(name)).await {
            Ok(existing) => existing,
            Err(e) => {
                let action = format!("read {kind} {}/{name}", self.namespace);
                return self.refused(action, e).map(Err);
            }
        };
        if let Some(existing) = &existing
            && !self.ours(existing.meta())
        {
            return Ok(Err(self.conflict(kind, name)));
        }
        Ok(Ok(Some(Found { original, existing })))
    }

    /// [`Scene::check`] of every object of one kind the pod needs; the first Wait stops it.
    async fn check_all<K>(
        &self,
        needs: &BTreeMap<String, Need>,
    ) -> Result<Result<Vec<(String, Found<K>)>, Wait>, kube::Error>
    where
        K: Copyable,
    {
        let mut all = Vec::new();
        for (name, need) in needs {
            match self.check::<K>(name, *need).await? {
                Ok(Some(found)) => all.push((name.clone(), found)),
                Ok(None) => {}
                Err(wait) => return Ok(Err(wait)),
            }
        }
        Ok(Ok(all))
    }

    /// [`Scene::make`] of each checked object: the names of the copies there now.
    async fn make_all<K>(
        &self,
        found: Vec<(String, Found<K>)>,
    ) -> Result<Result<Vec<String>, Wait>, kube::Error>
    where
        K: Copyable,
    {
        let mut made = Vec::new();
        for (name, found) in found {
            if let Err(wait) = self.make(&name, found).await? {
                return Ok(Err(wait));
            }
            made.push(name);
        }
        Ok(Ok(made))
    }

    fn conflict(&self, kind: &'static str, name: &str) -> Wait {
        Wait::Conflict {
            kind,
            namespace: self.namespace.into(),
            name: name.into(),
            target: self.target.name.clone(),
        }
    }

    /// The copy made, or brought up to date.
    async fn make<K>(&self, name: &str, found: Found<K>) -> Result<Result<(), Wait>, kube::Error>
    where
        K: Copyable,
    {
        let kind = kind_of::<K>();
        let copies: Api<K> = Api::namespaced(self.target.client.clone(), self.namespace);
        let action = |verb: &str| format!("{verb} {kind} {}/{name}", self.namespace);
        let Some(existing) = found.existing else {
            return self
                .create_copy(&copies, name, &found.original, Vec::new())
                .await;
        };
        match update(&copies, &found.original, &existing).await {
            Ok(()) => Ok(Ok(())),
            Err(e) => self.refused(action("update"), e).map(Err),
        }
    }

    /// Creates the copy of `original` with `owners`. Made meanwhile by someone else: it is
    /// theirs unless it carries our label.
    async fn create_copy<K>(
        &self,
        copies: &Api<K>,
        name: &str,
        original: &K,
        owners: Vec<OwnerReference>,
    ) -> Result<Result<(), Wait>, kube::Error>
    where
        K: Copyable,
    {
        let kind = kind_of::<K>();
        let mut meta = self.made_by_us(name);
        if !owners.is_empty() {
            meta.owner_references = Some(owners);
        }
        let copy = copy_of(original, meta)?;
        match bounded(copies.create(&PostParams::default(), &copy)).await {
            Ok(_) => Ok(Ok(())),
            Err(e) if conflict(&e) => match bounded(copies.get_opt(name)).await? {
                Some(existing) if !self.ours(existing.meta()) => Ok(Err(self.conflict(kind, name))),
                _ => Ok(Ok(())),
            },
            Err(e) => {
                let action = format!("create {kind} {}/{name}", self.namespace);
                self.refused(action, e).map(Err)
            }
        }
    }
}

fn kind_of<K: Resource<DynamicType = ()>>() -> &'static str {
    if K::kind(&()) == "Secret" {
        "Secret"
    } else {
        "ConfigMap"
    }
}

/// A Secret holding a service-account token of the source cluster.
fn source_token<K: Serialize>(object: &K) -> bool {
    serde_json::to_value(object)
        .is_ok_and(|v| v["type"] == json!("kubernetes.io/service-account-token"))
}

/// Already exists.
fn conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

/// `original` as a copy: its content under `meta`, the source's resourceVersion noted.
fn copy_of<K>(original: &K, mut meta: ObjectMeta) -> Result<K, kube::Error>
where
    K: Resource + Serialize + DeserializeOwned,
{
    let version = original.meta().resource_version.clone().unwrap_or_default();
    meta.annotations = Some(BTreeMap::from([(SOURCE_VERSION.to_string(), version)]));
    let mut value = serde_json::to_value(original).map_err(kube::Error::SerdeError)?;
    value["metadata"] = serde_json::to_value(&meta).map_err(kube::Error::SerdeError)?;
    serde_json::from_value(value).map_err(kube::Error::SerdeError)
}

/// Replaces `existing` (a copy) with the content of `original` when the source changed,
/// keeping the copy's owners.
async fn update<K>(copies: &Api<K>, original: &K, existing: &K) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let noted = existing
        .meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(SOURCE_VERSION));
    if noted == original.meta().resource_version.as_ref() {
        return Ok(());
    }
    let mut meta = existing.meta().clone();
    meta.managed_fields = None;
    let mut copy = copy_of(original, meta)?;
    let name = existing.meta().name.clone().unwrap_or_default();
    if let Some(annotations) = copy.meta_mut().annotations.as_mut() {
        // copy_of replaced the copy's annotations with the source version alone.
        annotations.extend(
            existing
                .meta()
                .annotations
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter(|(k, _)| k != SOURCE_VERSION),
        );
    }
    match bounded(copies.replace(&name, &PostParams::default(), &copy)).await {
        Ok(_) => Ok(()),
        // Changed meanwhile (another pass): the next pass compares again.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        // An immutable copy is made again; the next pass gives it its owners back.
        Err(kube::Error::Api(status)) if status.code == 422 && immutable(existing) => {
            let only_this = DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    uid: existing.meta().uid.clone(),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            bounded(copies.delete(&name, &only_this)).await?;
            let meta = copy.meta_mut();
            meta.resource_version = None;
            meta.uid = None;
            meta.creation_timestamp = None;
            meta.owner_references = None;
            bounded(copies.create(&PostParams::default(), &copy)).await?;
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn immutable<K: Serialize>(object: &K) -> bool {
    serde_json::to_value(object).is_ok_and(|v| v["immutable"] == json!(true))
}

/// One pass over a target: copies updated from their sources, delegates added to the owners
/// of the copies they need, and namespaces made by delegate-sync deleted once they hold
/// nothing. Errors are logged; the next pass tries again.
pub async fn refresh(
    settings: Settings,
    source: &Client,
    source_cluster: &str,
    target: &Target,
    busy: &std::collections::BTreeSet<String>,
) {
    if settings.copy_references {
        let mut opted_in: BTreeMap<String, bool> = BTreeMap::new();
        for ((namespace, kind, name), delegates) in referenced(target) {
            let scene = Scene {
                source,
                source_cluster,
                target,
                namespace: &namespace,
            };
            let copying = match opted_in.get(&namespace) {
                Some(copying) => *copying,
                None => match scene.opted_in().await {
                    Ok(copying) => *opted_in.entry(namespace.clone()).or_insert(copying),
                    Err(e) => {
                        tracing::warn!(target = %target.name, %namespace, "copies not refreshed: {e}");
                        continue;
                    }
                },
            };
            if !copying {
                continue;
            }
            let refreshed = match kind {
                Kind::ConfigMap => scene.refresh_one::<ConfigMap>(&name, &delegates).await,
                Kind::Secret => scene.refresh_one::<Secret>(&name, &delegates).await,
            };
            if let Err(e) = refreshed {
                tracing::warn!(target = %target.name, %namespace, %name, "copy not refreshed: {e}");
            }
        }
    }
    if settings.create_namespaces
        && let Err(e) = delete_empty_namespaces(source_cluster, target, busy).await
    {
        tracing::warn!(target = %target.name, "namespaces not cleaned up: {e}");
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    ConfigMap,
    Secret,
}

/// Every ConfigMap and Secret the target's delegates reference, once each, with the delegates
/// that reference it: one pass costs a read per object, however many pods share it.
fn referenced(target: &Target) -> BTreeMap<(String, Kind, String), Vec<std::sync::Arc<Pod>>> {
    let mut objects: BTreeMap<(String, Kind, String), Vec<std::sync::Arc<Pod>>> = BTreeMap::new();
    for delegate in target.delegates.state() {
        let Ok(pod) = serde_json::to_value(&*delegate) else {
            continue;
        };
        let namespace = delegate.namespace().unwrap_or_default();
        let needs = crate::needs::of(&pod);
        let keys = needs
            .config_maps
            .into_keys()
            .map(|name| (Kind::ConfigMap, name))
            .chain(needs.secrets.into_keys().map(|name| (Kind::Secret, name)));
        for (kind, name) in keys {
            objects
                .entry((namespace.clone(), kind, name))
                .or_default()
                .push(delegate.clone());
        }
    }
    objects
}

impl Scene<'_> {
    /// Updates the copy of `name` if its source changed, and makes every one of `delegates`
    /// its owner; a copy gone (with its last owner, or by hand) while delegates still need it
    /// is made again. Objects delegate-sync did not make, and sources gone, are left alone.
    async fn refresh_one<K>(
        &self,
        name: &str,
        delegates: &[std::sync::Arc<Pod>],
    ) -> Result<(), kube::Error>
    where
        K: Copyable,
    {
        let copies: Api<K> = Api::namespaced(self.target.client.clone(), self.namespace);
        let source: Api<K> = Api::namespaced(self.source.clone(), self.namespace);
        let Some(existing) = bounded(copies.get_opt(name)).await? else {
            if let Some(original) = bounded(source.get_opt(name)).await?
                && !source_token(&original)
            {
                let owners = delegates.iter().map(|d| owner_of(d)).collect();
                if let Err(wait) = self.create_copy(&copies, name, &original, owners).await? {
                    tracing::warn!(target = %self.target.name, "{wait}");
                }
            }
            return Ok(());
        };
        if !self.ours(existing.meta()) {
            return Ok(());
        }
        if let Some(original) = bounded(source.get_opt(name)).await? {
            update(&copies, &original, &existing).await?;
        }
        let owners: Vec<&str> = existing
            .meta()
            .owner_references
            .iter()
            .flatten()
            .map(|o| o.uid.as_str())
            .collect();
        for delegate in delegates {
            if !owners.contains(&delegate.uid().unwrap_or_default().as_str()) {
                add_owner::<K>(&self.target.client, self.namespace, name, delegate).await?;
            }
        }
        Ok(())
    }
}

async fn delete_empty_namespaces(
    source_cluster: &str,
    target: &Target,
    busy: &std::collections::BTreeSet<String>,
) -> Result<(), kube::Error> {
    let api: Api<Namespace> = Api::all(target.client.clone());
    let selector = format!("{COPIED_FROM}={source_cluster}");
    let made = bounded(api.list(&ListParams::default().labels(&selector))).await?;
    for namespace in made.items {
        let name = namespace.name_any();
        let old_enough = namespace
            .metadata
            .creation_timestamp
            .as_ref()
            .is_some_and(|t| {
                k8s_openapi::jiff::Timestamp::now().duration_since(t.0)
                    > k8s_openapi::jiff::SignedDuration::try_from(NAMESPACE_GRACE)
                        .unwrap_or_default()
            });
        let terminating = namespace.metadata.deletion_timestamp.is_some();
        // A delegate decided for it and not created yet counts as something it holds.
        if !old_enough
            || terminating
            || busy.contains(&name)
            || !holds_nothing(target, &name).await?
        {
            continue;
        }
        let params = DeleteParams::default();
        match bounded(api.delete(&name, &params)).await {
            Ok(_) => {
                tracing::info!(target = %target.name, namespace = %name, "empty namespace deleted")
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// No pod, no ConfigMap but the root CA's, no Secret, no PersistentVolumeClaim, no Service, no
/// ServiceAccount but `default` and the ones delegate-sync made. (Other kinds are not looked
/// at: a namespace delegate-sync made is meant for delegates.)
async fn holds_nothing(target: &Target, namespace: &str) -> Result<bool, kube::Error> {
    let client = &target.client;
    let one = ListParams::default().limit(2);
    let pods = bounded(
        Api::<Pod>::namespaced(client.clone(), namespace).list(&ListParams::default().limit(1)),
    )
    .await?;
    if !pods.items.is_empty() {
        return Ok(false);
    }
    let config_maps =
        bounded(Api::<ConfigMap>::namespaced(client.clone(), namespace).list(&one)).await?;
    if config_maps
        .items
        .iter()
        .any(|c| c.name_any() != crate::needs::ROOT_CA_CONFIG_MAP)
    {
        return Ok(false);
    }
    let secrets = bounded(
        Api::<Secret>::namespaced(client.clone(), namespace).list(&ListParams::default().limit(1)),
    )
    .await?;
    if !secrets.items.is_empty() {
        return Ok(false);
    }
    let claims = bounded(
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace)
            .list(&ListParams::default().limit(1)),
    )
    .await?;
    let services = bounded(
        Api::<Service>::namespaced(client.clone(), namespace).list(&ListParams::default().limit(1)),
    )
    .await?;
    if !claims.items.is_empty() || !services.items.is_empty() {
        return Ok(false);
    }
    let accounts = bounded(
        Api::<ServiceAccount>::namespaced(client.clone(), namespace).list(&ListParams::default()),
    )
    .await?;
    Ok(accounts
        .items
        .iter()
        .all(|a| a.name_any() == "default" || a.labels().contains_key(COPIED_FROM)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_has_the_content_and_our_metadata_only() {
        let original: Secret = serde_json::from_value(json!({
            "metadata": {
                "name": "db", "namespace": "team", "resourceVersion": "42", "uid": "u1",
                "labels": { "app": "x" }, "annotations": { "note": "n" },
                "ownerReferences": [{ "apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u2" }],
            },
            "type": "kubernetes.io/basic-auth",
            "data": { "password": "czNjcmV0" },
            "immutable": true,
        }))
        .unwrap();
        let meta = ObjectMeta {
            name: Some("db".into()),
            labels: Some(BTreeMap::from([(COPIED_FROM.into(), "cluster1".into())])),
            ..Default::default()
        };
        let copy = serde_json::to_value(copy_of(&original, meta).unwrap()).unwrap();
        assert_eq!(
            copy,
            json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": "db",
                    "labels": { COPIED_FROM: "cluster1" },
                    "annotations": { SOURCE_VERSION: "42" },
                },
                "type": "kubernetes.io/basic-auth",
                "data": { "password": "czNjcmV0" },
                "immutable": true,
            })
        );
    }

    #[test]
    fn waits_name_the_object_and_what_to_do() {
        let conflict = Wait::Conflict {
            kind: "ConfigMap",
            namespace: "team".into(),
            name: "settings".into(),
            target: "cluster2".into(),
        };
        assert_eq!(conflict.reason(), "CopyConflict");
        assert_eq!(
            conflict.to_string(),
            "ConfigMap team/settings exists in cluster2 and delegate-sync did not make it: it is left alone; delete or rename it"
        );
    }
}
