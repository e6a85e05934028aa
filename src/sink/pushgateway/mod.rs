//! Pushgateway sink: each cycle replaces one group on a Prometheus Pushgateway.
//!
//! Follows the Pushgateway API (<https://github.com/prometheus/pushgateway#api>):
//! the snapshot is sent with `PUT /metrics/job/<job>{/<label>/<value>}` so the
//! whole group is replaced and the series of jobs that ended since the last
//! cycle vanish (a `POST` would keep them forever). The body is the text
//! exposition format 0.0.4, without timestamps: the Pushgateway refuses
//! timestamped pushes with a 400.
//!
//! Path segments are percent-encoded; a job name or label value containing `/`,
//! an empty value and the dot segments `.`/`..` use the `@base64` form
//! (URL-safe alphabet, a lone `=` for the empty value), the only way the
//! Pushgateway accepts them because its router cleans the path.
//!
//! A 4xx (invalid text, a type clash with another group, a duplicate series)
//! is reported with the gateway's body and not retried: the same body would be
//! refused again. Network errors and 5xx are retried within the cycle with a
//! short backoff; the whole push never takes longer than `timeout` × attempts.
//!
//! Only the newest snapshot is kept: a `PUT` replaces the whole group, so a
//! push that failed is superseded by the next cycle's and resending an older
//! one later would only put older values back. The sink's own sender task
//! ([`PushgatewaySink::start_sender`]) pushes the newest snapshot handed
//! off; a push that failed and may pass is tried again after a backoff
//! unless a newer snapshot arrives first. That is why there is no
//! "buffered" self-metric here, unlike the remote-write sink.
//!
//! Self-metrics follow issue 3 §5 (per sink and target): every sample of a
//! push ends in exactly one of `samples_sent_total`, `samples_failed_total`
//! (gave up after network errors, timeouts or 5xx) and
//! `samples_dropped_total` (refused with a 4xx, or a duplicate removed before
//! sending); `samples_retried_total` counts each re-send of a sample.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::{Method, StatusCode};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use url::Url;

pub mod config;
mod group;

pub use config::{DEFAULT_JOB, DEFAULT_TIMEOUT, PushgatewayConfig, SERIES_LABELS};
use group::group_url;

use crate::error::{Error, error_chain};
use crate::http::{Auth, Credential, client_builder, read_error_body};
pub use crate::http::{BasicAuth, TlsConfig};
use crate::metrics::{Labels, MetricFamily, Sample, Snapshot};
use crate::sink::Sink;
use crate::sink::retry::{Attempt, RetryPolicy};

/// Pushes (one per cycle) attempted, successful or not.
pub const PUSHES_TOTAL: &str = "vsphere_ci_user_sessions_pushgateway_pushes_total";
/// Pushes that failed after their retries.
pub const PUSH_FAILURES_TOTAL: &str = "vsphere_ci_user_sessions_pushgateway_push_failures_total";
/// Unix time of the last push the gateway accepted; 0 before the first.
pub const LAST_SUCCESS_TIMESTAMP: &str =
    "vsphere_ci_user_sessions_pushgateway_last_success_timestamp_seconds";
/// Samples in pushes the gateway accepted.
pub const SAMPLES_SENT_TOTAL: &str = "vsphere_ci_user_sessions_pushgateway_samples_sent_total";
/// Samples in pushes given up after network errors, timeouts or 5xx.
pub const SAMPLES_FAILED_TOTAL: &str = "vsphere_ci_user_sessions_pushgateway_samples_failed_total";
/// Samples sent again because their push was retried, once per retry.
pub const SAMPLES_RETRIED_TOTAL: &str =
    "vsphere_ci_user_sessions_pushgateway_samples_retried_total";
/// Samples given up without a retry: their push was refused with a 4xx, or
/// they duplicated another series once the grouping labels were dropped.
pub const SAMPLES_DROPPED_TOTAL: &str =
    "vsphere_ci_user_sessions_pushgateway_samples_dropped_total";

