//! The node plugin can die or be upgraded while a pod uses a volume: the FUSE mount it
//! staged lives on, a restarted plugin re-adopts it and reports it healthy; a dead FUSE
//! daemon is reported as an abnormal VolumeCondition and a re-stage repairs the mount and
//! its publishes. Real node processes, real `ringfs-csi` and `ringfs mount` processes,
//! real FUSE. Needs root and /dev/fuse (skipped otherwise).

mod common;

use common::{wait_for, TestCluster};
use hyper_util::rt::TokioIo;
use ringfs_proto::csi::controller_client::ControllerClient;
use ringfs_proto::csi::node_client::NodeClient;
use ringfs_proto::csi::volume_capability::{
    access_mode::Mode, AccessMode, AccessType, MountVolume,
};
use ringfs_proto::csi::*;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

fn ringfs_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("RINGFS_BIN") {
        return PathBuf::from(p);
    }
    let node = common::node_bin();
    node.with_file_name("ringfs")
}

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !(root && common::fuse_available()) {
        eprintln!("skipped: needs root, /dev/fuse and fusermount3");
        return false;
    }
    assert!(
        ringfs_bin().exists(),
        "{} not found: build the workspace or set RINGFS_BIN",
        ringfs_bin().display()
    );
    true
}

struct Plugin {
    child: Child,
    sock: PathBuf,
}

impl Plugin {
    fn start(dir: &Path, seeds: &[String]) -> Plugin {
        let sock = dir.join("csi.sock");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("csi.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ringfs-csi"))
            .arg("--endpoint")
            .arg(format!("unix://{}", sock.display()))
            .arg("--cluster")
            .arg(seeds.join(","))
            .args(["--node-id", "test-node", "--zone", "zone-1"])
            .arg("--ringfs-bin")
            .arg(ringfs_bin())
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--managed-root")
            .arg(dir)
            // Repairs only on request, so the test can observe the dead state.
            .args(["--repair-interval-secs", "0"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Plugin { child, sock }
    }

    async fn channel(&self) -> Channel {
        let sock = self.sock.clone();
        wait_for("the plugin socket", Duration::from_secs(60), || {
            let sock = sock.clone();
            async move {
                let s = sock.clone();
                Endpoint::from_static("http://[::]:50051")
                    .connect_with_connector(tower::service_fn(move |_| {
                        let s = s.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(s).await?,
                            ))
                        }
                    }))
                    .await
                    .ok()
            }
        })
        .await
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mount_cap() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode {
            mode: Mode::MultiNodeMultiWriter as i32,
        }),
    }
}

fn is_mounted(p: &Path) -> bool {
    let t = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    t.lines()
        .any(|l| l.split(' ').nth(4) == Some(p.to_str().unwrap()))
}

/// Pids of `ringfs mount <volume>` daemons (not the `--background` launcher).
fn fuse_daemons(volume: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "mount") && args.iter().any(|a| a == volume) {
            out.push(pid);
        }
    }
    out
}

