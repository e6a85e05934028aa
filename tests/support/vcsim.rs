//! Test support: a real vCenter simulator (govmomi's vcsim) on 127.0.0.1 and
//! raw SOAP admin helpers to arrange and inspect its sessions and VMs.
//!
//! Include it with `#[path = "support/vcsim.rs"] mod vcsim;`. It is
//! self-contained on purpose: the helpers speak SOAP themselves (a few string
//! templates and regexes) rather than through the crate's client, so a bug in
//! the client cannot hide itself in the checks.
//!
//! - [`Vcsim::start`] spawns `target/peers/vcsim` (override with `VCSIM_BIN`),
//!   waits for its `VCSIM_URL=...` line and stops it on drop. Flags (see
//!   tests/vcsim/main.go): `-listen ADDR`, `-tls-cert FILE -tls-key FILE`,
//!   `-idle-timeout DURATION`, and to seed it at start, repeatable
//!   `-session USER,AGENT,COUNT`, `-session-from IP,USER,AGENT,COUNT` (logins
//!   from that 127.0.0.0/8 source address, which vcsim records as the
//!   session's `ipAddress`), `-vm NAME[,IP...]` (a powered-on VM whose guest
//!   reports those IPs), and `-vm-count N` (N more VMs `bulk-vm-00000`...,
//!   bulk VM i with guest IP 10.x.y.z = i+1, see [`bulk_vm`]).
//! - [`Vcsim::login`] opens a [`SoapSession`] as any user with any User-Agent
//!   (vcsim accepts every user with a non-empty password);
//!   [`Vcsim::login_from`] does it from a chosen 127.0.0.0/8 address.
//! - [`Vcsim::admin`] opens the session used for inspection
//!   (agent [`ADMIN_AGENT`]); [`SoapSession::sessions`] lists every session
//!   (key, user, agent), [`SoapSession::session_details`] with address, times
//!   and the extension flag; [`SoapSession::terminate`] ends one by key;
//!   [`SoapSession::current_time`] is the vCenter's clock;
//!   [`SoapSession::vms`] lists every VM with its guest IPs through a
//!   ContainerView.
//! - [`Vcsim::vm_add`], [`Vcsim::vm_rename`], [`Vcsim::vm_remove`] and
//!   [`Vcsim::vm_set_ips`] change VMs while vcsim runs, through its control
//!   API (`/vcsim-test/`). Each returns once vcsim has applied the change, so
//!   the next [`SoapSession::vms`] sees it, and property collectors get it
//!   as an update (WaitForUpdatesEx delivers within ~250 ms).
//!
//! The helpers panic on failure with a message saying what failed: they run
//! only in tests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use url::Url;

/// User-Agent of the [`Vcsim::admin`] session, to tell it apart in lists.
pub const ADMIN_AGENT: &str = "vcsim-test-admin";
/// User of the [`Vcsim::admin`] session.
pub const ADMIN_USER: &str = "administrator@vsphere.local";
/// Password the helpers log in with (vcsim accepts any non-empty one).
pub const HELPER_PASSWORD: &str = "helper-pass";

