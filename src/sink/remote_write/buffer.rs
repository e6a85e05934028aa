//! The outage buffer: cycles not yet delivered to one target, oldest first.
//!
//! While a target is down, each cycle is kept here and sent in order once it
//! is back, so an outage shorter than the bounds leaves no gap in the graphs.
//! Two bounds keep memory and usefulness in check, and when either is passed
//! the oldest cycles go first (and are counted as dropped):
//!
//! - `max_samples`: total samples held (memory);
//! - `max_age`: how old a cycle may be. Prometheus refuses samples older than
//!   about one hour as "out of bounds" (its head block covers roughly the last
//!   hour), and refuses the whole request with them, so an older cycle could
//!   never be accepted and would only block the ones behind it.
//!
//! The newest cycle is always kept, even when it alone passes `max_samples`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use super::encode::Cycle;

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
    next_seq: u64,
    max_samples: usize,
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
    pub fn new(max_samples: usize, max_age: Duration) -> Self {
        OutageBuffer {
            cycles: VecDeque::new(),
            samples: 0,
            next_seq: 0,
            max_samples,
            max_age,
        }
    }

    /// Add the newest cycle, then drop the oldest ones past either bound.
    /// Returns the cycle's sequence number and what was dropped.
    pub fn push(&mut self, cycle: Cycle, now_ms: i64) -> (u64, Evicted) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.samples += cycle.sample_count();
        self.cycles.push_back(Queued {
            seq,
            cycle: Arc::new(cycle),
        });
        let mut evicted = self.evict_expired(now_ms);
        while self.samples > self.max_samples && self.cycles.len() > 1 {
            if let Some(old) = self.pop_front() {
                evicted.full += old.cycle.sample_count();
            }
        }
        (seq, evicted)
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

    /// Remove the oldest cycle.
    pub fn pop_front(&mut self) -> Option<Queued> {
        let queued = self.cycles.pop_front()?;
        self.samples -= queued.cycle.sample_count();
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
        let mut b = OutageBuffer::new(10, Duration::from_secs(3600));
        assert_eq!(b.push(cycle(1, 4), 1), (0, Evicted::default()));
        assert_eq!(b.push(cycle(2, 4), 2), (1, Evicted::default()));
        let (seq, e) = b.push(cycle(3, 4), 3);
        assert_eq!((seq, e.full), (2, 4));
        assert_eq!(b.oldest_timestamp(), Some(2));
        assert_eq!(b.samples(), 8);
    }

    #[test]
    fn cycles_past_the_age_bound_are_dropped_but_the_newest_stays() {
        let mut b = OutageBuffer::new(100, Duration::from_secs(60));
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
        let mut b = OutageBuffer::new(3, Duration::from_secs(60));
        assert_eq!(b.push(cycle(1, 5), 1), (0, Evicted::default()));
        assert_eq!(b.samples(), 5);
        assert_eq!(b.pop_front().unwrap().cycle.timestamp_ms, 1);
        assert!(b.is_empty());
        assert_eq!(b.samples(), 0);
    }

    #[test]
    fn batches_take_the_oldest_cycles_up_to_the_bounds_and_at_least_one() {
        let mut b = OutageBuffer::new(1000, Duration::from_secs(3600));
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
