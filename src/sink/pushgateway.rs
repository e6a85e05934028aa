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

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Deserializer};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use url::Url;

use crate::error::{Error, error_chain, truncate_body};
pub use crate::http::{BasicAuth, TlsConfig};
use crate::http::{client_builder, deserialize_opt_secret, read_credential};
use crate::metrics::{Labels, MetricFamily, Sample, Snapshot};
use crate::secret::Secret;
use crate::sink::Sink;

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

/// Labels of the reporter's own series (see `crate::metrics`). As grouping
/// labels they would be overwritten by the gateway and dropped from each
/// sample, so series differing only in them would collide and the gateway
/// would refuse the whole push.
pub const SERIES_LABELS: &[&str] = &[
    "username",
    "user_agent",
    "ci_job",
    "build_id",
    "pull_request",
    "vcenter",
    "collector",
    "target",
    "reason",
    "code",
    "__name__",
];

/// The `job` grouping label when none is configured.
pub const DEFAULT_JOB: &str = "vsphere-ci-session-metrics";
/// Time allowed to each request when none is configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Text format 0.0.4, the one every Pushgateway version parses.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Requests per push or delete: one try and two retries. With the default
/// 10 s timeout a push gives up within 30 s, well inside a typical cycle.
const MAX_ATTEMPTS: u32 = 3;
/// Backoff before the first retry, doubled for each further one. No jitter:
/// one reporter pushes to one gateway, there is no herd to spread.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Error bodies are read up to this size; the gateway's own messages are a
/// few hundred bytes, a proxy's HTML page may be more.
const MAX_ERROR_BODY_READ: usize = 64 * 1024;
/// ... and cut to this size in the error message.
const MAX_ERROR_BODY_SHOWN: usize = 1024;

/// Where and how to push. Every field but `url` has a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushgatewayConfig {
    /// Base URL of the Pushgateway, e.g. `http://pushgateway:9091`. A path
    /// (a reverse proxy's prefix) is kept; `/metrics/job/...` is appended.
    #[serde(deserialize_with = "deserialize_url")]
    pub url: Url,
    /// Value of the `job` grouping label.
    #[serde(default = "default_job")]
    pub job: String,
    /// Further grouping labels, e.g. `instance` when several reporters share
    /// one gateway: each reporter then owns its own group.
    #[serde(default)]
    pub grouping: BTreeMap<String, String>,
    /// Time allowed to each request (`10s`, `1m30s`, or a bare number of
    /// seconds). A push with its retries takes at most three times this.
    #[serde(
        default = "default_timeout",
        deserialize_with = "crate::config::deserialize_duration"
    )]
    pub timeout: Duration,
    /// Delete the group on shutdown, so a reporter that is gone leaves no
    /// frozen series behind. Off by default: during a rolling update the new
    /// reporter pushes the same group anyway.
    #[serde(default)]
    pub delete_on_shutdown: bool,
    /// HTTP basic authentication (e.g. a Pushgateway behind an auth proxy or
    /// its own `--web.config.file`).
    #[serde(default)]
    pub basic_auth: Option<BasicAuth>,
    /// Bearer token sent as `Authorization: Bearer ...`.
    #[serde(default, deserialize_with = "deserialize_opt_secret")]
    pub bearer_token: Option<Secret>,
    /// File holding the bearer token, read at every push so a rotated
    /// Kubernetes Secret is picked up without a restart.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// TLS settings for an `https` URL (named as in Prometheus and the
    /// remote_write block). Both the bundled Mozilla (webpki) roots and the
    /// system's roots are always trusted.
    #[serde(default)]
    pub tls_config: TlsConfig,
}

