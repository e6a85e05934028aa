//! The vCenter client against a real vCenter simulator (vcsim) and against a
//! stub HTTP server that misbehaves on purpose.
//!
//! vcsim must be built first: `scripts/build-vcsim.sh` (scripts/test.sh does it).

#[path = "support/pki.rs"]
mod pki;
#[path = "support/vcsim.rs"]
mod vcsim;

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use url::Url;
use vsphere_ci_session_metrics::Error;
use vsphere_ci_session_metrics::correlate::normalize_username;
use vsphere_ci_session_metrics::secret::Secret;
use vsphere_ci_session_metrics::vcenter::{
    LoginBackoff, UserSession, VcenterClient, VcenterConfig,
};

use pki::TestPki;
use vcsim::Vcsim;

const REPORTER_AGENT: &str = "vsphere-ci-session-metrics/test";
const REPORTER_USER: &str = "reporter@vsphere.local";
const PASSWORD: &str = "s3cret-Pa55";

fn config(url: &Url, user: &str, password: &str) -> VcenterConfig {
    VcenterConfig {
        url: url.clone(),
        host: url.host_str().unwrap_or_default().to_string(),
        username: user.to_string(),
        password: Secret::new(password),
        user_agent: REPORTER_AGENT.to_string(),
        ca_file: None,
        insecure: false,
        timeout: Duration::from_secs(10),
        password_file: None,
        login_backoff: Default::default(),
        max_response_bytes: vsphere_ci_session_metrics::vcenter::DEFAULT_MAX_RESPONSE_BYTES,
        session_limit: vsphere_ci_session_metrics::vcenter::DEFAULT_SESSION_LIMIT,
        aliases: Vec::new(),
        vm_map: true,
    }
}

fn client(url: &Url) -> VcenterClient {
    VcenterClient::new(config(url, REPORTER_USER, PASSWORD)).expect("the client builds")
}

fn reporter_sessions(list: &[UserSession]) -> Vec<&UserSession> {
    list.iter()
        .filter(|s| s.user_agent == REPORTER_AGENT)
        .collect()
}

/// Polls `check` every 50 ms until it holds or `timeout` passes.
async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// Against vcsim

#[tokio::test]
async fn sessions_are_counted_exactly_per_user_and_agent() {
    let sim = Vcsim::start(&[
        "-session",
        "ci-user-1@vsphere.local,openshift-install/4.16,3",
        "-session",
        r"VSPHERE.LOCAL\ci-user-1,terraform/1.5,2",
        "-session",
        "ci-user-2@vsphere.local,openshift-install/4.16,1",
    ]);
    // Sessions opened after start count as well.
    let _a = sim.login(r"VSPHERE.LOCAL\ci-user-3", "ccoctl").await;
    let _b = sim.login(r"VSPHERE.LOCAL\ci-user-3", "ccoctl").await;

    let client = client(sim.url());
    let sessions = client.list_sessions().await.expect("sessions are listed");

    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for s in &sessions {
        *counts
            .entry((s.user_name.clone(), s.user_agent.clone()))
            .or_default() += 1;
    }
    let expected: BTreeMap<(String, String), usize> = [
        ("ci-user-1@vsphere.local", "openshift-install/4.16", 3),
        (r"VSPHERE.LOCAL\ci-user-1", "terraform/1.5", 2),
        ("ci-user-2@vsphere.local", "openshift-install/4.16", 1),
        (r"VSPHERE.LOCAL\ci-user-3", "ccoctl", 2),
        (REPORTER_USER, REPORTER_AGENT, 1),
    ]
    .into_iter()
    .map(|(u, a, n)| ((u.to_string(), a.to_string()), n))
    .collect();
    assert_eq!(counts, expected);

    // Both name forms of ci-user-1 are the same user once normalised.
    let ci_user_1 = sessions
        .iter()
        .filter(|s| normalize_username(&s.user_name) == "ci-user-1")
        .count();
    assert_eq!(ci_user_1, 5);

    // Every field a user sees is filled in.
    for s in &sessions {
        assert!(!s.key.is_empty() && !s.login_time.is_empty(), "{s:?}");
        assert_eq!(s.ip_address, "127.0.0.1");
        assert!(s.call_count >= 1, "{s:?}");
    }
}

#[tokio::test]
async fn many_list_calls_use_exactly_one_reporter_session() {
    let sim = Vcsim::start(&[]);
    let client = client(sim.url());
    for call in 0..20 {
        let sessions = client.list_sessions().await.expect("sessions are listed");
        assert_eq!(reporter_sessions(&sessions).len(), 1, "call {call}");
    }
    assert_eq!(client.logins(), 1);
    let admin = sim.admin().await;
    assert_eq!(admin.sessions_with_agent(REPORTER_AGENT).await.len(), 1);
}

#[tokio::test]
async fn concurrent_first_calls_log_in_only_once() {
    let sim = Vcsim::start(&[]);
    let client = Arc::new(client(sim.url()));
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.list_sessions().await })
        })
        .collect();
    for call in calls {
        call.await
            .expect("the task does not panic")
            .expect("sessions are listed");
    }
    assert_eq!(client.logins(), 1);
    let admin = sim.admin().await;
    assert_eq!(admin.sessions_with_agent(REPORTER_AGENT).await.len(), 1);
}

