//! Migration planning: which node must copy which partition from whom while several
//! layout versions are live, in what order, and how fast it is going.
//!
//! Pure: the scheduler on the Raft leader (node-server `migrate`) feeds it the live
//! layouts and node states and executes what it returns.

use crate::ids::NodeId;
use crate::layout::Layout;
use std::collections::{BTreeMap, BTreeSet};

/// Why a partition copy is needed. The order is the priority: repair first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum JobClass {
    /// An old owner is down: the partition is below RF until the copy lands.
    Repair,
    /// An old owner is draining (leaving the cluster).
    Drain,
    /// A node joined or capacities changed.
    Balance,
}

impl JobClass {
    pub fn as_str(self) -> &'static str {
        match self {
            JobClass::Repair => "repair",
            JobClass::Drain => "drain",
            JobClass::Balance => "balance",
        }
    }
}

/// One partition to copy onto `dest` from any of `sources`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub dest: NodeId,
    pub partition: u32,
    pub class: JobClass,
    /// Nodes that held the partition in an older live version and are not down.
    pub sources: Vec<NodeId>,
    /// Estimated bytes to move (0 when unknown); smaller jobs go first within a class.
    pub est_bytes: u64,
}

/// The copies needed to make the newest of `live` (newest first) hold everything the
/// older live versions hold: for every partition, every owner in the newest version that
/// did not own it in *every* older live version pulls it from the other owners of the
/// older versions. Nodes in `down` are neither destinations nor sources. A partition
/// whose older owners are all down gets no job (nothing reachable to copy); the caller
/// reports it as lost/under-replicated.
pub fn plan(
    live: &[Layout],
    down: &BTreeSet<NodeId>,
    draining: &BTreeSet<NodeId>,
) -> (Vec<Job>, Vec<u32>) {
    let mut jobs = Vec::new();
    let mut unreachable = Vec::new();
    let Some((newest, older)) = live.split_first() else {
        return (jobs, unreachable);
    };
    if older.is_empty() {
        return (jobs, unreachable);
    }
    for p in 0..newest.partitions {
        let mut old_owners: Vec<NodeId> = Vec::new();
        for l in older {
            for n in l.replicas(p) {
                if !old_owners.contains(n) {
                    old_owners.push(*n);
                }
            }
        }
        let class = if old_owners.iter().any(|n| down.contains(n)) {
            JobClass::Repair
        } else if old_owners.iter().any(|n| draining.contains(n)) {
            JobClass::Drain
        } else {
            JobClass::Balance
        };
        for &dest in newest.replicas(p) {
            if down.contains(&dest) || older.iter().all(|l| l.replicas(p).contains(&dest)) {
                continue;
            }
            let sources: Vec<NodeId> = old_owners
                .iter()
                .copied()
                .filter(|n| *n != dest && !down.contains(n))
                .collect();
            if sources.is_empty() {
                unreachable.push(p);
                continue;
            }
            jobs.push(Job {
                dest,
                partition: p,
                class,
                sources,
                est_bytes: 0,
            });
        }
    }
    unreachable.dedup();
    (jobs, unreachable)
}

/// Orders jobs by priority: class (repair > drain > balance), then smallest first, then
/// partition and destination (deterministic).
pub fn prioritize(jobs: &mut [Job]) {
    jobs.sort_by_key(|j| (j.class, j.est_bytes, j.partition, j.dest));
}

/// Limits for [`next_batches`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Concurrent transfers per node, counting it as destination or as a source.
    pub per_node: usize,
    /// Partitions per transfer (one pull RPC) whatever their size.
    pub batch: usize,
    /// A transfer takes more partitions than `batch` while their estimated bytes together
    /// stay within this budget (up to [`MAX_BATCH_PARTITIONS`]): empty and small
    /// partitions move in few round trips, because a listing costs the same for one
    /// partition as for many. A transfer that outgrows its deadline is retried and skips
    /// the blocks already copied, so a wrong estimate costs time, not progress.
    pub batch_bytes: u64,
}

/// Upper bound of partitions in one transfer.
pub const MAX_BATCH_PARTITIONS: usize = 1024;

/// Whether a transfer holding `len` jobs of `bytes` estimated bytes may take one more
/// job of `est` bytes.
fn batch_has_room(len: usize, bytes: u64, est: u64, limits: Limits) -> bool {
    len < limits.batch.max(1)
        || (len < MAX_BATCH_PARTITIONS && bytes.saturating_add(est) <= limits.batch_bytes)
}

