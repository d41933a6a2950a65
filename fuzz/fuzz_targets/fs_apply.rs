//! The metadata state machine fed with untrusted commands.
//!
//! Clients send file-system ops as postcard bytes (`MetaService.Fs`); the node decodes
//! them into `FsOp` and every node applies them through `fsm::apply`. The input is a
//! sequence of postcard-encoded `Command`s applied in order to an in-memory store that
//! already holds one node and one volume (id 1). Contracts checked:
//! - `apply` never panics and never returns an error: errors mean storage failures,
//!   which are fatal for a node; anything a client can cause must be a `Response`;
//! - a refused command (`Refused`, or an `Fs` error) leaves the state untouched
//!   (fsm.rs: "a refused command leaves the state untouched");
//! - exactly once: a batch of session requests (`FsCalls`, what the leader's batcher
//!   proposes) delivered again — a client's retry after a lost reply — is answered with
//!   the first delivery's results and changes nothing, as long as no request of the batch
//!   acknowledges (forgets) the reply of another.
//!
//! Membership commands (AddNode, SetNodeState, RemoveNode, SyncReport) are skipped: only
//! the node's own admin paths issue them, after validating their arguments.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfs_core::fs::{ChunkSlice, FsOp, RequestId, SetAttr, XattrMode};
use ringfs_core::layout::NodeSpec;
use ringfs_core::slice::{BlockRef, Slice};
use ringfs_core::BlockId;
use ringfs_fuzz::{enc, write_seeds, MemStore};
use ringfs_node::fsm;
use ringfs_node::types::{CloneSource, Command, FsCall, Response};

const VOL: u64 = 1;
const MAX_COMMANDS: usize = 64;

fn prelude(store: &MemStore) {
    let node = Command::AddNode {
        spec: NodeSpec {
            id: 1,
            zone: "z".into(),
            capacity: 1 << 40,
        },
        addr: "127.0.0.1:1".into(),
        partitions: 16,
        replication: 1,
    };
    let vol = Command::CreateVolume {
        name: "vol".into(),
        capacity: 1 << 30,
        replication: 1,
        now_ns: 1,
    };
    for cmd in [node, vol] {
        match fsm::apply(store, cmd) {
            Ok(Response::Refused { message, .. }) => panic!("prelude refused: {message}"),
            Ok(_) => {}
            Err(e) => panic!("prelude failed: {e}"),
        }
    }
    assert!(
        fsm::volume_by_id(store, VOL).ok().flatten().is_some(),
        "the prelude's volume must have id {VOL}"
    );
}

fn block(n: u128, len: u32) -> BlockRef {
    BlockRef {
        id: BlockId::from_u128(n),
        len,
        crc: 0,
    }
}

