//! ringfs wire protocols, split by audience:
//! - [`raft`]: node ↔ node consensus traffic and leader forwarding (internal);
//! - [`block`]: immutable block storage (clients and nodes);
//! - [`meta`]: volumes and the file-system namespace (clients);
//! - [`admin`]: cluster status, membership and layout (operators, the CLI);
//! - [`csi`]: the Container Storage Interface v1 (Kubernetes sidecars, `ringfs-csi`);
//! - [`pluginregistration`]: the kubelet's plugin registration API (`ringfs-csi` node).

#![allow(clippy::all, clippy::pedantic)]

pub mod raft {
    tonic::include_proto!("ringfs.raft.v1");
}
pub mod block {
    tonic::include_proto!("ringfs.block.v1");
}
pub mod meta {
    tonic::include_proto!("ringfs.meta.v1");
}
pub mod admin {
    tonic::include_proto!("ringfs.admin.v1");
}
pub mod csi {
    tonic::include_proto!("csi.v1");
}
pub mod pluginregistration {
    tonic::include_proto!("pluginregistration");
}

/// gRPC metadata key carrying the current leader's address on `unavailable` errors.
pub const LEADER_HINT_KEY: &str = "x-ringfs-leader";

/// Largest gRPC message any ringfs service accepts. Block data travels in streams of
/// chunks well below this; anything larger is refused with `resource_exhausted`.
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;

/// Size of the data chunks in block streams.
pub const STREAM_CHUNK_BYTES: usize = 1 << 20;
