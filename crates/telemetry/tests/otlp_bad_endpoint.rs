//! An endpoint the exporter cannot use turns export off with a warning; the binary, which
//! calls this from its async `main`, goes on.

#[test]
fn an_unusable_endpoint_only_turns_export_off() {
    // Set before any other thread of this process reads the environment. This build has
    // no TLS, so an https endpoint cannot be used.
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", "https://127.0.0.1:4317");
    std::env::set_var("RUST_LOG", "info");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let telemetry = ringfs_telemetry::init_with_service("info", "ringfs-test");
        assert!(!telemetry.exporting());
        tracing::info_span!("still_logged").in_scope(|| tracing::info!("the binary goes on"));
        assert!(
            telemetry.flush().is_ok(),
            "flushing without export is a no-op"
        );
    });
}
