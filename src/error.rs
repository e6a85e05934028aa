//! The crate-wide error type.
//!
//! One variant per step that can fail, named after the step, each keeping its
//! source. `kind()` gives a short, bounded string that is safe to use as a metric
//! label; `is_retriable()` tells the retry policies whether trying again can help.
//! Messages never carry a secret: passwords and tokens live in
//! [`crate::secret::Secret`], which prints as `<redacted>`.

use std::time::Duration;

/// Everything that can go wrong in a cycle or at start-up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is missing or invalid. The message names the flag, its
    /// environment variable or the config file field.
    #[error("{0}")]
    Config(String),

    /// The HTTP exchange with a vCenter failed before a response arrived
    /// (connection refused, TLS, timeout).
    #[error("vCenter {host}: request failed: {message}")]
    VcenterHttp { host: String, message: String },

    /// A vCenter answered with an HTTP status we cannot use (503 when it is out
    /// of sessions, 500 without a SOAP fault, ...). `body` is cut to 1 KiB.
    #[error("vCenter {host}: HTTP {status}: {body}")]
    VcenterStatus {
        host: String,
        status: u16,
        body: String,
    },

    /// `Login` was refused (wrong user or password).
    #[error("vCenter {host}: login as {user} failed: {message}")]
    VcenterLogin {
        host: String,
        user: String,
        message: String,
    },

    /// The last login was refused and the next one waits (see
    /// `vcenter::client`'s login backoff), so an account is never locked
    /// out by repeated bad logins.
    #[error(
        "vCenter {host}: not logging in again for {}: the last login was refused; \
         changing the password file ends the wait",
        humantime::format_duration(*wait)
    )]
    LoginBackoff {
        host: String,
        wait: std::time::Duration,
    },

    /// The session cookie is unknown or expired (`NotAuthenticated`).
    #[error("vCenter {host}: session is not authenticated")]
    NotAuthenticated { host: String },

    /// Any other SOAP fault.
    #[error("vCenter {host}: SOAP fault {fault}: {message}")]
    SoapFault {
        host: String,
        fault: String,
        message: String,
    },

    /// The response was not the XML we expect.
    #[error("vCenter {host}: malformed SOAP response: {message}")]
    SoapParse { host: String, message: String },

    /// Fetching the deck job list failed (network or HTTP status).
    #[error("Prow deck {url}: {message}")]
    DeckHttp { url: String, message: String },

    /// The deck job list was not the JSON we expect.
    #[error("Prow deck {url}: malformed job list: {message}")]
    DeckParse { url: String, message: String },

    /// Building a Kubernetes client from a kubeconfig or the in-cluster
    /// service account failed.
    #[error("Kubernetes client for {cluster}: {message}")]
    KubeConfig { cluster: String, message: String },

    /// A Kubernetes API call failed.
    #[error("Kubernetes API ({cluster}) {action}: {source}")]
    Kube {
        cluster: String,
        action: String,
        #[source]
        source: kube::Error,
    },

    /// A Kubernetes API call did not answer in time.
    #[error("Kubernetes API ({cluster}) {action}: timed out after {timeout:?}")]
    KubeTimeout {
        cluster: String,
        action: String,
        timeout: Duration,
    },

    /// A Kubernetes API answer was not the JSON we expect (or not UTF-8).
    /// `message` gives a category and a position only: the body may be a
    /// Secret, and serde's own text can quote values.
    #[error("Kubernetes API ({cluster}) {action}: malformed response: {message}")]
    KubeDecode {
        cluster: String,
        action: String,
        message: String,
    },

    /// A CI secret exists but none of its files gave a usable user.
    #[error("CI secret {namespace}/{name}: {message}")]
    CiSecret {
        namespace: String,
        name: String,
        message: String,
    },

    /// A remote-write target refused or failed a request.
    #[error("remote-write {target}: {message}")]
    RemoteWrite {
        target: String,
        status: Option<u16>,
        message: String,
    },

    /// A Pushgateway refused or failed a push.
    #[error("Pushgateway {target}: {message}")]
    Pushgateway {
        target: String,
        status: Option<u16>,
        message: String,
    },

    /// The cron scheduler could not be created or started, or stopped
    /// delivering ticks.
    #[error("scheduler: {0}")]
    Scheduler(String),

    /// A step ran out of its time budget.
    #[error("{what} timed out after {timeout:?}")]
    Timeout { what: String, timeout: Duration },

    /// Local I/O (reading a file named in the config, binding a port).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A short, bounded name for the failure, safe as a metric label value.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::VcenterHttp { .. } => "vcenter_http",
            Error::VcenterStatus { .. } => "vcenter_status",
            Error::VcenterLogin { .. } => "vcenter_login",
            Error::LoginBackoff { .. } => "vcenter_login_backoff",
            Error::NotAuthenticated { .. } => "vcenter_not_authenticated",
            Error::SoapFault { .. } => "soap_fault",
            Error::SoapParse { .. } => "soap_parse",
            Error::DeckHttp { .. } => "deck_http",
            Error::DeckParse { .. } => "deck_parse",
            Error::KubeConfig { .. } => "kube_config",
            Error::Kube { .. } => "kube_api",
            Error::KubeTimeout { .. } => "kube_timeout",
            Error::KubeDecode { .. } => "kube_decode",
            Error::CiSecret { .. } => "ci_secret",
            Error::RemoteWrite { .. } => "remote_write",
            Error::Pushgateway { .. } => "pushgateway",
            Error::Scheduler(_) => "scheduler",
            Error::Timeout { .. } => "timeout",
            Error::Io { .. } => "io",
        }
    }

    /// Whether the peer answered at all (an HTTP status), as opposed to a
    /// timeout or a failed connection.
    pub fn is_answer(&self) -> bool {
        match self {
            Error::RemoteWrite { status, .. } | Error::Pushgateway { status, .. } => {
                status.is_some()
            }
            Error::VcenterStatus { .. } => true,
            _ => false,
        }
    }

    /// Whether the same request may succeed if tried again: network failures,
    /// timeouts, 5xx and 429. A 4xx other than 429 means the request itself is
    /// wrong and will be refused again.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::VcenterHttp { .. } | Error::DeckHttp { .. } | Error::Timeout { .. } => true,
            Error::KubeTimeout { .. } => true,
            Error::VcenterStatus { status, .. } => *status >= 500,
            Error::RemoteWrite { status, .. } | Error::Pushgateway { status, .. } => match status {
                None => true,
                Some(s) => *s >= 500 || *s == 429,
            },
            _ => false,
        }
    }
}

