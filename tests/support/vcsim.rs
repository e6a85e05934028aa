//! Test support: a real vCenter simulator (govmomi's vcsim) on 127.0.0.1 and
//! raw SOAP admin helpers to arrange and inspect its sessions.
//!
//! Include it with `#[path = "support/vcsim.rs"] mod vcsim;`. It is
//! self-contained on purpose: the helpers speak SOAP themselves (a few string
//! templates and regexes) rather than through the crate's client, so a bug in
//! the client cannot hide itself in the checks.
//!
//! - [`Vcsim::start`] spawns `target/peers/vcsim` (override with `VCSIM_BIN`),
//!   waits for its `VCSIM_URL=...` line and kills it on drop. Flags:
//!   `-listen ADDR`, `-tls-cert FILE -tls-key FILE`, `-idle-timeout DURATION`,
//!   repeatable `-session USER,AGENT,COUNT` (sessions logged in at start).
//! - [`Vcsim::login`] opens a [`SoapSession`] as any user with any User-Agent
//!   (vcsim accepts every user with a non-empty password).
//! - [`Vcsim::admin`] opens the session used for inspection
//!   (agent [`ADMIN_AGENT`]); [`SoapSession::sessions`] lists every session
//!   (key, user, agent), [`SoapSession::terminate`] ends one by key.
//!
//! The helpers panic on failure with a message saying what failed: they run
//! only in tests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use url::Url;

/// User-Agent of the [`Vcsim::admin`] session, to tell it apart in lists.
pub const ADMIN_AGENT: &str = "vcsim-test-admin";
/// User of the [`Vcsim::admin`] session.
pub const ADMIN_USER: &str = "administrator@vsphere.local";
/// Password the helpers log in with (vcsim accepts any non-empty one).
pub const HELPER_PASSWORD: &str = "helper-pass";

/// How long vcsim may take to print its URL.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The vcsim binary: `$VCSIM_BIN`, else `<crate>/target/peers/vcsim`.
pub fn binary() -> PathBuf {
    match std::env::var_os("VCSIM_BIN") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/peers/vcsim"),
    }
}

/// A running vcsim, killed on drop.
pub struct Vcsim {
    child: Child,
    url: Url,
}

impl Vcsim {
    /// Starts vcsim with `args` (`-listen 127.0.0.1:0` is added unless given)
    /// and waits until it serves.
    pub fn start(args: &[&str]) -> Vcsim {
        let bin = binary();
        if !bin.is_file() {
            panic!(
                "vcsim binary not found at {}: run scripts/build-vcsim.sh (scripts/test.sh does it)",
                bin.display()
            );
        }
        let mut command = Command::new(&bin);
        if !args.contains(&"-listen") {
            command.args(["-listen", "127.0.0.1:0"]);
        }
        let mut child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = tx.send(first);
            // Keep draining so vcsim never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Some(Ok(line))) => line,
            Ok(other) => {
                let status = child.wait().ok();
                panic!("vcsim {args:?} exited before serving ({other:?}, status {status:?})")
            }
            Err(_) => {
                let _ = child.kill();
                panic!("vcsim {args:?} printed no VCSIM_URL line within {START_TIMEOUT:?}")
            }
        };
        let url = line
            .strip_prefix("VCSIM_URL=")
            .and_then(|u| Url::parse(u).ok())
            .unwrap_or_else(|| panic!("unexpected first line from vcsim: {line:?}"));
        Vcsim { child, url }
    }

    /// Base URL (`http://127.0.0.1:PORT`, or `https://`), without `/sdk`.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The SOAP endpoint, `<url>/sdk`.
    pub fn sdk_url(&self) -> String {
        format!("{}sdk", self.url)
    }

    /// Opens a session as `user` with that User-Agent.
    pub async fn login(&self, user: &str, user_agent: &str) -> SoapSession {
        SoapSession::login(&self.sdk_url(), user, HELPER_PASSWORD, user_agent)
            .await
            .unwrap_or_else(|e| panic!("helper login as {user} failed: {e}"))
    }

    /// Opens the admin session used to inspect and terminate sessions.
    pub async fn admin(&self) -> SoapSession {
        self.login(ADMIN_USER, ADMIN_AGENT).await
    }
}

impl Drop for Vcsim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One row of the session list as an admin sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub key: String,
    pub user: String,
    pub user_agent: String,
}

/// A raw SOAP session (one `vmware_soap_session` cookie).
pub struct SoapSession {
    sdk: String,
    http: reqwest::Client,
    cookie: String,
    user_agent: String,
}

