//! [`VcenterClient`]: one long-lived vim25 session per vCenter.
//!
//! The client logs in on first use and reuses that session for every later
//! call, so the reporter shows up as exactly one session in the list it
//! reports. When the vCenter forgets the session (idle timeout, an admin's
//! `TerminateSession`, a restart) it logs in again once and repeats the call.
//! vCenter signals a dead session two ways, both handled: most methods answer
//! HTTP 500 with a `NotAuthenticated` SOAP fault, but `RetrievePropertiesEx`
//! answers HTTP 200 with the fault inside `missingSet`.
//!
//! The session cookie (`vmware_soap_session`) is managed by hand rather than
//! by a cookie store so that which session a request uses is explicit. It is
//! sent back quoted, as pyVmomi and govmomi do and as vCenter expects.
//!
//! No session may outlive the process: at shutdown the scheduler aborts a
//! cycle that overran its drain timeout, possibly in the middle of `Login`,
//! after vCenter made the session but before the cookie was stored. So a
//! login runs in its own task, which owns the state lock and stores what it
//! got whether or not its caller is still waiting; `logout` takes the same
//! lock, so it waits for a login in flight and releases its session. A
//! `Login` whose outcome is unknown (the cookie arrived, the body did not, or
//! could not be read) is logged out at once with that cookie, and kept for
//! `logout` if even that fails.
//!
//! API reference: <https://developer.broadcom.com/xapis/vsphere-web-services-api/latest/>
//! (`SessionManager`, `PropertyCollector`).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, COOKIE, HeaderValue, SET_COOKIE, USER_AGENT};
use tracing::{debug, info, warn};
use url::Url;

use tokio::sync::{Mutex, OwnedMutexGuard};

use super::soap::{self, Fault, MoRef, Reply, ServiceContent, SessionPage};
use super::updates;
use super::vm_map::{VmMap, VmMapStats};
use super::{UserSession, VcenterConfig};
use crate::error::{Error, error_chain, truncate_body};
use crate::secret::Secret;

/// The session cookie vCenter (and vcsim) set on `Login`.
const SESSION_COOKIE: &str = "vmware_soap_session";

/// `SOAPAction` version used before the service content told us the real one.
/// Any 6.x-8.x vCenter accepts it for `RetrieveServiceContent`.
const DEFAULT_API_VERSION: &str = "8.0.1.0";

/// Error bodies are cut to this many bytes.
const MAX_ERROR_BODY: usize = 1024;

/// Values of the `reason` label of the login-failure counter: the vCenter
/// refused the credentials (`InvalidLogin`), refused the login otherwise
/// (another fault), or gave no usable answer.
pub const LOGIN_FAILURE_REASONS: [&str; 3] = ["invalid_login", "refused", "error"];

/// Objects asked per `WaitForUpdatesEx` answer: a first read of 10,000 VMs
/// comes in ten answers of a few hundred KB rather than one of several MB.
const MAX_OBJECT_UPDATES: u32 = 1000;

/// `WaitForUpdatesEx` answers read per cycle. A backlog larger than this
/// (over 100,000 changed VMs) is finished next cycle: the map is consistent
/// at every version, so stopping between answers is safe.
const MAX_UPDATE_PAGES: usize = 100;

/// What one cycle read from a vCenter.
#[derive(Debug)]
pub struct Observation {
    /// Every session, the reporter's own included.
    pub sessions: Vec<UserSession>,
    pub clock: VcenterClock,
    /// For each session address that is a VM's guest IP: the VM names.
    /// Empty when the VM map is off or could not be read.
    pub vm_names_by_ip: std::collections::HashMap<String, Vec<String>>,
    /// `None` when the VM map is off; else whether it is current.
    pub vm_map: Option<Result<(), Error>>,
    /// Time the VM map refresh took (zero when off).
    pub vm_map_elapsed: Duration,
}

/// The vCenter's clock (`CurrentTime`) and the local clock at the same
/// moment, so vCenter times are compared with the vCenter's "now" and
/// converted to local time by the measured offset, never compared with the
/// local clock directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcenterClock {
    /// `CurrentTime`, milliseconds since the Unix epoch.
    pub vcenter_ms: i64,
    /// Local time halfway through the `CurrentTime` request.
    pub local_ms: i64,
}

impl VcenterClock {
    /// How far the vCenter's clock is ahead of the local one.
    pub fn offset_ms(&self) -> i64 {
        self.vcenter_ms - self.local_ms
    }
}

/// The property collector, view and filter feeding the VM map. They live
/// in the session that made them: a new login needs new ones.
#[derive(Default)]
struct VmWatch {
    /// Generation of the session the objects below belong to.
    generation: u64,
    collector: Option<MoRef>,
    view: Option<MoRef>,
    /// The filter was made: updates can be read.
    ready: bool,
    map: VmMap,
}

/// A SOAP client for one vCenter holding one reused session. `Send + Sync`:
/// share it behind an `Arc`.
pub struct VcenterClient {
    /// Shared with the login and logout tasks, which may outlive a call.
    inner: Arc<Inner>,
}

