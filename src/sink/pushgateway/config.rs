//! Where and how to push: the `pushgateway` block of the config file (and
//! the `--pushgateway*` flags laid over it), validated at start so every
//! mistake is one line naming the field.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use url::Url;

use crate::error::Error;
use crate::http::{BasicAuth, TlsConfig, deserialize_opt_secret};
use crate::secret::Secret;

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
    "namespace",
    "attributed_by",
    "cluster_profile",
    "build_cluster",
    "__name__",
];

/// The `job` grouping label when none is configured.
pub const DEFAULT_JOB: &str = "vsphere-ci-session-metrics";
/// Time allowed to each request when none is configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

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

/// The `pushgateway` block as written in the file: every field optional,
/// decoded typed straight from the file (so no value is ever quoted back
/// in an error), and completed by the `--pushgateway*` flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePushgateway {
    /// Base URL (or `--pushgateway`).
    pub url: Option<String>,
    /// The `job` grouping label (or `--pushgateway-job`).
    pub job: Option<String>,
    /// Further grouping labels; `--pushgateway-grouping` adds to them.
    #[serde(default)]
    pub grouping: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "crate::config::deserialize_opt_duration")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub delete_on_shutdown: bool,
    #[serde(default)]
    pub basic_auth: Option<BasicAuth>,
    #[serde(default, deserialize_with = "deserialize_opt_secret")]
    pub bearer_token: Option<Secret>,
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_config: TlsConfig,
}

impl FilePushgateway {
    /// The block completed with its URL; defaults for what it leaves out.
    pub fn into_config(self, url: Url) -> PushgatewayConfig {
        PushgatewayConfig {
            url,
            job: self.job.unwrap_or_else(default_job),
            grouping: self.grouping,
            timeout: self.timeout.unwrap_or(DEFAULT_TIMEOUT),
            delete_on_shutdown: self.delete_on_shutdown,
            basic_auth: self.basic_auth,
            bearer_token: self.bearer_token,
            bearer_token_file: self.bearer_token_file,
            tls_config: self.tls_config,
        }
    }

    /// Whether the block says anything at all.
    pub fn is_empty(&self) -> bool {
        self.url.is_none()
            && self.job.is_none()
            && self.grouping.is_empty()
            && self.timeout.is_none()
            && !self.delete_on_shutdown
            && self.basic_auth.is_none()
            && self.bearer_token.is_none()
            && self.bearer_token_file.is_none()
    }
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
            return bad(
                "url",
                format!(
                    "{:?} has no host",
                    crate::config::redact_userinfo(self.url.as_str())
                ),
            );
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).expect("test URLs are valid")
    }

    fn grouping(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
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
}
