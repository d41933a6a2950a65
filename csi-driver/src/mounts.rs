//! Mount table reading, mount system calls and mount health, for the node service.
//! All state the node service needs is in the kernel's mount table, so a restarted plugin
//! re-adopts every mount it (or a previous instance) made without any state file.

use crate::error::{CsiError, Result};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// File-system type of ringfs FUSE mounts in the mount table.
pub const RINGFS_FSTYPE: &str = "fuse.ringfs";

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u64,
    /// `major:minor` of the mounted file system; bind mounts share it with their source.
    pub dev: String,
    pub root: String,
    pub mount_point: PathBuf,
    /// Per-mount options (`ro`/`rw`, ...).
    pub options: String,
    pub fstype: String,
    pub source: String,
}

impl MountEntry {
    /// The ringfs volume mounted here, if this is a ringfs mount.
    pub fn ringfs_volume(&self) -> Option<&str> {
        // fuser mounting through fusermount3 may drop the subtype, leaving plain "fuse";
        // the source ("ringfs:<volume>") identifies ringfs mounts either way.
        if self.fstype != RINGFS_FSTYPE && self.fstype != "fuse" {
            return None;
        }
        self.source.strip_prefix("ringfs:")
    }

    pub fn read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }
}

/// Decodes the octal escapes (`\040` for a space) of mount table fields.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            out.push(v as u8);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            if pre.len() < 6 || post.len() < 2 {
                return None;
            }
            Some(MountEntry {
                id: pre[0].parse().ok()?,
                dev: pre[2].to_string(),
                root: unescape(pre[3]),
                mount_point: PathBuf::from(unescape(pre[4])),
                options: pre[5].to_string(),
                fstype: post[0].to_string(),
                source: unescape(post[1]),
            })
        })
        .collect()
}

pub fn read_mountinfo() -> Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| CsiError::Internal(format!("reading /proc/self/mountinfo: {e}")))?;
    Ok(parse_mountinfo(&text))
}

/// The topmost mount on `path`, if any.
pub fn mount_at<'a>(mounts: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    mounts.iter().rev().find(|m| m.mount_point == path)
}

/// `path` made absolute with its parent's symlinks resolved, without touching `path`
/// itself (a dead FUSE mount there would fail or hang).
pub fn normalize(path: &str) -> Result<PathBuf> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(CsiError::InvalidArgument(format!(
            "path {path:?} must be absolute"
        )));
    }
    match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) => match std::fs::canonicalize(parent) {
            Ok(parent) => Ok(parent.join(name)),
            Err(_) => Ok(p.to_path_buf()),
        },
        _ => Ok(p.to_path_buf()),
    }
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| CsiError::InvalidArgument(format!("path {} contains NUL", p.display())))
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Mount flags a publish may ask for through `mount_flags`.
pub fn flag_for(option: &str) -> Option<libc::c_ulong> {
    Some(match option {
        "ro" => libc::MS_RDONLY,
        "rw" => 0,
        "noexec" => libc::MS_NOEXEC,
        "nosuid" => libc::MS_NOSUID,
        "nodev" => libc::MS_NODEV,
        "noatime" => libc::MS_NOATIME,
        "nodiratime" => libc::MS_NODIRATIME,
        "relatime" => libc::MS_RELATIME,
        "bind" | "defaults" => 0,
        _ => return None,
    })
}

/// Bind-mounts `src` on `dst`, then applies `flags` (read-only and friends) with a
/// remount, since a bind mount ignores them on creation.
pub fn bind(src: &Path, dst: &Path, flags: libc::c_ulong) -> Result<()> {
    let (s, d) = (cpath(src)?, cpath(dst)?);
    // SAFETY: valid NUL-terminated strings; null fs type and data are allowed for binds.
    let rc = unsafe {
        libc::mount(
            s.as_ptr(),
            d.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(CsiError::Internal(format!(
            "bind mount {} on {}: {}",
            src.display(),
            dst.display(),
            errno()
        )));
    }
    if flags != 0 {
        let all = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV | flags;
        // SAFETY: as above.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                d.as_ptr(),
                std::ptr::null(),
                all,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            let e = errno();
            let _ = umount(dst, true);
            return Err(CsiError::Internal(format!(
                "remounting {} with the requested options: {e}",
                dst.display()
            )));
        }
    }
    Ok(())
}

