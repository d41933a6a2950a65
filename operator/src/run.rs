//! Wiring: configuration, leader election, the two controllers and the HTTP endpoints.

use crate::admin::GrpcAdmin;
use crate::context::Context;
use crate::error::Error;
use crate::leader::LeaderElector;
use crate::metrics::Metrics;
use crate::{cluster, volume};
use axum::routing::get;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client};
use ringfs_api::{DfsCluster, DfsVolume};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "ringfs-operator",
    version,
    about = "Kubernetes operator for ringfs"
)]
pub struct Config {
    /// HTTP listen address for /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "RINGFS_OPERATOR_HTTP_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub http_listen: SocketAddr,
    /// Only watch this namespace (default: all namespaces).
    #[arg(long, env = "RINGFS_OPERATOR_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Run leader election (needed with more than one replica).
    #[arg(long, env = "RINGFS_OPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Namespace of the leader Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// This replica's identity in the Lease (the pod name).
    #[arg(long, env = "POD_NAME", default_value = "ringfs-operator")]
    pub pod_name: String,
    /// Lease duration in seconds.
    #[arg(long, env = "RINGFS_OPERATOR_LEASE_SECONDS", default_value_t = 15)]
    pub lease_seconds: u64,
}

fn error_policy<K>(controller: &'static str) -> impl Fn(Arc<K>, &Error, Arc<Context>) -> Action {
    move |_obj, err, ctx| {
        ctx.metrics.failure(controller, err.metric_label());
        match err {
            Error::Waiting(msg) => tracing::info!(controller, "{msg}"),
            _ => tracing::warn!(controller, error = %err, "reconcile failed"),
        }
        Action::requeue(Duration::from_secs(5))
    }
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let metrics = Arc::new(Metrics::default());
    let leading = Arc::new(std::sync::atomic::AtomicBool::new(!config.leader_election));
    let http = serve_http(config.http_listen, metrics.clone(), leading.clone()).await?;

    let elector = LeaderElector::new(
        client.clone(),
        &config.namespace,
        "ringfs-operator-leader",
        &config.pod_name,
        Duration::from_secs(config.lease_seconds),
    );
    if config.leader_election {
        tracing::info!(identity = %config.pod_name, "waiting for the leader lease");
        elector.acquire().await;
        tracing::info!("acquired the leader lease");
    }
    leading.store(true, std::sync::atomic::Ordering::Relaxed);
    metrics.leader.set(1);

    let ctx = Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "ringfs-operator".into(),
                instance: Some(config.pod_name.clone()),
            },
        ),
        client: client.clone(),
        metrics: metrics.clone(),
        admin: Arc::new(GrpcAdmin::default()),
        busy_requeue: Duration::from_secs(5),
        idle_requeue: Duration::from_secs(30),
    });
    let (clusters, volumes, sets): (Api<DfsCluster>, Api<DfsVolume>, Api<StatefulSet>) =
        match &config.watch_namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client.clone()),
            ),
        };
    let cluster_ctl = Controller::new(clusters, watcher::Config::default())
        .owns(sets, watcher::Config::default())
        .shutdown_on_signal()
        .run(
            cluster::reconcile,
            error_policy(cluster::CONTROLLER),
            ctx.clone(),
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "dfscluster controller");
            }
        });
    let volume_ctl = Controller::new(volumes, watcher::Config::default())
        .shutdown_on_signal()
        .run(
            volume::reconcile,
            error_policy(volume::CONTROLLER),
            ctx.clone(),
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "dfsvolume controller");
            }
        });
    let controllers = futures::future::join(cluster_ctl, volume_ctl);
    if config.leader_election {
        tokio::select! {
            _ = controllers => {}
            _ = elector.hold() => {
                anyhow::bail!("lost the leader lease; exiting so a fresh replica takes over");
            }
        }
    } else {
        controllers.await;
    }
    http.abort();
    Ok(())
}

async fn serve_http(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    leading: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let router = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move { m.render() }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let leading = leading.clone();
                async move {
                    if leading.load(std::sync::atomic::Ordering::Relaxed) {
                        (axum::http::StatusCode::OK, "leading\n")
                    } else {
                        (axum::http::StatusCode::OK, "standby\n")
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    tracing::info!(%addr, "serving /metrics /healthz /readyz");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    }))
}
