use std::process::ExitCode;

fn main() -> ExitCode {
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ringfs-node: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let _telemetry = ringfs_telemetry::init_with_service("info,openraft=warn", "ringfs-node");
        ringfs_node::run(config).await
    });
    // Dropping a runtime waits for every blocking task still running (a file write on a
    // stalled disk, say); a node that has decided to exit must not hang on one.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringfs-node: {e:#}");
            ExitCode::FAILURE
        }
    }
}
