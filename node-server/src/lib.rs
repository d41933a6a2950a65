//! The ringfs storage node.
//!
//! One process per node: a Raft member (openraft) replicating the metadata state machine
//! (membership, layouts, volumes, the namespace, block references), a block store of
//! immutable checksummed blocks, and the gRPC services clients and peers call.

pub mod admin;
pub mod app;
pub mod auth;
pub mod batch;
pub mod blocks;
pub mod config;
pub mod confirm;
pub mod error;
pub mod fsm;
pub mod http;
pub mod janitor;
pub mod logstore;
pub mod members;
pub mod meta;
pub mod migrate;
pub mod network;
pub mod node;
pub mod requests;
pub mod scrub;
pub mod sm;
pub mod snapshots;
#[cfg(test)]
pub(crate) mod testing;
pub mod types;

pub use app::run;
pub use config::Config;
