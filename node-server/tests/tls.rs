//! Mutual TLS with real node processes: certified clients work, everyone else is refused
//! at the handshake; roles gate administration; rotated certificates are picked up.

mod common;
mod tls_support;

use common::{content, get_bytes, put_bytes, wait_for};
use ringfs_client::{ChannelPool, ClientError, Vol};
use ringfs_proto::admin::admin_service_client::AdminServiceClient;
use ringfs_proto::admin::{DrainRequest, HealthRequest};
use ringfs_proto::raft::raft_service_client::RaftServiceClient;
use ringfs_proto::raft::RaftRequest;
use ringfs_tls::issue::{CertAuthority, IssueOptions, DEFAULT_CA_VALIDITY};
use ringfs_tls::Role;
use std::time::{Duration, SystemTime};
use tls_support::TlsCluster;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use tonic::Code;

const REFUSED: &str = "TLS handshake refused";

/// A pool trusting the cluster CA and presenting `identity` (or none), bypassing the
/// checks `TlsMaterial::load` would make, as an attacker's client would.
fn raw_pool(ca_pem: &str, identity: Option<(String, String)>) -> ChannelPool {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .timeout(Duration::from_secs(10));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    ChannelPool::with_credentials(Some(tls), None).expect("pool")
}

/// A Health call (the least privileged RPC) through `pool` to `addr`.
async fn health(pool: &ChannelPool, addr: &str) -> Result<(), tonic::Status> {
    let ch = pool.get(addr).expect("channel");
    match tokio::time::timeout(
        Duration::from_secs(30),
        AdminServiceClient::new(ch).health(HealthRequest {}),
    )
    .await
    {
        Ok(r) => r.map(|_| ()),
        Err(_) => Err(tonic::Status::deadline_exceeded("no answer within 30s")),
    }
}