/// Text format 0.0.4, the one every Pushgateway version parses.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Requests per push or delete: one try and two retries. With the default
/// 10 s timeout a push gives up within 30 s, well inside a typical cycle.
const MAX_ATTEMPTS: u32 = 3;
/// Backoff between attempts of one push (the shared retry policy's
/// bounds): short, since the sender tries again later anyway.
const RETRY: RetryPolicy = RetryPolicy {
    min_backoff: Duration::from_millis(250),
    max_backoff: Duration::from_secs(2),
};

/// Counters behind the sink's self-metrics.
#[derive(Debug, Default)]
struct Stats {
    pushes: AtomicU64,
    failures: AtomicU64,
    samples_sent: AtomicU64,
    samples_failed: AtomicU64,
    samples_retried: AtomicU64,
    samples_dropped: AtomicU64,
    /// `f64::to_bits` of the Unix time of the last success.
    last_success_bits: AtomicU64,
}

/// Pushes each snapshot to one Pushgateway group.
#[derive(Debug)]
pub struct PushgatewaySink {
    client: reqwest::Client,
    /// The group's URL, built once.
    group_url: Url,
    /// The base URL as configured (it carries no credentials), for errors,
    /// logs and the `target` label.
    target: String,
    /// `job` and the grouping label names: labels the gateway sets itself.
    reserved_labels: BTreeSet<String>,
    auth: Auth,
    timeout: Duration,
    delete_on_shutdown: bool,
    stats: Stats,
    /// Dropping reserved labels is logged once, not every cycle.
    warned_reserved: AtomicBool,
    /// So is dropping the duplicates that this can leave.
    warned_duplicates: AtomicBool,
    /// The newest snapshot handed off and not pushed yet.
    latest: std::sync::Mutex<Option<Arc<Snapshot>>>,
    /// Wakes the sender task.
    wake: tokio::sync::Notify,
    /// Held by the sender around a push, so shutdown's DELETE comes after
    /// a push in flight, never before it.
    in_flight: tokio::sync::Mutex<()>,
    /// Set on shutdown: the sender pushes nothing more.
    closed: AtomicBool,
}

/// First wait after a failed push in the sender; doubles up to
/// [`MAX_SENDER_BACKOFF`].
const MIN_SENDER_BACKOFF: Duration = Duration::from_secs(1);
const MAX_SENDER_BACKOFF: Duration = Duration::from_secs(30);

/// What `render_body` makes of a snapshot.
#[derive(Debug)]
struct Body {
    text: Bytes,
    /// Samples in `text`.
    samples: u64,
    /// Samples left out because they duplicated another series once the
    /// reserved labels were dropped.
    duplicates: u64,
}

impl PushgatewaySink {
    /// Validate the config, build the HTTP client and check that credential
    /// files can be read.
    pub fn new(config: PushgatewayConfig) -> Result<Self, Error> {
        config.validate()?;
        let group_url = group_url(&config.url, &config.job, &config.grouping)?;
        let target = config.url.as_str().trim_end_matches('/').to_string();
        let builder = client_builder(
            &config.tls_config,
            "pushgateway.tls_config",
            config.timeout,
            concat!(env!("CARGO_PKG_NAME"), "/", env!("CARGO_PKG_VERSION")),
        )?;
        if config.tls_config.insecure_skip_verify {
            warn!(target_url = %target, "Pushgateway TLS certificate verification is off");
        }
        let client = builder
            .build()
            .map_err(|e| Error::Config(format!("pushgateway: building the HTTP client: {e}")))?;
        let auth = auth_of(&config);
        auth.check()?;
        let reserved_labels = std::iter::once("job".to_string())
            .chain(config.grouping.keys().cloned())
            .collect();
        Ok(PushgatewaySink {
            client,
            group_url,
            target,
            reserved_labels,
            auth,
            timeout: config.timeout,
            delete_on_shutdown: config.delete_on_shutdown,
            stats: Stats::default(),
            warned_reserved: AtomicBool::new(false),
            warned_duplicates: AtomicBool::new(false),
            latest: std::sync::Mutex::new(None),
            wake: tokio::sync::Notify::new(),
            in_flight: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
        })
    }

