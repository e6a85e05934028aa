//! The Prometheus remote-write sink: pushes each cycle to one target
//! (Prometheus, Thanos, Mimir, VictoriaMetrics), in Remote-Write 1.0
//! (<https://prometheus.io/docs/specs/remote_write_spec/>) or 2.0
//! (<https://prometheus.io/docs/specs/prw/remote_write_spec_2_0/>).
//!
//! What one `publish` does:
//! 1. prepare the snapshot (`encode.rs`): sorted, unique, valid labels;
//!    invalid series dropped and counted;
//! 2. add a staleness marker for every series of the previous cycle that is
//!    gone now, so an ended job disappears from instant queries at once
//!    instead of lingering for the 5-minute lookback;
//! 3. append the cycle to the outage buffer (`buffer.rs`);
//! 4. send buffered cycles oldest first, one request each, each with the
//!    retry policy (`retry.rs`) within `remote_timeout`; stop at the first
//!    one that still fails (a newer one must not overtake it: receivers
//!    refuse out-of-order samples).
//!
//! A publish never takes longer than [`PUBLISH_TIMEOUT_FACTOR`] ×
//! `remote_timeout` (plus a little slack to read an answer), so a dead target
//! cannot hold a cycle; what was not delivered stays buffered for the next
//! one. Every sink owns all its state: targets never wait on each other.

pub mod buffer;
pub mod config;
pub mod encode;
pub mod retry;
pub mod service;

/// Types generated from `proto/` (prost).
pub mod proto {
    /// Remote-Write 1.0 (`prometheus.WriteRequest`).
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/prometheus.rs"));
    }
    /// Remote-Write 2.0 (`io.prometheus.write.v2.Request`).
    pub mod v2 {
        include!(concat!(env!("OUT_DIR"), "/io.prometheus.write.v2.rs"));
    }
}

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;

pub use config::{Protocol, RemoteWriteConfig};
use encode::{Cycle, Point, SeriesLabels, SeriesMeta, WireVersion};
use retry::{Attempt, GaveUp, RetryPolicy, Verdict};

use crate::error::Error;
use crate::metrics::{MetricFamily, Snapshot};
use crate::sink::Sink;

/// Samples delivered (2xx).
pub const SAMPLES_SENT_TOTAL: &str = "vsphere_ci_user_sessions_remote_write_samples_sent_total";
/// Samples of requests that still failed when a publish gave up on them;
/// they stay buffered and are counted again at each failed publish.
pub const SAMPLES_FAILED_TOTAL: &str = "vsphere_ci_user_sessions_remote_write_samples_failed_total";
/// Samples sent again after a failed attempt.
pub const SAMPLES_RETRIED_TOTAL: &str =
    "vsphere_ci_user_sessions_remote_write_samples_retried_total";
/// Samples never delivered, by `reason`: `rejected` (a 4xx), `buffer_full`,
/// `too_old`, `invalid_series`, `out_of_order` (a cycle not newer than the
/// last), `unsupported` (`protocol: v2` and the receiver does not speak 2.0).
pub const SAMPLES_DROPPED_TOTAL: &str =
    "vsphere_ci_user_sessions_remote_write_samples_dropped_total";
/// Samples waiting in the outage buffer.
pub const BUFFERED_SAMPLES: &str = "vsphere_ci_user_sessions_remote_write_buffered_samples";
/// When a request last succeeded (Unix seconds; 0 before the first).
pub const LAST_SUCCESS_TIMESTAMP_SECONDS: &str =
    "vsphere_ci_user_sessions_remote_write_last_success_timestamp_seconds";
/// Requests by HTTP status `code` (`error` when no answer came).
pub const REQUESTS_TOTAL: &str = "vsphere_ci_user_sessions_remote_write_requests_total";

/// Why a cycle sent with `protocol: v2` fails when the receiver answers a
/// 2xx without `X-Prometheus-Remote-Write-Samples-Written`, which every 2.0
/// receiver must send: a 1.0-only one reads the 2.0 body as an empty 1.0
/// request, answers 204 and writes nothing.
pub const UNSUPPORTED_V2_MESSAGE: &str = "receiver does not support Remote-Write 2.0 \
     (no X-Prometheus-Remote-Write-Samples-Written header); use protocol: v1 or auto";

/// A publish (or shutdown) spends at most this many `remote_timeout`s: one
/// for the oldest buffered cycle and one more to catch up on newer ones.
pub const PUBLISH_TIMEOUT_FACTOR: u32 = 2;

const DROP_REASONS: [&str; 6] = [
    "rejected",
    "buffer_full",
    "too_old",
    "invalid_series",
    "out_of_order",
    "unsupported",
];

