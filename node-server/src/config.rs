//! Node configuration: command-line flags, `RINGFS_*` environment variables, and an
//! optional TOML file (`--config`). Precedence: flag > environment > file > default.

use clap::parser::ValueSource;
use clap::{CommandFactory, Parser};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser, Debug, Clone)]
#[command(name = "ringfs-node", version, about = "A ringfs storage node")]
pub struct Config {
    /// TOML file with any of these settings (keys as the long flag names).
    #[arg(long, env = "RINGFS_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id: unique in the cluster, stable for the node's life, 1 or more.
    #[arg(long, env = "RINGFS_NODE_ID", value_parser = clap::value_parser!(u64).range(1..))]
    pub id: u64,
    /// Directory for the Raft log, metadata and blocks.
    #[arg(long, env = "RINGFS_DATA_DIR")]
    pub data_dir: PathBuf,
    /// gRPC listen address (peers, clients).
    #[arg(long, env = "RINGFS_LISTEN", default_value = "0.0.0.0:7420")]
    pub listen: SocketAddr,
    /// Address other nodes and clients use to reach this node (`host:port`). Defaults
    /// to the listen address.
    #[arg(long, env = "RINGFS_ADVERTISE")]
    pub advertise: Option<String>,
    /// HTTP listen address for /metrics, /healthz and /readyz.
    #[arg(long, env = "RINGFS_HTTP_LISTEN", default_value = "0.0.0.0:7421")]
    pub http_listen: SocketAddr,
    /// Failure domain of this node (e.g. the Kubernetes zone).
    #[arg(long, env = "RINGFS_ZONE", default_value = "default")]
    pub zone: String,
    /// Storage capacity this node offers, e.g. 100GiB. Placement is proportional to it.
    #[arg(long, env = "RINGFS_CAPACITY", default_value = "100GiB", value_parser = parse_size_arg)]
    pub capacity: u64,
    /// Create a new cluster with this node as its first member (once; ignored when the
    /// data directory already holds a cluster).
    #[arg(long, env = "RINGFS_BOOTSTRAP")]
    pub bootstrap: bool,
    /// Addresses of existing members to join through (comma-separated).
    #[arg(long, env = "RINGFS_JOIN", value_delimiter = ',')]
    pub join: Vec<String>,
    /// Partitions of a new cluster (fixed at creation).
    #[arg(long, env = "RINGFS_PARTITIONS", default_value_t = ringfs_core::layout::DEFAULT_PARTITIONS,
          value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub partitions: u32,
    /// Replicas per partition of a new cluster (the largest volume replication factor).
    #[arg(long, env = "RINGFS_REPLICATION", default_value_t = ringfs_core::layout::DEFAULT_REPLICATION,
          value_parser = clap::value_parser!(u32).range(1..=7))]
    pub replication: u32,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, env = "RINGFS_HEARTBEAT_MS", default_value_t = 100)]
    pub heartbeat_ms: u64,
    /// Raft election timeout (lower bound) in milliseconds.
    #[arg(long, env = "RINGFS_ELECTION_TIMEOUT_MS", default_value_t = 500)]
    pub election_timeout_ms: u64,
    /// Leader lease for reads, in milliseconds: while a quorum acknowledged this leader
    /// within this window, linearizable reads are served without another round trip.
    /// Safe because followers refuse to elect anyone else for 2 x the election timeout
    /// after hearing from the leader; must stay well below that. 0 disables lease reads
    /// (every read then confirms leadership with a quorum).
    #[arg(long, env = "RINGFS_LEASE_READ_MS", default_value_t = 250)]
    pub lease_read_ms: u64,
    /// Build a Raft snapshot (and purge the log) after this many new entries.
    #[arg(long, env = "RINGFS_SNAPSHOT_LOGS", default_value_t = 20_000)]
    pub snapshot_logs: u64,
    /// Log entries kept behind a snapshot, so a briefly lagging follower catches up from
    /// the log instead of receiving the whole snapshot.
    #[arg(long, env = "RINGFS_SNAPSHOT_KEEP_LOGS", default_value_t = 1000)]
    pub snapshot_keep_logs: u64,
    /// Bandwidth cap of migration, repair and scrub-repair copies into this node, per
    /// second (e.g. 50MiB). Foreground I/O is never throttled.
    #[arg(long, env = "RINGFS_MIGRATE_BANDWIDTH", default_value = "50MiB", value_parser = parse_size_arg)]
    pub migrate_bandwidth: u64,
    /// Concurrent migration transfers per node (as destination or source).
    #[arg(long, env = "RINGFS_MIGRATE_CONCURRENCY", default_value_t = 2,
        value_parser = clap::value_parser!(u64).range(1..=64))]
    pub migrate_concurrency: u64,
    /// Partitions per migration transfer.
    #[arg(long, env = "RINGFS_MIGRATE_BATCH", default_value_t = 16,
        value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub migrate_batch: u64,
    /// A migration transfer takes more than --migrate-batch partitions while their
    /// estimated size together stays below this (e.g. 512MiB): empty and small partitions
    /// then move in a few round trips.
    #[arg(long, env = "RINGFS_MIGRATE_BATCH_BYTES", default_value = "512MiB", value_parser = parse_size_arg)]
    pub migrate_batch_bytes: u64,
    /// Deadline of one migration transfer, in seconds; a transfer past it is retried.
    #[arg(long, env = "RINGFS_TRANSFER_DEADLINE_SECS", default_value_t = 300)]
    pub transfer_deadline_secs: u64,
    /// A node unreachable this long (seconds) is marked down and its partitions are
    /// re-replicated elsewhere.
    #[arg(long, env = "RINGFS_DOWN_GRACE_SECS", default_value_t = 60)]
    pub down_grace_secs: u64,
    /// Seconds between scrub passes (checksum re-verification of every local block, then
    /// a comparison with the other replicas); 0 disables scrub.
    #[arg(long, env = "RINGFS_SCRUB_INTERVAL_SECS", default_value_t = 86_400)]
    pub scrub_interval_secs: u64,
    /// Read rate of scrub, per second (e.g. 16MiB).
    #[arg(long, env = "RINGFS_SCRUB_BANDWIDTH", default_value = "16MiB", value_parser = parse_size_arg)]
    pub scrub_bandwidth: u64,
    /// Seconds between sweeps deleting local copies of partitions this node no longer owns
    /// in any live layout version.
    #[arg(long, env = "RINGFS_STALE_GC_INTERVAL_SECS", default_value_t = 60)]
    pub stale_gc_interval_secs: u64,
    /// A local block copy that no file references is deleted by that sweep once its file
    /// is older than this many seconds (younger ones may belong to a write not yet
    /// committed). Such copies are left behind when blocks are deleted while this node is
    /// down or cut off.
    #[arg(long, env = "RINGFS_ORPHAN_GRACE_SECS", default_value_t = 3600)]
    pub orphan_grace_secs: u64,
    /// A mount session whose lease expired by the leader's wall clock is ended only after
    /// the leader has also seen it go unrenewed for this many seconds of monotonic time,
    /// so a wall clock that jumps forward cannot end live sessions (and reclaim the files
    /// they hold open). Must exceed the mounts' renewal interval (a third of their
    /// `--session-ttl`, 40 s by default).
    #[arg(long, env = "RINGFS_SESSION_CONFIRM_SECS", default_value_t = 300)]
    pub session_confirm_secs: u64,
    /// Mutual TLS: a directory with ca.crt, tls.crt and tls.key (PEM; a kubernetes.io/tls
    /// Secret's layout) holding a certificate with role `node`. Every peer and client must
    /// then present a certificate of the same CA. Without it the node speaks plaintext.
    #[arg(long, env = "RINGFS_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Seconds between checks of --tls-dir for rotated certificates (new connections use
    /// them; established ones keep theirs).
    #[arg(long, env = "RINGFS_TLS_RELOAD_SECS", default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub tls_reload_secs: u64,
    /// Without TLS: a file whose token administrative calls must carry as
    /// `authorization: Bearer <token>` (the node sends it on its own calls too).
    #[arg(long, env = "RINGFS_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// TEST ONLY (fault injection): after a file-system command that carries a request id
    /// has committed, answer its first delivery with `unavailable` as if the reply had
    /// been lost on the way; its retry gets the real answer. Never set in production.
    #[arg(long, hide = true, env = "RINGFS_FAILPOINT_LOSE_REPLIES")]
    pub failpoint_lose_replies: bool,
    /// TEST ONLY (fault injection): the process exits, without answering, right after the
    /// Nth file-system command carrying a request id that it handled has committed (a
    /// node killed between commit and reply). Never set in production.
    #[arg(long, hide = true, env = "RINGFS_FAILPOINT_EXIT_AFTER_COMMITS")]
    pub failpoint_exit_after_commits: Option<u64>,
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    ringfs_core::units::parse_size(s).map_err(|e| e.to_string())
}

