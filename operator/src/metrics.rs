//! Prometheus metrics of the reconcilers, served on /metrics. Labels are bounded (the
//! controller name and an error class), never per object.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: String,
    pub error: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<ControllerLabel, Counter>,
    pub failures: Family<ErrorLabels, Counter>,
    pub duration: Family<ControllerLabel, Histogram>,
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ringfs_operator");
        let reconciles = Family::<ControllerLabel, Counter>::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Family::<ControllerLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        let leader = Gauge::default();
        registry.register("reconciles", "Reconciliations started", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciliations that failed, by error class",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconciliation",
            duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        Metrics {
            registry,
            reconciles,
            failures,
            duration,
            leader,
        }
    }
}

impl Metrics {
    /// Counts a reconcile and times it until the returned guard is dropped.
    pub fn start(self: &Arc<Self>, controller: &str) -> ReconcileTimer {
        let label = ControllerLabel {
            controller: controller.to_string(),
        };
        self.reconciles.get_or_create(&label).inc();
        ReconcileTimer {
            metrics: self.clone(),
            label,
            start: Instant::now(),
        }
    }

    pub fn failure(&self, controller: &str, error: &str) {
        self.failures
            .get_or_create(&ErrorLabels {
                controller: controller.to_string(),
                error: error.to_string(),
            })
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

pub struct ReconcileTimer {
    metrics: Arc<Metrics>,
    label: ControllerLabel,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.metrics
            .duration
            .get_or_create(&self.label)
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_times_reconciles() {
        let m = Arc::new(Metrics::default());
        drop(m.start("dfscluster"));
        m.failure("dfscluster", "kube");
        let text = m.render();
        assert!(
            text.contains("ringfs_operator_reconciles_total{controller=\"dfscluster\"} 1"),
            "{text}"
        );
        assert!(text.contains("ringfs_operator_reconcile_errors_total{controller=\"dfscluster\",error=\"kube\"} 1"), "{text}");
        assert!(
            text.contains(
                "ringfs_operator_reconcile_duration_seconds_count{controller=\"dfscluster\"} 1"
            ),
            "{text}"
        );
    }
}