/// How long vcsim may take to print its URL.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long vcsim may take to exit after SIGTERM (it deletes its datastore
/// directories, one per VM) before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Name and guest IP that `-vm-count` gives bulk VM `index`.
pub fn bulk_vm(index: u32) -> (String, String) {
    let n = index + 1;
    (
        format!("bulk-vm-{index:05}"),
        format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255),
    )
}

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
        Vcsim::start_binary(&binary(), args)
    }

    /// [`Vcsim::start`] with another binary.
    pub fn start_binary(bin: &Path, args: &[&str]) -> Vcsim {
        if !bin.is_file() {
            panic!(
                "vcsim binary not found at {}: run scripts/build-vcsim.sh (scripts/test.sh does it)",
                bin.display()
            );
        }
        let mut command = Command::new(bin);
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

    /// Opens a session as `user` with that User-Agent from source address
    /// `ip` (any of 127.0.0.0/8), which vcsim records as its `ipAddress`.
    pub async fn login_from(&self, ip: &str, user: &str, user_agent: &str) -> SoapSession {
        let local: IpAddr = ip
            .parse()
            .unwrap_or_else(|e| panic!("login_from: {ip:?} is not an IP address: {e}"));
        SoapSession::login_from(
            &self.sdk_url(),
            user,
            HELPER_PASSWORD,
            user_agent,
            Some(local),
        )
        .await
        .unwrap_or_else(|e| panic!("helper login as {user} from {ip} failed: {e}"))
    }

    /// Opens the admin session used to inspect and terminate sessions.
    pub async fn admin(&self) -> SoapSession {
        self.login(ADMIN_USER, ADMIN_AGENT).await
    }

    /// Creates a powered-on VM `name` whose guest reports `ips`
    /// (`guest.ipAddress` = the first, `guest.net` = one NIC per IP).
    pub async fn vm_add(&self, name: &str, ips: &[&str]) {
        self.vm_control("add", name, &[], ips).await;
    }

    /// Renames VM `old` to `new` (a real `Rename_Task`).
    pub async fn vm_rename(&self, old: &str, new: &str) {
        self.vm_control("rename", old, &[("new", new)], &[]).await;
    }

    /// Powers VM `name` off and destroys it (`Destroy_Task`).
    pub async fn vm_remove(&self, name: &str) {
        self.vm_control("remove", name, &[], &[]).await;
    }

    /// Replaces the guest IPs of VM `name` (empty: the guest reports none).
    pub async fn vm_set_ips(&self, name: &str, ips: &[&str]) {
        self.vm_control("set-ips", name, &[], ips).await;
    }

    /// From now on vcsim refuses `TerminateSession` of this session key
    /// with a `NoPermission` fault, as a vCenter may for one session.
    pub async fn refuse_terminate(&self, key: &str) {
        self.session_control("refuse-terminate", key).await;
    }

    /// The next `TerminateSession` of this key finds the session already
    /// ended by another caller a moment before, and gets vcsim's own
    /// `NotFound` fault, as from a vCenter where someone else was faster.
    pub async fn end_first(&self, key: &str) {
        self.session_control("end-first", key).await;
    }

    /// A VM change: `name`, then `params`, then each IP as `ip`.
    async fn vm_control(&self, op: &str, name: &str, params: &[(&str, &str)], ips: &[&str]) {
        let mut query = vec![("name", name)];
        query.extend_from_slice(params);
        query.extend(ips.iter().map(|ip| ("ip", *ip)));
        self.control(&format!("vm/{op}"), &query).await;
    }

    async fn session_control(&self, op: &str, key: &str) {
        self.control(&format!("session/{op}"), &[("key", key)])
            .await;
    }

    /// POSTs to the control API; panics with vcsim's one-line answer unless
    /// it succeeds.
    async fn control(&self, op: &str, query: &[(&str, &str)]) {
        let mut url = self
            .url
            .join(&format!("vcsim-test/{op}"))
            .expect("a valid control URL");
        url.query_pairs_mut().extend_pairs(query);
        let response = http_client(None)
            .post(url.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("vcsim control {url}: {e}"));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(
            status.is_success(),
            "vcsim control {op} {query:?}: HTTP {status}: {}",
            text.trim()
        );
    }
}

impl Drop for Vcsim {
    fn drop(&mut self) {
        // SIGTERM first: vcsim then deletes its datastore directories under
        // $TMPDIR (one per VM; thousands with -vm-count), which SIGKILL leaks.
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid; no memory is shared.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The helpers' HTTP client, optionally bound to a local address.
fn http_client(local: Option<IpAddr>) -> reqwest::Client {
    reqwest::Client::builder()
        // Test helper only: it talks to the vcsim it just started.
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(10))
        .local_address(local)
        .build()
        .expect("a default reqwest client builds")
}

/// One row of the session list as an admin sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub key: String,
    pub user: String,
    pub user_agent: String,
}

