//! One lazily connected gRPC channel per node address, shared by every call.
//!
//! A pool may carry credentials: a TLS identity (mutual TLS; every channel then dials
//! `https://` and verifies the node against the cluster CA) and an admin bearer token sent
//! with every call (for clusters run without TLS but with `--admin-token-file`).

use ringfs_proto::MAX_MESSAGE_BYTES;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::error::ClientError;

/// Timeout for establishing a TCP connection to a node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The metadata key of the admin token.
pub const AUTHORIZATION: &str = "authorization";

/// A channel to one node, with the pool's credentials attached to every call.
pub type NodeChannel = InterceptedService<Channel, Credentials>;

/// Adds `authorization: Bearer <token>` to every call when a token is configured.
#[derive(Clone, Default)]
pub struct Credentials {
    bearer: Option<MetadataValue<Ascii>>,
}

impl Interceptor for Credentials {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(b) = &self.bearer {
            req.metadata_mut().insert(AUTHORIZATION, b.clone());
        }
        Ok(req)
    }
}

#[derive(Clone, Default)]
pub struct ChannelPool {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    tls: Arc<RwLock<Option<ClientTlsConfig>>>,
    /// How many times the TLS configuration was replaced.
    tls_changes: Arc<std::sync::atomic::AtomicU64>,
    credentials: Credentials,
}

/// Reads an admin token file: one line, surrounding whitespace ignored.
pub fn read_token_file(path: &Path) -> Result<String, ClientError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ClientError::Invalid(format!(
            "cannot read the admin token file {}: {e}",
            path.display()
        ))
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ClientError::Invalid(format!(
            "the admin token file {} is empty; put the token on its first line",
            path.display()
        )));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ClientError::Invalid(format!(
            "the admin token in {} must be printable ASCII without spaces",
            path.display()
        )));
    }
    Ok(token.to_string())
}

impl ChannelPool {
    /// A pool without credentials: plaintext channels.
    pub fn new() -> Self {
        Self::default()
    }

    /// A pool presenting the identity in `tls_dir` (mutual TLS) and/or sending the token
    /// in `token_file`. Problems with either are reported with the file at fault.
    pub fn secured(tls_dir: Option<&Path>, token_file: Option<&Path>) -> Result<Self, ClientError> {
        let tls = match tls_dir {
            Some(dir) => Some(
                ringfs_tls::TlsMaterial::load(dir)
                    .map_err(|e| ClientError::Invalid(format!("TLS (--tls-dir): {e}")))?
                    .client_tls(),
            ),
            None => None,
        };
        let token = token_file.map(read_token_file).transpose()?;
        Self::with_credentials(tls, token.as_deref())
    }

    /// A pool with the given TLS configuration and admin token.
    pub fn with_credentials(
        tls: Option<ClientTlsConfig>,
        token: Option<&str>,
    ) -> Result<Self, ClientError> {
        let bearer = match token {
            Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| {
                ClientError::Invalid("the admin token must be printable ASCII".into())
            })?),
            None => None,
        };
        Ok(ChannelPool {
            channels: Default::default(),
            tls: Arc::new(RwLock::new(tls)),
            tls_changes: Default::default(),
            credentials: Credentials { bearer },
        })
    }

    /// How many times [`Self::set_tls`] replaced the TLS configuration (rotations seen).
    pub fn tls_changes(&self) -> u64 {
        self.tls_changes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether channels use TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.read().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Replaces the TLS configuration (rotated certificates). Channels made so far are
    /// dropped from the pool, so the next call to each node connects with the new identity;
    /// calls already holding a channel finish on the old connection.
    pub fn set_tls(&self, tls: Option<ClientTlsConfig>) {
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = tls;
        self.tls_changes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The channel to `addr` (`host:port`, or a URI whose scheme is replaced by the
    /// pool's). Connection happens on first use; a broken connection is re-established by
    /// tonic transparently.
    pub fn get(&self, addr: &str) -> Result<NodeChannel, ClientError> {
        let ch = self.channel(addr)?;
        Ok(InterceptedService::new(ch, self.credentials.clone()))
    }

    fn channel(&self, addr: &str) -> Result<Channel, ClientError> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = map.get(addr) {
            return Ok(ch.clone());
        }
        let tls = self.tls.read().unwrap_or_else(|p| p.into_inner()).clone();
        let host = addr
            .strip_prefix("http://")
            .or_else(|| addr.strip_prefix("https://"))
            .unwrap_or(addr);
        let uri = match tls {
            Some(_) => format!("https://{host}"),
            None => format!("http://{host}"),
        };
        let mut endpoint = Endpoint::from_shared(uri)
            .map_err(|e| ClientError::Invalid(format!("bad node address {addr:?}: {e}")))?;
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| ClientError::Invalid(format!("TLS setup for {addr:?}: {e}")))?;
        }
        let ch = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(16 << 20))
            .connect_lazy();
        map.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// Follows certificate rotation: every `every`, re-reads `dir` and, when its files
    /// changed and hold a valid identity, switches the pool to it (see [`Self::set_tls`]).
    /// A directory that does not load (half-written, expired) keeps the current identity
    /// and is tried again at the next tick. Runs until the returned task is aborted.
    pub fn watch_tls_dir(&self, dir: PathBuf, every: Duration) -> tokio::task::JoinHandle<()> {
        let pool = self.clone();
        tokio::spawn(async move {
            let mut seen = ringfs_tls::TlsMaterial::contents(&dir);
            let mut failed = None;
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = ringfs_tls::TlsMaterial::contents(&dir);
                if now.is_none() || now == seen || now == failed {
                    continue;
                }
                match ringfs_tls::TlsMaterial::load(&dir) {
                    Ok(m) => {
                        pool.set_tls(Some(m.client_tls()));
                        seen = now;
                        tracing::info!(dir = %dir.display(), "TLS identity changed; new connections use it");
                    }
                    Err(e) => {
                        // Said once per content; a later change is tried again.
                        failed = now;
                        tracing::warn!(error = %e, "the TLS directory changed but does not load; keeping the current identity")
                    }
                }
            }
        })
    }

    /// Max message sizes applied to every generated client.
    pub const fn max_message_bytes() -> usize {
        MAX_MESSAGE_BYTES
    }
}
