use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ringfs_telemetry::init("info,kube=warn");
    ringfs_operator::run::run(ringfs_operator::run::Config::parse()).await
}
