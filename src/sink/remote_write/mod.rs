//! The Prometheus remote-write sink: pushes each cycle to one target
//! (Prometheus, Thanos, Mimir, VictoriaMetrics), in Remote-Write 1.0
//! (<https://prometheus.io/docs/specs/remote_write_spec/>) or 2.0
//! (<https://prometheus.io/docs/specs/prw/remote_write_spec_2_0/>).
//!
//! Collection never waits on delivery. A cycle's snapshot is handed off
//! ([`RemoteWriteSink::hand_off`]): prepared (`encode.rs`: sorted, unique,
//! valid labels; invalid series dropped and counted), given a staleness
//! marker for every series of the previous cycle that is gone now (so an
//! ended job leaves instant queries at once instead of lingering for the
//! 5-minute lookback), and appended to the target's queue (`buffer.rs`).
//! Then the call returns. The target's own sender task
//! ([`RemoteWriteSink::start_sender`]) sends the queue oldest first, several
//! cycles per request up to `max_samples_per_send` samples, each request
//! with the retry policy (`retry.rs`) within `remote_timeout`, and backs off
//! between attempts while the target is down. A newer cycle never overtakes
//! an older one: receivers refuse out-of-order samples. A batch the receiver
//! refuses is sent again one cycle at a time, so one bad cycle cannot take
//! good ones with it.
//!
//! `once` (and the tests) use [`Sink::publish`]: hand off, then deliver in
//! the caller's task within [`PUBLISH_TIMEOUT_FACTOR`] × `remote_timeout`.
//! Every target owns all its state: targets never wait on each other.

pub mod buffer;
pub mod config;
pub mod encode;
pub mod negotiate;
/// The retry policy, shared with the Pushgateway (`crate::sink::retry`).
pub use crate::sink::retry;
pub mod service;
pub mod state;

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
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

pub use config::{Protocol, RemoteWriteConfig};
use encode::{Cycle, Point, SeriesLabels, SeriesMeta, WireVersion};
use retry::{Attempt, GaveUp, RetryPolicy};

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
/// Memory the outage buffer holds (see `OutageBuffer::bytes`).
pub const BUFFERED_BYTES: &str = "vsphere_ci_user_sessions_remote_write_buffered_bytes";
/// Age of the oldest cycle waiting (0 when none): how far behind a target is.
pub const OLDEST_BUFFERED_AGE_SECONDS: &str =
    "vsphere_ci_user_sessions_remote_write_oldest_buffered_age_seconds";
/// Requests delivered (2xx), each carrying one or more cycles.
pub const BATCHES_SENT_TOTAL: &str = "vsphere_ci_user_sessions_remote_write_batches_sent_total";
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
    buffered_bytes: AtomicU64,
    /// Timestamp of the oldest cycle waiting, 0 when none.
    oldest_buffered_ms: AtomicI64,
    batches: AtomicU64,
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

/// The queue side, written by `hand_off` and read by the sender. A plain
/// mutex held only for in-memory work, never across a request, so handing
/// off never waits on the network.
#[derive(Debug)]
struct Queue {
    buffer: buffer::OutageBuffer,
    /// Series of the last cycle taken in (delivered or buffered), for
    /// staleness markers.
    live: HashMap<SeriesLabels, SeriesMeta>,
    /// Timestamp of the last cycle taken in: later ones must be newer.
    last_timestamp_ms: Option<i64>,
}

/// The sending side, held by whoever sends (the sender task, or a
/// `publish`/`shutdown` delivering in its own task).
#[derive(Debug)]
struct Link {
    negotiation: Negotiation,
    /// A receiver's `Retry-After` reaching past a delivery: wait for it.
    not_before: Option<Instant>,
    /// Failed deliveries in a row: the sender's backoff between them.
    failures: u32,
    /// Send one cycle per request through this sequence number: a batch
    /// was refused, and each of its cycles gets its own verdict.
    single_through: Option<u64>,
}

