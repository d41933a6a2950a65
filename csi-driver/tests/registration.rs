//! The node plugin registers itself with the kubelet (no node-driver-registrar): a real
//! `ringfs-csi` process serves the plugin registration socket, answering what the
//! kubelet's plugin watcher asks. And FUSE daemons can be moved into a cgroup of their
//! own, outside the plugin's container (real cgroups; needs root).

use hyper_util::rt::TokioIo;
use ringfs_proto::pluginregistration::registration_client::RegistrationClient;
use ringfs_proto::pluginregistration::{InfoRequest, RegistrationStatus};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Endpoint;

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_plugin_registers_itself_with_the_kubelet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reg_dir = dir.path().join("plugins_registry");
    std::fs::create_dir(&reg_dir).expect("mkdir");
    let log = std::fs::File::create(dir.path().join("csi.log")).expect("log");
    let mut child = Kill(
        Command::new(env!("CARGO_BIN_EXE_ringfs-csi"))
            .args(["--mode", "node", "--cluster", "127.0.0.1:1"])
            .arg("--endpoint")
            .arg(dir.path().join("csi.sock"))
            .args(["--driver-name", "csi.ringfs.io", "--node-id", "n1"])
            .args([
                "--kubelet-registration-path",
                "/var/lib/kubelet/plugins/csi.ringfs.io/csi.sock",
            ])
            .arg("--registration-dir")
            .arg(&reg_dir)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--managed-root")
            .arg(dir.path().join("managed"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start ringfs-csi"),
    );
    let sock = reg_dir.join("csi.ringfs.io-reg.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    let channel = loop {
        let s = sock.clone();
        let ch = Endpoint::from_static("http://[::]:50051")
            .connect_with_connector(tower::service_fn(move |_| {
                let s = s.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(s).await?))
                }
            }))
            .await;
        if let Ok(ch) = ch {
            break ch;
        }
        if let Ok(Some(st)) = child.0.try_wait() {
            panic!(
                "ringfs-csi exited ({st}): {}",
                std::fs::read_to_string(dir.path().join("csi.log")).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no registration socket at {}",
            sock.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660, "registration socket mode {mode:o}");
    let mut c = RegistrationClient::new(channel);
    let info = c
        .get_info(InfoRequest {})
        .await
        .expect("GetInfo")
        .into_inner();
    assert_eq!(info.r#type, "CSIPlugin");
    assert_eq!(info.name, "csi.ringfs.io");
    assert_eq!(
        info.endpoint,
        "/var/lib/kubelet/plugins/csi.ringfs.io/csi.sock"
    );
    assert_eq!(info.supported_versions, vec!["1.0.0".to_string()]);
    c.notify_registration_status(RegistrationStatus {
        plugin_registered: true,
        error: String::new(),
    })
    .await
    .expect("NotifyRegistrationStatus");
    // SIGTERM: the plugin stops and removes the socket, so the kubelet deregisters it.
    // SAFETY: kill on a child we own.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while sock.exists() || child.0.try_wait().ok().flatten().is_none() {
        assert!(
            Instant::now() < deadline,
            "the plugin did not stop and clean up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(dir.path().join("csi.log")).unwrap_or_default();
    assert!(log.contains("registered with the kubelet"), "{log}");
}

#[test]
fn the_plugin_refuses_registration_in_controller_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_ringfs-csi"))
        .args(["--mode", "controller", "--cluster", "127.0.0.1:1"])
        .arg("--endpoint")
        .arg(dir.path().join("csi.sock"))
        .args(["--kubelet-registration-path", "/x/csi.sock"])
        .output()
        .expect("run ringfs-csi");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--kubelet-registration-path is for the node plugin"),
        "{err}"
    );
}

/// Cgroup names of `pid`, one per hierarchy line of /proc/PID/cgroup.
fn cgroups_of(pid: u32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2).map(str::to_string))
        .collect()
}

#[test]
fn a_mount_daemon_leaves_the_plugins_cgroups() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: moving processes between cgroups needs root");
        return;
    }
    let root = PathBuf::from("/sys/fs/cgroup");
    let name = format!("ringfs-test-{}", std::process::id());
    let cg = std::sync::Arc::new(
        ringfs_csi::cgroups::MountCgroups::prepare(&root, &name).expect("prepare cgroups"),
    );
    let c2 = cg.clone();
    let mut cmd = Command::new("sleep");
    cmd.arg("60");
    // SAFETY: `enter` only makes system calls on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || c2.enter());
    }
    let child = Kill(cmd.spawn().expect("spawn sleep"));
    let mine = cgroups_of(std::process::id());
    let theirs = cgroups_of(child.0.id());
    assert!(!theirs.is_empty(), "no cgroups read for the child");
    let moved: Vec<&String> = theirs.iter().filter(|c| c.ends_with(&name)).collect();
    // Every hierarchy with a controller (or v2's single one) has the child in `name`.
    assert!(
        moved.len() + 1 >= theirs.len() && !moved.is_empty(),
        "child cgroups {theirs:?} (test runner's: {mine:?})"
    );
    drop(child);
    // Clean up the test cgroups once the child is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    for e in std::fs::read_dir(&root).expect("cgroup root").flatten() {
        let d = e.path().join(&name);
        while d.exists() && std::fs::remove_dir(&d).is_err() {
            assert!(
                Instant::now() < deadline,
                "could not remove {}",
                d.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let _ = std::fs::remove_dir(root.join(&name));
}
