//! POSIX behaviour of a ringfs mount backed by three real nodes.

mod common;

use common::*;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};

#[test]
fn basic_file_and_directory_operations() {
    if !require_fuse() {
        return;
    }
    let rt = runtime();
    let c = rt.block_on(TestCluster::start(3));
    let vol = rt.block_on(c.volume("posix", 1 << 30, 3));
    let m = mount(&c, vol, "mnt", Default::default(), &rt);
    let d = m.dir().to_path_buf();

    // Create, write, read back.
    fs::write(d.join("a.txt"), b"hello world").unwrap();
    assert_eq!(fs::read(d.join("a.txt")).unwrap(), b"hello world");
    assert_eq!(fs::metadata(d.join("a.txt")).unwrap().len(), 11);

    // Overwrite in the middle, extend with a hole, read-your-writes before close.
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(d.join("a.txt"))
        .unwrap();
    f.seek(SeekFrom::Start(6)).unwrap();
    f.write_all(b"WORLD").unwrap();
    f.seek(SeekFrom::Start(20)).unwrap();
    f.write_all(b"!").unwrap();
    let mut buf = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut buf).unwrap();
    let mut want = b"hello WORLD".to_vec();
    want.resize(20, 0);
    want.push(b'!');
    assert_eq!(buf, want);
    f.sync_all().unwrap();
    f.set_len(5).unwrap();
    drop(f);
    assert_eq!(fs::read(d.join("a.txt")).unwrap(), b"hello");

    // Directories, rename, links, symlinks, errno.
    fs::create_dir(d.join("dir")).unwrap();
    assert_eq!(
        fs::create_dir(d.join("dir")).unwrap_err().raw_os_error(),
        Some(libc::EEXIST)
    );
    fs::rename(d.join("a.txt"), d.join("dir/b.txt")).unwrap();
    fs::hard_link(d.join("dir/b.txt"), d.join("c.txt")).unwrap();
    assert_eq!(fs::metadata(d.join("c.txt")).unwrap().nlink(), 2);
    std::os::unix::fs::symlink("dir/b.txt", d.join("s")).unwrap();
    assert_eq!(
        fs::read_link(d.join("s")).unwrap().to_str(),
        Some("dir/b.txt")
    );
    assert_eq!(fs::read(d.join("s")).unwrap(), b"hello");
    assert_eq!(
        fs::remove_dir(d.join("dir")).unwrap_err().raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    let mut names: Vec<String> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["c.txt", "dir", "s"]);
    fs::set_permissions(d.join("c.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        fs::metadata(d.join("c.txt")).unwrap().mode() & 0o7777,
        0o600
    );
    assert_eq!(
        fs::metadata(d.join("x".repeat(300)))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENAMETOOLONG)
    );

    // O_APPEND appends at the end.
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(d.join("c.txt"))
        .unwrap();
    f.write_all(b"+more").unwrap();
    drop(f);
    assert_eq!(fs::read(d.join("dir/b.txt")).unwrap(), b"hello+more");

    // Unlink of an open file: the handle keeps working until closed.
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o644)
        .truncate(true)
        .open(d.join("tmp"))
        .unwrap();
    f.write_all(b"still here").unwrap();
    f.sync_all().unwrap();
    fs::remove_file(d.join("tmp")).unwrap();
    assert!(!d.join("tmp").exists());
    let mut buf = String::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_string(&mut buf).unwrap();
    assert_eq!(buf, "still here");
    drop(f);

    // A file larger than a block and the flush threshold.
    let big = content(7, 21 << 20);
    fs::write(d.join("big"), &big).unwrap();
    assert_eq!(fs::read(d.join("big")).unwrap(), big);

    m.unmount().unwrap();
}

