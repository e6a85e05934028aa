//! An in-process fake of the Kubernetes API (the parts the reporter reads)
//! and of Prow's deck, over real HTTP on 127.0.0.1, for the end-to-end tests
//! and the demo (`examples/fake_ci.rs`).
//!
//! No API server can be installed on the test machines, so this serves the
//! real JSON shapes: lists and objects built with k8s-openapi types (secrets
//! with base64 `data`), `metav1.Status` bodies for errors, ProwJobs as Prow
//! stores them (<https://github.com/kubernetes-sigs/prow/blob/main/pkg/apis/prowjobs/v1/types.go>),
//! equality label selectors, pod logs that honour `limitBytes`, bearer-token
//! auth. A kube client reaches it through a kubeconfig like any cluster
//! ([`FakeCi::write_kubeconfig`]).
//!
//! Routes (all `GET`):
//! - `/api/v1/namespaces?labelSelector=` ([`Route::NamespaceList`])
//! - `/api/v1/namespaces/{ns}/pods?labelSelector=` ([`Route::PodList`])
//! - `/api/v1/namespaces/{ns}/pods/{pod}/log?container=&limitBytes=` ([`Route::Log`])
//! - `/api/v1/namespaces/{ns}/secrets/{name}` ([`Route::Secret`], 404 Status when missing)
//! - `/apis/prow.k8s.io/v1/namespaces/{ns}/prowjobs?labelSelector=` ([`Route::ProwJobList`])
//! - `/prowjobs.js?omit=decoration_config` ([`Route::Deck`], no auth, like deck)
//!
//! Label selectors: comma-separated terms `k=v`, `k==v`, `k!=v`, `k`, `!k`;
//! anything else is a 400 Status, as the API server answers.
//!
//! Use: `let ci = FakeCi::start().await;` then set the scenario
//! (`ci.set_prowjobs(..)`, `ci.add_namespace(..)`, `ci.add_pod(.., log)`,
//! `ci.add_secret(..)`), faults (`ci.set_fault(Route::Log, Fault::status(500))`,
//! `Fault::raw(200, "text/html", "<html>")`, `Fault::delay(d)`), read the
//! counters (`ci.count(Route::Secret)`, `ci.log_limits_seen()`) and write a
//! kubeconfig (`ci.write_kubeconfig(&path)`). The server stops when the
//! `FakeCi` is dropped.

// Each test binary and the example use a different subset of the helpers.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Container, Namespace, Pod, PodSpec, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ListMeta, ObjectMeta, Status, StatusDetails};
use k8s_openapi::{List, Resource};
use serde_json::{Value, json};

/// The token the fake accepts unless told otherwise.
pub const DEFAULT_TOKEN: &str = "fake-ci-token";

/// A kind of request, for faults and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    NamespaceList,
    PodList,
    Log,
    Secret,
    ProwJobList,
    Deck,
}

const ROUTES: [Route; 6] = [
    Route::NamespaceList,
    Route::PodList,
    Route::Log,
    Route::Secret,
    Route::ProwJobList,
    Route::Deck,
];

fn route_index(route: Route) -> usize {
    ROUTES
        .iter()
        .position(|r| *r == route)
        .expect("ROUTES lists every Route")
}

/// What a route does instead of (or before) answering normally.
#[derive(Debug, Clone, Default)]
pub struct Fault {
    /// Wait this long before answering (a slow server).
    pub delay: Option<Duration>,
    /// Answer this instead of the normal response: status, content type, body.
    pub response: Option<(u16, String, String)>,
}

impl Fault {
    /// An error status with a `metav1.Status` body, as the API server sends
    /// (for the deck route the body is the same JSON, which is fine: deck
    /// errors are not parsed).
    pub fn status(code: u16) -> Fault {
        let body =
            serde_json::to_string(&status_body(code, &format!("injected fault {code}"), None))
                .expect("Status serializes");
        Fault {
            delay: None,
            response: Some((code, "application/json".into(), body)),
        }
    }

    /// Any status, content type and body (HTML page, garbage, cut JSON).
    pub fn raw(code: u16, content_type: &str, body: impl Into<String>) -> Fault {
        Fault {
            delay: None,
            response: Some((code, content_type.into(), body.into())),
        }
    }

    /// Answer normally, after `delay`.
    pub fn delay(delay: Duration) -> Fault {
        Fault {
            delay: Some(delay),
            response: None,
        }
    }

    pub fn with_delay(mut self, delay: Duration) -> Fault {
        self.delay = Some(delay);
        self
    }
}

