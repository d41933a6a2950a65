//! `ringfs mount <volume> <dir>` and `ringfs umount <dir>`.
//!
//! The mount runs in the foreground until SIGINT/SIGTERM (then unmounts cleanly) or an
//! outside `ringfs umount`. `--background` re-runs the same command detached, with its
//! output in a log file, and returns once the file system is mounted.

use anyhow::{bail, Context};
use ringfs_client::Vol;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long `--background` waits for the detached mount to appear.
const BACKGROUND_MOUNT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(clap::Args, Debug, Clone)]
pub struct MountOpts {
    /// Seconds the kernel caches file attributes (staleness bound across mounts).
    #[arg(long, default_value_t = 1.0, env = "RINGFS_ATTR_TIMEOUT")]
    pub attr_timeout: f64,
    /// Seconds the kernel caches name lookups.
    #[arg(long, default_value_t = 1.0, env = "RINGFS_ENTRY_TIMEOUT")]
    pub entry_timeout: f64,
    /// FUSE request threads.
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
    /// Let users other than the one mounting access the file system (needs
    /// `user_allow_other` in /etc/fuse.conf when not root).
    #[arg(long)]
    pub allow_other: bool,
    /// Mount read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Lease of the mount's session in seconds: if the mount dies, files it had unlinked
    /// while open are dropped this long after.
    #[arg(long, default_value_t = 120.0, env = "RINGFS_SESSION_TTL")]
    pub session_ttl: f64,
    /// Detach: run the mount in the background and return once it is mounted.
    #[arg(long, short = 'd')]
    pub background: bool,
    /// Log file of a `--background` mount (default: <dir's parent>/.ringfs-mount-<volume>.log).
    #[arg(long)]
    pub log_file: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct MountArgs {
    /// Volume name.
    pub volume: String,
    /// Existing empty directory to mount on.
    pub dir: PathBuf,
    #[command(flatten)]
    pub opts: MountOpts,
}

#[derive(clap::Args, Debug)]
pub struct UmountArgs {
    /// Mount point.
    pub dir: PathBuf,
    /// Detach now even if files are in use (lazy unmount).
    #[arg(long, short = 'l')]
    pub lazy: bool,
}

fn seconds(what: &str, s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("--{what} must be >= 0 seconds"))
}

/// Decodes the octal escapes (`\040` for a space) of /proc/mounts fields.
fn unescape_mount_field(s: &str) -> String {
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

/// True when a /proc/mounts line is a ringfs mount on `dir`. The type is `fuse.ringfs`
/// when the subtype reached the kernel; a mount made directly by root (no fusermount3)
/// shows plain `fuse`, recognised by its `ringfs:<volume>` source.
fn is_ringfs_line(line: &str, dir: &Path) -> bool {
    let f: Vec<&str> = line.split(' ').collect();
    f.len() > 2
        && (f[2] == "fuse.ringfs" || (f[2] == "fuse" && f[0].starts_with("ringfs:")))
        && Path::new(&unescape_mount_field(f[1])) == dir
}

/// True when a ringfs file system is mounted on `dir` (absolute, canonical).
pub fn is_ringfs_mount(dir: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return false;
    };
    mounts.lines().any(|l| is_ringfs_line(l, dir))
}

pub async fn mount(
    seeds: Vec<String>,
    security: crate::commands::Security,
    volume: String,
    dir: PathBuf,
    opts: MountOpts,
) -> anyhow::Result<()> {
    let dir = std::fs::canonicalize(&dir)
        .with_context(|| format!("mount point {} does not exist", dir.display()))?;
    if !dir.is_dir() {
        bail!("mount point {} is not a directory", dir.display());
    }
    if is_ringfs_mount(&dir) {
        bail!(
            "a ringfs volume is already mounted on {}; `ringfs umount {}` first",
            dir.display(),
            dir.display()
        );
    }
    if opts.background {
        return spawn_background(&volume, &dir, &opts).await;
    }
    let fuse_opts = ringfs_fuse::MountOptions {
        attr_ttl: seconds("attr-timeout", opts.attr_timeout)?,
        entry_ttl: seconds("entry-timeout", opts.entry_timeout)?,
        threads: opts.threads.max(1),
        allow_other: opts.allow_other,
        read_only: opts.read_only,
        session_ttl: seconds("session-ttl", opts.session_ttl)?,
        ..Default::default()
    };
    let cluster = security.cluster(seeds)?;
    if let Some(dir) = &security.tls_dir {
        // Renewed certificates (a Kubernetes Secret, `ringfs certs issue --force`) are
        // used for new connections without remounting.
        cluster
            .pool()
            .watch_tls_dir(dir.clone(), Duration::from_secs(30));
    }
    let vol = Vol::open(cluster, &volume)
        .await
        .with_context(|| format!("opening volume {volume:?}"))?;
    let m = ringfs_fuse::mount(vol, &dir, fuse_opts, tokio::runtime::Handle::current())
        .with_context(|| format!("mounting volume {volume:?} on {}", dir.display()))?;
    eprintln!("mounted volume {volume:?} on {}", dir.display());

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tick.tick() => {
                if m.is_finished() {
                    // Unmounted from outside (`ringfs umount`, fusermount3 -u).
                    return tokio::task::spawn_blocking(move || m.join())
                        .await?
                        .context("FUSE session ended with an error");
                }
            }
        }
    }
    eprintln!("unmounting {}", dir.display());
    let d = dir.clone();
    match tokio::task::spawn_blocking(move || m.unmount()).await? {
        Ok(()) => Ok(()),
        Err(e) => {
            // Busy (open files, a shell inside): detach lazily so the process can exit;
            // the kernel finishes the unmount when the last user goes.
            tracing::warn!(error = %e, "unmount failed; detaching lazily");
            fusermount(&d, true)
        }
    }
}