#[tokio::test]
async fn a_session_terminated_from_outside_is_replaced_by_exactly_one_new_one() {
    let sim = Vcsim::start(&[]);
    let client = client(sim.url());
    let first = client.list_sessions().await.expect("sessions are listed");
    let old_key = reporter_sessions(&first)[0].key.clone();

    let admin = sim.admin().await;
    admin.terminate(&old_key).await;
    assert!(admin.sessions_with_agent(REPORTER_AGENT).await.is_empty());

    let second = client.list_sessions().await.expect("listed after re-login");
    let mine = reporter_sessions(&second);
    assert_eq!(mine.len(), 1);
    assert_ne!(mine[0].key, old_key);
    assert_eq!(client.logins(), 2);

    // The new session is reused from then on.
    client.list_sessions().await.expect("sessions are listed");
    assert_eq!(client.logins(), 2);
    assert_eq!(admin.sessions_with_agent(REPORTER_AGENT).await.len(), 1);
}

#[tokio::test]
async fn concurrent_calls_after_a_termination_log_in_again_only_once() {
    let sim = Vcsim::start(&[]);
    let client = Arc::new(client(sim.url()));
    let first = client.list_sessions().await.expect("sessions are listed");
    let admin = sim.admin().await;
    admin.terminate(&reporter_sessions(&first)[0].key).await;

    let calls: Vec<_> = (0..8)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.list_sessions().await })
        })
        .collect();
    for call in calls {
        let sessions = call
            .await
            .expect("the task does not panic")
            .expect("sessions are listed");
        assert_eq!(reporter_sessions(&sessions).len(), 1);
    }
    assert_eq!(client.logins(), 2);
    assert_eq!(admin.sessions_with_agent(REPORTER_AGENT).await.len(), 1);
}

#[tokio::test]
async fn an_idle_expired_session_is_recovered_by_one_relogin() {
    // 3 s: a machine stalling for a second must not expire the admin's
    // session (or the new one) as well.
    let sim = Vcsim::start(&["-idle-timeout", "3s"]);
    let client = client(sim.url());
    client.list_sessions().await.expect("sessions are listed");
    assert_eq!(client.logins(), 1);

    // The admin polls often enough to stay alive itself.
    let admin = sim.admin().await;
    wait_until(
        "vcsim to expire the idle reporter session",
        Duration::from_secs(20),
        || async { admin.sessions_with_agent(REPORTER_AGENT).await.is_empty() },
    )
    .await;

    let sessions = client.list_sessions().await.expect("listed after re-login");
    assert_eq!(reporter_sessions(&sessions).len(), 1);
    assert_eq!(client.logins(), 2);
}

#[tokio::test]
async fn logout_on_shutdown_removes_the_reporter_session() {
    let sim = Vcsim::start(&[]);
    // Before any call there is nothing to log out of.
    client(sim.url())
        .logout()
        .await
        .expect("logout without a session is a no-op");
    let client = client(sim.url());
    client.list_sessions().await.expect("sessions are listed");
    let admin = sim.admin().await;
    assert_eq!(admin.sessions_with_agent(REPORTER_AGENT).await.len(), 1);

    client.logout().await.expect("logout succeeds");
    assert!(admin.sessions_with_agent(REPORTER_AGENT).await.is_empty());
    client.logout().await.expect("a second logout is a no-op");
    assert_eq!(client.logins(), 1);
    // Shutdown is final: a cycle still running cannot log in again.
    client
        .list_sessions()
        .await
        .expect_err("no login after logout");
    assert!(admin.sessions_with_agent(REPORTER_AGENT).await.is_empty());
    assert_eq!(client.logins(), 1);
}

#[tokio::test]
async fn a_first_call_cut_off_at_any_point_leaves_no_session_after_logout() {
    let sim = Vcsim::start(&[]);
    let admin = sim.admin().await;
    // Cut the first call off after 0, 1, 2, ... ms, each with a new client,
    // until one finishes in time: some cut lands during the login.
    let mut cut_after_vcsim_made_the_session = 0;
    let mut finished = false;
    for bound_ms in 0..500 {
        let client = client(sim.url());
        let outcome =
            tokio::time::timeout(Duration::from_millis(bound_ms), client.list_sessions()).await;
        client.logout().await.expect("logout succeeds");
        assert!(
            admin.sessions_with_agent(REPORTER_AGENT).await.is_empty(),
            "a session is left after a call cut off after {bound_ms} ms"
        );
        match outcome {
            Ok(listed) => {
                listed.expect("sessions are listed");
                finished = true;
                break;
            }
            Err(_) if client.logins() == 1 => cut_after_vcsim_made_the_session += 1,
            Err(_) => {}
        }
    }
    assert!(finished, "no call finished within 500 ms");
    assert!(
        cut_after_vcsim_made_the_session >= 1,
        "no cut landed after vcsim made the session"
    );
}