/// The objects the fake serves.
#[derive(Debug, Clone, Default)]
pub struct Scenario {
    /// ProwJobs as JSON (see [`prowjob`]); served by deck and the API.
    pub prowjobs: Vec<Value>,
    pub namespaces: Vec<Namespace>,
    /// Pods with the log of their `test` container.
    pub pods: Vec<(Pod, String)>,
    pub secrets: Vec<Secret>,
}

struct Shared {
    token: String,
    scenario: Mutex<Scenario>,
    faults: Mutex<HashMap<Route, Fault>>,
    counters: [AtomicU64; 6],
    /// `limitBytes` of every log request, in order (None when absent).
    log_limits: Mutex<Vec<Option<i64>>>,
    /// Bytes of log sent in all.
    log_bytes_sent: AtomicU64,
    /// `resourceVersion` of every namespace and pod list, in order.
    list_versions: Mutex<Vec<(Route, Option<String>)>>,
    /// Bytes of deck answers as sent, and how many went gzipped.
    deck_wire_bytes: AtomicU64,
    deck_gzipped: AtomicU64,
}

/// A running fake; stops when dropped.
pub struct FakeCi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for FakeCi {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl FakeCi {
    /// Serve on a free port of 127.0.0.1 with [`DEFAULT_TOKEN`].
    pub async fn start() -> FakeCi {
        Self::start_with(
            "127.0.0.1:0".parse().expect("literal address parses"),
            DEFAULT_TOKEN,
            Scenario::default(),
        )
        .await
        .expect("binding 127.0.0.1:0 works")
    }