/// A block copy corrupted on disk is detected by a read through the mount, the right
/// bytes are served from another replica, and the bad copy is re-written.
#[test]
fn corrupt_copy_read_through_the_mount_is_repaired() {
    if !require_fuse() {
        return;
    }
    use ringfs_core::fs::{FsOp, FsReply};
    let rt = runtime();
    let c = rt.block_on(TestCluster::start(3));
    let vol = rt.block_on(c.volume("repair", 1 << 30, 3));
    let data = content(11, (3 << 20) + 4567);
    rt.block_on(put_bytes(&vol, "/f", &data)).unwrap();
    let files = rt.block_on(wait_for(
        "the block on all nodes",
        std::time::Duration::from_secs(20),
        || async {
            let f: Vec<_> = (1..=3).map(|i| c.block_files(i)).collect();
            f.iter().all(|v| v.len() == 1).then_some(f)
        },
    ));
    // Corrupt the copy the mount reads first, so the read must detect it.
    let ino = rt.block_on(vol.stat("/f")).unwrap().ino;
    let slices = match rt
        .block_on(vol.fs(FsOp::ReadChunk { ino, chunk: 0 }))
        .unwrap()
    {
        FsReply::Chunk { slices, .. } => slices,
        other => panic!("expected a chunk, got {other:?}"),
    };
    assert_eq!(slices.len(), 1);
    let block = slices[0].blocks[0];
    let view = rt.block_on(vol.cluster.layout()).unwrap();
    let first = vol.cluster.read_replicas(&view, &block.id)[0].node;
    let bad_path = files[(first - 1) as usize][0].clone();
    let good = fs::read(&files[(first % 3) as usize][0]).unwrap();
    let mut bytes = fs::read(&bad_path).unwrap();
    let at = bytes.len() - 777;
    bytes[at] ^= 0xa5;
    fs::write(&bad_path, &bytes).unwrap();

    let m = mount(&c, vol, "mnt", Default::default(), &rt);
    assert_eq!(fs::read(m.dir().join("f")).unwrap(), data);
    rt.block_on(wait_for(
        "the corrupt copy to be re-written",
        std::time::Duration::from_secs(20),
        || async {
            let f = c.block_files(first);
            (f.len() == 1 && fs::read(&f[0]).ok().as_ref() == Some(&good)).then_some(())
        },
    ));
    m.unmount().unwrap();
}

/// Runs `sh -c script` as uid/gid 65534 (nobody) with no supplementary groups, in `dir`.
fn as_nobody(dir: &std::path::Path, script: &str) -> std::process::Output {
    std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .current_dir(dir)
        .output()
        .expect("run setpriv (util-linux)")
}

