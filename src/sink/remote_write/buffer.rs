//! The outage buffer: cycles not yet delivered to one target, oldest first.
//!
//! While a target is down, each cycle is kept here and sent in order once it
//! is back, so an outage shorter than the bounds leaves no gap in the graphs.
//! Two bounds keep memory and usefulness in check, and when either is passed
//! the oldest cycles go first (and are counted as dropped):
//!
//! - `max_samples`: total samples held;
//! - `max_bytes`: the memory the buffer holds, counted as it goes (see
//!   [`OutageBuffer::bytes`]);
//! - `max_age`: how old a cycle may be. Prometheus refuses samples older than
//!   about one hour as "out of bounds" (its head block covers roughly the last
//!   hour), and refuses the whole request with them, so an older cycle could
//!   never be accepted and would only block the ones behind it.
//!
//! The newest cycle is always kept, even when it alone passes a bound.
//!
//! Label sets are interned: a series that repeats every cycle is stored
//! once, whatever the number of buffered cycles that carry it, so a cycle
//! costs a pointer, its metadata and its value per sample.

use std::collections::{HashMap, VecDeque};
use std::mem::size_of;
use std::sync::Arc;
use std::time::Duration;

use super::encode::{Cycle, Point, SeriesLabels};

/// Heap bytes of one interned label set: the `Arc`'s counts, the vector
/// and every name and value.
fn label_set_bytes(labels: &SeriesLabels) -> usize {
    2 * size_of::<usize>()
        + size_of::<Vec<(String, String)>>()
        + labels.capacity() * size_of::<(String, String)>()
        + labels
            .iter()
            .map(|(k, v)| k.capacity() + v.capacity())
            .sum::<usize>()
}

/// Heap bytes of one buffered cycle, its label sets aside: the `Arc`'s
/// counts, the cycle and its points.
fn cycle_bytes(cycle: &Cycle) -> usize {
    2 * size_of::<usize>() + size_of::<Cycle>() + cycle.points.capacity() * size_of::<Point>()
}

/// What one entry of the intern table costs: the key, the count and the
/// hash table's control byte.
const INTERN_ENTRY_BYTES: usize = size_of::<(SeriesLabels, u32)>() + 1;

/// A buffered cycle and its place in the sequence of cycles taken in.
#[derive(Debug, Clone)]
pub struct Queued {
    /// Increases by one per cycle taken in: lets the sender remove exactly
    /// what it delivered even if older cycles were evicted meanwhile.
    pub seq: u64,
    /// Shared with the sender while a request is in flight, so sending
    /// never holds the buffer's lock.
    pub cycle: Arc<Cycle>,
}

/// Cycles waiting to be delivered, oldest first.
#[derive(Debug)]
pub struct OutageBuffer {
    cycles: VecDeque<Queued>,
    samples: usize,
    /// See [`OutageBuffer::bytes`].
    bytes: usize,
    /// Every label set the buffered cycles use, with how many samples use it.
    interned: HashMap<SeriesLabels, u32>,
    next_seq: u64,
    max_samples: usize,
    max_bytes: usize,
    max_age: Duration,
}

/// Samples dropped by one call, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    /// Dropped because the buffer held more than `max_samples`.
    pub full: usize,
    /// Dropped because the cycle was older than `max_age`.
    pub too_old: usize,
}

impl OutageBuffer {
    pub fn new(max_samples: usize, max_bytes: usize, max_age: Duration) -> Self {
        OutageBuffer {
            cycles: VecDeque::new(),
            samples: 0,
            bytes: 0,
            interned: HashMap::new(),
            next_seq: 0,
            max_samples,
            max_bytes,
            max_age,
        }
    }