    /// Serve on `addr`, requiring `token`, with a first scenario.
    pub async fn start_with(
        addr: SocketAddr,
        token: &str,
        scenario: Scenario,
    ) -> std::io::Result<FakeCi> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            token: token.to_string(),
            scenario: Mutex::new(scenario),
            faults: Mutex::new(HashMap::new()),
            counters: Default::default(),
            log_limits: Mutex::new(Vec::new()),
            log_bytes_sent: AtomicU64::new(0),
            list_versions: Mutex::new(Vec::new()),
            deck_wire_bytes: AtomicU64::new(0),
            deck_gzipped: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/api/v1/namespaces", get(list_namespaces))
            .route("/api/v1/namespaces/{ns}/pods", get(list_pods))
            .route("/api/v1/namespaces/{ns}/pods/{pod}/log", get(pod_log))
            .route("/api/v1/namespaces/{ns}/secrets/{name}", get(get_secret))
            .route(
                "/apis/prow.k8s.io/v1/namespaces/{ns}/prowjobs",
                get(list_prowjobs),
            )
            .route("/prowjobs.js", get(deck))
            .with_state(shared.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(FakeCi {
            addr,
            shared,
            stop: Some(stop),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (no trailing slash): the API server and deck base.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn deck_url(&self) -> url::Url {
        url::Url::parse(&self.url()).expect("the fake's URL parses")
    }

    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// Write a kubeconfig reaching this fake (context, cluster and user all
    /// named `fake`, bearer token auth).
    pub fn write_kubeconfig(&self, path: &FsPath) -> std::io::Result<()> {
        self.write_kubeconfig_with_token(path, &self.shared.token)
    }

    /// Same, with another token (to test a 401).
    pub fn write_kubeconfig_with_token(&self, path: &FsPath, token: &str) -> std::io::Result<()> {
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             current-context: fake\nusers:\n- name: fake\n  user:\n    token: {token}\n",
            url = self.url()
        );
        std::fs::write(path, yaml)
    }

    /// Write a kubeconfig into `dir` and return its path.
    pub fn kubeconfig_in(&self, dir: &FsPath) -> PathBuf {
        let path = dir.join("kubeconfig");
        self.write_kubeconfig(&path)
            .expect("the temp dir is writable");
        path
    }

    fn scenario(&self) -> std::sync::MutexGuard<'_, Scenario> {
        self.shared
            .scenario
            .lock()
            .expect("fake scenario lock is never poisoned")
    }

    pub fn set_scenario(&self, scenario: Scenario) {
        *self.scenario() = scenario;
    }

    pub fn set_prowjobs(&self, jobs: Vec<Value>) {
        self.scenario().prowjobs = jobs;
    }

    pub fn add_namespace(&self, namespace: Namespace) {
        self.scenario().namespaces.push(namespace);
    }

    /// A pod and the log of its `test` container.
    pub fn add_pod(&self, pod: Pod, log: impl Into<String>) {
        self.scenario().pods.push((pod, log.into()));
    }

    /// Add or replace (same namespace and name) a secret.
    pub fn add_secret(&self, secret: Secret) {
        let mut scenario = self.scenario();
        scenario.secrets.retain(|s| {
            s.metadata.namespace != secret.metadata.namespace
                || s.metadata.name != secret.metadata.name
        });
        scenario.secrets.push(secret);
    }

    pub fn remove_secret(&self, namespace: &str, name: &str) {
        self.scenario().secrets.retain(|s| {
            s.metadata.namespace.as_deref() != Some(namespace)
                || s.metadata.name.as_deref() != Some(name)
        });
    }

    pub fn set_fault(&self, route: Route, fault: Fault) {
        self.shared
            .faults
            .lock()
            .expect("fault lock is never poisoned")
            .insert(route, fault);
    }

    pub fn clear_fault(&self, route: Route) {
        self.shared
            .faults
            .lock()
            .expect("fault lock is never poisoned")
            .remove(&route);
    }

    /// Requests received on `route` (including refused ones).
    pub fn count(&self, route: Route) -> u64 {
        self.shared.counters[route_index(route)].load(Ordering::SeqCst)
    }

    /// Requests on the three build-cluster lookup routes used per job:
    /// namespace lists, pod lists, log reads and secret reads.
    pub fn lookup_count(&self) -> u64 {
        [
            Route::NamespaceList,
            Route::PodList,
            Route::Log,
            Route::Secret,
        ]
        .iter()
        .map(|r| self.count(*r))
        .sum()
    }

    /// `limitBytes` of every log request so far.
    pub fn log_limits_seen(&self) -> Vec<Option<i64>> {
        self.shared
            .log_limits
            .lock()
            .expect("log lock is never poisoned")
            .clone()
    }

    /// Bytes of deck answers as sent, and how many of them were gzipped.
    pub fn deck_wire(&self) -> (u64, u64) {
        (
            self.shared.deck_wire_bytes.load(Ordering::Relaxed),
            self.shared.deck_gzipped.load(Ordering::Relaxed),
        )
    }

    /// The `resourceVersion` parameter of every `route` list, in order.
    pub fn list_versions(&self, route: Route) -> Vec<Option<String>> {
        self.shared
            .list_versions
            .lock()
            .expect("fake list lock is never poisoned")
            .iter()
            .filter(|(r, _)| *r == route)
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn log_bytes_sent(&self) -> u64 {
        self.shared.log_bytes_sent.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------- handlers

type Params = Query<HashMap<String, String>>;

fn json_response(status: u16, body: &impl serde::Serialize) -> Response {
    let body = serde_json::to_vec(body).expect("fake responses serialize");
    (
        StatusCode::from_u16(status).expect("fake statuses are valid"),
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// A `metav1.Status` failure body.
pub fn status_body(code: u16, message: &str, details: Option<StatusDetails>) -> Status {
    let reason = match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        _ => "Unknown",
    };
    Status {
        code: Some(code as i32),
        message: Some(message.to_string()),
        reason: Some(reason.to_string()),
        status: Some("Failure".to_string()),
        details,
        metadata: ListMeta::default(),
    }
}

fn status_response(code: u16, message: &str, details: Option<StatusDetails>) -> Response {
    json_response(code, &StatusWithKind(status_body(code, message, details)))
}

/// Status serialized with its `kind`/`apiVersion`, as the API server sends.
struct StatusWithKind(Status);

impl serde::Serialize for StatusWithKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut value = serde_json::to_value(&self.0).map_err(serde::ser::Error::custom)?;
        if let Some(map) = value.as_object_mut() {
            map.insert("kind".into(), json!(Status::KIND));
            map.insert("apiVersion".into(), json!(Status::API_VERSION));
        }
        value.serialize(serializer)
    }
}

/// Count, delay, fault and (for API routes) auth. `Some` ends the request.
async fn preamble(shared: &Shared, route: Route, headers: &HeaderMap) -> Option<Response> {
    shared.counters[route_index(route)].fetch_add(1, Ordering::SeqCst);
    let fault = shared
        .faults
        .lock()
        .expect("fault lock is never poisoned")
        .get(&route)
        .cloned();
    if let Some(fault) = fault {
        if let Some(delay) = fault.delay {
            tokio::time::sleep(delay).await;
        }
        if let Some((code, content_type, body)) = fault.response {
            return Some(
                (
                    StatusCode::from_u16(code).expect("fault statuses are valid"),
                    [(header::CONTENT_TYPE, content_type)],
                    body,
                )
                    .into_response(),
            );
        }
    }
    if route != Route::Deck {
        let expected = format!("Bearer {}", shared.token);
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if given != Some(expected.as_str()) {
            return Some(status_response(401, "Unauthorized", None));
        }
    }
    None
}

/// One term of an equality-based label selector.
enum Term {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

fn parse_selector(selector: &str) -> Result<Vec<Term>, String> {
    let mut terms = Vec::new();
    for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let valid = |s: &str| !s.is_empty() && !s.contains([' ', '(', ')', '=', '!']);
        if let Some((k, v)) = term.split_once("!=") {
            terms.push(Term::NotEquals(k.trim().into(), v.trim().into()));
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            terms.push(Term::Equals(k.trim().into(), v.trim().into()));
        } else if let Some(k) = term.strip_prefix('!') {
            if !valid(k.trim()) {
                return Err(format!("invalid selector term {term:?}"));
            }
            terms.push(Term::NotExists(k.trim().into()));
        } else if valid(term) {
            terms.push(Term::Exists(term.into()));
        } else {
            return Err(format!("unable to parse requirement: {term:?}"));
        }
    }
    Ok(terms)
}

fn selector_matches(terms: &[Term], labels: Option<&BTreeMap<String, String>>) -> bool {
    let get = |k: &str| labels.and_then(|l| l.get(k));
    terms.iter().all(|t| match t {
        Term::Equals(k, v) => get(k) == Some(v),
        Term::NotEquals(k, v) => get(k) != Some(v),
        Term::Exists(k) => get(k).is_some(),
        Term::NotExists(k) => get(k).is_none(),
    })
}

fn selector_from(params: &HashMap<String, String>) -> Result<Vec<Term>, Box<Response>> {
    parse_selector(
        params
            .get("labelSelector")
            .map(String::as_str)
            .unwrap_or(""),
    )
    .map_err(|e| Box::new(status_response(400, &e, None)))
}

fn list_json<T: serde::Serialize + Resource + k8s_openapi::ListableResource>(
    items: Vec<T>,
) -> Response {
    let list = List::<T> {
        items,
        metadata: ListMeta {
            resource_version: Some("1000".into()),
            ..ListMeta::default()
        },
    };
    json_response(200, &list)
}

async fn list_namespaces(
    State(shared): State<Arc<Shared>>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = preamble(&shared, Route::NamespaceList, &headers).await {
        return r;
    }
    shared
        .list_versions
        .lock()
        .expect("fake list lock is never poisoned")
        .push((Route::NamespaceList, params.get("resourceVersion").cloned()));
    let terms = match selector_from(&params) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let scenario = shared
        .scenario
        .lock()
        .expect("fake scenario lock is never poisoned");
    let items: Vec<Namespace> = scenario
        .namespaces
        .iter()
        .filter(|n| selector_matches(&terms, n.metadata.labels.as_ref()))
        .cloned()
        .collect();
    list_json(items)
}

async fn list_pods(
    State(shared): State<Arc<Shared>>,
    Path(ns): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = preamble(&shared, Route::PodList, &headers).await {
        return r;
    }
    shared
        .list_versions
        .lock()
        .expect("fake list lock is never poisoned")
        .push((Route::PodList, params.get("resourceVersion").cloned()));
    let terms = match selector_from(&params) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let scenario = shared
        .scenario
        .lock()
        .expect("fake scenario lock is never poisoned");
    let items: Vec<Pod> = scenario
        .pods
        .iter()
        .map(|(p, _)| p)
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
        .filter(|p| selector_matches(&terms, p.metadata.labels.as_ref()))
        .cloned()
        .collect();
    list_json(items)
}

async fn pod_log(
    State(shared): State<Arc<Shared>>,
    Path((ns, pod)): Path<(String, String)>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = preamble(&shared, Route::Log, &headers).await {
        return r;
    }
    let limit = params.get("limitBytes").and_then(|v| v.parse::<i64>().ok());
    shared
        .log_limits
        .lock()
        .expect("log lock is never poisoned")
        .push(limit);
    let log = {
        let scenario = shared
            .scenario
            .lock()
            .expect("fake scenario lock is never poisoned");
        scenario
            .pods
            .iter()
            .find(|(p, _)| {
                p.metadata.namespace.as_deref() == Some(ns.as_str())
                    && p.metadata.name.as_deref() == Some(pod.as_str())
            })
            .map(|(p, log)| (p.clone(), log.clone()))
    };
    let Some((pod_obj, log)) = log else {
        return status_response(404, &format!("pods \"{pod}\" not found"), None);
    };
    if let Some(container) = params.get("container") {
        let has = pod_obj
            .spec
            .as_ref()
            .is_some_and(|s| s.containers.iter().any(|c| &c.name == container));
        if !has {
            return status_response(
                400,
                &format!("container {container} is not valid for pod {pod}"),
                None,
            );
        }
    }
    let bytes = log.into_bytes();
    let end = match limit {
        Some(n) if n >= 0 => (n as usize).min(bytes.len()),
        _ => bytes.len(),
    };
    shared
        .log_bytes_sent
        .fetch_add(end as u64, Ordering::SeqCst);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain")],
        bytes[..end].to_vec(),
    )
        .into_response()
}

async fn get_secret(
    State(shared): State<Arc<Shared>>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = preamble(&shared, Route::Secret, &headers).await {
        return r;
    }
    let scenario = shared
        .scenario
        .lock()
        .expect("fake scenario lock is never poisoned");
    match scenario.secrets.iter().find(|s| {
        s.metadata.namespace.as_deref() == Some(ns.as_str())
            && s.metadata.name.as_deref() == Some(name.as_str())
    }) {
        Some(secret) => json_response(200, secret),
        None => status_response(
            404,
            &format!("secrets \"{name}\" not found"),
            Some(StatusDetails {
                name: Some(name.clone()),
                kind: Some("secrets".into()),
                ..StatusDetails::default()
            }),
        ),
    }
}

async fn list_prowjobs(
    State(shared): State<Arc<Shared>>,
    Path(ns): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = preamble(&shared, Route::ProwJobList, &headers).await {
        return r;
    }
    let terms = match selector_from(&params) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let scenario = shared
        .scenario
        .lock()
        .expect("fake scenario lock is never poisoned");
    let items: Vec<&Value> = scenario
        .prowjobs
        .iter()
        .filter(|j| j["metadata"]["namespace"].as_str().unwrap_or("ci") == ns)
        .filter(|j| {
            let labels: Option<BTreeMap<String, String>> =
                serde_json::from_value(j["metadata"]["labels"].clone()).ok();
            selector_matches(&terms, labels.as_ref())
        })
        .collect();
    json_response(
        200,
        &json!({
            "apiVersion": "prow.k8s.io/v1",
            "kind": "ProwJobList",
            "metadata": {"resourceVersion": "1000", "continue": ""},
            "items": items,
        }),
    )
}

async fn deck(
    State(shared): State<Arc<Shared>>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = preamble(&shared, Route::Deck, &headers).await {
        return r;
    }
    let omit_decoration = params
        .get("omit")
        .is_some_and(|o| o.split(',').any(|f| f == "decoration_config"));
    let scenario = shared
        .scenario
        .lock()
        .expect("fake scenario lock is never poisoned");
    let items: Vec<Value> = scenario
        .prowjobs
        .iter()
        .map(|j| {
            let mut j = j.clone();
            if omit_decoration && let Some(spec) = j["spec"].as_object_mut() {
                spec.remove("decoration_config");
            }
            j
        })
        .collect();
    let body = serde_json::to_vec(&json!({ "items": items })).expect("fake responses serialize");
    // Like deck behind its proxy: gzip when the client accepts it.
    let gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    if !gzip {
        shared
            .deck_wire_bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        return json_response(200, &json!({ "items": items }));
    }
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut encoder, &body).expect("compressing in memory");
    let compressed = encoder.finish().expect("compressing in memory");
    shared
        .deck_wire_bytes
        .fetch_add(compressed.len() as u64, Ordering::Relaxed);
    shared.deck_gzipped.fetch_add(1, Ordering::Relaxed);
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CONTENT_ENCODING, "gzip"),
        ],
        compressed,
    )
        .into_response()
}

