//! vCenter sessions over the vim25 SOAP API.
//!
//! The reporter holds one session per vCenter for its whole life and reuses it
//! every cycle: a tool that watches for session leaks must not leak sessions
//! itself (the Go exporter logged in on every scrape). API reference:
//! <https://developer.broadcom.com/xapis/vsphere-web-services-api/latest/>
//! (`SessionManager`, `PropertyCollector.RetrievePropertiesEx`).
//!
//! - [`client`]: [`VcenterClient`], the session lifecycle over HTTP.
//! - [`soap`]: request envelopes and the streaming response parser.
//! - [`updates`]: the `WaitForUpdatesEx` answer parser.
//! - [`vm_map`]: guest IP -> VM name, kept current incrementally.

pub mod client;
pub mod soap;
pub mod updates;
pub mod vm_map;

pub use client::{LOGIN_FAILURE_REASONS, Observation, VcenterClient, VcenterClock};
pub use vm_map::VmMapStats;

use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use crate::secret::Secret;

/// How to reach and log in to one vCenter.
#[derive(Debug, Clone)]
pub struct VcenterConfig {
    /// Base URL (`https://vc.example.com` or `http://127.0.0.1:8989` in tests);
    /// the SOAP endpoint is `<url>/sdk`.
    pub url: Url,
    /// The value of the `vcenter` label: the host of `url`.
    pub host: String,
    pub username: String,
    /// The password read at start; with `password_file` set, the file is
    /// read again before every login, so a rotated password is picked up.
    pub password: Secret,
    pub password_file: Option<PathBuf>,
    /// How long to wait after a refused login before the next.
    pub login_backoff: LoginBackoff,
    /// Sent as `User-Agent`, so the reporter's own session is recognisable in
    /// the list it reports.
    pub user_agent: String,
    /// Extra CA bundle (PEM) trusted for this vCenter's certificate.
    pub ca_file: Option<PathBuf>,
    /// Skip certificate verification (the original always did; here it is opt-in).
    pub insecure: bool,
    /// Deadline of one SOAP request.
    pub timeout: Duration,
    /// The vCenter's session limit (its `maxSessionCount`; 3000 on 8.0U3),
    /// exported so alerts compare the session count with it.
    pub session_limit: u64,
    /// Other host names or addresses CI files use for this vCenter
    /// (normalised like [`host`](Self::host)).
    pub aliases: Vec<String>,
    /// Keep the guest IP -> VM map (`leaks.vm_attribution`).
    pub vm_map: bool,
    /// The largest SOAP answer read (bytes); a longer one is an error, so
    /// a peer sending without end cannot exhaust memory.
    pub max_response_bytes: u64,
}

/// The default of `vcenters[].max_response_bytes`: a session list of
/// 100,000 sessions or a first VM-map page is far below it.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 256 * 1024 * 1024;

/// The waits after refused logins: `min` after the first, doubling up to
/// `max`. vSphere SSO locks an account after 5 failed logins in 180 s by
/// default; at most one login per `min` keeps the reporter far from that
/// (at most 3 in any 180 s with the defaults), whatever the interval, and
/// leaves room for the other tools sharing the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginBackoff {
    pub min: Duration,
    pub max: Duration,
}

impl Default for LoginBackoff {
    fn default() -> Self {
        LoginBackoff {
            min: Duration::from_secs(60),
            max: Duration::from_secs(15 * 60),
        }
    }
}

impl LoginBackoff {
    /// The wait after `failures` refused logins in a row (1 for the first).
    pub fn wait(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        self.min
            .saturating_mul(1u32 << doublings)
            .min(self.max)
            .max(self.min)
    }
}

/// The default of `vcenters[].session_limit`: vCenter 8.0U3's
/// `maxSessionCount`.
pub const DEFAULT_SESSION_LIMIT: u64 = 3000;

/// A vim25 `xsd:dateTime` (`2026-12-02T04:02:11.123456Z`, any offset) as
/// milliseconds since the Unix epoch; `None` when it does not parse.
pub fn parse_time_ms(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|t| t.timestamp_millis())
}

/// One entry of `SessionManager.sessionList` (vim25 `UserSession`).
/// `Debug` shows only the key's first characters: a key can act as the
/// session.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct UserSession {
    pub key: String,
    /// As the vCenter reports it, e.g. `VSPHERE.LOCAL\ci-user-1`.
    pub user_name: String,
    pub full_name: String,
    /// ISO 8601, as sent.
    pub login_time: String,
    /// ISO 8601, as sent.
    pub last_active_time: String,
    pub ip_address: String,
    /// Empty when the client sent none.
    pub user_agent: String,
    pub call_count: i64,
    /// A session an extension (a vCenter solution) opened for itself: never
    /// a CI job's, so never counted as leaked.
    pub extension_session: bool,
}

impl std::fmt::Debug for UserSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key: String = self.key.chars().take(8).collect();
        f.debug_struct("UserSession")
            .field("key", &format_args!("{key}…"))
            .field("user_name", &self.user_name)
            .field("full_name", &self.full_name)
            .field("login_time", &self.login_time)
            .field("last_active_time", &self.last_active_time)
            .field("ip_address", &self.ip_address)
            .field("user_agent", &self.user_agent)
            .field("call_count", &self.call_count)
            .field("extension_session", &self.extension_session)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_only_the_start_of_a_session_key() {
        let s = UserSession {
            key: "52b4d7a1-9f3e-4c1a-8d2b-0e6f5a7c9b31".into(),
            user_name: "u".into(),
            ..UserSession::default()
        };
        let shown = format!("{s:?}");
        assert!(
            shown.contains("52b4d7a1…") && !shown.contains("9f3e"),
            "{shown}"
        );
    }

    #[test]
    fn login_waits_double_from_a_minute_to_fifteen_and_allow_three_tries_in_180_s() {
        let b = LoginBackoff::default();
        let waits: Vec<u64> = (1..=7).map(|n| b.wait(n).as_secs()).collect();
        assert_eq!(waits, [60, 120, 240, 480, 900, 900, 900]);
        // Tries at 0, 60, 180, 420, ...: any 180 s window holds at most 3.
        let mut at = vec![0u64];
        for n in 1..=10 {
            at.push(at.last().unwrap() + b.wait(n).as_secs());
        }
        for start in 0..at[at.len() - 1] {
            let n = at
                .iter()
                .filter(|&&t| t >= start && t <= start + 180)
                .count();
            assert!(n <= 3, "{n} tries in [{start}, {}]", start + 180);
        }
        assert_eq!(b.wait(u32::MAX), b.max);
    }
}
