//! Property tests of the partition layout against naive oracles.
//!
//! The oracles here are written independently of `layout.rs`: floating-point bisection for
//! the ideal shares, plain set checks for distinctness and zone spread, and a per-node
//! lower bound on movement.

use proptest::prelude::*;
use ringfs_core::layout::{moved_fraction, Layout, NodeSpec};
use ringfs_core::NodeId;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

fn node(id: NodeId, zone: usize, capacity: u64) -> NodeSpec {
    NodeSpec {
        id,
        zone: format!("zone-{zone}"),
        capacity,
    }
}

// ------------------------------------------------------------------------------------
// Oracles
// ------------------------------------------------------------------------------------

/// Ideal (real-valued) slot share of every active node, by the rules of the design:
/// proportional to capacity; at most P per node; with Z >= r zones also at most P per
/// zone. Solved by bisection on the water level: zone z gets
/// min(zone cap, sum_i min(P, level * cap_i)).
fn oracle_ideal(nodes: &[NodeSpec], rf: u32, partitions: u32) -> BTreeMap<NodeId, f64> {
    let active: Vec<&NodeSpec> = nodes.iter().filter(|n| n.capacity > 0).collect();
    let r = (rf as usize).min(active.len()) as f64;
    let p = f64::from(partitions);
    let mut zones: BTreeMap<&str, Vec<&NodeSpec>> = BTreeMap::new();
    for n in &active {
        zones.entry(n.zone.as_str()).or_default().push(n);
    }
    let zone_cap = if zones.len() as f64 >= r {
        p
    } else {
        f64::INFINITY
    };
    let demand = |members: &[&NodeSpec], level: f64| -> f64 {
        members
            .iter()
            .map(|n| (level * n.capacity as f64).min(p))
            .sum()
    };
    let total =
        |level: f64| -> f64 { zones.values().map(|m| demand(m, level).min(zone_cap)).sum() };
    let solve = |f: &dyn Fn(f64) -> f64, target: f64| -> f64 {
        let (mut lo, mut hi) = (0.0f64, 1.0f64);
        while f(hi) < target {
            hi *= 2.0;
        }
        for _ in 0..200 {
            let mid = (lo + hi) / 2.0;
            if f(mid) < target {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        hi
    };
    let level = solve(&total, r * p);
    let mut out = BTreeMap::new();
    for members in zones.values() {
        let zone_share = demand(members, level).min(zone_cap);
        let mu = solve(&|l| demand(members, l), zone_share);
        for n in members {
            out.insert(n.id, (mu * n.capacity as f64).min(p));
        }
    }
    out
}

/// True when no cap of the design binds: every share is plainly proportional.
fn unbent(nodes: &[NodeSpec], rf: u32, partitions: u32) -> bool {
    let active: Vec<&NodeSpec> = nodes.iter().filter(|n| n.capacity > 0).collect();
    let ideal = oracle_ideal(nodes, rf, partitions);
    let r = (rf as usize).min(active.len()) as f64;
    let cap: f64 = active.iter().map(|n| n.capacity as f64).sum();
    active.iter().all(|n| {
        let prop = r * f64::from(partitions) * n.capacity as f64 / cap;
        (ideal[&n.id] - prop).abs() < 1e-6
    })
}

/// Distinct nodes per partition, only active nodes, and zone spread: with Z >= r zones,
/// r distinct zones per partition; with fewer, maximal spread for the zone totals: a zone
/// with at most P slots is never twice in a partition, a zone with at least P slots is in
/// every partition.
fn check_structure(l: &Layout, nodes: &[NodeSpec]) -> Result<(), TestCaseError> {
    let zone: BTreeMap<NodeId, &str> = nodes
        .iter()
        .filter(|n| n.capacity > 0)
        .map(|n| (n.id, n.zone.as_str()))
        .collect();
    let nzones = zone.values().collect::<BTreeSet<_>>().len();
    let r = l.replication as usize;
    prop_assert_eq!(r, zone.len().min(r));
    prop_assert_eq!(l.assignment.len(), l.partitions as usize * r);
    let mut zone_slots: BTreeMap<&str, u32> = BTreeMap::new();
    for id in &l.assignment {
        let z = zone.get(id);
        prop_assert!(z.is_some(), "inactive node {} holds replicas", id);
        *zone_slots.entry(z.copied().unwrap_or("")).or_default() += 1;
    }
    for p in 0..l.partitions {
        let reps = l.replicas(p);
        let distinct: BTreeSet<_> = reps.iter().collect();
        prop_assert_eq!(
            distinct.len(),
            r,
            "partition {} has a node twice: {:?}",
            p,
            reps
        );
        let mut per_zone: BTreeMap<&str, u32> = BTreeMap::new();
        for id in reps {
            *per_zone
                .entry(zone.get(id).copied().unwrap_or(""))
                .or_default() += 1;
        }
        if nzones >= r {
            prop_assert_eq!(per_zone.len(), r, "partition {} zones {:?}", p, per_zone);
        }
        for (z, &slots) in &zone_slots {
            let c = per_zone.get(z).copied().unwrap_or(0);
            if slots <= l.partitions {
                prop_assert!(c <= 1, "partition {} has {} replicas in {}", p, c, z);
            }
            if slots >= l.partitions {
                prop_assert!(c >= 1, "partition {} lacks zone {}", p, z);
            }
        }
    }
    Ok(())
}

/// Every node within 1 slot of its ideal share.
fn check_shares(l: &Layout, nodes: &[NodeSpec], rf: u32) -> Result<(), TestCaseError> {
    let ideal = oracle_ideal(nodes, rf, l.partitions);
    let slots = l.slots_per_node();
    for n in nodes {
        let got = f64::from(slots.get(&n.id).copied().unwrap_or(0));
        let want = ideal.get(&n.id).copied().unwrap_or(0.0);
        prop_assert!(
            (got - want).abs() < 1.0 + 1e-6,
            "node {} holds {} slots, ideal {}",
            n.id,
            got,
            want
        );
    }
    Ok(())
}

/// (moved slots, lower bound): every node must gain at least (new count - old count)
/// slots, and each gained slot is a moved slot.
fn movement(prev: &Layout, next: &Layout) -> (usize, usize) {
    let moved: usize = (0..next.partitions)
        .map(|p| {
            let old = prev.replicas(p);
            next.replicas(p).iter().filter(|n| !old.contains(n)).count()
        })
        .sum();
    let before = prev.slots_per_node();
    let lb = next
        .slots_per_node()
        .iter()
        .map(|(id, &c)| c.saturating_sub(before.get(id).copied().unwrap_or(0)) as usize)
        .sum();
    (moved, lb)
}

/// Replicas of `prev` that the zone rules of `next` force out (regardless of quotas): a
/// second replica in a zone that may hold one per partition, and replicas that leave too
/// few free slots to reach every zone that must be in every partition.
fn zone_forced(prev: &Layout, next: &Layout, next_nodes: &[NodeSpec]) -> usize {
    let zone: BTreeMap<NodeId, &str> = next_nodes
        .iter()
        .filter(|n| n.capacity > 0)
        .map(|n| (n.id, n.zone.as_str()))
        .collect();
    let mut zone_slots: BTreeMap<&str, u32> = BTreeMap::new();
    for id in &next.assignment {
        *zone_slots.entry(zone[id]).or_default() += 1;
    }
    let r = next.replication as usize;
    let distinct = zone_slots.len() >= r;
    let mut forced = 0;
    for p in 0..prev.partitions {
        let mut per_zone: BTreeMap<&str, usize> = BTreeMap::new();
        let mut kept = 0;
        for id in prev.replicas(p) {
            if let Some(z) = zone.get(id) {
                *per_zone.entry(*z).or_default() += 1;
                kept += 1;
            }
        }
        for (z, c) in &per_zone {
            let single = distinct || zone_slots.get(z).copied().unwrap_or(0) <= next.partitions;
            if single && *c > 1 {
                forced += c - 1;
                kept -= c - 1;
            }
        }
        let holes = r.saturating_sub(kept);
        let missing = zone_slots
            .iter()
            .filter(|(z, &n)| n >= next.partitions && !per_zone.contains_key(*z))
            .count();
        forced += missing.saturating_sub(holes);
    }
    forced
}

// ------------------------------------------------------------------------------------
// Strategies
// ------------------------------------------------------------------------------------

/// N in 3..=64 nodes with ids 1..=N, 1..=6 zones chosen at random per node, capacities
/// either all equal or random in a 1..4 ratio.
fn arb_nodes() -> impl Strategy<Value = Vec<NodeSpec>> {
    (3usize..=64, 1usize..=6, any::<bool>()).prop_flat_map(|(n, zones, equal)| {
        (
            prop::collection::vec(0..zones, n),
            prop::collection::vec(1000u64..=4000, n),
        )
            .prop_map(move |(z, c)| {
                (0..n)
                    .map(|i| node(i as NodeId + 1, z[i], if equal { 1000 } else { c[i] }))
                    .collect()
            })
    })
}

#[derive(Debug, Clone)]
enum Change {
    Join { zone: usize, capacity: u64 },
    Drain(usize),
    Forget(usize),
    Resize(usize, u64),
    Rezone(usize, usize),
}

fn arb_change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (0usize..7, 1000u64..=4000).prop_map(|(zone, capacity)| Change::Join { zone, capacity }),
        any::<usize>().prop_map(Change::Drain),
        any::<usize>().prop_map(Change::Forget),
        (any::<usize>(), 1000u64..=4000).prop_map(|(i, c)| Change::Resize(i, c)),
        (any::<usize>(), 0usize..7).prop_map(|(i, z)| Change::Rezone(i, z)),
    ]
}