fn default_job() -> String {
    DEFAULT_JOB.to_string()
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

fn deserialize_url<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Url, D::Error> {
    let text = String::deserialize(deserializer)?;
    // The text is not echoed: a URL may carry credentials.
    Url::parse(&text).map_err(|e| serde::de::Error::custom(format!("invalid URL: {e}")))
}

impl PushgatewayConfig {
    /// A config for `url` with every other field at its default.
    pub fn new(url: Url) -> Self {
        PushgatewayConfig {
            url,
            job: default_job(),
            grouping: BTreeMap::new(),
            timeout: DEFAULT_TIMEOUT,
            delete_on_shutdown: false,
            basic_auth: None,
            bearer_token: None,
            bearer_token_file: None,
            tls_config: TlsConfig::default(),
        }
    }

    /// Check what can be checked without the network. Messages name the
    /// field (`pushgateway.<field>`).
    pub fn validate(&self) -> Result<(), Error> {
        let bad =
            |field: &str, why: String| Err(Error::Config(format!("pushgateway.{field}: {why}")));
        if !matches!(self.url.scheme(), "http" | "https") {
            return bad(
                "url",
                format!("scheme must be http or https, got {:?}", self.url.scheme()),
            );
        }
        if self.url.cannot_be_a_base() || self.url.host().is_none() {
            return bad("url", format!("{:?} has no host", self.url.as_str()));
        }
        if !self.url.username().is_empty() || self.url.password().is_some() {
            // A URL is printed in logs and errors; credentials must not be.
            return bad(
                "url",
                "must not carry credentials; use pushgateway.basic_auth".to_string(),
            );
        }
        if self.url.query().is_some() || self.url.fragment().is_some() {
            return bad("url", "must not have a query or a fragment".to_string());
        }
        if self.job.is_empty() {
            return bad("job", "must not be empty".to_string());
        }
        for name in self.grouping.keys() {
            if name == "job" {
                return bad(
                    "grouping",
                    "\"job\" is set by pushgateway.job, not here".to_string(),
                );
            }
            if !crate::metrics::is_valid_label_name(name) {
                return bad(
                    "grouping",
                    format!("{name:?} is not a valid Prometheus label name"),
                );
            }
            if name.starts_with("__") {
                return bad(
                    "grouping",
                    format!("{name:?}: names starting with \"__\" are reserved"),
                );
            }
            if SERIES_LABELS.contains(&name.as_str()) {
                return bad(
                    "grouping",
                    format!(
                        "{name:?} is a label of the reporter's own series; the gateway \
                         would overwrite it, series differing only in it would collide \
                         and the whole push would be refused"
                    ),
                );
            }
        }
        if self.timeout.is_zero() {
            return bad("timeout", "must be more than 0".to_string());
        }
        if let Some(basic) = &self.basic_auth {
            basic.validate("pushgateway.basic_auth")?;
            // Stricter than remote-write (which, like Prometheus, sends an
            // empty password): this sink has always asked for one.
            if basic.password.is_none() && basic.password_file.is_none() {
                return bad("basic_auth", "needs password or password_file".to_string());
            }
        }
        if self.bearer_token.is_some() && self.bearer_token_file.is_some() {
            return bad(
                "bearer_token",
                "set one of bearer_token and bearer_token_file, not both".to_string(),
            );
        }
        if self.basic_auth.is_some()
            && (self.bearer_token.is_some() || self.bearer_token_file.is_some())
        {
            return bad(
                "basic_auth",
                "set either basic_auth or a bearer token, not both".to_string(),
            );
        }
        self.tls_config
            .validate("pushgateway.tls_config", self.url.host_str())
    }
}

/// The group's URL: `<base>/metrics/job/<job>{/<label>/<value>}`.
fn group_url(base: &Url, job: &str, grouping: &BTreeMap<String, String>) -> Result<Url, Error> {
    let mut url = base.clone();
    {
        let mut segments = url.path_segments_mut().map_err(|()| {
            Error::Config(format!(
                "pushgateway.url: {:?} cannot be a base URL",
                base.as_str()
            ))
        })?;
        segments.pop_if_empty().push("metrics");
        for (name, value) in std::iter::once(("job", job)).chain(
            grouping
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str())),
        ) {
            if needs_base64(value) {
                segments.push(&format!("{name}@base64"));
                segments.push(&encode_base64(value));
            } else {
                // `push` percent-encodes the segment.
                segments.push(name);
                segments.push(value);
            }
        }
    }
    Ok(url)
}