// ---------------------------------------------------------------- builders

/// A ProwJob as Prow stores it, in state `pending`. `labels` are added to the
/// usual Prow labels; `args` are the first container's args (`None`: no
/// `pod_spec` at all).
pub fn prowjob(
    name: &str,
    build_id: &str,
    job: &str,
    cluster: &str,
    labels: &[(&str, &str)],
    args: Option<&[&str]>,
) -> Value {
    let mut all_labels = serde_json::Map::new();
    all_labels.insert("created-by-prow".into(), json!("true"));
    all_labels.insert("prow.k8s.io/build-id".into(), json!(build_id));
    all_labels.insert("prow.k8s.io/id".into(), json!(name));
    // Prow truncates the job label to 63 characters; the annotation keeps it whole.
    all_labels.insert(
        "prow.k8s.io/job".into(),
        json!(job.chars().take(63).collect::<String>()),
    );
    all_labels.insert("prow.k8s.io/type".into(), json!("presubmit"));
    for (k, v) in labels {
        all_labels.insert((*k).into(), json!(v));
    }
    let mut spec = json!({
        "type": "presubmit",
        "agent": "kubernetes",
        "cluster": cluster,
        "namespace": "ci",
        "job": job,
        "refs": {
            "org": "openshift",
            "repo": "installer",
            "base_ref": "main",
            "base_sha": "0123456789abcdef0123456789abcdef01234567",
            "pulls": [{
                "number": 9001,
                "author": "someone",
                "sha": "89abcdef0123456789abcdef0123456789abcdef",
                "link": "https://github.com/openshift/installer/pull/9001"
            }]
        },
        "report": true,
        "context": "ci/prow/e2e-vsphere",
        "rerun_command": "/test e2e-vsphere",
        "decoration_config": {
            "timeout": "4h0m0s",
            "grace_period": "1h0m0s",
            "utility_images": {"clonerefs": "x", "initupload": "x", "entrypoint": "x", "sidecar": "x"},
            "gcs_configuration": {"bucket": "test-platform-results", "path_strategy": "single"},
            "gcs_credentials_secret": "gce-sa-credentials-gcs-publisher"
        },
    });
    if let Some(args) = args {
        spec["pod_spec"] = json!({
            "containers": [{
                "name": "",
                "image": "ci-operator:latest",
                "command": ["ci-operator"],
                "args": args,
                "resources": {"requests": {"cpu": "10m"}}
            }],
            "serviceAccountName": "ci-operator"
        });
    }
    json!({
        "apiVersion": "prow.k8s.io/v1",
        "kind": "ProwJob",
        "metadata": {
            "name": name,
            "namespace": "ci",
            "creationTimestamp": "2026-11-25T09:00:00Z",
            "labels": all_labels,
            "annotations": {"prow.k8s.io/job": job, "prow.k8s.io/context": "ci/prow/e2e-vsphere"}
        },
        "spec": spec,
        "status": {
            "startTime": "2026-11-25T09:00:01Z",
            "pendingTime": "2026-11-25T09:00:05Z",
            "state": "pending",
            "pod_name": name,
            "build_id": build_id,
            "url": format!("https://prow.ci.openshift.org/view/gs/test-platform-results/pr-logs/pull/openshift_installer/9001/{job}/{build_id}")
        }
    })
}

