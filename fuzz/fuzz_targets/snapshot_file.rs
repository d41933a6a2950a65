//! Raft snapshot files (node-server/src/sm.rs, format `RFSS`): a follower receives them
//! from the leader and installs them record by record. The input is a snapshot file.
//! Contracts checked:
//! - the header and record readers never panic, whatever the bytes;
//! - a file that decodes completely re-encodes to bytes that decode to the same
//!   metadata and records (the writer and the reader agree on the format);
//! - the installed records, however corrupt, never make the state machine's readers
//!   panic (volumes, nodes, layouts, snapshots, GC and session listings answer an
//!   error instead).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfs_fuzz::{write_seeds, MemStore};
use ringfs_node::fsm;
use ringfs_node::sm::{
    read_snapshot_header, read_snapshot_record, write_snapshot_end, write_snapshot_header,
    write_snapshot_record, Reader, SnapshotRecord, Tbl, Writer, ALL_TABLES,
};
use ringfs_node::snapshots;
use ringfs_node::types::{Command, SnapshotMeta};

/// Records a fuzz input may hold (inputs are small; this bounds the work per input).
const MAX_RECORDS: usize = 4096;

type Records = Vec<SnapshotRecord>;

fn decode(bytes: &[u8]) -> Option<(SnapshotMeta, Records)> {
    let mut r = bytes;
    let meta = read_snapshot_header(&mut r).ok()?;
    let mut records = Vec::new();
    for _ in 0..MAX_RECORDS {
        match read_snapshot_record(&mut r) {
            Ok(Some(rec)) => records.push(rec),
            Ok(None) => return Some((meta, records)),
            Err(_) => return None,
        }
    }
    None
}

fn encode(meta: &SnapshotMeta, records: &Records) -> Vec<u8> {
    let mut out = Vec::new();
    let written = write_snapshot_header(&mut out, meta).and_then(|()| {
        for (t, k, v) in records {
            write_snapshot_record(&mut out, *t, k, v)?;
        }
        write_snapshot_end(&mut out)
    });
    if let Err(e) = written {
        panic!("decoded snapshot does not re-encode: {e}");
    }
    out
}

/// A snapshot of a small real state: one node, a volume with a file, a snapshot.
fn seeds() -> Vec<Vec<u8>> {
    use ringfs_core::fs::FsOp;
    use ringfs_core::layout::NodeSpec;
    let store = MemStore::default();
    let cmds = [
        Command::AddNode {
            spec: NodeSpec {
                id: 1,
                zone: "z".into(),
                capacity: 1 << 40,
            },
            addr: "127.0.0.1:1".into(),
            partitions: 8,
            replication: 1,
        },
        Command::CreateVolume {
            name: "vol".into(),
            capacity: 1 << 30,
            replication: 1,
            now_ns: 1,
        },
        Command::Fs {
            volume: 1,
            op: FsOp::Create {
                parent: 1,
                name: b"f".to_vec(),
                mode: 0o644,
                uid: 0,
                gid: 0,
                exclusive: false,
            },
            now_ns: 2,
        },
        Command::CreateSnapshot {
            name: "s".into(),
            volume: "vol".into(),
            now_ns: 3,
        },
    ];
    for c in cmds {
        if let Err(e) = fsm::apply(&store, c) {
            panic!("seed state: {e}");
        }
    }
    let records: Records = store
        .snapshot()
        .into_iter()
        .filter_map(|((t, k), v)| Some((*ALL_TABLES.get(t as usize)?, k, v)))
        .collect();
    vec![
        encode(&SnapshotMeta::default(), &records),
        encode(&SnapshotMeta::default(), &Vec::new()),
    ]
}

fuzz_target!(
    init: {
        write_seeds("snapshot_file", seeds);
    },
    |data: &[u8]| {
        let Some((meta, records)) = decode(data) else {
            return;
        };
        let again = encode(&meta, &records);
        let Some((meta2, records2)) = decode(&again) else {
            panic!("re-encoded snapshot does not decode");
        };
        assert_eq!(meta, meta2);
        assert_eq!(records, records2);

        let store = MemStore::default();
        for (t, k, v) in &records {
            if let Err(e) = store.put(*t, k, v) {
                panic!("in-memory put failed: {e}");
            }
        }
        let _ = fsm::list_volumes(&store);
        let _ = fsm::nodes(&store);
        let _ = fsm::layouts(&store);
        let _ = fsm::current_layout(&store);
        let _ = fsm::gc_batch(&store, 100);
        let _ = fsm::deleting_volumes(&store);
        let _ = fsm::expired_sessions(&store, i64::MAX, 100);
        let _ = snapshots::list_snapshots(&store);
        if let Ok(Some(v)) = fsm::volume_by_name(&store, "vol") {
            let _ = fsm::volume_origin(&store, v.info.id);
            let _ = fsm::sessions(&store, v.info.id);
            let _ = store.get(Tbl::Sys, b"next_volume_id");
        }
    }
);