    /// Add the newest cycle, its label sets interned, then drop the oldest
    /// cycles past any bound. Returns the cycle's sequence number and what
    /// was dropped.
    pub fn push(&mut self, mut cycle: Cycle, now_ms: i64) -> (u64, Evicted) {
        for point in &mut cycle.points {
            match self.interned.get_key_value(&point.labels) {
                Some((shared, _)) => point.labels = shared.clone(),
                None => {
                    self.bytes += label_set_bytes(&point.labels) + INTERN_ENTRY_BYTES;
                }
            }
            *self.interned.entry(point.labels.clone()).or_default() += 1;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.samples += cycle.sample_count();
        self.bytes += cycle_bytes(&cycle) + size_of::<Queued>();
        self.cycles.push_back(Queued {
            seq,
            cycle: Arc::new(cycle),
        });
        let mut evicted = self.evict_expired(now_ms);
        while (self.samples > self.max_samples || self.bytes > self.max_bytes)
            && self.cycles.len() > 1
        {
            if let Some(old) = self.pop_front() {
                evicted.full += old.cycle.sample_count();
            }
        }
        (seq, evicted)
    }

    /// Every buffered cycle, oldest first.
    pub fn cycles(&self) -> impl Iterator<Item = &Cycle> {
        self.cycles.iter().map(|q| q.cycle.as_ref())
    }

    /// The newest cycle, as buffered (its label sets interned).
    pub fn back(&self) -> Option<&Arc<Cycle>> {
        self.cycles.back().map(|q| &q.cycle)
    }

    /// Heap bytes the buffer holds: every buffered cycle and its points,
    /// and each label set once, with its entry in the intern table. The
    /// tables' spare capacity is not counted.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Drop cycles older than `max_age` at `now_ms` (the newest one is kept:
    /// it is the cycle being published now).
    pub fn evict_expired(&mut self, now_ms: i64) -> Evicted {
        let max_age_ms = i64::try_from(self.max_age.as_millis()).unwrap_or(i64::MAX);
        let mut evicted = Evicted::default();
        while self.cycles.len() > 1 {
            let oldest = self.cycles.front().expect("len > 1").cycle.timestamp_ms;
            if now_ms.saturating_sub(oldest) <= max_age_ms {
                break;
            }
            if let Some(old) = self.pop_front() {
                evicted.too_old += old.cycle.sample_count();
            }
        }
        evicted
    }

    /// The oldest cycles, next to send: at least one, then more while the
    /// total stays within `max_samples` samples and `max_cycles` cycles.
    pub fn batch(&self, max_samples: usize, max_cycles: usize) -> Vec<Queued> {
        let mut batch = Vec::new();
        let mut samples = 0;
        for queued in &self.cycles {
            let n = queued.cycle.sample_count();
            if !batch.is_empty() && (samples + n > max_samples || batch.len() >= max_cycles) {
                break;
            }
            samples += n;
            batch.push(queued.clone());
        }
        batch
    }

    /// The oldest cycle.
    pub fn front(&self) -> Option<&Queued> {
        self.cycles.front()
    }

    /// Remove the oldest cycle, releasing the label sets only it used.
    pub fn pop_front(&mut self) -> Option<Queued> {
        let queued = self.cycles.pop_front()?;
        self.samples -= queued.cycle.sample_count();
        self.bytes -= cycle_bytes(&queued.cycle) + size_of::<Queued>();
        for point in &queued.cycle.points {
            if let Some(uses) = self.interned.get_mut(&point.labels) {
                *uses -= 1;
                if *uses == 0 {
                    self.interned.remove(&point.labels);
                    self.bytes -= label_set_bytes(&point.labels) + INTERN_ENTRY_BYTES;
                }
            }
        }
        Some(queued)
    }

    /// Remove every cycle up to and including `seq` (delivered or refused);
    /// returns how many samples went.
    pub fn remove_through(&mut self, seq: u64) -> usize {
        let mut removed = 0;
        while self.cycles.front().is_some_and(|q| q.seq <= seq) {
            if let Some(q) = self.pop_front() {
                removed += q.cycle.sample_count();
            }
        }
        removed
    }

    /// Timestamp of the oldest cycle held.
    pub fn oldest_timestamp(&self) -> Option<i64> {
        self.cycles.front().map(|q| q.cycle.timestamp_ms)
    }

    /// Timestamp of the newest cycle held.
    pub fn newest_timestamp(&self) -> Option<i64> {
        self.cycles.back().map(|q| q.cycle.timestamp_ms)
    }

    /// Whether cycle `seq` is still waiting.
    pub fn holds(&self, seq: u64) -> bool {
        self.cycles.iter().any(|q| q.seq == seq)
    }

    pub fn samples(&self) -> usize {
        self.samples
    }

    pub fn len(&self) -> usize {
        self.cycles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cycles.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::MetricType;
    use crate::sink::remote_write::encode::{Point, SeriesMeta};
    use std::sync::Arc;

    fn cycle(ts: i64, n: usize) -> Cycle {
        let meta = SeriesMeta {
            family: "m",
            metric_type: MetricType::Gauge,
            help: "",
        };
        Cycle {
            timestamp_ms: ts,
            points: (0..n)
                .map(|i| Point {
                    labels: Arc::new(vec![("__name__".into(), format!("m{i}"))]),
                    meta,
                    value: 1.0,
                })
                .collect(),
        }
    }

    #[test]
    fn oldest_cycles_go_first_when_full() {
        let mut b = OutageBuffer::new(10, usize::MAX, Duration::from_secs(3600));
        assert_eq!(b.push(cycle(1, 4), 1), (0, Evicted::default()));
        assert_eq!(b.push(cycle(2, 4), 2), (1, Evicted::default()));
        let (seq, e) = b.push(cycle(3, 4), 3);
        assert_eq!((seq, e.full), (2, 4));
        assert_eq!(b.oldest_timestamp(), Some(2));
        assert_eq!(b.samples(), 8);
    }

    #[test]
    fn cycles_past_the_age_bound_are_dropped_but_the_newest_stays() {
        let mut b = OutageBuffer::new(100, usize::MAX, Duration::from_secs(60));
        b.push(cycle(0, 2), 0);
        b.push(cycle(30_000, 2), 30_000);
        let (_, e) = b.push(cycle(70_000, 2), 70_000);
        assert_eq!(e.too_old, 2);
        assert_eq!(b.len(), 2);
        let e = b.evict_expired(1_000_000);
        assert_eq!(e.too_old, 2);
        assert_eq!(b.len(), 1, "the newest cycle is kept");
    }

    #[test]
    fn a_single_oversized_cycle_is_kept() {
        let mut b = OutageBuffer::new(3, usize::MAX, Duration::from_secs(60));
        assert_eq!(b.push(cycle(1, 5), 1), (0, Evicted::default()));
        assert_eq!(b.samples(), 5);
        assert_eq!(b.pop_front().unwrap().cycle.timestamp_ms, 1);
        assert!(b.is_empty());
        assert_eq!(b.samples(), 0);
    }

    #[test]
    fn repeated_label_sets_are_stored_once_and_released_with_their_last_cycle() {
        let mut b = OutageBuffer::new(1000, usize::MAX, Duration::from_secs(3600));
        b.push(cycle(1, 3), 1);
        let one = b.bytes();
        b.push(cycle(2, 3), 2);
        let two = b.bytes();
        let first = b.front().unwrap().cycle.clone();
        let second = b.back().unwrap().clone();
        for (a, c) in first.points.iter().zip(&second.points) {
            assert!(Arc::ptr_eq(&a.labels, &c.labels), "one shared label set");
        }
        // The second cycle costs its points, not its labels again.
        assert!(two - one < one, "{one} then {two}");
        b.pop_front();
        b.pop_front();
        assert_eq!(b.bytes(), 0);
    }

    #[test]
    fn the_byte_bound_drops_the_oldest_cycles() {
        let mut probe = OutageBuffer::new(1000, usize::MAX, Duration::from_secs(3600));
        probe.push(cycle(1, 4), 1);
        probe.push(cycle(2, 4), 2);
        let two_cycles = probe.bytes();
        let mut b = OutageBuffer::new(1000, two_cycles, Duration::from_secs(3600));
        for ts in 1..=5 {
            b.push(cycle(ts, 4), ts);
        }
        assert_eq!(b.len(), 2);
        assert_eq!(b.oldest_timestamp(), Some(4));
        assert!(b.bytes() <= two_cycles);
    }

    #[test]
    fn batches_take_the_oldest_cycles_up_to_the_bounds_and_at_least_one() {
        let mut b = OutageBuffer::new(1000, usize::MAX, Duration::from_secs(3600));
        for ts in 1..=5 {
            b.push(cycle(ts, 4), ts);
        }
        let ts = |batch: &[Queued]| {
            batch
                .iter()
                .map(|q| q.cycle.timestamp_ms)
                .collect::<Vec<_>>()
        };
        assert_eq!(ts(&b.batch(10, 100)), [1, 2]);
        assert_eq!(ts(&b.batch(100, 3)), [1, 2, 3]);
        assert_eq!(ts(&b.batch(1, 100)), [1], "one cycle even past the bound");
        // Removing through a sequence number works even after evictions.
        b.pop_front();
        assert_eq!(b.remove_through(2), 8, "cycles 1 and 2 (4 samples each)");
        assert_eq!(b.oldest_timestamp(), Some(4));
        assert!(b.holds(4) && !b.holds(2));
    }
}