/// Values the Pushgateway can only read in base64: a `/` would split the
/// segment (even encoded as `%2F`), and an empty or dot segment disappears
/// when the path is cleaned.
fn needs_base64(value: &str) -> bool {
    value.is_empty() || value.contains('/') || value == "." || value == ".."
}

/// RFC 4648 URL-safe base64; the Pushgateway reads a lone `=` as the empty
/// value (its README, "URL" section).
fn encode_base64(value: &str) -> String {
    if value.is_empty() {
        "=".to_string()
    } else {
        base64::engine::general_purpose::URL_SAFE.encode(value)
    }
}

/// A password or token, inline or read from a file at each use.
#[derive(Debug)]
enum SecretSource {
    Inline(Secret),
    File { field: &'static str, path: PathBuf },
}

impl SecretSource {
    fn load(&self) -> Result<Secret, Error> {
        match self {
            SecretSource::Inline(secret) => Ok(secret.clone()),
            SecretSource::File { field, path } => {
                let secret = read_credential(path, field)?;
                if secret.is_empty() {
                    return Err(Error::Config(format!(
                        "{field}: {} is empty",
                        path.display()
                    )));
                }
                Ok(secret)
            }
        }
    }
}

#[derive(Debug)]
enum Auth {
    None,
    Basic {
        username: String,
        password: SecretSource,
    },
    Bearer(SecretSource),
}

impl Auth {
    fn from_config(config: &PushgatewayConfig) -> Auth {
        if let Some(basic) = &config.basic_auth {
            let password = match (&basic.password, &basic.password_file) {
                (_, Some(path)) => SecretSource::File {
                    field: "pushgateway.basic_auth.password_file",
                    path: path.clone(),
                },
                (Some(secret), None) => SecretSource::Inline(secret.clone()),
                // validate() refuses a basic_auth without a password.
                (None, None) => SecretSource::Inline(Secret::default()),
            };
            return Auth::Basic {
                username: basic.username.clone(),
                password,
            };
        }
        if let Some(path) = &config.bearer_token_file {
            return Auth::Bearer(SecretSource::File {
                field: "pushgateway.bearer_token_file",
                path: path.clone(),
            });
        }
        match &config.bearer_token {
            Some(token) => Auth::Bearer(SecretSource::Inline(token.clone())),
            None => Auth::None,
        }
    }

    /// Load the credentials (re-reading files) and add them to the request.
    fn apply(&self, request: reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder, Error> {
        Ok(match self {
            Auth::None => request,
            Auth::Basic { username, password } => {
                request.basic_auth(username, Some(password.load()?.expose()))
            }
            Auth::Bearer(token) => request.bearer_auth(token.load()?.expose()),
        })
    }

    /// Fail at start, not at the first push, when a file is missing.
    fn check(&self) -> Result<(), Error> {
        match self {
            Auth::None => Ok(()),
            Auth::Basic { password, .. } => password.load().map(drop),
            Auth::Bearer(token) => token.load().map(drop),
        }
    }
}

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
        let auth = Auth::from_config(&config);
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