#[derive(Debug, Clone, Copy)]
enum DropReason {
    Rejected = 0,
    BufferFull = 1,
    TooOld = 2,
    InvalidSeries = 3,
    OutOfOrder = 4,
    Unsupported = 5,
}

/// Counters read by `self_metrics` without taking the state lock.
#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    dropped: [AtomicU64; DROP_REASONS.len()],
    buffered: AtomicU64,
    last_success_ms: AtomicI64,
    requests: std::sync::Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    fn drop_samples(&self, reason: DropReason, n: usize) {
        self.dropped[reason as usize].fetch_add(n as u64, Ordering::Relaxed);
    }

    fn request(&self, code: &str) {
        let mut map = self
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *map.entry(code.to_string()).or_default() += 1;
    }
}

/// What this target is known to speak.
#[derive(Debug)]
struct Negotiation {
    /// The message sent now: v2 for `v2` and `auto` until a fallback.
    wire: WireVersion,
    /// A v2 request was confirmed with `Samples-Written`: from then on a 400
    /// is a real refusal, not a sign of a 1.0-only receiver.
    v2_confirmed: bool,
}

/// Mutable state, behind one lock per sink.
#[derive(Debug)]
struct State {
    buffer: buffer::OutageBuffer,
    /// Series of the last cycle taken in (delivered or buffered), for
    /// staleness markers.
    live: HashMap<SeriesLabels, SeriesMeta>,
    /// Timestamp of the last cycle taken in: later ones must be newer.
    last_timestamp_ms: Option<i64>,
    negotiation: Negotiation,
    /// A receiver's `Retry-After` reaching past a publish: wait for it.
    not_before: Option<Instant>,
}

