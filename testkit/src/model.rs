//! The reference model of a series' value: the operations made on it, recorded per
//! writing process slot, and the value a scrape must show computed from that list.
//!
//! It states what the operations mean, not how the cells hold them: a counter is the
//! sum of its adds; a gauge is its last `set` plus the deltas (`inc`/`dec`) made
//! since; a histogram counts each observation in the first bucket whose bound is at
//! least the value (`+Inf` above every bound, and for NaN) and sums the values.
//! Whatever the library keeps per slot, a process's contribution is its own ops in
//! its order, and a scrape adds the contributions of the slots it counts in slot
//! order, which fixes the floating-point result exactly.
//!
//! Besides updates, a test may overwrite one of a slot's values directly (what a
//! dead process left, or a bit pattern): [`Op::Overwrite`] names which value by its
//! place in the series' cells (`docs/layout.md` §5: a counter's one value; a
//! histogram's per-bucket counts then its sum; a gauge's set value, set stamp,
//! delta, delta stamp; slot 0 is [`SHARED`]). An overwrite of a stamp makes the
//! gauge's value unknown ([`Expected::Unknown`]): no contract says what a scrape
//! shows then.

use std::collections::BTreeMap;

/// The shared slot (0): no process writes its values; its first gauge cell holds
/// the stamp of the last `set`, the rest of its cells are unused.
pub const SHARED: u32 = 0;

/// What a series is.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Counter,
    Gauge,
    /// Bucket bounds, increasing, without the implied `+Inf`.
    Histogram(Vec<f64>),
}

/// One operation on a series, by the process of one slot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    /// `counter:inc(v)`.
    Add(f64),
    /// `gauge:set(v)`.
    Set(f64),
    /// `gauge:inc(v)` / `gauge:dec(-v)`.
    Delta(f64),
    /// `histogram:observe(v)`.
    Observe(f64),
    /// The slot's value at this place of the series' cells becomes `v`.
    Overwrite(u32, f64),
}

/// What a scrape must show for a series.
#[derive(Clone, Debug, PartialEq)]
pub enum Expected {
    One(f64),
    /// Cumulative bucket counts (the last is `+Inf`, equal to the count) and the sum.
    Histogram(Vec<f64>, f64),
    /// Its cells were given values no contract interprets.
    Unknown,
}

/// A series' recorded operations.
#[derive(Clone, Debug)]
pub struct Series {
    pub kind: Kind,
    /// (slot, op), in the order made.
    pub ops: Vec<(u32, Op)>,
}

/// A gauge's state in one slot, replayed from the ops.
#[derive(Clone, Copy, Default)]
struct GaugeSlot {
    /// The value of this slot's last set.
    set: f64,
    /// The deltas it made since the set it last saw, and that set's number (0:
    /// before any set).
    delta: f64,
    epoch: u64,
}

impl Series {
    pub fn new(kind: Kind) -> Series {
        Series { kind, ops: Vec::new() }
    }

    pub fn record(&mut self, slot: u32, op: Op) {
        self.ops.push((slot, op));
    }

    fn ops_of(&self, slot: u32) -> impl Iterator<Item = &Op> {
        self.ops.iter().filter(move |(s, _)| *s == slot).map(|(_, op)| op)
    }

    /// A counter's or histogram's contribution of one slot: one value per cell
    /// (a histogram: per-bucket counts, not cumulative, then the sum).
    pub fn slot_values(&self, slot: u32) -> Vec<f64> {
        let n = match &self.kind {
            Kind::Histogram(b) => b.len() + 2,
            _ => 1,
        };
        let mut v = vec![0.0; n];
        for op in self.ops_of(slot) {
            match (op, &self.kind) {
                (Op::Add(x), Kind::Counter) => v[0] += x,
                (Op::Observe(x), Kind::Histogram(bounds)) => {
                    v[bounds.iter().position(|b| x <= b).unwrap_or(bounds.len())] += 1.0;
                    v[n - 1] += x;
                }
                (Op::Overwrite(i, x), Kind::Counter | Kind::Histogram(_)) if (*i as usize) < n => v[*i as usize] = *x,
                (op, kind) => panic!("model: {op:?} on a {kind:?}"),
            }
        }
        v
    }