fn fs(op: FsOp) -> Command {
    Command::Fs {
        volume: VOL,
        op,
        now_ns: 2,
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let file = |name: &[u8]| {
        fs(FsOp::Create {
            parent: 1,
            name: name.to_vec(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            exclusive: true,
        })
    };
    let write = |ino, pos, len| {
        fs(FsOp::Write {
            ino,
            slices: vec![ChunkSlice {
                chunk: 0,
                slice: Slice {
                    pos,
                    len,
                    skip: 0,
                    blocks: vec![block(u128::from(pos) + 7, len)],
                },
            }],
            min_size: u64::from(pos + len),
        })
    };
    let scripts: Vec<Vec<Command>> = vec![
        vec![
            file(b"a"),
            write(2, 0, 4096),
            fs(FsOp::ReadChunk { ino: 2, chunk: 0 }),
        ],
        vec![
            fs(FsOp::Mkdir {
                parent: 1,
                name: b"d".to_vec(),
                mode: 0o755,
                uid: 1,
                gid: 1,
            }),
            file(b"f"),
            fs(FsOp::Rename {
                parent: 1,
                name: b"f".to_vec(),
                new_parent: 2,
                new_name: b"g".to_vec(),
                no_replace: false,
            }),
            fs(FsOp::ResolvePath {
                path: "/d/g".into(),
            }),
            fs(FsOp::ReadDir {
                ino: 2,
                after: Vec::new(),
                limit: 10,
            }),
            fs(FsOp::Rmdir {
                parent: 1,
                name: b"d".to_vec(),
            }),
        ],
        vec![
            file(b"s"),
            fs(FsOp::Symlink {
                parent: 1,
                name: b"l".to_vec(),
                target: b"s".to_vec(),
                uid: 0,
                gid: 0,
            }),
            fs(FsOp::ReadLink { ino: 3 }),
            fs(FsOp::Link {
                ino: 2,
                new_parent: 1,
                new_name: b"h".to_vec(),
            }),
            fs(FsOp::Unlink {
                parent: 1,
                name: b"s".to_vec(),
            }),
            fs(FsOp::GetAttr { ino: 2 }),
        ],
        vec![
            file(b"x"),
            fs(FsOp::SetXattr {
                ino: 2,
                name: b"user.k".to_vec(),
                value: b"v".to_vec(),
                mode: XattrMode::Create,
            }),
            fs(FsOp::GetXattr {
                ino: 2,
                name: b"user.k".to_vec(),
            }),
            fs(FsOp::ListXattr { ino: 2 }),
            fs(FsOp::RemoveXattr {
                ino: 2,
                name: b"user.k".to_vec(),
            }),
            fs(FsOp::SetAttr {
                ino: 2,
                set: SetAttr {
                    size: Some(10),
                    mode: Some(0o600),
                    ..SetAttr::default()
                },
            }),
        ],
        vec![
            file(b"o"),
            write(2, 0, 100),
            write(2, 50, 100),
            fs(FsOp::Append {
                ino: 2,
                blocks: vec![block(99, 10)],
                len: 10,
            }),
            fs(FsOp::CompactChunk {
                ino: 2,
                chunk: 0,
                expect: vec![
                    Slice {
                        pos: 0,
                        len: 100,
                        skip: 0,
                        blocks: vec![block(7, 100)],
                    },
                    Slice {
                        pos: 50,
                        len: 100,
                        skip: 0,
                        blocks: vec![block(57, 100)],
                    },
                ],
                slices: vec![Slice {
                    pos: 0,
                    len: 150,
                    skip: 0,
                    blocks: vec![block(1000, 150)],
                }],
            }),
        ],
        vec![
            fs(FsOp::SessionOpen {
                session: 5,
                ttl_ms: 1000,
                info: "host".into(),
            }),
            file(b"t"),
            fs(FsOp::UnlinkHeld {
                parent: 1,
                name: b"t".to_vec(),
                session: 5,
            }),
            fs(FsOp::SessionRenew {
                session: 5,
                ttl_ms: 10,
            }),
            Command::ExpireSessions {
                sessions: vec![(VOL, 5)],
                now_ns: 1 << 40,
            },
            fs(FsOp::Release { ino: 2, session: 5 }),
            fs(FsOp::SessionClose { session: 5 }),
            fs(FsOp::StatFs),
        ],
        vec![
            file(b"u"),
            fs(FsOp::UnlinkOpen {
                parent: 1,
                name: b"u".to_vec(),
            }),
            fs(FsOp::Forget { ino: 2 }),
            Command::GcDone {
                ids: vec![BlockId::from_u128(7)],
            },
            Command::Unreferenced {
                ids: vec![BlockId::from_u128(7)],
            },
        ],
        {
            let call = |seq, acked_below, op| FsCall {
                volume: VOL,
                op,
                now_ns: 3,
                request: Some(RequestId {
                    session: 9,
                    seq,
                    acked_below,
                }),
            };
            let batch = Command::FsCalls(vec![
                call(
                    1,
                    1,
                    FsOp::Create {
                        parent: 1,
                        name: b"once".to_vec(),
                        mode: 0o644,
                        uid: 0,
                        gid: 0,
                        exclusive: true,
                    },
                ),
                call(
                    2,
                    1,
                    FsOp::Append {
                        ino: 2,
                        blocks: vec![block(5, 10)],
                        len: 10,
                    },
                ),
                call(
                    3,
                    1,
                    FsOp::Unlink {
                        parent: 1,
                        name: b"gone".to_vec(),
                    },
                ),
            ]);
            vec![
                fs(FsOp::SessionOpen {
                    session: 9,
                    ttl_ms: 60_000,
                    info: "fuzz".into(),
                }),
                batch.clone(),
                batch,
                Command::FsCalls(vec![call(
                    4,
                    4,
                    FsOp::Rename {
                        parent: 1,
                        name: b"once".to_vec(),
                        new_parent: 1,
                        new_name: b"twice".to_vec(),
                        no_replace: true,
                    },
                )]),
            ]
        },
        vec![
            file(b"a"),
            write(2, 0, 10),
            Command::CreateSnapshot {
                name: "snap".into(),
                volume: "vol".into(),
                now_ns: 3,
            },
            Command::CloneVolume {
                name: "clone".into(),
                capacity: 1 << 30,
                replication: 0,
                source: CloneSource::Snapshot("snap".into()),
                now_ns: 4,
            },
            Command::DeleteSnapshot {
                name: "snap".into(),
            },
            Command::ResizeVolume {
                name: "clone".into(),
                capacity: 1 << 31,
            },
            Command::DeleteVolume {
                name: "clone".into(),
            },
            Command::PurgeVolume { id: 2, limit: 100 },
        ],
    ];
    scripts
        .iter()
        .map(|cmds| cmds.iter().flat_map(enc).collect())
        .collect()
}

/// Admin-only commands, skipped (see the module docs).
fn membership(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::AddNode { .. }
            | Command::SetNodeState { .. }
            | Command::RemoveNode { .. }
            | Command::SyncReport { .. }
    )
}

fn refused(resp: &Response) -> bool {
    matches!(resp, Response::Refused { .. } | Response::Fs(Err(_)))
}

/// Whether delivering `calls` again must be answered from the stored replies: every call
/// carries a request id (session ops carry none: they are idempotent by nature, not
/// deduplicated), no two share one, and none acknowledges a request of the batch (which
/// would forget that reply, so a second delivery is refused as late instead).
fn replayable(calls: &[FsCall]) -> bool {
    let ids: Vec<RequestId> = calls.iter().filter_map(|c| c.request).collect();
    ids.len() == calls.len()
        && calls.iter().all(|c| !c.op.is_session_op())
        && ids.iter().enumerate().all(|(i, a)| {
            ids.iter().enumerate().all(|(j, b)| {
                i == j
                    || a.session != b.session
                    || (a.seq != b.seq && a.acked_below <= b.seq && b.acked_below <= a.seq)
            })
        })
}

fuzz_target!(
    init: {
        write_seeds("fs_apply", seeds);
    },
    |data: &[u8]| {
        let store = MemStore::default();
        prelude(&store);
        let mut rest = data;
        for _ in 0..MAX_COMMANDS {
            let Ok((cmd, tail)) = postcard::take_from_bytes::<Command>(rest) else {
                break;
            };
            rest = tail;
            if membership(&cmd) {
                continue;
            }
            let before = store.snapshot();
            let shown = format!("{cmd:?}");
            let again = match &cmd {
                Command::FsCalls(calls) if replayable(calls) => Some(cmd.clone()),
                _ => None,
            };
            let resp = match fsm::apply(&store, cmd) {
                Ok(resp) => resp,
                Err(e) => panic!("apply returned a storage error for {shown}: {e}"),
            };
            if refused(&resp) && store.snapshot() != before {
                panic!("refused command changed the state: {shown} -> {resp:?}");
            }
            if let Some(again) = again {
                let after = store.snapshot();
                match fsm::apply(&store, again) {
                    Ok(second) => assert_eq!(
                        second, resp,
                        "a second delivery of {shown} was not answered like the first"
                    ),
                    Err(e) => panic!("apply returned a storage error for {shown}: {e}"),
                }
                assert!(
                    store.snapshot() == after,
                    "a second delivery of {shown} changed the state"
                );
            }
        }
    }
);