/// ci-operator args with `--target=<target>`.
pub fn ci_operator_args(target: &str) -> Vec<String> {
    vec![
        "--gcs-upload-secret=/secrets/gcs/service-account.json".into(),
        "--image-import-pull-secret=/etc/pull-secret/.dockerconfigjson".into(),
        "--report-credentials-file=/etc/report/credentials".into(),
        format!("--target={target}"),
    ]
}

/// A pending vSphere job the usual way: cloud label `vsphere`, profile
/// `vsphere-2`, cluster `vsphere02`, `--target=<target>`.
pub fn vsphere_job(name: &str, build_id: &str, target: &str) -> Value {
    let args = ci_operator_args(target);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    prowjob(
        name,
        build_id,
        &format!("pull-ci-openshift-installer-main-{target}"),
        "vsphere02",
        &[
            ("ci-operator.openshift.io/cloud", "vsphere"),
            (
                "ci-operator.openshift.io/cloud-cluster-profile",
                "vsphere-2",
            ),
        ],
        Some(&args),
    )
}

/// The same job in another state (`success`, `failure`, `triggered`, ...).
pub fn with_state(mut job: Value, state: &str) -> Value {
    job["status"]["state"] = json!(state);
    job
}

/// The namespace ci-operator creates for a job.
pub fn ci_namespace(name: &str, job_id: &str) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([
                ("ci.openshift.io/jobid".to_string(), job_id.to_string()),
                (
                    "ci.openshift.io/ephemeral-namespace".to_string(),
                    "true".to_string(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

/// The job's pod in namespace `ci`, labelled with its build id, with
/// ci-operator in container `test`.
pub fn ci_operator_pod(name: &str, build_id: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ci".into()),
            labels: Some(BTreeMap::from([
                ("prow.k8s.io/build-id".to_string(), build_id.to_string()),
                ("created-by-prow".to_string(), "true".to_string()),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![
                Container {
                    name: "test".into(),
                    image: Some("ci-operator:latest".into()),
                    ..Container::default()
                },
                Container {
                    name: "sidecar".into(),
                    ..Container::default()
                },
            ],
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

/// A ci-operator log whose first lines name `namespace`, followed by
/// `padding` bytes of later output.
pub fn ci_operator_log(namespace: &str, padding: usize) -> String {
    let mut log = format!(
        "INFO[2026-11-25T09:00:10Z] ci-operator version v20261125-abcdef\n\
         INFO[2026-11-25T09:00:10Z] Loading configuration from https://config.ci.openshift.org for openshift/installer@main\n\
         INFO[2026-11-25T09:00:12Z] Using namespace https://console-openshift-console.apps.build02.vmc.ci.openshift.org/k8s/cluster/projects/{namespace}\n\
         INFO[2026-11-25T09:00:12Z] Running [input:root], [images], e2e-vsphere\n"
    );
    let line = "INFO[2026-11-25T09:10:00Z] Running step e2e-vsphere-ipi-install-install.\n";
    while log.len() < padding {
        log.push_str(line);
    }
    log
}

/// A secret with the given files (stored base64 in `data`, as the API does).
pub fn secret(namespace: &str, name: &str, files: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        },
        data: Some(
            files
                .iter()
                .map(|(k, v)| ((*k).to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

/// The JSON body of a Secret whose `data` values are given as stored, i.e.
/// already base64, or deliberately not (for [`Fault::raw`] on
/// [`Route::Secret`]: a typed [`Secret`] can only hold valid base64).
pub fn secret_body_raw(namespace: &str, name: &str, data: &[(&str, &str)]) -> String {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| ((*k).to_string(), Value::String((*v).to_string())))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"},
        "type": "Opaque",
        "data": data,
    })
    .to_string()
}

/// openshift-install's `metadata.json` for a single-vCenter vSphere cluster
/// (with a password, as the real file has).
pub fn metadata_json(vcenter: &str, username: &str) -> String {
    json!({
        "clusterName": "ci-op-abc-12345",
        "clusterID": "8e4c6b1f-0000-4000-8000-000000000001",
        "infraID": "ci-op-abc-12345-x7k2p",
        "vsphere": {
            "vCenter": vcenter,
            "username": username,
            "password": "s3cret-metadata-password",
            "terraform_platform": "vsphere",
            "VCenters": [{"vCenter": vcenter, "username": username, "password": "s3cret-metadata-password"}]
        }
    })
    .to_string()
}

/// `metadata.json` of a multi-vCenter install: only the `VCenters` list.
pub fn metadata_json_multi(vcenters: &[(&str, &str)]) -> String {
    let list: Vec<Value> = vcenters
        .iter()
        .map(|(vc, user)| json!({"vCenter": vc, "username": user, "password": "s3cret"}))
        .collect();
    json!({"clusterName": "c", "infraID": "c-1", "vsphere": {"terraform_platform": "vsphere", "VCenters": list}}).to_string()
}

/// `platform.json` with one entry per (server, user).
pub fn platform_json(vcenters: &[(&str, &str)]) -> String {
    let list: Vec<Value> = vcenters
        .iter()
        .map(|(server, user)| {
            json!({"server": server, "user": user, "password": "s3cret-platform", "datacenters": ["dc1"]})
        })
        .collect();
    json!({"vcenters": list, "failureDomains": []}).to_string()
}

/// `govc.sh` as the CI lease step writes it (quoted values).
pub fn govc_sh(url: &str, username: &str) -> String {
    format!(
        "#!/bin/bash\nexport GOVC_URL=\"{url}\"\nexport GOVC_USERNAME=\"{username}\"\nexport GOVC_PASSWORD=\"s3cret-govc\"\nexport GOVC_INSECURE=1\nexport GOVC_DATACENTER=dc1\n"
    )
}

/// A secret holding `metadata.json` for one vCenter user.
pub fn secret_with_metadata_json(
    namespace: &str,
    name: &str,
    vcenter: &str,
    username: &str,
) -> Secret {
    secret(
        namespace,
        name,
        &[("metadata.json", &metadata_json(vcenter, username))],
    )
}

// ------------------------------------------------------- compact scenarios

/// The compact scenario file read by `examples/fake_ci.rs`:
///
/// ```json
/// {
///   "token": "demo-token",
///   "jobs": [{
///     "name": "job-a", "build_id": "1001", "job": "pull-ci-...-e2e-vsphere",
///     "state": "pending", "cluster": "vsphere02", "cloud": "vsphere",
///     "cluster_profile": "vsphere-2", "target": "e2e-vsphere",
///     "pull": "https://github.com/openshift/installer/pull/1",
///     "ci_namespace": "ci-op-aaaa1111", "namespace_via": "label",
///     "secret": {"metadata.json": {"vsphere": {"vCenter": "127.0.0.1", "username": "ci-user-1@vsphere.local"}}}
///   }]
/// }
/// ```
///
/// Only `name` is required. Defaults: `state` pending, `cluster` vsphere02,
/// `cloud` vsphere (`null` for no cloud label), `build_id` = name, `job`
/// derived from the target, no `target` -> no `--target` arg. With
/// `ci_namespace`, `namespace_via: "label"` (default) creates the labelled
/// namespace, `"log"` creates instead the pod `ci/<name>` whose `test` log
/// names it. `secret` (files by key; string values as is, JSON values
/// serialized) becomes the secret `<target>` in the ci namespace.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompactScenario {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub jobs: Vec<CompactJob>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompactJob {
    pub name: String,
    #[serde(default)]
    pub build_id: Option<String>,
    #[serde(default)]
    pub job: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default = "default_cloud")]
    pub cloud: Option<String>,
    #[serde(default)]
    pub cluster_profile: Option<String>,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub pull: Option<String>,
    #[serde(default)]
    pub ci_namespace: Option<String>,
    #[serde(default)]
    pub namespace_via: Option<String>,
    #[serde(default)]
    pub secret: BTreeMap<String, Value>,
}

fn default_cloud() -> Option<String> {
    Some("vsphere".into())
}

impl CompactScenario {
    pub fn parse(text: &str) -> Result<CompactScenario, String> {
        let scenario: CompactScenario = serde_json::from_str(text).map_err(|e| e.to_string())?;
        for job in &scenario.jobs {
            match job.namespace_via.as_deref() {
                None | Some("label") | Some("log") => {}
                Some(other) => {
                    return Err(format!(
                        "job {}: namespace_via {other:?} is not label or log",
                        job.name
                    ));
                }
            }
        }
        Ok(scenario)
    }

    /// The objects the fake serves for this scenario.
    pub fn into_scenario(self) -> Scenario {
        let mut scenario = Scenario::default();
        for job in self.jobs {
            let build_id = job.build_id.clone().unwrap_or_else(|| job.name.clone());
            let target = job.target.clone();
            let job_name = job.job.clone().unwrap_or_else(|| {
                format!(
                    "pull-ci-openshift-installer-main-{}",
                    target.as_deref().unwrap_or("unit")
                )
            });
            let mut labels: Vec<(&str, &str)> = Vec::new();
            if let Some(cloud) = job.cloud.as_deref() {
                labels.push(("ci-operator.openshift.io/cloud", cloud));
            }
            if let Some(profile) = job.cluster_profile.as_deref() {
                labels.push(("ci-operator.openshift.io/cloud-cluster-profile", profile));
            }
            let args = target.as_deref().map(ci_operator_args);
            let args_ref: Option<Vec<&str>> = args
                .as_ref()
                .map(|a| a.iter().map(String::as_str).collect());
            let mut value = prowjob(
                &job.name,
                &build_id,
                &job_name,
                job.cluster.as_deref().unwrap_or("vsphere02"),
                &labels,
                args_ref.as_deref(),
            );
            value["status"]["state"] = json!(job.state.as_deref().unwrap_or("pending"));
            match &job.pull {
                Some(link) => value["spec"]["refs"]["pulls"][0]["link"] = json!(link),
                None => value["spec"]["refs"]["pulls"] = json!([]),
            }
            scenario.prowjobs.push(value);
            if let Some(ns) = &job.ci_namespace {
                if job.namespace_via.as_deref() == Some("log") {
                    scenario.pods.push((
                        ci_operator_pod(&job.name, &build_id),
                        ci_operator_log(ns, 4096),
                    ));
                } else {
                    scenario.namespaces.push(ci_namespace(ns, &job.name));
                }
                if let (Some(target), false) = (&target, job.secret.is_empty()) {
                    let files: Vec<(String, String)> = job
                        .secret
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                v.as_str()
                                    .map(str::to_string)
                                    .unwrap_or_else(|| v.to_string()),
                            )
                        })
                        .collect();
                    let files_ref: Vec<(&str, &str)> = files
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    scenario.secrets.push(secret(ns, target, &files_ref));
                }
            }
        }
        scenario
    }
}
