use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = ringfs_telemetry::init_with_service("info,kube=warn", "ringfs-operator");
    ringfs_operator::run::run(ringfs_operator::run::Config::parse()).await
}