/// Cut a response body for an error message or a log line: at most `max`
/// bytes, on a character boundary, marked when cut. Bodies are logged
/// verbatim (never parsed) so operators see what the peer said.
pub fn truncate_body(body: &str, max: usize) -> String {
    if body.len() <= max {
        return body.to_string();
    }
    let mut end = max;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes in all)", &body[..end], body.len())
}

/// An error and its causes on one line, `outer: cause: root cause`: reqwest's
/// own message is often only "error sending request", the useful part (refused
/// connection, unknown certificate issuer) sits in its sources. A cause whose
/// text is already contained in the previous link is skipped, since many
/// errors repeat their source in their own message.
///
/// A `reqwest::Error` prints the request URL, which may hold credentials
/// (user info or a token in the query): callers pass `&e.without_url()`
/// wherever the URL is not known to be clean.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut previous = text.clone();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !previous.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        previous = cause_text;
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_body_keeps_short_bodies_whole() {
        assert_eq!(truncate_body("abc", 10), "abc");
    }

    #[test]
    fn truncate_body_cuts_on_a_char_boundary() {
        let cut = truncate_body("ééé", 3);
        assert_eq!(cut, "é... (6 bytes in all)");
    }

    #[test]
    fn client_errors_are_not_retried_but_throttling_is() {
        let e = |status| Error::RemoteWrite {
            target: "t".into(),
            status: Some(status),
            message: String::new(),
        };
        assert!(!e(400).is_retriable());
        assert!(e(429).is_retriable());
        assert!(e(503).is_retriable());
    }

    /// An error with an optional source, to build chains.
    #[derive(Debug)]
    struct Link(&'static str, Option<Box<Link>>);

    impl std::fmt::Display for Link {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Link {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1
                .as_deref()
                .map(|l| l as &(dyn std::error::Error + 'static))
        }
    }

    #[test]
    fn error_chain_joins_every_cause() {
        let e = Link(
            "error sending request",
            Some(Box::new(Link(
                "client error (Connect)",
                Some(Box::new(Link("connection refused", None))),
            ))),
        );
        assert_eq!(
            error_chain(&e),
            "error sending request: client error (Connect): connection refused"
        );
    }

    #[test]
    fn error_chain_skips_a_cause_the_previous_link_already_says() {
        let e = Link(
            "tcp connect error: connection refused",
            Some(Box::new(Link(
                "connection refused",
                Some(Box::new(Link("os error 111", None))),
            ))),
        );
        assert_eq!(
            error_chain(&e),
            "tcp connect error: connection refused: os error 111"
        );
    }
}
