//! `ringfs`: the command line for ringfs clusters.

mod certs;
mod commands;
mod dev;
mod mount;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "ringfs",
    version,
    about = "ringfs: a replicated POSIX file system for Kubernetes"
)]
struct Cli {
    /// Cluster node address(es), comma-separated (HOST:PORT). Defaults to the local dev
    /// cluster started by `ringfs dev up`, else 127.0.0.1:7420.
    #[arg(long, global = true, env = "RINGFS_CLUSTER", value_delimiter = ',')]
    cluster: Vec<String>,
    /// Print machine-readable JSON where supported.
    #[arg(long, global = true)]
    json: bool,
    /// Mutual TLS: a directory with ca.crt, tls.crt and tls.key (a client or admin
    /// certificate of the cluster's CA). Defaults to the admin certificate of the local dev
    /// cluster (./ringfs-dev/tls/admin) when talking to its nodes.
    #[arg(long, global = true, env = "RINGFS_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// A file with the admin token, for clusters run without TLS but with
    /// --admin-token-file.
    #[arg(long, global = true, env = "RINGFS_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Cmd {
    /// A local cluster of node processes for trying ringfs and for development.
    #[command(subcommand)]
    Dev(dev::DevCmd),
    /// Cluster state.
    #[command(subcommand)]
    Cluster(commands::ClusterCmd),
    /// Data movement between nodes (after joins, drains and failures).
    #[command(subcommand)]
    Rebalance(commands::RebalanceCmd),
    /// Create, list, resize and delete volumes (`volume create --from` clones).
    #[command(subcommand)]
    Volume(commands::VolumeCmd),
    /// Take, list and delete read-only, copy-on-write snapshots of volumes.
    #[command(subcommand)]
    Snapshot(commands::SnapshotCmd),
    /// Copy a local file (or - for stdin) into a volume: `ringfs put ./f vol:/dir/f`.
    Put { src: String, dst: String },
    /// Copy a file out of a volume (to a path, or - for stdout): `ringfs get vol:/f ./f`.
    /// `@SNAPSHOT:/path` reads from a snapshot.
    Get { src: String, dst: String },
    /// List a directory: `ringfs ls vol:/dir` (`@SNAPSHOT:/dir` lists a snapshot's).
    Ls { path: String },
    /// Make a directory: `ringfs mkdir -p vol:/a/b`.
    Mkdir {
        path: String,
        #[arg(short, long)]
        parents: bool,
    },
    /// Mount a volume on a directory through FUSE (foreground unless --background).
    Mount(mount::MountArgs),
    /// Unmount a ringfs mount point.
    Umount(mount::UmountArgs),
    /// Certificates for mutual TLS: a cluster CA, and node, admin and client
    /// certificates it signs.
    #[command(subcommand)]
    Certs(certs::CertsCmd),
    /// Remove a file or empty directory (`-r`: recursively).
    Rm {
        path: String,
        #[arg(short, long)]
        recursive: bool,
    },
}

/// Where `ringfs dev up` keeps its state unless told otherwise.
pub fn default_dev_dir() -> PathBuf {
    PathBuf::from("ringfs-dev")
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Like other command-line tools, end quietly when the reader of our output goes
    // away (`ringfs dev status | grep -q ...`) instead of panicking on EPIPE (Rust
    // ignores SIGPIPE). Not for the long-running mount daemon, which must never die of
    // a signal.
    if !matches!(cli.cmd, Cmd::Mount(_)) {
        // SAFETY: signal(2) only sets the process-wide disposition of SIGPIPE; nothing
        // in this process relies on SIGPIPE being ignored (sockets use MSG_NOSIGNAL).
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let _telemetry = ringfs_telemetry::init_with_service("warn", "ringfs");
    let security = commands::Security::resolve(cli.tls_dir, cli.admin_token_file, &cli.cluster);
    let plaintext = security.tls_dir.is_none();
    let result = match cli.cmd {
        Cmd::Dev(cmd) => dev::run(cmd).await,
        Cmd::Certs(cmd) => certs::run(cmd),
        Cmd::Mount(a) => {
            mount::mount(
                commands::resolve_seeds(cli.cluster),
                security,
                a.volume,
                a.dir,
                a.opts,
            )
            .await
        }
        Cmd::Umount(a) => mount::umount(a.dir, a.lazy).await,
        other => {
            let seeds = commands::resolve_seeds(cli.cluster);
            commands::run(other, seeds, security, cli.json).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // What a plaintext client sees from a TLS node: no answer, or a broken HTTP/2
            // exchange (the node's TLS alert read as HTTP/2).
            let unreachable =
                e.chain()
                    .any(|c| match c.downcast_ref::<ringfs_client::ClientError>() {
                        Some(ringfs_client::ClientError::Unavailable(_)) => true,
                        Some(ringfs_client::ClientError::Rejected(s)) => {
                            matches!(s.code(), tonic::Code::Unknown | tonic::Code::Internal)
                                && (s.message().contains("h2") || s.message().contains("transport"))
                        }
                        _ => false,
                    });
            if unreachable && plaintext {
                // A node with mutual TLS drops plaintext connections without a word.
                eprintln!("hint: if the cluster runs with mutual TLS, pass --tls-dir DIR (or set RINGFS_TLS_DIR) with a certificate of its CA");
            }
            ExitCode::FAILURE
        }
    }
}

use Cmd as Command;