/// Asserts that `pool` is refused by node 1 at the TLS handshake: the call fails at the
/// transport level (never reaching a service) and the node logs one more refused handshake.
async fn assert_refused(c: &TlsCluster, pool: &ChannelPool, who: &str) {
    let before = c.log(1).matches(REFUSED).count();
    let err = health(pool, &c.nodes[0].addr)
        .await
        .expect_err(&format!("{who}: must be refused"));
    assert!(
        matches!(
            err.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled
        ),
        "{who}: expected a transport failure, got {err:?}"
    );
    wait_for(
        &format!("node 1 to log the refused handshake of {who}"),
        Duration::from_secs(20),
        || async { (c.log(1).matches(REFUSED).count() > before).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mtls_admits_certified_clients_and_refuses_everyone_else() {
    let c = TlsCluster::start(3, &[]).await;

    // A client certificate writes and reads a file on a volume an admin created.
    let admin = c.cluster_as(&c.admin);
    admin
        .create_volume("secure", 1 << 30, 3)
        .await
        .expect("admin creates a volume");
    let client = c.cluster_as(&c.client);
    let vol = Vol::open(client.clone(), "secure").await.expect("open");
    let data = content(7, 3 << 20);
    put_bytes(&vol, "/f", &data).await.expect("write over mTLS");
    assert_eq!(get_bytes(&vol, "/f").await.expect("read over mTLS"), data);

    // No client certificate at all.
    let ca_pem = c.ca.cert_pem().to_string();
    assert_refused(
        &c,
        &raw_pool(&ca_pem, None),
        "a client without a certificate",
    )
    .await;

    // A certificate (role admin even) from another CA.
    let other = CertAuthority::generate("other", DEFAULT_CA_VALIDITY).expect("ca");
    let foreign = other
        .issue(&IssueOptions::new(Role::Admin, "mallory"))
        .expect("issue");
    assert_refused(
        &c,
        &raw_pool(&ca_pem, Some((foreign.cert_pem, foreign.key_pem))),
        "a certificate of another CA",
    )
    .await;

    // An expired certificate of the right CA.
    let mut old = IssueOptions::new(Role::Admin, "expired");
    old.not_before = SystemTime::now() - Duration::from_secs(2 * 86_400);
    old.not_after = SystemTime::now() - Duration::from_secs(86_400);
    let expired = c.ca.issue(&old).expect("issue");
    assert_refused(
        &c,
        &raw_pool(&ca_pem, Some((expired.cert_pem, expired.key_pem))),
        "an expired certificate",
    )
    .await;

    // Plaintext gRPC to the Raft service of a node fails...
    let plain = ChannelPool::new();
    let vote = tokio::time::timeout(
        Duration::from_secs(30),
        RaftServiceClient::new(plain.get(&c.nodes[1].addr).expect("channel")).vote(RaftRequest {
            format: 1,
            payload: Default::default(),
        }),
    )
    .await
    .expect("the plaintext call ends");
    let err = vote.expect_err("plaintext Raft call must fail");
    assert!(
        matches!(
            err.code(),
            // The TLS listener drops the plaintext connection; depending on timing the
            // client reports the closed connection as cancelled.
            Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
        ),
        "plaintext Raft call: {err:?}"
    );
    // ...and so does raw HTTP/2 over TCP: the node answers with a TLS alert or closes,
    // never with an HTTP/2 frame.
    let reply = tokio::task::spawn_blocking({
        let addr = c.nodes[1].addr.clone();
        move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(&addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(15)))
                .expect("timeout");
            s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
                .expect("write");
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            buf
        }
    })
    .await
    .expect("raw tcp");
    assert!(
        reply.is_empty() || reply[0] == 0x15,
        "a plaintext peer must get nothing or a TLS alert, got {:02x?}",
        &reply[..reply.len().min(16)]
    );

    // Roles: a client certificate may not administer, nor speak Raft.
    let denied = client
        .create_volume("nope", 1 << 30, 3)
        .await
        .expect_err("a client certificate must not create volumes");
    match &denied {
        ClientError::Rejected(s) => {
            assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
            assert!(s.message().contains("role admin"), "{}", s.message());
            assert!(s.message().contains("role client"), "{}", s.message());
        }
        other => panic!("expected PERMISSION_DENIED, got {other}"),
    }
    let client_pool = c.pool_as(&c.client);
    let drain = AdminServiceClient::new(client_pool.get(&c.nodes[0].addr).expect("ch"))
        .drain(DrainRequest {
            node_id: 3,
            cancel: false,
        })
        .await
        .expect_err("a client certificate must not drain nodes");
    assert_eq!(drain.code(), Code::PermissionDenied, "{drain:?}");
    let admin_pool = c.pool_as(&c.admin);
    let vote = RaftServiceClient::new(admin_pool.get(&c.nodes[0].addr).expect("ch"))
        .vote(RaftRequest {
            format: 1,
            payload: Default::default(),
        })
        .await
        .expect_err("only nodes speak Raft");
    assert_eq!(vote.code(), Code::PermissionDenied, "{vote:?}");
    assert!(vote.message().contains("role node"), "{}", vote.message());

    // The admin's call went through, and nothing the refused parties tried changed state.
    let vols = admin.list_volumes().await.expect("list");
    let names: Vec<&str> = vols.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, vec!["secure"]);
    let status = admin.status().await.expect("status");
    assert!(
        status.nodes.iter().all(|n| n.state != "draining"),
        "{:?}",
        status.nodes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotated_certificates_are_used_for_new_connections() {
    let c = TlsCluster::start(1, &["--tls-reload-secs", "1"]).await;
    let addr = c.nodes[0].addr.clone();
    health(&c.pool_as(&c.admin), &addr)
        .await
        .expect("admin before rotation");
    // A long-lived client (like a mount) following its directory.
    let mine = c.dir.path().join("follower");
    for f in ["ca.crt", "tls.crt", "tls.key"] {
        std::fs::create_dir_all(&mine).expect("dir");
        std::fs::copy(c.admin.join(f), mine.join(f)).expect("copy");
    }
    let follower = ChannelPool::secured(Some(&mine), None).expect("pool");
    let watch = follower.watch_tls_dir(mine.clone(), Duration::from_millis(200));
    health(&follower, &addr)
        .await
        .expect("follower before rotation");

    // Rotate node 1 to a new CA (the most visible rotation: old identities stop working).
    let pki = c.dir.path().join("pki2");
    let new_ca = CertAuthority::generate("rotated", DEFAULT_CA_VALIDITY).expect("ca");
    let new_node = tls_support::identity(&new_ca, &pki, Role::Node, "node-1");
    let new_admin = tls_support::identity(&new_ca, &pki, Role::Admin, "admin");
    for f in ["ca.crt", "tls.crt", "tls.key"] {
        std::fs::copy(new_node.join(f), c.node_tls(1).join(f)).expect("rotate");
    }
    let log_before = c.log(1).matches("TLS certificates reloaded").count();
    wait_for(
        "the node to serve the rotated certificate",
        Duration::from_secs(60),
        || async {
            // A fresh pool: a new connection each attempt.
            health(&c.pool_as(&new_admin), &addr).await.ok()
        },
    )
    .await;
    assert!(c.log(1).matches("TLS certificates reloaded").count() > log_before);
    // The old CA's admin is now refused at the handshake.
    let err = health(&c.pool_as(&c.admin), &addr)
        .await
        .expect_err("old identities must be refused after rotation");
    assert!(
        matches!(
            err.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled
        ),
        "{err:?}"
    );

    // The follower's directory is renewed: it switches without being restarted, and its
    // next connection (the pool dropped the old ones) is admitted by the rotated node.
    for f in ["ca.crt", "tls.crt", "tls.key"] {
        std::fs::copy(new_admin.join(f), mine.join(f)).expect("renew");
    }
    wait_for(
        "the follower to pick up its renewed identity",
        Duration::from_secs(30),
        || async { (follower.tls_changes() > 0).then_some(()) },
    )
    .await;
    health(&follower, &addr)
        .await
        .expect("the follower's new connection with its renewed identity");
    watch.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_tls_an_admin_token_guards_administration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").expect("token file");
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "guess\n").expect("token file");
    // The nodes join each other (Join is administrative): they send the token themselves.
    let c =
        common::TestCluster::start_with(3, &["--admin-token-file", token.to_str().expect("utf8")])
            .await;
    let with = |file: &std::path::Path| {
        ringfs_client::Cluster::with_pool(
            c.seeds(),
            ChannelPool::secured(None, Some(file)).expect("pool"),
        )
        .expect("client")
    };
    for (who, client) in [("no token", c.client()), ("a wrong token", with(&wrong))] {
        match client.create_volume("v", 1 << 30, 3).await {
            Err(ClientError::Rejected(s)) => {
                assert_eq!(s.code(), Code::Unauthenticated, "{who}: {s:?}");
                assert!(s.message().contains("token"), "{who}: {}", s.message());
            }
            other => panic!("{who}: expected UNAUTHENTICATED, got {other:?}"),
        }
    }
    with(&token)
        .create_volume("v", 1 << 30, 3)
        .await
        .expect("the admin token creates a volume");
    // File I/O needs no token.
    let vol = Vol::open(c.client(), "v").await.expect("open");
    let data = content(3, 1 << 20);
    put_bytes(&vol, "/f", &data).await.expect("write");
    assert_eq!(get_bytes(&vol, "/f").await.expect("read"), data);
}
