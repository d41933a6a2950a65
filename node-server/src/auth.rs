//! Who may call what: one table from gRPC method to the least role it needs, enforced by
//! a tower layer in front of every service.
//!
//! - With mutual TLS the connection is already verified against the cluster CA; the
//!   role comes from the peer certificate (`ringfs://role/...` URI SAN).
//! - Without TLS but with an admin token, calls that need more than the `client` role
//!   must carry `authorization: Bearer <token>`. This guards administration only: without
//!   TLS anyone on the network can read and forge traffic, so use TLS where that matters.
//! - With neither, everything is open (a warning is logged at start).

use ringfs_tls::material::{is_tls_ext, peer_role_ext};
use ringfs_tls::Role;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::codegen::http;
use tonic::Status;

/// The least role a gRPC method (`/package.Service/Method`) needs.
pub fn required_role(path: &str) -> Role {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    match service {
        "ringfs.raft.v1.RaftService" => Role::Node,
        "ringfs.admin.v1.AdminService" => match method {
            // Read-only views clients need (block placement, status pages).
            "GetLayout" | "Health" | "Status" | "RebalanceStatus" => Role::Client,
            // Join, Drain, Remove, Unreferenced and whatever is added later.
            _ => Role::Admin,
        },
        "ringfs.meta.v1.MetaService" => match method {
            "CreateVolume" | "ResizeVolume" | "DeleteVolume" | "CreateSnapshot"
            | "DeleteSnapshot" => Role::Admin,
            _ => Role::Client,
        },
        "ringfs.block.v1.BlockService" => match method {
            // Makes this node copy blocks from its peers: migration and repair only.
            "Pull" => Role::Node,
            _ => Role::Client,
        },
        _ => Role::Admin,
    }
}

/// How the node authenticates callers.
#[derive(Debug, Clone)]
pub enum Policy {
    /// Mutual TLS: roles from verified client certificates.
    Tls,
    /// No TLS: calls needing more than `client` must carry this bearer token.
    Token(String),
    /// No authentication at all.
    Open,
}

impl Policy {
    pub fn check(
        &self,
        path: &str,
        ext: &http::Extensions,
        headers: &http::HeaderMap,
    ) -> Result<(), Status> {
        let need = required_role(path);
        match self {
            Policy::Open => Ok(()),
            Policy::Tls => {
                if !is_tls_ext(ext) {
                    return Err(Status::unauthenticated(
                        "this node requires mutual TLS: connect with https and a client certificate of the cluster CA (--tls-dir)",
                    ));
                }
                let Some(role) = peer_role_ext(ext) else {
                    return Err(Status::permission_denied(format!(
                        "{path} needs a certificate with role {need}, but the client certificate carries no ringfs role (URI SAN ringfs://role/...); issue one with `ringfs certs issue --role {need}`"
                    )));
                };
                if role >= need {
                    Ok(())
                } else {
                    Err(Status::permission_denied(format!(
                        "{path} needs a certificate with role {need} (or higher), but the client certificate has role {role}; use an {need} certificate (`ringfs certs issue --role {need}`)"
                    )))
                }
            }
            Policy::Token(token) => {
                if need == Role::Client {
                    return Ok(());
                }
                let Some(value) = headers.get(ringfs_client::pool::AUTHORIZATION) else {
                    return Err(Status::unauthenticated(format!(
                        "{path} needs the admin token: send `authorization: Bearer <token>` (ringfs --admin-token-file FILE)"
                    )));
                };
                let expected = format!("Bearer {token}");
                if constant_time_eq(value.as_bytes(), expected.as_bytes()) {
                    Ok(())
                } else {
                    Err(Status::unauthenticated(format!(
                        "{path}: the admin token sent is wrong (check --admin-token-file)"
                    )))
                }
            }
        }
    }
}

/// Compares without an early exit, so the time taken does not reveal the matching prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The tower layer checking [`Policy`] before any service sees a request.
#[derive(Clone)]
pub struct AuthLayer {
    policy: Arc<Policy>,
}

impl AuthLayer {
    pub fn new(policy: Policy) -> Self {
        AuthLayer {
            policy: Arc::new(policy),
        }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            policy: self.policy.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    policy: Arc<Policy>,
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for Auth<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
    RB: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        futures::future::Either<futures::future::Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match self
            .policy
            .check(req.uri().path(), req.extensions(), req.headers())
        {
            Ok(()) => futures::future::Either::Right(self.inner.call(req)),
            Err(status) => {
                tracing::info!(path = %req.uri().path(), code = ?status.code(), "call refused");
                futures::future::Either::Left(futures::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_gives_each_method_its_role() {
        assert_eq!(
            required_role("/ringfs.raft.v1.RaftService/Vote"),
            Role::Node
        );
        assert_eq!(
            required_role("/ringfs.admin.v1.AdminService/Join"),
            Role::Admin
        );
        assert_eq!(
            required_role("/ringfs.admin.v1.AdminService/Drain"),
            Role::Admin
        );
        assert_eq!(
            required_role("/ringfs.admin.v1.AdminService/GetLayout"),
            Role::Client
        );
        assert_eq!(
            required_role("/ringfs.meta.v1.MetaService/Fs"),
            Role::Client
        );
        assert_eq!(
            required_role("/ringfs.meta.v1.MetaService/DeleteVolume"),
            Role::Admin
        );
        assert_eq!(
            required_role("/ringfs.block.v1.BlockService/Put"),
            Role::Client
        );
        assert_eq!(
            required_role("/ringfs.block.v1.BlockService/Pull"),
            Role::Node
        );
        assert_eq!(required_role("/unknown.Service/X"), Role::Admin);
        assert_eq!(required_role("garbage"), Role::Admin);
    }

    #[test]
    fn the_token_guards_admin_calls_only() {
        let p = Policy::Token("s3cret".into());
        let ext = http::Extensions::new();
        let mut h = http::HeaderMap::new();
        p.check("/ringfs.meta.v1.MetaService/Fs", &ext, &h).unwrap();
        let e = p
            .check("/ringfs.admin.v1.AdminService/Drain", &ext, &h)
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(e.message().contains("Bearer"), "{}", e.message());
        h.insert("authorization", "Bearer nope".parse().unwrap());
        let e = p
            .check("/ringfs.admin.v1.AdminService/Drain", &ext, &h)
            .unwrap_err();
        assert!(e.message().contains("wrong"), "{}", e.message());
        h.insert("authorization", "Bearer s3cret".parse().unwrap());
        p.check("/ringfs.admin.v1.AdminService/Drain", &ext, &h)
            .unwrap();
    }

    #[test]
    fn tls_policy_refuses_calls_that_did_not_come_over_tls() {
        let e = Policy::Tls
            .check(
                "/ringfs.meta.v1.MetaService/Fs",
                &http::Extensions::new(),
                &http::HeaderMap::new(),
            )
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        Policy::Open
            .check(
                "/ringfs.raft.v1.RaftService/Vote",
                &http::Extensions::new(),
                &http::HeaderMap::new(),
            )
            .unwrap();
    }
}
