//! `ringfs-csi`: the CSI plugin binary. Parses flags, starts telemetry, serves.

use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = ringfs_csi::Config::parse();
    let _telemetry = ringfs_telemetry::init_with_service("info", "ringfs-csi");
    match ringfs_csi::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
