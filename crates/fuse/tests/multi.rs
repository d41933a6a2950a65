//! Several mounts of one volume, and node failures under a mount.

mod common;

use common::*;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

#[test]
fn close_to_open_between_two_mounts() {
    if !require_fuse() {
        return;
    }
    let rt = runtime();
    let c = rt.block_on(TestCluster::start(3));
    let vol = rt.block_on(c.volume("shared", 1 << 30, 3));
    let a = mount(&c, vol.clone(), "a", Default::default(), &rt);
    let b = mount(&c, vol, "b", Default::default(), &rt);
    let (da, db) = (a.dir().to_path_buf(), b.dir().to_path_buf());

    fs::write(da.join("f"), b"first").unwrap();
    assert_eq!(fs::read(db.join("f")).unwrap(), b"first");
    // B now has the file's attributes cached (size 5). A rewrites it larger and closes;
    // B's next open must see all of it although its attribute cache has not expired.
    let before = fs::metadata(db.join("f")).unwrap().len();
    assert_eq!(before, 5);
    let big = content(1, 5 << 20);
    fs::write(da.join("f"), &big).unwrap();
    let mut got = Vec::new();
    fs::File::open(db.join("f"))
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    assert_eq!(got.len(), big.len());
    assert!(
        got == big,
        "mount B read different bytes than mount A wrote"
    );

    // Namespace changes are visible at once for new names (no negative caching).
    fs::create_dir(da.join("dir")).unwrap();
    fs::write(da.join("dir/x"), b"x").unwrap();
    assert_eq!(fs::read(db.join("dir/x")).unwrap(), b"x");
    a.unmount().unwrap();
    b.unmount().unwrap();
}

/// Pages of `path` in the page cache, counted without reading (mmap + mincore).
fn resident_pages(path: &std::path::Path) -> usize {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len() as usize;
    // SAFETY: a read-only shared mapping of an open file, unmapped before returning;
    // mincore only inspects it, touching no page.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        let pages = len.div_ceil(4096);
        let mut vec = vec![0u8; pages];
        assert_eq!(libc::mincore(p, len, vec.as_mut_ptr()), 0);
        libc::munmap(p, len);
        vec.iter().filter(|v| *v & 1 != 0).count()
    }
}

/// keep_cache: re-opening a file nobody changed keeps the kernel's pages; a same-size
/// overwrite by another mount drops them, so close-to-open still holds.
#[test]
fn page_cache_kept_only_for_unchanged_files() {
    if !require_fuse() {
        return;
    }
    use std::os::unix::fs::FileExt;
    let rt = runtime();
    let c = rt.block_on(TestCluster::start(3));
    let vol = rt.block_on(c.volume("keep", 1 << 30, 3));
    let a = mount(&c, vol.clone(), "a", Default::default(), &rt);
    let b = mount(&c, vol, "b", Default::default(), &rt);
    let (da, db) = (a.dir().to_path_buf(), b.dir().to_path_buf());
    let v1 = content(21, 1 << 20);
    fs::write(da.join("f"), &v1).unwrap();
    assert!(fs::read(db.join("f")).unwrap() == v1);
    // Unchanged since B's last open: its pages survive the next open.
    let pages = (1usize << 20) / 4096;
    assert_eq!(
        resident_pages(&db.join("f")),
        pages,
        "pages kept across opens"
    );
    assert!(fs::read(db.join("f")).unwrap() == v1);
    // A overwrites in place, same size; B's next open drops the stale pages.
    let v2 = content(22, 1 << 20);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(da.join("f"))
        .unwrap();
    f.write_all_at(&v2, 0).unwrap();
    drop(f);
    assert_eq!(fs::metadata(da.join("f")).unwrap().len(), 1 << 20);
    assert!(
        fs::read(db.join("f")).unwrap() == v2,
        "close-to-open: B must see A's overwrite"
    );
    // B writes: its next open does not trust its own cache bookkeeping either way,
    // and A sees B's data.
    let v3 = content(23, 1 << 20);
    fs::write(db.join("f"), &v3).unwrap();
    assert!(fs::read(db.join("f")).unwrap() == v3);
    assert!(fs::read(da.join("f")).unwrap() == v3);
    a.unmount().unwrap();
    b.unmount().unwrap();
}