impl SoapSession {
    /// Logs in; the error is the HTTP status and body when vcsim refuses.
    pub async fn login(
        sdk: &str,
        user: &str,
        password: &str,
        user_agent: &str,
    ) -> Result<SoapSession, String> {
        let http = reqwest::Client::builder()
            // Test helper only: it talks to the vcsim it just started.
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(10))
            .build()
            .expect("a default reqwest client builds");
        let body = envelope(&format!(
            r#"<Login xmlns="urn:vim25"><_this type="SessionManager">SessionManager</_this><userName>{}</userName><password>{}</password></Login>"#,
            quick_xml::escape::escape(user),
            quick_xml::escape::escape(password)
        ));
        let response = http
            .post(sdk)
            .header("Content-Type", "text/xml; charset=utf-8")
            .header("SOAPAction", "\"urn:vim25/6.5\"")
            .header("User-Agent", user_agent)
            .body(body)
            .send()
            .await
            .map_err(|e| format!("Login request: {e}"))?;
        let status = response.status();
        let cookie = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.split(';').next()?.strip_prefix("vmware_soap_session="))
            .map(|v| v.trim_matches('"').to_string());
        let text = response.text().await.unwrap_or_default();
        match cookie {
            Some(cookie) if status.is_success() => Ok(SoapSession {
                sdk: sdk.to_string(),
                http,
                cookie,
                user_agent: user_agent.to_string(),
            }),
            _ => Err(format!("HTTP {status}: {text}")),
        }
    }

    /// This session's key (vcsim uses the cookie value as the key).
    pub fn key(&self) -> &str {
        &self.cookie
    }

    async fn call(&self, body: String) -> (reqwest::StatusCode, String) {
        let response = self
            .http
            .post(&self.sdk)
            .header("Content-Type", "text/xml; charset=utf-8")
            .header("SOAPAction", "\"urn:vim25/6.5\"")
            .header("User-Agent", &self.user_agent)
            .header("Cookie", format!("vmware_soap_session=\"{}\"", self.cookie))
            .body(body)
            .send()
            .await
            .expect("vcsim answers helper requests");
        let status = response.status();
        (status, response.text().await.unwrap_or_default())
    }

    /// Every session on the vCenter, this one included.
    pub async fn sessions(&self) -> Vec<SessionRow> {
        let (status, text) = self
            .call(envelope(concat!(
                r#"<RetrievePropertiesEx xmlns="urn:vim25"><_this type="PropertyCollector">propertyCollector</_this>"#,
                "<specSet><propSet><type>SessionManager</type><pathSet>sessionList</pathSet></propSet>",
                r#"<objectSet><obj type="SessionManager">SessionManager</obj></objectSet></specSet>"#,
                "<options></options></RetrievePropertiesEx>"
            )))
            .await;
        assert!(
            status.is_success() && !text.contains("missingSet"),
            "admin session list failed (HTTP {status}; an expired admin session shows as missingSet): {text}"
        );
        let session = regex::Regex::new(r"(?s)<UserSession>(.*?)</UserSession>").expect("valid");
        session
            .captures_iter(&text)
            .map(|c| {
                let block = c.get(1).map_or("", |m| m.as_str());
                SessionRow {
                    key: field(block, "key"),
                    user: field(block, "userName"),
                    user_agent: field(block, "userAgent"),
                }
            })
            .collect()
    }

    /// The sessions whose User-Agent is `agent`.
    pub async fn sessions_with_agent(&self, agent: &str) -> Vec<SessionRow> {
        let mut rows = self.sessions().await;
        rows.retain(|r| r.user_agent == agent);
        rows
    }

    /// Ends another session (`SessionManager.TerminateSession`).
    pub async fn terminate(&self, key: &str) {
        let (status, text) = self
            .call(envelope(&format!(
                r#"<TerminateSession xmlns="urn:vim25"><_this type="SessionManager">SessionManager</_this><sessionId>{}</sessionId></TerminateSession>"#,
                quick_xml::escape::escape(key)
            )))
            .await;
        assert!(
            status.is_success(),
            "TerminateSession {key}: HTTP {status}: {text}"
        );
    }

    /// Logs this session out.
    pub async fn logout(self) {
        let (status, text) = self
            .call(envelope(
                r#"<Logout xmlns="urn:vim25"><_this type="SessionManager">SessionManager</_this></Logout>"#,
            ))
            .await;
        assert!(status.is_success(), "Logout: HTTP {status}: {text}");
    }
}

fn envelope(body: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>{body}</soapenv:Body></soapenv:Envelope>"#
    )
}

/// The unescaped text of `<name>` in a `UserSession` block ("" when absent).
fn field(block: &str, name: &str) -> String {
    let re = regex::Regex::new(&format!(r"(?s)<{name}>(.*?)</{name}>")).expect("valid regex");
    re.captures(block)
        .and_then(|c| c.get(1))
        .map(|m| {
            quick_xml::escape::unescape(m.as_str())
                .map(|v| v.into_owned())
                .unwrap_or_else(|_| m.as_str().to_string())
        })
        .unwrap_or_default()
}