/// Pushes snapshots to one remote-write target.
#[derive(Debug)]
pub struct RemoteWriteSink {
    target: String,
    protocol: Protocol,
    external_labels: Vec<(String, String)>,
    remote_timeout: Duration,
    policy: RetryPolicy,
    /// Most samples per request when sending a backlog.
    max_samples_per_send: usize,
    /// `queue_config.retry_on_http_429`: false drops a 429'd request.
    retry_on_http_429: bool,
    service: service::HttpService,
    queue: std::sync::Mutex<Queue>,
    link: tokio::sync::Mutex<Link>,
    /// Wakes the sender task when a cycle was handed off.
    wake: Notify,
    counters: Counters,
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
        let target = config.target_name();
        let ignored = config.ignored_queue_settings();
        if !ignored.is_empty() {
            tracing::info!(target_name = %target, settings = %ignored.join(", "),
                "queue_config settings for Prometheus's shards mean nothing here (one sender per target) and are ignored");
        }
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
                min_backoff: config.backoff().0,
                max_backoff: config.backoff().1,
            },
            retry_on_http_429: config.queue_config.retry_on_http_429.unwrap_or(true),
            max_samples_per_send: config.max_samples_per_send(),
            service,
            queue: std::sync::Mutex::new(Queue {
                buffer: buffer::OutageBuffer::new(
                    config.max_buffered_samples,
                    config.max_bytes(),
                    config.sample_age_limit(),
                ),
                live: HashMap::new(),
                last_timestamp_ms: None,
            }),
            link: tokio::sync::Mutex::new(Link {
                negotiation: Negotiation {
                    wire,
                    v2_confirmed: false,
                },
                not_before: None,
                failures: 0,
                single_through: None,
            }),
            wake: Notify::new(),
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

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Take a cycle into the buffer, adding staleness markers for the series
    /// of the previous cycle that are gone. Returns its sequence number.
    fn take_in(&self, state: &mut Queue, mut cycle: Cycle) -> Result<u64, Error> {
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
        let current: std::collections::HashSet<&SeriesLabels> =
            cycle.points.iter().map(|p| &p.labels).collect();
        let mut ended: Vec<Point> = state
            .live
            .iter()
            .filter(|(labels, _)| !current.contains(labels))
            .map(|(labels, meta)| Point {
                labels: labels.clone(),
                meta: *meta,
                value: encode::stale_nan(),
            })
            .collect();
        drop(current);
        // Deterministic order, so resends and tests see the same request.
        ended.sort_by(|a, b| a.labels.cmp(&b.labels));
        let ended_count = ended.len();
        cycle.points.extend(ended);
        state.last_timestamp_ms = Some(cycle.timestamp_ms);
        let (seq, evicted) = state.buffer.push(cycle, crate::metrics::unix_now_ms());
        // The live series point at the buffer's interned label sets, so
        // they are held once. Stale markers end a series: not live.
        let buffered = state
            .buffer
            .back()
            .expect("the cycle just pushed is the newest")
            .clone();
        let live_points = &buffered.points[..buffered.points.len() - ended_count];
        state.live = live_points
            .iter()
            .map(|p| (p.labels.clone(), p.meta))
            .collect();
        self.count_evicted(evicted);
        self.set_buffered(state);
        Ok(seq)
    }

    /// Take the snapshot into the queue and wake the sender; returns at
    /// once. An error only for a snapshot that cannot be sent at all (not
    /// newer than the previous one): the queue goes on regardless.
    pub fn hand_off(&self, snapshot: &Snapshot) -> Result<u64, Error> {
        let prepared = encode::prepare(snapshot, &self.external_labels);
        if let Some(first) = prepared.invalid.first() {
            self.counters
                .drop_samples(DropReason::InvalidSeries, prepared.invalid.len());
            tracing::warn!(target_name = %self.target, series = prepared.invalid.len(),
                example = %first, "Series with invalid labels dropped");
        }
        let seq = {
            let mut queue = self.lock_queue();
            self.take_in(&mut queue, prepared.cycle)?
        };
        self.wake.notify_one();
        Ok(seq)
    }

    /// Start this target's sender: a task that sends whatever is queued
    /// each time a cycle is handed off, and while the target is down tries
    /// again after a backoff (`Retry-After` honoured, capped), however often
    /// cycles come. It lives as long as the process.
    pub fn start_sender(self: Arc<Self>) {
        tokio::spawn(async move {
            loop {
                self.wake.notified().await;
                while let Err(wait) = self.send_queued().await {
                    tokio::time::sleep(wait).await;
                }
            }
        });
    }

    /// One round of the sender: everything queued, or the wait before the
    /// next try when the target is down.
    async fn send_queued(&self) -> Result<(), Duration> {
        let deadline = Instant::now() + self.publish_timeout();
        let result = self.drain(deadline, None).await;
        if result.is_ok() || self.lock_queue().buffer.is_empty() {
            return Ok(());
        }
        let link = self.link.lock().await;
        Err(match link.not_before {
            Some(at) => at.saturating_duration_since(Instant::now()),
            None => self.policy.backoff(link.failures.saturating_sub(1)),
        })
    }

    fn count_evicted(&self, evicted: buffer::Evicted) {
        if evicted == buffer::Evicted::default() {
            return;
        }
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

    /// Send queued cycles oldest first, in batches, until the queue is
    /// empty, a request still fails, or `deadline` comes. `current` is the
    /// sequence number of a cycle the caller waits for: its refusal is
    /// reported as an error.
    async fn drain(&self, deadline: Instant, current: Option<u64>) -> Result<(), Error> {
        let mut link = self.link.lock().await;
        {
            let mut queue = self.lock_queue();
            let evicted = queue.buffer.evict_expired(crate::metrics::unix_now_ms());
            self.count_evicted(evicted);
            self.set_buffered(&queue);
        }
        if let Some(not_before) = link.not_before {
            if not_before >= deadline {
                return Err(self.error(
                    Some(429),
                    "the receiver asked to wait (Retry-After); cycles stay buffered",
                ));
            }
            tokio::time::sleep_until(not_before).await;
            link.not_before = None;
        }
        let mut result = Ok(());
        loop {
            let batch = {
                let queue = self.lock_queue();
                let single = match (link.single_through, queue.buffer.front()) {
                    (Some(through), Some(front)) => front.seq <= through,
                    _ => false,
                };
                queue.buffer.batch(
                    self.max_samples_per_send,
                    if single { 1 } else { usize::MAX },
                )
            };
            let Some(last) = batch.last() else {
                break;
            };
            let (first_seq, last_seq) = (batch[0].seq, last.seq);
            let timestamp_ms = last.cycle.timestamp_ms;
            let cycles: Vec<&Cycle> = batch.iter().map(|q| q.cycle.as_ref()).collect();
            let samples: usize = cycles.iter().map(|c| c.sample_count()).sum();
            let request_deadline = deadline.min(Instant::now() + self.remote_timeout);
            match self
                .deliver(&cycles, &mut link.negotiation, request_deadline)
                .await
            {
                Ok(()) => {
                    self.lock_queue().buffer.remove_through(last_seq);
                    let c = &self.counters;
                    c.sent.fetch_add(samples as u64, Ordering::Relaxed);
                    c.batches.fetch_add(1, Ordering::Relaxed);
                    c.last_success_ms
                        .store(crate::metrics::unix_now_ms(), Ordering::Relaxed);
                    link.failures = 0;
                }
                Err((
                    GaveUp {
                        retriable: false, ..
                    },
                    _,
                )) if batch.len() > 1 => {
                    tracing::debug!(target_name = %self.target, cycles = batch.len(),
                        "Remote-write batch refused, sending its cycles one by one");
                    link.single_through = Some(last_seq);
                }
                Err((
                    GaveUp {
                        error,
                        retriable: false,
                        ..
                    },
                    reason,
                )) => {
                    self.lock_queue().buffer.remove_through(last_seq);
                    self.counters.drop_samples(reason, samples);
                    tracing::warn!(target_name = %self.target, error = %error, samples,
                        timestamp_ms, "Remote-write request refused, samples dropped");
                    if current.is_some_and(|c| (first_seq..=last_seq).contains(&c)) {
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
                    link.not_before = not_before;
                    link.failures = link.failures.saturating_add(1);
                    tracing::warn!(target_name = %self.target, error = %error,
                        buffered_cycles = self.lock_queue().buffer.len(),
                        "Remote-write target unavailable, cycles stay buffered");
                    result = Err(error);
                    break;
                }
            }
        }
        self.set_buffered(&self.lock_queue());
        result
    }

    fn set_buffered(&self, queue: &Queue) {
        let c = &self.counters;
        c.buffered
            .store(queue.buffer.samples() as u64, Ordering::Relaxed);
        c.buffered_bytes
            .store(queue.buffer.bytes() as u64, Ordering::Relaxed);
        c.oldest_buffered_ms.store(
            queue.buffer.oldest_timestamp().unwrap_or(0),
            Ordering::Relaxed,
        );
    }

    /// One request of one or more cycles, with retries and protocol
    /// fallback, until `deadline`. A
    /// failure comes with the reason to count its samples under, should it
    /// be final.
    async fn deliver(
        &self,
        cycles: &[&Cycle],
        negotiation: &mut Negotiation,
        deadline: Instant,
    ) -> Result<(), (GaveUp, DropReason)> {
        let samples: usize = cycles.iter().map(|c| c.sample_count()).sum();
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
                        encode::compress(&encode::encode_batch(cycles, version))
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
                    let error = || {
                        self.error(
                            Some(reply.status),
                            format!("HTTP {}: {}", reply.status, reply.body),
                        )
                    };
                    let known = negotiate::Known {
                        protocol: self.protocol,
                        sent: version,
                        v2_confirmed: confirmed.load(Ordering::Relaxed),
                        retry_on_http_429: self.retry_on_http_429,
                    };
                    let answer = negotiate::Answer {
                        status: reply.status,
                        samples_written: reply.samples_written.is_some(),
                    };
                    match negotiate::next(known, answer) {
                        negotiate::Next::Delivered { confirmed_v2 } => {
                            if confirmed_v2 {
                                confirmed.store(true, Ordering::Relaxed);
                            }
                            Attempt::Done(())
                        }
                        negotiate::Next::FallBackToV1 => {
                            // Resend as 1.0 (a receiver that did write the
                            // 2.0 body takes the same samples again).
                            tracing::warn!(target_name = %self.target, status = reply.status,
                                body = %reply.body,
                                "Receiver does not speak remote-write 2.0, falling back to 1.0");
                            wire_v1.store(true, Ordering::Relaxed);
                            Attempt::Retry {
                                error: error(),
                                after: Some(Duration::ZERO),
                            }
                        }
                        negotiate::Next::Unsupported => {
                            // The same answer would come again, and the
                            // samples were most likely not written.
                            unsupported.store(true, Ordering::Relaxed);
                            Attempt::Fail(self.error(Some(reply.status), UNSUPPORTED_V2_MESSAGE))
                        }
                        negotiate::Next::RetryLater { honour_retry_after } => Attempt::Retry {
                            error: error(),
                            after: if honour_retry_after {
                                reply.retry_after
                            } else {
                                None
                            },
                        },
                        negotiate::Next::Refused => Attempt::Fail(error()),
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

    /// Hand the snapshot off, then deliver everything queued in this task.
    /// `Ok` when all is delivered; an error when the snapshot could not be
    /// delivered now (it stays queued when the failure may pass; a 4xx
    /// drops it and counts its samples). Returns within
    /// [`RemoteWriteSink::publish_timeout`] (+1 s).
    async fn publish(&self, snapshot: Arc<Snapshot>) -> Result<(), Error> {
        let deadline = Instant::now() + self.publish_timeout();
        // A cycle that cannot be taken (the clock stepped back) is lost, but
        // what is queued still goes out.
        let handed = RemoteWriteSink::hand_off(self, &snapshot);
        let current = handed.as_ref().ok().copied();
        let drained = self
            .run_bounded("publish", self.drain(deadline, current))
            .await;
        handed.and(drained)
    }

    fn hand_off(&self, snapshot: Arc<Snapshot>) -> Result<(), Error> {
        RemoteWriteSink::hand_off(self, &snapshot).map(|_| ())
    }

    fn start_sender(self: Arc<Self>) {
        RemoteWriteSink::start_sender(self);
    }

    fn state_key(&self) -> Option<String> {
        Some(format!("remote_write/{}", self.target))
    }

    fn behind(&self) -> Option<String> {
        let queue = self.lock_queue();
        let oldest = queue.buffer.oldest_timestamp()?;
        let cycles = queue.buffer.len();
        Some(format!(
            "remote-write target {} is behind: {cycles} {} ({} samples) waiting, the oldest {} s old",
            self.target,
            if cycles == 1 { "cycle" } else { "cycles" },
            queue.buffer.samples(),
            crate::metrics::unix_now_ms().saturating_sub(oldest).max(0) / 1000
        ))
    }

    fn export_state(&self) -> Option<Box<serde_json::value::RawValue>> {
        let queue = self.lock_queue();
        let state = state::export(
            queue.last_timestamp_ms,
            queue.live.iter(),
            queue.buffer.cycles(),
        );
        serde_json::value::to_raw_value(&state).ok()
    }

    fn import_state(&self, raw: &serde_json::value::RawValue) -> Result<(), String> {
        let state: state::TargetState = serde_json::from_str(raw.get())
            .map_err(|e| crate::kube_client::json_error_position(&e))?;
        let imported = state::import(state)?;
        let mut queue = self.lock_queue();
        let mut evicted = buffer::Evicted::default();
        for cycle in imported.backlog {
            let (_, e) = queue.buffer.push(cycle, crate::metrics::unix_now_ms());
            evicted.full += e.full;
            evicted.too_old += e.too_old;
        }
        self.count_evicted(evicted);
        queue.live = imported.live;
        queue.last_timestamp_ms = imported.last_timestamp_ms;
        self.set_buffered(&queue);
        Ok(())
    }

    /// Mark every live series stale (at now, or just after the last cycle)
    /// and send that with whatever is still queued, within the same bound
    /// as a publish.
    async fn shutdown(&self) -> Result<(), Error> {
        let deadline = Instant::now() + self.publish_timeout();
        let seq = {
            let mut queue = self.lock_queue();
            let timestamp_ms =
                crate::metrics::unix_now_ms().max(queue.last_timestamp_ms.map_or(0, |t| t + 1));
            let cycle = Cycle {
                timestamp_ms,
                points: Vec::new(),
            };
            self.take_in(&mut queue, cycle)?
        };
        self.run_bounded("shutdown", self.drain(deadline, Some(seq)))
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
                BUFFERED_BYTES,
                "Memory the outage buffer of a remote-write target holds, in bytes.",
            )
            .with([("target", target)], load(&c.buffered_bytes)),
            MetricFamily::gauge(
                OLDEST_BUFFERED_AGE_SECONDS,
                "Age of the oldest cycle waiting for a remote-write target (0 when none): how far behind it is.",
            )
            .with([("target", target)], {
                let oldest = c.oldest_buffered_ms.load(Ordering::Relaxed);
                if oldest == 0 {
                    0.0
                } else {
                    (crate::metrics::unix_now_ms().saturating_sub(oldest)).max(0) as f64 / 1000.0
                }
            }),
            MetricFamily::counter(
                BATCHES_SENT_TOTAL,
                "Remote-write requests delivered, each carrying one or more cycles.",
            )
            .with([("target", target)], load(&c.batches)),
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
