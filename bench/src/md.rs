//! An mdtest-like metadata workload on any directory (a mount or a local directory).
//!
//! Phase 1, one shared directory: create `files` empty files, stat them, list the
//! directory, rename every file, unlink every file. Phase 2, a tree: `fanout` directories
//! per level down to `depth` levels, `per_dir` files in each directory; create, stat and
//! remove it. Work is split over `threads` threads; rates are operations per second of
//! wall time.

use crate::record::emit;
use crate::Tags;
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct Params {
    pub dir: PathBuf,
    pub files: usize,
    pub fanout: usize,
    pub depth: u32,
    pub per_dir: usize,
    pub threads: usize,
}

/// Runs `op(i)` for i in 0..n over `threads` threads (striped); returns ops/s.
fn parallel<F>(n: usize, threads: usize, op: F) -> Result<f64>
where
    F: Fn(usize) -> std::io::Result<()> + Sync,
{
    let start = Instant::now();
    let op = &op;
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || -> std::io::Result<()> {
                    let mut i = t;
                    while i < n {
                        op(i)?;
                        i += threads;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(r) => r?,
                Err(_) => bail!("a worker thread panicked"),
            }
        }
        Ok(())
    })?;
    Ok(n as f64 / start.elapsed().as_secs_f64().max(1e-9))
}

/// Every directory of the tree (parents before children) and the files.
pub fn tree(
    root: &Path,
    fanout: usize,
    depth: u32,
    per_dir: usize,
) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut dirs = Vec::new();
    let mut level = vec![root.to_path_buf()];
    for _ in 0..depth {
        let mut next = Vec::new();
        for d in &level {
            for i in 0..fanout {
                next.push(d.join(format!("d{i}")));
            }
        }
        dirs.extend(next.iter().cloned());
        level = next;
    }
    let files = dirs
        .iter()
        .flat_map(|d| (0..per_dir).map(move |i| d.join(format!("f{i}"))))
        .collect();
    (dirs, files)
}

pub fn run(tags: &Tags, p: &Params) -> Result<()> {
    if p.threads == 0 || p.files == 0 {
        bail!("--threads and --files must be at least 1");
    }
    if p.dir.exists() && fs::read_dir(&p.dir)?.next().is_some() {
        bail!(
            "{} is not empty: give a new directory for the metadata workload",
            p.dir.display()
        );
    }
    let flat = p.dir.join("flat");
    fs::create_dir_all(&flat).with_context(|| format!("creating {}", flat.display()))?;
    let name = |i: usize| flat.join(format!("file.{i:07}"));
    let renamed = |i: usize| flat.join(format!("moved.{i:07}"));
    let n = p.files;
    let t = p.threads;

    let create = parallel(n, t, |i| fs::File::create(name(i)).map(drop))?;
    emit(tags, "md", "create_per_s", "ops/s", create, true);
    let stat = parallel(n, t, |i| fs::metadata(name(i)).map(drop))?;
    emit(tags, "md", "stat_per_s", "ops/s", stat, true);
    let start = Instant::now();
    let listed = fs::read_dir(&flat)?.count();
    let readdir = listed as f64 / start.elapsed().as_secs_f64().max(1e-9);
    if listed != n {
        bail!(
            "readdir of {} returned {listed} entries, expected {n}",
            flat.display()
        );
    }
    emit(
        tags,
        "md",
        "readdir_entries_per_s",
        "entries/s",
        readdir,
        true,
    );
    let rename = parallel(n, t, |i| fs::rename(name(i), renamed(i)))?;
    emit(tags, "md", "rename_per_s", "ops/s", rename, true);
    let unlink = parallel(n, t, |i| fs::remove_file(renamed(i)))?;
    emit(tags, "md", "unlink_per_s", "ops/s", unlink, true);
    if fs::read_dir(&flat)?.next().is_some() {
        bail!("{} is not empty after unlinking every file", flat.display());
    }
    fs::remove_dir(&flat)?;

    let root = p.dir.join("tree");
    fs::create_dir(&root)?;
    let (dirs, files) = tree(&root, p.fanout, p.depth, p.per_dir);
    // Directories level by level (a level's parents exist before its children).
    let start = Instant::now();
    let mut lo = 0;
    let mut width = p.fanout;
    while lo < dirs.len() {
        let hi = (lo + width).min(dirs.len());
        let level = &dirs[lo..hi];
        parallel(level.len(), t, |i| fs::create_dir(&level[i]))?;
        lo = hi;
        width *= p.fanout;
    }
    parallel(files.len(), t, |i| fs::File::create(&files[i]).map(drop))?;
    let items = (dirs.len() + files.len()) as f64;
    emit(
        tags,
        "md-tree",
        "create_per_s",
        "items/s",
        items / start.elapsed().as_secs_f64().max(1e-9),
        true,
    );
    let stat = parallel(files.len(), t, |i| fs::metadata(&files[i]).map(drop))?;
    emit(tags, "md-tree", "stat_per_s", "ops/s", stat, true);
    let start = Instant::now();
    parallel(files.len(), t, |i| fs::remove_file(&files[i]))?;
    for d in dirs.iter().rev() {
        fs::remove_dir(d).with_context(|| format!("removing {}", d.display()))?;
    }
    emit(
        tags,
        "md-tree",
        "remove_per_s",
        "items/s",
        items / start.elapsed().as_secs_f64().max(1e-9),
        true,
    );
    fs::remove_dir(&root)?;
    eprintln!(
        "[md] {}: {n} files, tree of {} dirs + {} files: done",
        tags.system,
        dirs.len(),
        files.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_has_the_mdtest_shape() {
        let (dirs, files) = tree(Path::new("/r"), 6, 4, 8);
        assert_eq!(dirs.len(), 6 + 36 + 216 + 1296);
        assert_eq!(files.len(), dirs.len() * 8);
        assert_eq!(dirs[0], Path::new("/r/d0"));
        assert_eq!(dirs[6], Path::new("/r/d0/d0"));
    }

    #[test]
    fn runs_on_a_local_directory_and_leaves_it_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let tags = Tags {
            system: "raw".into(),
            rep: 1,
        };
        let p = Params {
            dir: tmp.path().join("md"),
            files: 50,
            fanout: 3,
            depth: 2,
            per_dir: 2,
            threads: 3,
        };
        run(&tags, &p).unwrap();
        assert_eq!(fs::read_dir(&p.dir).unwrap().count(), 0);
        // A second run into the same non-empty directory is refused.
        fs::write(p.dir.join("x"), b"x").unwrap();
        let e = run(&tags, &p).unwrap_err().to_string();
        assert!(e.contains("not empty"), "{e}");
    }
}
