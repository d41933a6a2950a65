//! One lazily connected gRPC channel per node address, shared by every call.

use ringfs_proto::MAX_MESSAGE_BYTES;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

use crate::error::ClientError;

/// Timeout for establishing a TCP connection to a node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Default)]
pub struct ChannelPool {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl ChannelPool {
    pub fn new() -> Self {
        Self::default()
    }

    /// The channel to `addr` (`host:port` or a full `http://` URI). Connection happens on
    /// first use; a broken connection is re-established by tonic transparently.
    pub fn get(&self, addr: &str) -> Result<Channel, ClientError> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = map.get(addr) {
            return Ok(ch.clone());
        }
        let uri = if addr.starts_with("http://") || addr.starts_with("https://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let ch = Endpoint::from_shared(uri)
            .map_err(|e| ClientError::Invalid(format!("bad node address {addr:?}: {e}")))?
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

    /// Max message sizes applied to every generated client.
    pub const fn max_message_bytes() -> usize {
        MAX_MESSAGE_BYTES
    }
}