    /// The value a scrape counting `slots` (in increasing order) must show.
    pub fn expected(&self, slots: &[u32]) -> Expected {
        match &self.kind {
            Kind::Counter => Expected::One(slots.iter().fold(0.0, |a, &s| a + self.slot_values(s)[0])),
            Kind::Histogram(bounds) => {
                let per: Vec<Vec<f64>> = slots.iter().map(|&s| self.slot_values(s)).collect();
                let total = |i: usize| per.iter().fold(0.0, |a, v| a + v[i]);
                let mut acc = 0.0;
                let cum = (0..=bounds.len())
                    .map(|i| {
                        acc += total(i);
                        acc
                    })
                    .collect();
                Expected::Histogram(cum, total(bounds.len() + 1))
            }
            Kind::Gauge => self.gauge(slots),
        }
    }

    fn gauge(&self, slots: &[u32]) -> Expected {
        let mut state: BTreeMap<u32, GaugeSlot> = BTreeMap::new();
        // The slot of the last set and the number of sets so far.
        let mut last: Option<u32> = None;
        let mut epoch = 0u64;
        for &(slot, op) in &self.ops {
            if slot == SHARED {
                match op {
                    Op::Overwrite(0, _) => return Expected::Unknown,
                    Op::Overwrite(..) => continue,
                    op => panic!("model: {op:?} by the shared slot"),
                }
            }
            let st = state.entry(slot).or_default();
            match op {
                Op::Set(v) => {
                    epoch += 1;
                    st.set = v;
                    last = Some(slot);
                }
                Op::Delta(v) => {
                    if st.epoch != epoch {
                        st.delta = 0.0;
                        st.epoch = epoch;
                    }
                    st.delta += v;
                }
                Op::Overwrite(0, v) => st.set = v,
                Op::Overwrite(2, v) => st.delta = v,
                Op::Overwrite(..) => return Expected::Unknown,
                op => panic!("model: {op:?} on a gauge"),
            }
        }
        let mut v = last.map_or(0.0, |s| state[&s].set);
        for s in slots {
            if let Some(st) = state.get(s).filter(|st| st.epoch == epoch) {
                v += st.delta;
            }
        }
        Expected::One(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauge_is_the_last_set_plus_the_deltas_since() {
        let mut g = Series::new(Kind::Gauge);
        g.record(1, Op::Delta(5.0));
        g.record(2, Op::Delta(1.0));
        assert_eq!(g.expected(&[1, 2]), Expected::One(6.0));
        g.record(2, Op::Set(10.0));
        assert_eq!(g.expected(&[1, 2]), Expected::One(10.0));
        g.record(1, Op::Delta(-3.0));
        g.record(2, Op::Delta(0.5));
        assert_eq!(g.expected(&[1, 2]), Expected::One(7.5));
        assert_eq!(g.expected(&[2]), Expected::One(10.5), "slot 1 not counted");
        g.record(SHARED, Op::Overwrite(2, 1.0));
        assert_eq!(g.expected(&[1, 2]), Expected::One(7.5), "an unused cell of the shared slot");
        g.record(3, Op::Overwrite(1, 1.0));
        assert_eq!(g.expected(&[1, 2]), Expected::Unknown);
    }

    #[test]
    fn histogram_buckets_are_upper_inclusive_and_nan_counts_in_inf() {
        let mut h = Series::new(Kind::Histogram(vec![1.0, 2.0]));
        for v in [0.5, 1.0, 1.5, 3.0, f64::NAN] {
            h.record(1, Op::Observe(v));
        }
        h.record(2, Op::Observe(2.0));
        let Expected::Histogram(cum, sum) = h.expected(&[1, 2]) else { panic!() };
        assert_eq!(cum, vec![2.0, 4.0, 6.0]);
        assert!(sum.is_nan());
    }
}
