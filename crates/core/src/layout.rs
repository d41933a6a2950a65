//! The partition ring: which nodes hold each partition's replicas.
//!
//! A block id hashes into one of `partitions` partitions (see [`crate::BlockId::partition`]).
//! A [`Layout`] maps each partition to `replication` distinct nodes.
//!
//! # Invariants of every computed layout
//!
//! With `P` partitions, `r` = effective replication (min(requested, nodes with capacity
//! > 0)) and `Z` = number of zones that hold a node with capacity > 0:
//!
//! 1. every partition has exactly `r` replicas, on `r` **distinct** nodes, all with
//!    capacity > 0 (a capacity-0 node is draining and holds nothing);
//! 2. node `i` holds exactly its **quota** `q_i` of the `r * P` replica slots, the floor
//!    or the ceiling of its ideal share `x_i` (`|q_i - x_i| < 1`); zone totals are also
//!    within 1 of their ideal share;
//! 3. the ideal shares are capacity-proportional, `x_i = r * P * cap_i / sum(cap)`,
//!    except that a node holds at most `P` slots (one replica of each partition) and, when
//!    `Z >= r`, a zone holds at most `P` slots. What a capped node or zone cannot take is
//!    spread over the others in proportion to their capacity (water-filling);
//! 4. **zone spread**, a hard constraint (like Garage's default zone redundancy): when
//!    `Z >= r`, the replicas of a partition are in `r` distinct zones. When `Z < r`, each
//!    partition spans as many zones as the quotas allow: a zone holding at most `P` slots
//!    has at most one replica of a partition, and a zone holding at least `P` slots has
//!    at least one replica of every partition. (So a small node in a new zone gets its
//!    capacity share, not every partition; with `Z >= r` the spec forces a small zone to
//!    take `P` slots, and its nodes fill up first.)
//! 5. **minimal movement** from the previous layout: every (partition, node) pair that
//!    is still allowed is kept unless the quotas or zone rules force a change, and the
//!    changes are searched to be as few as possible (the tests compare with an exact
//!    min-cost flow and find the optimum). With one zone, a node joining or leaving moves
//!    exactly the slots that the quota changes require;
//! 6. the result is a pure, deterministic function of its inputs (input node order does
//!    not matter; no randomness, no hash-map iteration order).
//!
//! # Algorithm
//!
//! The reference is Garage's optimal assignment: a flow network source → partition →
//! (partition, zone) → node → sink, maximised, then cheapest-rerouted (negative cycles) so
//! that as much of the old assignment as possible is kept. Running a general min-cost flow
//! over `P * N` edges is slow, so this module uses the structure of the problem:
//!
//! 1. **Quotas** ([`Layout::target_slots`]): exact water-filling in rational arithmetic
//!    (u128, no floating point) gives every zone and node its ideal share under the caps
//!    of invariant 3. Shares are rounded by largest remainder, first per zone, then per
//!    node inside each zone, so totals are exact. Among the candidates for rounding up,
//!    a node (zone) that already held at least the rounded-up count in the previous layout
//!    goes first, then the largest remainder, then the smaller id: every choice is within
//!    1 of ideal, and this one avoids moves when quotas jiggle (Alabama paradox).
//! 2. **Seed** from the previous layout: keep every replica whose node is still active, at
//!    the same position in the replica list; drop replicas that break the zone rules (the
//!    one on the most over-quota node first). Dropped replicas become holes.
//! 3. **Fill holes** partition by partition, each with the admissible node of greatest
//!    remaining need (zone need first, then node need, then a fixed hash of (partition,
//!    node id) so that replica sets are diverse). This is the Gale–Ryser greedy that
//!    builds a 0/1 matrix with given row and column sums; from scratch it places (nearly)
//!    every slot.
//! 4. **Direct transfers**: a node above quota hands partitions to admissible nodes below
//!    quota, one move per slot.
//! 5. **Repair**: for each node still below quota, the cheapest chain "j takes a slot of
//!    k1, k1 takes a slot of k2, …, the last one takes a hole or a slot of an over-quota
//!    node" — an augmenting path of the flow network. Undoing a placement made by this
//!    computation is free and displacing a kept replica costs one move, so this is a 0-1
//!    BFS, run on the N x N *exchange graph* (per node pair, how many slots of y node x
//!    may take), which is kept up to date as partitions change.
//! 6. **Improve**: if the result moves more than the per-node lower bound (the sum of
//!    quota increases), cancel negative cycles of the exchange graph (Bellman-Ford): a
//!    cycle "x1 takes a slot of x2, …, xk takes a slot of x1" keeps all counts and rules;
//!    its weight is the change in moved slots.
//!
//! If the search from the previous layout ever failed, the layout is recomputed from
//! scratch; if that failed too an error is returned. A layout that breaks an invariant is
//! never returned (the result is verified).
//!
//! Cost at opt-level 0 (the debug tests), P = 4096, r = 3, N = 64: about 0.1-0.2 s from
//! scratch, 20-35 ms for a node joining or leaving, up to ~0.3 s for a multi-change with
//! zone shifts; an optimised build is several times faster.

use crate::error::CoreError;
use crate::ids::{BlockId, NodeId};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Partitions in a new cluster; fixed at cluster creation.
pub const DEFAULT_PARTITIONS: u32 = 4096;
/// Replicas per partition in a new cluster (capped by the node count).
pub const DEFAULT_REPLICATION: u32 = 3;
/// Largest supported partition count.
pub const MAX_PARTITIONS: u32 = 1 << 20;
/// Largest supported replication factor.
pub const MAX_REPLICATION: u32 = 16;
/// Largest supported number of nodes in one layout.
pub const MAX_NODES: usize = 1 << 16;

/// A node as the layout sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub id: NodeId,
    /// Failure domain (`topology.kubernetes.io/zone`); replicas of one partition are put in
    /// distinct zones whenever there are at least `replication` zones.
    pub zone: String,
    /// Relative capacity (bytes). 0 means "hold nothing" (a draining node).
    pub capacity: u64,
}

/// One version of the partition → replicas map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub version: u64,
    pub partitions: u32,
    /// Effective replication: min(requested, nodes with capacity > 0).
    pub replication: u32,
    /// The nodes this layout was computed for, sorted by id.
    pub nodes: Vec<NodeSpec>,
    /// `partitions * replication` node ids; partition p's replicas are
    /// `assignment[p * replication .. (p + 1) * replication]`.
    pub assignment: Vec<NodeId>,
}

impl Layout {
    /// Computes the next layout from `prev` (if any) for `nodes`.
    ///
    /// `replication` is the requested replication factor; the layout's effective
    /// replication is min(`replication`, nodes with capacity > 0). `partitions` must equal
    /// `prev.partitions` when `prev` is given (the partition count is fixed for a cluster's
    /// life). The result satisfies every invariant listed in the module documentation and
    /// has `version = prev.version + 1` (1 without `prev`).
    ///
    /// Errors ([`CoreError::Layout`]): no nodes, every node with capacity 0, replication 0
    /// or above [`MAX_REPLICATION`], partitions 0 or above [`MAX_PARTITIONS`], more than
    /// [`MAX_NODES`] nodes, a duplicate node id or node id 0, or a partition count that
    /// differs from `prev`'s.
    pub fn compute(
        prev: Option<&Layout>,
        nodes: &[NodeSpec],
        replication: u32,
        partitions: u32,
    ) -> Result<Layout, CoreError> {
        let (sorted, topo) = Topo::new(nodes, replication, partitions)?;
        if let Some(prev) = prev {
            if prev.partitions != partitions {
                return Err(CoreError::Layout(format!(
                    "the partition count is fixed when a cluster is created: the previous \
                     layout has {} partitions but {partitions} were requested; keep \
                     partitions = {}",
                    prev.partitions, prev.partitions
                )));
            }
        }
        let prev_counts = prev.map(|l| topo.prev_counts(l));
        let quota = topo.quotas(prev_counts.as_deref())?;

        let mut placer = Placer::new(&topo, quota.clone());
        let mut placed = false;
        if let Some(prev) = prev {
            placer.seed(prev);
            placed = placer.place();
        }
        if !placed {
            // Without a previous layout, or (never observed) if the repair could not finish
            // from the previous layout's state: start from scratch.
            placer = Placer::new(&topo, quota);
            if !placer.place() {
                return Err(CoreError::Layout(format!(
                    "internal error: no assignment found for {} nodes in {} zones with \
                     replication {} and {partitions} partitions although one exists; \
                     please report this with the node list",
                    topo.ids.len(),
                    topo.zone_nodes.len(),
                    topo.r
                )));
            }
        }
        placer.verify()?;

        let assignment = placer
            .members
            .iter()
            .map(|&m| topo.ids[m as usize])
            .collect();
        let layout = Layout {
            version: prev.map_or(1, |l| l.version.saturating_add(1)),
            partitions,
            replication: topo.r,
            nodes: sorted,
            assignment,
        };
        debug_assert!(layout.check_invariants().is_ok());
        Ok(layout)
    }

