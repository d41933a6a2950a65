//! Mutual TLS for every ringfs channel.
//!
//! Every party (node, client, admin) has one directory in the Kubernetes TLS Secret
//! layout: `ca.crt` (the cluster CA that signs everyone), `tls.crt` (its own certificate)
//! and `tls.key` (its private key), all PEM. Nodes accept only peers whose certificate
//! chains to `ca.crt`, and present their own; clients do the same towards nodes.
//!
//! What a peer may do is decided by the role written into its certificate as a URI
//! subject alternative name, `ringfs://role/<node|admin|client>`: the CA vouches for it,
//! so a verified certificate's role needs no other lookup.
//!
//! - [`issue`]: a self-signed cluster CA and certificates it signs (rcgen).
//! - [`material`]: loading a directory with clear errors, rustls / tonic configs, roles.
//! - [`server`]: the node's TLS listener, which re-reads the directory when it changes.

pub mod issue;
pub mod material;
pub mod server;

pub use issue::{CertAuthority, IssueOptions};
pub use material::{client_tls_from_pem, needs_renewal, peer_role, role_of_der, TlsMaterial};
pub use server::{ReloadingAcceptor, TlsIncoming};

use std::fmt;
use std::path::PathBuf;

/// File names inside a TLS directory (the `kubernetes.io/tls` Secret keys).
pub const CA_FILE: &str = "ca.crt";
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";
/// Only in a CA directory made by `ringfs certs ca`: the CA's private key.
pub const CA_KEY_FILE: &str = "ca.key";

/// Prefix of the URI subject alternative name that carries a certificate's role.
pub const ROLE_URI_PREFIX: &str = "ringfs://role/";

/// What a certificate's holder may do. Ordered by privilege: `Node` may do everything an
/// `Admin` may, and an `Admin` everything a `Client` may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Mounts and file I/O: the metadata and block services.
    Client,
    /// Cluster and volume administration on top of what a client may do.
    Admin,
    /// A storage node: everything, including Raft traffic and joining the cluster.
    Node,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Client, Role::Admin, Role::Node];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Admin => "admin",
            Role::Node => "node",
        }
    }

    /// The URI SAN that marks a certificate with this role.
    pub fn uri(self) -> String {
        format!("{ROLE_URI_PREFIX}{}", self.as_str())
    }

    pub fn parse(s: &str) -> Result<Role, TlsError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                TlsError::Invalid(format!(
                    "unknown role {s:?}: use one of node, admin, client"
                ))
            })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = TlsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::parse(s)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file of a TLS directory is missing or unusable.
    #[error("{}: {problem}. {fix}", path.display())]
    File {
        path: PathBuf,
        problem: String,
        fix: String,
    },
    /// A file would be overwritten.
    #[error("{} already exists; pass --force to replace it", path.display())]
    Exists { path: PathBuf },
    #[error("{0}")]
    Invalid(String),
    #[error("cannot generate a certificate: {0}")]
    Generate(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl TlsError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TlsError::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<rcgen::Error> for TlsError {
    fn from(e: rcgen::Error) -> Self {
        TlsError::Generate(e.to_string())
    }
}

/// The one crypto provider ringfs uses (ring); never the process default, which would be
/// ambiguous when several providers are compiled in.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
