//! Moving FUSE mount daemons out of the plugin's container, so that they outlive it.
//!
//! In Kubernetes the node plugin runs in a container; when its pod is deleted or
//! upgraded, the runtime kills every process in the container's cgroups. A FUSE daemon
//! that dies takes its mount with it, and every pod using the volume sees ENOTCONN. So,
//! before `ringfs mount` runs, its process joins a cgroup of its own (`ringfs-mounts` by
//! default) directly under the host's cgroup root: the runtime no longer counts it as part
//! of the container, and the mount lives on while the plugin restarts. The new plugin
//! re-adopts it from the mount table. This needs the pod to share the host's PID
//! namespace (a container's PID namespace takes all its processes down with its first
//! process) and the host's cgroup file system mounted at `--mount-cgroup-root`.
//!
//! Both cgroup versions are handled: v1 (one hierarchy per controller, each gets the
//! cgroup) and v2 (one unified hierarchy; the child enters the host's cgroup namespace
//! first when the plugin runs in a private one).

use anyhow::{bail, Context, Result};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The cgroups a mount daemon joins, prepared before any process is spawned so that the
/// child only makes system calls between fork and exec.
#[derive(Debug)]
pub struct MountCgroups {
    /// `cgroup.procs` files to write "0" (the writing process) into.
    procs: Vec<CString>,
    /// The host's cgroup namespace, when this process runs in another one (v2).
    host_ns: Option<OwnedFd>,
    pub description: String,
}

fn ns_id(path: &str) -> Option<PathBuf> {
    std::fs::read_link(path).ok()
}

fn cstring(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .with_context(|| format!("path {} contains a NUL byte", p.display()))
}

/// v1 cpuset cgroups start with no CPUs and memory nodes, and refuse tasks until they
/// have some: give the new one the parent's.
fn init_cpuset(parent: &Path, child: &Path) -> Result<()> {
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let want = std::fs::read_to_string(parent.join(f))
            .with_context(|| format!("reading {}", parent.join(f).display()))?;
        let have = std::fs::read_to_string(child.join(f)).unwrap_or_default();
        if have.trim().is_empty() {
            std::fs::write(child.join(f), want.trim())
                .with_context(|| format!("writing {}", child.join(f).display()))?;
        }
    }
    Ok(())
}

impl MountCgroups {
    /// Creates cgroup `name` under every hierarchy found at `root` (the host's
    /// /sys/fs/cgroup, mounted into the container).
    pub fn prepare(root: &Path, name: &str) -> Result<MountCgroups> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            bail!("--mount-cgroup {name:?} must be a plain directory name, like ringfs-mounts");
        }
        if !root.is_dir() {
            bail!(
                "--mount-cgroup-root {} is not a directory: mount the host's /sys/fs/cgroup \
                 there, or pass --mount-cgroup '' to leave FUSE daemons in the plugin's \
                 cgroup (mounts then die with the plugin's container)",
                root.display()
            );
        }
        let mut dirs: Vec<PathBuf> = Vec::new();
        if root.join("cgroup.controllers").exists() {
            dirs.push(root.to_path_buf());
        } else {
            let entries =
                std::fs::read_dir(root).with_context(|| format!("listing {}", root.display()))?;
            for e in entries.flatten() {
                let p = e.path();
                // Controllers mounted together appear under several names (symlinks).
                if p.is_symlink() || !p.join("cgroup.procs").exists() {
                    continue;
                }
                dirs.push(p);
            }
            dirs.sort();
        }
        if dirs.is_empty() {
            bail!("no cgroup hierarchy found under {}", root.display());
        }
        let mut procs = Vec::new();
        for d in &dirs {
            let child = d.join(name);
            std::fs::create_dir_all(&child)
                .with_context(|| format!("creating cgroup {}", child.display()))?;
            if d.join("cpuset.cpus").exists() && !d.join("cgroup.controllers").exists() {
                init_cpuset(d, &child)?;
            }
            procs.push(cstring(&child.join("cgroup.procs"))?);
        }
        let host_ns = if dirs.len() == 1
            && dirs[0] == root
            && ns_id("/proc/self/ns/cgroup") != ns_id("/proc/1/ns/cgroup")
        {
            let f = std::fs::File::open("/proc/1/ns/cgroup").context(
                "opening /proc/1/ns/cgroup (the plugin must share the host's PID namespace)",
            )?;
            Some(OwnedFd::from(f))
        } else {
            None
        };
        Ok(MountCgroups {
            description: format!(
                "{} ({} hierarch{})",
                dirs.first()
                    .map(|d| d.join(name).display().to_string())
                    .unwrap_or_default(),
                dirs.len(),
                if dirs.len() == 1 { "y" } else { "ies" }
            ),
            procs,
            host_ns,
        })
    }

    /// Moves the calling process into the cgroups. Runs in the forked child before exec:
    /// only system calls, no allocation.
    pub fn enter(&self) -> std::io::Result<()> {
        if let Some(ns) = &self.host_ns {
            // SAFETY: setns on a valid namespace fd; async-signal-safe.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWCGROUP) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        for p in &self.procs {
            // SAFETY: open/write/close with a valid NUL-terminated path and a static
            // buffer; all async-signal-safe.
            unsafe {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if n != 1 {
                    return Err(err);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        for n in ["", "a/b", "..", ".hidden"] {
            let e = MountCgroups::prepare(d.path(), n).expect_err(n);
            assert!(e.to_string().contains("--mount-cgroup"), "{e}");
        }
    }

    #[test]
    fn a_missing_root_says_what_to_mount() {
        let e = MountCgroups::prepare(Path::new("/nonexistent/cgroup"), "ringfs-mounts")
            .expect_err("missing root");
        assert!(e.to_string().contains("host's /sys/fs/cgroup"), "{e}");
    }

    #[test]
    fn v1_layout_gets_one_cgroup_per_hierarchy() {
        // A fake v1 tree: two hierarchies and a symlinked alias, plus a cpuset one.
        let d = tempfile::tempdir().expect("tempdir");
        for h in ["memory", "cpuset", "pids"] {
            std::fs::create_dir(d.path().join(h)).expect("mkdir");
            std::fs::write(d.path().join(h).join("cgroup.procs"), "").expect("procs");
        }
        std::fs::write(d.path().join("cpuset/cpuset.cpus"), "0-1\n").expect("cpus");
        std::fs::write(d.path().join("cpuset/cpuset.mems"), "0\n").expect("mems");
        std::os::unix::fs::symlink(d.path().join("pids"), d.path().join("alias")).expect("symlink");
        let c = MountCgroups::prepare(d.path(), "ringfs-mounts").expect("prepare");
        assert_eq!(c.procs.len(), 3, "{c:?}");
        assert!(c.host_ns.is_none());
        assert_eq!(
            std::fs::read_to_string(d.path().join("cpuset/ringfs-mounts/cpuset.cpus"))
                .expect("child cpus"),
            "0-1"
        );
        assert!(c.description.contains("3 hierarchies"), "{}", c.description);
    }
}
