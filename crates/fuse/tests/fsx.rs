//! Differential random-operation test (fsx style): the same random operations go to a
//! ringfs mount (three real nodes) and to a local directory, and every result (data,
//! errno) and the state of every touched path (type, size, mode, nlink, content,
//! listing) must match after every step; the whole tree is compared periodically.
//!
//! `RINGFS_FSX_SEED=<n>` replays a run; `RINGFS_FSX_OPS=<n>` sets its length.

mod common;

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

const NAMES: &[&str] = &["f0", "f1", "f2", "f3", "d0", "d1"];
const DIRS: &[&str] = &["", "d0", "d1", "d0/d1", "d1/d0"];
const MAX_OFFSET: u64 = 768 << 10;
const MAX_LEN: usize = 96 << 10;
const FULL_COMPARE_EVERY: usize = 100;

#[derive(Debug, Clone)]
enum Op {
    Write {
        path: String,
        off: u64,
        len: usize,
        seed: u64,
    },
    Append {
        path: String,
        len: usize,
        seed: u64,
    },
    Read {
        path: String,
        off: u64,
        len: usize,
    },
    Truncate {
        path: String,
        size: u64,
    },
    Rename {
        from: String,
        to: String,
        no_replace: bool,
    },
    Link {
        from: String,
        to: String,
    },
    Unlink {
        path: String,
    },
    Mkdir {
        path: String,
    },
    Rmdir {
        path: String,
    },
    Stat {
        path: String,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Symlink {
        target: String,
        path: String,
    },
    ReadDir {
        path: String,
    },
    Fsync {
        path: String,
    },
}

impl Op {
    fn paths(&self) -> Vec<&str> {
        match self {
            Op::Rename { from, to, .. } | Op::Link { from, to } => vec![from, to],
            Op::Write { path, .. }
            | Op::Append { path, .. }
            | Op::Read { path, .. }
            | Op::Truncate { path, .. }
            | Op::Unlink { path }
            | Op::Mkdir { path }
            | Op::Rmdir { path }
            | Op::Stat { path }
            | Op::Chmod { path, .. }
            | Op::Symlink { path, .. }
            | Op::ReadDir { path }
            | Op::Fsync { path } => vec![path],
        }
    }
}

fn random_path(rng: &mut StdRng) -> String {
    let dir = DIRS[rng.random_range(0..DIRS.len())];
    let name = NAMES[rng.random_range(0..NAMES.len())];
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn random_op(rng: &mut StdRng) -> Op {
    let path = random_path(rng);
    let off = if rng.random_bool(0.3) {
        rng.random_range(0..4096)
    } else {
        rng.random_range(0..MAX_OFFSET)
    };
    let len = if rng.random_bool(0.5) {
        rng.random_range(1..4096)
    } else {
        rng.random_range(1..MAX_LEN)
    };
    match rng.random_range(0..100) {
        0..=24 => Op::Write {
            path,
            off,
            len,
            seed: rng.random(),
        },
        25..=31 => Op::Append {
            path,
            len,
            seed: rng.random(),
        },
        32..=44 => Op::Read { path, off, len },
        45..=52 => Op::Truncate {
            path,
            size: rng.random_range(0..MAX_OFFSET),
        },
        53..=59 => Op::Rename {
            from: path,
            to: random_path(rng),
            no_replace: rng.random_bool(0.3),
        },
        60..=62 => Op::Link {
            from: path,
            to: random_path(rng),
        },
        63..=69 => Op::Unlink { path },
        70..=76 => Op::Mkdir { path },
        77..=80 => Op::Rmdir { path },
        81..=87 => Op::Stat { path },
        88..=90 => Op::Chmod {
            path,
            mode: [0o644, 0o600, 0o755, 0o640, 0o700][rng.random_range(0..5)],
        },
        91..=92 => Op::Symlink {
            target: random_path(rng),
            path,
        },
        93..=96 => Op::ReadDir {
            path: DIRS[rng.random_range(0..DIRS.len())].to_string(),
        },
        _ => Op::Fsync { path },
    }
}

/// What an operation returned, compared between the two file systems.
#[derive(Debug, PartialEq)]
enum Out {
    Done,
    Data(Vec<u8>),
    Stat(Meta),
    Names(Vec<String>),
}

#[derive(Debug, PartialEq)]
struct Meta {
    kind: &'static str,
    size: u64,
    mode: u32,
    nlink: u64,
}

fn meta(m: &fs::Metadata) -> Meta {
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else {
        "file"
    };
    Meta {
        kind,
        // Directory sizes are file-system specific.
        size: if ft.is_dir() { 0 } else { m.len() },
        mode: if ft.is_symlink() {
            0
        } else {
            m.mode() & 0o7777
        },
        nlink: m.nlink(),
    }
}

fn data(seed: u64, len: usize) -> Vec<u8> {
    content(seed, len)
}

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn apply(root: &Path, op: &Op) -> Result<Out, i32> {
    let p = |s: &str| root.join(s);
    match op {
        Op::Write {
            path,
            off,
            len,
            seed,
        } => {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(p(path))
                .map_err(errno)?;
            f.seek(SeekFrom::Start(*off)).map_err(errno)?;
            f.write_all(&data(*seed, *len)).map_err(errno)?;
            Ok(Out::Done)
        }
        Op::Append { path, len, seed } => {
            let mut f = fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o644)
                .open(p(path))
                .map_err(errno)?;
            f.write_all(&data(*seed, *len)).map_err(errno)?;
            Ok(Out::Done)
        }
        Op::Read { path, off, len } => {
            let mut f = fs::File::open(p(path)).map_err(errno)?;
            f.seek(SeekFrom::Start(*off)).map_err(errno)?;
            let mut buf = Vec::new();
            f.take(*len as u64).read_to_end(&mut buf).map_err(errno)?;
            Ok(Out::Data(buf))
        }
        Op::Truncate { path, size } => {
            let f = fs::OpenOptions::new()
                .write(true)
                .open(p(path))
                .map_err(errno)?;
            f.set_len(*size).map_err(errno)?;
            Ok(Out::Done)
        }
        Op::Rename {
            from,
            to,
            no_replace,
        } => {
            if !no_replace {
                return fs::rename(p(from), p(to)).map(|_| Out::Done).map_err(errno);
            }
            let cstr = |s: &str| {
                std::ffi::CString::new(p(s).into_os_string().into_encoded_bytes())
                    .expect("test paths have no NUL")
            };
            let (a, b) = (cstr(from), cstr(to));
            // SAFETY: both arguments are valid NUL-terminated paths that outlive the call.
            let rc = unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    a.as_ptr(),
                    libc::AT_FDCWD,
                    b.as_ptr(),
                    libc::RENAME_NOREPLACE,
                )
            };
            if rc == 0 {
                Ok(Out::Done)
            } else {
                Err(errno(std::io::Error::last_os_error()))
            }
        }
        Op::Link { from, to } => fs::hard_link(p(from), p(to))
            .map(|_| Out::Done)
            .map_err(errno),
        Op::Unlink { path } => fs::remove_file(p(path)).map(|_| Out::Done).map_err(errno),
        Op::Mkdir { path } => fs::create_dir(p(path)).map(|_| Out::Done).map_err(errno),
        Op::Rmdir { path } => fs::remove_dir(p(path)).map(|_| Out::Done).map_err(errno),
        Op::Stat { path } => fs::symlink_metadata(p(path))
            .map(|m| Out::Stat(meta(&m)))
            .map_err(errno),
        Op::Chmod { path, mode } => fs::set_permissions(p(path), fs::Permissions::from_mode(*mode))
            .map(|_| Out::Done)
            .map_err(errno),
        Op::Symlink { target, path } => std::os::unix::fs::symlink(target, p(path))
            .map(|_| Out::Done)
            .map_err(errno),
        Op::ReadDir { path } => {
            let mut names = fs::read_dir(p(path))
                .map_err(errno)?
                .map(|e| {
                    e.map(|e| e.file_name().to_string_lossy().into_owned())
                        .map_err(errno)
                })
                .collect::<Result<Vec<_>, _>>()?;
            names.sort();
            Ok(Out::Names(names))
        }
        Op::Fsync { path } => {
            let f = fs::OpenOptions::new()
                .write(true)
                .open(p(path))
                .map_err(errno)?;
            f.sync_all().map_err(errno)?;
            Ok(Out::Done)
        }
    }
}

