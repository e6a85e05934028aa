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

pub mod client;
pub mod soap;

pub use client::VcenterClient;

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
    pub password: Secret,
    /// Sent as `User-Agent`, so the reporter's own session is recognisable in
    /// the list it reports.
    pub user_agent: String,
    /// Extra CA bundle (PEM) trusted for this vCenter's certificate.
    pub ca_file: Option<PathBuf>,
    /// Skip certificate verification (the original always did; here it is opt-in).
    pub insecure: bool,
    /// Deadline of one SOAP request.
    pub timeout: Duration,
}

/// One entry of `SessionManager.sessionList` (vim25 `UserSession`).
#[derive(Debug, Clone, PartialEq, Eq)]
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
}
