//! Prometheus metrics of the webhook, served on the admin port.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// patched, unchanged, denied, invalid, or an HTTP error class.
    pub outcome: &'static str,
}

/// Every metric of the webhook.
#[derive(Debug)]
pub struct Metrics {
    pub requests: Family<OutcomeLabel, Counter>,
    pub duration: Histogram,
    pub patches: Counter,
}

impl Metrics {
    /// Registers the metrics under `webhook_` in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            // 50 µs .. ~0.8 s
            duration: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.00005, 2.0, 15,
            )),
            patches: Counter::default(),
        };
        let sub = registry.sub_registry_with_prefix("webhook");
        sub.register(
            "admission_requests",
            "Admission requests answered, by outcome",
            metrics.requests.clone(),
        );
        sub.register(
            "admission_duration_seconds",
            "Time from a complete request body to the answer",
            metrics.duration.clone(),
        );
        sub.register(
            "patches_applied",
            "Pods turned into proxies",
            metrics.patches.clone(),
        );
        metrics
    }

    /// A request refused before it was a review (no duration: nothing was decided).
    pub fn reject(&self, outcome: &'static str) {
        self.requests.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    pub fn record(&self, outcome: &'static str, seconds: f64) {
        self.requests.get_or_create(&OutcomeLabel { outcome }).inc();
        self.duration.observe(seconds);
        if outcome == "patched" {
            self.patches.inc();
        }
    }
}
