//! Settings of one remote-write target.
//!
//! Field names are those of Prometheus's own `remote_write` block
//! (<https://prometheus.io/docs/prometheus/latest/configuration/configuration/#remote_write>)
//! so an operator can paste theirs: `url`, `name`, `remote_timeout`,
//! `headers`, `basic_auth`, `authorization`, `bearer_token(_file)`,
//! `tls_config`, `protobuf_message`, and `queue_config` (the fields that mean
//! something for one sender per target; shard and capacity settings are
//! accepted and ignored). Prometheus's relabelling, OAuth2, SigV4 and Azure
//! AD settings are not supported and are refused by name (unknown fields
//! are an error, so a typo never goes unnoticed).
//!
//! Our own additions: `protocol` (v1, v2 or auto), `tenant`
//! (`X-Scope-OrgID`), the outage buffer bounds `max_buffered_samples` and
//! `max_buffered_age`, and `retry` (the older spelling of `queue_config`'s
//! backoff settings).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::Error;
use crate::http::deserialize_opt_secret;
pub use crate::http::{BasicAuth, TlsConfig};
use crate::secret::Secret;

/// Protobuf message name of Remote-Write 1.0, as in Prometheus's `protobuf_message`.
pub const MESSAGE_V1: &str = "prometheus.WriteRequest";
/// Protobuf message name of Remote-Write 2.0, as in Prometheus's `protobuf_message`.
pub const MESSAGE_V2: &str = "io.prometheus.write.v2.Request";

/// Headers the sink sets itself. Prometheus refuses these in `headers` too;
/// we do the same, at start-up, so a request never goes out with a protocol
/// header the operator overrode by mistake.
pub const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "host",
    "content-encoding",
    "content-length",
    "content-type",
    "user-agent",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "www-authenticate",
    "transfer-encoding",
    "x-prometheus-remote-write-version",
];

/// Which remote-write protocol to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Remote-Write 1.0 (`prometheus.WriteRequest`): every receiver speaks it.
    #[default]
    V1,
    /// Remote-Write 2.0 (`io.prometheus.write.v2.Request`) only. A 2xx
    /// without `X-Prometheus-Remote-Write-Samples-Written` means the receiver
    /// does not speak 2.0: the cycle fails and is dropped, never retried.
    V2,
    /// Start with 2.0 and fall back to 1.0 for good (for this target, until
    /// restart) when the receiver shows it does not speak 2.0: HTTP 415, a 400
    /// before any 2.0 request was confirmed, or a 2xx without the
    /// `X-Prometheus-Remote-Write-Samples-Written` header.
    Auto,
}

/// Settings of one remote-write target. Only `url` is required. `Debug`
/// hides the URL's query, header values and every secret.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteWriteConfig {
    /// The receiver's endpoint, e.g. `http://prometheus:9090/api/v1/write`.
    /// User info (`https://user:pass@host/`) is refused: use `basic_auth`.
    /// A query string is sent but never printed, since it may hold a token.
    pub url: String,
    /// A name for logs and the `target` label of self-metrics; defaults to
    /// the URL without its query.
    pub name: Option<String>,
    /// Time allowed for one request, retries included (Prometheus's
    /// duration syntax: `30s`, `1m30s`, or a number of seconds). Default `30s`. A publish spends at most
    /// twice this in all, however much is buffered.
    #[serde(deserialize_with = "crate::config::deserialize_duration")]
    pub remote_timeout: Duration,
    /// Extra HTTP headers sent with every request. Headers the protocol or
    /// authentication sets (Content-Type, Authorization, ...) are refused.
    pub headers: BTreeMap<String, String>,
    /// HTTP basic authentication.
    pub basic_auth: Option<BasicAuth>,
    /// `Authorization: <type> <credentials>` header.
    pub authorization: Option<Authorization>,
    /// Legacy Prometheus setting: a bearer token. Prefer `authorization`.
    #[serde(deserialize_with = "deserialize_opt_secret")]
    pub bearer_token: Option<Secret>,
    /// Legacy Prometheus setting: a file holding a bearer token, read at
    /// every request so a rotated token is picked up.
    pub bearer_token_file: Option<PathBuf>,
    /// TLS settings for `https` URLs.
    pub tls_config: Option<TlsConfig>,
    /// Prometheus's protocol switch: `prometheus.WriteRequest` (1.0) or
    /// `io.prometheus.write.v2.Request` (2.0). When `protocol` is also set
    /// they must agree (`auto` agrees with either).
    pub protobuf_message: Option<String>,
    /// `v1` (default), `v2` or `auto`. Overrides nothing silently: with both
    /// this and `protobuf_message` set they must agree.
    pub protocol: Option<Protocol>,
    /// Tenant for multi-tenant receivers (Mimir, Cortex, Thanos), sent as
    /// `X-Scope-OrgID`.
    pub tenant: Option<String>,
    /// Most samples kept while the target is unreachable; the oldest cycles
    /// are dropped (and counted) past it. Default 500000.
    pub max_buffered_samples: usize,
    /// Oldest cycle kept while the target is unreachable. Default `1h`:
    /// Prometheus refuses samples older than about an hour as out of bounds,
    /// so an older cycle could never be accepted.
    #[serde(deserialize_with = "crate::config::deserialize_duration")]
    pub max_buffered_age: Duration,
    /// Backoff between retries of a failed request (older spelling;
    /// `queue_config` wins where both are set).
    pub retry: RetryConfig,
    /// Prometheus's `queue_config` block.
    pub queue_config: QueueConfig,
}