fn ok_as_nobody(dir: &std::path::Path, script: &str) {
    let o = as_nobody(dir, script);
    assert!(
        o.status.success(),
        "as nobody: `{script}` failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Asserts the script fails and its error output names `msg` (the errno's text).
fn fails_as_nobody(dir: &std::path::Path, script: &str, msg: &str) {
    let o = as_nobody(dir, script);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains(msg),
        "as nobody: `{script}` should fail with {msg:?}; status {}, stderr {err:?}",
        o.status
    );
}

/// Permission checks as root and as a real non-root user (through setpriv), set-group-ID
/// directory inheritance, and clearing of set-user/group-ID bits on write and chown.
#[test]
fn permissions_as_root_and_non_root() {
    if !require_fuse() {
        return;
    }
    // setpriv is in util-linux, part of every Debian install.
    assert!(
        which("setpriv").is_some(),
        "setpriv (util-linux) is missing"
    );
    let rt = runtime();
    let c = rt.block_on(TestCluster::start(3));
    // The non-root user must be able to reach the mount point.
    fs::set_permissions(c.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let vol = rt.block_on(c.volume("perms", 1 << 30, 3));
    let opts = ringfs_fuse::MountOptions {
        allow_other: true,
        ..Default::default()
    };
    let m = mount(&c, vol, "mnt", opts, &rt);
    let d = m.dir().to_path_buf();
    let mode = |p: &str| fs::metadata(d.join(p)).unwrap().mode() & 0o7777;
    let owner = |p: &str| {
        let md = fs::metadata(d.join(p)).unwrap();
        (md.uid(), md.gid())
    };

    fs::create_dir(d.join("pub")).unwrap();
    fs::set_permissions(d.join("pub"), fs::Permissions::from_mode(0o777)).unwrap();
    fs::create_dir(d.join("priv")).unwrap();
    fs::set_permissions(d.join("priv"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(d.join("priv/secret"), b"s").unwrap();
    fs::write(d.join("pub/rootfile"), b"r").unwrap();
    fs::set_permissions(d.join("pub/rootfile"), fs::Permissions::from_mode(0o644)).unwrap();

    // Root passes permission bits: a mode-0 file is still readable and writable by root.
    fs::write(d.join("pub/zero"), b"z").unwrap();
    fs::set_permissions(d.join("pub/zero"), fs::Permissions::from_mode(0o000)).unwrap();
    assert_eq!(fs::read(d.join("pub/zero")).unwrap(), b"z");

    // A non-root user: EACCES on what the mode bits deny.
    fails_as_nobody(&d, "cat priv/secret", "Permission denied");
    fails_as_nobody(&d, "ls priv", "Permission denied");
    fails_as_nobody(&d, "touch priv/x", "Permission denied");
    fails_as_nobody(&d, "echo x >> pub/rootfile", "Permission denied");
    fails_as_nobody(&d, "cat pub/zero", "Permission denied");
    assert_eq!(fs::read(d.join("pub/rootfile")).unwrap(), b"r");
    // What it creates is its own.
    ok_as_nobody(
        &d,
        "echo mine > pub/mine && cat pub/rootfile && mkdir pub/mydir",
    );
    assert_eq!(owner("pub/mine"), (65534, 65534));
    assert_eq!(owner("pub/mydir"), (65534, 65534));
    // EPERM: chmod/chown of others' files, giving a file away, a group it is not in.
    fails_as_nobody(&d, "chmod 777 pub/rootfile", "Operation not permitted");
    fails_as_nobody(&d, "chown 65534 pub/rootfile", "Operation not permitted");
    fails_as_nobody(&d, "chown 0 pub/mine", "Operation not permitted");
    fails_as_nobody(&d, "chgrp 0 pub/mine", "Operation not permitted");
    fails_as_nobody(
        &d,
        "touch -c -d 2001-01-01 pub/rootfile",
        "Operation not permitted",
    );
    assert_eq!(owner("pub/mine"), (65534, 65534));
    assert_eq!(mode("pub/rootfile"), 0o644);
    ok_as_nobody(&d, "chmod 600 pub/mine");
    assert_eq!(mode("pub/mine"), 0o600);
    // Unlinking in a directory it cannot write is refused; in its own it works.
    fails_as_nobody(&d, "rm -f priv/secret", "Permission denied");
    fs::set_permissions(d.join("pub"), fs::Permissions::from_mode(0o755)).unwrap();
    fails_as_nobody(&d, "rm -f pub/mine", "Permission denied");
    fs::set_permissions(d.join("pub"), fs::Permissions::from_mode(0o777)).unwrap();

    // Writing to a set-user-ID file clears the bit (and set-group-ID with group exec).
    fs::write(d.join("pub/suid"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(d.join("pub/suid"), fs::Permissions::from_mode(0o6777)).unwrap();
    assert_eq!(mode("pub/suid"), 0o6777);
    ok_as_nobody(&d, "echo 'exit 0' >> pub/suid");
    assert_eq!(
        mode("pub/suid"),
        0o777,
        "write by non-root clears S_ISUID/S_ISGID"
    );
    // Root writing keeps them (it holds CAP_FSETID).
    fs::set_permissions(d.join("pub/suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(d.join("pub/suid"))
        .unwrap()
        .write_all(b"# root\n")
        .unwrap();
    assert_eq!(mode("pub/suid"), 0o4755);
    // A non-root chown (to its own group) of its set-user-ID file clears the bit.
    fs::set_permissions(d.join("pub/mine"), fs::Permissions::from_mode(0o4755)).unwrap();
    ok_as_nobody(&d, "chgrp 65534 pub/mine");
    assert_eq!(mode("pub/mine"), 0o755);

    // Set-group-ID directory: new entries take its group, subdirectories the bit too.
    fs::create_dir(d.join("pub/sg")).unwrap();
    std::os::unix::fs::chown(d.join("pub/sg"), Some(0), Some(4242)).unwrap();
    fs::set_permissions(d.join("pub/sg"), fs::Permissions::from_mode(0o2777)).unwrap();
    ok_as_nobody(&d, "touch pub/sg/f && mkdir pub/sg/sub && ln -s f pub/sg/l");
    assert_eq!(owner("pub/sg/f"), (65534, 4242));
    assert_eq!(owner("pub/sg/sub"), (65534, 4242));
    assert_eq!(mode("pub/sg/sub") & 0o2000, 0o2000);
    let l = fs::symlink_metadata(d.join("pub/sg/l")).unwrap();
    assert_eq!((l.uid(), l.gid()), (65534, 4242));
    // Nested: the bit propagates further down.
    ok_as_nobody(&d, "mkdir pub/sg/sub/deeper && touch pub/sg/sub/deeper/g");
    assert_eq!(owner("pub/sg/sub/deeper/g"), (65534, 4242));
    // A set-group-ID file created by a non-member loses the bit (kernel rule).
    ok_as_nobody(&d, "touch pub/sg/x && chmod 2755 pub/sg/x || true");
    assert_eq!(
        mode("pub/sg/x") & 0o2000,
        0,
        "non-member cannot set S_ISGID"
    );
    // Outside a set-group-ID directory, the creator's group.
    ok_as_nobody(&d, "touch pub/plain");
    assert_eq!(owner("pub/plain"), (65534, 65534));

    m.unmount().unwrap();
}

fn which(cmd: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(cmd))
            .find(|p| p.exists())
    })
}

/// Sequential 1 MiB writes (with a final fsync) and reads through the mount and in a
/// local directory. A measurement, not a check: run with `--ignored --nocapture`.
#[test]
#[ignore = "measurement; run explicitly with --ignored --nocapture"]
fn measure_sequential_throughput() {
    if !fuse_available() {
        return;
    }
    const MIB: usize = 1 << 20;
    let total: usize = std::env::var("RINGFS_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let rt = runtime();
    let c = rt.block_on(TestCluster::start(3));
    let vol = rt.block_on(c.volume("bench", 8 << 30, 3));
    let m = mount(&c, vol, "mnt", Default::default(), &rt);
    let local = tempfile::tempdir().unwrap();
    let buf = content(3, MIB);
    for (name, dir) in [("local", local.path()), ("ringfs", m.dir())] {
        let path = dir.join("seq");
        let t = std::time::Instant::now();
        let mut f = fs::File::create(&path).unwrap();
        for _ in 0..total {
            f.write_all(&buf).unwrap();
        }
        f.sync_all().unwrap();
        drop(f);
        let w = t.elapsed().as_secs_f64();
        // Drop the page cache of the local file so both reads come from storage.
        let _ = fs::write("/proc/sys/vm/drop_caches", "1");
        let t = std::time::Instant::now();
        let mut f = fs::File::open(&path).unwrap();
        let mut rbuf = vec![0u8; MIB];
        let mut n = 0;
        loop {
            let k = f.read(&mut rbuf).unwrap();
            if k == 0 {
                break;
            }
            n += k;
        }
        assert_eq!(n, total * MIB);
        let r = t.elapsed().as_secs_f64();
        eprintln!(
            "{name}: write {total} MiB + fsync {:.0} MiB/s, read {:.0} MiB/s",
            total as f64 / w,
            total as f64 / r
        );
    }
    m.unmount().unwrap();
}

/// Thousands of small fsynced writes at random offsets of one file: background compaction
/// keeps the chunk's slice count bounded, the content always matches an in-memory
/// oracle, quota accounting stays exact, and the replaced blocks are garbage-collected.
#[test]
fn small_random_writes_are_compacted() {
    if !require_fuse() {
        return;
    }
    use ringfs_core::compact::COMPACT_THRESHOLD;
    use ringfs_core::fs::{FsOp, FsReply};
    use std::os::unix::fs::FileExt;
    let writes: usize = std::env::var("RINGFS_COMPACT_WRITES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let seed: u64 = std::env::var("RINGFS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::random::<u64>() | 1);
    eprintln!("compaction test seed {seed} (RINGFS_SEED to replay), {writes} writes");
    let rt = runtime();
    let c = rt.block_on(TestCluster::start(3));
    let vol = rt.block_on(c.volume("compact", 1 << 30, 3));
    let client = vol.clone();
    let m = mount(&c, vol, "mnt", Default::default(), &rt);
    let path = m.dir().join("f");
    let mut oracle = content(5, 1 << 20);
    fs::write(&path, &oracle).unwrap();
    let ino = fs::metadata(&path).unwrap().ino();
    let chunk0 = |v: ringfs_client::Vol| async move {
        match v.fs(FsOp::ReadChunk { ino, chunk: 0 }).await.unwrap() {
            FsReply::Chunk { slices, .. } => slices,
            other => panic!("expected a chunk, got {other:?}"),
        }
    };
    let slices_of = || rt.block_on(chunk0(client.clone()));

    let mut x = seed;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut most = 0;
    for i in 0..writes {
        let off = (next() % (3 << 19)) as usize;
        let len = 1 + (next() % 4096) as usize;
        let data = content(next(), len);
        f.write_all_at(&data, off as u64).unwrap();
        f.sync_data().unwrap();
        if oracle.len() < off + len {
            oracle.resize(off + len, 0);
        }
        oracle[off..off + len].copy_from_slice(&data);
        if i % 100 == 99 {
            most = most.max(slices_of().len());
            let mut got = vec![0u8; oracle.len()];
            f.read_exact_at(&mut got, 0).unwrap();
            assert!(got == oracle, "content differs after {} writes", i + 1);
        }
    }
    drop(f);
    eprintln!("most slices seen in the chunk: {most}");
    // Unbounded growth would reach one slice per write.
    assert!(
        most <= 4 * COMPACT_THRESHOLD,
        "{most} slices: compaction does not keep up"
    );
    rt.block_on(wait_for(
        "the chunk compacted below two thresholds",
        std::time::Duration::from_secs(60),
        || async {
            let s = chunk0(client.clone()).await;
            (s.len() <= 2 * COMPACT_THRESHOLD).then_some(())
        },
    ));
    // Fresh mount (no caches): the content is the oracle's.
    m.unmount().unwrap();
    let m = mount(&c, client.clone(), "mnt2", Default::default(), &rt);
    assert!(fs::read(m.dir().join("f")).unwrap() == oracle);
    // Quota: the file is the volume's only data.
    match rt.block_on(client.fs(FsOp::StatFs)).unwrap() {
        FsReply::StatFs(s) => assert_eq!(s.used_bytes, oracle.len() as u64),
        other => panic!("expected statfs, got {other:?}"),
    }
    // Every block no longer referenced is deleted from every node.
    rt.block_on(wait_for(
        "unreferenced blocks collected",
        std::time::Duration::from_secs(90),
        || async {
            let mut live: Vec<_> = chunk0(client.clone())
                .await
                .iter()
                .flat_map(|s| s.blocks.iter().map(|b| b.id))
                .collect();
            live.sort();
            live.dedup();
            let counts: Vec<usize> = (1..=3).map(|i| c.block_files(i).len()).collect();
            counts.iter().all(|n| *n == live.len()).then_some(())
        },
    ));
    m.unmount().unwrap();
}

/// Scattered small writes make one slice each. Buffered without a flush, they used to
/// become a single commit the state machine refused (over 4096 slices in one chunk), and
/// random 4K writes at depth filled a chunk faster than background compaction emptied
/// it: both failed the application's writes with EINVAL. Now commits are bounded and a
/// writer meeting a full chunk compacts it and retries. Every byte must land.
#[test]
fn scattered_small_writes_beyond_the_slice_limit_all_land() {
    if !require_fuse() {
        return;
    }
    let rt = runtime();
    let c = rt.block_on(TestCluster::start(3));
    let vol = rt.block_on(c.volume("slices", 1 << 30, 3));
    let m = mount(&c, vol, "mnt", Default::default(), &rt);
    let path = m.dir().join("scattered");
    // 10,000 one-byte writes two bytes apart: 10,000 separate extents in one chunk,
    // more than twice the per-chunk slice limit.
    const N: u64 = 10_000;
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    for i in 0..N {
        f.seek(SeekFrom::Start(2 * i)).unwrap();
        f.write_all(&[(i % 251) as u8 + 1]).unwrap();
    }
    f.sync_all().expect("fsync after scattered writes");
    drop(f);
    let data = fs::read(&path).unwrap();
    assert_eq!(data.len() as u64, 2 * N - 1);
    for i in 0..N as usize {
        assert_eq!(data[2 * i], (i % 251) as u8 + 1, "byte {}", 2 * i);
        if 2 * i + 1 < data.len() {
            assert_eq!(data[2 * i + 1], 0, "hole byte {}", 2 * i + 1);
        }
    }
}