    /// One request per attempt until success, a refusal that retrying
    /// cannot fix, `MAX_ATTEMPTS`, or the budget of `timeout` × attempts.
    /// `samples` (those in `body`) are added to the retried count at each
    /// retry.
    async fn send_with_retries(
        &self,
        method: Method,
        body: Option<Bytes>,
        samples: u64,
    ) -> Result<(), Error> {
        let budget = self.timeout * MAX_ATTEMPTS;
        let deadline = Instant::now() + budget;
        let mut attempt = 1;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let error = match self
                .send_once(&method, body.as_ref(), self.timeout.min(remaining))
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let backoff = FIRST_BACKOFF
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(MAX_BACKOFF);
            let remaining = deadline.saturating_duration_since(Instant::now());
            if !error.is_retriable() || attempt >= MAX_ATTEMPTS || remaining <= backoff {
                return Err(error);
            }
            warn!(
                target_url = %self.target,
                method = %method,
                attempt,
                backoff_ms = backoff.as_millis() as u64,
                error = %error,
                "Pushgateway request failed, retrying"
            );
            tokio::time::sleep(backoff).await;
            self.stats
                .samples_retried
                .fetch_add(samples, Ordering::Relaxed);
            attempt += 1;
        }
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
        let body = read_error_body(response).await;
        Err(Error::Pushgateway {
            target: self.target.clone(),
            status: Some(status.as_u16()),
            message: format!(
                "{method} {} answered {}: {}",
                self.group_url.path(),
                status_text(status),
                truncate_body(body.trim_end(), MAX_ERROR_BODY_SHOWN)
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

/// The body of a refused request, read up to `MAX_ERROR_BODY_READ`.
async fn read_error_body(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_ERROR_BODY_READ - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if body.len() >= MAX_ERROR_BODY_READ {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                if body.is_empty() {
                    return format!("(body unreadable: {e})");
                }
                break;
            }
        }
    }
    String::from_utf8_lossy(&body).into_owned()
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
    use std::path::Path;

    use super::*;
    use crate::metrics::{CORRELATED, VCENTER_UP};

    fn url(text: &str) -> Url {
        Url::parse(text).expect("test URLs are valid")
    }

    fn grouping(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Base URL, job, grouping labels, expected group URL.
    type UrlCase<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);

    #[test]
    fn group_urls_encode_each_segment_as_the_gateway_reads_it() {
        let cases: &[UrlCase] = &[
            (
                "http://pg:9091",
                "vsphere-ci-session-metrics",
                &[],
                "http://pg:9091/metrics/job/vsphere-ci-session-metrics",
            ),
            (
                "http://pg:9091/",
                "j",
                &[("vcenter", "vc1.example.com")],
                "http://pg:9091/metrics/job/j/vcenter/vc1.example.com",
            ),
            (
                "https://proxy.example.com/pushgateway/",
                "j",
                &[],
                "https://proxy.example.com/pushgateway/metrics/job/j",
            ),
            // Grouping labels come in name order.
            (
                "http://pg:9091",
                "j",
                &[("zone", "z"), ("instance", "i")],
                "http://pg:9091/metrics/job/j/instance/i/zone/z",
            ),
            (
                "http://pg:9091",
                "ci/jobs",
                &[],
                "http://pg:9091/metrics/job@base64/Y2kvam9icw==",
            ),
            (
                "http://pg:9091",
                "j",
                &[("dc", "a/b")],
                "http://pg:9091/metrics/job/j/dc@base64/YS9i",
            ),
            // URL-safe alphabet: standard base64 of "???/" is "Pz8/Lw==".
            (
                "http://pg:9091",
                "j",
                &[("dc", "???/")],
                "http://pg:9091/metrics/job/j/dc@base64/Pz8_Lw==",
            ),
            (
                "http://pg:9091",
                "j",
                &[("shard", "")],
                "http://pg:9091/metrics/job/j/shard@base64/=",
            ),
            (
                "http://pg:9091",
                "j",
                &[("a", "."), ("b", "..")],
                "http://pg:9091/metrics/job/j/a@base64/Lg==/b@base64/Li4=",
            ),
            (
                "http://pg:9091",
                "j",
                &[("site", "a b%?#")],
                "http://pg:9091/metrics/job/j/site/a%20b%25%3F%23",
            ),
            (
                "http://pg:9091",
                "j",
                &[("user", "ci@vsphere.local")],
                "http://pg:9091/metrics/job/j/user/ci@vsphere.local",
            ),
        ];
        for (base, job, pairs, expected) in cases {
            let built = group_url(&url(base), job, &grouping(pairs)).unwrap();
            assert_eq!(built.as_str(), *expected, "{base} {job} {pairs:?}");
        }
    }

    fn config() -> PushgatewayConfig {
        PushgatewayConfig::new(url("http://127.0.0.1:9091"))
    }

    #[test]
    fn defaults_apply_to_a_config_with_only_a_url() {
        let parsed: PushgatewayConfig =
            serde_yaml::from_str("url: http://pushgateway:9091\n").unwrap();
        assert_eq!(parsed.job, "vsphere-ci-session-metrics");
        assert!(parsed.grouping.is_empty());
        assert_eq!(parsed.timeout, Duration::from_secs(10));
        assert!(!parsed.delete_on_shutdown);
        assert!(parsed.basic_auth.is_none() && parsed.bearer_token.is_none());
        let tls = &parsed.tls_config;
        assert!(tls.ca_file.is_none() && tls.cert_file.is_none() && tls.key_file.is_none());
        assert!(!tls.insecure_skip_verify);
        parsed.validate().unwrap();
    }

    #[test]
    fn every_field_is_read_from_yaml_and_secrets_stay_hidden() {
        let parsed: PushgatewayConfig = serde_yaml::from_str(
            "url: https://pg.example.com/prefix\n\
             job: reporter\n\
             grouping: {instance: vc1}\n\
             timeout: 1m 30s\n\
             delete_on_shutdown: true\n\
             basic_auth: {username: ci, password: hunter2}\n\
             tls_config: {ca_file: /etc/ca.pem, cert_file: /etc/c.pem, key_file: /etc/k.pem, \
             insecure_skip_verify: false}\n",
        )
        .unwrap();
        assert_eq!(parsed.url.as_str(), "https://pg.example.com/prefix");
        assert_eq!(parsed.job, "reporter");
        assert_eq!(parsed.grouping, grouping(&[("instance", "vc1")]));
        assert_eq!(parsed.timeout, Duration::from_secs(90));
        assert!(parsed.delete_on_shutdown);
        let basic = parsed.basic_auth.as_ref().unwrap();
        assert_eq!(basic.password.as_ref().unwrap().expose(), "hunter2");
        assert_eq!(
            parsed.tls_config.ca_file.as_deref(),
            Some(Path::new("/etc/ca.pem"))
        );
        assert_eq!(
            parsed.tls_config.cert_file.as_deref(),
            Some(Path::new("/etc/c.pem"))
        );
        assert_eq!(
            parsed.tls_config.key_file.as_deref(),
            Some(Path::new("/etc/k.pem"))
        );
        assert!(!format!("{parsed:?}").contains("hunter2"));
        parsed.validate().unwrap();
    }

    #[test]
    fn unknown_fields_and_bad_durations_are_refused_by_name() {
        let unknown = serde_yaml::from_str::<PushgatewayConfig>("url: http://pg\njobs: x\n")
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("unknown field `jobs`"), "{unknown}");
        let old_tls = serde_yaml::from_str::<PushgatewayConfig>("url: http://pg\ntls: {}\n")
            .unwrap_err()
            .to_string();
        assert!(old_tls.contains("unknown field `tls`"), "{old_tls}");
        let duration = serde_yaml::from_str::<PushgatewayConfig>("url: http://pg\ntimeout: ten\n")
            .unwrap_err()
            .to_string();
        assert!(duration.contains("invalid duration \"ten\""), "{duration}");
        let negative = serde_yaml::from_str::<PushgatewayConfig>("url: http://pg\ntimeout: -5\n")
            .unwrap_err()
            .to_string();
        assert!(negative.contains("must not be negative"), "{negative}");
    }

    #[test]
    fn timeouts_are_read_like_every_other_duration() {
        for (yaml, seconds) in [("30s", 30), ("1m30s", 90), ("45", 45), ("\"20\"", 20)] {
            let parsed: PushgatewayConfig =
                serde_yaml::from_str(&format!("url: http://pg\ntimeout: {yaml}\n")).unwrap();
            assert_eq!(parsed.timeout, Duration::from_secs(seconds), "{yaml}");
        }
    }

    #[test]
    fn invalid_configs_are_refused_with_the_field_named() {
        type Edit = fn(&mut PushgatewayConfig);
        let basic = |password: Option<&str>, file: Option<&str>| BasicAuth {
            username: "ci".into(),
            password: password.map(Secret::new),
            password_file: file.map(PathBuf::from),
        };
        let cases: Vec<(Edit, &str)> = vec![
            (
                |c| c.url = url("ftp://pg:21"),
                "pushgateway.url: scheme must be http or https, got \"ftp\"",
            ),
            (
                |c| c.url = url("http://user:pw@pg:9091"),
                "pushgateway.url: must not carry credentials; use pushgateway.basic_auth",
            ),
            (
                |c| c.url = url("http://pg:9091/?x=1"),
                "pushgateway.url: must not have a query or a fragment",
            ),
            (|c| c.job.clear(), "pushgateway.job: must not be empty"),
            (
                |c| c.grouping = grouping(&[("job", "x")]),
                "pushgateway.grouping: \"job\" is set by pushgateway.job, not here",
            ),
            (
                |c| c.grouping = grouping(&[("v-center", "x")]),
                "pushgateway.grouping: \"v-center\" is not a valid Prometheus label name",
            ),
            (
                |c| c.grouping = grouping(&[("__name__", "x")]),
                "pushgateway.grouping: \"__name__\": names starting with \"__\" are reserved",
            ),
            (
                |c| c.grouping = grouping(&[("instance", "i"), ("vcenter", "vc1")]),
                "pushgateway.grouping: \"vcenter\" is a label of the reporter's own series; \
                 the gateway would overwrite it, series differing only in it would collide \
                 and the whole push would be refused",
            ),
            (
                |c| c.timeout = Duration::ZERO,
                "pushgateway.timeout: must be more than 0",
            ),
            (
                |c| c.tls_config.cert_file = Some("/c.pem".into()),
                "pushgateway.tls_config: set both cert_file and key_file for a client \
                 certificate, or neither",
            ),
            (
                |c| c.tls_config.key_file = Some("/k.pem".into()),
                "pushgateway.tls_config: set both cert_file and key_file for a client \
                 certificate, or neither",
            ),
            (
                |c| {
                    c.basic_auth = Some(BasicAuth {
                        username: String::new(),
                        password: Some(Secret::new("p")),
                        password_file: None,
                    })
                },
                "pushgateway.basic_auth.username: must not be empty",
            ),
            (
                |c| {
                    c.bearer_token = Some(Secret::new("t"));
                    c.bearer_token_file = Some("/t".into());
                },
                "pushgateway.bearer_token: set one of bearer_token and bearer_token_file, not both",
            ),
        ];
        for (edit, expected) in cases {
            let mut c = config();
            edit(&mut c);
            match c.validate() {
                Err(Error::Config(message)) => assert_eq!(message, expected),
                other => panic!("expected {expected:?}, got {other:?}"),
            }
        }
        let with_basic = |b: BasicAuth, token: bool| {
            let mut c = config();
            c.basic_auth = Some(b);
            if token {
                c.bearer_token = Some(Secret::new("t"));
            }
            c.validate().unwrap_err().to_string()
        };
        assert_eq!(
            with_basic(basic(Some("p"), Some("/p")), false),
            "pushgateway.basic_auth: set one of password and password_file, not both"
        );
        assert_eq!(
            with_basic(basic(None, None), false),
            "pushgateway.basic_auth: needs password or password_file"
        );
        assert_eq!(
            with_basic(basic(Some("p"), None), true),
            "pushgateway.basic_auth: set either basic_auth or a bearer token, not both"
        );
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

    #[test]
    fn every_label_of_the_reporters_series_is_refused_as_a_grouping_label() {
        for name in SERIES_LABELS {
            let mut c = config();
            c.grouping = grouping(&[(name, "x")]);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.starts_with("pushgateway.grouping: "), "{name}: {err}");
        }
        let mut c = config();
        c.grouping = grouping(&[("instance", "x"), ("datacenter", "dc1")]);
        c.validate().unwrap();
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
