//! Prometheus metrics of delegate-sync (labels bounded: outcomes and configured cluster names).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    pub reconciliations: Family<OutcomeLabel, Counter>,
    pub placements: Family<ClusterLabel, Counter>,
    pub api_errors: Family<ClusterLabel, Counter>,
    pub target_synced: Family<ClusterLabel, Gauge>,
    pub target_reachable: Family<ClusterLabel, Gauge>,
    pub orphans_deleted: Family<ClusterLabel, Counter>,
    pub restarts: Family<ClusterLabel, Counter>,
    /// Target kubeconfig files loaded again after a change.
    pub credential_reloads: Family<ClusterLabel, Counter>,
    /// Target kubeconfig files that did not load, and token requests that failed.
    pub credential_errors: Family<ClusterLabel, Counter>,
    /// Short-lived tokens issued to delegate-sync.
    pub token_renewals: Family<ClusterLabel, Counter>,
    /// When the token in use expires (Unix seconds), in token-request mode.
    pub token_expiry: Family<ClusterLabel, Gauge>,
    /// Delegate logs relayed live or being relayed.
    pub log_streams: Gauge,
    pub log_relayed_bytes: Counter,
    /// Proxy created → delegate created.
    pub delegate_created_seconds: Histogram,
    /// Delegate ended → result recorded on the proxy.
    pub result_recorded_seconds: Histogram,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let buckets = || {
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.01, 2.0, 14,
            ))
        };
        let metrics = Self {
            reconciliations: Family::default(),
            placements: Family::default(),
            api_errors: Family::default(),
            target_synced: Family::default(),
            target_reachable: Family::default(),
            orphans_deleted: Family::default(),
            restarts: Family::default(),
            credential_reloads: Family::default(),
            credential_errors: Family::default(),
            token_renewals: Family::default(),
            token_expiry: Family::default(),
            log_streams: Gauge::default(),
            log_relayed_bytes: Counter::default(),
            delegate_created_seconds: buckets(),
            result_recorded_seconds: buckets(),
        };
        let sub = registry.sub_registry_with_prefix("delegate_sync");
        sub.register(
            "reconciliations",
            "Proxy reconciliations, by outcome",
            metrics.reconciliations.clone(),
        );
        sub.register(
            "placements",
            "Delegates placed, by target cluster",
            metrics.placements.clone(),
        );
        sub.register(
            "api_errors",
            "API errors, by cluster",
            metrics.api_errors.clone(),
        );
        sub.register(
            "target_synced",
            "1 when a target's caches are loaded",
            metrics.target_synced.clone(),
        );
        sub.register(
            "target_reachable",
            "1 while a target's apiserver answers",
            metrics.target_reachable.clone(),
        );
        sub.register(
            "orphans_deleted",
            "Delegates deleted because their proxy is gone or lost them, by target cluster",
            metrics.orphans_deleted.clone(),
        );
        sub.register(
            "restarts",
            "Delegates replaced under restartPolicy Always or OnFailure, by the cluster of the one replaced",
            metrics.restarts.clone(),
        );
        sub.register(
            "target_credential_reloads",
            "Target kubeconfig files loaded again after they changed, by target cluster",
            metrics.credential_reloads.clone(),
        );
        sub.register(
            "target_credential_errors",
            "Target kubeconfig files that did not load and token requests that failed, by target cluster",
            metrics.credential_errors.clone(),
        );
        sub.register(
            "target_token_renewals",
            "Short-lived tokens requested for a target, by target cluster",
            metrics.token_renewals.clone(),
        );
        sub.register(
            "target_token_expiry_timestamp_seconds",
            "When the short-lived token in use for a target expires",
            metrics.token_expiry.clone(),
        );
        sub.register(
            "log_streams",
            "Delegate container logs being relayed to their proxies",
            metrics.log_streams.clone(),
        );
        sub.register(
            "log_relayed_bytes",
            "Bytes of delegate logs written into proxy containers' logs",
            metrics.log_relayed_bytes.clone(),
        );
        sub.register(
            "delegate_created_seconds",
            "Time from proxy creation to delegate creation",
            metrics.delegate_created_seconds.clone(),
        );
        sub.register(
            "result_recorded_seconds",
            "Time from the delegate's end to its result on the proxy",
            metrics.result_recorded_seconds.clone(),
        );
        metrics
    }

    pub fn cluster(name: &str) -> ClusterLabel {
        ClusterLabel {
            cluster: name.to_string(),
        }
    }
}
