//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go does it: the holder renews
//! the Lease every few seconds; another replica takes it over once it has *observed* no renewal
//! for the Lease's duration (its own clock only, so clock skew between nodes does not matter);
//! every write carries the resourceVersion it read, so of two candidates only one wins.

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};

/// Where the Lease is and who we are.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a Lease holds without renewal.
    pub duration: Duration,
    /// How often the holder renews, and candidates retry.
    pub retry: Duration,
    /// The holder gives up when it could not renew for this long (less than `duration`, so it
    /// stops before anyone else may start).
    pub renew_deadline: Duration,
}

impl LeaseSettings {
    pub fn new(namespace: String, name: String, identity: String) -> Self {
        Self {
            namespace,
            name,
            identity,
            duration: Duration::from_secs(15),
            retry: Duration::from_secs(2),
            renew_deadline: Duration::from_secs(10),
        }
    }
}

/// The host name, as identity when the pod name is not given.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("delegate-sync-{}", std::process::id()))
}

/// A candidate for, then the holder of, one Lease.
pub struct Candidate {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// The holder and renew time last read, and when we first saw them.
    observed: Option<(Option<String>, Option<MicroTime>, Instant)>,
}

impl Candidate {
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: None,
        }
    }

    /// Returns once this replica holds the Lease.
    pub async fn acquire(&mut self) {
        tracing::info!(lease = %self.settings.name, identity = %self.settings.identity, "waiting to lead");
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(lease = %self.settings.name, "leading");
                    return;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(lease = %self.settings.name, "lease: {e}"),
            }
            tokio::time::sleep(self.settings.retry).await;
        }
    }

    /// Renews the Lease; returns when it could not be renewed for the renew deadline (the
    /// caller must then stop working: another replica may take over).
    pub async fn hold(&mut self) {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(self.settings.retry).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => {
                    tracing::error!(lease = %self.settings.name, "another replica holds the lease");
                    return;
                }
                Err(e) => tracing::warn!(lease = %self.settings.name, "cannot renew lease: {e}"),
            }
            if renewed.elapsed() >= self.settings.renew_deadline {
                tracing::error!(lease = %self.settings.name, "lease not renewed in time");
                return;
            }
        }
    }

    /// One attempt: Ok(true) when we hold the Lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let me = self.settings.identity.clone();
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me),
                    lease_duration_seconds: Some(self.duration_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return conflict_is_false(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let record = (spec.holder_identity.clone(), spec.renew_time.clone());
        let first_seen = match &self.observed {
            Some((holder, renewed, at)) if (holder, renewed) == (&record.0, &record.1) => *at,
            _ => Instant::now(),
        };
        self.observed = Some((record.0.clone(), record.1.clone(), first_seen));
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let held_by_other = holder.is_some_and(|h| h != me);
        let lasts = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
        );
        if held_by_other && first_seen.elapsed() < lasts {
            return Ok(false);
        }
        if holder != Some(me.as_str()) {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        spec.holder_identity = Some(me);
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(self.duration_seconds());
        conflict_is_false(
            self.api
                .replace(&self.settings.name, &PostParams::default(), &lease)
                .await,
        )
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.settings.duration.as_secs()).unwrap_or(i32::MAX)
    }
}

/// Gives the Lease up at shutdown, so that a successor need not wait for it to expire.
pub async fn release(client: Client, settings: &LeaseSettings) {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let Ok(Some(mut lease)) = api.get_opt(&settings.name).await else {
        return;
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    match api
        .replace(&settings.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => tracing::info!(lease = %settings.name, "lease released"),
        Err(e) => tracing::warn!(lease = %settings.name, "cannot release lease: {e}"),
    }
}

/// A write that lost a race (409) is not an error: someone else acted first.
fn conflict_is_false(result: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
