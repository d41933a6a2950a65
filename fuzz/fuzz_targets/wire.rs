//! postcard messages from the network, decoded into our types. The first input byte
//! picks the message; the rest is its encoding:
//! 0 `FsOp` (client → node, `MetaService.Fs`), 1 `FsResult` (node → client),
//! 2 `Command` and 3 `Response` (inside Raft log entries), 4 openraft `AppendEntries`,
//! 5 `Vote` and 6 `InstallSnapshot` requests (peer → node, `RaftService`),
//! 7 a slice list with a read range (`ReadChunk` replies, merged by every reader).
//! Contracts checked: decoding never panics; whatever decodes re-encodes to bytes that
//! decode to an equal value and encode identically (decode → encode → decode); a slice
//! list resolves to pieces that cover the read range exactly, in order, each inside its
//! block, and compaction plans stay inside the chunk.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfs_core::fs::{FsOp, FsReply, FsResult};
use ringfs_core::slice::{resolve, BlockRef, Piece, Slice, CHUNK_SIZE};
use ringfs_core::BlockId;
use ringfs_fuzz::{enc, write_seeds};
use ringfs_node::types::{Command, Response, TypeConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;

type AppendEntries = openraft::raft::AppendEntriesRequest<TypeConfig>;
type Vote = openraft::raft::VoteRequest<u64>;
type InstallSnapshot = openraft::raft::InstallSnapshotRequest<TypeConfig>;

/// decode → encode → decode → encode: both decodes agree (by their encodings, which
/// every type here has; not all have `PartialEq`).
fn round_trip<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    let v: T = postcard::from_bytes(bytes).ok()?;
    let once = enc(&v);
    let again: T = match postcard::from_bytes(&once) {
        Ok(v) => v,
        Err(e) => panic!("re-encoded value does not decode: {e}"),
    };
    assert_eq!(once, enc(&again), "encoding is not stable");
    Some(v)
}

fn check_slices(slices: &[Slice], start: u32, end: u32) {
    let valid: Vec<Slice> = slices.iter().filter(|s| s.is_valid()).cloned().collect();
    let end = end.min(CHUNK_SIZE as u32);
    let start = start.min(end);
    let pieces = resolve(&valid, start, end);
    let mut at = start;
    for p in &pieces {
        assert_eq!(p.pos(), at, "pieces must be contiguous: {pieces:?}");
        assert!(!p.is_empty(), "empty piece in {pieces:?}");
        if let Piece::Data {
            len,
            block,
            block_off,
            ..
        } = p
        {
            assert!(
                u64::from(*block_off) + u64::from(*len) <= u64::from(block.len),
                "piece {p:?} reads past its block"
            );
        }
        at += p.len();
    }
    assert_eq!(at, end, "pieces must cover the range: {pieces:?}");
    for run in ringfs_core::compact::plan(&valid) {
        assert!(
            u64::from(run.end()) <= CHUNK_SIZE,
            "run {run:?} leaves the chunk"
        );
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let blk = BlockRef {
        id: BlockId::from_u128(42),
        len: 8192,
        crc: 0xdead_beef,
    };
    let slice = Slice {
        pos: 100,
        len: 4000,
        skip: 10,
        blocks: vec![blk],
    };
    let with = |tag: u8, body: Vec<u8>| [vec![tag], body].concat();
    vec![
        with(
            0,
            enc(&FsOp::Lookup {
                parent: 1,
                name: b"file".to_vec(),
            }),
        ),
        with(
            0,
            enc(&FsOp::Write {
                ino: 2,
                slices: vec![ringfs_core::fs::ChunkSlice {
                    chunk: 0,
                    slice: slice.clone(),
                }],
                min_size: 4100,
            }),
        ),
        with(1, enc(&FsResult::Ok(FsReply::Link(b"target".to_vec())))),
        with(1, enc(&FsResult::Err(ringfs_core::fs::FsError::NotFound))),
        with(
            2,
            enc(&Command::CreateVolume {
                name: "vol".into(),
                capacity: 1 << 30,
                replication: 3,
                now_ns: 1,
            }),
        ),
        with(3, enc(&Response::Deleted(true))),
        with(
            4,
            enc(&AppendEntries {
                vote: openraft::Vote::new(1, 1),
                prev_log_id: None,
                entries: vec![openraft::Entry {
                    log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), 1),
                    payload: openraft::EntryPayload::Normal(Command::DeleteVolume {
                        name: "v".into(),
                    }),
                }],
                leader_commit: None,
            }),
        ),
        with(
            5,
            enc(&Vote {
                vote: openraft::Vote::new(2, 1),
                last_log_id: None,
            }),
        ),
        with(
            6,
            enc(&InstallSnapshot {
                vote: openraft::Vote::new(2, 1),
                meta: Default::default(),
                offset: 0,
                data: b"RFSS".to_vec(),
                done: false,
            }),
        ),
        with(
            7,
            enc(&(
                vec![
                    slice,
                    Slice::zero(0, 50),
                    Slice {
                        pos: 2000,
                        len: 100,
                        skip: 0,
                        blocks: vec![blk],
                    },
                ],
                0u32,
                5000u32,
            )),
        ),
    ]
}

fuzz_target!(
    init: {
        write_seeds("wire", seeds);
    },
    |data: &[u8]| {
        let Some((&tag, rest)) = data.split_first() else {
            return;
        };
        match tag % 8 {
            0 => {
                if let Some(op) = round_trip::<FsOp>(rest) {
                    let _ = op.is_read();
                }
            }
            1 => {
                round_trip::<FsResult>(rest);
            }
            2 => {
                round_trip::<Command>(rest);
            }
            3 => {
                round_trip::<Response>(rest);
            }
            4 => {
                round_trip::<AppendEntries>(rest);
            }
            5 => {
                round_trip::<Vote>(rest);
            }
            6 => {
                round_trip::<InstallSnapshot>(rest);
            }
            _ => {
                if let Some((slices, start, end)) = round_trip::<(Vec<Slice>, u32, u32)>(rest) {
                    check_slices(&slices, start, end);
                }
            }
        }
    }
);
