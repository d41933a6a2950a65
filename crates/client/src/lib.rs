//! The ringfs cluster client: metadata calls with leader discovery and retries, and
//! replicated block I/O with write quorums, checksum verification and replica failover.

pub mod blocks;
pub mod cluster;
pub mod error;
pub mod files;
pub mod pool;
pub mod session;

pub use cluster::{Cluster, VolumeSource};
pub use error::{ClientError, Result};
pub use files::Vol;
pub use pool::{ChannelPool, NodeChannel};
pub use session::Session;