#[tokio::test]
async fn a_password_with_xml_special_characters_logs_in() {
    let sim = Vcsim::start(&[]);
    let password = r#"p<a&s's"w>rd"#;
    let client =
        VcenterClient::new(config(sim.url(), REPORTER_USER, password)).expect("the client builds");
    let sessions = client.list_sessions().await.expect("login succeeds");
    assert_eq!(reporter_sessions(&sessions)[0].user_name, REPORTER_USER);
}

#[tokio::test]
async fn an_empty_password_is_a_login_error_not_a_panic() {
    let sim = Vcsim::start(&[]);
    let client =
        VcenterClient::new(config(sim.url(), REPORTER_USER, "")).expect("the client builds");
    match client.list_sessions().await {
        Err(Error::VcenterLogin { user, message, .. }) => {
            assert_eq!(user, REPORTER_USER);
            assert!(message.contains("InvalidLogin"), "{message}");
        }
        other => panic!("expected a login error, got {other:?}"),
    }
    assert_eq!(client.logins(), 0);
}

// ---------------------------------------------------------------------------
// TLS

/// vcsim serving the test PKI's server certificate for 127.0.0.1.
fn start_tls(pki: &TestPki) -> Vcsim {
    let cert = pki.path("server.crt");
    let key = pki.path("server.key");
    let cert = cert.to_str().expect("UTF-8 temp path");
    let key = key.to_str().expect("UTF-8 temp path");
    let sim = Vcsim::start(&["-tls-cert", cert, "-tls-key", key]);
    assert_eq!(sim.url().scheme(), "https");
    sim
}

#[tokio::test]
async fn tls_with_the_ca_file_verifies_the_vcenter() {
    let pki = TestPki::generate();
    let sim = start_tls(&pki);
    let mut cfg = config(sim.url(), REPORTER_USER, PASSWORD);
    cfg.ca_file = Some(pki.path("ca.crt"));
    let client = VcenterClient::new(cfg).expect("the client builds");
    let sessions = client.list_sessions().await.expect("TLS with the CA works");
    assert_eq!(reporter_sessions(&sessions).len(), 1);
}

#[tokio::test]
async fn tls_with_an_unknown_ca_fails_with_a_certificate_error() {
    let pki = TestPki::generate();
    let sim = start_tls(&pki);
    let client = client(sim.url());
    match client.list_sessions().await {
        Err(Error::VcenterHttp { message, .. }) => {
            let lower = message.to_lowercase();
            assert!(
                lower.contains("certificate") || lower.contains("tls"),
                "{message}"
            );
            assert!(!message.contains(PASSWORD));
        }
        other => panic!("expected a TLS error, got {other:?}"),
    }
}

#[tokio::test]
async fn tls_insecure_skips_verification() {
    let pki = TestPki::generate();
    let sim = start_tls(&pki);
    let mut cfg = config(sim.url(), REPORTER_USER, PASSWORD);
    cfg.insecure = true;
    let client = VcenterClient::new(cfg).expect("the client builds");
    client.list_sessions().await.expect("insecure TLS works");
}

#[test]
fn a_bad_ca_file_is_refused_at_construction_naming_the_file() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let url = Url::parse("https://vc.example.com").expect("valid URL");

    let missing = dir.path().join("missing.pem");
    let mut cfg = config(&url, REPORTER_USER, PASSWORD);
    cfg.ca_file = Some(missing.clone());
    let err = VcenterClient::new(cfg).expect_err("a missing CA file is an error");
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.pem"), "{err}");

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not a certificate\n").expect("write");
    let mut cfg = config(&url, REPORTER_USER, PASSWORD);
    cfg.ca_file = Some(garbage);
    let err = VcenterClient::new(cfg).expect_err("a file without certificates is an error");
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(err.to_string().contains("garbage.pem"), "{err}");
}

// ---------------------------------------------------------------------------
// Against a stub that misbehaves

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/soap/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

/// What the stub saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: &'static str,
    soap_action: String,
    cookie: String,
    user_agent: String,
    content_type: String,
    /// The text of `<password>`, XML entities decoded, in a Login.
    password: Option<String>,
    /// When it arrived.
    at: Instant,
}

#[derive(Default)]
struct StubState {
    /// Scripted answers per method; Login, RetrieveServiceContent and Logout
    /// answer normally once theirs run out.
    script: BTreeMap<&'static str, VecDeque<(u16, String)>>,
    /// Login sends its headers (with the cookie) at once, its body only
    /// after this long.
    login_body_delay: Option<Duration>,
    /// When set, a Login with another password is refused with an
    /// `InvalidLogin` fault, as vCenter answers a wrong password.
    accept_password: Option<String>,
    logins: usize,
    seen: Vec<Seen>,
}

const LOGOUT_RESPONSE: &str = concat!(
    r#"<?xml version="1.0" encoding="UTF-8"?>"#,
    r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>"#,
    r#"<LogoutResponse xmlns="urn:vim25"></LogoutResponse>"#,
    "</soapenv:Body></soapenv:Envelope>"
);

