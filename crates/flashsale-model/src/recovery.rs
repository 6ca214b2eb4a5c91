//! The quiescence check: from *every* reachable state, can the system still
//! reach a settled one ([`HandoffModel::settled`]: nothing in flight, the
//! queue empty, the sale seeded on a current stamp, Redis's holdings equal
//! to the database's)? This is the branching-time property "always, a
//! settled state is reachable" (`AG EF settled`), which stateright's
//! `eventually` (checked on terminal paths only, and blind to cycles such
//! as a writer redelivering forever) cannot express.
//!
//! It answers the liveness questions the safety properties leave open: the
//! drain wait and the fence never wedge a sale for good (some schedule
//! re-seeds it), every `201` can reach the database, and the reconciler's
//! drift can always return to 0. It explores the whole (symmetry-reduced)
//! graph in memory, so it runs on a smaller bound than the safety check.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use stateright::{Model, Representative};

use crate::model::{HandoffModel, State};

/// A multiply-rotate hasher (the Firefox/rustc "Fx" hash): the states are
/// small and trusted, so SipHash's flood resistance buys nothing here and
/// costs most of the check's time.
#[derive(Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// What the quiescence check found.
#[derive(Debug)]
pub struct Recovery {
    /// Reachable states, one per symmetry class.
    pub states: usize,
    /// Transitions between them.
    pub transitions: usize,
    /// Classes from which no settled state is reachable.
    pub stuck: usize,
    /// A stuck state closest to the start, with its distance in steps.
    pub first_stuck: Option<(State, usize)>,
}

impl HandoffModel {
    /// Explores every state and checks that each can reach a settled one.
    pub fn check_recovery(&self) -> Recovery {
        let mut index: FxMap<State, u32> = FxMap::default();
        let mut states: Vec<State> = Vec::new();
        let mut depth: Vec<usize> = Vec::new();
        let mut edges: Vec<(u32, u32)> = Vec::new();
        let mut queue = VecDeque::new();
        for s in self.init_states() {
            let r = s.representative();
            if !index.contains_key(&r) {
                index.insert(r.clone(), states.len() as u32);
                queue.push_back(states.len() as u32);
                states.push(r);
                depth.push(0);
            }
        }
        while let Some(id) = queue.pop_front() {
            let next = self.next_states(&states[id as usize]);
            for n in next {
                let r = n.representative();
                let to = match index.get(&r) {
                    Some(to) => *to,
                    None => {
                        let to = states.len() as u32;
                        index.insert(r.clone(), to);
                        states.push(r);
                        depth.push(depth[id as usize] + 1);
                        queue.push_back(to);
                        to
                    }
                };
                edges.push((id, to));
            }
        }
        drop(index);

        // Backwards from the settled states over reversed edges (in CSR
        // form: the predecessors of `v` are `preds[start[v]..start[v + 1]]`).
        let n = states.len();
        let mut start = vec![0usize; n + 1];
        for (_, to) in &edges {
            start[*to as usize + 1] += 1;
        }
        for v in 0..n {
            start[v + 1] += start[v];
        }
        let mut fill = start.clone();
        let mut preds = vec![0u32; edges.len()];
        for (from, to) in &edges {
            preds[fill[*to as usize]] = *from;
            fill[*to as usize] += 1;
        }
        let mut recovers = vec![false; n];
        let mut work: Vec<usize> = Vec::new();
        for (v, s) in states.iter().enumerate() {
            if self.settled(s) {
                recovers[v] = true;
                work.push(v);
            }
        }
        while let Some(v) = work.pop() {
            for p in &preds[start[v]..start[v + 1]] {
                let p = *p as usize;
                if !recovers[p] {
                    recovers[p] = true;
                    work.push(p);
                }
            }
        }
        let stuck = recovers.iter().filter(|r| !**r).count();
        let first_stuck = (0..n)
            .filter(|v| !recovers[*v])
            .min_by_key(|v| depth[*v])
            .map(|v| (states[v].clone(), depth[v]));
        Recovery {
            states: n,
            transitions: edges.len(),
            stuck,
            first_stuck,
        }
    }
}