    fn take_latest(&self) -> Option<Arc<Snapshot>> {
        self.latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// The sender task: pushes the newest snapshot each time one is handed
    /// off; after a failure that may pass, tries it again after a backoff
    /// (1 s doubling to 30 s), or pushes a newer one as soon as it comes.
    pub fn start_sender(self: Arc<Self>) {
        tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                self.wake.notified().await;
                while let Some(snapshot) = self.take_latest() {
                    let result = {
                        let _pushing = self.in_flight.lock().await;
                        if self.closed.load(Ordering::Relaxed) {
                            return;
                        }
                        self.publish(snapshot.clone()).await
                    };
                    match result {
                        Ok(()) => failures = 0,
                        Err(e) => {
                            warn!(target_url = %self.target, error = %e, "Pushgateway push failed");
                            if !e.is_retriable() {
                                continue;
                            }
                            // Keep it unless a newer one came meanwhile.
                            self.latest
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .get_or_insert(snapshot);
                            let wait = MIN_SENDER_BACKOFF
                                .saturating_mul(1u32 << failures.min(5))
                                .min(MAX_SENDER_BACKOFF);
                            failures = failures.saturating_add(1);
                            tokio::select! {
                                () = tokio::time::sleep(wait) => {}
                                () = self.wake.notified() => {}
                            }
                        }
                    }
                }
            }
        });
    }

    /// The text body for a snapshot, without the labels the gateway sets from
    /// the grouping key (`job` and the grouping labels). The Pushgateway
    /// overwrites such labels with the group's values (1.5 does so silently;
    /// its README warns of it), so a sample's own value would be lost without
    /// a trace. Dropping them here and warning once makes the loss visible.
    ///
    /// Two samples of a family differing only in a dropped label would then
    /// be the same series, and the gateway refuses the whole push for it. So
    /// the first is kept, the others are left out and counted, and a warning
    /// is logged once. `validate` refuses grouping labels the reporter's
    /// series use, so this only happens to labels it does not expect.
    fn render_body(&self, snapshot: &Snapshot) -> Body {
        let dropped: BTreeSet<&str> = snapshot
            .families
            .iter()
            .flat_map(|family| &family.samples)
            .flat_map(|sample| &sample.labels)
            .map(|(name, _)| name.as_str())
            .filter(|name| self.reserved_labels.contains(*name))
            .collect();
        if dropped.is_empty() {
            return Body {
                text: Bytes::from(snapshot.render_text()),
                samples: snapshot.sample_count() as u64,
                duplicates: 0,
            };
        }
        if !self.warned_reserved.swap(true, Ordering::Relaxed) {
            warn!(
                target_url = %self.target,
                labels = ?dropped,
                "Dropping labels the Pushgateway sets from the grouping key"
            );
        }
        let mut duplicates = 0u64;
        let mut duplicated_families = BTreeSet::new();
        let families = snapshot
            .families
            .iter()
            .map(|family| {
                let mut seen = HashSet::new();
                let mut samples = Vec::with_capacity(family.samples.len());
                for sample in &family.samples {
                    let labels: Labels = sample
                        .labels
                        .iter()
                        .filter(|(name, _)| !self.reserved_labels.contains(name))
                        .cloned()
                        .collect();
                    if seen.insert(labels.clone()) {
                        samples.push(Sample {
                            labels,
                            value: sample.value,
                        });
                    } else {
                        duplicates += 1;
                        duplicated_families.insert(family.name);
                    }
                }
                MetricFamily {
                    samples,
                    ..family.clone()
                }
            })
            .collect();
        if duplicates > 0 && !self.warned_duplicates.swap(true, Ordering::Relaxed) {
            warn!(
                target_url = %self.target,
                labels = ?dropped,
                families = ?duplicated_families,
                samples = duplicates,
                "Dropping samples that duplicate a series once grouping labels are dropped"
            );
        }
        let cleaned = Snapshot {
            timestamp_ms: snapshot.timestamp_ms,
            families,
        };
        Body {
            text: Bytes::from(cleaned.render_text()),
            samples: cleaned.sample_count() as u64,
            duplicates,
        }
    }

    /// One request per attempt (the shared retry policy) until success, a
    /// refusal that retrying cannot fix, `MAX_ATTEMPTS`, or the budget of
    /// `timeout` × attempts. `samples` (those in `body`) are added to the
    /// retried count at each retry.
    async fn send_with_retries(
        &self,
        method: Method,
        body: Option<Bytes>,
        samples: u64,
    ) -> Result<(), Error> {
        let deadline = Instant::now() + self.timeout * MAX_ATTEMPTS;
        let (method, body) = (&method, body.as_ref());
        RETRY
            .run_for(
                "Pushgateway request",
                deadline,
                |attempt, left| async move {
                    if attempt > 0 {
                        self.stats
                            .samples_retried
                            .fetch_add(samples, Ordering::Relaxed);
                    }
                    match self.send_once(method, body, self.timeout.min(left)).await {
                        Ok(()) => Attempt::Done(()),
                        Err(error) if error.is_retriable() && attempt + 1 < MAX_ATTEMPTS => {
                            Attempt::Retry { error, after: None }
                        }
                        Err(error) => Attempt::Fail(error),
                    }
                },
            )
            .await
            .map_err(|gave_up| gave_up.error)
    }

    async fn send_once(
        &self,
        method: &Method,
        body: Option<&Bytes>,
        timeout: Duration,
    ) -> Result<(), Error> {
        let mut request = self
            .client
            .request(method.clone(), self.group_url.clone())
            .timeout(timeout);
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, TEXT_FORMAT)
                .body(body.clone());
        }
        let request = self.auth.apply(request)?;
        let started = Instant::now();
        let response = request.send().await.map_err(|e| {
            // reqwest's message carries the full URL; the error names the
            // configured target instead (credential-free, see `validate`)
            // and the path.
            let e = e.without_url();
            let message = if e.is_timeout() {
                format!(
                    "{method} {} timed out after {}",
                    self.group_url.path(),
                    humantime::format_duration(timeout)
                )
            } else {
                format!(
                    "{method} {} failed: {}",
                    self.group_url.path(),
                    error_chain(&e)
                )
            };
            Error::Pushgateway {
                target: self.target.clone(),
                status: None,
                message,
            }
        })?;
        let status = response.status();
        debug!(
            target_url = %self.target,
            method = %method,
            path = self.group_url.path(),
            status = status.as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Pushgateway request"
        );
        if accepted(method, status) {
            return Ok(());
        }
        if status.is_success() {
            // A 2xx the gateway never answers to a DELETE (e.g. a proxy's
            // 204): the group may still be there, so say so.
            return Err(Error::Pushgateway {
                target: self.target.clone(),
                status: Some(status.as_u16()),
                message: format!(
                    "{method} {} answered {}, expected 202 Accepted",
                    self.group_url.path(),
                    status_text(status)
                ),
            });
        }
        let body = read_error_body(response, timeout.saturating_sub(started.elapsed())).await;
        Err(Error::Pushgateway {
            target: self.target.clone(),
            status: Some(status.as_u16()),
            message: format!(
                "{method} {} answered {}: {body}",
                self.group_url.path(),
                status_text(status),
            ),
        })
    }
}

