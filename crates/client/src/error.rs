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
    /// A mutating request may or may not have been applied, and that can no longer be
    /// learned (the retries ran out, or the session ended while it was retried). Whatever
    /// it referenced must be kept: it may be part of the namespace now.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// A commit was never sent because preparing it (uploading its blocks) failed.
    #[error("{0}")]
    NotCommitted(Box<ClientError>),
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
    /// True when the request this error answers was certainly not applied: the state
    /// machine refused it (every file-system command validates before it changes
    /// anything), or it never left the client. Only then may what it referenced (freshly
    /// uploaded blocks) be deleted. Any other failure may follow a commit whose reply was
    /// lost.
    pub fn not_applied(&self) -> bool {
        match self {
            ClientError::Fs(_) | ClientError::Invalid(_) | ClientError::NotCommitted(_) => true,
            // Refused by the node's validation before anything was proposed.
            ClientError::Rejected(s) => s.code() == tonic::Code::InvalidArgument,
            _ => false,
        }
    }

    /// The gRPC status code, when the error came from a node.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Rejected(s) => Some(s.code()),
            ClientError::NotCommitted(e) => e.code(),
            _ => None,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;