/// Prometheus's `queue_config`
/// (<https://prometheus.io/docs/prometheus/latest/configuration/configuration/#queue_config>),
/// so a pasted block works. One sender per target sends the queue oldest
/// first, so the shard and capacity settings mean nothing here: they are
/// accepted and ignored with one info line.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Most samples in one request when sending a backlog (several cycles
    /// per request). Default 2000.
    pub max_samples_per_send: Option<usize>,
    /// First wait after a failure. Default `30ms`.
    #[serde(deserialize_with = "crate::config::deserialize_opt_duration")]
    pub min_backoff: Option<Duration>,
    /// Longest wait between two attempts. Default `30s`.
    #[serde(deserialize_with = "crate::config::deserialize_opt_duration")]
    pub max_backoff: Option<Duration>,
    /// Oldest cycle kept while the target is unreachable (same as
    /// `max_buffered_age`). Default `1h`.
    #[serde(deserialize_with = "crate::config::deserialize_opt_duration")]
    pub sample_age_limit: Option<Duration>,
    /// Retry a 429 (after its `Retry-After`); when false a 429 drops the
    /// request like any other 4xx. Default true.
    pub retry_on_http_429: Option<bool>,
    /// Ours, not Prometheus's: the most memory (bytes) the outage buffer
    /// holds; the oldest cycles are dropped (and counted) past it. Default
    /// 64 MiB.
    pub max_bytes: Option<usize>,
    /// Ignored (Prometheus shards).
    pub capacity: Option<u64>,
    /// Ignored (Prometheus shards).
    pub max_shards: Option<u64>,
    /// Ignored (Prometheus shards).
    pub min_shards: Option<u64>,
    /// Ignored: a cycle is sent as soon as it is handed off.
    #[serde(deserialize_with = "crate::config::deserialize_opt_duration")]
    pub batch_send_deadline: Option<Duration>,
}

/// Default of `queue_config.max_samples_per_send` (Prometheus's).
pub const DEFAULT_MAX_SAMPLES_PER_SEND: usize = 2000;
/// Default of `queue_config.max_bytes`: well inside the Deployment's memory
/// limit, and an hour of 4,000 series every 60 s needs about a quarter.
pub const DEFAULT_MAX_BYTES: usize = 64 * 1024 * 1024;