/// One session as an admin sees it, values as vcsim sends them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDetail {
    pub key: String,
    pub user: String,
    pub user_agent: String,
    pub ip_address: String,
    /// `xsd:dateTime` as sent, e.g. `2026-01-02T03:04:05.123456789Z`.
    pub login_time: String,
    pub last_active_time: String,
    pub extension_session: bool,
    /// Calls the session made (vcsim counts every authenticated request).
    pub call_count: u64,
}

/// A VM's name and its guest IPs (`guest.ipAddress`, then every
/// `guest.net[].ipAddress`, without duplicates).
pub type VmRow = (String, Vec<String>);

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
        SoapSession::login_from(sdk, user, password, user_agent, None).await
    }

    /// [`SoapSession::login`] from source address `local` (every request of
    /// the session then comes from it).
    pub async fn login_from(
        sdk: &str,
        user: &str,
        password: &str,
        user_agent: &str,
        local: Option<IpAddr>,
    ) -> Result<SoapSession, String> {
        let http = http_client(local);
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
        self.session_details()
            .await
            .into_iter()
            .map(|d| SessionRow {
                key: d.key,
                user: d.user,
                user_agent: d.user_agent,
            })
            .collect()
    }

    /// Every session with its address, times and extension flag.
    pub async fn session_details(&self) -> Vec<SessionDetail> {
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
                SessionDetail {
                    key: field(block, "key"),
                    user: field(block, "userName"),
                    user_agent: field(block, "userAgent"),
                    ip_address: field(block, "ipAddress"),
                    login_time: field(block, "loginTime"),
                    last_active_time: field(block, "lastActiveTime"),
                    extension_session: field(block, "extensionSession") == "true",
                    call_count: field(block, "callCount").parse().unwrap_or(0),
                }
            })
            .collect()
    }

    /// The vCenter's clock (`ServiceInstance.CurrentTime`), as sent.
    pub async fn current_time(&self) -> String {
        let (status, text) = self
            .call(envelope(
                r#"<CurrentTime xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this></CurrentTime>"#,
            ))
            .await;
        let time = field(&text, "returnval");
        assert!(
            status.is_success() && !time.is_empty(),
            "CurrentTime: HTTP {status}: {text}"
        );
        time
    }

    /// Every VM with its guest IPs, sorted by name: RetrievePropertiesEx
    /// over a recursive ContainerView of VirtualMachine from the root folder,
    /// following continuation tokens (vcsim 0.24 sends one page; a real
    /// vCenter pages).
    pub async fn vms(&self) -> Vec<VmRow> {
        let (status, text) = self
            .call(envelope(
                r#"<RetrieveServiceContent xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this></RetrieveServiceContent>"#,
            ))
            .await;
        assert!(
            status.is_success(),
            "RetrieveServiceContent: HTTP {status}: {text}"
        );
        let root = field(&text, "rootFolder");
        let view_manager = field(&text, "viewManager");
        let (status, text) = self
            .call(envelope(&format!(
                concat!(
                    r#"<CreateContainerView xmlns="urn:vim25"><_this type="ViewManager">{}</_this>"#,
                    r#"<container type="Folder">{}</container><type>VirtualMachine</type>"#,
                    "<recursive>true</recursive></CreateContainerView>"
                ),
                xml_escape(&view_manager),
                xml_escape(&root)
            )))
            .await;
        let view = field(&text, "returnval");
        assert!(
            status.is_success() && !view.is_empty(),
            "CreateContainerView: HTTP {status}: {text}"
        );

        let mut pages = Vec::new();
        let (status, mut text) = self
            .call(envelope(&format!(
                concat!(
                    r#"<RetrievePropertiesEx xmlns="urn:vim25"><_this type="PropertyCollector">propertyCollector</_this>"#,
                    "<specSet><propSet><type>VirtualMachine</type><pathSet>name</pathSet>",
                    "<pathSet>guest.ipAddress</pathSet><pathSet>guest.net</pathSet></propSet>",
                    r#"<objectSet><obj type="ContainerView">{}</obj><skip>true</skip>"#,
                    r#"<selectSet xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="TraversalSpec">"#,
                    "<name>view</name><type>ContainerView</type><path>view</path><skip>false</skip>",
                    "</selectSet></objectSet></specSet>",
                    "<options><maxObjects>1000</maxObjects></options></RetrievePropertiesEx>"
                ),
                xml_escape(&view)
            )))
            .await;
        assert!(
            status.is_success(),
            "VM RetrievePropertiesEx: HTTP {status}: {text}"
        );
        loop {
            let token = field(&text, "token");
            pages.push(text);
            if token.is_empty() {
                break;
            }
            let (status, next) = self
                .call(envelope(&format!(
                    concat!(
                        r#"<ContinueRetrievePropertiesEx xmlns="urn:vim25"><_this type="PropertyCollector">propertyCollector</_this>"#,
                        "<token>{}</token></ContinueRetrievePropertiesEx>"
                    ),
                    xml_escape(&token)
                )))
                .await;
            assert!(
                status.is_success(),
                "ContinueRetrievePropertiesEx: HTTP {status}: {next}"
            );
            text = next;
        }

        let (status, text) = self
            .call(envelope(&format!(
                r#"<DestroyView xmlns="urn:vim25"><_this type="ContainerView">{}</_this></DestroyView>"#,
                xml_escape(&view)
            )))
            .await;
        assert!(status.is_success(), "DestroyView: HTTP {status}: {text}");

        let mut vms = Vec::new();
        for page in &pages {
            vms.extend(parse_vms(page));
        }
        vms.sort();
        vms
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

fn xml_escape(text: &str) -> String {
    quick_xml::escape::escape(text).into_owned()
}

fn unescape(text: &str) -> String {
    quick_xml::escape::unescape(text)
        .map(|v| v.into_owned())
        .unwrap_or_else(|_| text.to_string())
}

/// The unescaped text of the first `<name>` element in `block`, attributes
/// allowed ("" when absent).
fn field(block: &str, name: &str) -> String {
    let re = regex::Regex::new(&format!(r"(?s)<{name}(?:\s[^>]*)?>(.*?)</{name}>"))
        .expect("valid regex");
    re.captures(block)
        .and_then(|c| c.get(1))
        .map(|m| unescape(m.as_str()))
        .unwrap_or_default()
}

/// The VMs of one RetrievePropertiesEx page: `name` and the guest IPs from
/// `guest.ipAddress` and each `GuestNicInfo`'s own `ipAddress` list (not the
/// `ipConfig` or `dnsConfig` inside it: DNS servers are not the guest's).
pub fn parse_vms(page: &str) -> Vec<VmRow> {
    let objects = regex::Regex::new(r"(?s)<objects>(.*?)</objects>").expect("valid");
    let prop = regex::Regex::new(
        r#"(?s)<propSet><name>([^<]*)</name><val(?:\s[^>]*?)?(?:/>|>(.*?)</val>)</propSet>"#,
    )
    .expect("valid");
    let nic = regex::Regex::new(r"(?s)<GuestNicInfo>(.*?)</GuestNicInfo>").expect("valid");
    let nested = regex::Regex::new(r"(?s)<ipConfig>.*?</ipConfig>|<dnsConfig>.*?</dnsConfig>")
        .expect("valid");
    let ip = regex::Regex::new(r"<ipAddress>([^<]*)</ipAddress>").expect("valid");
    objects
        .captures_iter(page)
        .map(|object| {
            let mut name = String::new();
            let mut ips: Vec<String> = Vec::new();
            let mut add = |value: String| {
                if !value.is_empty() && !ips.contains(&value) {
                    ips.push(value);
                }
            };
            for p in prop.captures_iter(&object[1]) {
                let value = p.get(2).map_or("", |m| m.as_str());
                match &p[1] {
                    "name" => name = unescape(value),
                    "guest.ipAddress" => add(unescape(value)),
                    "guest.net" => {
                        for n in nic.captures_iter(value) {
                            let own = nested.replace_all(&n[1], "");
                            for i in ip.captures_iter(&own) {
                                add(unescape(&i[1]));
                            }
                        }
                    }
                    _ => {}
                }
            }
            (name, ips)
        })
        .collect()
}