/// Picks the transfers to start now from `pending` (already prioritized), given the
/// transfers running per node. Each transfer is a batch of jobs of one class for one
/// destination; a transfer counts against its destination and against every node it may
/// pull from. Jobs are taken in priority order: a job whose nodes are at their limit is
/// skipped, not waited for, so a busy node does not stall others.
pub fn next_batches(
    pending: &[Job],
    running: &BTreeMap<NodeId, usize>,
    limits: Limits,
) -> Vec<Vec<Job>> {
    let mut load = running.clone();
    let mut open: BTreeMap<(NodeId, JobClass), usize> = BTreeMap::new();
    let mut batches: Vec<Vec<Job>> = Vec::new();
    let mut batch_bytes: Vec<u64> = Vec::new();
    let busy = |load: &BTreeMap<NodeId, usize>, n: &NodeId| {
        load.get(n).copied().unwrap_or(0) >= limits.per_node.max(1)
    };
    for job in pending {
        if let Some(&i) = open.get(&(job.dest, job.class)) {
            if batch_has_room(batches[i].len(), batch_bytes[i], job.est_bytes, limits)
                && job
                    .sources
                    .iter()
                    .all(|s| batches[i][0].sources.contains(s) || !busy(&load, s))
            {
                batches[i].push(job.clone());
                batch_bytes[i] = batch_bytes[i].saturating_add(job.est_bytes);
                continue;
            }
        }
        if busy(&load, &job.dest) || job.sources.iter().all(|s| busy(&load, s)) {
            continue;
        }
        *load.entry(job.dest).or_insert(0) += 1;
        for s in &job.sources {
            *load.entry(*s).or_insert(0) += 1;
        }
        open.insert((job.dest, job.class), batches.len());
        batches.push(vec![job.clone()]);
        batch_bytes.push(job.est_bytes);
    }
    batches
}

/// Capacity changes smaller than this fraction do not recompute the layout (hysteresis:
/// a disk reporting a few bytes more or less must not move data around).
pub const CAPACITY_HYSTERESIS: f64 = 0.05;

/// Whether a capacity change from `old` to `new` is worth a new layout.
pub fn capacity_change_significant(old: u64, new: u64) -> bool {
    if old == 0 || new == 0 {
        return old != new;
    }
    let (a, b) = (old as f64, new as f64);
    (a - b).abs() / a > CAPACITY_HYSTERESIS
}

/// A moving average of a transfer rate, fed with (seconds since start, total bytes).
#[derive(Debug, Clone, Default)]
pub struct RateMeter {
    last: Option<(f64, u64)>,
    rate: f64,
}

impl RateMeter {
    /// Smoothing weight of the newest sample.
    const ALPHA: f64 = 0.3;

    pub fn observe(&mut self, t_secs: f64, total_bytes: u64) {
        if let Some((t0, b0)) = self.last {
            let dt = t_secs - t0;
            if dt <= 0.0 {
                return;
            }
            let inst = total_bytes.saturating_sub(b0) as f64 / dt;
            self.rate = if self.rate == 0.0 {
                inst
            } else {
                Self::ALPHA * inst + (1.0 - Self::ALPHA) * self.rate
            };
        }
        self.last = Some((t_secs, total_bytes));
    }

