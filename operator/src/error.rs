//! The operator's one error type.

use crate::admin::AdminError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("ringfs cluster: {0}")]
    Admin(#[from] AdminError),
    #[error("object has no {0}")]
    MissingField(&'static str),
    /// Not a failure of the operator: something must happen first (retried with backoff).
    #[error("{0}")]
    Waiting(String),
    #[error("cannot encode status: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl Error {
    /// Short label for the error metric (bounded cardinality).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(_) => "finalizer",
            Error::Admin(_) => "cluster",
            Error::MissingField(_) => "invalid_object",
            Error::Serialize(_) => "serialize",
            Error::Waiting(_) => "waiting",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