pub fn fusermount(dir: &Path, lazy: bool) -> anyhow::Result<()> {
    let mut cmd = std::process::Command::new("fusermount3");
    cmd.arg(if lazy { "-uz" } else { "-u" }).arg(dir);
    let out = cmd
        .output()
        .context("running fusermount3 (install the fuse3 package)")?;
    if !out.status.success() {
        bail!(
            "fusermount3 -u {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

async fn spawn_background(volume: &str, dir: &Path, opts: &MountOpts) -> anyhow::Result<()> {
    let log = opts
        .log_file
        .clone()
        .unwrap_or_else(|| default_log(volume, dir));
    let args: Vec<OsString> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "--background" && a != "-d")
        .collect();
    let pid = spawn_mount_process(&args, volume, dir, &log).await?;
    eprintln!(
        "mounted volume {volume:?} on {} (pid {pid}, log {})",
        dir.display(),
        log.display()
    );
    Ok(())
}

/// Where a background mount of `volume` on `dir` logs unless told otherwise.
pub fn default_log(volume: &str, dir: &Path) -> PathBuf {
    dir.parent()
        .unwrap_or(Path::new("/tmp"))
        .join(format!(".ringfs-mount-{volume}.log"))
}

/// Runs `ringfs <args>` (a foreground `mount` command) detached, in its own process
/// group, with its output appended to `log`, and returns its pid once `dir` is a ringfs
/// mount. Fails (and stops the process) if it exits or does not mount in time.
pub async fn spawn_mount_process(
    args: &[OsString],
    volume: &str,
    dir: &Path,
    log: &Path,
) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt;
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening log file {}", log.display()))?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .process_group(0)
        .spawn()
        .context("starting the background mount")?;
    let deadline = Instant::now() + BACKGROUND_MOUNT_TIMEOUT;
    loop {
        if is_ringfs_mount(dir) {
            return Ok(child.id());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the background mount exited ({status}) before mounting; see {}",
                log.display()
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            if is_ringfs_mount(dir) {
                let _ = fusermount(dir, true);
            }
            bail!(
                "volume {volume:?} not mounted on {} after {BACKGROUND_MOUNT_TIMEOUT:?}; see {}",
                dir.display(),
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Unmounts a ringfs mount point; the mount process then exits on its own.
pub async fn umount(dir: PathBuf, lazy: bool) -> anyhow::Result<()> {
    let dir =
        std::fs::canonicalize(&dir).with_context(|| format!("{} does not exist", dir.display()))?;
    if !is_ringfs_mount(&dir) {
        bail!("no ringfs volume is mounted on {}", dir.display());
    }
    tokio::task::spawn_blocking(move || fusermount(&dir, lazy)).await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_proc_mounts_fields() {
        assert_eq!(unescape_mount_field("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(unescape_mount_field("/plain"), "/plain");
        assert_eq!(unescape_mount_field("/x\\"), "/x\\");
    }

    #[test]
    fn recognises_ringfs_mount_lines() {
        let d = Path::new("/mnt/a b");
        assert!(is_ringfs_line(
            "ringfs:v /mnt/a\\040b fuse.ringfs rw,nosuid 0 0",
            d
        ));
        assert!(is_ringfs_line("ringfs:v /mnt/a\\040b fuse rw 0 0", d));
        assert!(!is_ringfs_line("other /mnt/a\\040b fuse rw 0 0", d));
        assert!(!is_ringfs_line("ringfs:v /mnt/c fuse.ringfs rw 0 0", d));
    }
}