struct Inner {
    config: VcenterConfig,
    /// `<url>/sdk`, without any user info.
    endpoint: Url,
    http: reqwest::Client,
    /// The current session. The lock is held (by the task doing it) while
    /// logging in or out, so two tasks never log in at the same time and
    /// `logout` waits for a login in flight; calls themselves run without it.
    state: Arc<Mutex<State>>,
    logins: AtomicU64,
    /// Failed logins by [`LOGIN_FAILURE_REASONS`].
    login_failures: [AtomicU64; 3],
    orphans_terminated: AtomicU64,
    /// Held while the VM map is read or rebuilt.
    vm_watch: Mutex<VmWatch>,
}

/// Refused logins in a row and when the next may be tried.
#[derive(Default)]
struct LoginGate {
    failures: u32,
    retry_at: Option<Instant>,
    /// A fingerprint of the password that was refused: a password file
    /// holding something else ends the wait.
    refused_password: Option<u64>,
}

#[derive(Default)]
struct State {
    gate: LoginGate,
    /// Fetched once: the managed object references never change.
    content: Option<Arc<ServiceContent>>,
    session: Option<Arc<Session>>,
    /// Cookies of logins whose outcome is unknown and whose immediate logout
    /// failed too: `logout` tries them again (their `generation` is unused).
    orphans: Vec<Session>,
    /// Counts logins; lets a caller that saw a dead session tell whether
    /// another task has already replaced it.
    generation: u64,
    /// Logins that got no answer at all (local ms, start and end): the
    /// vCenter may have made a session we never heard of. Swept after each
    /// listing ([`Inner::sweep_lost_logins`]).
    lost_logins: Vec<(i64, i64)>,
    /// Set by `logout`: no new login after it, so a cycle still running at
    /// shutdown cannot leave a session behind.
    closing: bool,
}

struct Session {
    /// The cookie value: it authenticates as the reporter's user.
    cookie: Secret,
    content: Arc<ServiceContent>,
    generation: u64,
    /// The session's key, from the Login answer (`None` if not sent).
    key: Option<String>,
}

/// A raw HTTP exchange.
struct Exchange {
    status: StatusCode,
    body: Bytes,
    session_cookie: Option<String>,
}

/// A request that failed, with the session cookie its response set if the
/// headers arrived before the failure (reading the body timed out, say).
struct CallError {
    error: Error,
    session_cookie: Option<String>,
}

impl From<CallError> for Error {
    fn from(e: CallError) -> Self {
        e.error
    }
}

/// A failed `Login`, with the cookie it set when the vCenter may have made
/// the session anyway.
struct LoginError {
    error: Error,
    cookie: Option<Secret>,
}

impl fmt::Debug for VcenterClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VcenterClient")
            .field("host", &self.inner.config.host)
            .field("endpoint", &self.inner.endpoint.as_str())
            .field("username", &self.inner.config.username)
            .field("logins", &self.logins())
            .finish_non_exhaustive()
    }
}

impl VcenterClient {
    /// Builds the HTTP client (TLS settings, timeouts). No network I/O.
    pub fn new(config: VcenterConfig) -> Result<Self, Error> {
        let endpoint = sdk_endpoint(&config.url);
        // No redirects: a 307 would post the Login body, password and all,
        // to wherever the Location header points.
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .user_agent(config.user_agent.clone());
        if config.url.scheme() == "http" && !is_loopback(&config.url) {
            warn!(
                vcenter = %config.host,
                "The vCenter URL is plain http: the password travels in clear text"
            );
        }
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|source| Error::Io {
                context: format!("reading the vCenter CA file {}", path.display()),
                source,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                Error::Config(format!(
                    "vCenter CA file {}: not a PEM certificate bundle: {e}",
                    path.display()
                ))
            })?;
            if certs.is_empty() {
                return Err(Error::Config(format!(
                    "vCenter CA file {}: holds no PEM certificate",
                    path.display()
                )));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if config.insecure {
            warn!(
                vcenter = %config.host,
                "TLS certificate verification is off for this vCenter"
            );
            builder = builder.danger_accept_invalid_certs(true);
        }
        let http = builder.build().map_err(|e| {
            Error::Config(format!(
                "vCenter {}: cannot build the HTTP client{}: {}",
                config.host,
                config
                    .ca_file
                    .as_ref()
                    .map(|p| format!(" with CA file {}", p.display()))
                    .unwrap_or_default(),
                error_chain(&e.without_url())
            ))
        })?;
        Ok(VcenterClient {
            inner: Arc::new(Inner {
                config,
                endpoint,
                http,
                state: Arc::new(Mutex::new(State::default())),
                logins: AtomicU64::new(0),
                login_failures: Default::default(),
                orphans_terminated: AtomicU64::new(0),
                vm_watch: Mutex::new(VmWatch::default()),
            }),
        })
    }

    /// The `vcenter` label value (config.host).
    pub fn host(&self) -> &str {
        &self.inner.config.host
    }

    /// Sessions of the reporter's own lost logins it terminated since start.
    pub fn orphans_terminated(&self) -> u64 {
        self.inner.orphans_terminated.load(Ordering::Relaxed)
    }

