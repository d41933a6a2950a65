//! The kubelet's plugin registration, served by the node plugin itself (what the
//! node-driver-registrar sidecar otherwise does): a socket in the kubelet's
//! `plugins_registry` directory answering `GetInfo` with the driver name and the CSI
//! socket's path on the host. The kubelet's plugin watcher finds the socket, asks for the
//! info, connects to the CSI socket and reports the outcome with
//! `NotifyRegistrationStatus`.

use ringfs_proto::pluginregistration::registration_server::{Registration, RegistrationServer};
use ringfs_proto::pluginregistration::{
    InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tonic::{Request, Response, Status};

/// CSI versions the driver speaks, as the kubelet expects them listed.
pub const SUPPORTED_VERSIONS: &[&str] = &["1.0.0"];

pub struct Registrar {
    pub driver_name: String,
    /// The CSI socket as the kubelet sees it (a host path).
    pub endpoint: String,
    /// Set once the kubelet reported a successful registration.
    pub registered: Arc<AtomicBool>,
}

#[tonic::async_trait]
impl Registration for Registrar {
    async fn get_info(&self, _: Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
        Ok(Response::new(PluginInfo {
            r#type: "CSIPlugin".into(),
            name: self.driver_name.clone(),
            endpoint: self.endpoint.clone(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| v.to_string()).collect(),
        }))
    }

    async fn notify_registration_status(
        &self,
        req: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let st = req.into_inner();
        if st.plugin_registered {
            self.registered.store(true, Ordering::Relaxed);
            tracing::info!(driver = %self.driver_name, "registered with the kubelet");
        } else {
            self.registered.store(false, Ordering::Relaxed);
            tracing::error!(
                driver = %self.driver_name,
                error = %st.error,
                "the kubelet refused the registration"
            );
        }
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}

/// The registration socket for `driver` in `dir`.
pub fn socket_in(dir: &Path, driver: &str) -> PathBuf {
    dir.join(format!("{driver}-reg.sock"))
}

/// Binds the registration socket for `registrar` in `dir` (errors here are fatal at
/// start, before the kubelet could be left without a registration).
pub async fn bind(dir: &Path, driver: &str) -> anyhow::Result<(PathBuf, UnixListener)> {
    let path = socket_in(dir, driver);
    let listener = crate::bind_socket(&path).await?;
    Ok((path, listener))
}

/// Serves the registration socket until `shutdown` resolves, then removes it (the kubelet
/// then deregisters the driver until the next instance registers again).
pub async fn serve(
    (path, listener): (PathBuf, UnixListener),
    registrar: Registrar,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    tracing::info!(socket = %path.display(), endpoint = %registrar.endpoint, "serving kubelet plugin registration");
    // Every connection goes through the authority fix-up (see crate::authority) on its
    // way to the gRPC server, over a socket pair.
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<UnixStream>>(16);
    let accept = tokio::spawn(async move {
        loop {
            let ext = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a registration connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (inner, server_side) = match UnixStream::pair() {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "socket pair for a registration connection");
                    continue;
                }
            };
            let (ext_r, mut ext_w) = ext.into_split();
            let (mut in_r, in_w) = inner.into_split();
            tokio::spawn(async move {
                if let Err(e) = crate::authority::pump(ext_r, in_w).await {
                    tracing::debug!(error = %e, "registration connection ended");
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut in_r, &mut ext_w).await;
                let _ = ext_w.shutdown().await;
            });
            if tx.send(Ok(server_side)).await.is_err() {
                break;
            }
        }
    });
    let res = tonic::transport::Server::builder()
        .add_service(RegistrationServer::new(registrar))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::ReceiverStream::new(rx), shutdown)
        .await;
    accept.abort();
    let _ = std::fs::remove_file(&path);
    res.map_err(|e| anyhow::anyhow!("serving {}: {e}", path.display()))
}