/// Pushes snapshots to one remote-write target.
#[derive(Debug)]
pub struct RemoteWriteSink {
    target: String,
    protocol: Protocol,
    external_labels: Vec<(String, String)>,
    remote_timeout: Duration,
    policy: RetryPolicy,
    service: service::HttpService,
    state: tokio::sync::Mutex<State>,
    counters: Counters,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl RemoteWriteSink {
    /// One sink per target. `external_labels` are added to every series
    /// that lacks that label name (as Prometheus does); they must be valid
    /// and unique.
    pub fn new(
        config: RemoteWriteConfig,
        external_labels: Vec<(String, String)>,
    ) -> Result<Self, Error> {
        config.validate()?;
        let external_labels = encode::normalise_external_labels(external_labels)?;
        let target = config
            .name
            .clone()
            .unwrap_or_else(|| config::redact_url(&config.url));
        let protocol = config.effective_protocol();
        let service = service::HttpService::new(&config, target.clone())?;
        let wire = match protocol {
            Protocol::V1 => WireVersion::V1,
            Protocol::V2 | Protocol::Auto => WireVersion::V2,
        };
        Ok(RemoteWriteSink {
            target,
            protocol,
            external_labels,
            remote_timeout: config.remote_timeout,
            policy: RetryPolicy {
                min_backoff: config.retry.min_backoff,
                max_backoff: config.retry.max_backoff,
            },
            service,
            state: tokio::sync::Mutex::new(State {
                buffer: buffer::OutageBuffer::new(
                    config.max_buffered_samples,
                    config.max_buffered_age,
                ),
                live: HashMap::new(),
                last_timestamp_ms: None,
                negotiation: Negotiation {
                    wire,
                    v2_confirmed: false,
                },
                not_before: None,
            }),
            counters: Counters::default(),
        })
    }

    /// `name` from the config, or the URL without credentials: for logs and
    /// the `target` label.
    pub fn target_name(&self) -> &str {
        &self.target
    }

    /// The longest a publish or shutdown takes.
    pub fn publish_timeout(&self) -> Duration {
        self.remote_timeout * PUBLISH_TIMEOUT_FACTOR
    }

    fn error(&self, status: Option<u16>, message: impl Into<String>) -> Error {
        Error::RemoteWrite {
            target: self.target.clone(),
            status,
            message: message.into(),
        }
    }

    /// Take a cycle into the buffer, adding staleness markers for the series
    /// of the previous cycle that are gone.
    fn take_in(&self, state: &mut State, mut cycle: Cycle) -> Result<(), Error> {
        if let Some(last) = state.last_timestamp_ms
            && cycle.timestamp_ms <= last
        {
            self.counters
                .drop_samples(DropReason::OutOfOrder, cycle.sample_count());
            tracing::warn!(
                target_name = %self.target,
                timestamp_ms = cycle.timestamp_ms,
                last_timestamp_ms = last,
                "Cycle is not newer than the previous one, dropped"
            );
            return Err(self.error(
                None,
                format!(
                    "cycle timestamp {} is not after the previous one ({last}); receivers would refuse it",
                    cycle.timestamp_ms
                ),
            ));
        }
        let mut next_live: HashMap<SeriesLabels, SeriesMeta> =
            HashMap::with_capacity(cycle.points.len());
        for p in &cycle.points {
            next_live.insert(p.labels.clone(), p.meta);
        }
        let mut ended: Vec<Point> = state
            .live
            .iter()
            .filter(|(labels, _)| !next_live.contains_key(*labels))
            .map(|(labels, meta)| Point {
                labels: labels.clone(),
                meta: *meta,
                value: encode::stale_nan(),
            })
            .collect();
        // Deterministic order, so resends and tests see the same request.
        ended.sort_by(|a, b| a.labels.cmp(&b.labels));
        cycle.points.extend(ended);
        state.live = next_live;
        state.last_timestamp_ms = Some(cycle.timestamp_ms);
        let evicted = state.buffer.push(cycle, now_ms());
        self.count_evicted(evicted);
        Ok(())
    }

    fn count_evicted(&self, evicted: buffer::Evicted) {
        if evicted.full > 0 {
            self.counters
                .drop_samples(DropReason::BufferFull, evicted.full);
            tracing::warn!(target_name = %self.target, samples = evicted.full,
                "Outage buffer full, oldest cycles dropped");
        }
        if evicted.too_old > 0 {
            self.counters
                .drop_samples(DropReason::TooOld, evicted.too_old);
            tracing::warn!(target_name = %self.target, samples = evicted.too_old,
                "Buffered cycles too old for the receiver, dropped");
        }
    }

    /// Send buffered cycles oldest first until the buffer is empty, a cycle
    /// still fails, or `deadline` comes. `current` is the timestamp of the
    /// cycle the caller cares about: its refusal is reported as an error.
    async fn drain(&self, state: &mut State, deadline: Instant, current: i64) -> Result<(), Error> {
        let evicted = state.buffer.evict_expired(now_ms());
        self.count_evicted(evicted);
        let mut result = Ok(());
        if let Some(not_before) = state.not_before {
            if not_before >= deadline {
                self.set_buffered(state);
                return Err(self.error(
                    Some(429),
                    "the receiver asked to wait (Retry-After); cycles stay buffered",
                ));
            }
            tokio::time::sleep_until(not_before).await;
            state.not_before = None;
        }
        loop {
            let State {
                buffer,
                negotiation,
                ..
            } = &mut *state;
            let Some(cycle) = buffer.front() else {
                break;
            };
            let samples = cycle.sample_count();
            let timestamp_ms = cycle.timestamp_ms;
            let request_deadline = deadline.min(Instant::now() + self.remote_timeout);
            match self.deliver(cycle, negotiation, request_deadline).await {
                Ok(()) => {
                    buffer.pop_front();
                    self.counters
                        .sent
                        .fetch_add(samples as u64, Ordering::Relaxed);
                    self.counters
                        .last_success_ms
                        .store(now_ms(), Ordering::Relaxed);
                }
                Err((
                    GaveUp {
                        error,
                        retriable: false,
                        ..
                    },
                    reason,
                )) => {
                    buffer.pop_front();
                    self.counters.drop_samples(reason, samples);
                    tracing::warn!(target_name = %self.target, error = %error, samples,
                        timestamp_ms, "Remote-write request refused, samples dropped");
                    if timestamp_ms == current {
                        result = Err(error);
                    }
                }
                Err((
                    GaveUp {
                        error, not_before, ..
                    },
                    _,
                )) => {
                    self.counters
                        .failed
                        .fetch_add(samples as u64, Ordering::Relaxed);
                    state.not_before = not_before;
                    tracing::warn!(target_name = %self.target, error = %error,
                        buffered_cycles = state.buffer.len(),
                        "Remote-write target unavailable, cycles stay buffered");
                    result = Err(error);
                    break;
                }
            }
        }
        self.set_buffered(state);
        result
    }

    fn set_buffered(&self, state: &State) {
        self.counters
            .buffered
            .store(state.buffer.samples() as u64, Ordering::Relaxed);
    }

    /// One cycle, with retries and protocol fallback, until `deadline`. A
    /// failure comes with the reason to count its samples under, should it
    /// be final.
    async fn deliver(
        &self,
        cycle: &Cycle,
        negotiation: &mut Negotiation,
        deadline: Instant,
    ) -> Result<(), (GaveUp, DropReason)> {
        let samples = cycle.sample_count();
        // Atomics rather than Cells: the future must be Send. Only this
        // task touches them.
        let wire_v1 = AtomicBool::new(negotiation.wire == WireVersion::V1);
        let confirmed = AtomicBool::new(negotiation.v2_confirmed);
        let unsupported = AtomicBool::new(false);
        // Each version is encoded at most once per cycle and only when
        // needed (v1 in auto mode only after a fallback); retries resend the
        // same bytes.
        let bodies: [OnceLock<Result<Bytes, String>>; 2] = [OnceLock::new(), OnceLock::new()];
        let bodies = &bodies;
        let result = self
            .policy
            .run(deadline, |attempt, left| {
                let wire_v1 = &wire_v1;
                let confirmed = &confirmed;
                let unsupported = &unsupported;
                async move {
                    let version = if wire_v1.load(Ordering::Relaxed) {
                        WireVersion::V1
                    } else {
                        WireVersion::V2
                    };
                    let body = bodies[version as usize].get_or_init(|| {
                        encode::compress(&encode::encode(cycle, version))
                            .map(Bytes::from)
                            .map_err(|e| format!("snappy compression failed: {e}"))
                    });
                    let body = match body {
                        Ok(body) => body.clone(),
                        Err(message) => return Attempt::Fail(self.error(None, message.clone())),
                    };
                    if attempt > 0 {
                        self.counters
                            .retried
                            .fetch_add(samples as u64, Ordering::Relaxed);
                    }
                    let reply = match self.service.send(body, version, left).await {
                        Ok(reply) => reply,
                        Err(error) => {
                            self.counters.request("error");
                            tracing::debug!(target_name = %self.target, error = %error,
                                "Remote-write request got no answer");
                            return Attempt::Retry { error, after: None };
                        }
                    };
                    self.counters.request(&reply.status.to_string());
                    tracing::debug!(target_name = %self.target, protocol = version.as_str(),
                        samples, status = reply.status, "Remote-write request");
                    let auto = self.protocol == Protocol::Auto;
                    let error = || {
                        self.error(
                            Some(reply.status),
                            format!("HTTP {}: {}", reply.status, reply.body),
                        )
                    };
                    match retry::classify(reply.status) {
                        Verdict::Delivered => {
                            if version == WireVersion::V2 {
                                if reply.samples_written.is_some() {
                                    confirmed.store(true, Ordering::Relaxed);
                                } else if auto {
                                    // A 1.0-only receiver decodes a 2.0 body as an
                                    // empty 1.0 message and says 204: nothing was
                                    // written. Resend as 1.0 (a receiver that did
                                    // write it takes the same samples again).
                                    tracing::warn!(target_name = %self.target,
                                        "Receiver did not confirm a remote-write 2.0 request, \
                                         falling back to 1.0");
                                    wire_v1.store(true, Ordering::Relaxed);
                                    return Attempt::Retry {
                                        error: self.error(
                                            Some(reply.status),
                                            "2xx without X-Prometheus-Remote-Write-Samples-Written",
                                        ),
                                        after: Some(Duration::ZERO),
                                    };
                                } else {
                                    // Explicit 2.0: the same answer would come again,
                                    // and the samples were most likely not written.
                                    unsupported.store(true, Ordering::Relaxed);
                                    return Attempt::Fail(
                                        self.error(Some(reply.status), UNSUPPORTED_V2_MESSAGE),
                                    );
                                }
                            }
                            Attempt::Done(())
                        }
                        Verdict::Retry => Attempt::Retry {
                            error: error(),
                            after: if reply.status == 429 || reply.status == 503 {
                                reply.retry_after
                            } else {
                                None
                            },
                        },
                        Verdict::Refused => {
                            let v1_only = reply.status == 415
                                || (reply.status == 400 && !confirmed.load(Ordering::Relaxed));
                            if version == WireVersion::V2 && auto && v1_only {
                                tracing::warn!(target_name = %self.target, status = reply.status,
                                    body = %reply.body,
                                    "Receiver refused remote-write 2.0, falling back to 1.0");
                                wire_v1.store(true, Ordering::Relaxed);
                                return Attempt::Retry {
                                    error: error(),
                                    after: Some(Duration::ZERO),
                                };
                            }
                            Attempt::Fail(error())
                        }
                    }
                }
            })
            .await;
        if wire_v1.load(Ordering::Relaxed) {
            negotiation.wire = WireVersion::V1;
        }
        negotiation.v2_confirmed = confirmed.load(Ordering::Relaxed);
        let reason = if unsupported.load(Ordering::Relaxed) {
            DropReason::Unsupported
        } else {
            DropReason::Rejected
        };
        result.map_err(|gave_up| (gave_up, reason))
    }

    async fn run_bounded<F>(&self, what: &str, work: F) -> Result<(), Error>
    where
        F: Future<Output = Result<(), Error>>,
    {
        // The inner loop already stops at the deadline; this outer bound
        // covers what it cannot see (a receiver trickling an error body).
        let bound = self.publish_timeout() + Duration::from_secs(1);
        match tokio::time::timeout(bound, work).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                what: format!("remote-write {what} to {}", self.target),
                timeout: bound,
            }),
        }
    }
}