    /// Failed logins since start, by [`LOGIN_FAILURE_REASONS`].
    pub fn login_failures(&self) -> [(&'static str, u64); 3] {
        let f = &self.inner.login_failures;
        [0, 1, 2].map(|i| (LOGIN_FAILURE_REASONS[i], f[i].load(Ordering::Relaxed)))
    }

    /// The settings this client was made with.
    pub fn config(&self) -> &VcenterConfig {
        &self.inner.config
    }

    /// Successful logins since start (1 in a steady state).
    pub fn logins(&self) -> u64 {
        self.inner.logins.load(Ordering::Relaxed)
    }

    /// Lists every session open on the vCenter, the reporter's own included.
    /// Logs in lazily on first use, then reuses that one session every call;
    /// a session the vCenter no longer knows is replaced once per call.
    pub async fn list_sessions(&self) -> Result<Vec<UserSession>, Error> {
        let inner = &self.inner;
        let session = self.session(None).await?;
        match inner.retrieve_all(&session).await {
            Err(Error::NotAuthenticated { .. }) => {
                warn!(
                    vcenter = %inner.config.host,
                    user = %inner.config.username,
                    "vCenter session expired, logging in again"
                );
                let renewed = self.session(Some(session.generation)).await?;
                inner.retrieve_all(&renewed).await
            }
            other => other,
        }
    }

    /// One cycle's read: the vCenter's clock, every session and (when the
    /// VM map is on) the VMs behind the sessions' addresses. A session the
    /// vCenter no longer knows is replaced once. A VM map failure does not
    /// fail the observation: it is reported in [`Observation::vm_map`] and
    /// the map is read from scratch next time.
    pub async fn observe(&self) -> Result<Observation, Error> {
        let inner = &self.inner;
        let session = self.session(None).await?;
        let (session, (clock, sessions)) = match inner.read_clock_and_sessions(&session).await {
            Err(Error::NotAuthenticated { .. }) => {
                warn!(
                    vcenter = %inner.config.host,
                    user = %inner.config.username,
                    "vCenter session expired, logging in again"
                );
                let renewed = self.session(Some(session.generation)).await?;
                let read = inner.read_clock_and_sessions(&renewed).await?;
                (renewed, read)
            }
            other => (session, other?),
        };
        inner.sweep_lost_logins(&session, &sessions, clock).await;
        let mut observation = Observation {
            sessions,
            clock,
            vm_names_by_ip: Default::default(),
            vm_map: None,
            vm_map_elapsed: Duration::ZERO,
        };
        if inner.config.vm_map {
            let started = Instant::now();
            let mut watch = inner.vm_watch.lock().await;
            let result = inner.refresh_vm_map(&mut watch, &session).await;
            if let Err(e) = &result {
                warn!(vcenter = %inner.config.host, error = %e, "Reading the VM map failed, reading it from scratch next cycle");
                watch.ready = false;
                watch.map.reset();
            } else {
                for session in &observation.sessions {
                    if observation.vm_names_by_ip.contains_key(&session.ip_address) {
                        continue;
                    }
                    let names = watch.map.names_for(&session.ip_address);
                    if !names.is_empty() {
                        observation
                            .vm_names_by_ip
                            .insert(session.ip_address.clone(), names);
                    }
                }
            }
            observation.vm_map = Some(result);
            observation.vm_map_elapsed = started.elapsed();
        }
        Ok(observation)
    }

    /// Ends another client's session (`SessionManager.TerminateSession`)
    /// with the reporter's own. Only the reaper calls this, for a session
    /// an operator's rules chose and a second listing confirmed. A session
    /// of ours the vCenter no longer knows is replaced once, as for a
    /// listing.
    pub async fn terminate_session(&self, key: &str) -> Result<(), Error> {
        let inner = &self.inner;
        let session = self.session(None).await?;
        match inner.terminate(&session, key).await {
            Err(Error::NotAuthenticated { .. }) => {
                let renewed = self.session(Some(session.generation)).await?;
                inner.terminate(&renewed, key).await
            }
            other => other,
        }
    }

    /// Whether `key` is the key of this client's own current session (the
    /// reaper never ends it, whatever the classification says).
    pub async fn is_own_session(&self, key: &str) -> bool {
        let state = self.inner.state.lock().await;
        state
            .session
            .as_ref()
            .is_some_and(|s| s.key.as_deref() == Some(key))
    }

    /// Counters of the VM map (zero when it is off).
    pub async fn vm_map_stats(&self) -> VmMapStats {
        self.inner.vm_watch.lock().await.map.stats()
    }

    /// Every VM of the map as (name, guest addresses), sorted by name.
    pub async fn vm_map_entries(&self) -> Vec<(String, Vec<String>)> {
        self.inner.vm_watch.lock().await.map.entries()
    }

    /// Logs out of the session, if any (no-op otherwise). Called on shutdown.
    ///
    /// A login in flight (even one whose caller was cancelled) is waited for
    /// and its session logged out too. Bounded: that login and this logout
    /// are each a few requests under the configured request timeout. Both the
    /// wait and the logout run in a task of their own, so a caller that stops
    /// waiting (a shutdown budget) does not stop them while the runtime lives.
    pub async fn logout(&self) -> Result<(), Error> {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let mut state = inner.state.clone().lock_owned().await;
            state.closing = true;
            inner.log_out(state).await
        })
        .await
        .map_err(|e| self.inner.task_failed("logout", e))?
    }

    /// The current session, logging in when there is none or when the caller
    /// found session `stale` dead (unless another task already replaced it).
    async fn session(&self, stale: Option<u64>) -> Result<Arc<Session>, Error> {
        let state = self.inner.state.clone().lock_owned().await;
        if let Some(current) = &state.session
            && Some(current.generation) != stale
        {
            return Ok(current.clone());
        }
        // The task owns the lock and stores the session itself: if this
        // caller is dropped mid-login, the session still lands where
        // `logout` finds it.
        let inner = self.inner.clone();
        tokio::spawn(async move { inner.log_in(state).await })
            .await
            .map_err(|e| self.inner.task_failed("login", e))?
    }
}

