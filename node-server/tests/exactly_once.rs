//! Exactly-once commands on a real cluster: replies lost after the command committed,
//! nodes killed between commit and reply, and reads right after every node restarted.
//!
//! The nodes run with the test-only failpoint `--failpoint-lose-replies`: the first reply
//! to every file-system command that carries a request id is replaced by `unavailable`
//! *after* the command committed, exactly what a client sees when the leader dies or the
//! connection drops before the answer arrives. The client resends it (same session and
//! sequence number) and must get the first attempt's result, with the command applied
//! once.

mod common;

use common::*;
use ringfs_client::Vol;
use ringfs_core::fs::{ChunkSlice, FileKind, FsOp, FsReply, SetAttr};
use ringfs_core::ids::ROOT_INO;
use ringfs_core::slice::{BlockRef, Slice};
use ringfs_core::BlockId;
use std::time::Duration;

fn attr(r: FsReply) -> ringfs_core::fs::Attr {
    match r {
        FsReply::Attr(a) => a,
        other => panic!("expected attributes, got {other:?}"),
    }
}

async fn upload(vol: &Vol, data: &[u8]) -> BlockRef {
    vol.cluster
        .put_block(
            BlockId::from_u128(rand::random()),
            bytes::Bytes::copy_from_slice(data),
            vol.replication as usize,
        )
        .await
        .expect("put block")
}

async fn slices(vol: &Vol, ino: u64) -> Vec<Slice> {
    match vol
        .fs(FsOp::ReadChunk { ino, chunk: 0 })
        .await
        .expect("read chunk")
    {
        FsReply::Chunk { slices, .. } => slices,
        other => panic!("{other:?}"),
    }
}

async fn read_all(vol: &Vol, ino: u64, size: u64) -> Vec<u8> {
    vol.read_chunk(ino, 0, 0, size as u32)
        .await
        .expect("read")
        .to_vec()
}

