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
use std::time::Duration;

use super::encode::Cycle;

/// Cycles waiting to be delivered, oldest first.
#[derive(Debug)]
pub struct OutageBuffer {
    cycles: VecDeque<Cycle>,
    samples: usize,
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
            max_samples,
            max_age,
        }
    }

    /// Add the newest cycle, then drop the oldest ones past either bound.
    pub fn push(&mut self, cycle: Cycle, now_ms: i64) -> Evicted {
        self.samples += cycle.sample_count();
        self.cycles.push_back(cycle);
        let mut evicted = self.evict_expired(now_ms);
        while self.samples > self.max_samples && self.cycles.len() > 1 {
            if let Some(old) = self.cycles.pop_front() {
                self.samples -= old.sample_count();
                evicted.full += old.sample_count();
            }
        }
        evicted
    }

    /// Drop cycles older than `max_age` at `now_ms` (the newest one is kept:
    /// it is the cycle being published now).
    pub fn evict_expired(&mut self, now_ms: i64) -> Evicted {
        let max_age_ms = i64::try_from(self.max_age.as_millis()).unwrap_or(i64::MAX);
        let mut evicted = Evicted::default();
        while self.cycles.len() > 1 {
            let oldest = self.cycles.front().expect("len > 1").timestamp_ms;
            if now_ms.saturating_sub(oldest) <= max_age_ms {
                break;
            }
            if let Some(old) = self.cycles.pop_front() {
                self.samples -= old.sample_count();
                evicted.too_old += old.sample_count();
            }
        }
        evicted
    }

    /// The oldest cycle, next to send.
    pub fn front(&self) -> Option<&Cycle> {
        self.cycles.front()
    }

    /// Remove the oldest cycle (after it was delivered or refused).
    pub fn pop_front(&mut self) -> Option<Cycle> {
        let cycle = self.cycles.pop_front()?;
        self.samples -= cycle.sample_count();
        Some(cycle)
    }

    /// Timestamp of the newest cycle held.
    pub fn newest_timestamp(&self) -> Option<i64> {
        self.cycles.back().map(|c| c.timestamp_ms)
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
        assert_eq!(b.push(cycle(1, 4), 1), Evicted::default());
        assert_eq!(b.push(cycle(2, 4), 2), Evicted::default());
        let e = b.push(cycle(3, 4), 3);
        assert_eq!(e.full, 4);
        assert_eq!(b.front().unwrap().timestamp_ms, 2);
        assert_eq!(b.samples(), 8);
    }

    #[test]
    fn cycles_past_the_age_bound_are_dropped_but_the_newest_stays() {
        let mut b = OutageBuffer::new(100, Duration::from_secs(60));
        b.push(cycle(0, 2), 0);
        b.push(cycle(30_000, 2), 30_000);
        let e = b.push(cycle(70_000, 2), 70_000);
        assert_eq!(e.too_old, 2);
        assert_eq!(b.len(), 2);
        let e = b.evict_expired(1_000_000);
        assert_eq!(e.too_old, 2);
        assert_eq!(b.len(), 1, "the newest cycle is kept");
    }

    #[test]
    fn a_single_oversized_cycle_is_kept() {
        let mut b = OutageBuffer::new(3, Duration::from_secs(60));
        assert_eq!(b.push(cycle(1, 5), 1), Evicted::default());
        assert_eq!(b.samples(), 5);
        assert_eq!(b.pop_front().unwrap().timestamp_ms, 1);
        assert!(b.is_empty());
        assert_eq!(b.samples(), 0);
    }
}
