use thiserror::Error;
use tonic::{Code, Status};

/// Everything a CSI call can fail with; mapped to the spec's gRPC codes in one place.
#[derive(Debug, Error)]
pub enum CsiError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = CsiError> = std::result::Result<T, E>;

impl From<CsiError> for Status {
    fn from(e: CsiError) -> Status {
        let code = match &e {
            CsiError::InvalidArgument(_) => Code::InvalidArgument,
            CsiError::NotFound(_) => Code::NotFound,
            CsiError::AlreadyExists(_) => Code::AlreadyExists,
            CsiError::OutOfRange(_) => Code::OutOfRange,
            CsiError::Aborted(_) => Code::Aborted,
            CsiError::FailedPrecondition(_) => Code::FailedPrecondition,
            CsiError::Unavailable(_) => Code::Unavailable,
            CsiError::Internal(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

impl From<ringfs_client::ClientError> for CsiError {
    fn from(e: ringfs_client::ClientError) -> CsiError {
        use ringfs_client::ClientError as C;
        match e {
            C::Rejected(s) => {
                let msg = s.message().to_string();
                match s.code() {
                    Code::InvalidArgument => CsiError::InvalidArgument(msg),
                    Code::NotFound => CsiError::NotFound(msg),
                    Code::AlreadyExists => CsiError::AlreadyExists(msg),
                    Code::OutOfRange | Code::ResourceExhausted => CsiError::OutOfRange(msg),
                    Code::FailedPrecondition => CsiError::FailedPrecondition(msg),
                    Code::Unavailable => CsiError::Unavailable(msg),
                    _ => CsiError::Internal(format!("ringfs cluster: {msg}")),
                }
            }
            C::Unavailable(m) => CsiError::Unavailable(format!("ringfs cluster unavailable: {m}")),
            C::Invalid(m) => CsiError::InvalidArgument(m),
            other => CsiError::Internal(other.to_string()),
        }
    }
}
