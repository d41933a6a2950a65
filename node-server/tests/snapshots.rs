//! Copy-on-write snapshots and clones on a real 3-node cluster: point-in-time content,
//! independence of every copy, survival of the source's deletion, and garbage
//! collection of exactly the blocks nothing references any more.

mod common;

use common::*;
use ringfs_client::{ClientError, Vol, VolumeSource};
use ringfs_core::fs::{FileKind, FsError, FsOp, FsReply};
use ringfs_core::slice::CHUNK_SIZE;
use std::collections::BTreeSet;
use std::time::Duration;

const MIB: usize = 1 << 20;

/// Hex ids of every block the namespace of `vol` references (walking it from the root).
async fn referenced(vol: &Vol) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut dirs = vec!["/".to_string()];
    while let Some(dir) = dirs.pop() {
        for e in vol.list(&dir).await.expect("list") {
            let path = format!(
                "{}/{}",
                dir.trim_end_matches('/'),
                String::from_utf8_lossy(&e.name)
            );
            match e.kind {
                FileKind::Dir => dirs.push(path),
                FileKind::Symlink => {}
                FileKind::File => {
                    let size = vol.stat(&path).await.expect("stat").size;
                    for chunk in 0..size.div_ceil(CHUNK_SIZE) {
                        match vol
                            .fs(FsOp::ReadChunk { ino: e.ino, chunk })
                            .await
                            .expect("read chunk")
                        {
                            FsReply::Chunk { slices, .. } => {
                                for s in slices {
                                    out.extend(s.blocks.iter().map(|b| b.id.to_string()));
                                }
                            }
                            other => panic!("unexpected reply {other:?}"),
                        }
                    }
                }
            }
        }
    }
    out
}

async fn referenced_by(vols: &[&Vol]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for v in vols {
        out.extend(referenced(v).await);
    }
    out
}

/// Waits until every node stores exactly the blocks in `want` (RF 3 on 3 nodes).
async fn wait_blocks_on_disk(c: &TestCluster, want: &BTreeSet<String>, what: &str) {
    let started = std::time::Instant::now();
    let reported = std::sync::atomic::AtomicBool::new(false);
    wait_for(what, Duration::from_secs(60), || async {
        // Just before the deadline, say which node holds what it should not (or lacks).
        if started.elapsed() > Duration::from_secs(59)
            && !reported.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            for id in 1..=3 {
                let have: BTreeSet<String> = c
                    .block_files(id)
                    .iter()
                    .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect();
                eprintln!(
                    "node {id}: extra {:?} missing {:?}",
                    have.difference(want).collect::<Vec<_>>(),
                    want.difference(&have).collect::<Vec<_>>()
                );
            }
        }
        let all_match = (1..=3).all(|id| {
            let have: BTreeSet<String> = c
                .block_files(id)
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect();
            &have == want
        });
        all_match.then_some(())
    })
    .await;
}

async fn assert_file(vol: &Vol, path: &str, want: &[u8], what: &str) {
    let got = get_bytes(vol, path)
        .await
        .unwrap_or_else(|e| panic!("{what}: reading {path}: {e}"));
    assert!(
        got == want,
        "{what}: {path} differs ({} bytes, want {})",
        got.len(),
        want.len()
    );
}

