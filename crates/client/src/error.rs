use ringfs_core::fs::FsError;
use thiserror::Error;

/// Everything a ringfs client call can fail with.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The cluster answered and refused the request (bad input, not found, quota, ...).
    /// Shown as the node's message alone: it says what was wrong and what to do.
    #[error("{}", rejected_text(.0))]
    Rejected(tonic::Status),
    /// No node could be reached, or the cluster has no leader, within the retry budget.
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// A file-system operation failed with a POSIX error.
    #[error("{0}")]
    Fs(#[from] FsError),
    /// Block I/O could not reach enough replicas or found only corrupt copies.
    #[error("block I/O failed: {0}")]
    Blocks(String),
    /// A node has a newer layout than the writer: refresh the layout and retry.
    #[error("stale layout: {0}")]
    StaleLayout(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("protocol error: {0}")]
    Protocol(String),
}

fn rejected_text(s: &tonic::Status) -> String {
    if s.message().is_empty() {
        format!(
            "the cluster refused the request ({})",
            s.code().description()
        )
    } else {
        s.message().to_string()
    }
}

impl ClientError {
    /// The gRPC status code, when the error came from a node.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Rejected(s) => Some(s.code()),
            _ => None,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;
