//! A collector that is not there slows nothing down: spans are queued and dropped, and the
//! guard's shutdown at exit is bounded.

use std::time::{Duration, Instant};

#[test]
fn an_absent_collector_blocks_nothing() {
    // A port that was just free: connections to it are refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("ephemeral port")
        .port();
    // Set before any other thread of this process reads the environment.
    std::env::set_var(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        format!("http://127.0.0.1:{port}"),
    );
    std::env::set_var("OTEL_EXPORTER_OTLP_TIMEOUT", "500");
    std::env::set_var("RUST_LOG", "info");

    let telemetry = ringfs_telemetry::init_with_service("info", "ringfs-test");
    assert!(
        telemetry.exporting(),
        "an absent collector is no reason to turn export off"
    );

    tracing::info_span!("first").in_scope(|| {});
    let start = Instant::now();
    let flushed = telemetry.flush();
    assert!(flushed.is_err(), "nothing can accept the spans");
    // Bounded by OTEL_EXPORTER_OTLP_TIMEOUT (500 ms), not by the flush timeout.
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "a failed flush took {:?}",
        start.elapsed()
    );

    let start = Instant::now();
    for i in 0..5_000 {
        tracing::info_span!("work", i).in_scope(|| {});
    }
    // Queueing (or dropping, once the queue is full) is all a span costs while exports
    // fail: far below one export timeout for all 5,000.
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "emitting spans took {:?}",
        start.elapsed()
    );

    let start = Instant::now();
    drop(telemetry);
    // Shutdown waits at most 2 s for the queue; the margin covers a slow machine.
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "shutdown took {:?}",
        start.elapsed()
    );
}