/// Unmounts `path`; `detach` makes it lazy (always succeeds on a busy or dead mount).
/// Not being mounted is success.
pub fn umount(path: &Path, detach: bool) -> Result<()> {
    let p = cpath(path)?;
    let flags = if detach { libc::MNT_DETACH } else { 0 };
    // SAFETY: valid NUL-terminated string.
    let rc = unsafe { libc::umount2(p.as_ptr(), flags) };
    if rc != 0 {
        let e = errno();
        match e.raw_os_error() {
            Some(libc::EINVAL) | Some(libc::ENOENT) => return Ok(()),
            _ => {
                return Err(CsiError::Internal(format!(
                    "unmounting {}: {e}",
                    path.display()
                )))
            }
        }
    }
    Ok(())
}

/// Space and inode figures of a mounted file system.
#[derive(Debug, Clone, Copy)]
pub struct FsStats {
    pub bytes_total: u64,
    pub bytes_free: u64,
    pub bytes_avail: u64,
    pub inodes_total: u64,
    pub inodes_free: u64,
}

// The statvfs field types differ between platforms; the casts are no-ops on some.
#[allow(clippy::unnecessary_cast)]
fn statvfs(path: &Path) -> std::io::Result<FsStats> {
    let p = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: zeroed statvfs is a valid out-parameter.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    let rc = unsafe { libc::statvfs(p.as_ptr(), &mut s) };
    if rc != 0 {
        return Err(errno());
    }
    let f = s.f_frsize as u64;
    Ok(FsStats {
        bytes_total: s.f_blocks as u64 * f,
        bytes_free: s.f_bfree as u64 * f,
        bytes_avail: s.f_bavail as u64 * f,
        inodes_total: s.f_files as u64,
        inodes_free: s.f_ffree as u64,
    })
}

/// Asks the file system on `path` for its figures, giving up after `timeout`: a FUSE
/// daemon that died answers ENOTCONN, a hung one never answers.
pub async fn probe(path: &Path, timeout: Duration) -> std::result::Result<FsStats, String> {
    let p = path.to_path_buf();
    let task = tokio::task::spawn_blocking(move || statvfs(&p));
    match tokio::time::timeout(timeout, task).await {
        Ok(Ok(Ok(s))) => Ok(s),
        Ok(Ok(Err(e)))
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOTCONN) | Some(libc::ECONNABORTED)
            ) =>
        {
            Err(format!(
                "the FUSE daemon serving {} is gone ({e})",
                path.display()
            ))
        }
        Ok(Ok(Err(e))) => Err(format!("statfs {}: {e}", path.display())),
        Ok(Err(e)) => Err(format!("statfs task failed: {e}")),
        Err(_) => Err(format!(
            "the file system at {} did not answer statfs within {timeout:?}",
            path.display()
        )),
    }
}

/// Whether something exists at `path`, without hanging on a dead mount.
pub async fn exists(path: &Path, timeout: Duration) -> bool {
    let p = path.to_path_buf();
    let task = tokio::task::spawn_blocking(move || match std::fs::symlink_metadata(&p) {
        Ok(_) => true,
        Err(e) => matches!(
            e.raw_os_error(),
            Some(libc::ENOTCONN) | Some(libc::ECONNABORTED)
        ),
    });
    matches!(tokio::time::timeout(timeout, task).await, Ok(Ok(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_lines() {
        let text = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
                    90 30 0:55 / /var/lib/k/a\\040b rw,nosuid,nodev,relatime shared:5 - fuse.ringfs ringfs:vol-1 rw,user_id=0\n\
                    91 30 0:55 / /pods/x ro,relatime shared:5 - fuse ringfs:vol-1 rw\n\
                    92 30 0:56 / /other rw - fuse sshfs:host rw\n\
                    garbage\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 4);
        assert_eq!(m[2].ringfs_volume(), Some("vol-1"));
        assert_eq!(m[3].ringfs_volume(), None);
        assert_eq!(m[1].mount_point, PathBuf::from("/var/lib/k/a b"));
        assert_eq!(m[1].ringfs_volume(), Some("vol-1"));
        assert_eq!(m[1].dev, "0:55");
        assert!(!m[1].read_only());
        assert!(m[2].read_only());
        assert_eq!(m[0].ringfs_volume(), None);
        assert_eq!(mount_at(&m, Path::new("/pods/x")).map(|e| e.id), Some(91));
    }

    #[test]
    fn unescape_handles_edges() {
        assert_eq!(unescape("a\\040b"), "a b");
        assert_eq!(unescape("x\\"), "x\\");
        assert_eq!(unescape("x\\04"), "x\\04");
    }
}
