//! Backend selection. Pure: a `Candidates` view says which backends are usable and how busy
//! they are; the selectors here pick an index. Nothing here locks: round robin walks a
//! precomputed weighted schedule with one atomic counter.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::hash::StableHasher;

/// What a selector needs to know about the pool's backends at the moment of choosing.
pub trait Candidates {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn weight(&self, i: usize) -> u32;
    /// Healthy, not cooling down, and not already tried by this request.
    fn usable(&self, i: usize) -> bool;
    fn inflight(&self, i: usize) -> u32;
}

/// Points per unit of weight on the consistent-hash ring: enough for an even spread with a
/// handful of backends, bounded by the weight cap of 1000.
const RING_POINTS_PER_WEIGHT: u32 = 40;

#[derive(Debug)]
pub enum Selector {
    /// Smooth weighted round robin, precomputed: `schedule` lists backend indexes in the order
    /// nginx's algorithm would pick them, so a counter alone walks it.
    RoundRobin {
        schedule: Vec<u32>,
        next: AtomicUsize,
    },
    /// Fewest in-flight requests relative to weight; ties rotate.
    LeastConn { next: AtomicUsize },
    /// Ketama-style ring of (point, backend) sorted by point.
    Consistent { ring: Vec<(u64, u32)> },
    /// Power of two random choices, weighted by the round-robin schedule.
    Random { schedule: Vec<u32> },
}

impl Selector {
    pub fn round_robin(weights: &[u32]) -> Self {
        Selector::RoundRobin {
            schedule: smooth_weighted_schedule(weights),
            next: AtomicUsize::new(0),
        }
    }

    pub fn least_conn() -> Self {
        Selector::LeastConn {
            next: AtomicUsize::new(0),
        }
    }

    pub fn random(weights: &[u32]) -> Self {
        Selector::Random {
            schedule: smooth_weighted_schedule(weights),
        }
    }

    /// `names` identify backends on the ring (their addresses), so a backend keeps its points
    /// when others are added or removed and only its share of keys moves.
    pub fn consistent(names: &[String], weights: &[u32]) -> Self {
        let mut ring = Vec::new();
        for (i, (name, w)) in names.iter().zip(weights).enumerate() {
            for p in 0..w.max(&1) * RING_POINTS_PER_WEIGHT {
                let point = StableHasher::default()
                    .write(name.as_bytes())
                    .write(b"#")
                    .write(&p.to_le_bytes())
                    .finish();
                ring.push((point, i as u32));
            }
        }
        ring.sort_unstable();
        Selector::Consistent { ring }
    }

    /// Picks a usable backend. `key` is the hash of the request's consistent-hash key (ignored
    /// by other selectors). Returns `None` when no backend is usable.
    pub fn select(&self, c: &impl Candidates, key: u64) -> Option<usize> {
        match self {
            Selector::RoundRobin { schedule, next } => {
                let start = next.fetch_add(1, Relaxed);
                walk(schedule, start, c)
            }
            Selector::LeastConn { next } => least_conn(c, next.fetch_add(1, Relaxed)),
            Selector::Consistent { ring } => consistent(ring, key, c),
            Selector::Random { schedule } => random_two_choices(schedule, c),
        }
    }
}

/// From `start`, the first usable backend in schedule order, trying each entry at most once.
fn walk(schedule: &[u32], start: usize, c: &impl Candidates) -> Option<usize> {
    let n = schedule.len();
    (0..n)
        .map(|k| schedule[(start + k) % n] as usize)
        .find(|&i| c.usable(i))
}

fn least_conn(c: &impl Candidates, rotate: usize) -> Option<usize> {
    let n = c.len();
    let mut best: Option<(usize, u64, u64)> = None;
    for k in 0..n {
        let i = (rotate + k) % n;
        if !c.usable(i) {
            continue;
        }
        let (load, weight) = (u64::from(c.inflight(i)), u64::from(c.weight(i).max(1)));
        // Compare load/weight without division: a/wa < b/wb  <=>  a*wb < b*wa.
        let better = match best {
            None => true,
            Some((_, bl, bw)) => load * bw < bl * weight,
        };
        if better {
            best = Some((i, load, weight));
        }
    }
    best.map(|(i, _, _)| i)
}

fn consistent(ring: &[(u64, u32)], key: u64, c: &impl Candidates) -> Option<usize> {
    if ring.is_empty() {
        return None;
    }
    let start = ring.partition_point(|&(point, _)| point < key);
    // Walk clockwise past unusable backends; each backend appears many times, so stop after
    // one full turn.
    (0..ring.len())
        .map(|k| ring[(start + k) % ring.len()].1 as usize)
        .find(|&i| c.usable(i))
}

fn random_two_choices(schedule: &[u32], c: &impl Candidates) -> Option<usize> {
    if schedule.is_empty() {
        return None;
    }
    let n = schedule.len();
    let a = schedule[fastrand::usize(..n)] as usize;
    let b = schedule[fastrand::usize(..n)] as usize;
    match (c.usable(a), c.usable(b)) {
        (true, true) if c.inflight(b) < c.inflight(a) => Some(b),
        (true, _) => Some(a),
        (false, true) => Some(b),
        // Both draws unusable: fall back to a walk so a usable backend is still found.
        (false, false) => walk(schedule, fastrand::usize(..n), c),
    }
}

