//! The node's TLS listener. Handshakes happen here (not in tonic) so that the server
//! configuration can be swapped while the node runs: each new connection is accepted with
//! the certificates current at that moment, which is how rotated certificates are picked
//! up without a restart. Established connections keep the certificate they started with.

use crate::material::TlsMaterial;
use crate::TlsError;
use rustls::ServerConfig;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a peer may take to complete its TLS handshake.
pub const ACCEPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default period between checks of the TLS directory for new files.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(30);

struct State {
    config: Arc<ServerConfig>,
    contents: Vec<u8>,
}

struct Inner {
    dir: PathBuf,
    state: RwLock<State>,
    material: watch::Sender<Arc<TlsMaterial>>,
}

/// The node's TLS identity, re-read from its directory when the files change.
#[derive(Clone)]
pub struct ReloadingAcceptor {
    inner: Arc<Inner>,
}

impl ReloadingAcceptor {
    /// Loads `dir`; any problem with it is returned (a node must not start half secured).
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let contents = TlsMaterial::contents(dir).unwrap_or_default();
        let material = TlsMaterial::load(dir)?;
        let config = material.server_config()?;
        let (tx, _) = watch::channel(Arc::new(material));
        Ok(ReloadingAcceptor {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                state: RwLock::new(State { config, contents }),
                material: tx,
            }),
        })
    }

    /// The material now in use; the receiver sees every successful reload.
    pub fn material(&self) -> watch::Receiver<Arc<TlsMaterial>> {
        self.inner.material.subscribe()
    }

    pub fn current(&self) -> Arc<TlsMaterial> {
        self.inner.material.borrow().clone()
    }

    fn acceptor(&self) -> TlsAcceptor {
        let state = self.inner.state.read().unwrap_or_else(|p| p.into_inner());
        TlsAcceptor::from(state.config.clone())
    }

    /// Re-reads the directory if any file changed. Ok(true): new certificates are in use.
    /// A change that does not load (half-written files, a key that does not match) is an
    /// error and the previous certificates stay in use.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let Some(contents) = TlsMaterial::contents(&self.inner.dir) else {
            // A file is missing right now (e.g. a Secret being replaced): retry later.
            return Ok(false);
        };
        {
            let state = self.inner.state.read().unwrap_or_else(|p| p.into_inner());
            if state.contents == contents {
                return Ok(false);
            }
        }
        let material = TlsMaterial::load(&self.inner.dir)?;
        let config = material.server_config()?;
        *self.inner.state.write().unwrap_or_else(|p| p.into_inner()) = State { config, contents };
        self.inner.material.send_replace(Arc::new(material));
        Ok(true)
    }

    /// Checks the directory every `interval` until `shutdown` changes.
    pub async fn watch(self, interval: Duration, mut shutdown: watch::Receiver<bool>) {
        let mut last_error = String::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => return,
            }
            match self.reload_if_changed() {
                Ok(true) => {
                    last_error.clear();
                    let m = self.current();
                    tracing::info!(dir = %self.inner.dir.display(), role = ?m.role, "TLS certificates reloaded; new connections use them");
                }
                Ok(false) => {}
                Err(e) => {
                    let msg = e.to_string();
                    if msg != last_error {
                        tracing::error!(error = %msg, "new TLS certificates not usable; keeping the previous ones");
                        last_error = msg;
                    }
                }
            }
        }
    }

    /// Accepts connections on `listener` and completes their handshakes concurrently;
    /// the stream yields only connections whose peers presented a certificate of the CA.
    pub fn incoming(&self, listener: TcpListener) -> TlsIncoming {
        let (tx, rx) = mpsc::channel(64);
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = tx.closed() => return,
                };
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Typically out of file descriptors: back off instead of spinning.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = this.acceptor();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(ACCEPT_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(tls).await;
                        }
                        Ok(Err(e)) => {
                            tracing::info!(%peer, error = %e, "TLS handshake refused")
                        }
                        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        TlsIncoming { rx }
    }
}

/// Connections that completed a mutual TLS handshake, for
/// `tonic::transport::Server::serve_with_incoming`.
pub struct TlsIncoming {
    rx: mpsc::Receiver<TlsStream<TcpStream>>,
}

impl tokio_stream::Stream for TlsIncoming {
    type Item = Result<TlsStream<TcpStream>, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|o| o.map(Ok))
    }
}
