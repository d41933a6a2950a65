use thiserror::Error;

/// Errors raised by pure ringfs logic. Every message says what was wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CoreError {
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("layout cannot be computed: {0}")]
    Layout(String),
}