async fn stats(
    node: &mut NodeClient<Channel>,
    vol: &str,
    path: &Path,
) -> NodeGetVolumeStatsResponse {
    node.node_get_volume_stats(NodeGetVolumeStatsRequest {
        volume_id: vol.into(),
        volume_path: path.to_str().unwrap().into(),
        staging_target_path: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mounts_survive_plugin_restart_and_dead_daemons_are_repaired() {
    if !can_run() {
        return;
    }
    let cluster = TestCluster::start(3).await;
    let dir = cluster.dir.path().join("csi");
    std::fs::create_dir_all(&dir).unwrap();
    let mut plugin = Plugin::start(&dir, &cluster.seeds());
    let ch = plugin.channel().await;
    let mut ctl = ControllerClient::new(ch.clone());
    let mut node = NodeClient::new(ch);

    let vol = ctl
        .create_volume(CreateVolumeRequest {
            name: "pvc-restart".into(),
            capacity_range: Some(CapacityRange {
                required_bytes: 256 << 20,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![mount_cap()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let id = vol.volume_id.clone();
    assert_eq!(id, "pvc-restart");
    let staging = dir.join("staging");
    let target = dir.join("pods/p1/mount");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    node.node_stage_volume(NodeStageVolumeRequest {
        volume_id: id.clone(),
        staging_target_path: staging.to_str().unwrap().into(),
        volume_capability: Some(mount_cap()),
        ..Default::default()
    })
    .await
    .unwrap();
    node.node_publish_volume(NodePublishVolumeRequest {
        volume_id: id.clone(),
        staging_target_path: staging.to_str().unwrap().into(),
        target_path: target.to_str().unwrap().into(),
        volume_capability: Some(mount_cap()),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(is_mounted(&staging) && is_mounted(&target));

    // An application holds a file open in the published mount.
    let data = common::content(7, 3 << 20);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(target.join("app.dat"))
        .unwrap();
    f.write_all(&data[..1 << 20]).unwrap();
    f.sync_all().unwrap();

    // The plugin dies (crash, upgrade). The mount and the open file keep working.
    plugin.kill9();
    assert!(
        !fuse_daemons(&id).is_empty(),
        "the FUSE daemon died with the plugin"
    );
    f.write_all(&data[1 << 20..]).unwrap();
    f.sync_all().unwrap();
    let mut back = Vec::new();
    f.seek(std::io::SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut back).unwrap();
    assert!(
        back == data,
        "data written across the plugin's death differs"
    );

    // A new plugin instance replaces the stale socket, re-adopts the mount, reports it healthy.
    let mut plugin = Plugin::start(&dir, &cluster.seeds());
    let mut node = NodeClient::new(plugin.channel().await);
    let s = stats(&mut node, &id, &target).await;
    let cond = s.volume_condition.unwrap();
    assert!(
        !cond.abnormal,
        "re-adopted mount reported abnormal: {}",
        cond.message
    );
    let bytes = s
        .usage
        .iter()
        .find(|u| u.unit == volume_usage::Unit::Bytes as i32)
        .expect("byte usage");
    assert_eq!(
        bytes.total,
        256 << 20,
        "usage total is the volume's capacity"
    );
    assert!(
        bytes.used >= data.len() as i64,
        "usage {} < written",
        bytes.used
    );
    // Staging again is a no-op on a healthy adopted mount (idempotent).
    node.node_stage_volume(NodeStageVolumeRequest {
        volume_id: id.clone(),
        staging_target_path: staging.to_str().unwrap().into(),
        volume_capability: Some(mount_cap()),
        ..Default::default()
    })
    .await
    .unwrap();
    let daemons = fuse_daemons(&id);
    assert_eq!(
        daemons.len(),
        1,
        "one FUSE daemon per volume, found {daemons:?}"
    );
    drop(f);

    // The FUSE daemon dies: stats say abnormal, with a reason.
    // SAFETY: kill(2) on a pid we just found.
    unsafe { libc::kill(daemons[0], libc::SIGKILL) };
    let cond = wait_for(
        "an abnormal volume condition",
        Duration::from_secs(30),
        || {
            let mut node = node.clone();
            let target = target.clone();
            let id = id.clone();
            async move {
                let c = stats(&mut node, &id, &target).await.volume_condition?;
                c.abnormal.then_some(c)
            }
        },
    )
    .await;
    assert!(
        cond.message.contains("FUSE daemon"),
        "message: {}",
        cond.message
    );

    // Re-staging repairs the mount and re-binds the pod's publish; every byte is there.
    node.node_stage_volume(NodeStageVolumeRequest {
        volume_id: id.clone(),
        staging_target_path: staging.to_str().unwrap().into(),
        volume_capability: Some(mount_cap()),
        ..Default::default()
    })
    .await
    .unwrap();
    let s = stats(&mut node, &id, &target).await;
    assert!(
        !s.volume_condition.unwrap().abnormal,
        "still abnormal after repair"
    );
    let f = std::fs::File::open(target.join("app.dat")).unwrap();
    let mut back = vec![0u8; data.len()];
    f.read_exact_at(&mut back, 0).unwrap();
    assert!(back == data, "content differs after repair");
    // The app closes its file before the pod goes: an open file would keep the (lazily
    // detached) FUSE connection, and so its daemon, alive.
    drop(f);

    // Unpublish/unstage clean up, and are idempotent (a crash may repeat them).
    for _ in 0..2 {
        node.node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: id.clone(),
            target_path: target.to_str().unwrap().into(),
        })
        .await
        .unwrap();
        node.node_unstage_volume(NodeUnstageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: staging.to_str().unwrap().into(),
        })
        .await
        .unwrap();
    }
    assert!(!is_mounted(&target) && !is_mounted(&staging));
    wait_for("the FUSE daemon to exit", Duration::from_secs(30), || {
        let id = id.clone();
        async move { fuse_daemons(&id).is_empty().then_some(()) }
    })
    .await;
    plugin.kill9();
}