/// The decoded text of the first `<password>` element in a SOAP body.
fn password_in(body: &str) -> Option<String> {
    let start = body.find("<password>")? + "<password>".len();
    let len = body[start..].find("</password>")?;
    let raw = &body[start..start + len];
    Some(
        quick_xml::escape::unescape(raw)
            .unwrap_or_else(|e| panic!("<password> holds invalid XML text {raw:?}: {e}"))
            .into_owned(),
    )
}

type Stub = Arc<Mutex<StubState>>;

const METHODS: [&str; 5] = [
    "RetrieveServiceContent",
    "Login",
    "ContinueRetrievePropertiesEx",
    "RetrievePropertiesEx",
    "Logout",
];

async fn stub_handler(State(stub): State<Stub>, headers: HeaderMap, body: String) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let method = METHODS
        .iter()
        .find(|m| body.contains(&format!("<{m} ")))
        .copied()
        .unwrap_or("unknown");
    let mut state = stub.lock().expect("stub lock is not poisoned");
    state.seen.push(Seen {
        method,
        soap_action: header("soapaction"),
        cookie: header("cookie"),
        user_agent: header("user-agent"),
        content_type: header("content-type"),
        password: password_in(&body),
        at: Instant::now(),
    });
    let refused = method == "Login"
        && state
            .accept_password
            .as_ref()
            .is_some_and(|accepted| password_in(&body).as_ref() != Some(accepted));
    let scripted = if refused {
        Some((500, fixture("fault_unusual_prefix.xml")))
    } else {
        state.script.get_mut(method).and_then(|q| q.pop_front())
    };
    let (status, text) = match (scripted, method) {
        (Some(answer), _) => answer,
        (None, "RetrieveServiceContent") => (200, fixture("service_content.xml")),
        (None, "Login") => (200, fixture("login.xml")),
        (None, "Logout") => (200, LOGOUT_RESPONSE.to_string()),
        (None, _) => (500, format!("no scripted answer for {method}")),
    };
    let status = StatusCode::from_u16(status).expect("scripted status is valid");
    let body = match state.login_body_delay.filter(|_| method == "Login") {
        Some(delay) => axum::body::Body::from_stream(futures::stream::once(async move {
            tokio::time::sleep(delay).await;
            Ok::<_, std::convert::Infallible>(text)
        })),
        None => axum::body::Body::from(text),
    };
    let mut response =
        (status, [("content-type", "text/xml; charset=utf-8")], body).into_response();
    if method == "Login" && status == StatusCode::OK {
        state.logins += 1;
        // Real vCenter's form: quoted value, Path, HttpOnly, Secure.
        let cookie = format!(
            "vmware_soap_session=\"stub-cookie-{}\"; Path=/; HttpOnly; Secure",
            state.logins
        );
        response.headers_mut().insert(
            "set-cookie",
            cookie.parse().expect("the cookie is a valid header"),
        );
    }
    response
}