#[test]
fn concurrent_appends_from_two_mounts_lose_nothing() {
    if !require_fuse() {
        return;
    }
    let rt = runtime();
    let c = rt.block_on(TestCluster::start(3));
    let vol = rt.block_on(c.volume("appends", 1 << 30, 3));
    let a = mount(&c, vol.clone(), "a", Default::default(), &rt);
    let b = mount(&c, vol, "b", Default::default(), &rt);
    fs::write(a.dir().join("log"), b"").unwrap();
    const PER_WRITER: u32 = 150;
    let writers: Vec<_> = [(0u8, a.dir().to_path_buf()), (1u8, b.dir().to_path_buf())]
        .into_iter()
        .flat_map(|(m, dir)| {
            // Two writers per mount: one keeps its file open (fsync now and then), one
            // opens and closes for every record, as log shippers do.
            [(m * 2, dir.clone(), true), (m * 2 + 1, dir, false)]
        })
        .map(|(id, dir, keep_open)| {
            std::thread::spawn(move || {
                let path = dir.join("log");
                let open = || {
                    fs::OpenOptions::new()
                        .append(true)
                        .custom_flags(0)
                        .open(&path)
                        .unwrap()
                };
                let mut f = open();
                for seq in 0..PER_WRITER {
                    if !keep_open {
                        f = open();
                    }
                    f.write_all(&record(id, seq)).unwrap();
                    if keep_open && seq % 10 == 9 {
                        f.sync_all().unwrap();
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let data = fs::read(a.dir().join("log")).unwrap();
    assert_eq!(
        data.len(),
        4 * PER_WRITER as usize * 64,
        "bytes lost or duplicated"
    );
    let mut next = [0u32; 4];
    for rec in data.chunks(64) {
        let id = (rec[1] - b'0') as usize;
        let seq: u32 = std::str::from_utf8(&rec[3..11]).unwrap().parse().unwrap();
        assert_eq!(rec, record(id as u8, seq).as_slice(), "torn record");
        assert_eq!(
            seq, next[id],
            "writer {id}: records out of order or missing"
        );
        next[id] += 1;
    }
    assert_eq!(next, [PER_WRITER; 4]);
    a.unmount().unwrap();
    b.unmount().unwrap();
}

#[test]
fn kill_a_node_during_a_long_write() {
    if !require_fuse() {
        return;
    }
    let rt = runtime();
    let mut c = rt.block_on(TestCluster::start(3));
    let vol = rt.block_on(c.volume("kill", 1 << 30, 3));
    let m = mount(&c, vol, "mnt", Default::default(), &rt);
    let path = m.dir().join("big");
    const STEP: usize = 4 << 20;
    const STEPS: usize = 16;
    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    let writer = {
        let path = path.clone();
        std::thread::spawn(move || -> std::io::Result<usize> {
            let mut f = fs::File::create(&path)?;
            for i in 0..STEPS {
                f.write_all(&content(i as u64, STEP))?;
                if i % 2 == 1 {
                    f.sync_all()?;
                    let _ = tx.send((i + 1) * STEP);
                }
            }
            f.sync_all()?;
            Ok(STEPS * STEP)
        })
    };
    // Kill the leader once a quarter of the file is durable.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(n) if n >= STEPS * STEP / 4 => break,
            _ => assert!(
                std::time::Instant::now() < deadline,
                "writer made no progress"
            ),
        }
    }
    let leader = rt.block_on(c.leader());
    c.kill(leader);
    let result = writer.join().unwrap();
    let durable = match &result {
        Ok(n) => *n,
        Err(e) => {
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "write failed with {e}");
            rx.try_iter().last().unwrap_or(STEPS * STEP / 4)
        }
    };
    eprintln!("write result {result:?}; {durable} bytes acknowledged by fsync");
    let data = fs::read(&path).unwrap();
    assert!(data.len() >= durable);
    for i in 0..durable / STEP {
        assert!(
            data[i * STEP..(i + 1) * STEP] == content(i as u64, STEP)[..],
            "block {i} of fsynced data is damaged"
        );
    }
    m.unmount().unwrap();
}

/// Usage the state machine accounts for the volume: (bytes, inodes).
fn usage(rt: &tokio::runtime::Runtime, vol: &ringfs_client::Vol) -> Option<(u64, u64)> {
    match rt.block_on(vol.fs(ringfs_core::fs::FsOp::StatFs)).ok()? {
        ringfs_core::fs::FsReply::StatFs(s) => Some((s.used_bytes, s.used_inodes)),
        _ => None,
    }
}

fn mounted(dir: &std::path::Path) -> bool {
    let dir = dir.to_string_lossy().to_string();
    fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(dir.as_str()))
}

#[test]
fn files_unlinked_while_open_by_a_dead_mount_are_dropped_after_its_lease() {
    if !require_fuse() {
        return;
    }
    let rt = runtime();
    let c = rt.block_on(TestCluster::start(3));
    let vol = rt.block_on(c.volume("leases", 1 << 30, 3));
    let dir = c.dir.path().join("dying");
    fs::create_dir_all(&dir).unwrap();
    // A real `ringfs mount` process, so that it can be killed -9.
    let mut child = std::process::Command::new(cli_bin())
        .arg("--cluster")
        .arg(c.seeds().join(","))
        .args(["mount", "leases"])
        .arg(&dir)
        .args(["--session-ttl", "2"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start ringfs mount");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !mounted(&dir) {
        assert!(
            std::time::Instant::now() < deadline,
            "ringfs mount did not mount"
        );
        assert!(child.try_wait().unwrap().is_none(), "ringfs mount exited");
        std::thread::sleep(Duration::from_millis(50));
    }
    let data = content(7, 3 << 20);
    fs::write(dir.join("kept"), b"linked").unwrap();
    fs::write(dir.join("tmp"), &data).unwrap();
    let (base_bytes, base_inodes) = usage(&rt, &vol).unwrap();
    let mut held = fs::File::open(dir.join("tmp")).unwrap();
    fs::remove_file(dir.join("tmp")).unwrap();
    // Unlinked but open: still readable through the handle, still accounted for.
    let mut got = Vec::new();
    held.read_to_end(&mut got).unwrap();
    assert!(got == data, "the unlinked file's content changed");
    assert_eq!(usage(&rt, &vol), Some((base_bytes, base_inodes)));
    assert!(base_bytes >= data.len() as u64);
    // While the mount lives it renews its lease: the orphan outlives several lease
    // periods (an observation window, not a wait).
    let window = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < window {
        assert_eq!(
            usage(&rt, &vol),
            Some((base_bytes, base_inodes)),
            "the orphan of a live mount was dropped"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // The mount dies without closing anything.
    child.kill().unwrap();
    child.wait().unwrap();
    drop(held);
    let _ = std::process::Command::new("fusermount3")
        .arg("-uz")
        .arg(&dir)
        .status();
    let start = std::time::Instant::now();
    wait_until(
        "the dead mount's orphan dropped",
        Duration::from_secs(60),
        || usage(&rt, &vol) == Some((base_bytes - data.len() as u64, base_inodes - 1)),
    );
    println!(
        "orphan of a killed mount dropped {:.1} s after the kill (lease 2 s)",
        start.elapsed().as_secs_f64()
    );
    // The linked file is untouched.
    assert_eq!(
        rt.block_on(get_bytes(&vol, "/kept")).unwrap(),
        b"linked".to_vec()
    );
}

#[test]
fn a_file_unlinked_by_another_mount_reads_as_stale() {
    if !require_fuse() {
        return;
    }
    let rt = runtime();
    let c = rt.block_on(TestCluster::start(3));
    let vol = rt.block_on(c.volume("stale", 1 << 30, 3));
    let a = mount(&c, vol.clone(), "a", Default::default(), &rt);
    let b = mount(&c, vol, "b", Default::default(), &rt);
    fs::write(a.dir().join("f"), content(3, 100_000)).unwrap();
    let mut held = fs::File::open(b.dir().join("f")).unwrap();
    fs::remove_file(a.dir().join("f")).unwrap();
    let mut buf = vec![0u8; 4096];
    let err = held.read(&mut buf).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ESTALE), "{err}");
    println!("read of a file unlinked by another mount: {err}");
}
