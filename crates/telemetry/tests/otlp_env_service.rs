//! `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` win over the binary's default name.

mod common;

use common::Collector;

#[test]
fn standard_variables_name_the_service() {
    let mut collector = Collector::start();
    // Set before any other thread of this process reads the environment.
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint);
    std::env::set_var("OTEL_SERVICE_NAME", "ringfs-from-env");
    std::env::set_var("OTEL_RESOURCE_ATTRIBUTES", "k8s.pod.name=node-0");
    std::env::set_var("RUST_LOG", "info");

    let telemetry = ringfs_telemetry::init_with_service("info", "ringfs-default");
    assert!(telemetry.exporting());
    tracing::info_span!("put_block").in_scope(|| {});
    telemetry.flush().expect("flush to a live collector");

    let got = collector.wait_for_span("put_block");
    assert_eq!(got.span.name, "put_block");
    assert_eq!(got.resource["service.name"], "ringfs-from-env");
    assert_eq!(got.resource["k8s.pod.name"], "node-0");
}