fn code(e: &ClientError) -> Option<tonic::Code> {
    e.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshots_and_clones_are_frozen_independent_and_collected() {
    let mut c = TestCluster::start(3).await;
    let client = c.client();
    let src = c.volume("src", 1 << 30, 3).await;
    let a1 = content(1, 5 * MIB + 17);
    let b1 = content(2, 100 << 10);
    let c1 = content(3, 9 * MIB);
    src.mkdir_p("/dir").await.expect("mkdir");
    put_bytes(&src, "/a", &a1).await.expect("put a");
    put_bytes(&src, "/dir/b", &b1).await.expect("put b");
    put_bytes(&src, "/c", &c1).await.expect("put c");
    let used_at_snapshot = client.volume("src").await.expect("volume").used_bytes;

    // The snapshot: one command, ready at once, sized by the data it holds.
    let (snap, created) = client
        .create_snapshot("snap", "src")
        .await
        .expect("snapshot");
    assert!(created);
    assert_eq!(snap.source_volume, "src");
    assert_eq!(snap.size_bytes, used_at_snapshot);
    assert_eq!(snap.size_bytes, (a1.len() + b1.len() + c1.len()) as u64);
    let (again, created) = client.create_snapshot("snap", "src").await.expect("again");
    assert!(!created, "create is idempotent");
    assert_eq!(again, snap);
    let other = c.volume("other", 1 << 20, 3).await;
    let e = client
        .create_snapshot("snap", "other")
        .await
        .expect_err("name taken by another volume's snapshot");
    assert_eq!(code(&e), Some(tonic::Code::AlreadyExists), "{e}");
    let e = client
        .create_snapshot("nosrc", "missing")
        .await
        .expect_err("unknown source");
    assert_eq!(code(&e), Some(tonic::Code::NotFound), "{e}");
    client.delete_volume(&other.name).await.expect("rm other");

    // Change the source every way: overwrite, delete, add.
    let a2 = content(4, 3 * MIB);
    put_bytes(&src, "/a", &a2).await.expect("overwrite a");
    src.remove("/dir/b").await.expect("rm b");
    put_bytes(&src, "/new", &content(5, 64 << 10))
        .await
        .expect("put new");

    // The snapshot still shows the old bytes, and refuses writes.
    let snapvol = Vol::open_snapshot(client.clone(), "snap")
        .await
        .expect("open snapshot");
    assert_file(&snapvol, "/a", &a1, "snapshot").await;
    assert_file(&snapvol, "/dir/b", &b1, "snapshot").await;
    assert_file(&snapvol, "/c", &c1, "snapshot").await;
    let e = get_bytes(&snapvol, "/new")
        .await
        .expect_err("not in snapshot");
    assert!(matches!(e, ClientError::Fs(FsError::NotFound)), "{e}");
    let e = put_bytes(&snapvol, "/x", b"x")
        .await
        .expect_err("snapshots are read-only");
    assert!(matches!(e, ClientError::Fs(FsError::ReadOnly)), "{e}");
    assert!(
        client.volume("snap").await.is_err(),
        "a snapshot is no volume"
    );

    // A clone of the snapshot: must be at least the snapshot's size; then writable and
    // independent.
    let from_snap = VolumeSource::Snapshot("snap".into());
    let e = client
        .clone_volume("restored", snap.size_bytes - 1, 0, &from_snap)
        .await
        .expect_err("smaller than the snapshot");
    assert_eq!(code(&e), Some(tonic::Code::OutOfRange), "{e}");
    let e = client
        .clone_volume(
            "restored",
            1 << 30,
            0,
            &VolumeSource::Snapshot("nope".into()),
        )
        .await
        .expect_err("unknown snapshot");
    assert_eq!(code(&e), Some(tonic::Code::NotFound), "{e}");
    let (restored_info, created) = client
        .clone_volume("restored", 1 << 30, 0, &from_snap)
        .await
        .expect("clone snapshot");
    assert!(created);
    assert_eq!(restored_info.used_bytes, snap.size_bytes);
    assert_eq!(restored_info.source_snapshot, "snap");
    assert_eq!(restored_info.replication, 3);
    let restored = Vol::open(client.clone(), "restored").await.expect("open");
    assert_file(&restored, "/a", &a1, "restored").await;
    assert_file(&restored, "/dir/b", &b1, "restored").await;
    let a3 = content(6, 2 * MIB + 5);
    put_bytes(&restored, "/a", &a3).await.expect("write clone");
    put_bytes(&restored, "/dir/b2", b"only in the clone")
        .await
        .expect("write clone");
    assert_file(&restored, "/a", &a3, "restored").await;
    assert_file(&src, "/a", &a2, "source after clone writes").await;
    assert_file(&snapvol, "/a", &a1, "snapshot after clone writes").await;
    assert!(src.stat("/dir/b2").await.is_err());

    // A clone of the live source: a consistent copy with the same usage.
    let src_used = client.volume("src").await.expect("volume").used_bytes;
    let (copy_info, _) = client
        .clone_volume("copy", 1 << 30, 0, &VolumeSource::Volume("src".into()))
        .await
        .expect("clone volume");
    assert_eq!(copy_info.used_bytes, src_used);
    assert_eq!(copy_info.source_volume, "src");
    let copy = Vol::open(client.clone(), "copy").await.expect("open");
    assert_file(&copy, "/a", &a2, "copy").await;
    assert_file(&copy, "/c", &c1, "copy").await;
    // Only the source gets this one: its blocks are the source's alone.
    put_bytes(&src, "/late", &content(7, 2 * MIB))
        .await
        .expect("put late");

    // Snapshots and clones survive a restart of the whole cluster.
    for id in 1..=3 {
        c.kill(id);
    }
    for id in 1..=3 {
        c.restart(id);
    }
    c.wait_formed(3).await;
    let client = c.client();
    let src = Vol::open(client.clone(), "src").await.expect("open src");
    let snapvol = Vol::open_snapshot(client.clone(), "snap")
        .await
        .expect("open snapshot");
    let restored = Vol::open(client.clone(), "restored").await.expect("open");
    let copy = Vol::open(client.clone(), "copy").await.expect("open");
    let listed = client.list_snapshots(Some("src")).await.expect("ls");
    assert_eq!(listed, vec![snap.clone()]);

    // Every node stores exactly what the four namespaces reference.
    let everything = referenced_by(&[&src, &snapvol, &restored, &copy]).await;
    wait_blocks_on_disk(&c, &everything, "all blocks on every node").await;

    // Deleting the source frees only its own blocks.
    let without_src = referenced_by(&[&snapvol, &restored, &copy]).await;
    assert!(
        without_src.len() < everything.len(),
        "the source has blocks of its own"
    );
    assert!(client.delete_volume("src").await.expect("rm src"));
    wait_blocks_on_disk(&c, &without_src, "the source's own blocks collected").await;
    assert_file(&snapvol, "/a", &a1, "snapshot after source deletion").await;
    assert_file(&snapvol, "/dir/b", &b1, "snapshot after source deletion").await;
    assert_file(&snapvol, "/c", &c1, "snapshot after source deletion").await;
    assert_file(&restored, "/a", &a3, "restored after source deletion").await;
    assert_file(&copy, "/a", &a2, "copy after source deletion").await;
    assert_file(&copy, "/c", &c1, "copy after source deletion").await;

    // Deleting the snapshot frees the blocks only it held (the first /a); the clone made
    // from it keeps what it shares.
    let clones_only = referenced_by(&[&restored, &copy]).await;
    assert!(clones_only.len() < without_src.len());
    assert!(client.delete_snapshot("snap").await.expect("rm snap"));
    assert!(!client.delete_snapshot("snap").await.expect("idempotent"));
    wait_blocks_on_disk(&c, &clones_only, "the snapshot's own blocks collected").await;
    assert_file(&restored, "/dir/b", &b1, "restored after snapshot deletion").await;
    assert_file(&restored, "/c", &c1, "restored after snapshot deletion").await;
    assert!(client.list_snapshots(None).await.expect("ls").is_empty());

    // Nothing left referencing anything: every block goes.
    assert!(client.delete_volume("restored").await.expect("rm"));
    assert!(client.delete_volume("copy").await.expect("rm"));
    wait_blocks_on_disk(&c, &BTreeSet::new(), "every block collected").await;
}