impl std::fmt::Debug for RemoteWriteConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Header values may be API keys: show the names only.
        let header_names: Vec<&String> = self.headers.keys().collect();
        f.debug_struct("RemoteWriteConfig")
            .field("url", &redact_url(&self.url))
            .field("name", &self.name)
            .field("remote_timeout", &self.remote_timeout)
            .field("headers", &header_names)
            .field("basic_auth", &self.basic_auth)
            .field("authorization", &self.authorization)
            .field("bearer_token", &self.bearer_token)
            .field("bearer_token_file", &self.bearer_token_file)
            .field("tls_config", &self.tls_config)
            .field("protobuf_message", &self.protobuf_message)
            .field("protocol", &self.protocol)
            .field("tenant", &self.tenant)
            .field("max_buffered_samples", &self.max_buffered_samples)
            .field("max_buffered_age", &self.max_buffered_age)
            .field("retry", &self.retry)
            .field("queue_config", &self.queue_config)
            .finish()
    }
}

impl Default for RemoteWriteConfig {
    fn default() -> Self {
        RemoteWriteConfig {
            url: String::new(),
            name: None,
            remote_timeout: Duration::from_secs(30),
            headers: BTreeMap::new(),
            basic_auth: None,
            authorization: None,
            bearer_token: None,
            bearer_token_file: None,
            tls_config: None,
            protobuf_message: None,
            protocol: None,
            tenant: None,
            max_buffered_samples: 500_000,
            max_buffered_age: Duration::from_secs(3600),
            retry: RetryConfig::default(),
            queue_config: QueueConfig::default(),
        }
    }
}

/// The `Authorization` header, as in Prometheus.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authorization {
    /// Scheme, default `Bearer`. `Basic` is refused (use `basic_auth`).
    #[serde(default = "default_auth_type", rename = "type")]
    pub auth_type: String,
    /// The credentials (or use `credentials_file`).
    #[serde(default, deserialize_with = "deserialize_opt_secret")]
    pub credentials: Option<Secret>,
    /// File holding the credentials, read at every request.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
}

fn default_auth_type() -> String {
    "Bearer".to_string()
}