/// nginx's smooth weighted round robin, unrolled into one period of length sum(weights):
/// weights 5,1,1 give a a b a c a a rather than a a a a a b c.
pub fn smooth_weighted_schedule(weights: &[u32]) -> Vec<u32> {
    let total: i64 = weights.iter().map(|&w| i64::from(w.max(1))).sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += i64::from((*w).max(1));
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best as u32);
    }
    schedule
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        weights: Vec<u32>,
        usable: Vec<bool>,
        inflight: Vec<u32>,
    }

    impl Fake {
        fn new(weights: &[u32]) -> Self {
            Self {
                weights: weights.to_vec(),
                usable: vec![true; weights.len()],
                inflight: vec![0; weights.len()],
            }
        }
    }

    impl Candidates for Fake {
        fn len(&self) -> usize {
            self.weights.len()
        }
        fn weight(&self, i: usize) -> u32 {
            self.weights[i]
        }
        fn usable(&self, i: usize) -> bool {
            self.usable[i]
        }
        fn inflight(&self, i: usize) -> u32 {
            self.inflight[i]
        }
    }

    fn counts(sel: &Selector, c: &Fake, rounds: usize) -> Vec<usize> {
        let mut n = vec![0; c.len()];
        for r in 0..rounds {
            n[sel
                .select(c, (r as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
                .unwrap()] += 1;
        }
        n
    }

    #[test]
    fn smooth_schedule_interleaves() {
        assert_eq!(
            smooth_weighted_schedule(&[5, 1, 1]),
            vec![0, 0, 1, 0, 2, 0, 0]
        );
        assert_eq!(smooth_weighted_schedule(&[1, 3]), vec![1, 0, 1, 1]);
    }

    #[test]
    fn round_robin_honours_weights_exactly() {
        let c = Fake::new(&[1, 3]);
        assert_eq!(
            counts(&Selector::round_robin(&[1, 3]), &c, 400),
            vec![100, 300]
        );
    }

    #[test]
    fn round_robin_skips_unusable() {
        let mut c = Fake::new(&[1, 1, 1]);
        c.usable[1] = false;
        assert_eq!(counts(&Selector::round_robin(&[1, 1, 1]), &c, 300)[1], 0);
        c.usable = vec![false; 3];
        assert_eq!(Selector::round_robin(&[1, 1, 1]).select(&c, 0), None);
    }

    #[test]
    fn least_conn_prefers_the_idle_backend_relative_to_weight() {
        let mut c = Fake::new(&[1, 1]);
        c.inflight = vec![3, 0];
        let sel = Selector::least_conn();
        assert_eq!(counts(&sel, &c, 10), vec![0, 10]);
        let mut c = Fake::new(&[4, 1]);
        c.inflight = vec![3, 1];
        assert_eq!(counts(&sel, &c, 10), vec![10, 0]);
    }

    #[test]
    fn least_conn_rotates_ties() {
        let c = Fake::new(&[1, 1, 1]);
        assert_eq!(counts(&Selector::least_conn(), &c, 30), vec![10, 10, 10]);
    }

    #[test]
    fn consistent_hash_is_sticky_and_moves_only_from_a_lost_backend() {
        let names: Vec<String> = (1..=4).map(|i| format!("10.0.0.{i}:80")).collect();
        let sel = Selector::consistent(&names, &[1; 4]);
        let mut c = Fake::new(&[1; 4]);
        let before: Vec<usize> = (0..1000u64)
            .map(|k| {
                sel.select(&c, crate::hash::stable_hash(&k.to_le_bytes()))
                    .unwrap()
            })
            .collect();
        let again: Vec<usize> = (0..1000u64)
            .map(|k| {
                sel.select(&c, crate::hash::stable_hash(&k.to_le_bytes()))
                    .unwrap()
            })
            .collect();
        assert_eq!(before, again);
        let spread = (0..4).map(|b| before.iter().filter(|&&x| x == b).count());
        assert!(
            spread.clone().all(|n| n > 150),
            "uneven: {:?}",
            spread.collect::<Vec<_>>()
        );
        c.usable[2] = false;
        for k in 0..1000u64 {
            let now = sel
                .select(&c, crate::hash::stable_hash(&k.to_le_bytes()))
                .unwrap();
            if before[k as usize] != 2 {
                assert_eq!(
                    now, before[k as usize],
                    "key {k} moved though its backend stayed"
                );
            } else {
                assert_ne!(now, 2);
            }
        }
    }

    #[test]
    fn random_picks_only_usable_and_follows_weights() {
        let mut c = Fake::new(&[1, 1, 2]);
        c.usable[0] = false;
        let n = counts(&Selector::random(&[1, 1, 2]), &c, 4000);
        assert_eq!(n[0], 0);
        assert!(n[2] > n[1], "{n:?}");
    }
}