fn apply(nodes: &[NodeSpec], change: &Change) -> Vec<NodeSpec> {
    let mut out = nodes.to_vec();
    let pick = |i: usize| i % nodes.len();
    match *change {
        Change::Join { zone, capacity } => {
            let id = nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
            out.push(node(id, zone, capacity));
        }
        Change::Drain(i) => out[pick(i)].capacity = 0,
        Change::Forget(i) => {
            out.remove(pick(i));
        }
        Change::Resize(i, c) => out[pick(i)].capacity = c,
        Change::Rezone(i, z) => out[pick(i)].zone = format!("zone-{z}"),
    }
    out
}

// ------------------------------------------------------------------------------------
// Properties
// ------------------------------------------------------------------------------------

fn fresh_layout_props(nodes: &[NodeSpec], rf: u32, partitions: u32) -> Result<(), TestCaseError> {
    let l = Layout::compute(None, nodes, rf, partitions)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    check_structure(&l, nodes)?;
    check_shares(&l, nodes, rf)?;
    // Without a previous layout the slots are exactly the published quotas.
    let target = Layout::target_slots(nodes, rf, partitions)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&l.slots_per_node(), &target);
    let equal = nodes.iter().all(|n| n.capacity == nodes[0].capacity);
    if equal && partitions >= 4096 && unbent(nodes, rf, partitions) {
        let imbalance = l.max_over_mean_per_capacity();
        prop_assert!(imbalance <= 1.01, "max/mean {}", imbalance);
    }
    // Deterministic, independent of input order.
    let mut rev = nodes.to_vec();
    rev.reverse();
    let again = Layout::compute(None, &rev, rf, partitions)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&again, &l);
    Ok(())
}