impl Config {
    pub fn advertise_addr(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }

    /// Parses flags and environment, then fills anything still at its default from the
    /// TOML file named by `--config`.
    pub fn load_from<I: IntoIterator<Item = String>>(args: I) -> anyhow::Result<Config> {
        let args: Vec<String> = args.into_iter().collect();
        // First pass only finds the config file and which values the user gave; required
        // settings may still be missing because the file supplies them.
        let matches = Config::command()
            .ignore_errors(true)
            .try_get_matches_from(&args)?;
        let Some(path) = matches.get_one::<PathBuf>("config").cloned() else {
            return Ok(Config::try_parse_from(&args)?);
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!("config file {} is not valid TOML: {e}", path.display())
        })?;
        let known: Vec<String> = Config::command()
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect();
        let mut full = args.clone();
        for (key, value) in table {
            let id = key.replace('-', "_");
            if !known.contains(&id) {
                anyhow::bail!(
                    "config file {}: unknown setting {key:?}; see ringfs-node --help",
                    path.display()
                );
            }
            match matches.value_source(&id) {
                Some(ValueSource::CommandLine) | Some(ValueSource::EnvVariable) => continue,
                _ => {}
            }
            let flag = format!("--{}", id.replace('_', "-"));
            match value {
                toml::Value::Boolean(true) => full.push(flag),
                toml::Value::Boolean(false) => {}
                toml::Value::String(s) => full.extend([flag, s]),
                toml::Value::Integer(i) => full.extend([flag, i.to_string()]),
                toml::Value::Array(a) => {
                    let items: Vec<String> = a
                        .iter()
                        .map(|v| {
                            v.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| v.to_string())
                        })
                        .collect();
                    full.extend([flag, items.join(",")]);
                }
                other => anyhow::bail!(
                    "config file {}: setting {key:?} has unsupported value {other}",
                    path.display()
                ),
            }
        }
        Ok(Config::try_parse_from(full)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_fills_defaults_and_flags_win() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "zone = \"z1\"\ncapacity = \"2GiB\"\nid = 9\njoin = [\"a:1\", \"b:2\"]\n",
        )
        .expect("write");
        let cfg = Config::load_from(
            [
                "ringfs-node",
                "--data-dir",
                "/tmp/x",
                "--id",
                "3",
                "--config",
                path.to_str().expect("utf8"),
            ]
            .map(String::from),
        )
        .expect("parse");
        assert_eq!(cfg.id, 3);
        assert_eq!(cfg.zone, "z1");
        assert_eq!(cfg.capacity, 2 << 30);
        assert_eq!(cfg.join, vec!["a:1".to_string(), "b:2".to_string()]);
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "zonee = \"z1\"\n").expect("write");
        let err = Config::load_from(
            [
                "ringfs-node",
                "--data-dir",
                "/x",
                "--id",
                "1",
                "--config",
                path.to_str().expect("utf8"),
            ]
            .map(String::from),
        )
        .expect_err("must fail");
        assert!(err.to_string().contains("unknown setting"), "{err}");
    }

    #[test]
    fn node_id_zero_is_refused() {
        assert!(Config::try_parse_from(["ringfs-node", "--data-dir", "/x", "--id", "0"]).is_err());
    }
}