/// Every mutating op kind with its reply lost once: each takes effect exactly once and
/// the caller sees the first attempt's result (no EEXIST from a retried create, no
/// ENOENT from a retried unlink, an append applied once), and every block the namespace
/// references stays readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_op_kind_is_applied_once_when_its_reply_is_lost() {
    let c = TestCluster::start_with(3, &["--failpoint-lose-replies"]).await;
    let vol = c.volume("once", 1 << 30, 3).await;

    // Mkdir, exclusive Create, Symlink.
    let d = attr(vol.fs(mkdir(ROOT_INO, "d")).await.expect("mkdir once"));
    assert_eq!(d.kind, FileKind::Dir);
    let f = attr(
        vol.fs(FsOp::Create {
            parent: d.ino,
            name: b"f".to_vec(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            exclusive: true,
        })
        .await
        .expect("exclusive create once"),
    );
    vol.fs(FsOp::Symlink {
        parent: d.ino,
        name: b"s".to_vec(),
        target: b"f".to_vec(),
        uid: 0,
        gid: 0,
    })
    .await
    .expect("symlink once");

    // Write: one slice, then Append twice: the file is the three pieces, each once.
    let b1 = upload(&vol, &[b'a'; 1000]).await;
    let w = attr(
        vol.fs(FsOp::Write {
            ino: f.ino,
            slices: vec![ChunkSlice {
                chunk: 0,
                slice: Slice {
                    pos: 0,
                    len: 1000,
                    skip: 0,
                    blocks: vec![b1],
                },
            }],
            min_size: 1000,
        })
        .await
        .expect("write once"),
    );
    assert_eq!(w.size, 1000);
    let b2 = upload(&vol, &[b'b'; 300]).await;
    let a = attr(
        vol.fs(FsOp::Append {
            ino: f.ino,
            blocks: vec![b2],
            len: 300,
        })
        .await
        .expect("append once"),
    );
    assert_eq!(a.size, 1300, "the append's own answer: applied once");
    let b3 = upload(&vol, &[b'c'; 200]).await;
    let a = attr(
        vol.fs(FsOp::Append {
            ino: f.ino,
            blocks: vec![b3],
            len: 200,
        })
        .await
        .expect("append once"),
    );
    assert_eq!(a.size, 1500);
    let mut want = vec![b'a'; 1000];
    want.extend_from_slice(&[b'b'; 300]);
    want.extend_from_slice(&[b'c'; 200]);
    assert_eq!(read_all(&vol, f.ino, 1500).await, want);

    // CompactChunk: its retry must not answer "applied: false" (the chunk did change,
    // by the first attempt), and the file reads the same from the fresh block.
    let before = slices(&vol, f.ino).await;
    assert_eq!(before.len(), 3);
    let fresh = upload(&vol, &want).await;
    let r = vol
        .fs(FsOp::CompactChunk {
            ino: f.ino,
            chunk: 0,
            expect: before,
            slices: vec![Slice {
                pos: 0,
                len: 1500,
                skip: 0,
                blocks: vec![fresh],
            }],
        })
        .await
        .expect("compact once");
    assert_eq!(r, FsReply::Compacted { applied: true });
    assert_eq!(slices(&vol, f.ino).await.len(), 1);
    assert_eq!(read_all(&vol, f.ino, 1500).await, want);

    // Link, Rename, Unlink, Rmdir.
    let l = attr(
        vol.fs(FsOp::Link {
            ino: f.ino,
            new_parent: ROOT_INO,
            new_name: b"hard".to_vec(),
        })
        .await
        .expect("link once"),
    );
    assert_eq!(l.nlink, 2);
    vol.fs(FsOp::Rename {
        parent: ROOT_INO,
        name: b"hard".to_vec(),
        new_parent: ROOT_INO,
        new_name: b"moved".to_vec(),
        no_replace: true,
    })
    .await
    .expect("rename once");
    vol.fs(FsOp::Unlink {
        parent: ROOT_INO,
        name: b"moved".to_vec(),
    })
    .await
    .expect("unlink once");
    vol.fs(mkdir(ROOT_INO, "empty")).await.expect("mkdir");
    vol.fs(FsOp::Rmdir {
        parent: ROOT_INO,
        name: b"empty".to_vec(),
    })
    .await
    .expect("rmdir once");

    // SetAttr(size): truncate to 700 and extend to 2000 (zeros), each once.
    let t = attr(
        vol.fs(FsOp::SetAttr {
            ino: f.ino,
            set: SetAttr {
                size: Some(700),
                ..Default::default()
            },
        })
        .await
        .expect("truncate once"),
    );
    assert_eq!(t.size, 700);
    let t = attr(
        vol.fs(FsOp::SetAttr {
            ino: f.ino,
            set: SetAttr {
                size: Some(2000),
                ..Default::default()
            },
        })
        .await
        .expect("extend once"),
    );
    assert_eq!(t.size, 2000);
    let mut want = want[..700].to_vec();
    want.resize(2000, 0);
    assert_eq!(read_all(&vol, f.ino, 2000).await, want);

    // The namespace as a whole: /d/f (nlink 1), /d/s, nothing else.
    let root: Vec<String> = vol
        .list("/")
        .await
        .expect("list /")
        .into_iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect();
    assert_eq!(root, vec!["d".to_string()]);
    let sub: Vec<String> = vol
        .list("/d")
        .await
        .expect("list /d")
        .into_iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect();
    assert_eq!(sub, vec!["f".to_string(), "s".to_string()]);
    assert_eq!(vol.stat("/d/f").await.expect("stat").nlink, 1);

    // Whole-file writes (create temp, write, rename over) with lost replies, over an
    // existing file: the content is the last one, readable, and no temp file is left.
    for i in 0..3u64 {
        let data = content(i, 100_000 + i as usize);
        put_bytes(&vol, "/d/whole", &data)
            .await
            .expect("write file");
        assert_eq!(get_bytes(&vol, "/d/whole").await.expect("read file"), data);
    }
    assert_eq!(vol.list("/d").await.expect("list").len(), 3);
}

/// Runs `op` while restarting every node the exit failpoint ended, until `op` finishes.
async fn through_exits<T: Send + 'static>(
    c: &mut TestCluster,
    restarts: &mut usize,
    op: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let mut task = tokio::spawn(op);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        tokio::select! {
            r = &mut task => return r.expect("op task"),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                *restarts += c.restart_exited().len();
                assert!(std::time::Instant::now() < deadline, "op did not finish in 120 s");
            }
        }
    }
}