impl Inner {
    /// Logs in, holding the lock throughout, and stores the session.
    async fn log_in(&self, mut state: OwnedMutexGuard<State>) -> Result<Arc<Session>, Error> {
        state.session = None;
        if state.closing {
            return Err(Error::VcenterHttp {
                host: self.config.host.clone(),
                message: "logging out for shutdown: no new login".into(),
            });
        }
        let password = self.password()?;
        self.check_gate(&mut state.gate, &password)?;
        let content = match &state.content {
            Some(content) => content.clone(),
            None => {
                let content = Arc::new(self.retrieve_service_content().await?);
                state.content = Some(content.clone());
                content
            }
        };
        let attempt_ms = crate::metrics::unix_now_ms();
        let (cookie, key) = match self.login(&content, &password).await {
            Ok(login) => login,
            Err(LoginError { error, cookie }) => {
                self.count_failed_login(&mut state.gate, &error, &password);
                match cookie {
                    Some(cookie) => {
                        self.release_unknown_login(&mut state, cookie, content, &error)
                            .await;
                    }
                    // No answer at all: a session may exist that only its
                    // login time can tell (see `sweep_lost_logins`).
                    None if !matches!(error, Error::VcenterLogin { .. }) => {
                        state
                            .lost_logins
                            .push((attempt_ms, crate::metrics::unix_now_ms()));
                    }
                    None => {}
                }
                return Err(error);
            }
        };
        state.gate = LoginGate::default();
        state.generation += 1;
        let session = Arc::new(Session {
            cookie,
            content,
            generation: state.generation,
            key,
        });
        state.session = Some(session.clone());
        self.logins.fetch_add(1, Ordering::Relaxed);
        info!(
            vcenter = %self.config.host,
            user = %self.config.username,
            "Logged in to vCenter"
        );
        Ok(session)
    }

    /// The password now: the file read again when there is one.
    fn password(&self) -> Result<Secret, Error> {
        match &self.config.password_file {
            None => Ok(self.config.password.clone()),
            Some(path) => Secret::from_file(path).map_err(|source| Error::Io {
                context: format!(
                    "reading the password file {} of vCenter {}",
                    path.display(),
                    self.config.host
                ),
                source,
            }),
        }
    }

