use thiserror::Error;

/// Errors of the storage node's library code. Mapped to `tonic::Status` in exactly one
/// place ([`NodeError::into_status`]).
#[derive(Debug, Clone, Error)]
pub enum NodeError {
    #[error("storage: {0}")]
    Storage(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// This node is not the leader; `leader` is the leader's address when known.
    #[error("not the leader (leader: {})", leader.as_deref().unwrap_or("unknown"))]
    NotLeader { leader: Option<String> },
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl NodeError {
    pub fn into_status(self) -> tonic::Status {
        use tonic::{Code, Status};
        match self {
            NodeError::Storage(m) => Status::new(Code::Internal, m),
            NodeError::Invalid(m) => Status::invalid_argument(m),
            NodeError::NotFound(m) => Status::not_found(m),
            NodeError::AlreadyExists(m) => Status::already_exists(m),
            NodeError::FailedPrecondition(m) => Status::failed_precondition(m),
            NodeError::Unavailable(m) => Status::unavailable(m),
            NodeError::NotLeader { leader } => {
                let mut st = Status::unavailable(format!(
                    "this node is not the Raft leader; retry at {}",
                    leader
                        .as_deref()
                        .unwrap_or("the leader once one is elected")
                ));
                if let Some(l) = leader {
                    if let Ok(v) = l.parse() {
                        st.metadata_mut().insert(ringfs_proto::LEADER_HINT_KEY, v);
                    }
                }
                st
            }
        }
    }
}

impl From<NodeError> for tonic::Status {
    fn from(e: NodeError) -> Self {
        e.into_status()
    }
}

macro_rules! storage_err_from {
    ($($t:ty),*) => {$(
        impl From<$t> for NodeError {
            fn from(e: $t) -> Self { NodeError::Storage(e.to_string()) }
        }
    )*};
}
storage_err_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    std::io::Error,
    postcard::Error
);

pub type Result<T, E = NodeError> = std::result::Result<T, E>;