/// Backoff bounds between retries, named like Prometheus's `queue_config`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// First wait after a failure. Default `30ms`.
    #[serde(deserialize_with = "crate::config::deserialize_duration")]
    pub min_backoff: Duration,
    /// Longest wait between two attempts. Default `30s`.
    #[serde(deserialize_with = "crate::config::deserialize_duration")]
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            min_backoff: Duration::from_millis(30),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl RemoteWriteConfig {
    /// `name`, or the URL without credentials or query: the `target` label
    /// of the self-metrics, which must be distinct per target.
    pub fn target_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| redact_url(&self.url))
    }

    /// Backoff bounds in force: `queue_config`, else `retry`.
    pub fn backoff(&self) -> (Duration, Duration) {
        let q = &self.queue_config;
        (
            q.min_backoff.unwrap_or(self.retry.min_backoff),
            q.max_backoff.unwrap_or(self.retry.max_backoff),
        )
    }

    /// The oldest cycle kept: `queue_config.sample_age_limit`, else
    /// `max_buffered_age`.
    pub fn sample_age_limit(&self) -> Duration {
        self.queue_config
            .sample_age_limit
            .unwrap_or(self.max_buffered_age)
    }

    /// `queue_config.max_samples_per_send`, default 2000.
    pub fn max_samples_per_send(&self) -> usize {
        self.queue_config
            .max_samples_per_send
            .unwrap_or(DEFAULT_MAX_SAMPLES_PER_SEND)
    }

    /// `queue_config.max_bytes`, default 64 MiB.
    pub fn max_bytes(&self) -> usize {
        self.queue_config.max_bytes.unwrap_or(DEFAULT_MAX_BYTES)
    }

    /// The `queue_config` fields set that mean nothing here.
    pub fn ignored_queue_settings(&self) -> Vec<&'static str> {
        let q = &self.queue_config;
        [
            ("capacity", q.capacity.is_some()),
            ("max_shards", q.max_shards.is_some()),
            ("min_shards", q.min_shards.is_some()),
            ("batch_send_deadline", q.batch_send_deadline.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }

    /// The protocol in force, from `protocol` and `protobuf_message`.
    pub fn effective_protocol(&self) -> Protocol {
        match (self.protocol, self.protobuf_message.as_deref()) {
            (Some(p), _) => p,
            (None, Some(MESSAGE_V2)) => Protocol::V2,
            _ => Protocol::V1,
        }
    }

    /// Check the settings; every message names the field.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |msg: String| Err(Error::Config(format!("remote_write: {msg}")));
        // The URL is never printed as written: it may carry credentials.
        let url = match url::Url::parse(&self.url) {
            Ok(u) => u,
            Err(e) => return bad(format!("url is not a valid URL: {e}")),
        };
        if !url.username().is_empty() || url.password().is_some() {
            // They would end up in every error message and log line that
            // names the URL; basic_auth keeps them a Secret.
            return Err(Error::Config(
                "remote_write url: must not carry credentials; use basic_auth".to_string(),
            ));
        }
        if url.scheme() != "http" && url.scheme() != "https" {
            return bad(format!(
                "url {:?}: the scheme must be http or https",
                redact_url(&self.url)
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return bad(format!("url {:?} has no host", redact_url(&self.url)));
        }
        if self.remote_timeout.is_zero() {
            return bad("remote_timeout must be above zero".to_string());
        }
        if self.queue_config.max_samples_per_send == Some(0) {
            return bad("queue_config.max_samples_per_send must be above zero".to_string());
        }

        for name in self.headers.keys() {
            if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                return bad(format!(
                    "headers: {name:?} is set by the sink itself and cannot be overridden"
                ));
            }
            if name.eq_ignore_ascii_case("x-scope-orgid") && self.tenant.is_some() {
                return bad(format!(
                    "headers: {name:?} conflicts with tenant; set only one"
                ));
            }
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return bad(format!("headers: {name:?} is not a valid header name"));
            }
        }
        for (name, value) in &self.headers {
            if reqwest::header::HeaderValue::from_str(value).is_err() {
                return bad(format!(
                    "headers: the value of {name:?} is not a valid header value"
                ));
            }
        }
        let auth_count = [
            self.basic_auth.is_some(),
            self.authorization.is_some(),
            self.bearer_token.is_some(),
            self.bearer_token_file.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if auth_count > 1 {
            return bad(
                "at most one of basic_auth, authorization, bearer_token and bearer_token_file may be set"
                    .to_string(),
            );
        }
        if let Some(b) = &self.basic_auth {
            b.validate("remote_write.basic_auth")?;
        }
        if let Some(a) = &self.authorization {
            if a.auth_type.eq_ignore_ascii_case("basic") {
                return bad("authorization.type Basic is not allowed; use basic_auth".to_string());
            }
            if a.auth_type.is_empty() || a.auth_type.contains(char::is_whitespace) {
                return bad(format!(
                    "authorization.type {:?} must be one word",
                    a.auth_type
                ));
            }
            if a.credentials.is_some() == a.credentials_file.is_some() {
                return bad(
                    "authorization: set exactly one of credentials and credentials_file"
                        .to_string(),
                );
            }
        }
        if let Some(tls) = &self.tls_config {
            tls.validate("remote_write.tls_config", url.host_str())?;
        }
        if let Some(m) = &self.protobuf_message {
            if m != MESSAGE_V1 && m != MESSAGE_V2 {
                return bad(format!(
                    "protobuf_message {m:?} must be {MESSAGE_V1:?} or {MESSAGE_V2:?}"
                ));
            }
            let agrees = match self.protocol {
                None | Some(Protocol::Auto) => true,
                Some(Protocol::V1) => m == MESSAGE_V1,
                Some(Protocol::V2) => m == MESSAGE_V2,
            };
            if !agrees {
                return bad(format!(
                    "protocol and protobuf_message {m:?} disagree; set only one"
                ));
            }
        }
        if let Some(t) = &self.tenant
            && (t.is_empty() || reqwest::header::HeaderValue::from_str(t).is_err())
        {
            return bad("tenant must be a non-empty header value".to_string());
        }
        if self.max_buffered_samples == 0 {
            return bad("max_buffered_samples must be above zero".to_string());
        }
        if self.max_buffered_age.is_zero() {
            return bad("max_buffered_age must be above zero".to_string());
        }
        if self.retry.min_backoff.is_zero() {
            return bad("retry.min_backoff must be above zero".to_string());
        }
        if self.retry.max_backoff < self.retry.min_backoff {
            return bad("retry.max_backoff must not be below retry.min_backoff".to_string());
        }
        let (min_backoff, max_backoff) = self.backoff();
        if min_backoff.is_zero() {
            return bad("queue_config.min_backoff must be above zero".to_string());
        }
        if max_backoff < min_backoff {
            return bad(format!(
                "queue_config.max_backoff ({}) must not be below the minimum backoff ({})",
                humantime::format_duration(max_backoff),
                humantime::format_duration(min_backoff)
            ));
        }
        Ok(())
    }
}