    /// The number of replica slots each active node should hold (its quota, invariants 2
    /// and 3 of the module documentation) in a layout computed without a previous layout
    /// (with one, rounding may differ by one slot per node, toward the previous counts).
    /// Nodes with capacity 0 are listed with 0. The values sum to
    /// `partitions * effective replication`.
    pub fn target_slots(
        nodes: &[NodeSpec],
        replication: u32,
        partitions: u32,
    ) -> Result<BTreeMap<NodeId, u32>, CoreError> {
        let (sorted, topo) = Topo::new(nodes, replication, partitions)?;
        let quota = topo.quotas(None)?;
        let mut out: BTreeMap<NodeId, u32> = sorted.iter().map(|n| (n.id, 0)).collect();
        for (i, q) in quota.into_iter().enumerate() {
            out.insert(topo.ids[i], q);
        }
        Ok(out)
    }

    /// The replicas of partition `p`, in preference order.
    pub fn replicas(&self, p: u32) -> &[NodeId] {
        let rf = self.replication as usize;
        let start = p as usize * rf;
        self.assignment.get(start..start + rf).unwrap_or(&[])
    }

    /// The replicas that hold block `id`.
    pub fn replicas_for_block(&self, id: &BlockId) -> &[NodeId] {
        self.replicas(id.partition(self.partitions))
    }

    /// Replica slots held by each node of [`Layout::nodes`] (0 for a node that holds none).
    /// Ids that appear in the assignment but not in `nodes` (only possible in a hand-built
    /// layout) are counted too.
    pub fn slots_per_node(&self) -> BTreeMap<NodeId, u32> {
        let mut out: BTreeMap<NodeId, u32> = self.nodes.iter().map(|n| (n.id, 0)).collect();
        for id in &self.assignment {
            *out.entry(*id).or_insert(0) += 1;
        }
        out
    }

    /// Load imbalance: the largest "slots per unit of capacity" over the nodes with
    /// capacity > 0, divided by the mean (total slots / total capacity). 1.0 is perfect
    /// balance; 0.0 when no node has capacity.
    pub fn max_over_mean_per_capacity(&self) -> f64 {
        let slots = self.slots_per_node();
        let total_cap: f64 = self.nodes.iter().map(|n| n.capacity as f64).sum();
        let total_slots: f64 = self
            .nodes
            .iter()
            .filter(|n| n.capacity > 0)
            .map(|n| f64::from(slots.get(&n.id).copied().unwrap_or(0)))
            .sum();
        if total_cap <= 0.0 || total_slots <= 0.0 {
            return 0.0;
        }
        let mean = total_slots / total_cap;
        let max = self
            .nodes
            .iter()
            .filter(|n| n.capacity > 0)
            .map(|n| f64::from(slots.get(&n.id).copied().unwrap_or(0)) / n.capacity as f64)
            .fold(0.0, f64::max);
        max / mean
    }

    /// Checks the structural invariants of a layout (for one loaded from storage or built
    /// by hand): the assignment has `partitions * replication` entries, every replica is a
    /// listed node with capacity > 0, the replicas of a partition are distinct nodes, and
    /// the zone rules hold: with at least `replication` zones the replicas of a partition
    /// are in distinct zones; otherwise a zone holding at most `partitions` slots has at
    /// most one replica of each partition and a zone holding at least `partitions` slots
    /// has at least one. Quotas are not checked.
    pub fn check_invariants(&self) -> Result<(), CoreError> {
        let r = self.replication as usize;
        let want = self.partitions as usize * r;
        let fail = |what: String| {
            Err(CoreError::Layout(format!(
                "layout v{}: {what}",
                self.version
            )))
        };
        if self.assignment.len() != want {
            return fail(format!(
                "{} assignment entries, expected partitions ({}) x replication ({}) = {want}",
                self.assignment.len(),
                self.partitions,
                self.replication
            ));
        }
        // Zone index of every active node; zones numbered in name order.
        let zone_names: BTreeSet<&str> = self
            .nodes
            .iter()
            .filter(|n| n.capacity > 0)
            .map(|n| n.zone.as_str())
            .collect();
        let zone_index: BTreeMap<&str, usize> = zone_names.iter().copied().zip(0..).collect();
        let zone_of: BTreeMap<NodeId, usize> = self
            .nodes
            .iter()
            .filter(|n| n.capacity > 0)
            .filter_map(|n| zone_index.get(n.zone.as_str()).map(|&z| (n.id, z)))
            .collect();
        let mut zones = Vec::with_capacity(self.assignment.len());
        let mut zone_slots = vec![0u64; zone_names.len()];
        for id in &self.assignment {
            let Some(&z) = zone_of.get(id) else {
                return fail(format!(
                    "node {id} holds replicas but is not a node with capacity > 0 in this \
                     layout"
                ));
            };
            zones.push(z);
            zone_slots[z] += 1;
        }
        let names: Vec<&str> = zone_names.into_iter().collect();
        let distinct_zones = names.len() >= r;
        let p64 = u64::from(self.partitions);
        let required: Vec<usize> = (0..names.len()).filter(|&z| zone_slots[z] >= p64).collect();
        for p in 0..self.partitions as usize {
            let reps = &self.assignment[p * r..(p + 1) * r];
            let zs = &zones[p * r..(p + 1) * r];
            for k in 0..r {
                if reps[..k].contains(&reps[k]) {
                    return fail(format!(
                        "partition {p} has two replicas on node {}",
                        reps[k]
                    ));
                }
                let z = zs[k];
                if zs[..k].contains(&z) && (distinct_zones || zone_slots[z] <= p64) {
                    return fail(format!(
                        "partition {p} has more than one replica in zone {:?}",
                        names[z]
                    ));
                }
            }
            if let Some(&z) = required.iter().find(|z| !zs.contains(z)) {
                return fail(format!(
                    "partition {p} has no replica in zone {:?}, which holds {} slots",
                    names[z], zone_slots[z]
                ));
            }
        }
        Ok(())
    }
}

/// The fraction of replica slots of `next` whose node changed since `prev`: for every
/// partition, the replicas of `next` that `prev` did not have (set difference, so a mere
/// reordering is no move), summed and divided by `next`'s slot count. Partitions `prev`
/// does not have count as wholly moved. 0.0 for an empty `next`.
pub fn moved_fraction(prev: &Layout, next: &Layout) -> f64 {
    let total = next.assignment.len();
    if total == 0 {
        return 0.0;
    }
    let moved: usize = (0..next.partitions)
        .map(|p| {
            let old = prev.replicas(p);
            next.replicas(p).iter().filter(|n| !old.contains(n)).count()
        })
        .sum();
    moved as f64 / total as f64
}

// ---------------------------------------------------------------------------------------
// Problem description
// ---------------------------------------------------------------------------------------

/// Marks an unassigned slot while placing.
const HOLE: u32 = u32::MAX;
/// Largest node count for the exchange graph (an N x N matrix) used by the repair and
/// improvement steps; larger clusters repair partition by partition and skip step 6.
const GRAPH_MAX_NODES: usize = 256;
/// Most negative cycles cancelled per computation.
const IMPROVE_MAX_ROUNDS: usize = 256;
/// Capacities are scaled down to at most this many bits so that the exact rational
/// arithmetic of the water-filling fits in u128 (relative error below 2^-40).
const CAP_BITS: u32 = 40;

/// The active nodes (capacity > 0), their zones, and the placement rules.
struct Topo {
    /// Active node ids, ascending; a node's index here is its internal index.
    ids: Vec<NodeId>,
    /// Scaled capacities (>= 1).
    caps: Vec<u128>,
    /// Zone index of each active node; zones are numbered in name order.
    zone_of: Vec<u32>,
    /// Active nodes of each zone, ascending.
    zone_nodes: Vec<Vec<u32>>,
    /// Effective replication.
    r: u32,
    /// Partitions.
    p: u32,
    /// At least as many zones as replicas: a zone holds at most P slots (one replica of
    /// each partition).
    zone_cap: bool,
}