    /// Bytes per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Seconds until `bytes_left` are moved at the current rate; 0 when idle or unknown.
    pub fn eta(&self, bytes_left: u64) -> f64 {
        if self.rate <= 0.0 || bytes_left == 0 {
            0.0
        } else {
            bytes_left as f64 / self.rate
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::NodeSpec;

    fn spec(id: NodeId, cap: u64) -> NodeSpec {
        NodeSpec {
            id,
            zone: format!("z{}", id % 3),
            capacity: cap,
        }
    }

    fn layouts(before: &[NodeSpec], after: &[NodeSpec]) -> Vec<Layout> {
        let a = Layout::compute(None, before, 3, 64).unwrap();
        let b = Layout::compute(Some(&a), after, 3, 64).unwrap();
        vec![b, a]
    }

    /// Naive oracle: a (node, partition) pair needs a copy iff the node owns the partition
    /// in the newest version but not in some older one.
    fn oracle(live: &[Layout]) -> BTreeSet<(NodeId, u32)> {
        let mut out = BTreeSet::new();
        for p in 0..live[0].partitions {
            for n in live[0].replicas(p) {
                if live[1..].iter().any(|l| !l.replicas(p).contains(n)) {
                    out.insert((*n, p));
                }
            }
        }
        out
    }

    #[test]
    fn single_version_needs_nothing() {
        let l = Layout::compute(None, &[spec(1, 1), spec(2, 1), spec(3, 1)], 3, 16).unwrap();
        let (jobs, lost) = plan(&[l], &BTreeSet::new(), &BTreeSet::new());
        assert!(jobs.is_empty() && lost.is_empty());
    }

    #[test]
    fn join_plans_exactly_the_moved_replicas() {
        let three = [spec(1, 1), spec(2, 1), spec(3, 1)];
        let four = [spec(1, 1), spec(2, 1), spec(3, 1), spec(4, 1)];
        let live = layouts(&three, &four);
        let (jobs, lost) = plan(&live, &BTreeSet::new(), &BTreeSet::new());
        assert!(lost.is_empty());
        let got: BTreeSet<(NodeId, u32)> = jobs.iter().map(|j| (j.dest, j.partition)).collect();
        assert_eq!(got, oracle(&live));
        assert!(!got.is_empty());
        for j in &jobs {
            assert_eq!(j.dest, 4, "only the new node receives data");
            assert_eq!(j.class, JobClass::Balance);
            assert!(!j.sources.contains(&j.dest));
            assert_eq!(j.sources.len(), 3);
        }
    }

    #[test]
    fn drain_and_down_classes_and_sources() {
        let four = [spec(1, 1), spec(2, 1), spec(3, 1), spec(4, 1)];
        let drained = [spec(1, 1), spec(2, 1), spec(3, 1), spec(4, 0)];
        let live = layouts(&four, &drained);
        let (jobs, _) = plan(&live, &BTreeSet::new(), &BTreeSet::from([4]));
        assert!(!jobs.is_empty());
        assert!(jobs
            .iter()
            .all(|j| j.class == JobClass::Drain && j.dest != 4));
        let (jobs, lost) = plan(&live, &BTreeSet::from([4]), &BTreeSet::new());
        assert!(lost.is_empty());
        assert!(jobs
            .iter()
            .all(|j| j.class == JobClass::Repair && !j.sources.contains(&4)));
    }

    #[test]
    fn all_sources_down_is_reported_not_planned() {
        let a = Layout::compute(None, &[spec(1, 1)], 1, 8).unwrap();
        let b = Layout::compute(Some(&a), &[spec(1, 0), spec(2, 1)], 1, 8).unwrap();
        let (jobs, lost) = plan(&[b, a], &BTreeSet::from([1]), &BTreeSet::new());
        assert!(jobs.is_empty());
        assert_eq!(lost.len(), 8);
    }

    #[test]
    fn priority_then_smallest_first() {
        let mk = |p, class, est| Job {
            dest: 1,
            partition: p,
            class,
            sources: vec![2],
            est_bytes: est,
        };
        let mut jobs = vec![
            mk(0, JobClass::Balance, 1),
            mk(1, JobClass::Drain, 500),
            mk(2, JobClass::Repair, 900),
            mk(3, JobClass::Drain, 5),
        ];
        prioritize(&mut jobs);
        let order: Vec<u32> = jobs.iter().map(|j| j.partition).collect();
        assert_eq!(order, vec![2, 3, 1, 0]);
    }

    #[test]
    fn batches_respect_per_node_limits() {
        let jobs: Vec<Job> = (0..20)
            .map(|p| Job {
                dest: 1 + (p % 2) as NodeId,
                partition: p,
                class: JobClass::Balance,
                sources: vec![3],
                est_bytes: 1,
            })
            .collect();
        let limits = Limits {
            per_node: 2,
            batch: 4,
            batch_bytes: 0,
        };
        let b = next_batches(&jobs, &BTreeMap::new(), limits);
        // Node 3 is a source of every transfer: at most 2 transfers start.
        assert_eq!(b.len(), 2);
        assert!(b.iter().all(|t| t.len() <= 4));
        let busy = BTreeMap::from([(3, 2)]);
        assert!(next_batches(&jobs, &busy, limits).is_empty());
        // Batches never mix destinations or classes.
        for t in &b {
            assert!(t
                .iter()
                .all(|j| j.dest == t[0].dest && j.class == t[0].class));
        }
    }

    #[test]
    fn small_partitions_share_a_transfer_large_ones_do_not() {
        let job = |p: u32, est| Job {
            dest: 1,
            partition: p,
            class: JobClass::Balance,
            sources: vec![2],
            est_bytes: est,
        };
        let limits = Limits {
            per_node: 1,
            batch: 4,
            batch_bytes: 1000,
        };
        // 3000 empty partitions: capped at MAX_BATCH_PARTITIONS in one transfer.
        let empty: Vec<Job> = (0..3000).map(|p| job(p, 0)).collect();
        let b = next_batches(&empty, &BTreeMap::new(), limits);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].len(), MAX_BATCH_PARTITIONS);
        // Large partitions: `batch` of them, even though they exceed the byte budget.
        let big: Vec<Job> = (0..10).map(|p| job(p, 5000)).collect();
        let b = next_batches(&big, &BTreeMap::new(), limits);
        assert_eq!(b[0].len(), 4);
        // Mixed: past `batch`, jobs join only while the budget holds.
        let mixed: Vec<Job> = (0..10).map(|p| job(p, 150)).collect();
        let b = next_batches(&mixed, &BTreeMap::new(), limits);
        assert_eq!(b[0].len(), 6, "a 7th job would make 1050 > 1000 bytes");
    }

    #[test]
    fn hysteresis_ignores_small_capacity_changes() {
        assert!(!capacity_change_significant(100, 104));
        assert!(capacity_change_significant(100, 110));
        assert!(capacity_change_significant(100, 0));
        assert!(!capacity_change_significant(0, 0));
    }

    #[test]
    fn rate_and_eta() {
        let mut m = RateMeter::default();
        assert_eq!(m.eta(100), 0.0);
        m.observe(0.0, 0);
        m.observe(1.0, 1000);
        assert!((m.rate() - 1000.0).abs() < 1e-9);
        assert!((m.eta(5000) - 5.0).abs() < 1e-9);
    }
}