fn change_props(
    nodes: &[NodeSpec],
    change: &Change,
    rf: u32,
    partitions: u32,
) -> Result<(), TestCaseError> {
    let prev = Layout::compute(None, nodes, rf, partitions)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    // Recomputing with the same nodes moves nothing.
    let same = Layout::compute(Some(&prev), nodes, rf, partitions)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&same.assignment, &prev.assignment);
    prop_assert_eq!(same.version, prev.version + 1);

    let next_nodes = apply(nodes, change);
    let next = match Layout::compute(Some(&prev), &next_nodes, rf, partitions) {
        Ok(l) => l,
        Err(e) => {
            // Only legitimate failure: nothing left with capacity.
            prop_assert!(
                next_nodes.iter().all(|n| n.capacity == 0),
                "unexpected error {}",
                e
            );
            return Ok(());
        }
    };
    check_structure(&next, &next_nodes)?;
    check_shares(&next, &next_nodes, rf)?;
    let (moved, lb) = movement(&prev, &next);
    let forced = zone_forced(&prev, &next, &next_nodes);
    // A replica evicted by the zone rules costs up to two moves: its node must land in
    // another partition, and its slot needs a node of another zone. Beyond that, moves
    // come only from chains through replicas that were kept (rare and short).
    prop_assert!(
        moved <= lb + 2 * forced + lb / 50 + 2,
        "moved {} slots, lower bound {} + zone-forced {} ({:?})",
        moved,
        lb,
        forced,
        change
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn fresh_layouts_p4096(nodes in arb_nodes(), rf in 1u32..=5) {
        fresh_layout_props(&nodes, rf, 4096)?;
    }

    #[test]
    fn changes_p4096(nodes in arb_nodes(), change in arb_change(), rf in 2u32..=4) {
        change_props(&nodes, &change, rf, 4096)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn fresh_layouts_p256(nodes in arb_nodes(), rf in 1u32..=5) {
        fresh_layout_props(&nodes, rf, 256)?;
    }

    #[test]
    fn changes_p256(nodes in arb_nodes(), change in arb_change(), rf in 1u32..=5) {
        change_props(&nodes, &change, rf, 256)?;
    }

    #[test]
    fn chains_of_changes_p256(
        nodes in arb_nodes(),
        changes in prop::collection::vec(arb_change(), 1..6),
    ) {
        let mut cur_nodes = nodes;
        let mut cur = Layout::compute(None, &cur_nodes, 3, 256)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        for change in &changes {
            let next_nodes = apply(&cur_nodes, change);
            if next_nodes.iter().all(|n| n.capacity == 0) {
                continue;
            }
            let next = Layout::compute(Some(&cur), &next_nodes, 3, 256)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            check_structure(&next, &next_nodes)?;
            check_shares(&next, &next_nodes, 3)?;
            prop_assert_eq!(next.version, cur.version + 1);
            cur = next;
            cur_nodes = next_nodes;
        }
    }
}

// ------------------------------------------------------------------------------------
// Sweeps with exact targets
// ------------------------------------------------------------------------------------

/// One node of the same capacity joins N (3..=64) nodes: the moved fraction is at most
/// 1.05 / (N + 1), with one zone and with three zones.
#[test]
fn one_node_joins_moves_about_one_share() {
    let mut worst: f64 = 0.0;
    for zones in [1usize, 3] {
        for n in 3..=64u64 {
            let before: Vec<NodeSpec> =
                (1..=n).map(|i| node(i, i as usize % zones, 1000)).collect();
            let mut after = before.clone();
            after.push(node(n + 1, (n + 1) as usize % zones, 1000));
            let prev = Layout::compute(None, &before, 3, 4096).expect("prev");
            let next = Layout::compute(Some(&prev), &after, 3, 4096).expect("next");
            let moved = moved_fraction(&prev, &next);
            let ratio = moved * (n + 1) as f64;
            worst = worst.max(ratio);
            assert!(
                ratio <= 1.05,
                "{zones} zone(s), {n} -> {} nodes: moved {moved:.5}, {ratio:.4} x 1/(N+1)",
                n + 1
            );
            let (m, lb) = movement(&prev, &next);
            assert_eq!(m, lb, "{zones} zone(s), N={n}: moves beyond the minimum");
            if zones == 1 {
                assert!(next.max_over_mean_per_capacity() <= 1.01);
            }
        }
    }
    eprintln!("join sweep: worst moved fraction = {worst:.4} x 1/(N+1)");
}

/// Draining a node (capacity 0) moves exactly its slots and nothing else.
#[test]
fn draining_a_node_moves_only_its_slots() {
    let mut worst_extra = 0;
    for zones in [1usize, 3, 4] {
        for n in [4u64, 7, 16, 33, 64] {
            let nodes: Vec<NodeSpec> = (1..=n)
                .map(|i| node(i, i as usize % zones, 1000 + 37 * (i % 5)))
                .collect();
            let prev = Layout::compute(None, &nodes, 3, 4096).expect("prev");
            let victim = n / 2 + 1;
            let mut drained = nodes.clone();
            drained[(victim - 1) as usize].capacity = 0;
            let next = Layout::compute(Some(&prev), &drained, 3, 4096).expect("next");
            let held = prev.slots_per_node()[&victim] as usize;
            assert_eq!(next.slots_per_node()[&victim], 0);
            let (moved, lb) = movement(&prev, &next);
            // Exactly the drained node's slots move, plus any slot freed by a quota that
            // went down. With several zones a handful of slots may need a chain of two
            // moves (no node below quota may take them directly).
            if zones == 1 {
                assert_eq!(moved, lb, "zones {zones}, n {n}");
            } else {
                assert!(
                    moved <= lb + lb / 100 + 2,
                    "zones {zones}, n {n}: {moved} > {lb}"
                );
            }
            worst_extra = worst_extra.max(moved - lb);
            let before = prev.slots_per_node();
            let shrunk: usize = next
                .slots_per_node()
                .iter()
                .filter(|(id, _)| **id != victim)
                .map(|(id, &c)| before[id].saturating_sub(c) as usize)
                .sum();
            assert!(moved >= held + shrunk, "zones {zones}, n {n}");
            assert!(
                moved <= held + shrunk + lb / 100 + 2,
                "zones {zones}, n {n}"
            );
            assert!(
                shrunk <= 2,
                "zones {zones}, n {n}: {shrunk} slots left other nodes"
            );
            let frac = moved_fraction(&prev, &next);
            let share = held as f64 / prev.assignment.len() as f64;
            assert!((frac - share).abs() < 0.002, "{frac} vs {share}");
            // And recomputing from the drained layout moves nothing.
            let again = Layout::compute(Some(&next), &drained, 3, 4096).expect("again");
            assert_eq!(again.assignment, next.assignment);
        }
    }
    eprintln!("drain sweep: worst extra moves = {worst_extra} slots");
}

/// The layout is computed fast enough for the leader to recompute it on every change.
#[test]
fn computes_4096_partitions_64_nodes_quickly() {
    let cases: Vec<(&str, Vec<NodeSpec>)> = vec![
        (
            "1 zone, equal",
            (1..=64).map(|i| node(i, 0, 1000)).collect(),
        ),
        (
            "3 zones, unequal",
            (1..=64)
                .map(|i| node(i, i as usize % 3, 1000 + 1000 * (i % 4)))
                .collect(),
        ),
        (
            "6 zones, unequal",
            (1..=64)
                .map(|i| node(i, (i as usize * 7) % 6, 1000 + 1000 * (i % 4)))
                .collect(),
        ),
    ];
    for (name, nodes) in cases {
        let t = Instant::now();
        let l = Layout::compute(None, &nodes, 3, 4096).expect("layout");
        let fresh = t.elapsed();
        let mut more = nodes.clone();
        more.push(node(65, 1, 2500));
        let t = Instant::now();
        let next = Layout::compute(Some(&l), &more, 3, 4096).expect("next");
        let incremental = t.elapsed();
        eprintln!(
            "P=4096 RF=3 N=64 {name}: from scratch {fresh:?}, +1 node {incremental:?}, \
             moved {:.4}",
            moved_fraction(&l, &next)
        );
        assert!(fresh.as_secs_f64() < 1.0 && incremental.as_secs_f64() < 1.0);
    }
}