/// The URL without user info or query (which may hold credentials), for
/// logs and the `target` label.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "<invalid url>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<RemoteWriteConfig, Error> {
        let c: RemoteWriteConfig =
            serde_yaml::from_str(yaml).map_err(|e| Error::Config(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    fn err(yaml: &str) -> String {
        parse(yaml).unwrap_err().to_string()
    }

    #[test]
    fn a_pasted_prometheus_block_parses_with_defaults() {
        let c = parse(
            "url: https://mimir.example/api/v1/push\n\
             name: mimir\n\
             remote_timeout: 10s\n\
             headers: {X-Api-Key: k3y-value}\n\
             basic_auth: {username: u, password: p}\n\
             tls_config: {insecure_skip_verify: true}\n\
             protobuf_message: io.prometheus.write.v2.Request\n",
        )
        .unwrap();
        assert_eq!(c.remote_timeout, Duration::from_secs(10));
        assert_eq!(c.effective_protocol(), Protocol::V2);
        assert_eq!(c.max_buffered_samples, 500_000);
        assert_eq!(c.max_buffered_age, Duration::from_secs(3600));
        assert_eq!(c.retry.min_backoff, Duration::from_millis(30));
        assert_eq!(c.retry.max_backoff, Duration::from_secs(30));
        assert_eq!(c.max_samples_per_send(), 2000);
        assert_eq!(c.queue_config.retry_on_http_429, None);
        assert!(!format!("{c:?}").contains("password: Some(\"p\")"));
        assert!(format!("{c:?}").contains("<redacted>"));
        assert!(
            !format!("{c:?}").contains("k3y-value"),
            "header values are hidden"
        );
    }

    #[test]
    fn protocol_defaults_to_v1_and_auto_is_ours() {
        assert_eq!(
            parse("url: http://h/").unwrap().effective_protocol(),
            Protocol::V1
        );
        assert_eq!(
            parse("url: http://h/\nprotocol: auto")
                .unwrap()
                .effective_protocol(),
            Protocol::Auto
        );
    }

    #[test]
    fn bad_settings_are_refused_naming_the_field() {
        assert!(err("url: ftp://h/").contains("url"));
        assert!(err("url: http://h/\nheaders: {Content-Type: x}").contains("headers"));
        assert!(
            err("url: http://h/\nheaders: {user-agent: x}")
                .contains("User-Agent".to_lowercase().as_str())
        );
        assert!(err("url: http://h/\nremote_timeout: soon").contains("invalid duration"));
        assert!(
            err("url: http://h/\nqueue_config: {max_samples_per_send: 0}")
                .contains("queue_config.max_samples_per_send")
        );
        assert!(
            err("url: http://h/\nqueue_config: {min_backoff: 40s}").contains(
                "queue_config.max_backoff (30s) must not be below the minimum backoff (40s)"
            )
        );
        assert!(err("url: http://h/\nqueue_config: {shards: 4}").contains("shards"));
        assert!(
            err("url: http://h/\nbearer_token: t\nbasic_auth: {username: u}")
                .contains("at most one")
        );
        assert!(
            err("url: http://h/\nprotocol: v1\nprotobuf_message: io.prometheus.write.v2.Request")
                .contains("protobuf_message")
        );
        assert!(err("url: http://h/\nprotobuf_message: x").contains("protobuf_message"));
        assert!(
            err("url: http://h/\nauthorization: {type: Basic, credentials: x}")
                .contains("authorization.type")
        );
        assert!(err("url: http://h/\ntls_config: {cert_file: /c}").contains("tls_config"));
        assert!(
            err("url: http://h/\nretry: {min_backoff: 2s, max_backoff: 1s}")
                .contains("retry.max_backoff")
        );
        assert!(err("url: http://h/\ntenant: a\nheaders: {X-Scope-OrgID: b}").contains("tenant"));
    }

    #[test]
    fn a_pasted_queue_config_works_and_shard_settings_are_ignored_by_name() {
        let c = parse(
            "url: http://h/\n\
             retry: {min_backoff: 1s, max_backoff: 2s}\n\
             queue_config:\n  capacity: 10000\n  max_shards: 50\n  min_shards: 1\n  \
             max_samples_per_send: 500\n  batch_send_deadline: 5s\n  min_backoff: 30ms\n  \
             max_backoff: 10s\n  retry_on_http_429: false\n  sample_age_limit: 30m\n",
        )
        .unwrap();
        assert_eq!(c.max_samples_per_send(), 500);
        assert_eq!(
            c.backoff(),
            (Duration::from_millis(30), Duration::from_secs(10)),
            "queue_config wins over retry"
        );
        assert_eq!(c.sample_age_limit(), Duration::from_secs(1800));
        assert_eq!(c.queue_config.retry_on_http_429, Some(false));
        assert_eq!(
            c.ignored_queue_settings(),
            [
                "capacity",
                "max_shards",
                "min_shards",
                "batch_send_deadline"
            ]
        );
        let plain = parse("url: http://h/\nretry: {min_backoff: 1s, max_backoff: 2s}").unwrap();
        assert_eq!(
            plain.backoff(),
            (Duration::from_secs(1), Duration::from_secs(2))
        );
        assert_eq!(plain.sample_age_limit(), Duration::from_secs(3600));
        assert!(plain.ignored_queue_settings().is_empty());
    }

    #[test]
    fn durations_take_prometheus_syntax_or_a_number_of_seconds() {
        let c = parse(
            "url: http://h/\n\
             remote_timeout: 30\n\
             max_buffered_age: 1m30s\n\
             retry: {min_backoff: 500ms, max_backoff: \"2\"}\n",
        )
        .unwrap();
        assert_eq!(c.remote_timeout, Duration::from_secs(30));
        assert_eq!(c.max_buffered_age, Duration::from_secs(90));
        assert_eq!(c.retry.min_backoff, Duration::from_millis(500));
        assert_eq!(c.retry.max_backoff, Duration::from_secs(2));
        assert_eq!(
            parse("url: http://h/\nremote_timeout: 30s")
                .unwrap()
                .remote_timeout,
            Duration::from_secs(30)
        );
        assert!(err("url: http://h/\nremote_timeout: -5").contains("invalid duration"));
        assert!(err("url: http://h/\nremote_timeout: 1.5").contains("remote_timeout"));
    }

    #[test]
    fn a_url_with_user_info_is_refused_without_echoing_it() {
        for url in [
            "https://user:pa55w0rd@mimir.example/api/v1/push",
            "https://pa55w0rd@mimir.example/api/v1/push",
        ] {
            let message = err(&format!("url: {url}"));
            assert!(
                message.contains("must not carry credentials; use basic_auth"),
                "{message}"
            );
            assert!(!message.contains("pa55w0rd"), "{message}");
        }
    }

    #[test]
    fn an_invalid_url_is_refused_without_echoing_it() {
        let message = err("url: \"https://user:pa55w0rd@mimir.example:99999/push\"");
        assert!(message.contains("not a valid URL"), "{message}");
        assert!(!message.contains("pa55w0rd"), "{message}");
    }

    #[test]
    fn a_query_string_is_kept_for_requests_but_not_named() {
        let c = parse("url: \"https://mimir.example/push?token=s3cr3t\"").unwrap();
        assert!(c.url.contains("token=s3cr3t"));
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }

    #[test]
    fn the_target_name_hides_credentials() {
        assert_eq!(
            redact_url("https://user:pw@h:9090/api/v1/write?token=x"),
            "https://h:9090/api/v1/write"
        );
    }
}