#[async_trait]
impl Sink for PushgatewaySink {
    fn name(&self) -> &str {
        "pushgateway"
    }

    async fn publish(&self, snapshot: Arc<Snapshot>) -> Result<(), Error> {
        self.stats.pushes.fetch_add(1, Ordering::Relaxed);
        let body = self.render_body(&snapshot);
        self.stats
            .samples_dropped
            .fetch_add(body.duplicates, Ordering::Relaxed);
        match self
            .send_with_retries(Method::PUT, Some(body.text), body.samples)
            .await
        {
            Ok(()) => {
                self.stats
                    .samples_sent
                    .fetch_add(body.samples, Ordering::Relaxed);
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                self.stats
                    .last_success_bits
                    .store(now.to_bits(), Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                let lost = if is_refusal(&e) {
                    &self.stats.samples_dropped
                } else {
                    &self.stats.samples_failed
                };
                lost.fetch_add(body.samples, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    fn hand_off(&self, snapshot: Arc<Snapshot>) -> Result<(), Error> {
        *self
            .latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(snapshot);
        self.wake.notify_one();
        Ok(())
    }

    fn start_sender(self: Arc<Self>) {
        PushgatewaySink::start_sender(self);
    }

    /// Deletes the group when configured to, so its series stop being
    /// exposed at once rather than staying frozen at their last values.
    /// The sender pushes nothing after this starts; a push in flight ends
    /// first.
    async fn shutdown(&self) -> Result<(), Error> {
        self.closed.store(true, Ordering::Relaxed);
        let _no_push = self.in_flight.lock().await;
        if !self.delete_on_shutdown {
            return Ok(());
        }
        self.send_with_retries(Method::DELETE, None, 0).await?;
        info!(target_url = %self.target, path = self.group_url.path(), "Pushgateway group deleted");
        Ok(())
    }

    fn self_metrics(&self) -> Vec<MetricFamily> {
        let target = [("target", self.target.as_str())];
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed) as f64;
        vec![
            MetricFamily::counter(
                PUSHES_TOTAL,
                "Pushes to the Pushgateway, one per cycle, successful or not.",
            )
            .with(target, load(&self.stats.pushes)),
            MetricFamily::counter(
                PUSH_FAILURES_TOTAL,
                "Pushes to the Pushgateway that failed after their retries.",
            )
            .with(target, load(&self.stats.failures)),
            MetricFamily::gauge(
                LAST_SUCCESS_TIMESTAMP,
                "Unix time of the last push the Pushgateway accepted, 0 before the first.",
            )
            .with(
                target,
                f64::from_bits(self.stats.last_success_bits.load(Ordering::Relaxed)),
            ),
            MetricFamily::counter(
                SAMPLES_SENT_TOTAL,
                "Samples in pushes the Pushgateway accepted.",
            )
            .with(target, load(&self.stats.samples_sent)),
            MetricFamily::counter(
                SAMPLES_FAILED_TOTAL,
                "Samples in pushes given up after network errors, timeouts or 5xx.",
            )
            .with(target, load(&self.stats.samples_failed)),
            MetricFamily::counter(
                SAMPLES_RETRIED_TOTAL,
                "Samples sent again because their push was retried, once per retry.",
            )
            .with(target, load(&self.stats.samples_retried)),
            MetricFamily::counter(
                SAMPLES_DROPPED_TOTAL,
                "Samples given up without retrying: refused with a 4xx, or duplicating \
                 another series once the grouping labels were dropped.",
            )
            .with(target, load(&self.stats.samples_dropped)),
        ]
    }
}

/// The statuses that mean success: any 2xx to a `PUT` (the gateway answers
/// 200, or 202 when it skips its consistency check); 202 to a `DELETE`, the
/// gateway's answer even when the group did not exist, and 200 for proxies
/// and API-compatible gateways that answer so.
fn accepted(method: &Method, status: StatusCode) -> bool {
    if *method == Method::DELETE {
        matches!(status, StatusCode::ACCEPTED | StatusCode::OK)
    } else {
        status.is_success()
    }
}

/// A refusal of the request itself (a 4xx other than 429): sending the same
/// samples again would be refused again, so they are dropped, not failed.
fn is_refusal(error: &Error) -> bool {
    matches!(error, Error::Pushgateway { status: Some(s), .. } if (400..500).contains(s) && *s != 429)
}

/// How this sink authenticates: basic auth, or a bearer token (inline or a
/// file read at every push).
fn auth_of(config: &PushgatewayConfig) -> Auth {
    if let Some(basic) = &config.basic_auth {
        return Auth::Basic {
            username: basic.username.clone(),
            password: Credential::from_parts(
                basic.password.as_ref(),
                basic.password_file.as_deref(),
                "pushgateway.basic_auth.password_file",
            ),
        };
    }
    if config.bearer_token.is_some() || config.bearer_token_file.is_some() {
        return Auth::Header {
            scheme: "Bearer".to_string(),
            credentials: Credential::from_parts(
                config.bearer_token.as_ref(),
                config.bearer_token_file.as_deref(),
                "pushgateway.bearer_token_file",
            ),
        };
    }
    Auth::None
}

/// `400 Bad Request`, or just the code when it has no reason phrase.
fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{CORRELATED, VCENTER_UP};

    fn url(text: &str) -> Url {
        Url::parse(text).expect("test URLs are valid")
    }

    fn grouping(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn config() -> PushgatewayConfig {
        PushgatewayConfig::new(url("http://pg:9091"))
    }

    #[test]
    fn missing_credential_and_ca_files_fail_at_start() {
        let mut c = config();
        c.bearer_token_file = Some("/nonexistent/token".into());
        let err = PushgatewaySink::new(c).unwrap_err().to_string();
        assert!(
            err.starts_with("reading pushgateway.bearer_token_file /nonexistent/token: "),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "not a certificate\n").unwrap();
        let mut c = config();
        c.tls_config.ca_file = Some(not_pem.clone());
        let err = PushgatewaySink::new(c).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "pushgateway.tls_config.ca_file: {} holds no certificate",
                not_pem.display()
            )
        );
    }

    #[test]
    fn body_drops_the_labels_the_gateway_sets_and_keeps_the_rest() {
        let mut c = config();
        c.grouping = grouping(&[("instance", "reporter-1")]);
        let sink = PushgatewaySink::new(c).unwrap();
        let snapshot = Snapshot {
            timestamp_ms: 1_700_000_000_000,
            families: vec![
                MetricFamily::gauge(CORRELATED, "h")
                    .with([("username", "ci1"), ("job", "x"), ("instance", "y")], 2.0),
                MetricFamily::gauge(VCENTER_UP, "h").with([("vcenter", "vc1")], 1.0),
            ],
        };
        let body = sink.render_body(&snapshot);
        assert_eq!((body.samples, body.duplicates), (2, 0));
        let expected = Snapshot {
            timestamp_ms: snapshot.timestamp_ms,
            families: vec![
                MetricFamily::gauge(CORRELATED, "h").with([("username", "ci1")], 2.0),
                MetricFamily::gauge(VCENTER_UP, "h").with([("vcenter", "vc1")], 1.0),
            ],
        };
        assert_eq!(body.text, Bytes::from(expected.render_text()));
    }

    #[test]
    fn samples_colliding_once_grouping_labels_are_dropped_keep_the_first() {
        let mut c = config();
        c.grouping = grouping(&[("instance", "reporter-1")]);
        let sink = PushgatewaySink::new(c).unwrap();
        let snapshot = Snapshot {
            timestamp_ms: 1,
            families: vec![
                MetricFamily::gauge(CORRELATED, "h")
                    .with([("username", "ci1"), ("instance", "a")], 2.0)
                    .with([("username", "ci1"), ("instance", "b")], 5.0)
                    .with([("username", "ci2"), ("job", "x")], 1.0)
                    .with([("username", "ci2"), ("job", "y")], 7.0),
                // The same label set in another family is no collision.
                MetricFamily::gauge(VCENTER_UP, "h").with([("username", "ci1")], 1.0),
            ],
        };
        let body = sink.render_body(&snapshot);
        assert_eq!((body.samples, body.duplicates), (3, 2));
        let expected = Snapshot {
            timestamp_ms: 1,
            families: vec![
                MetricFamily::gauge(CORRELATED, "h")
                    .with([("username", "ci1")], 2.0)
                    .with([("username", "ci2")], 1.0),
                MetricFamily::gauge(VCENTER_UP, "h").with([("username", "ci1")], 1.0),
            ],
        };
        assert_eq!(body.text, Bytes::from(expected.render_text()));
    }

    /// A self-signed test certificate and its key (P-256, PKCS#8), made for
    /// these tests with `openssl req -x509 -newkey ec`.
    const CLIENT_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBmzCCAUGgAwIBAgIUf8oT/JBx+3QCV4Vk5j93Agty7swwCgYIKoZIzj0EAwIw
IjEgMB4GA1UEAwwXcHVzaGdhdGV3YXktdGVzdC1jbGllbnQwIBcNMjYxMTI1MTAy
MjE4WhgPMjEyNjExMDExMDIyMThaMCIxIDAeBgNVBAMMF3B1c2hnYXRld2F5LXRl
c3QtY2xpZW50MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEHpIQJrcGBSjUnw1l
pNOtHnhp2KMqJ+ECL3l7AH2+wPb85b9evbI8gBWwfg++Dt0M7/S2sK90aTCDUrR4
o/hIqqNTMFEwHQYDVR0OBBYEFCavOvIHYC3fpYzuVrLM4IhTPI+LMB8GA1UdIwQY
MBaAFCavOvIHYC3fpYzuVrLM4IhTPI+LMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZI
zj0EAwIDSAAwRQIhAMXRCNbNL0OgI2qqHAa91DtTcqfdU7oDiSlT0qYzDpvNAiAS
ltA0cDHTQQjSjBg9PtXONzotlNQmwVL7IB3TZNanrw==
-----END CERTIFICATE-----
";
    const CLIENT_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgmhRw1DAMB4fwhtYC
xW+OI6tjEcLiGM2+f75BFq1oQDehRANCAAQekhAmtwYFKNSfDWWk060eeGnYoyon
4QIveXsAfb7A9vzlv169sjyAFbB+D74O3Qzv9Lawr3RpMINStHij+Eiq
-----END PRIVATE KEY-----
";

    #[test]
    fn client_certificate_is_loaded_from_cert_and_key_files() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("client.pem");
        let key = dir.path().join("client-key.pem");
        std::fs::write(&cert, CLIENT_CERT).unwrap();
        std::fs::write(&key, CLIENT_KEY).unwrap();
        let mut c = PushgatewayConfig::new(url("https://127.0.0.1:9091"));
        c.tls_config.cert_file = Some(cert.clone());
        c.tls_config.key_file = Some(key.clone());
        PushgatewaySink::new(c).unwrap();

        // The two files swapped: no private key where one is expected.
        let mut c = PushgatewayConfig::new(url("https://127.0.0.1:9091"));
        c.tls_config.cert_file = Some(cert.clone());
        c.tls_config.key_file = Some(cert.clone());
        let err = PushgatewaySink::new(c).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "pushgateway.tls_config: cert_file {} and key_file {} are not a PEM \
                 certificate and private key: ",
                cert.display(),
                cert.display()
            )),
            "{err}"
        );
        assert!(!err.contains("MIIB"), "no PEM content in {err}");

        let mut c = PushgatewayConfig::new(url("https://127.0.0.1:9091"));
        c.tls_config.cert_file = Some(cert);
        c.tls_config.key_file = Some(dir.path().join("missing.pem"));
        let err = PushgatewaySink::new(c).unwrap_err().to_string();
        assert!(
            err.starts_with("reading pushgateway.tls_config.key_file "),
            "{err}"
        );
    }

    #[test]
    fn body_without_reserved_labels_is_the_snapshot_text() {
        let sink = PushgatewaySink::new(config()).unwrap();
        let snapshot = Snapshot {
            timestamp_ms: 1,
            families: vec![MetricFamily::gauge(VCENTER_UP, "h").with([("vcenter", "vc1")], 1.0)],
        };
        let body = sink.render_body(&snapshot);
        // Written by hand, not by `render_text`: no timestamp, and the last
        // line ends in a newline.
        let expected = "# HELP vsphere_ci_user_sessions_vcenter_up h\n\
                        # TYPE vsphere_ci_user_sessions_vcenter_up gauge\n\
                        vsphere_ci_user_sessions_vcenter_up{vcenter=\"vc1\"} 1\n";
        assert_eq!(body.text, Bytes::from(expected));
        assert_eq!(body.samples, 1);
    }
}
