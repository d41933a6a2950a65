use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match ringfs_node::Config::load_from(std::env::args()) {
        Ok(c) => c,
        Err(e) => match e.downcast::<clap::Error>() {
            Ok(clap_err) => clap_err.exit(),
            Err(e) => {
                eprintln!("ringfs-node: {e:#}");
                return ExitCode::from(2);
            }
        },
    };
    let _telemetry = ringfs_telemetry::init_with_service("info,openraft=warn", "ringfs-node");
    match ringfs_node::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringfs-node: {e:#}");
            ExitCode::FAILURE
        }
    }
}