/// The node handling a command (the leader, or the follower that forwarded it) exits
/// after the command committed and before it answers — every fourth command, on every
/// node, again and again. The client's retry reaches another node with the same request
/// id and gets the first attempt's result: each append is in the file once, in order,
/// each exclusive create answers the new file (not EEXIST), each unlink succeeds (not
/// ENOENT).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_are_applied_once_when_the_node_dies_before_answering() {
    let mut c = TestCluster::start_with(3, &["--failpoint-exit-after-commits", "4"]).await;
    let mut restarts = 0;
    let v = c.volume("exits", 1 << 30, 3).await;
    let vol = v.clone();
    let f = through_exits(&mut c, &mut restarts, async move {
        vol.fs(FsOp::Create {
            parent: ROOT_INO,
            name: b"log".to_vec(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            exclusive: true,
        })
        .await
    })
    .await;
    let f = attr(f.expect("create log"));
    let mut want = Vec::new();
    for i in 0..24u64 {
        let rec = record(i);
        want.extend_from_slice(&rec);
        let vol = v.clone();
        let size = through_exits(&mut c, &mut restarts, async move {
            let b = upload(&vol, &rec).await;
            vol.fs(FsOp::Append {
                ino: f.ino,
                blocks: vec![b],
                len: rec.len() as u64,
            })
            .await
        })
        .await;
        let size = attr(size.unwrap_or_else(|e| panic!("append {i}: {e}"))).size;
        assert_eq!(size, want.len() as u64, "append {i} applied once");

        let name = format!("f{i}");
        let vol = v.clone();
        let created = through_exits(&mut c, &mut restarts, async move {
            let created = vol
                .fs(FsOp::Create {
                    parent: ROOT_INO,
                    name: name.as_bytes().to_vec(),
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    exclusive: true,
                })
                .await;
            let unlinked = vol
                .fs(FsOp::Unlink {
                    parent: ROOT_INO,
                    name: name.into_bytes(),
                })
                .await;
            (created, unlinked)
        })
        .await;
        created
            .0
            .unwrap_or_else(|e| panic!("exclusive create {i}: {e}"));
        created.1.unwrap_or_else(|e| panic!("unlink {i}: {e}"));
    }
    eprintln!("{restarts} node exits between commit and reply");
    assert!(restarts >= 5, "the failpoint ended only {restarts} nodes");
    let got = through_exits(&mut c, &mut restarts, {
        let vol = v.clone();
        let len = want.len() as u64;
        async move { read_all(&vol, f.ino, len).await }
    })
    .await;
    assert!(got == want, "the log is not every record once, in order");
    let names: Vec<Vec<u8>> = vol_list(&mut c, &mut restarts, &v).await;
    assert_eq!(names, vec![b"log".to_vec()], "only the log is left");
}

async fn vol_list(c: &mut TestCluster, restarts: &mut usize, v: &Vol) -> Vec<Vec<u8>> {
    let vol = v.clone();
    through_exits(c, restarts, async move {
        vol.list("/")
            .await
            .expect("list /")
            .into_iter()
            .map(|e| e.name)
            .collect()
    })
    .await
}

/// One 32-byte log record.
fn record(i: u64) -> Vec<u8> {
    let mut r = format!("record {i:06} ").into_bytes();
    r.resize(31, b'.');
    r.push(b'\n');
    r
}

fn mkdir(parent: u64, name: &str) -> FsOp {
    FsOp::Mkdir {
        parent,
        name: name.as_bytes().to_vec(),
        mode: 0o755,
        uid: 0,
        gid: 0,
    }
}

/// Restarting every node at once leaves the old leader restored as leader of its old
/// term, whose stored commit index may lag what it acknowledged before (found by the
/// fault suite, seed 1796354377195471596). No read may return the state before the last
/// acknowledged write: each read below returns the newest value or fails. (On an idle
/// loopback cluster the stale window lasts a few round trips, so this rarely catches a
/// regression by itself: `node::tests` checks the gate's logic, and the fault suite
/// replays the seed under load.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_restored_by_a_restart_serves_no_stale_read() {
    let mut c = TestCluster::start(3).await;
    let vol = c.volume("restart", 1 << 30, 3).await;
    for round in 0..3u64 {
        let data = content(round, 1000 + round as usize);
        put_bytes(&vol, "/k", &data).await.expect("write");
        for id in 1..=3 {
            c.kill(id);
        }
        for id in 1..=3 {
            c.restart(id);
        }
        // Read as soon as any node answers, many times, through every node.
        let mut ok = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while ok < 40 {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: only {ok} reads succeeded within 60 s"
            );
            if let Ok(Ok(got)) =
                tokio::time::timeout(Duration::from_secs(5), get_bytes(&vol, "/k")).await
            {
                assert_eq!(
                    got.len(),
                    data.len(),
                    "round {round}: a read after the restart returned an older value"
                );
                assert_eq!(got, data, "round {round}");
                ok += 1;
            }
        }
    }
}
