//! Operation histories of concurrent clients and the checkers that judge them: the
//! fault-injection suite (`node-server/tests/faults.rs`) records what its clients asked
//! and saw, and these functions decide whether a single-copy system could have answered
//! that way.
//!
//! - [`check`] decides linearizability of one object's history against a sequential
//!   [`Model`], by a Wing–Gong search with Lowe's memoisation of (linearized set,
//!   state): an operation may take effect only between its invocation and its
//!   completion; an operation whose outcome is unknown (a timeout, a lost answer) may
//!   take effect at any time after its invocation, or never.
//! - [`RegisterModel`] is one file written whole (unique values), read and unlinked;
//!   [`NamespaceModel`] is a few directory names under mkdir/rmdir/rename/lookup, one
//!   object because a rename touches two names.
//! - [`lost_writes`] and [`unproduced_reads`] give the two anomalies users care about by
//!   name: an acknowledged write the final state does not reflect, and a read of a value
//!   nobody wrote.
//!
//! Histories are split per object by the caller (linearizability is compositional), so
//! each search stays small. The search is exponential in the worst case; it stops at a
//! step budget and says so ([`Verdict::Inconclusive`]) instead of guessing.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::hash::Hash;

/// One operation as a client saw it. Times are ticks of one monotonic clock (the suite
/// uses nanoseconds since its start). Operations that definitely failed (refused before
/// anything could change) are left out of histories: they have no effect and no result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<O> {
    /// The client (worker) that issued the operation; one process has one operation in
    /// flight at a time.
    pub process: u64,
    /// The operation with its observed result (for unknown outcomes: without one).
    pub op: O,
    pub invoke: u64,
    /// `None`: the outcome is unknown; the operation may or may not have taken effect.
    pub complete: Option<u64>,
}

/// A sequential specification.
pub trait Model {
    type State: Clone + Eq + Hash + Debug;
    type Op: Clone + Debug;
    fn init(&self) -> Self::State;
    /// The state after `op` in `state`, or `None` when `op` could not have returned what
    /// it returned from `state`.
    fn step(&self, state: &Self::State, op: &Self::Op) -> Option<Self::State>;
}

/// The result of a linearizability check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No linearization exists. `stuck` is the operation (index into the history) that
    /// could not be placed at the deepest point the search reached, `state` the model
    /// state there, `linearized` how many operations were placed before it.
    Violation {
        stuck: usize,
        state: String,
        linearized: usize,
    },
    /// The search hit its step budget: nothing is claimed.
    Inconclusive {
        steps: u64,
    },
}

impl Verdict {
    pub fn is_violation(&self) -> bool {
        matches!(self, Verdict::Violation { .. })
    }
}

#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    prev: usize,
    next: usize,
    /// For a call: the index of its return event.
    other: usize,
}

const NIL: usize = usize::MAX;

