//! The HTTP side of one remote-write target: one POST, its headers, and what
//! the answer says. No retries here (see `retry.rs`) and no encoding (see
//! `encode.rs`).
//!
//! Headers follow the Remote-Write 1.0 and 2.0 specs
//! (<https://prometheus.io/docs/specs/remote_write_spec/#protocol>,
//! <https://prometheus.io/docs/specs/prw/remote_write_spec_2_0/#protocol>).
//! Credentials read from files (`password_file`, `credentials_file`,
//! `bearer_token_file`) are read at every request, so a rotated Kubernetes
//! Secret is picked up without a restart.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::config::RemoteWriteConfig;
use super::encode::WireVersion;
use super::retry::parse_retry_after;
use crate::error::{Error, error_chain};
use crate::http::{Auth, Credential, client_builder, read_error_body};

/// `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("vsphere-ci-session-metrics/", env!("CARGO_PKG_VERSION"));
/// Header naming the protocol version.
pub const VERSION_HEADER: &str = "X-Prometheus-Remote-Write-Version";
/// Header by which a 2.0 receiver confirms how many samples it wrote.
pub const SAMPLES_WRITTEN_HEADER: &str = "X-Prometheus-Remote-Write-Samples-Written";
/// Tenant header of Mimir, Cortex and Thanos.
pub const TENANT_HEADER: &str = "X-Scope-OrgID";
/// Error bodies are logged up to this many bytes.
pub const MAX_LOGGED_BODY: usize = crate::http::MAX_SHOWN_BODY;

/// What a receiver answered.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// `Retry-After`, parsed when present (the sink honours it on 429 and
    /// 503).
    pub retry_after: Option<Duration>,
    /// `X-Prometheus-Remote-Write-Samples-Written`, when present.
    pub samples_written: Option<u64>,
    /// The body of a non-2xx answer, cut to [`MAX_LOGGED_BODY`].
    pub body: String,
}

/// One target's HTTP client. `Debug` shows the target name only.
pub struct HttpService {
    client: reqwest::Client,
    url: reqwest::Url,
    target: String,
    headers: HeaderMap,
    auth: Auth,
}

impl std::fmt::Debug for HttpService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpService")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl HttpService {
    /// Build the client (TLS, headers) from a validated config.
    pub fn new(config: &RemoteWriteConfig, target: String) -> Result<Self, Error> {
        let url = reqwest::Url::parse(&config.url)
            .map_err(|e| Error::Config(format!("remote_write url: {e}")))?;
        let tls = config.tls_config.clone().unwrap_or_default();
        let builder = client_builder(
            &tls,
            "remote_write.tls_config",
            config.remote_timeout.min(Duration::from_secs(10)),
            USER_AGENT,
        )?
        .pool_idle_timeout(Duration::from_secs(90));
        let client = builder
            .build()
            .map_err(|e| Error::Config(format!("remote_write: HTTP client: {e}")))?;

        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| Error::Config(format!("remote_write headers {name:?}: {e}")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|e| Error::Config(format!("remote_write headers {name:?}: {e}")))?;
            headers.insert(name, value);
        }
        if let Some(tenant) = &config.tenant {
            let value = HeaderValue::from_str(tenant)
                .map_err(|e| Error::Config(format!("remote_write tenant: {e}")))?;
            headers.insert(TENANT_HEADER, value);
        }
        headers.insert(
            reqwest::header::CONTENT_ENCODING,
            HeaderValue::from_static("snappy"),
        );

        let auth = if let Some(b) = &config.basic_auth {
            Auth::Basic {
                username: b.username.clone(),
                password: Credential::from_parts(
                    b.password.as_ref(),
                    b.password_file.as_deref(),
                    "remote_write.basic_auth.password_file",
                ),
            }
        } else if let Some(a) = &config.authorization {
            Auth::Header {
                scheme: a.auth_type.clone(),
                credentials: Credential::from_parts(
                    a.credentials.as_ref(),
                    a.credentials_file.as_deref(),
                    "remote_write.authorization.credentials_file",
                ),
            }
        } else if config.bearer_token.is_some() || config.bearer_token_file.is_some() {
            Auth::Header {
                scheme: "Bearer".to_string(),
                credentials: Credential::from_parts(
                    config.bearer_token.as_ref(),
                    config.bearer_token_file.as_deref(),
                    "remote_write.bearer_token_file",
                ),
            }
        } else {
            Auth::None
        };
        let service = HttpService {
            client,
            url,
            target,
            headers,
            auth,
        };
        // Fail at start, not at the first cycle, when a credentials file is
        // missing; it is read again at every request.
        service.auth.check()?;
        Ok(service)
    }

    /// Remove the URL and its query from a message, should a lower layer
    /// have put them there: the query may hold a token.
    fn scrub(&self, mut message: String) -> String {
        let full = self.url.as_str();
        if message.contains(full) {
            message = message.replace(full, &self.target);
        }
        if let Some(query) = self.url.query().filter(|q| !q.is_empty())
            && message.contains(query)
        {
            message = message.replace(query, "<redacted>");
        }
        message
    }

    fn error(&self, status: Option<u16>, message: String) -> Error {
        Error::RemoteWrite {
            target: self.target.clone(),
            status,
            message,
        }
    }

    /// POST one compressed body. `Err` means no answer arrived (connection,
    /// TLS, timeout) and carries `status: None`; any HTTP answer is `Ok`.
    pub async fn send(
        &self,
        body: Bytes,
        version: WireVersion,
        timeout: Duration,
    ) -> Result<Reply, Error> {
        let started = tokio::time::Instant::now();
        let mut request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(
                reqwest::header::CONTENT_TYPE,
                HeaderValue::from_static(version.content_type()),
            )
            .header(VERSION_HEADER, version.version_header())
            .timeout(timeout)
            .body(body);
        request = self.auth.apply(request)?;
        let response = request.send().await.map_err(|e| {
            let what = if e.is_timeout() {
                format!("no answer within {timeout:?}")
            } else {
                // reqwest's message ends with "for url (<url>)", query
                // included: drop it; the error names the target instead.
                self.scrub(format!("request failed: {}", error_chain(&e.without_url())))
            };
            self.error(None, what)
        })?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let retry_after =
            header("retry-after").and_then(|v| parse_retry_after(&v, SystemTime::now()));
        let samples_written = header(SAMPLES_WRITTEN_HEADER).and_then(|v| v.trim().parse().ok());
        let body = if (200..300).contains(&status) {
            String::new()
        } else {
            let left = timeout.saturating_sub(started.elapsed());
            read_error_body(response, left).await
        };
        Ok(Reply {
            status,
            retry_after,
            samples_written,
            body,
        })
    }
}
