//! Logging and tracing setup shared by every ringfs binary.
//!
//! Logs go to stderr, filtered by `RUST_LOG` (default `info`). OTLP export of spans is
//! added with the operator (issue #6); until then spans are only logged.

use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global subscriber. Safe to call more than once (later calls do nothing),
/// which keeps tests that start several components in one process simple.
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true)
        .try_init();
}