/// Decides whether `history` is linearizable with respect to `model`, taking at most
/// `budget` search steps.
pub fn check<M: Model>(model: &M, history: &[Entry<M::Op>], budget: u64) -> Verdict {
    let n = history.len();
    if n == 0 {
        return Verdict::Linearizable;
    }
    // Events ordered by time; calls before returns at equal times (concurrent, the
    // lenient reading of a tie); unknown completions after everything.
    let mut order: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
    for (i, e) in history.iter().enumerate() {
        order.push((e.invoke, 0, i));
        let end = e.complete.map(|c| c.max(e.invoke)).unwrap_or(u64::MAX);
        order.push((end, 1, i));
    }
    order.sort();
    // Event 0 is the head sentinel.
    let mut ev: Vec<Event> = Vec::with_capacity(order.len() + 1);
    ev.push(Event {
        op: NIL,
        is_call: false,
        prev: NIL,
        next: NIL,
        other: NIL,
    });
    let mut call_of = vec![NIL; n];
    for (k, &(_, kind, i)) in order.iter().enumerate() {
        let idx = k + 1;
        ev.push(Event {
            op: i,
            is_call: kind == 0,
            prev: idx - 1,
            next: if k + 1 < order.len() { idx + 1 } else { NIL },
            other: NIL,
        });
        if kind == 0 {
            call_of[i] = idx;
        } else {
            ev[call_of[i]].other = idx;
        }
    }
    ev[0].next = 1;

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, M::State)> = HashSet::new();
    // (call event, state before it, index of the next candidate to try)
    let mut stack: Vec<(usize, M::State, usize)> = Vec::new();
    let mut state = model.init();
    let mut entry = ev[0].next;
    let mut resume = 0usize;
    let mut steps = 0u64;
    let mut deepest: (usize, usize, String) = (0, NIL, String::new());

    let lift = |ev: &mut Vec<Event>, c: usize| {
        let r = ev[c].other;
        let (cp, cn) = (ev[c].prev, ev[c].next);
        ev[cp].next = cn;
        if cn != NIL {
            ev[cn].prev = cp;
        }
        let (rp, rn) = (ev[r].prev, ev[r].next);
        ev[rp].next = rn;
        if rn != NIL {
            ev[rn].prev = rp;
        }
    };
    let unlift = |ev: &mut Vec<Event>, c: usize| {
        let r = ev[c].other;
        let (rp, rn) = (ev[r].prev, ev[r].next);
        ev[rp].next = r;
        if rn != NIL {
            ev[rn].prev = r;
        }
        let (cp, cn) = (ev[c].prev, ev[c].next);
        ev[cp].next = c;
        if cn != NIL {
            ev[cn].prev = c;
        }
    };

    while ev[0].next != NIL {
        steps += 1;
        if steps > budget {
            return Verdict::Inconclusive { steps };
        }
        if entry == NIL {
            // Only possible after every remaining event was a call that failed; the
            // next event is then a return, handled below. Defensive: treat as stuck.
            entry = ev[0].next;
        }
        let e = ev[entry];
        if e.is_call {
            let h = &history[e.op];
            // Candidates: the operation's effect, and for an unknown outcome also "it
            // never happened".
            let mut candidates: Vec<M::State> = Vec::with_capacity(2);
            if let Some(s) = model.step(&state, &h.op) {
                candidates.push(s);
            }
            if h.complete.is_none() && !candidates.contains(&state) {
                candidates.push(state.clone());
            }
            let mut placed = false;
            for (ci, next_state) in candidates.into_iter().enumerate().skip(resume) {
                let mut lin = linearized.clone();
                lin[e.op / 64] |= 1 << (e.op % 64);
                if cache.insert((lin.clone(), next_state.clone())) {
                    stack.push((entry, state.clone(), ci + 1));
                    state = next_state;
                    linearized = lin;
                    lift(&mut ev, entry);
                    entry = ev[0].next;
                    placed = true;
                    break;
                }
            }
            resume = 0;
            if !placed {
                entry = e.next;
            }
        } else {
            // A return whose call is still pending: the operation must have taken effect
            // by now but could not. Back up.
            if deepest.1 == NIL || stack.len() > deepest.0 {
                deepest = (stack.len(), e.op, format!("{state:?}"));
            }
            let Some((call, prev_state, next_candidate)) = stack.pop() else {
                return Verdict::Violation {
                    stuck: deepest.1,
                    state: deepest.2,
                    linearized: deepest.0,
                };
            };
            let op = ev[call].op;
            linearized[op / 64] &= !(1 << (op % 64));
            state = prev_state;
            unlift(&mut ev, call);
            entry = call;
            resume = next_candidate;
        }
    }
    Verdict::Linearizable
}

/// A file written whole with unique values (write ids), read and unlinked. The state is
/// the id of the content the path holds, `None` for no file.
#[derive(Debug, Clone, Copy, Default)]
pub struct RegisterModel;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FileOp {
    /// Replace the whole content with write `id`'s.
    Write(u64),
    /// Unlink; succeeds only when the file exists.
    Delete,
    /// A read that returned write `id`'s content, or `None`: no such file.
    Read(Option<u64>),
}

impl Model for RegisterModel {
    type State = Option<u64>;
    type Op = FileOp;
    fn init(&self) -> Option<u64> {
        None
    }
    fn step(&self, state: &Option<u64>, op: &FileOp) -> Option<Option<u64>> {
        match op {
            FileOp::Write(v) => Some(Some(*v)),
            FileOp::Delete => state.map(|_| None),
            FileOp::Read(v) => (v == state).then_some(*state),
        }
    }
}

