//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans reach the collector under the service
//! name the binary passes.

mod common;

use common::{attributes, Collector};

#[test]
fn spans_reach_the_collector_named_after_the_binary() {
    let mut collector = Collector::start();
    // Set before any other thread of this process reads the environment.
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint);
    std::env::remove_var("OTEL_SERVICE_NAME");
    std::env::remove_var("OTEL_RESOURCE_ATTRIBUTES");
    std::env::set_var("RUST_LOG", "info");

    let telemetry = ringfs_telemetry::init_with_service("info", "ringfs-test-node");
    assert!(telemetry.exporting());
    {
        let outer = tracing::info_span!("reconcile", cluster = "c1");
        let _outer = outer.enter();
        tracing::info_span!("apply_statefulset", replicas = 3).in_scope(|| {
            tracing::info!("applied");
        });
    }
    telemetry.flush().expect("flush to a live collector");

    let child = collector.wait_for_span("apply_statefulset");
    assert_eq!(child.resource["service.name"], "ringfs-test-node");
    assert!(
        format!("{:?}", attributes(&child.span.attributes)["replicas"]).contains('3'),
        "{:?}",
        child.span.attributes
    );
    assert!(
        child.span.events.iter().any(|e| e.name == "applied"),
        "the log line inside the span is a span event: {:?}",
        child.span.events
    );
    let parent = collector.wait_for_span("reconcile");
    assert_eq!(attributes(&parent.span.attributes)["cluster"], "c1");
    assert_eq!(child.span.parent_span_id, parent.span.span_id);
    assert_eq!(child.span.trace_id, parent.span.trace_id);
    drop(telemetry);
}
