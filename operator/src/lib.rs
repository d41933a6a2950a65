//! The ringfs Kubernetes operator: reconciles `DfsCluster` into a StatefulSet-backed ringfs
//! cluster (safe scale up and down) and `DfsVolume` into volumes in that cluster.

pub mod admin;
pub mod cluster;
pub mod conditions;
pub mod context;
pub mod crdgen;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod resources;
pub mod run;
pub mod tls;
pub mod volume;

#[cfg(test)]
mod reconcile_tests;
#[cfg(test)]
pub mod testing;
