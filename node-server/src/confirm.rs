//! Confirmation by monotonic time before destructive housekeeping.
//!
//! Some decisions rest on the wall clock: a mount session whose lease expired, a block
//! copy older than the orphan grace period. A node's wall clock can jump (a bad NTP
//! server, a VM resumed from a snapshot, an operator setting the date): jumped forward
//! by more than a lease, every live session looks expired; by more than the grace
//! period, every block still being uploaded looks like an orphan. So such a decision is
//! only acted on once the same thing has been observed in the same state for a window of
//! *monotonic* time on this node: a clock jump can start the window, never shorten it.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Keys (sessions, block ids) with the state they were last seen in and since when.
/// A round observes the candidates of the moment; keys not observed in a round are
/// forgotten, so something that stops being a candidate starts over.
pub struct Confirm<K, V> {
    window: Duration,
    seen: HashMap<K, (V, Instant)>,
    observed: HashMap<K, ()>,
    /// Upper bound on remembered keys (a bound on memory, not on correctness: a key
    /// that does not fit is simply not confirmed this round).
    limit: usize,
}

impl<K: Hash + Eq + Clone, V: PartialEq> Confirm<K, V> {
    pub fn new(window: Duration, limit: usize) -> Self {
        Confirm {
            window,
            seen: HashMap::new(),
            observed: HashMap::new(),
            limit,
        }
    }

    /// Records that `key` is a candidate in `state` at `now`; true once it has been one,
    /// in that same state, for the whole window.
    pub fn observe(&mut self, key: K, state: V, now: Instant) -> bool {
        self.observed.insert(key.clone(), ());
        match self.seen.get_mut(&key) {
            Some((s, since)) if *s == state => now.saturating_duration_since(*since) >= self.window,
            Some(entry) => {
                *entry = (state, now);
                false
            }
            None => {
                if self.seen.len() < self.limit {
                    self.seen.insert(key, (state, now));
                }
                false
            }
        }
    }

    /// Ends a round: forgets every key not observed since the last call.
    pub fn end_round(&mut self) {
        let observed = std::mem::take(&mut self.observed);
        self.seen.retain(|k, _| observed.contains_key(k));
    }

    /// Forgets `key` (acted upon).
    pub fn forget(&mut self, key: &K) {
        self.seen.remove(key);
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(60);

    #[test]
    fn confirmed_only_after_the_whole_window_in_one_state() {
        let t0 = Instant::now();
        let mut c = Confirm::new(W, 100);
        assert!(!c.observe("s", 7, t0));
        c.end_round();
        assert!(!c.observe("s", 7, t0 + Duration::from_secs(59)));
        c.end_round();
        assert!(c.observe("s", 7, t0 + W));
    }

    #[test]
    fn a_change_of_state_restarts_the_window() {
        // A renewed lease (new expiry) is a new state: the session is alive.
        let t0 = Instant::now();
        let mut c = Confirm::new(W, 100);
        c.observe("s", 7, t0);
        c.end_round();
        assert!(!c.observe("s", 8, t0 + Duration::from_secs(50)));
        c.end_round();
        assert!(!c.observe("s", 8, t0 + Duration::from_secs(100)));
        c.end_round();
        assert!(c.observe("s", 8, t0 + Duration::from_secs(110)));
    }

    #[test]
    fn keys_that_stop_being_candidates_start_over() {
        // A block that became referenced (its write committed) and later unreferenced
        // again waits a whole window from then.
        let t0 = Instant::now();
        let mut c = Confirm::new(W, 100);
        c.observe("b", (), t0);
        c.end_round();
        c.end_round(); // not a candidate in this round
        assert!(c.is_empty());
        assert!(!c.observe("b", (), t0 + Duration::from_secs(61)));
        c.end_round();
        assert!(c.observe("b", (), t0 + Duration::from_secs(121)));
        c.forget(&"b");
        assert!(c.is_empty());
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = Instant::now();
        let mut c = Confirm::new(W, 2);
        for k in 0..10 {
            c.observe(k, (), t0);
        }
        assert_eq!(c.len(), 2);
        c.end_round();
        // Keys that did not fit are not confirmed, however long they wait.
        assert!(!c.observe(9, (), t0 + W * 2));
        assert!(c.observe(0, (), t0 + W * 2));
    }
}