#[async_trait]
impl Sink for RemoteWriteSink {
    fn name(&self) -> &str {
        "remote_write"
    }

    /// Buffer the snapshot and send everything buffered, oldest first.
    /// `Ok` when all is delivered; an error when the snapshot could not be
    /// delivered now (it stays buffered when the failure may pass; a 4xx
    /// drops it and counts its samples). Returns within
    /// [`RemoteWriteSink::publish_timeout`] (+1 s).
    async fn publish(&self, snapshot: Arc<Snapshot>) -> Result<(), Error> {
        let deadline = Instant::now() + self.publish_timeout();
        self.run_bounded("publish", async {
            let mut state = self.state.lock().await;
            let prepared = encode::prepare(&snapshot, &self.external_labels);
            if let Some(first) = prepared.invalid.first() {
                self.counters
                    .drop_samples(DropReason::InvalidSeries, prepared.invalid.len());
                tracing::warn!(target_name = %self.target, series = prepared.invalid.len(),
                    example = %first, "Series with invalid labels dropped");
            }
            let timestamp_ms = prepared.cycle.timestamp_ms;
            self.take_in(&mut state, prepared.cycle)?;
            self.drain(&mut state, deadline, timestamp_ms).await
        })
        .await
    }

    /// Mark every live series stale (at now, or just after the last cycle)
    /// and send that with whatever is still buffered, within the same bound
    /// as a publish.
    async fn shutdown(&self) -> Result<(), Error> {
        let deadline = Instant::now() + self.publish_timeout();
        self.run_bounded("shutdown", async {
            let mut state = self.state.lock().await;
            let timestamp_ms = now_ms().max(state.last_timestamp_ms.map_or(0, |t| t + 1));
            let cycle = Cycle {
                timestamp_ms,
                points: Vec::new(),
            };
            self.take_in(&mut state, cycle)?;
            if state.buffer.is_empty() {
                return Ok(());
            }
            self.drain(&mut state, deadline, timestamp_ms).await
        })
        .await
    }

