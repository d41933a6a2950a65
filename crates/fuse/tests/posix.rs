//! POSIX behaviour of a ringfs mount backed by three real nodes.

mod common;

use common::*;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};

#[test]
fn basic_file_and_directory_operations() {
    if !fuse_available() {
        eprintln!("skipping: no /dev/fuse or fusermount3");
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