/// Everything observable about one path (not following symlinks).
fn observe(root: &Path, rel: &str) -> String {
    let path = root.join(rel);
    match fs::symlink_metadata(&path) {
        Err(e) => format!("{rel}: error {}", errno(e)),
        Ok(m) => {
            let mut s = format!("{rel}: {:?}", meta(&m));
            if m.file_type().is_symlink() {
                s += &format!(" -> {:?}", fs::read_link(&path).map_err(errno));
            } else if m.is_file() {
                match fs::read(&path) {
                    Ok(d) => s += &format!(" crc {:08x} len {}", crc(&d), d.len()),
                    Err(e) => s += &format!(" read error {}", errno(e)),
                }
            } else {
                let mut names: Vec<String> = fs::read_dir(&path)
                    .map(|rd| {
                        rd.flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                names.sort();
                s += &format!(" {names:?}");
            }
            s
        }
    }
}

fn crc(d: &[u8]) -> u32 {
    // FNV-1a: only used to compare contents compactly in failure messages.
    d.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

fn walk(root: &Path, rel: &str, out: &mut Vec<String>) {
    out.push(observe(root, rel));
    let path = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let Ok(m) = fs::symlink_metadata(&path) else {
        return;
    };
    if !m.is_dir() {
        return;
    }
    let mut names: Vec<String> = fs::read_dir(&path)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    for n in names {
        let child = if rel.is_empty() {
            n
        } else {
            format!("{rel}/{n}")
        };
        walk(root, &child, out);
    }
}

fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    walk(root, "", &mut out);
    // The roots differ in mode/nlink metadata of their own; compare below them.
    out.remove(0);
    out
}

#[test]
fn fsx_random_operations_match_a_local_directory() {
    if !require_fuse() {
        return;
    }
    let seed: u64 = std::env::var("RINGFS_FSX_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let ops: usize = std::env::var("RINGFS_FSX_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    eprintln!("fsx: seed {seed}, {ops} ops (replay: RINGFS_FSX_SEED={seed} RINGFS_FSX_OPS={ops})");

    let rt = runtime();
    let c = rt.block_on(TestCluster::start(3));
    let vol = rt.block_on(c.volume("fsx", 1 << 30, 3));
    let m = mount(&c, vol, "mnt", Default::default(), &rt);
    let local = tempfile::tempdir().expect("tempdir");
    let (remote_root, local_root): (PathBuf, PathBuf) =
        (m.dir().to_path_buf(), local.path().to_path_buf());

    let mut rng = StdRng::seed_from_u64(seed);
    let started = std::time::Instant::now();
    for i in 0..ops {
        let op = random_op(&mut rng);
        let want = apply(&local_root, &op);
        let got = apply(&remote_root, &op);
        let fail = |what: &str, w: &dyn std::fmt::Debug, g: &dyn std::fmt::Debug| -> ! {
            panic!(
                "fsx seed {seed}: op #{i} {op:?}: {what} differs\n local: {w:?}\nringfs: {g:?}\n\
                 replay: RINGFS_FSX_SEED={seed} RINGFS_FSX_OPS={}",
                i + 1
            )
        };
        if want != got {
            fail("result", &want, &got);
        }
        for p in op.paths() {
            let (w, g) = (observe(&local_root, p), observe(&remote_root, p));
            if w != g {
                fail("state", &w, &g);
            }
        }
        if (i + 1) % FULL_COMPARE_EVERY == 0 || i + 1 == ops {
            let (w, g) = (tree(&local_root), tree(&remote_root));
            if w != g {
                fail("tree", &w, &g);
            }
        }
    }
    eprintln!(
        "fsx: {ops} ops matched in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    m.unmount().expect("unmount");
}