    fn self_metrics(&self) -> Vec<MetricFamily> {
        let target = self.target.as_str();
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let mut dropped = MetricFamily::counter(
            SAMPLES_DROPPED_TOTAL,
            "Samples never delivered to a remote-write target, by reason.",
        );
        for (i, reason) in DROP_REASONS.iter().enumerate() {
            dropped.push(
                [("target", target), ("reason", reason)],
                load(&c.dropped[i]),
            );
        }
        let mut requests = MetricFamily::counter(
            REQUESTS_TOTAL,
            "Remote-write requests by HTTP status code (error: no answer).",
        );
        {
            let map = c
                .requests
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (code, n) in map.iter() {
                requests.push([("target", target), ("code", code.as_str())], *n as f64);
            }
        }
        vec![
            MetricFamily::counter(
                SAMPLES_SENT_TOTAL,
                "Samples delivered to a remote-write target.",
            )
            .with([("target", target)], load(&c.sent)),
            MetricFamily::counter(
                SAMPLES_FAILED_TOTAL,
                "Samples of remote-write requests that still failed when a publish gave up (kept buffered).",
            )
            .with([("target", target)], load(&c.failed)),
            MetricFamily::counter(
                SAMPLES_RETRIED_TOTAL,
                "Samples sent again to a remote-write target after a failed attempt.",
            )
            .with([("target", target)], load(&c.retried)),
            dropped,
            MetricFamily::gauge(
                BUFFERED_SAMPLES,
                "Samples waiting in the outage buffer of a remote-write target.",
            )
            .with([("target", target)], load(&c.buffered)),
            MetricFamily::gauge(
                LAST_SUCCESS_TIMESTAMP_SECONDS,
                "When a remote-write request to the target last succeeded (Unix seconds).",
            )
            .with(
                [("target", target)],
                c.last_success_ms.load(Ordering::Relaxed) as f64 / 1000.0,
            ),
            requests,
        ]
    }
}