/// A handful of directory names (at most 8) in one parent: which of them exist. One
/// object, because a rename changes two names at once.
#[derive(Debug, Clone, Copy, Default)]
pub struct NamespaceModel;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NsOp {
    /// Succeeded: the name did not exist and now does.
    Mkdir(u8),
    /// Succeeded: the (empty) directory existed and now does not.
    Rmdir(u8),
    /// Succeeded: `from` existed; now `to` exists (an empty `to` is replaced) and `from`
    /// does not.
    Rename(u8, u8),
    /// The name was looked up and found (true) or not (false).
    Lookup(u8, bool),
}

impl Model for NamespaceModel {
    type State = u8;
    type Op = NsOp;
    fn init(&self) -> u8 {
        0
    }
    fn step(&self, s: &u8, op: &NsOp) -> Option<u8> {
        let has = |n: u8| s & (1 << n) != 0;
        match *op {
            NsOp::Mkdir(n) => (!has(n)).then_some(s | (1 << n)),
            NsOp::Rmdir(n) => has(n).then_some(s & !(1 << n)),
            NsOp::Rename(a, b) if a == b => has(a).then_some(*s),
            NsOp::Rename(a, b) => has(a).then_some((s & !(1 << a)) | (1 << b)),
            NsOp::Lookup(n, found) => (has(n) == found).then_some(*s),
        }
    }
}

/// Acknowledged writes of one file that its final content does not reflect: indexes of
/// successful writes `w` such that every operation able to have produced `final_value`
/// (the write of that id; for `None`, the initial state or any unlink) completed before
/// `w` was invoked, so `w` had to come later and was lost.
pub fn lost_writes(history: &[Entry<FileOp>], final_value: Option<u64>) -> Vec<usize> {
    // The initial state (a possible producer of `None`) precedes everything.
    let initial = final_value.is_none();
    let producers: Vec<Option<u64>> = history
        .iter()
        .filter(|e| match final_value {
            None => e.op == FileOp::Delete,
            Some(v) => e.op == FileOp::Write(v),
        })
        .map(|e| e.complete)
        .collect();
    let mut lost = Vec::new();
    for (i, e) in history.iter().enumerate() {
        let FileOp::Write(v) = e.op else { continue };
        if e.complete.is_none() || Some(v) == final_value {
            continue;
        }
        let all_before = producers
            .iter()
            .all(|p| matches!(p, Some(c) if *c < e.invoke));
        if all_before && (initial || !producers.is_empty()) {
            lost.push(i);
        }
    }
    lost
}

/// Reads of values no write in the history produced (the initial "no file" aside).
pub fn unproduced_reads(history: &[Entry<FileOp>]) -> Vec<usize> {
    let written: HashSet<u64> = history
        .iter()
        .filter_map(|e| match e.op {
            FileOp::Write(v) => Some(v),
            _ => None,
        })
        .collect();
    history
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match e.op {
            FileOp::Read(Some(v)) if !written.contains(&v) => Some(i),
            _ => None,
        })
        .collect()
}

/// Drops unknown-outcome writes whose value nobody ever observed and that were invoked
/// after every successful unlink completed. Sound: such a write can always be
/// linearized as "never happened" without changing what any read saw (an unlink with an
/// unknown outcome never needs it either: it can remove whatever else is there, or
/// nothing), and such writes are what make searches with many timeouts expensive.
pub fn prune_unobserved(history: Vec<Entry<FileOp>>) -> Vec<Entry<FileOp>> {
    let read: HashSet<u64> = history
        .iter()
        .filter_map(|e| match e.op {
            FileOp::Read(Some(v)) => Some(v),
            _ => None,
        })
        .collect();
    let last_delete = history
        .iter()
        .filter(|e| e.op == FileOp::Delete)
        .filter_map(|e| e.complete)
        .max();
    history
        .into_iter()
        .filter(|e| {
            let unobserved = matches!(e.op, FileOp::Write(v) if !read.contains(&v));
            let after_deletes = last_delete.is_none_or(|d| e.invoke > d);
            !(e.complete.is_none() && unobserved && after_deletes)
        })
        .collect()
}

