//! The ringfs POSIX file system through FUSE: [`mount`] a volume on a directory.
//!
//! See [`fs`] for the consistency model (local-disk semantics inside one mount,
//! close-to-open across mounts) and the write path.

pub mod cache;
pub mod extents;
pub mod fs;
pub mod io;

use fuser::{Config, MountOption, SessionACL};
use ringfs_client::Vol;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::runtime::Handle;

/// Mount settings.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// How long the kernel may cache attributes (bounds staleness across mounts).
    pub attr_ttl: Duration,
    /// How long the kernel may cache name lookups.
    pub entry_ttl: Duration,
    /// FUSE request threads.
    pub threads: usize,
    /// Let other users than the mounting one in (`allow_other`).
    pub allow_other: bool,
    pub read_only: bool,
    /// A file's buffered writes are committed once this many bytes are pending.
    pub flush_threshold: usize,
    /// Written bytes all files of the mount buffer together: past it, a write commits
    /// its own file's buffer before adding to it, so many files written at once cannot
    /// take unbounded memory (at most this plus one write per file being written).
    pub write_budget: usize,
    /// Largest write request the kernel sends.
    pub max_write: u32,
    pub max_readahead: u32,
    /// Memory for recently read (immutable, so never stale) blocks.
    pub block_cache_bytes: usize,
    /// Lease of the mount's client session, renewed every quarter of it. When a mount
    /// dies, the files it had unlinked while open are dropped this long after.
    pub session_ttl: Duration,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            attr_ttl: Duration::from_secs(1),
            entry_ttl: Duration::from_secs(1),
            threads: 8,
            allow_other: false,
            read_only: false,
            flush_threshold: 16 << 20,
            write_budget: 256 << 20,
            max_write: 1 << 20,
            max_readahead: 1 << 20,
            block_cache_bytes: 64 << 20,
            session_ttl: Duration::from_secs(120),
        }
    }
}

/// A mounted volume; dropping it unmounts.
pub struct Mount {
    session: Option<fuser::BackgroundSession>,
    dir: PathBuf,
}

impl Mount {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Unmounts (fails with EBUSY while files are in use) and waits for the session.
    pub fn unmount(mut self) -> std::io::Result<()> {
        match self.session.take() {
            Some(s) => s.umount_and_join(),
            None => Ok(()),
        }
    }

    /// Waits until the file system is unmounted from outside (`ringfs umount`, a CSI
    /// unstage).
    ///
    /// fuser unmounts by *path* when a session is dropped; after an outside (possibly
    /// lazy) unmount another file system may already be mounted on that path — the CSI
    /// driver re-stages the same staging directory at once — and would be unmounted in
    /// its place. So the finished session is forgotten rather than dropped: there is
    /// nothing of ours left to unmount, and the process is about to exit.
    pub fn join(mut self) -> std::io::Result<()> {
        if let Some(s) = self.session.take() {
            while !s.guard.is_finished() {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            std::mem::forget(s);
        }
        Ok(())
    }

    /// True once the session thread has ended (unmounted from outside).
    pub fn is_finished(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.guard.is_finished())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            if let Err(e) = s.umount_and_join() {
                tracing::warn!(dir = %self.dir.display(), error = %e, "unmount failed");
            }
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Mounts `vol` on `dir`. FUSE requests run on `opts.threads` threads and call the
/// cluster through `rt` (which must not be driven by those threads: any multi-threaded
/// tokio runtime works).
pub fn mount(vol: Vol, dir: &Path, opts: MountOptions, rt: Handle) -> std::io::Result<Mount> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("ringfs:{}", vol.name)),
        MountOption::Subtype("ringfs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        if opts.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
    ];
    if opts.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;
    let info = format!(
        "host {} pid {} dir {}",
        hostname(),
        std::process::id(),
        dir.display()
    );
    let fs = fs::RingFs::new(vol, rt, opts, info)?;
    let notifier = fs.notifier.clone();
    let session = fuser::Session::new(fs, dir, &config)?;
    let _ = notifier.set(session.notifier());
    Ok(Mount {
        session: Some(session.spawn()?),
        dir: dir.to_path_buf(),
    })
}