    /// Refuse to log in while the wait after a refused login runs, unless
    /// the password changed since (a rotated Secret was mounted).
    fn check_gate(&self, gate: &mut LoginGate, password: &Secret) -> Result<(), Error> {
        let Some(retry_at) = gate.retry_at else {
            return Ok(());
        };
        if gate.refused_password != Some(fingerprint(password)) {
            info!(vcenter = %self.config.host, "The password changed since the refused login, logging in now");
            *gate = LoginGate::default();
            return Ok(());
        }
        let wait = retry_at.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return Ok(());
        }
        Err(Error::LoginBackoff {
            host: self.config.host.clone(),
            wait: Duration::from_secs(wait.as_secs().max(1)),
        })
    }

    /// Count a failed login; a refusal starts (or lengthens) the wait
    /// before the next, logged once per step.
    fn count_failed_login(&self, gate: &mut LoginGate, error: &Error, password: &Secret) {
        let reason = match error {
            Error::VcenterLogin { message, .. } if message.starts_with("InvalidLogin") => 0,
            Error::VcenterLogin { .. } => 1,
            _ => 2,
        };
        self.login_failures[reason].fetch_add(1, Ordering::Relaxed);
        if reason == 2 {
            // No answer is no refusal: nothing that counts towards a lockout.
            return;
        }
        gate.failures = gate.failures.saturating_add(1);
        let wait = self.config.login_backoff.wait(gate.failures);
        gate.retry_at = Instant::now().checked_add(wait);
        gate.refused_password = Some(fingerprint(password));
        warn!(
            vcenter = %self.config.host,
            user = %self.config.username,
            refused_logins = gate.failures,
            wait_s = wait.as_secs(),
            error = %error,
            "vCenter refused the login; not trying again before the wait ends or the password file changes"
        );
    }

    /// The vCenter set a session cookie but the `Login` failed after that:
    /// it may have made the session. Logs it out now; if that fails too,
    /// keeps it for `logout`.
    async fn release_unknown_login(
        &self,
        state: &mut State,
        cookie: Secret,
        content: Arc<ServiceContent>,
        error: &Error,
    ) {
        warn!(
            vcenter = %self.config.host,
            user = %self.config.username,
            error = %error,
            "Login failed after vCenter set a session cookie, logging that session out"
        );
        if let Err(e) = self.release(&cookie, &content).await {
            warn!(
                vcenter = %self.config.host,
                error = %e,
                "Logout of the half-made session failed, trying again at shutdown"
            );
            state.orphans.push(Session {
                cookie,
                content,
                generation: 0,
                key: None,
            });
        }
    }

    /// Logs out of the current session and of any half-made one, holding
    /// the lock. Reports the first failure after trying them all.
    async fn log_out(&self, mut state: OwnedMutexGuard<State>) -> Result<(), Error> {
        let mut result = Ok(());
        if let Some(session) = state.session.take() {
            match self.release(&session.cookie, &session.content).await {
                Ok(()) => info!(vcenter = %self.config.host, "Logged out of vCenter"),
                Err(e) => result = Err(e),
            }
        }
        for orphan in std::mem::take(&mut state.orphans) {
            if let Err(e) = self.release(&orphan.cookie, &orphan.content).await {
                warn!(
                    vcenter = %self.config.host,
                    error = %e,
                    "Logout of a half-made session failed"
                );
                result = result.and(Err(e));
            }
        }
        result
    }

    /// `Logout` with `cookie`. A session the vCenter no longer knows counts
    /// as logged out: that is what we wanted.
    async fn release(&self, cookie: &Secret, content: &ServiceContent) -> Result<(), Error> {
        let exchange = self
            .call(
                "Logout",
                &content.api_version,
                Some(cookie),
                soap::logout(&content.session_manager),
            )
            .await?;
        match self.reply(exchange, soap::parse_logout) {
            Ok(()) | Err(Error::NotAuthenticated { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A login or logout task that did not complete (it panicked).
    fn task_failed(&self, what: &str, e: tokio::task::JoinError) -> Error {
        Error::VcenterHttp {
            host: self.config.host.clone(),
            message: format!("the {what} task failed: {e}"),
        }
    }

    async fn retrieve_service_content(&self) -> Result<ServiceContent, Error> {
        let exchange = self
            .call(
                "RetrieveServiceContent",
                DEFAULT_API_VERSION,
                None,
                soap::retrieve_service_content(),
            )
            .await?;
        let mut content = self.reply(exchange, soap::parse_service_content)?;
        if content.api_version.is_empty() {
            content.api_version = DEFAULT_API_VERSION.to_string();
        }
        Ok(content)
    }

    /// The session cookie of a successful `Login`. A failure carries the
    /// cookie when the response set one and did not say the login was
    /// refused: the session may exist.
    async fn login(
        &self,
        content: &ServiceContent,
        password: &Secret,
    ) -> Result<(Secret, Option<String>), LoginError> {
        let body = soap::login(
            &content.session_manager,
            &self.config.username,
            password.expose(),
        );
        let cookie_of = |cookie: Option<String>| cookie.filter(|c| !c.is_empty()).map(Secret::new);
        let exchange = match self.call("Login", &content.api_version, None, body).await {
            Ok(exchange) => exchange,
            Err(CallError {
                error,
                session_cookie,
            }) => {
                return Err(LoginError {
                    error,
                    cookie: cookie_of(session_cookie),
                });
            }
        };
        let cookie = cookie_of(exchange.session_cookie.clone());
        let refused = |message: String| LoginError {
            error: Error::VcenterLogin {
                host: self.config.host.clone(),
                user: self.config.username.clone(),
                message,
            },
            // A fault is a clear refusal: no session was made.
            cookie: None,
        };
        match self.reply(exchange, soap::parse_login) {
            Ok(key) => cookie.map(|c| (c, key)).ok_or_else(|| {
                refused(format!("the Login response set no {SESSION_COOKIE} cookie"))
            }),
            Err(Error::SoapFault { fault, message, .. }) => Err(refused(if message.is_empty() {
                fault
            } else {
                format!("{fault}: {message}")
            })),
            Err(Error::NotAuthenticated { .. }) => Err(refused("NotAuthenticated".into())),
            // An unreadable answer: the login may have succeeded.
            Err(error) => Err(LoginError { error, cookie }),
        }
    }

    /// Terminate the sessions of the reporter's own logins that got no
    /// answer: same user and user agent as the reporter, not its current
    /// session, logged in (by the vCenter's clock, moved onto ours) within
    /// a few seconds of such a login. A lost login is recorded when it
    /// fails, so its session is at least a cycle old by the time a listing
    /// shows it. Another tool's sessions never match all of that; a second
    /// reporter with the same user and agent (an HA pair) does not either,
    /// unless it logged in within the same seconds as a lost login of ours:
    /// give each replica its own user agent.
    async fn sweep_lost_logins(
        &self,
        session: &Session,
        sessions: &[UserSession],
        clock: VcenterClock,
    ) {
        /// How far a session's login time may lie from our lost attempt.
        const SLACK_MS: i64 = 5_000;
        /// Lost logins older than this are forgotten: vCenter ends idle
        /// sessions after 30 minutes by default.
        const FORGET_MS: i64 = 2 * 60 * 60 * 1000;
        let lost = {
            let mut state = self.state.lock().await;
            let now = crate::metrics::unix_now_ms();
            state.lost_logins.retain(|(_, end)| now - end < FORGET_MS);
            state.lost_logins.clone()
        };
        if lost.is_empty() {
            return;
        }
        let user = crate::correlate::normalize_username(&self.config.username);
        let candidates: Vec<String> = sessions
            .iter()
            .filter(|s| {
                crate::correlate::normalize_username(&s.user_name) == user
                    && s.user_agent == self.config.user_agent
                    && Some(&s.key) != session.key.as_ref()
                    && super::parse_time_ms(&s.login_time).is_some_and(|t| {
                        let local = t - clock.offset_ms();
                        lost.iter()
                            .any(|(a, b)| local >= a - SLACK_MS && local <= b + SLACK_MS)
                    })
            })
            .map(|s| s.key.clone())
            .collect();
        for key in candidates {
            let short: String = key.chars().take(8).collect();
            match self.terminate(session, &key).await {
                Ok(()) => {
                    self.orphans_terminated.fetch_add(1, Ordering::Relaxed);
                    info!(vcenter = %self.config.host, session = %short,
                        "Terminated a session of a login of ours that got no answer");
                }
                Err(e) => warn!(vcenter = %self.config.host, session = %short, error = %e,
                    "Terminating a session of a lost login failed, trying again next cycle"),
            }
        }
    }

    /// `TerminateSession` of the session with this key, within `session`.
    async fn terminate(&self, session: &Session, key: &str) -> Result<(), Error> {
        let exchange = self
            .call_in(
                session,
                "TerminateSession",
                soap::terminate_session(&session.content.session_manager, key),
            )
            .await?;
        self.reply(exchange, |xml| {
            soap::parse_empty(xml, "TerminateSessionResponse")
        })
    }

    /// `CurrentTime`, then every session, with one session.
    async fn read_clock_and_sessions(
        &self,
        session: &Session,
    ) -> Result<(VcenterClock, Vec<UserSession>), Error> {
        let clock = self.current_time(session).await?;
        let sessions = self.retrieve_all(session).await?;
        Ok((clock, sessions))
    }

    async fn current_time(&self, session: &Session) -> Result<VcenterClock, Error> {
        let before = crate::metrics::unix_now_ms();
        let exchange = self
            .call_in(session, "CurrentTime", soap::current_time())
            .await?;
        let after = crate::metrics::unix_now_ms();
        let text = self.reply(exchange, soap::parse_current_time)?;
        let vcenter_ms = super::parse_time_ms(&text).ok_or_else(|| Error::SoapParse {
            host: self.config.host.clone(),
            message: "CurrentTime is not an ISO 8601 time".into(),
        })?;
        Ok(VcenterClock {
            vcenter_ms,
            local_ms: before + (after - before) / 2,
        })
    }

    /// Brings the VM map up to date: (re)creates the collector, view and
    /// filter when the session changed or an earlier read failed, then
    /// reads what changed since the map's version.
    async fn refresh_vm_map(&self, watch: &mut VmWatch, session: &Session) -> Result<(), Error> {
        if !watch.ready || watch.generation != session.generation {
            self.watch_vms(watch, session).await?;
        }
        let collector = watch
            .collector
            .clone()
            .expect("a ready VM watch has a property collector");
        for _ in 0..MAX_UPDATE_PAGES {
            let exchange = self
                .call_in(
                    session,
                    "WaitForUpdatesEx",
                    soap::wait_for_updates(&collector, watch.map.version(), MAX_OBJECT_UPDATES),
                )
                .await?;
            watch.map.count_bytes(exchange.body.len());
            let page = self.reply(exchange, updates::parse_update_page)?;
            let truncated = page.truncated;
            watch.map.apply(page);
            if !truncated {
                return Ok(());
            }
        }
        debug!(vcenter = %self.config.host, pages = MAX_UPDATE_PAGES, "VM map backlog continues next cycle");
        Ok(())
    }

    /// A private property collector with a filter over a view of every VM.
    /// Objects left by an earlier attempt in the same session are
    /// destroyed first, so failures never pile objects up on the vCenter.
    async fn watch_vms(&self, watch: &mut VmWatch, session: &Session) -> Result<(), Error> {
        let content = &session.content;
        if watch.generation == session.generation {
            if let Some(collector) = watch.collector.take() {
                self.destroy(session, "DestroyPropertyCollector", &collector)
                    .await;
            }
            if let Some(view) = watch.view.take() {
                self.destroy(session, "DestroyView", &view).await;
            }
        }
        watch.collector = None;
        watch.view = None;
        watch.ready = false;
        watch.generation = session.generation;
        watch.map.reset();
        let (Some(root), Some(view_manager)) = (&content.root_folder, &content.view_manager) else {
            return Err(Error::SoapParse {
                host: self.config.host.clone(),
                message: "the service content names no rootFolder or viewManager".into(),
            });
        };
        let collector = self
            .create(
                session,
                "CreatePropertyCollector",
                soap::create_property_collector(&content.property_collector),
            )
            .await?;
        watch.collector = Some(collector.clone());
        let view = self
            .create(
                session,
                "CreateContainerView",
                soap::create_vm_view(view_manager, root),
            )
            .await?;
        watch.view = Some(view.clone());
        self.create(
            session,
            "CreateFilter",
            soap::create_vm_filter(&collector, &view),
        )
        .await?;
        watch.ready = true;
        watch.map.count_full_read();
        debug!(vcenter = %self.config.host, "Watching VMs for the VM map");
        Ok(())
    }

    /// Call a method that makes a managed object and returns its reference.
    async fn create(
        &self,
        session: &Session,
        method: &'static str,
        body: String,
    ) -> Result<MoRef, Error> {
        let exchange = self.call_in(session, method, body).await?;
        let response = format!("{method}Response");
        self.reply(exchange, |xml| soap::parse_moref(xml, &response))
    }

    /// Best effort: a failure leaves the object to die with the session.
    async fn destroy(&self, session: &Session, method: &'static str, object: &MoRef) {
        let response = format!("{method}Response");
        let result = match self
            .call_in(session, method, soap::destroy(method, object))
            .await
        {
            Ok(exchange) => self.reply(exchange, |xml| soap::parse_empty(xml, &response)),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = result {
            debug!(vcenter = %self.config.host, method, error = %e, "Destroying a VM map object failed");
        }
    }

    /// Every page of `sessionList` with one session.
    async fn retrieve_all(&self, session: &Session) -> Result<Vec<UserSession>, Error> {
        let content = &session.content;
        let mut page = self
            .retrieve_page(
                session,
                "RetrievePropertiesEx",
                soap::retrieve_session_list(&content.property_collector, &content.session_manager),
            )
            .await?;
        let mut sessions = std::mem::take(&mut page.sessions);
        let mut pages = 1;
        while let Some(token) = page.token.take() {
            if pages >= soap::MAX_PAGES {
                return Err(Error::SoapParse {
                    host: self.config.host.clone(),
                    message: format!(
                        "the session list did not end after {} pages",
                        soap::MAX_PAGES
                    ),
                });
            }
            page = self
                .retrieve_page(
                    session,
                    "ContinueRetrievePropertiesEx",
                    soap::continue_retrieve(&content.property_collector, &token),
                )
                .await?;
            sessions.append(&mut page.sessions);
            pages += 1;
        }
        Ok(sessions)
    }

    async fn retrieve_page(
        &self,
        session: &Session,
        method: &'static str,
        body: String,
    ) -> Result<SessionPage, Error> {
        let continued = method == "ContinueRetrievePropertiesEx";
        let exchange = self.call_in(session, method, body).await?;
        let page = self.reply(exchange, |xml| soap::parse_session_page(xml, continued))?;
        match &page.missing {
            None => Ok(page),
            Some(fault) => Err(self.fault_error(fault.clone())),
        }
    }

    /// One SOAP request in `session` (its API version and cookie).
    async fn call_in(
        &self,
        session: &Session,
        method: &'static str,
        body: String,
    ) -> Result<Exchange, CallError> {
        self.call(
            method,
            &session.content.api_version,
            Some(&session.cookie),
            body,
        )
        .await
    }

    /// One SOAP request. Fails only when no complete response arrived.
    async fn call(
        &self,
        method: &'static str,
        api_version: &str,
        cookie: Option<&Secret>,
        body: String,
    ) -> Result<Exchange, CallError> {
        let started = Instant::now();
        let mut request = self
            .http
            .post(self.endpoint.clone())
            .header(CONTENT_TYPE, "text/xml; charset=utf-8")
            .header(USER_AGENT, self.config.user_agent.as_str())
            .header("SOAPAction", format!("\"urn:vim25/{api_version}\""))
            .body(body);
        if let Some(cookie) = cookie {
            let mut value =
                HeaderValue::from_str(&format!("{SESSION_COOKIE}=\"{}\"", cookie.expose()))
                    .map_err(|_| CallError {
                        error: Error::SoapParse {
                            host: self.config.host.clone(),
                            message: "the session cookie holds characters a header cannot carry"
                                .into(),
                        },
                        session_cookie: None,
                    })?;
            value.set_sensitive(true);
            request = request.header(COOKIE, value);
        }
        let http_error = |e: reqwest::Error| Error::VcenterHttp {
            host: self.config.host.clone(),
            message: self.redact(&describe(e, method, self.config.timeout)),
        };
        let response = request.send().await.map_err(|e| CallError {
            error: http_error(e),
            session_cookie: None,
        })?;
        let status = response.status();
        let session_cookie = response
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(session_cookie_value);
        // The cookie travels with a failure here: the session may exist.
        let body = match self.read_body(response, method).await {
            Ok(body) => body,
            Err(error) => {
                return Err(CallError {
                    error,
                    session_cookie,
                });
            }
        };
        debug!(
            vcenter = %self.config.host,
            method,
            status = status.as_u16(),
            bytes = body.len(),
            duration_ms = started.elapsed().as_millis() as u64,
            "SOAP request"
        );
        Ok(Exchange {
            status,
            body,
            session_cookie,
        })
    }

    /// The whole body, read as it streams and refused past
    /// `max_response_bytes`: a peer streaming without end costs a bounded
    /// amount of memory, and the request timeout bounds the time.
    async fn read_body(
        &self,
        mut response: reqwest::Response,
        method: &'static str,
    ) -> Result<Bytes, Error> {
        let max = self.config.max_response_bytes;
        if response.content_length().is_some_and(|n| n > max) {
            return Err(self.too_large(method));
        }
        let mut body = bytes::BytesMut::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if (body.len() + chunk.len()) as u64 > max {
                        return Err(self.too_large(method));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body.freeze()),
                Err(e) => {
                    return Err(Error::VcenterHttp {
                        host: self.config.host.clone(),
                        message: self.redact(&describe(e, method, self.config.timeout)),
                    });
                }
            }
        }
    }

    fn too_large(&self, method: &str) -> Error {
        Error::VcenterHttp {
            host: self.config.host.clone(),
            message: format!(
                "{method}: the answer is larger than {} bytes (max_response_bytes)",
                self.config.max_response_bytes
            ),
        }
    }

    /// Turns a response into the method's result or the matching error.
    fn reply<T>(
        &self,
        exchange: Exchange,
        parse: impl FnOnce(&[u8]) -> Result<Reply<T>, soap::ParseError>,
    ) -> Result<T, Error> {
        match exchange.status {
            StatusCode::OK => match parse(&exchange.body) {
                Ok(Reply::Ok(value)) => Ok(value),
                Ok(Reply::Fault(fault)) => Err(self.fault_error(fault)),
                Err(e) => Err(Error::SoapParse {
                    host: self.config.host.clone(),
                    message: e.to_string(),
                }),
            },
            // SOAP 1.1 sends faults with 500; anything else there is an HTTP error.
            StatusCode::INTERNAL_SERVER_ERROR => match soap::parse_fault(&exchange.body) {
                Some(fault) => Err(self.fault_error(fault)),
                None => Err(self.status_error(&exchange)),
            },
            _ => Err(self.status_error(&exchange)),
        }
    }

    fn fault_error(&self, fault: Fault) -> Error {
        if fault.is_not_authenticated() {
            return Error::NotAuthenticated {
                host: self.config.host.clone(),
            };
        }
        Error::SoapFault {
            host: self.config.host.clone(),
            fault: self.redact(&fault.fault),
            message: self.redact(&fault.message),
        }
    }

    fn status_error(&self, exchange: &Exchange) -> Error {
        let body = String::from_utf8_lossy(&exchange.body);
        Error::VcenterStatus {
            host: self.config.host.clone(),
            status: exchange.status.as_u16(),
            body: truncate_body(&self.redact(body.trim()), MAX_ERROR_BODY),
        }
    }

    /// Removes the password from text a server sent back, in case it echoes
    /// the request: errors end up in logs.
    fn redact(&self, text: &str) -> String {
        // The password read at start and, after a rotation, the file's.
        let current = self.password().ok();
        let mut text = text.to_string();
        for password in std::iter::once(&self.config.password).chain(current.as_ref()) {
            let password = password.expose();
            if password.is_empty() {
                continue;
            }
            // The request carried the password XML-escaped; an echo may too.
            let escaped = quick_xml::escape::escape(password);
            text = text
                .replace(password, "<redacted>")
                .replace(escaped.as_ref(), "<redacted>");
        }
        text
    }
}

/// Whether the URL's host is a loopback address (`localhost`, 127.0.0.0/8,
/// `::1`), where plain http stays on the machine.
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// A fingerprint of a password, to tell whether a password file changed
/// without keeping the password itself a second time.
fn fingerprint(password: &Secret) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    password.expose().hash(&mut hasher);
    hasher.finish()
}

/// `<url>/sdk` without user info; a URL already ending in `/sdk` is kept.
fn sdk_endpoint(url: &Url) -> Url {
    let mut endpoint = url.clone();
    let _ = endpoint.set_username("");
    let _ = endpoint.set_password(None);
    endpoint.set_query(None);
    endpoint.set_fragment(None);
    let path = endpoint.path().trim_end_matches('/').to_string();
    if path.ends_with("/sdk") {
        endpoint.set_path(&path);
    } else {
        endpoint.set_path(&format!("{path}/sdk"));
    }
    endpoint
}

/// The value of `vmware_soap_session` in one `Set-Cookie` header, quoted
/// (`vmware_soap_session="52a1..."; Path=/; HttpOnly; Secure`, vCenter) or not
/// (`vmware_soap_session=7c1e...; HttpOnly`, vcsim).
fn session_cookie_value(header: &str) -> Option<String> {
    let pair = header.split(';').next()?;
    let (name, value) = pair.split_once('=')?;
    if name.trim() != SESSION_COOKIE {
        return None;
    }
    let value = value.trim();
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    Some(value.to_string())
}

/// A request error with its causes ("...: invalid peer certificate:
/// UnknownIssuer"): reqwest's own message alone hides what went wrong. The
/// URL is left out: the error names the vCenter already.
fn describe(err: reqwest::Error, method: &str, timeout: Duration) -> String {
    if err.is_timeout() {
        return format!(
            "{method}: no response within {}",
            humantime::format_duration(timeout)
        );
    }
    format!("{method}: {}", error_chain(&err.without_url()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_count_as_staying_on_the_machine() {
        let loopback = |s: &str| is_loopback(&Url::parse(s).expect("test URL is valid"));
        assert!(loopback("http://127.0.0.1:8989"));
        assert!(loopback("http://127.4.5.6"));
        assert!(loopback("http://[::1]:80"));
        assert!(loopback("http://LOCALHOST"));
        assert!(!loopback("http://vc.example.com"));
        assert!(!loopback("http://10.0.0.1"));
    }

    #[test]
    fn session_cookie_is_read_quoted_or_not() {
        assert_eq!(
            session_cookie_value(r#"vmware_soap_session="52ab-cd"; Path=/; HttpOnly; Secure"#),
            Some("52ab-cd".to_string())
        );
        assert_eq!(
            session_cookie_value("vmware_soap_session=7c1e; HttpOnly"),
            Some("7c1e".to_string())
        );
        assert_eq!(session_cookie_value("other=1; Path=/"), None);
    }

    #[test]
    fn sdk_endpoint_appends_sdk_once_and_drops_user_info() {
        let url = |s: &str| sdk_endpoint(&Url::parse(s).expect("test URL is valid"));
        assert_eq!(
            url("https://vc.example.com").as_str(),
            "https://vc.example.com/sdk"
        );
        assert_eq!(
            url("https://vc.example.com/sdk/").as_str(),
            "https://vc.example.com/sdk"
        );
        assert_eq!(
            url("https://u:p@vc.example.com:8443/").as_str(),
            "https://vc.example.com:8443/sdk"
        );
    }
}