/// Per-object results of [`check_files`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FileReport {
    pub objects: usize,
    pub operations: usize,
    pub violations: Vec<(String, Verdict)>,
    pub inconclusive: Vec<String>,
    pub lost: Vec<(String, usize)>,
    pub unproduced: Vec<(String, usize)>,
}

/// Runs every file check on histories keyed by path. `finals` holds each path's value
/// read after the cluster healed; those reads must also be in the histories (as the last
/// operations) for the linearizability check to cover them.
pub fn check_files(
    histories: &HashMap<String, Vec<Entry<FileOp>>>,
    finals: &HashMap<String, Option<u64>>,
    budget: u64,
) -> FileReport {
    let mut r = FileReport::default();
    let mut keys: Vec<&String> = histories.keys().collect();
    keys.sort();
    for k in keys {
        let h = &histories[k];
        r.objects += 1;
        r.operations += h.len();
        for i in unproduced_reads(h) {
            r.unproduced.push((k.clone(), i));
        }
        if let Some(f) = finals.get(k) {
            for i in lost_writes(h, *f) {
                r.lost.push((k.clone(), i));
            }
        }
        match check(&RegisterModel, &prune_unobserved(h.clone()), budget) {
            Verdict::Linearizable => {}
            Verdict::Inconclusive { .. } => r.inconclusive.push(k.clone()),
            v => r.violations.push((k.clone(), v)),
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok<O>(process: u64, op: O, invoke: u64, complete: u64) -> Entry<O> {
        Entry {
            process,
            op,
            invoke,
            complete: Some(complete),
        }
    }

    fn unknown<O>(process: u64, op: O, invoke: u64) -> Entry<O> {
        Entry {
            process,
            op,
            invoke,
            complete: None,
        }
    }

    const BUDGET: u64 = 1_000_000;

    #[test]
    fn concurrent_writes_may_be_seen_in_either_order() {
        let h = vec![
            ok(1, FileOp::Write(1), 0, 10),
            ok(2, FileOp::Write(2), 1, 9),
            ok(3, FileOp::Read(Some(1)), 11, 12),
            ok(3, FileOp::Read(Some(1)), 13, 14),
        ];
        assert_eq!(check(&RegisterModel, &h, BUDGET), Verdict::Linearizable);
    }

    #[test]
    fn stale_read_after_a_completed_write_is_caught() {
        let h = vec![
            ok(1, FileOp::Write(1), 0, 10),
            ok(1, FileOp::Write(2), 11, 20),
            ok(2, FileOp::Read(Some(1)), 21, 22),
        ];
        let v = check(&RegisterModel, &h, BUDGET);
        assert!(v.is_violation(), "{v:?}");
    }

    #[test]
    fn read_going_back_in_time_is_caught() {
        // Both reads overlap the write, but once one read saw the new value a later read
        // may not see the old one.
        let h = vec![
            ok(1, FileOp::Write(1), 0, 1),
            ok(1, FileOp::Write(2), 2, 100),
            ok(2, FileOp::Read(Some(2)), 10, 20),
            ok(3, FileOp::Read(Some(1)), 30, 40),
        ];
        assert!(check(&RegisterModel, &h, BUDGET).is_violation());
    }

    #[test]
    fn unknown_writes_may_happen_late_or_never() {
        let late = vec![
            ok(1, FileOp::Write(1), 0, 10),
            unknown(2, FileOp::Write(2), 5),
            ok(3, FileOp::Read(Some(1)), 20, 21),
            ok(3, FileOp::Read(Some(2)), 30, 31),
        ];
        assert_eq!(check(&RegisterModel, &late, BUDGET), Verdict::Linearizable);
        let never = vec![
            unknown(2, FileOp::Write(2), 0),
            ok(1, FileOp::Write(1), 5, 10),
            ok(3, FileOp::Read(Some(1)), 20, 21),
        ];
        assert_eq!(check(&RegisterModel, &never, BUDGET), Verdict::Linearizable);
        // But not before it was invoked.
        let early = vec![
            ok(3, FileOp::Read(Some(2)), 0, 1),
            unknown(2, FileOp::Write(2), 5),
        ];
        assert!(check(&RegisterModel, &early, BUDGET).is_violation());
    }

    #[test]
    fn unlink_of_a_missing_file_cannot_succeed() {
        let h = vec![
            ok(1, FileOp::Write(1), 0, 1),
            ok(1, FileOp::Delete, 2, 3),
            ok(2, FileOp::Delete, 4, 5),
        ];
        assert!(check(&RegisterModel, &h, BUDGET).is_violation());
    }

    #[test]
    fn lost_and_unproduced_are_named() {
        let h = vec![
            ok(1, FileOp::Write(1), 0, 10),
            ok(1, FileOp::Write(2), 11, 20),
            ok(2, FileOp::Read(Some(7)), 21, 22),
        ];
        assert_eq!(lost_writes(&h, Some(1)), vec![1]);
        assert_eq!(lost_writes(&h, Some(2)), Vec::<usize>::new());
        assert_eq!(lost_writes(&h, None), vec![0, 1]);
        assert_eq!(unproduced_reads(&h), vec![2]);
        // An unlink that may come last explains a missing file.
        let mut h2 = h.clone();
        h2.push(unknown(3, FileOp::Delete, 15));
        assert_eq!(lost_writes(&h2, None), Vec::<usize>::new());
        // One that completed before a write began does not explain it.
        let h3 = vec![
            ok(1, FileOp::Write(1), 0, 10),
            ok(2, FileOp::Delete, 11, 12),
            ok(1, FileOp::Write(2), 13, 20),
        ];
        assert_eq!(lost_writes(&h3, None), vec![2]);
    }

    #[test]
    fn namespace_rename_moves_one_name() {
        let h = vec![
            ok(1, NsOp::Mkdir(0), 0, 1),
            ok(1, NsOp::Rename(0, 1), 2, 3),
            ok(2, NsOp::Lookup(0, false), 4, 5),
            ok(2, NsOp::Lookup(1, true), 6, 7),
            ok(3, NsOp::Mkdir(0), 8, 9),
        ];
        assert_eq!(check(&NamespaceModel, &h, BUDGET), Verdict::Linearizable);
        let mut bad = h.clone();
        bad.push(ok(3, NsOp::Lookup(1, false), 10, 11));
        assert!(check(&NamespaceModel, &bad, BUDGET).is_violation());
        let mut dup = h.clone();
        dup.push(ok(2, NsOp::Mkdir(1), 10, 11));
        assert!(check(&NamespaceModel, &dup, BUDGET).is_violation());
    }

    #[test]
    fn budget_is_reported_not_guessed() {
        let h: Vec<Entry<FileOp>> = (0..30)
            .map(|i| unknown(i, FileOp::Write(i), 0))
            .chain(std::iter::once(ok(99, FileOp::Read(Some(1000)), 5, 6)))
            .collect();
        assert!(matches!(
            check(&RegisterModel, &h, 1000),
            Verdict::Inconclusive { .. }
        ));
    }

    /// (history, final state, a time after everything, the state before each operation)
    type Execution = (Vec<Entry<FileOp>>, Option<u64>, u64, Vec<Option<u64>>);

    /// A random concurrent execution of a real linearizable register: operations take
    /// effect at increasing instants, each inside a random interval around its instant;
    /// some outcomes are unknown (and then possibly never took effect).
    fn execution(ops: Vec<(u8, u8, u64, u64, u8)>) -> Execution {
        let mut state: Option<u64> = None;
        let mut out = Vec::new();
        let mut next_id = 1u64;
        let mut t = 1000u64;
        let mut before_each = Vec::new();
        for (kind, process, before, after, fate) in ops {
            t += 10;
            let invoke = t.saturating_sub(before);
            let complete = t + after;
            let (op, applied) = match kind % 3 {
                0 => {
                    let id = next_id;
                    next_id += 1;
                    (FileOp::Write(id), Some(Some(id)))
                }
                1 if state.is_some() => (FileOp::Delete, Some(None)),
                _ => (FileOp::Read(state), None),
            };
            let unknown_outcome = fate % 4 == 0 && !matches!(op, FileOp::Read(_));
            let took_effect = !unknown_outcome || fate % 8 == 0;
            before_each.push(state);
            if let (Some(s), true) = (applied, took_effect) {
                state = s;
            }
            out.push(Entry {
                process: process as u64,
                op,
                invoke,
                complete: (!unknown_outcome).then_some(complete),
            });
        }
        (out, state, t + 1000, before_each)
    }

    fn ops_strategy() -> impl Strategy<Value = Vec<(u8, u8, u64, u64, u8)>> {
        proptest::collection::vec((0u8..3, 0u8..5, 0u64..40, 0u64..40, any::<u8>()), 1..40)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(100))]

        #[test]
        fn valid_executions_pass(ops in ops_strategy()) {
            let (mut h, final_value, end, _) = execution(ops);
            h.push(ok(100, FileOp::Read(final_value), end, end + 1));
            let v = check(&RegisterModel, &prune_unobserved(h.clone()), 5_000_000);
            prop_assert_eq!(v, Verdict::Linearizable);
            prop_assert!(lost_writes(&h, final_value).is_empty());
            prop_assert!(unproduced_reads(&h).is_empty());
        }

        #[test]
        fn a_stale_read_is_caught(ops in ops_strategy()) {
            let (mut h, _, end, _) = execution(ops);
            // Two acknowledged writes one after the other, then a read of the first.
            h.push(ok(101, FileOp::Write(1_000_001), end, end + 5));
            h.push(ok(101, FileOp::Write(1_000_002), end + 10, end + 15));
            h.push(ok(102, FileOp::Read(Some(1_000_001)), end + 20, end + 25));
            let v = check(&RegisterModel, &prune_unobserved(h.clone()), 5_000_000);
            prop_assert!(v.is_violation(), "{:?}", v);
            // As a final state, the same read is a lost write.
            prop_assert!(!lost_writes(&h, Some(1_000_001)).is_empty());
        }

        #[test]
        fn a_read_of_an_unwritten_value_is_caught(ops in ops_strategy(), at in 0usize..40) {
            let (mut h, _, end, _) = execution(ops);
            let at = at % h.len();
            let e = h[at].clone();
            h.insert(at, ok(103, FileOp::Read(Some(999_999)), e.invoke, e.invoke + 1));
            h.push(ok(104, FileOp::Read(None), end, end + 1));
            prop_assert!(!unproduced_reads(&h).is_empty());
            let v = check(&RegisterModel, &prune_unobserved(h), 5_000_000);
            prop_assert!(v.is_violation(), "{:?}", v);
        }

        #[test]
        fn a_dropped_acknowledged_write_is_caught(ops in ops_strategy(), pick in any::<usize>()) {
            // The system acknowledges write w but drops it: a read after w (here the
            // final one) still returns the value before w. Guaranteed detectable when
            // that value's write completed before w was invoked.
            let (mut h, _, end, before) = execution(ops);
            let definite_before = |h: &[Entry<FileOp>], w: usize, prev: Option<u64>| {
                prev.is_some_and(|v| h.iter().any(|e| {
                    e.op == FileOp::Write(v) && e.complete.is_some_and(|c| c < h[w].invoke)
                }))
            };
            let mut candidates: Vec<(usize, Option<u64>)> = h.iter().enumerate()
                .filter(|(i, e)| matches!(e.op, FileOp::Write(_)) && e.complete.is_some()
                    && definite_before(&h, *i, before[*i]))
                .map(|(i, _)| (i, before[i]))
                .collect();
            if candidates.is_empty() {
                h.push(ok(101, FileOp::Write(2_000_001), end, end + 5));
                h.push(ok(101, FileOp::Write(2_000_002), end + 10, end + 15));
                candidates.push((h.len() - 1, Some(2_000_001)));
            }
            let (w, prev) = candidates[pick % candidates.len()];
            let mut h: Vec<Entry<FileOp>> = h[..=w].to_vec();
            let t = h.iter().filter_map(|e| e.complete).max().unwrap_or(0) + 100;
            h.push(ok(105, FileOp::Read(prev), t, t + 1));
            prop_assert!(lost_writes(&h, prev).contains(&w));
            let v = check(&RegisterModel, &prune_unobserved(h), 5_000_000);
            prop_assert!(v.is_violation(), "{:?}", v);
        }
    }
}