impl Topo {
    /// Validates the inputs; returns all nodes sorted by id and the active topology.
    fn new(
        nodes: &[NodeSpec],
        replication: u32,
        partitions: u32,
    ) -> Result<(Vec<NodeSpec>, Topo), CoreError> {
        if nodes.is_empty() {
            return Err(CoreError::Layout(
                "no storage nodes: add at least one node with capacity > 0".into(),
            ));
        }
        if nodes.len() > MAX_NODES {
            return Err(CoreError::Layout(format!(
                "{} nodes is more than the supported maximum of {MAX_NODES}",
                nodes.len()
            )));
        }
        if replication == 0 {
            return Err(CoreError::Layout(
                "replication factor is 0: every block needs at least one replica; use 1 or \
                 more (3 is the default)"
                    .into(),
            ));
        }
        if replication > MAX_REPLICATION {
            return Err(CoreError::Layout(format!(
                "replication factor {replication} is above the supported maximum of \
                 {MAX_REPLICATION}"
            )));
        }
        if partitions == 0 {
            return Err(CoreError::Layout(format!(
                "partition count is 0: use a positive count (the default is \
                 {DEFAULT_PARTITIONS})"
            )));
        }
        if partitions > MAX_PARTITIONS {
            return Err(CoreError::Layout(format!(
                "{partitions} partitions is more than the supported maximum of \
                 {MAX_PARTITIONS}"
            )));
        }
        let mut sorted = nodes.to_vec();
        sorted.sort_by_key(|n| n.id);
        for pair in sorted.windows(2) {
            if pair[0].id == pair[1].id {
                return Err(CoreError::Layout(format!(
                    "node id {} appears more than once; every node needs a unique id",
                    pair[0].id
                )));
            }
        }
        if sorted.first().is_some_and(|n| n.id == 0) {
            return Err(CoreError::Layout(
                "node id 0 is reserved and never a valid node id; number nodes from 1".into(),
            ));
        }
        let active: Vec<&NodeSpec> = sorted.iter().filter(|n| n.capacity > 0).collect();
        if active.is_empty() {
            return Err(CoreError::Layout(format!(
                "all {} nodes have capacity 0 (draining), so no node can hold data; give at \
                 least one node a capacity > 0",
                sorted.len()
            )));
        }
        let max_cap = active.iter().map(|n| n.capacity).max().unwrap_or(1);
        let shift = (64 - max_cap.leading_zeros()).saturating_sub(CAP_BITS);
        let caps = active
            .iter()
            .map(|n| u128::from((n.capacity >> shift).max(1)))
            .collect();
        let zone_index: BTreeMap<&str, u32> = active
            .iter()
            .map(|n| n.zone.as_str())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .zip(0u32..)
            .collect();
        let zone_of: Vec<u32> = active
            .iter()
            .map(|n| zone_index.get(n.zone.as_str()).copied().unwrap_or(0))
            .collect();
        let nz = zone_index.len();
        let mut zone_nodes = vec![Vec::new(); nz];
        for (i, &z) in zone_of.iter().enumerate() {
            zone_nodes[z as usize].push(i as u32);
        }
        let r = replication.min(active.len() as u32);
        let topo = Topo {
            ids: active.iter().map(|n| n.id).collect(),
            caps,
            zone_of,
            zone_nodes,
            r,
            p: partitions,
            zone_cap: nz >= r as usize,
        };
        Ok((sorted, topo))
    }

    fn n(&self) -> usize {
        self.ids.len()
    }

    fn index_of(&self, id: NodeId) -> Option<u32> {
        self.ids.binary_search(&id).ok().map(|i| i as u32)
    }

    /// Slots each active node holds in `prev`.
    fn prev_counts(&self, prev: &Layout) -> Vec<u64> {
        let mut counts = vec![0u64; self.n()];
        for id in &prev.assignment {
            if let Some(i) = self.index_of(*id) {
                counts[i as usize] += 1;
            }
        }
        counts
    }

    /// Integer quotas per active node (see the module documentation, step 1).
    fn quotas(&self, prev_counts: Option<&[u64]>) -> Result<Vec<u32>, CoreError> {
        let (zone_share, node_share) = self.ideal_shares();
        let total = u128::from(self.r) * u128::from(self.p);
        let internal = |what: &str| {
            CoreError::Layout(format!(
                "internal error while computing quotas ({what}); please report this with the \
                 node list"
            ))
        };
        let prev_of = |i: u32| prev_counts.map_or(0, |c| u128::from(c[i as usize]));

        // Zone totals.
        let zone_prev: Vec<u128> = self
            .zone_nodes
            .iter()
            .map(|zn| zn.iter().map(|&i| prev_of(i)).sum())
            .collect();
        let floors: Vec<u128> = zone_share.iter().map(Frac::floor).collect();
        let floor_sum: u128 = floors.iter().sum();
        let extra = total
            .checked_sub(floor_sum)
            .ok_or_else(|| internal("zone floors exceed total"))?;
        let ups = round_up_set(&zone_share, &floors, &zone_prev, extra as usize, |z| {
            z as u64
        })
        .ok_or_else(|| internal("zone rounding"))?;
        let zone_total: Vec<u128> = floors
            .iter()
            .enumerate()
            .map(|(z, f)| f + u128::from(ups[z]))
            .collect();

        // Node quotas inside each zone.
        let mut quota = vec![0u32; self.n()];
        for (z, zn) in self.zone_nodes.iter().enumerate() {
            let shares: Vec<Frac> = zn.iter().map(|&i| node_share[i as usize]).collect();
            let floors: Vec<u128> = shares.iter().map(Frac::floor).collect();
            let fsum: u128 = floors.iter().sum();
            let extra = zone_total[z]
                .checked_sub(fsum)
                .ok_or_else(|| internal("node floors exceed zone total"))?;
            let prevs: Vec<u128> = zn.iter().map(|&i| prev_of(i)).collect();
            let ups = round_up_set(&shares, &floors, &prevs, extra as usize, |k| {
                self.ids[zn[k] as usize]
            })
            .ok_or_else(|| internal("node rounding"))?;
            for (k, &i) in zn.iter().enumerate() {
                let q = floors[k] + u128::from(ups[k]);
                if q > u128::from(self.p) {
                    return Err(internal("node quota above partitions"));
                }
                quota[i as usize] = q as u32;
            }
        }
        let sum: u128 = quota.iter().map(|&q| u128::from(q)).sum();
        if sum != total {
            return Err(internal("quotas do not sum to the slot count"));
        }
        Ok(quota)
    }

    /// Exact ideal shares (zone, node) by water-filling under the caps of invariant 3.
    fn ideal_shares(&self) -> (Vec<Frac>, Vec<Frac>) {
        let p = u128::from(self.p);
        let total = u128::from(self.r) * p;
        let up: Vec<u128> = self
            .zone_nodes
            .iter()
            .map(|zn| {
                if self.zone_cap {
                    p
                } else {
                    zn.len() as u128 * p
                }
            })
            .collect();
        self.waterfill(&up, total)
    }

