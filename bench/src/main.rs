//! `ringfs-bench`: the measuring tools behind `bench/run.sh`.
//!
//! Every measuring subcommand prints one JSON record per line ([`Record`]) on stdout; the
//! script appends them to `results.jsonl` and `report` turns that file into the
//! side-by-side Markdown table of BENCHMARKS.md (medians, ratios to the peer and limits).

mod blockrss;
mod fio;
mod md;
mod raft;
mod rebalance;
mod record;
mod report;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "ringfs-bench",
    about = "ringfs benchmark tools (see bench/run.sh)"
)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

/// The running ringfs cluster and volume a command measures.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Comma-separated node addresses.
    #[arg(long)]
    seeds: String,
    #[arg(long)]
    volume: String,
}

/// Labels attached to every record a measuring command prints.
#[derive(clap::Args, Debug, Clone)]
pub struct Tags {
    /// System under test (raw, bindfs, glusterfs, ringfs).
    #[arg(long)]
    system: String,
    /// Repetition number.
    #[arg(long, default_value_t = 1)]
    rep: u32,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// mdtest-like metadata workload in a directory: create/stat/readdir/rename/unlink of
    /// many files in one directory, then a tree (fanout^1..depth directories, files in each).
    Md {
        #[command(flatten)]
        tags: Tags,
        /// Directory to work in (created; must not exist or be empty).
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        files: usize,
        #[arg(long, default_value_t = 6)]
        fanout: usize,
        #[arg(long, default_value_t = 4)]
        depth: u32,
        #[arg(long, default_value_t = 8)]
        per_dir: usize,
        /// Worker threads sharing the work.
        #[arg(long, default_value_t = 4)]
        threads: usize,
    },
    /// Raft commit rate: concurrent clients each committing mkdirs for a fixed time.
    Raft {
        #[command(flatten)]
        tags: Tags,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Comma-separated client counts.
        #[arg(long, default_value = "1,64,256")]
        clients: String,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// Layout balance (max/mean per unit capacity) and moved fraction when a node joins,
    /// as a ratio to the optimum 1/(N+1).
    Layout {
        #[command(flatten)]
        tags: Tags,
        #[arg(long, default_value = "3,4,5,8,16,32,64")]
        nodes: String,
        #[arg(long, default_value_t = 4096)]
        partitions: u32,
        #[arg(long, default_value_t = 3)]
        replication: u32,
    },
    /// Foreground p99 (small file write + read back) in steady state and while the
    /// cluster rebalances onto a node added by the command after `--`.
    Rebalance {
        #[command(flatten)]
        tags: Tags,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Length of the steady-state window.
        #[arg(long, default_value_t = 20.0)]
        steady_seconds: f64,
        /// MiB of data written first, for the join to move.
        #[arg(long, default_value_t = 256)]
        preload_mib: usize,
        /// The run fails when the rebalance takes longer.
        #[arg(long, default_value_t = 900.0)]
        timeout_seconds: f64,
        /// The command that adds a node (e.g. `ringfs cluster add-node --dir D`).
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Resident memory of a storage node holding many blocks (a real ringfs-node started
    /// on a data directory filled with block files in the node's format).
    BlockRss {
        #[command(flatten)]
        tags: Tags,
        /// The ringfs-node binary.
        #[arg(long)]
        node_bin: PathBuf,
        /// Scratch data directory (must not exist; removed afterwards).
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 1_000_000)]
        blocks: u64,
        #[arg(long, default_value_t = 1024)]
        block_bytes: usize,
        #[arg(long, default_value_t = 10.0)]
        sample_seconds: f64,
    },
    /// Run a command while sampling the given processes: prints CPU seconds per GiB moved
    /// and peak resident memory of those processes.
    Cost {
        #[command(flatten)]
        tags: Tags,
        /// Test name for the records.
        #[arg(long)]
        test: String,
        /// Comma-separated pids whose CPU and memory count (the system's daemons).
        #[arg(long)]
        pids: String,
        /// Bytes the command moves (for CPU seconds per GiB).
        #[arg(long)]
        bytes: u64,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Turn a fio JSON output file into records.
    FioExtract {
        #[command(flatten)]
        tags: Tags,
        #[arg(long)]
        test: String,
        #[arg(long)]
        file: PathBuf,
    },
    /// Aggregate results.jsonl into the Markdown report.
    Report {
        #[arg(long)]
        results: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// One-line description of the machine.
        #[arg(long, default_value = "")]
        machine: String,
        /// Title line (e.g. "smoke run: checks that it works, not speed").
        #[arg(long, default_value = "")]
        note: String,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn main() -> Result<()> {
    let args = Args::parse();
    match args.cmd {
        Cmd::Md {
            tags,
            dir,
            files,
            fanout,
            depth,
            per_dir,
            threads,
        } => md::run(
            &tags,
            &md::Params {
                dir,
                files,
                fanout,
                depth,
                per_dir,
                threads,
            },
        ),
        Cmd::Raft {
            tags,
            cluster,
            clients,
            seconds,
        } => runtime()?.block_on(raft::run(
            &tags,
            &cluster.seeds,
            &cluster.volume,
            &clients,
            seconds,
        )),
        Cmd::Rebalance {
            tags,
            cluster,
            steady_seconds,
            preload_mib,
            timeout_seconds,
            command,
        } => runtime()?.block_on(rebalance::run(
            &tags,
            &rebalance::Params {
                seeds: &cluster.seeds,
                volume: &cluster.volume,
                steady_secs: steady_seconds,
                preload_mib,
                timeout_secs: timeout_seconds,
                command: &command,
            },
        )),
        Cmd::BlockRss {
            tags,
            node_bin,
            dir,
            blocks,
            block_bytes,
            sample_seconds,
        } => runtime()?.block_on(blockrss::run(
            &tags,
            &blockrss::Params {
                node_bin,
                dir,
                blocks,
                block_bytes,
                sample_secs: sample_seconds,
            },
        )),
        Cmd::Layout {
            tags,
            nodes,
            partitions,
            replication,
        } => raft::layout(&tags, &nodes, partitions, replication),
        Cmd::Cost {
            tags,
            test,
            pids,
            bytes,
            command,
        } => record::cost(&tags, &test, &pids, bytes, &command),
        Cmd::FioExtract { tags, test, file } => fio::extract(&tags, &test, &file),
        Cmd::Report {
            results,
            out,
            machine,
            note,
        } => report::write(&results, &out, &machine, &note),
    }
}