async fn start_stub(script: Vec<(&'static str, u16, String)>) -> (Url, Stub) {
    let mut state = StubState::default();
    for (method, status, body) in script {
        state
            .script
            .entry(method)
            .or_default()
            .push_back((status, body));
    }
    serve_stub(state).await
}

/// A stub whose Login sets the session cookie at once and sends its body
/// only after `delay`: a login in flight for that long.
async fn start_slow_login_stub(delay: Duration) -> (Url, Stub) {
    serve_stub(StubState {
        login_body_delay: Some(delay),
        ..StubState::default()
    })
    .await
}

async fn serve_stub(state: StubState) -> (Url, Stub) {
    let stub: Stub = Arc::new(Mutex::new(state));
    let app = axum::Router::new()
        .route("/sdk", axum::routing::post(stub_handler))
        .with_state(stub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("a bound address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let url = Url::parse(&format!("http://{addr}")).expect("valid URL");
    (url, stub)
}

fn seen(stub: &Stub) -> Vec<Seen> {
    stub.lock().expect("stub lock is not poisoned").seen.clone()
}

/// The Cookie header of every `method` request the stub received.
fn cookies_sent_with(stub: &Stub, method: &str) -> Vec<String> {
    seen(stub)
        .into_iter()
        .filter(|s| s.method == method)
        .map(|s| s.cookie)
        .collect()
}

/// Starts `list_sessions` in a task and aborts it once the stub has received
/// its Login, so the abort lands while the login is in flight.
async fn abort_during_login(client: &Arc<VcenterClient>, stub: &Stub) {
    let call = {
        let client = client.clone();
        tokio::spawn(async move { client.list_sessions().await })
    };
    wait_until(
        "the stub to receive the Login",
        Duration::from_secs(10),
        || async { !cookies_sent_with(stub, "Login").is_empty() },
    )
    .await;
    call.abort();
    let aborted = call.await.expect_err("the call was still logging in");
    assert!(aborted.is_cancelled(), "{aborted:?}");
}

const STUB_COOKIE_1: &str = "vmware_soap_session=\"stub-cookie-1\"";

#[tokio::test]
async fn a_login_whose_caller_is_aborted_is_still_logged_out() {
    let (url, stub) = start_slow_login_stub(Duration::from_secs(1)).await;
    let client = Arc::new(client(&url));
    abort_during_login(&client, &stub).await;

    client.logout().await.expect("logout succeeds");
    assert_eq!(cookies_sent_with(&stub, "Logout"), [STUB_COOKIE_1]);
    // The aborted call never got to list anything.
    assert!(cookies_sent_with(&stub, "RetrievePropertiesEx").is_empty());
    assert_eq!(client.logins(), 1);

    client.logout().await.expect("a second logout is a no-op");
    assert_eq!(cookies_sent_with(&stub, "Logout").len(), 1);
}

#[tokio::test]
async fn a_login_whose_body_never_arrives_is_logged_out_with_its_cookie() {
    let (url, stub) = start_slow_login_stub(Duration::from_secs(3600)).await;
    let mut cfg = config(&url, REPORTER_USER, PASSWORD);
    // Long enough for every other request (and the release) on a loaded
    // machine; only the Login's body never comes.
    cfg.timeout = Duration::from_secs(2);
    let client = VcenterClient::new(cfg).expect("the client builds");
    match client.list_sessions().await {
        Err(Error::VcenterHttp { message, .. }) => {
            assert!(message.contains("no response within 2s"), "{message}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    // Released before the error reached the caller.
    assert_eq!(cookies_sent_with(&stub, "Logout"), [STUB_COOKIE_1]);
    assert_eq!(client.logins(), 0);

    client.logout().await.expect("nothing is left to log out");
    assert_eq!(cookies_sent_with(&stub, "Logout").len(), 1);
}

#[tokio::test]
async fn logout_waits_for_an_aborted_login_that_hangs_then_releases_its_cookie() {
    let (url, stub) = start_slow_login_stub(Duration::from_secs(3600)).await;
    let mut cfg = config(&url, REPORTER_USER, PASSWORD);
    cfg.timeout = Duration::from_secs(2);
    let client = Arc::new(VcenterClient::new(cfg).expect("the client builds"));
    abort_during_login(&client, &stub).await;

    // Bounded by the hanging login's timeout, not by the hour it would take.
    let started = Instant::now();
    client.logout().await.expect("logout succeeds");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "logout took {:?}",
        started.elapsed()
    );
    assert_eq!(cookies_sent_with(&stub, "Logout"), [STUB_COOKIE_1]);
}

#[tokio::test]
async fn the_password_reaches_the_vcenter_exactly_as_configured() {
    let (url, stub) = start_stub(vec![]).await;
    // Markup characters, and text that looks already escaped: escaping
    // twice or not at all would change what arrives.
    let password = r#"p<a&s's"w>rd &amp; &#60; ]]>"#;
    let client =
        VcenterClient::new(config(&url, REPORTER_USER, password)).expect("the client builds");
    // The stub has no session list scripted: only the Login matters here.
    let _ = client.list_sessions().await;
    let sent: Vec<String> = seen(&stub).into_iter().filter_map(|s| s.password).collect();
    assert_eq!(sent, [password]);
}

#[tokio::test]
async fn malformed_xml_is_a_parse_error() {
    let (url, _stub) = start_stub(vec![(
        "RetrieveServiceContent",
        200,
        "<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\"><soapenv:Body><oops>"
            .to_string(),
    )])
    .await;
    let err = client(&url).list_sessions().await.expect_err("malformed");
    assert!(matches!(err, Error::SoapParse { .. }), "{err:?}");
}

#[tokio::test]
async fn http_503_is_a_status_error_carrying_the_body() {
    let body = "Service Unavailable: the session limit is reached".to_string();
    let (url, _stub) = start_stub(vec![("RetrieveServiceContent", 503, body.clone())]).await;
    match client(&url).list_sessions().await {
        Err(Error::VcenterStatus {
            status, body: got, ..
        }) => {
            assert_eq!(status, 503);
            assert_eq!(got, body);
        }
        other => panic!("expected a status error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_long_error_body_is_cut_to_one_kibibyte() {
    let body = "x".repeat(5000);
    let (url, _stub) = start_stub(vec![("RetrieveServiceContent", 502, body)]).await;
    match client(&url).list_sessions().await {
        Err(Error::VcenterStatus { status, body, .. }) => {
            assert_eq!(status, 502);
            assert!(body.len() < 1100, "{} bytes", body.len());
        }
        other => panic!("expected a status error, got {other:?}"),
    }
}

#[tokio::test]
async fn http_500_without_a_fault_is_a_status_error() {
    let (url, _stub) = start_stub(vec![(
        "Login",
        500,
        "<html><body>Internal Server Error</body></html>".to_string(),
    )])
    .await;
    match client(&url).list_sessions().await {
        Err(Error::VcenterStatus { status, body, .. }) => {
            assert_eq!(status, 500);
            assert!(body.contains("Internal Server Error"), "{body}");
        }
        other => panic!("expected a status error, got {other:?}"),
    }
}

#[tokio::test]
async fn another_fault_is_reported_with_its_type_and_message() {
    let fault = fixture("not_authenticated_fault.xml")
        .replace("NotAuthenticated", "NoPermission")
        .replace(
            "The session is not authenticated.",
            "Permission to perform this operation was denied.",
        );
    let (url, _stub) = start_stub(vec![("RetrievePropertiesEx", 500, fault)]).await;
    match client(&url).list_sessions().await {
        Err(Error::SoapFault { fault, message, .. }) => {
            assert_eq!(fault, "NoPermission");
            assert_eq!(message, "Permission to perform this operation was denied.");
        }
        other => panic!("expected a SOAP fault, got {other:?}"),
    }
}

#[tokio::test]
async fn missing_set_not_authenticated_relogs_in_once_and_follows_the_token() {
    let (url, stub) = start_stub(vec![
        (
            "RetrievePropertiesEx",
            200,
            fixture("missing_set_not_authenticated.xml"),
        ),
        (
            "RetrievePropertiesEx",
            200,
            fixture("retrieve_sessions_token.xml"),
        ),
        (
            "ContinueRetrievePropertiesEx",
            200,
            fixture("continue_sessions.xml"),
        ),
    ])
    .await;
    let client = client(&url);
    let sessions = client.list_sessions().await.expect("listed after re-login");
    let users: Vec<&str> = sessions.iter().map(|s| s.user_name.as_str()).collect();
    assert_eq!(
        users,
        [
            r"VSPHERE.LOCAL\ci-user-1",
            "ci-user-2@vsphere.local",
            r"VSPHERE.LOCAL\vpxd-extension-1",
            r"VSPHERE.LOCAL\ci-user-3",
        ]
    );
    assert_eq!(client.logins(), 2);

    let seen = seen(&stub);
    let methods: Vec<&str> = seen.iter().map(|s| s.method).collect();
    assert_eq!(
        methods,
        [
            "RetrieveServiceContent",
            "Login",
            "RetrievePropertiesEx",
            "Login",
            "RetrievePropertiesEx",
            "ContinueRetrievePropertiesEx",
        ]
    );
    // The session cookie goes back quoted, the newest one after a re-login.
    assert_eq!(seen[2].cookie, "vmware_soap_session=\"stub-cookie-1\"");
    assert_eq!(seen[4].cookie, "vmware_soap_session=\"stub-cookie-2\"");
    assert_eq!(seen[5].cookie, "vmware_soap_session=\"stub-cookie-2\"");
    assert_eq!(seen[0].cookie, "");
    for s in &seen {
        assert_eq!(s.user_agent, REPORTER_AGENT);
        assert_eq!(s.content_type, "text/xml; charset=utf-8");
    }
    // After the service content, SOAPAction carries its apiVersion.
    assert!(seen[0].soap_action.starts_with("\"urn:vim25/"), "{seen:?}");
    assert_eq!(seen[1].soap_action, "\"urn:vim25/8.0.3.0\"");
    assert_eq!(seen[5].soap_action, "\"urn:vim25/8.0.3.0\"");
}

#[tokio::test]
async fn http_500_not_authenticated_relogs_in_once() {
    let (url, _stub) = start_stub(vec![
        (
            "RetrievePropertiesEx",
            500,
            fixture("not_authenticated_fault.xml"),
        ),
        (
            "RetrievePropertiesEx",
            200,
            fixture("retrieve_sessions_token.xml"),
        ),
        (
            "ContinueRetrievePropertiesEx",
            200,
            fixture("continue_sessions.xml"),
        ),
    ])
    .await;
    let client = client(&url);
    let sessions = client.list_sessions().await.expect("listed after re-login");
    assert_eq!(sessions.len(), 4);
    assert_eq!(client.logins(), 2);
}

#[tokio::test]
async fn a_second_not_authenticated_in_a_row_is_an_error() {
    let (url, stub) = start_stub(vec![
        (
            "RetrievePropertiesEx",
            200,
            fixture("missing_set_not_authenticated.xml"),
        ),
        (
            "RetrievePropertiesEx",
            200,
            fixture("missing_set_not_authenticated.xml"),
        ),
    ])
    .await;
    let client = client(&url);
    let err = client
        .list_sessions()
        .await
        .expect_err("still not authenticated");
    assert!(matches!(err, Error::NotAuthenticated { .. }), "{err:?}");
    assert_eq!(client.logins(), 2);
    assert_eq!(stub.lock().expect("not poisoned").logins, 2);
}

#[tokio::test]
async fn a_vcenter_that_never_answers_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("a bound address");
    // Accept connections and never answer.
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let url = Url::parse(&format!("http://{addr}")).expect("valid URL");
    let mut cfg = config(&url, REPORTER_USER, PASSWORD);
    cfg.timeout = Duration::from_millis(300);
    let client = VcenterClient::new(cfg).expect("the client builds");
    let started = Instant::now();
    match client.list_sessions().await {
        Err(Error::VcenterHttp { message, .. }) => {
            assert!(message.contains("no response within 300ms"), "{message}");
            assert!(!message.contains(PASSWORD));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    hold.abort();
}

#[tokio::test]
async fn an_unreachable_vcenter_is_an_http_error_without_the_password() {
    // Bind then drop, so nothing listens on the port.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let url = Url::parse(&format!("http://{addr}")).expect("valid URL");
    let client = client(&url);
    let err = client.list_sessions().await.expect_err("nothing listens");
    assert!(matches!(err, Error::VcenterHttp { .. }), "{err:?}");
    assert!(!format!("{err} {err:?} {client:?}").contains(PASSWORD));
}

/// One page of `sessionList` with a single session, as vCenter sends it.
fn one_session_page() -> String {
    concat!(
        r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" "#,
        r#"xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><RetrievePropertiesExResponse xmlns="urn:vim25">"#,
        r#"<returnval><objects><obj type="SessionManager">SessionManager</obj><propSet><name>sessionList</name>"#,
        r#"<val xsi:type="ArrayOfUserSession"><UserSession><key>k1</key><userName>VSPHERE.LOCAL\reporter</userName>"#,
        "<loginTime>2026-12-02T04:00:00Z</loginTime><lastActiveTime>2026-12-02T04:00:00Z</lastActiveTime>",
        "<ipAddress>127.0.0.1</ipAddress><userAgent>x</userAgent><callCount>1</callCount></UserSession></val>",
        "</propSet></objects></returnval></RetrievePropertiesExResponse></soapenv:Body></soapenv:Envelope>"
    )
    .to_string()
}

/// A vCenter refusing every login (a rotated password the reporter does not
/// have yet): one try per backoff step whatever the call rate, so vSphere
/// SSO's lockout (5 failures in 180 s) is never reached; the backoff here
/// is 1 s doubling to 4 s instead of 60 s to 15 min, so that the test is
/// short, and the same arithmetic bounds it: at most 3 tries in any 3
/// minimum waits. A new password in the file ends the wait at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vcenter_refusing_every_login_gets_one_try_per_backoff_step_until_the_password_changes() {
    let (url, stub) = serve_stub(StubState {
        accept_password: Some("rotated-pass".into()),
        ..StubState::default()
    })
    .await;
    stub.lock().unwrap().script.insert(
        "RetrievePropertiesEx",
        VecDeque::from([(200, one_session_page())]),
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, "old-pass\n").unwrap();
    let mut cfg = config(&url, REPORTER_USER, "old-pass");
    cfg.password_file = Some(file.clone());
    cfg.login_backoff = LoginBackoff {
        min: Duration::from_secs(1),
        max: Duration::from_secs(4),
    };
    let client = VcenterClient::new(cfg).unwrap();

    // A call every 100 ms for 8 s, far more often than any interval.
    let started = Instant::now();
    let (mut waits, mut calls) = (0, 0);
    while started.elapsed() < Duration::from_secs(8) {
        calls += 1;
        match client.list_sessions().await {
            Err(Error::LoginBackoff { .. }) => waits += 1,
            Err(Error::VcenterLogin { .. }) => {}
            other => panic!("expected a refused or deferred login, got {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tries: Vec<Instant> = seen(&stub)
        .into_iter()
        .filter(|s| s.method == "Login")
        .map(|s| s.at)
        .collect();
    // Tries at about 0, 1, 3 and 7 s.
    assert!((3..=4).contains(&tries.len()), "{} tries", tries.len());
    for (i, t) in tries.iter().enumerate() {
        let in_window = tries[i..]
            .iter()
            .filter(|u| u.duration_since(*t) <= Duration::from_secs(3))
            .count();
        assert!(in_window <= 3, "{in_window} tries within 3 s");
    }
    // Every other call waited without a request.
    assert_eq!(waits + tries.len(), calls, "{waits} waits, {calls} calls");
    assert!(waits > 10, "{waits} waits");
    assert_eq!(
        client.login_failures()[0],
        ("invalid_login", tries.len() as u64)
    );

    // The rotated password reaches the file: the next call logs in at once.
    std::fs::write(&file, "rotated-pass\n").unwrap();
    let t0 = Instant::now();
    let sessions = client
        .list_sessions()
        .await
        .expect("logged in with the new password");
    assert_eq!(sessions.len(), 1);
    // At once: not after the 3 s or so left of the 4 s backoff.
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(client.logins(), 1);
    let last = seen(&stub)
        .into_iter()
        .rfind(|s| s.method == "Login")
        .unwrap();
    assert_eq!(last.password.as_deref(), Some("rotated-pass"));
}

/// A proxy in front of vcsim whose first `Login` reaches vcsim (which makes
/// the session) but whose answer never comes back within the client's
/// timeout: a login lost on the way back.
async fn start_lossy_login_proxy(vcsim: &Vcsim) -> Url {
    #[derive(Clone)]
    struct Proxy {
        sdk: String,
        http: reqwest::Client,
        logins: Arc<Mutex<usize>>,
    }
    async fn forward(State(proxy): State<Proxy>, headers: HeaderMap, body: String) -> Response {
        let is_login = body.contains("<Login ");
        let mut request = proxy.http.post(&proxy.sdk).body(body);
        for name in ["cookie", "soapaction", "user-agent", "content-type"] {
            if let Some(value) = headers.get(name) {
                request = request.header(name, value.clone());
            }
        }
        let answer = request.send().await.expect("vcsim answers the proxy");
        let status = answer.status();
        let cookie = answer.headers().get("set-cookie").cloned();
        let text = answer.text().await.unwrap_or_default();
        let first_login = is_login && {
            let mut n = proxy.logins.lock().unwrap();
            *n += 1;
            *n == 1
        };
        if first_login {
            // vCenter made the session; its answer is lost.
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        let mut response = (
            StatusCode::from_u16(status.as_u16()).unwrap(),
            [("content-type", "text/xml; charset=utf-8")],
            text,
        )
            .into_response();
        if let Some(cookie) = cookie {
            response.headers_mut().insert("set-cookie", cookie);
        }
        response
    }
    let proxy = Proxy {
        sdk: vcsim.sdk_url(),
        http: reqwest::Client::new(),
        logins: Arc::new(Mutex::new(0)),
    };
    let app = axum::Router::new()
        .route("/sdk", axum::routing::post(forward))
        .with_state(proxy);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Url::parse(&format!("http://{addr}")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_whose_answer_is_lost_leaves_no_second_session_after_the_next_cycle() {
    let vcsim = Vcsim::start(&[]);
    let admin = vcsim.admin().await;
    let url = start_lossy_login_proxy(&vcsim).await;
    let mut cfg = config(&url, REPORTER_USER, PASSWORD);
    cfg.timeout = Duration::from_secs(2);
    cfg.vm_map = false;
    let client = VcenterClient::new(cfg).unwrap();

    // Cycle 1: the Login times out; vcsim holds a session we never heard of.
    let err = client
        .observe()
        .await
        .expect_err("the login answer is lost");
    assert!(matches!(err, Error::VcenterHttp { .. }), "{err:?}");
    assert_eq!(admin.sessions_with_agent(REPORTER_AGENT).await.len(), 1);

    // Cycle 2 logs in again and ends the lost login's session.
    client
        .observe()
        .await
        .expect("the second login is answered");
    let left = admin.sessions_with_agent(REPORTER_AGENT).await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(client.orphans_terminated(), 1);

    // A session of the same user and agent from another login (another
    // replica, say), made well after the lost one, is left alone.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let other = vcsim.login(REPORTER_USER, REPORTER_AGENT).await;
    client.observe().await.unwrap();
    let keys: Vec<String> = admin
        .sessions_with_agent(REPORTER_AGENT)
        .await
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert!(keys.contains(&other.key().to_string()), "{keys:?}");
    assert_eq!(client.orphans_terminated(), 1);
    client.logout().await.unwrap();
}

#[tokio::test]
async fn a_redirect_is_never_followed_so_the_password_stays_where_it_was_sent() {
    // Where a redirect would lead: it counts what reaches it.
    let hits = Arc::new(Mutex::new(Vec::<String>::new()));
    let catcher = {
        let hits = hits.clone();
        axum::Router::new().fallback(move |body: String| {
            let hits = hits.clone();
            async move {
                hits.lock().unwrap().push(body);
                StatusCode::OK
            }
        })
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let caught = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, catcher).await;
    });
    // A vCenter that answers the Login with a 307 to it.
    let redirector = axum::Router::new().route(
        "/sdk",
        axum::routing::post(move |body: String| async move {
            if body.contains("<RetrieveServiceContent") {
                (
                    StatusCode::OK,
                    HeaderMap::new(),
                    fixture("service_content.xml"),
                )
            } else {
                let mut headers = HeaderMap::new();
                headers.insert("location", format!("http://{caught}/sdk").parse().unwrap());
                (StatusCode::TEMPORARY_REDIRECT, headers, String::new())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, redirector).await;
    });
    let url = Url::parse(&format!("http://{addr}")).unwrap();

    let err = client(&url)
        .list_sessions()
        .await
        .expect_err("a redirected login fails");
    assert!(
        matches!(err, Error::VcenterStatus { status: 307, .. }),
        "{err:?}"
    );
    assert!(
        hits.lock().unwrap().is_empty(),
        "the Login was resent elsewhere"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vcenter_streaming_a_gigabyte_costs_only_the_configured_bound() {
    // 1 GiB of well-formed-looking XML, 64 KiB at a time, without end in
    // sight for the client.
    let app = axum::Router::new().route(
        "/sdk",
        axum::routing::post(|| async {
            let chunk = bytes::Bytes::from("<a>x</a>".repeat(8 * 1024));
            let stream = futures::stream::iter(
                (0..16 * 1024).map(move |_| Ok::<_, std::convert::Infallible>(chunk.clone())),
            );
            (
                StatusCode::OK,
                [("content-type", "text/xml")],
                axum::body::Body::from_stream(stream),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let url = Url::parse(&format!("http://{addr}")).unwrap();
    let mut cfg = config(&url, REPORTER_USER, PASSWORD);
    cfg.max_response_bytes = 1024 * 1024;
    let client = VcenterClient::new(cfg).unwrap();
    let started = Instant::now();
    let err = client.list_sessions().await.expect_err("too large");
    assert!(
        err.to_string().contains("larger than 1048576 bytes"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