    /// Spreads `budget` over the zones proportionally to capacity, with zone caps `up` and
    /// node cap P. Returns zone and node shares.
    fn waterfill(&self, up: &[u128], budget: u128) -> (Vec<Frac>, Vec<Frac>) {
        let p = u128::from(self.p);
        let nz = self.zone_nodes.len();
        let mut node_cap = vec![false; self.n()];
        let mut zone_cap = vec![false; nz];
        // (free budget, free capacity) for the current caps.
        let free = |node_cap: &[bool], zone_cap: &[bool]| {
            let (mut t, mut c) = (budget, 0u128);
            for z in 0..nz {
                if zone_cap[z] {
                    t = t.saturating_sub(up[z]);
                    continue;
                }
                for &i in &self.zone_nodes[z] {
                    if node_cap[i as usize] {
                        t = t.saturating_sub(p);
                    } else {
                        c += self.caps[i as usize];
                    }
                }
            }
            (t, c)
        };
        // Caps only ever get added: the water level only rises, so whatever exceeds its
        // cap at the current level exceeds it at the final level too.
        loop {
            let (t, c) = free(&node_cap, &zone_cap);
            if c == 0 {
                break;
            }
            let mut changed = false;
            for z in 0..nz {
                if zone_cap[z] {
                    continue;
                }
                // The zone's demand at level t/c, with every node capped at P:
                // sum_i min(P, t * cap_i / c), compared to the zone cap (times c).
                let demand: u128 = self.zone_nodes[z]
                    .iter()
                    .map(|&i| {
                        let i = i as usize;
                        if node_cap[i] {
                            p * c
                        } else {
                            (t * self.caps[i]).min(p * c)
                        }
                    })
                    .sum();
                if demand > up[z] * c {
                    zone_cap[z] = true;
                    changed = true;
                    continue;
                }
                for &i in &self.zone_nodes[z] {
                    let i = i as usize;
                    if !node_cap[i] && t * self.caps[i] > p * c {
                        node_cap[i] = true;
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        let (t, c) = free(&node_cap, &zone_cap);
        let mut zone = vec![Frac::int(0); nz];
        let mut node = vec![Frac::int(0); self.n()];
        for z in 0..nz {
            if zone_cap[z] {
                zone[z] = Frac::int(up[z]);
                self.fill_zone(z, up[z], &mut node);
                continue;
            }
            let (k, cz) = self.zone_free(z, &node_cap);
            zone[z] = if c == 0 {
                Frac::int(p * k)
            } else {
                Frac::new(p * k * c + t * cz, c)
            };
            for &i in &self.zone_nodes[z] {
                let i = i as usize;
                node[i] = if node_cap[i] || c == 0 {
                    Frac::int(p)
                } else {
                    Frac::new(t * self.caps[i], c)
                };
            }
        }
        (zone, node)
    }

    /// (capped node count, free capacity) of zone `z`.
    fn zone_free(&self, z: usize, node_cap: &[bool]) -> (u128, u128) {
        let mut k = 0u128;
        let mut cz = 0u128;
        for &i in &self.zone_nodes[z] {
            if node_cap[i as usize] {
                k += 1;
            } else {
                cz += self.caps[i as usize];
            }
        }
        (k, cz)
    }

    /// Spreads `budget` over the nodes of zone `z` proportionally to capacity with node
    /// cap P, writing into `node`.
    fn fill_zone(&self, z: usize, budget: u128, node: &mut [Frac]) {
        let p = u128::from(self.p);
        let zn = &self.zone_nodes[z];
        let mut capped = vec![false; zn.len()];
        loop {
            let k = capped.iter().filter(|&&b| b).count() as u128;
            let t = budget.saturating_sub(p * k);
            let c: u128 = zn
                .iter()
                .zip(&capped)
                .filter(|(_, &b)| !b)
                .map(|(&i, _)| self.caps[i as usize])
                .sum();
            let mut changed = false;
            if c > 0 {
                for (j, &i) in zn.iter().enumerate() {
                    if !capped[j] && t * self.caps[i as usize] > p * c {
                        capped[j] = true;
                        changed = true;
                    }
                }
            }
            if !changed {
                for (j, &i) in zn.iter().enumerate() {
                    node[i as usize] = if capped[j] || c == 0 {
                        Frac::int(p)
                    } else {
                        Frac::new(t * self.caps[i as usize], c)
                    };
                }
                return;
            }
        }
    }
}

/// A non-negative fraction `num / den` (den > 0).
#[derive(Debug, Clone, Copy)]
struct Frac {
    num: u128,
    den: u128,
}

impl Frac {
    fn new(num: u128, den: u128) -> Frac {
        Frac { num, den }
    }
    fn int(v: u128) -> Frac {
        Frac { num: v, den: 1 }
    }
    fn floor(&self) -> u128 {
        self.num / self.den
    }
    fn rem(&self) -> u128 {
        self.num % self.den
    }
    /// Compares the fractional parts.
    fn cmp_rem(&self, other: &Frac) -> Ordering {
        (self.rem() * other.den).cmp(&(other.rem() * self.den))
    }
}

/// Chooses which `extra` items are rounded up: items with a fractional part only; first
/// those whose previous count already reaches the rounded-up value ("sticky"), then the
/// largest remainder, then the smallest `tie` key. None if there are too few candidates.
fn round_up_set(
    shares: &[Frac],
    floors: &[u128],
    prev: &[u128],
    extra: usize,
    tie: impl Fn(usize) -> u64,
) -> Option<Vec<bool>> {
    let mut cand: Vec<usize> = (0..shares.len()).filter(|&k| shares[k].rem() > 0).collect();
    if cand.len() < extra {
        return None;
    }
    cand.sort_by(|&a, &b| {
        let sa = prev[a] > floors[a];
        let sb = prev[b] > floors[b];
        sb.cmp(&sa)
            .then_with(|| shares[b].cmp_rem(&shares[a]))
            .then_with(|| tie(a).cmp(&tie(b)))
    });
    let mut up = vec![false; shares.len()];
    for &k in cand.iter().take(extra) {
        up[k] = true;
    }
    Some(up)
}

/// splitmix64: a fixed, portable mixing function for deterministic tie-breaking.
fn mix(mut h: u64) -> u64 {
    h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The exchange graph between nodes: an edge x -> y stands for the slots held by y (or
/// the holes, for y = n) that x may take. Per node pair it counts those slots by whether x
/// and y are new to the slot's partition (1) or held it in the previous layout (0).
struct Graph {
    n: usize,
    /// `cells[x * (n + 1) + y][2 * x_new + y_new]`.
    cells: Vec<[u32; 4]>,
}

impl Graph {
    fn cell(&self, x: usize, y: usize) -> &[u32; 4] {
        &self.cells[x * (self.n + 1) + y]
    }

    /// Extra moves of a chain step "x takes a slot of y": none if y is new to that
    /// partition (undoing a fresh placement moves no data), one otherwise.
    fn chain_weight(&self, x: usize, y: usize) -> Option<u32> {
        let c = self.cell(x, y);
        if c[1] + c[3] > 0 {
            Some(0)
        } else if c[0] + c[2] > 0 {
            Some(1)
        } else {
            None
        }
    }

    /// Change in moved slots of a cycle step "x takes a slot of y": x_new - y_new.
    fn cycle_weight(&self, x: usize, y: usize) -> Option<i64> {
        let c = self.cell(x, y);
        if c[1] > 0 {
            Some(-1)
        } else if c[0] + c[3] > 0 {
            Some(0)
        } else if c[2] > 0 {
            Some(1)
        } else {
            None
        }
    }
}

// ---------------------------------------------------------------------------------------
// Placement
// ---------------------------------------------------------------------------------------

/// Per zone, what it means for a slot of one partition to go to a node of that zone.
#[derive(Debug, Clone, Copy, Default)]
struct ZoneVerdict {
    /// The zone rules allow it.
    ok: bool,
    /// It gives the partition an "everywhere" zone it lacks.
    mandatory: bool,
    /// The zone's remaining need (see [`Placer::choose`]).
    need: i64,
}

/// The working assignment (internal node indices, [`HOLE`] for an empty slot) plus the
/// counters the greedy and the repair need.
///
/// Zone rules, derived from the integer zone quotas `Q_z`: a zone with `Q_z <= P` holds
/// at most one replica of a partition (`single`), a zone with `Q_z >= P` holds at least
/// one replica of every partition (`everywhere`). With at least `r` zones every zone is
/// `single` (quotas cap zones at P), so replicas are in distinct zones; with fewer zones,
/// every partition spans as many zones as the quotas allow.
struct Placer<'a> {
    t: &'a Topo,
    r: usize,
    members: Vec<u32>,
    count: Vec<i64>,
    quota: Vec<i64>,
    zone_total: Vec<i64>,
    zone_quota: Vec<i64>,
    single: Vec<bool>,
    everywhere: Vec<bool>,
    n_everywhere: u32,
    /// Per `everywhere` zone, partitions with no replica in it (0 for other zones).
    missing: Vec<i64>,
    /// Scratch for [`Placer::choose`].
    verdicts: Vec<ZoneVerdict>,
    /// The previous layout's replicas (internal indices, [`HOLE`] for nodes gone),
    /// `orig_r` per partition; empty without a previous layout.
    orig: Vec<u32>,
    orig_r: usize,
    /// Per slot, a bit per zone whose nodes the zone rules let take the slot (valid for
    /// partitions not marked `dirty`; used only with at most 64 zones).
    slot_ok: Vec<u64>,
    dirty: Vec<bool>,
    /// The exchange graph, once built (kept up to date by [`Placer::apply_steps`]).
    graph: Option<Graph>,
}

impl<'a> Placer<'a> {
    /// An all-holes assignment.
    fn new(t: &'a Topo, quota: Vec<u32>) -> Placer<'a> {
        let r = t.r as usize;
        let nz = t.zone_nodes.len();
        let p = i64::from(t.p);
        let mut zone_quota = vec![0i64; nz];
        for (i, &q) in quota.iter().enumerate() {
            zone_quota[t.zone_of[i] as usize] += i64::from(q);
        }
        let single: Vec<bool> = zone_quota.iter().map(|&q| q <= p).collect();
        let everywhere: Vec<bool> = zone_quota.iter().map(|&q| q >= p).collect();
        let missing = everywhere.iter().map(|&e| if e { p } else { 0 }).collect();
        Placer {
            t,
            r,
            members: vec![HOLE; t.p as usize * r],
            count: vec![0; t.n()],
            quota: quota.into_iter().map(i64::from).collect(),
            zone_total: vec![0; nz],
            zone_quota,
            n_everywhere: everywhere.iter().filter(|&&e| e).count() as u32,
            single,
            everywhere,
            missing,
            verdicts: vec![ZoneVerdict::default(); nz],
            orig: Vec::new(),
            orig_r: 0,
            slot_ok: vec![0; t.p as usize * r],
            dirty: vec![true; t.p as usize],
            graph: None,
        }
    }

    fn part(&self, p: usize) -> &[u32] {
        &self.members[p * self.r..(p + 1) * self.r]
    }

    fn zone(&self, i: u32) -> u32 {
        self.t.zone_of[i as usize]
    }

    /// Replicas of partition `p` in zone `z`.
    fn zone_count(&self, p: usize, z: u32) -> usize {
        self.part(p)
            .iter()
            .filter(|&&m| m != HOLE && self.zone(m) == z)
            .count()
    }

    fn deficit(&self, i: u32) -> i64 {
        self.quota[i as usize] - self.count[i as usize]
    }

    /// Puts `x` (or a hole) into slot `s` of partition `p`, keeping the counters right.
    fn set(&mut self, p: usize, s: usize, x: u32) {
        let old = self.members[p * self.r + s];
        if old == x {
            return;
        }
        if old != HOLE {
            let z = self.zone(old);
            if self.everywhere[z as usize] && self.zone_count(p, z) == 1 {
                self.missing[z as usize] += 1;
            }
            self.count[old as usize] -= 1;
            self.zone_total[z as usize] -= 1;
        }
        self.members[p * self.r + s] = HOLE;
        if x != HOLE {
            let z = self.zone(x);
            if self.everywhere[z as usize] && self.zone_count(p, z) == 0 {
                self.missing[z as usize] -= 1;
            }
            self.count[x as usize] += 1;
            self.zone_total[z as usize] += 1;
        }
        self.members[p * self.r + s] = x;
        self.dirty[p] = true;
    }

    /// May node `x` take slot `s` of partition `p` (replacing what is there)? It must not
    /// hold another slot of `p`, and the zone rules must still be reachable.
    fn admits_at(&self, p: usize, s: usize, x: u32) -> bool {
        let part = self.part(p);
        let zx = self.zone(x);
        let mut same = false;
        let mut holes = 0u32;
        for (k, &m) in part.iter().enumerate() {
            if k == s {
                continue;
            }
            if m == HOLE {
                holes += 1;
                continue;
            }
            if m == x {
                return false;
            }
            same |= self.zone(m) == zx;
        }
        if same && self.single[zx as usize] {
            return false;
        }
        if self.n_everywhere == 0 {
            return true;
        }
        let mut present = u32::from(self.everywhere[zx as usize] && !same);
        for (k, &m) in part.iter().enumerate() {
            if k == s || m == HOLE || !self.everywhere[self.zone(m) as usize] {
                continue;
            }
            let z = self.zone(m);
            let first = !part[..k]
                .iter()
                .enumerate()
                .any(|(k2, &m2)| k2 != s && m2 != HOLE && self.zone(m2) == z);
            present += u32::from(first);
        }
        self.n_everywhere - present <= holes
    }

    /// [`Placer::admits_at`] through the per-slot zone masks (recomputed for partitions
    /// that changed since).
    fn slot_admits(&mut self, p: usize, s: usize, x: u32) -> bool {
        let nz = self.t.zone_nodes.len();
        if nz > 64 {
            return self.admits_at(p, s, x);
        }
        if self.dirty[p] {
            for k in 0..self.r {
                self.load_verdicts(p, k);
                let mask = self
                    .verdicts
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| v.ok)
                    .fold(0u64, |m, (z, _)| m | (1u64 << z));
                self.slot_ok[p * self.r + k] = mask;
            }
            self.dirty[p] = false;
        }
        (self.slot_ok[p * self.r + s] >> self.zone(x)) & 1 == 1 && !self.part(p).contains(&x)
    }

    /// Fills `self.verdicts` for slot `s` of partition `p`: per zone, whether the zone
    /// rules let a node of that zone take the slot.
    fn load_verdicts(&mut self, p: usize, s: usize) {
        let r = self.r;
        let part = &self.members[p * r..(p + 1) * r];
        let mut holes = 0u32;
        let mut present = 0u32;
        for (k, &m) in part.iter().enumerate() {
            if k == s {
                continue;
            }
            if m == HOLE {
                holes += 1;
                continue;
            }
            let z = self.t.zone_of[m as usize];
            if self.everywhere[z as usize]
                && !part[..k]
                    .iter()
                    .enumerate()
                    .any(|(k2, &m2)| k2 != s && m2 != HOLE && self.t.zone_of[m2 as usize] == z)
            {
                present += 1;
            }
        }
        // Zones without a replica in the other slots, then fix up the others.
        let missing_now = self.n_everywhere - present;
        for z in 0..self.verdicts.len() {
            let mandatory = self.everywhere[z];
            self.verdicts[z] = ZoneVerdict {
                ok: missing_now.saturating_sub(u32::from(mandatory)) <= holes,
                mandatory,
                need: self.zone_quota[z] - self.zone_total[z] - self.missing[z],
            };
        }
        for (k, &m) in part.iter().enumerate() {
            if k == s || m == HOLE {
                continue;
            }
            let z = self.t.zone_of[m as usize] as usize;
            let v = &mut self.verdicts[z];
            v.mandatory = false;
            v.ok = !self.single[z] && missing_now <= holes;
        }
    }

    /// The best node below quota (from `needy`) for slot `s` of partition `p`, by
    /// preference, larger first: an "everywhere" zone the partition still lacks; then the
    /// zone's remaining need beyond the partitions that must get a replica from it anyway
    /// (the Gale–Ryser rule at zone level); then the node's remaining need (Gale–Ryser at
    /// node level); then a fixed hash of (partition, node id), for diverse replica sets.
    fn choose(&mut self, p: usize, s: usize, needy: &[u32]) -> Option<u32> {
        self.load_verdicts(p, s);
        let part = &self.members[p * self.r..(p + 1) * self.r];
        let mut best: Option<(u32, (bool, i64, i64))> = None;
        let mut best_hash: Option<u64> = None;
        let hash = |x: u32| mix(((p as u64) << 32) ^ self.t.ids[x as usize].rotate_left(17));
        for &x in needy {
            let xi = x as usize;
            let d = self.quota[xi] - self.count[xi];
            if d <= 0 {
                continue;
            }
            let v = self.verdicts[self.t.zone_of[xi] as usize];
            if !v.ok || part.iter().enumerate().any(|(k, &m)| k != s && m == x) {
                continue;
            }
            let key = (v.mandatory, v.need, d);
            match best {
                Some((b, bk)) => match key.cmp(&bk) {
                    Ordering::Less => {}
                    Ordering::Greater => {
                        best = Some((x, key));
                        best_hash = None;
                    }
                    Ordering::Equal => {
                        let bh = *best_hash.get_or_insert_with(|| hash(b));
                        let h = hash(x);
                        if h > bh {
                            best = Some((x, key));
                            best_hash = Some(h);
                        }
                    }
                },
                None => best = Some((x, key)),
            }
        }
        best.map(|(x, _)| x)
    }

    fn needy(&self) -> Vec<u32> {
        (0..self.t.n() as u32)
            .filter(|&i| self.deficit(i) > 0)
            .collect()
    }

    /// Step 2: keep what is still valid of `prev`, at the same positions.
    fn seed(&mut self, prev: &Layout) {
        let r = self.r;
        let pr = prev.replication as usize;
        self.orig_r = pr;
        self.orig = prev
            .assignment
            .iter()
            .map(|id| self.t.index_of(*id).unwrap_or(HOLE))
            .collect();
        self.orig.resize(self.t.p as usize * pr, HOLE);
        for p in 0..self.t.p as usize {
            let old = prev.replicas(p as u32);
            let mut spill = Vec::new();
            for (s, id) in old.iter().enumerate() {
                let Some(i) = self.t.index_of(*id) else {
                    continue;
                };
                if self.part(p).contains(&i) || spill.contains(&i) {
                    continue;
                }
                if s < r {
                    self.set(p, s, i);
                } else {
                    spill.push(i);
                }
            }
            // Replication went down: replicas beyond the new length fill earlier holes.
            if pr > r {
                for i in spill {
                    if let Some(s) = self.part(p).iter().position(|&m| m == HOLE) {
                        self.set(p, s, i);
                    }
                }
            }
        }
        // Drop replicas that break the zone rules, most over-quota node first.
        for p in 0..self.t.p as usize {
            while let Some(s) = self.zone_victim(p) {
                self.set(p, s, HOLE);
            }
        }
    }

    /// A slot of partition `p` to empty because the zone rules are broken, if any.
    fn zone_victim(&self, p: usize) -> Option<usize> {
        let part = self.part(p);
        let pick = |ok: &dyn Fn(u32) -> bool| {
            (0..self.r)
                .filter(|&s| part[s] != HOLE && ok(part[s]))
                .max_by_key(|&s| (-self.deficit(part[s]), s))
        };
        // Two replicas in a zone that may hold only one.
        let doubled = |m: u32| {
            let z = self.zone(m);
            self.single[z as usize] && self.zone_count(p, z) > 1
        };
        if let Some(s) = pick(&doubled) {
            return Some(s);
        }
        // Too few holes left to reach every "everywhere" zone: free a replica whose zone
        // keeps another replica or is not required (one exists, as at most r zones are
        // "everywhere").
        let holes = part.iter().filter(|&&m| m == HOLE).count() as u32;
        let present = (0..self.t.zone_nodes.len() as u32)
            .filter(|&z| self.everywhere[z as usize] && self.zone_count(p, z) > 0)
            .count() as u32;
        if self.n_everywhere - present <= holes {
            return None;
        }
        let spare = |m: u32| {
            let z = self.zone(m);
            !self.everywhere[z as usize] || self.zone_count(p, z) > 1
        };
        pick(&spare)
    }

    /// Steps 3 to 6. False if some node could not reach its quota.
    fn place(&mut self) -> bool {
        self.fill_holes();
        self.transfer_excess();
        if !self.repair() {
            return false;
        }
        self.improve();
        true
    }

    /// Step 3.
    fn fill_holes(&mut self) {
        let mut needy = self.needy();
        for p in 0..self.t.p as usize {
            needy.retain(|&x| self.deficit(x) > 0);
            if needy.is_empty() {
                return;
            }
            for s in 0..self.r {
                if self.part(p)[s] != HOLE {
                    continue;
                }
                if let Some(x) = self.choose(p, s, &needy) {
                    self.set(p, s, x);
                }
            }
        }
    }

    /// Step 4.
    fn transfer_excess(&mut self) {
        let n = self.t.n() as u32;
        let np = self.t.p as usize;
        let mut needy = self.needy();
        for k in 0..n {
            if self.deficit(k) >= 0 {
                continue;
            }
            let start = (mix(self.t.ids[k as usize]) % np as u64) as usize;
            for off in 0..np {
                if self.deficit(k) >= 0 {
                    break;
                }
                let p = (start + off) % np;
                let Some(s) = self.part(p).iter().position(|&m| m == k) else {
                    continue;
                };
                needy.retain(|&x| self.deficit(x) > 0);
                if needy.is_empty() {
                    return;
                }
                if let Some(x) = self.choose(p, s, &needy) {
                    self.set(p, s, x);
                }
            }
        }
    }

    /// Step 5: augmenting chains until every node is at quota. With at most
    /// [`GRAPH_MAX_NODES`] nodes the chains are searched on the exchange graph
    /// ([`Placer::augment_graph`]), otherwise partition by partition
    /// ([`Placer::augment`]); the latter is also the fallback if the graph's chain cannot
    /// be laid out in distinct partitions.
    fn repair(&mut self) -> bool {
        let mut graph: Option<Graph> = None;
        loop {
            let Some(j) = (0..self.t.n() as u32).find(|&i| self.deficit(i) > 0) else {
                self.graph = graph;
                return true;
            };
            if self.t.n() <= GRAPH_MAX_NODES {
                let mut g = match graph.take() {
                    Some(g) => g,
                    None => self.build_graph(),
                };
                if self.augment_graph(j, &mut g) {
                    graph = Some(g);
                    continue;
                }
            }
            // The graph (if any) is stale after a partition-by-partition chain.
            if !self.augment(j) {
                return false;
            }
        }
    }

    /// Was node `y` a replica of partition `p` in the previous layout?
    fn was_there(&self, p: usize, y: u32) -> bool {
        self.orig_r > 0 && self.orig[p * self.orig_r..(p + 1) * self.orig_r].contains(&y)
    }

    /// Finds the cheapest chain of moves that gives `j` one more slot and takes one from a
    /// hole or an over-quota node, and applies it. A step "x takes slot s of partition p
    /// from y" costs one extra move if y held p in the previous layout and nothing if y
    /// was placed there by this computation (undoing a fresh placement moves no data), so
    /// the search is a 0-1 breadth-first search (Dijkstra with weights 0 and 1).
    fn augment(&mut self, j: u32) -> bool {
        let n = self.t.n();
        let np = self.t.p as usize;
        // parent[y] = (x, p, s): x takes slot s of partition p from y.
        let mut parent: Vec<Option<(u32, usize, usize)>> = vec![None; n];
        let mut dist = vec![u32::MAX; n];
        let mut done = vec![false; n];
        dist[j as usize] = 0;
        let mut queue = VecDeque::from([j]);
        while let Some(x) = queue.pop_front() {
            if std::mem::replace(&mut done[x as usize], true) {
                continue;
            }
            // Partitions already changed by the chain that leads to x.
            let mut used = Vec::new();
            let mut cur = x;
            while let Some((from, p, _)) = parent[cur as usize] {
                used.push(p);
                cur = from;
            }
            let start = (mix(self.t.ids[x as usize] ^ 0x5bd1) % np as u64) as usize;
            for off in 0..np {
                let p = (start + off) % np;
                if self.part(p).contains(&x) || used.contains(&p) {
                    continue;
                }
                for s in 0..self.r {
                    let y = self.part(p)[s];
                    if y != HOLE && done[y as usize] {
                        continue;
                    }
                    if !self.slot_admits(p, s, x) {
                        continue;
                    }
                    if y == HOLE || self.deficit(y) < 0 {
                        // Nodes leave the queue in order of cost, so this chain is a
                        // cheapest one. Apply it back to j.
                        let (mut node, mut p, mut s) = (x, p, s);
                        loop {
                            self.set(p, s, node);
                            match parent[node as usize] {
                                Some((from, pp, ss)) => (node, p, s) = (from, pp, ss),
                                None => return true,
                            }
                        }
                    }
                    let w = u32::from(self.was_there(p, y));
                    let d = dist[x as usize] + w;
                    if d < dist[y as usize] {
                        dist[y as usize] = d;
                        parent[y as usize] = Some((x, p, s));
                        if w == 0 {
                            queue.push_front(y);
                        } else {
                            queue.push_back(y);
                        }
                    }
                }
            }
        }
        false
    }

    /// Moved slots so far: replicas not in the previous layout's set of their partition.
    fn moved(&self) -> usize {
        (0..self.t.p as usize)
            .map(|p| {
                self.part(p)
                    .iter()
                    .filter(|&&m| m != HOLE && !self.was_there(p, m))
                    .count()
            })
            .sum()
    }

    /// The per-node lower bound on moved slots: each node gains at least the slots its
    /// count grew by.
    fn moved_lower_bound(&self) -> usize {
        let mut before = vec![0i64; self.t.n()];
        for &m in &self.orig {
            if m != HOLE {
                before[m as usize] += 1;
            }
        }
        before
            .iter()
            .zip(&self.count)
            .map(|(&b, &c)| (c - b).max(0) as usize)
            .sum()
    }

    /// Step 6: cancels negative cycles of the exchange graph, like the min-cost-flow
    /// phase of Garage's algorithm. A cycle x1 -> x2 -> ... -> x1 ("x1 takes a slot of
    /// x2, ...") keeps every node's count and the zone rules; its weight is the change in
    /// moved slots, so a negative cycle gives a strictly better layout. Greedy and
    /// cheapest chains are already optimal in the common cases (one node joins or
    /// leaves), so this runs only when the result exceeds the per-node lower bound, for at
    /// most [`GRAPH_MAX_NODES`] nodes and [`IMPROVE_MAX_ROUNDS`] cycles.
    fn improve(&mut self) {
        let n = self.t.n();
        if self.orig_r == 0 || n > GRAPH_MAX_NODES || self.moved() <= self.moved_lower_bound() {
            return;
        }
        let mut g = match self.graph.take() {
            Some(g) => g,
            None => self.build_graph(),
        };
        for _ in 0..IMPROVE_MAX_ROUNDS {
            let Some(cycle) = self.negative_cycle(&g) else {
                break;
            };
            self.apply_steps(&cycle, &mut g);
        }
        self.graph = Some(g);
    }

    /// The exchange graph of the current assignment.
    fn build_graph(&mut self) -> Graph {
        let n = self.t.n();
        let mut g = Graph {
            n,
            cells: vec![[0; 4]; n * (n + 1)],
        };
        for p in 0..self.t.p as usize {
            self.graph_edges(p, &mut g, true);
        }
        g
    }

    /// Adds (or removes) partition `p`'s edges to the exchange graph.
    fn graph_edges(&mut self, p: usize, g: &mut Graph, add: bool) {
        let n = self.t.n();
        for s in 0..self.r {
            let y = self.part(p)[s];
            let (yi, wy) = if y == HOLE {
                (n, 1)
            } else {
                (y as usize, usize::from(!self.was_there(p, y)))
            };
            self.load_verdicts(p, s);
            for x in 0..n as u32 {
                if !self.verdicts[self.zone(x) as usize].ok || self.part(p).contains(&x) {
                    continue;
                }
                let wx = usize::from(!self.was_there(p, x));
                let c = &mut g.cells[x as usize * (n + 1) + yi][2 * wx + wy];
                if add {
                    *c += 1;
                } else {
                    *c = c.saturating_sub(1);
                }
            }
        }
    }

    /// Applies steps (x, p, s) = "x takes slot s of partition p" in distinct partitions,
    /// keeping the exchange graph up to date.
    fn apply_steps(&mut self, steps: &[(u32, usize, usize)], g: &mut Graph) {
        for &(_, p, _) in steps {
            self.graph_edges(p, g, false);
        }
        for &(x, p, s) in steps {
            self.set(p, s, x);
        }
        for &(_, p, _) in steps {
            self.graph_edges(p, g, true);
        }
    }

    /// A slot that `x` may take from `y` (a hole when `y` is `n`) outside the partitions
    /// `used`, whose (x new to p, y new to p) flags satisfy `want`.
    fn find_slot(
        &self,
        x: u32,
        y: usize,
        want: impl Fn(usize, usize) -> bool,
        used: &[usize],
    ) -> Option<(usize, usize)> {
        let target = if y == self.t.n() { HOLE } else { y as u32 };
        (0..self.t.p as usize)
            .filter(|p| !used.contains(p))
            .find_map(|p| {
                let s = self.part(p).iter().position(|&m| m == target)?;
                let wx = usize::from(!self.was_there(p, x));
                let wy = if target == HOLE {
                    1
                } else {
                    usize::from(!self.was_there(p, target))
                };
                (want(wx, wy) && self.admits_at(p, s, x)).then_some((p, s))
            })
    }

    /// The cheapest chain for `j` on the exchange graph (0-1 BFS, as in
    /// [`Placer::augment`]), laid out in distinct partitions and applied. False if no
    /// chain exists or it cannot be laid out.
    fn augment_graph(&mut self, j: u32, g: &mut Graph) -> bool {
        let n = self.t.n();
        let mut parent = vec![usize::MAX; n];
        let mut dist = vec![u32::MAX; n];
        let mut done = vec![false; n];
        dist[j as usize] = 0;
        let mut queue = VecDeque::from([j as usize]);
        while let Some(x) = queue.pop_front() {
            if std::mem::replace(&mut done[x], true) {
                continue;
            }
            for y in 0..=n {
                let Some(w) = g.chain_weight(x, y) else {
                    continue;
                };
                if y == n || self.deficit(y as u32) < 0 {
                    // Nodes leave the queue in order of cost: a cheapest chain.
                    let mut pairs = vec![(x, y)];
                    let mut v = x;
                    while v != j as usize {
                        let u = parent[v];
                        pairs.push((u, v));
                        v = u;
                    }
                    let mut steps: Vec<(u32, usize, usize)> = Vec::with_capacity(pairs.len());
                    for (u, v) in pairs {
                        let used: Vec<usize> = steps.iter().map(|&(_, p, _)| p).collect();
                        let slot = self
                            .find_slot(u as u32, v, |_, wy| wy == 1, &used)
                            .or_else(|| self.find_slot(u as u32, v, |_, _| true, &used));
                        let Some((p, s)) = slot else {
                            return false;
                        };
                        steps.push((u as u32, p, s));
                    }
                    self.apply_steps(&steps, g);
                    return true;
                }
                if done[y] {
                    continue;
                }
                let d = dist[x] + w;
                if d < dist[y] {
                    dist[y] = d;
                    parent[y] = x;
                    if w == 0 {
                        queue.push_front(y);
                    } else {
                        queue.push_back(y);
                    }
                }
            }
        }
        false
    }

    /// A negative cycle of the exchange graph, as steps (x, p, s): x takes slot s of
    /// partition p, in distinct partitions. Bellman-Ford over the nodes on the cheapest
    /// edge of every pair; each edge's slot is then looked up.
    fn negative_cycle(&self, g: &Graph) -> Option<Vec<(u32, usize, usize)>> {
        let n = self.t.n();
        let mut dist = vec![0i64; n];
        let mut parent = vec![usize::MAX; n];
        let mut last = None;
        for _ in 0..n {
            last = None;
            for x in 0..n {
                for y in 0..n {
                    if let Some(w) = g.cycle_weight(x, y) {
                        if dist[x] + w < dist[y] {
                            dist[y] = dist[x] + w;
                            parent[y] = x;
                            last = Some(y);
                        }
                    }
                }
            }
            last?;
        }
        // Still relaxing after n rounds: walk back n steps to land on the cycle.
        let mut v = last?;
        for _ in 0..n {
            v = *parent.get(v)?;
        }
        let start = v;
        let mut pairs = Vec::new();
        loop {
            let u = *parent.get(v)?;
            pairs.push((u, v));
            v = u;
            if v == start || pairs.len() > n {
                break;
            }
        }
        if v != start {
            return None;
        }
        let mut total = 0i64;
        let mut cycle: Vec<(u32, usize, usize)> = Vec::with_capacity(pairs.len());
        for (u, v) in pairs {
            let w = g.cycle_weight(u, v)?;
            total += w;
            let used: Vec<usize> = cycle.iter().map(|&(_, p, _)| p).collect();
            let want = |wx: usize, wy: usize| wx as i64 - wy as i64 == w;
            let (p, s) = self.find_slot(u as u32, v, want, &used)?;
            cycle.push((u as u32, p, s));
        }
        (total < 0).then_some(cycle)
    }

    /// Final check of invariants 1, 2 and 4 on the working state.
    fn verify(&self) -> Result<(), CoreError> {
        let bad = |what: String| {
            CoreError::Layout(format!(
                "internal error: computed layout breaks an invariant ({what}); please report \
                 this with the node list"
            ))
        };
        let nz = self.t.zone_nodes.len();
        let mut count = vec![0i64; self.t.n()];
        for p in 0..self.t.p as usize {
            let part = self.part(p);
            for (k, &m) in part.iter().enumerate() {
                if m == HOLE {
                    return Err(bad(format!("partition {p} has an empty slot")));
                }
                if part[..k].contains(&m) {
                    return Err(bad(format!("partition {p} has a node twice")));
                }
                count[m as usize] += 1;
            }
            for z in 0..nz {
                let c = self.zone_count(p, z as u32);
                if (self.single[z] && c > 1) || (self.everywhere[z] && c == 0) {
                    return Err(bad(format!("partition {p} breaks the zone rules")));
                }
            }
        }
        if count != self.quota {
            return Err(bad("a node is not at its quota".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: NodeId, zone: &str, capacity: u64) -> NodeSpec {
        NodeSpec {
            id,
            zone: zone.into(),
            capacity,
        }
    }

    fn equal(n: u64, zones: u64) -> Vec<NodeSpec> {
        (1..=n)
            .map(|i| node(i, &format!("z{}", i % zones), 1000))
            .collect()
    }

    fn err(nodes: &[NodeSpec], rf: u32, p: u32) -> String {
        match Layout::compute(None, nodes, rf, p) {
            Err(CoreError::Layout(m)) => m,
            other => panic!("expected a layout error, got {other:?}"),
        }
    }

    #[test]
    fn rejects_bad_input_with_clear_messages() {
        assert!(err(&[], 3, 16).contains("no storage nodes"));
        assert!(err(&[node(1, "a", 0), node(2, "b", 0)], 3, 16).contains("capacity 0"));
        assert!(err(&equal(3, 1), 0, 16).contains("replication factor is 0"));
        assert!(err(&equal(3, 1), 3, 0).contains("partition count is 0"));
        assert!(err(&[node(1, "a", 1), node(1, "b", 1)], 3, 16).contains("more than once"));
        assert!(err(&[node(0, "a", 1)], 1, 16).contains("reserved"));
        assert!(err(&equal(3, 1), MAX_REPLICATION + 1, 16).contains("maximum"));
        let prev = Layout::compute(None, &equal(3, 1), 3, 16).expect("layout");
        match Layout::compute(Some(&prev), &equal(3, 1), 3, 32) {
            Err(CoreError::Layout(m)) => assert!(m.contains("fixed"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn small_cluster_replication_is_capped_by_nodes() {
        let l = Layout::compute(None, &equal(2, 1), 3, 64).expect("layout");
        assert_eq!(l.replication, 2);
        assert_eq!(l.version, 1);
        for p in 0..64 {
            let r = l.replicas(p);
            assert_eq!(r.len(), 2);
            assert_ne!(r[0], r[1]);
        }
        let one = Layout::compute(None, &[node(7, "a", 5), node(8, "a", 0)], 3, 8).expect("one");
        assert_eq!(one.replication, 1);
        assert!(one.assignment.iter().all(|&n| n == 7));
        assert_eq!(one.nodes.len(), 2);
        assert_eq!(one.slots_per_node().get(&8), Some(&0));
    }

    #[test]
    fn equal_nodes_are_balanced_exactly() {
        let nodes = equal(8, 1);
        let l = Layout::compute(None, &nodes, 3, 4096).expect("layout");
        let slots = l.slots_per_node();
        assert!(slots.values().all(|&s| s == 1536), "{slots:?}");
        assert!((l.max_over_mean_per_capacity() - 1.0).abs() < 1e-9);
        l.check_invariants().expect("invariants");
    }

    #[test]
    fn quotas_are_capped_per_zone_and_redistributed() {
        // Zone a has most of the capacity but may hold at most one replica per partition.
        let nodes = vec![
            node(1, "a", 100),
            node(2, "a", 100),
            node(3, "b", 10),
            node(4, "c", 10),
            node(5, "c", 30),
        ];
        let q = Layout::target_slots(&nodes, 3, 1000).expect("quotas");
        // Three zones, three replicas: every zone holds exactly one replica per partition.
        assert_eq!(q[&1] + q[&2], 1000);
        assert_eq!(q[&3], 1000);
        assert_eq!(q[&4] + q[&5], 1000);
        assert_eq!((q[&4], q[&5]), (250, 750));
        // Four zones: zones a and then c are capped at P; b and d share the rest.
        let mut four = nodes.clone();
        four.push(node(6, "d", 10));
        let q = Layout::target_slots(&four, 3, 1000).expect("quotas");
        assert_eq!(q[&1] + q[&2], 1000);
        assert_eq!((q[&3], q[&4], q[&5], q[&6]), (500, 250, 750, 500));
        let l = Layout::compute(None, &four, 3, 1000).expect("layout");
        assert_eq!(l.slots_per_node(), q);
    }

    #[test]
    fn node_cap_of_one_replica_per_partition() {
        // One huge node cannot hold more than one replica of each partition.
        let nodes = vec![
            node(1, "a", 1000),
            node(2, "a", 1),
            node(3, "a", 1),
            node(4, "a", 2),
        ];
        let q = Layout::target_slots(&nodes, 2, 100).expect("quotas");
        assert_eq!(q[&1], 100);
        assert_eq!(q[&2] + q[&3] + q[&4], 100);
        assert_eq!((q[&2], q[&3], q[&4]), (25, 25, 50));
        let l = Layout::compute(None, &nodes, 2, 100).expect("layout");
        assert_eq!(l.slots_per_node(), q);
    }

    #[test]
    fn fewer_zones_than_replicas_spread_over_every_zone_that_can_take_it() {
        // Two zones, three replicas, balanced: every partition has replicas in both.
        let nodes: Vec<NodeSpec> = (1..=5)
            .map(|i| node(i, if i <= 3 { "a" } else { "b" }, 10))
            .collect();
        let l = Layout::compute(None, &nodes, 3, 512).expect("layout");
        for p in 0..512 {
            let zones: BTreeSet<&str> = l
                .replicas(p)
                .iter()
                .map(|id| if *id <= 3 { "a" } else { "b" })
                .collect();
            assert_eq!(zones.len(), 2, "partition {p}");
        }
        l.check_invariants().expect("invariants");

        // A lone small node in a new zone gets its capacity share, not every partition:
        // its zone is in as many partitions as its quota allows, at most once in each.
        let one_zone: Vec<NodeSpec> = (1..=5).map(|i| node(i, "a", 10)).collect();
        let l = Layout::compute(None, &one_zone, 3, 512).expect("layout");
        let mut more = one_zone.clone();
        more.push(node(6, "b", 1));
        let next = Layout::compute(Some(&l), &more, 3, 512).expect("next");
        let q = Layout::target_slots(&more, 3, 512).expect("quotas");
        assert_eq!(q[&6], 30); // 3 * 512 / 51 = 30.1
        assert_eq!(next.slots_per_node(), q);
        next.check_invariants().expect("invariants");
        assert!(moved_fraction(&l, &next) < 0.025);
    }

    #[test]
    fn recompute_with_same_input_moves_nothing() {
        let nodes: Vec<NodeSpec> = (1..=10)
            .map(|i| node(i, &format!("z{}", i % 4), 1000 + 100 * i))
            .collect();
        let a = Layout::compute(None, &nodes, 3, 1024).expect("a");
        let b = Layout::compute(Some(&a), &nodes, 3, 1024).expect("b");
        assert_eq!(b.version, 2);
        assert_eq!(a.assignment, b.assignment);
        assert_eq!(moved_fraction(&a, &b), 0.0);
    }

    #[test]
    fn input_order_does_not_matter() {
        let nodes: Vec<NodeSpec> = (1..=9)
            .map(|i| node(i, &format!("z{}", i % 3), 10 * i))
            .collect();
        let mut rev = nodes.clone();
        rev.reverse();
        let a = Layout::compute(None, &nodes, 3, 256).expect("a");
        let b = Layout::compute(None, &rev, 3, 256).expect("b");
        assert_eq!(a, b);
    }

    #[test]
    fn replication_change_keeps_existing_replicas() {
        let nodes = equal(6, 3);
        let two = Layout::compute(None, &nodes, 2, 256).expect("two");
        let three = Layout::compute(Some(&two), &nodes, 3, 256).expect("three");
        for p in 0..256 {
            for n in two.replicas(p) {
                assert!(three.replicas(p).contains(n));
            }
        }
        let back = Layout::compute(Some(&three), &nodes, 2, 256).expect("back");
        assert_eq!(back.replication, 2);
        back.check_invariants().expect("invariants");
        // Going down only drops replicas.
        assert_eq!(moved_fraction(&three, &back), 0.0);
    }

    #[test]
    fn check_invariants_rejects_broken_layouts() {
        let nodes = vec![
            node(1, "a", 1),
            node(2, "b", 1),
            node(3, "c", 1),
            node(4, "c", 0),
        ];
        let good = Layout {
            version: 1,
            partitions: 2,
            replication: 3,
            nodes: nodes.clone(),
            assignment: vec![1, 2, 3, 3, 1, 2],
        };
        good.check_invariants().expect("good");
        let bad = |assignment: Vec<NodeId>| {
            let l = Layout {
                assignment,
                ..good.clone()
            };
            match l.check_invariants() {
                Err(CoreError::Layout(m)) => m,
                Ok(()) => panic!("accepted {:?}", l.assignment),
                Err(e) => panic!("{e:?}"),
            }
        };
        assert!(bad(vec![1, 2, 3, 3, 1]).contains("assignment entries"));
        assert!(bad(vec![1, 1, 3, 3, 1, 2]).contains("two replicas on node 1"));
        assert!(bad(vec![1, 2, 4, 3, 1, 2]).contains("node 4"));
        assert!(bad(vec![1, 2, 9, 3, 1, 2]).contains("node 9"));
        // Zone spread: with three zones, two replicas in zone c are not allowed.
        let mut more = nodes.clone();
        more.push(node(5, "c", 1));
        let l = Layout {
            nodes: more,
            assignment: vec![1, 3, 5, 3, 1, 2],
            ..good.clone()
        };
        assert!(l.check_invariants().is_err());
    }

    #[test]
    fn huge_and_tiny_capacities_do_not_overflow() {
        let nodes = vec![
            node(1, "a", u64::MAX),
            node(2, "b", u64::MAX / 3),
            node(3, "c", 1),
            node(4, "a", u64::MAX - 1),
            node(5, "b", 1 << 40),
        ];
        let l = Layout::compute(None, &nodes, 3, 4096).expect("layout");
        l.check_invariants().expect("invariants");
        // Three zones, three replicas: every zone holds one replica of each partition,
        // even zone c with its tiny node.
        assert_eq!(l.slots_per_node()[&3], 4096);
        let q = Layout::target_slots(&nodes, 3, 4096).expect("quotas");
        assert_eq!(q.values().sum::<u32>(), 3 * 4096);
    }

    #[test]
    fn replica_sets_are_diverse() {
        // Many distinct replica sets spread a failed node's data over many peers, so
        // repair reads from many sources in parallel.
        let l = Layout::compute(None, &equal(32, 1), 3, 4096).expect("layout");
        let sets: BTreeSet<Vec<NodeId>> = (0..4096)
            .map(|p| {
                let mut s = l.replicas(p).to_vec();
                s.sort_unstable();
                s
            })
            .collect();
        assert!(
            sets.len() > 2000,
            "only {} distinct replica sets",
            sets.len()
        );
        // Every node shares partitions with every other node.
        let peers: BTreeSet<(NodeId, NodeId)> = sets
            .iter()
            .flat_map(|s| {
                s.iter()
                    .flat_map(|&a| s.iter().map(move |&b| (a, b)))
                    .collect::<Vec<_>>()
            })
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(peers.len(), 32 * 31);
    }

    #[test]
    fn moved_fraction_counts_set_difference() {
        let mk = |a: Vec<NodeId>| Layout {
            version: 1,
            partitions: 2,
            replication: 2,
            nodes: vec![],
            assignment: a,
        };
        let a = mk(vec![1, 2, 3, 4]);
        assert_eq!(moved_fraction(&a, &mk(vec![2, 1, 4, 3])), 0.0);
        assert_eq!(moved_fraction(&a, &mk(vec![1, 5, 3, 4])), 0.25);
        assert_eq!(moved_fraction(&a, &mk(vec![5, 6, 7, 8])), 1.0);
    }
}
