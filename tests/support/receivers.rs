//! Remote-write receivers for the tests: real Prometheus and VictoriaMetrics
//! processes (from Debian's packages) on loopback, with query helpers, and an
//! in-process stub receiver that records every request and answers from a
//! script.
//!
//! Peers are started on free ports with data in temp dirs, polled for
//! readiness (never a fixed sleep) and killed on drop. A missing binary fails
//! the test with a message saying how to install it.

#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use prost::Message as _;
use vsphere_ci_session_metrics::sink::remote_write::proto::{v1, v2};

/// A series as a receiver stored it: labels and (ms timestamp, value) samples.
pub type StoredSeries = (BTreeMap<String, String>, Vec<(i64, f64)>);
/// A series as the sink sent it: labels in wire order and its samples.
pub type SentSeries = (Vec<(String, String)>, Vec<(i64, f64)>);

/// A port that refuses every connection for as long as the guard lives:
/// bound but never listening, so no other process can take it meanwhile
/// (a port merely found free may be reused by the time it is dialled).
pub struct DeadPort {
    pub port: u16,
    _socket: tokio::net::TcpSocket,
}

/// A [`DeadPort`] on 127.0.0.1.
pub fn dead_port() -> DeadPort {
    let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
    socket
        .bind("127.0.0.1:0".parse().expect("a literal address"))
        .expect("binding 127.0.0.1:0");
    let port = socket.local_addr().expect("a bound address").port();
    DeadPort {
        port,
        _socket: socket,
    }
}

/// A port nothing listens on right now, for a process that binds it
/// itself (whose start is then retried on a conflict).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0 gives a free port")
        .port()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    Prometheus,
    VictoriaMetrics,
}

/// A real receiver process.
pub struct Peer {
    pub kind: PeerKind,
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Prometheus `--web.config.file` contents (TLS); readiness is then a
    /// TCP connect, since the plain-HTTP probe cannot speak TLS.
    web_config: Option<String>,
}

impl Peer {
    /// Prometheus 2.42 with its remote-write receiver enabled.
    pub fn prometheus() -> Peer {
        Peer::start_new(PeerKind::Prometheus)
    }

    /// VictoriaMetrics, with no query latency offset so fresh samples show.
    pub fn victoria_metrics() -> Peer {
        Peer::start_new(PeerKind::VictoriaMetrics)
    }

    /// Prometheus serving HTTPS as `web_config` (a `--web.config.file`) says.
    pub fn prometheus_with_web_config(web_config: &str) -> Peer {
        Peer::start_with(PeerKind::Prometheus, Some(web_config.to_string()))
    }

    fn start_new(kind: PeerKind) -> Peer {
        Peer::start_with(kind, None)
    }

    fn start_with(kind: PeerKind, web_config: Option<String>) -> Peer {
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        let mut peer = Peer {
            kind,
            port: free_port(),
            child: None,
            dir,
            web_config,
        };
        // A port found free may be taken before the peer binds it: then
        // the peer says so and exits, and another port is tried.
        for _ in 0..3 {
            match peer.try_start() {
                Ok(()) => return peer,
                Err(log) if log.contains("address already in use") => {
                    peer.port = free_port();
                }
                Err(log) => panic!("{:?} did not start; log:\n{log}", peer.kind),
            }
        }
        panic!("{:?}: every port tried was taken", peer.kind)
    }

    fn binary(&self) -> (&'static str, &'static str) {
        match self.kind {
            PeerKind::Prometheus => ("/usr/bin/prometheus", "prometheus"),
            PeerKind::VictoriaMetrics => ("/usr/bin/victoria-metrics", "victoria-metrics"),
        }
    }

    /// Start (or start again, same port and data) and wait until ready.
    pub fn start(&mut self) {
        if let Err(log) = self.try_start() {
            panic!("{:?} did not start; log:\n{log}", self.kind);
        }
    }

    /// Start and wait until ready; the peer's log when it exits first.
    fn try_start(&mut self) -> Result<(), String> {
        let (bin, package) = self.binary();
        if !std::path::Path::new(bin).exists() {
            panic!("{bin} not found: install Debian package {package} (scripts/test.sh does it)");
        }
        let data: PathBuf = self.dir.path().join("data");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("peer.log"))
            .expect("the peer log file can be created");
        let mut cmd = Command::new(bin);
        match self.kind {
            PeerKind::Prometheus => {
                let config = self.dir.path().join("prometheus.yml");
                std::fs::write(&config, "scrape_configs: []\n")
                    .expect("the Prometheus config can be written");
                cmd.arg("--web.enable-remote-write-receiver")
                    .arg(format!("--storage.tsdb.path={}", data.display()))
                    .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
                    .arg(format!("--config.file={}", config.display()));
                if let Some(web) = &self.web_config {
                    let path = self.dir.path().join("web.yml");
                    std::fs::write(&path, web).expect("the web config can be written");
                    cmd.arg(format!("--web.config.file={}", path.display()));
                }
            }
            PeerKind::VictoriaMetrics => {
                cmd.arg(format!("-httpListenAddr=127.0.0.1:{}", self.port))
                    .arg(format!("-storageDataPath={}", data.display()))
                    .arg("-search.latencyOffset=0s");
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                log.try_clone().expect("the peer log handle can be cloned"),
            ))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        self.child = Some(child);
        self.wait_ready()
    }

    /// Ready, or the log of a peer that exited during start-up.
    fn wait_ready(&mut self) -> Result<(), String> {
        let path = match self.kind {
            PeerKind::Prometheus => "/-/ready",
            PeerKind::VictoriaMetrics => "/health",
        };
        let url = format!("{}{path}", self.base_url());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!(
                    "exited during start-up ({status}):\n{}",
                    self.log()
                ));
            }
            if self.web_config.is_some() {
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    return Ok(());
                }
            } else if let Ok(resp) = blocking_get(&url)
                && resp == 200
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                panic!("{:?} not ready after 20 s; log:\n{}", self.kind, self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The peer's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("peer.log")).unwrap_or_default()
    }

    /// Kill the process (an outage); data stays for `start`.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stop and start again on the same port with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The remote-write endpoint.
    pub fn write_url(&self) -> String {
        match self.kind {
            PeerKind::Prometheus => format!("{}/api/v1/write", self.base_url()),
            PeerKind::VictoriaMetrics => format!("{}/api/v1/write", self.base_url()),
        }
    }

    /// VictoriaMetrics only: make freshly written series queryable now.
    pub async fn force_flush(&self) {
        if self.kind == PeerKind::VictoriaMetrics {
            let url = format!("{}/internal/force_flush", self.base_url());
            let resp = reqwest::get(&url).await.expect("force_flush answers");
            assert!(resp.status().is_success(), "force_flush: {}", resp.status());
        }
    }

    async fn api(&self, path: &str, params: &[(&str, String)]) -> serde_json::Value {
        self.force_flush().await;
        let url = format!("{}{path}", self.base_url());
        let resp = reqwest::Client::new()
            .get(&url)
            .query(params)
            .send()
            .await
            .unwrap_or_else(|e| panic!("query {path}: {e}"));
        let status = resp.status();
        let text = resp.text().await.expect("the query API answers");
        let body: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        assert!(
            status.is_success(),
            "query {path} {params:?}: {status} {body}"
        );
        assert_eq!(body["status"], "success", "{body}");
        body["data"].clone()
    }

    /// Instant query at `time` (Unix seconds): each series' labels and value.
    pub async fn query(&self, promql: &str, time: f64) -> Vec<(BTreeMap<String, String>, f64)> {
        let data = self
            .api(
                "/api/v1/query",
                &[
                    ("query", promql.to_string()),
                    ("time", format!("{time:.3}")),
                ],
            )
            .await;
        assert_eq!(data["resultType"], "vector", "{data}");
        data["result"]
            .as_array()
            .expect("a vector result is an array")
            .iter()
            .map(|s| (labels(&s["metric"]), value(&s["value"])))
            .collect()
    }

    /// Raw samples of a range selector (`selector[window]`) evaluated at
    /// `time`: every stored sample, not interpolated, with ms timestamps.
    pub async fn raw_samples(&self, selector: &str, window: &str, time: f64) -> Vec<StoredSeries> {
        let data = self
            .api(
                "/api/v1/query",
                &[
                    ("query", format!("{selector}[{window}]")),
                    ("time", format!("{time:.3}")),
                ],
            )
            .await;
        assert_eq!(data["resultType"], "matrix", "{data}");
        matrix(&data)
    }

    /// Range query: evaluated every `step` seconds from `start` to `end`.
    pub async fn query_range(
        &self,
        promql: &str,
        start: f64,
        end: f64,
        step: f64,
    ) -> Vec<StoredSeries> {
        let data = self
            .api(
                "/api/v1/query_range",
                &[
                    ("query", promql.to_string()),
                    ("start", format!("{start:.3}")),
                    ("end", format!("{end:.3}")),
                    ("step", format!("{step}")),
                ],
            )
            .await;
        matrix(&data)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn blocking_get(url: &str) -> std::io::Result<u16> {
    use std::io::{Read, Write};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = std::net::TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET /{path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = String::new();
    stream.read_to_string(&mut head)?;
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status line"))
}

fn labels(metric: &serde_json::Value) -> BTreeMap<String, String> {
    metric
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn value(pair: &serde_json::Value) -> f64 {
    pair[1]
        .as_str()
        .and_then(|s| match s {
            "NaN" => Some(f64::NAN),
            "+Inf" => Some(f64::INFINITY),
            "-Inf" => Some(f64::NEG_INFINITY),
            s => s.parse().ok(),
        })
        .expect("a sample value is a number in a string")
}

fn matrix(data: &serde_json::Value) -> Vec<StoredSeries> {
    data["result"]
        .as_array()
        .expect("a matrix result is an array")
        .iter()
        .map(|s| {
            let points = s["values"]
                .as_array()
                .expect("a matrix series has values")
                .iter()
                .map(|p| {
                    let t = p[0].as_f64().expect("a sample time is a number");
                    ((t * 1000.0).round() as i64, value(p))
                })
                .collect();
            (labels(&s["metric"]), points)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Stub receiver
// ---------------------------------------------------------------------------

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub delay: Duration,
    pub body: String,
    /// Add `X-Prometheus-Remote-Write-Samples-Written` with the number of
    /// samples in the (v2) request, as a 2.0 receiver does.
    pub confirm_samples: bool,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
            body: String::new(),
            confirm_samples: false,
        }
    }

    /// 204, confirming samples written (what a 2.0 receiver answers).
    pub fn accepted_v2() -> Reply {
        Reply {
            confirm_samples: true,
            ..Reply::status(204)
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    pub fn body(mut self, body: impl Into<String>) -> Reply {
        self.body = body.into();
        self
    }
}

/// One request as the stub received it.
#[derive(Debug, Clone)]
pub struct Captured {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    /// The body as sent (snappy block format).
    pub body: Vec<u8>,
    /// When it arrived.
    pub at: Instant,
}

impl Captured {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    /// The body decompressed with `snap::raw` (panics when it is not snappy
    /// block format).
    pub fn decompressed(&self) -> Vec<u8> {
        snap::raw::Decoder::new()
            .decompress_vec(&self.body)
            .expect("the body is snappy block format")
    }

    pub fn is_v2(&self) -> bool {
        self.header("content-type")
            .is_some_and(|ct| ct.contains("proto=io.prometheus.write.v2.Request"))
    }

    pub fn v1(&self) -> v1::WriteRequest {
        v1::WriteRequest::decode(self.decompressed().as_slice())
            .expect("the body is a prometheus.WriteRequest")
    }

    pub fn v2(&self) -> v2::Request {
        v2::Request::decode(self.decompressed().as_slice())
            .expect("the body is an io.prometheus.write.v2.Request")
    }

    /// Every series as (sorted-as-sent labels, samples), whatever the version.
    pub fn series(&self) -> Vec<SentSeries> {
        if self.is_v2() {
            let req = self.v2();
            req.timeseries
                .iter()
                .map(|ts| {
                    let labels = ts
                        .labels_refs
                        .chunks(2)
                        .map(|p| {
                            (
                                req.symbols[p[0] as usize].clone(),
                                req.symbols[p[1] as usize].clone(),
                            )
                        })
                        .collect();
                    let samples = ts.samples.iter().map(|s| (s.timestamp, s.value)).collect();
                    (labels, samples)
                })
                .collect()
        } else {
            self.v1()
                .timeseries
                .iter()
                .map(|ts| {
                    let labels = ts
                        .labels
                        .iter()
                        .map(|l| (l.name.clone(), l.value.clone()))
                        .collect();
                    let samples = ts.samples.iter().map(|s| (s.timestamp, s.value)).collect();
                    (labels, samples)
                })
                .collect()
        }
    }

    pub fn sample_count(&self) -> usize {
        self.series().iter().map(|(_, s)| s.len()).sum()
    }
}

#[derive(Default)]
struct StubState {
    script: VecDeque<Reply>,
    default: Option<Reply>,
    random_delay: Option<Duration>,
    requests: Vec<Captured>,
}

/// An in-process remote-write receiver on 127.0.0.1.
pub struct StubReceiver {
    pub url: String,
    state: Arc<Mutex<StubState>>,
    task: tokio::task::JoinHandle<()>,
}

impl StubReceiver {
    /// Start answering 204 to everything (until scripted otherwise).
    pub async fn start() -> StubReceiver {
        let state = Arc::new(Mutex::new(StubState::default()));
        let app = axum::Router::new()
            .route("/api/v1/write", axum::routing::post(handle))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the stub can bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("a bound socket has an address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        StubReceiver {
            url: format!("http://{addr}/api/v1/write"),
            state,
            task,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StubState> {
        self.state
            .lock()
            .expect("the stub state lock is never poisoned")
    }

    /// Answer the next requests with these replies, in order.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.lock().script.extend(replies);
    }

    /// The answer once the script is used up (default: plain 204).
    pub fn default_reply(&self, reply: Reply) {
        self.lock().default = Some(reply);
    }

    /// Delay every answer by a random time up to `max`.
    pub fn random_delays(&self, max: Duration) {
        self.lock().random_delay = Some(max);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Captured> {
        self.lock().requests.clone()
    }
}

impl Drop for StubReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    State(state): State<Arc<Mutex<StubState>>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let captured = Captured {
        method: method.to_string(),
        path: uri.path().to_string(),
        headers,
        body: body.to_vec(),
        at: Instant::now(),
    };
    let (reply, random) = {
        let mut st = state.lock().expect("the stub state lock is never poisoned");
        st.requests.push(captured.clone());
        let reply = st
            .script
            .pop_front()
            .or_else(|| st.default.clone())
            .unwrap_or_else(|| Reply::status(204));
        (reply, st.random_delay)
    };
    let mut delay = reply.delay;
    if let Some(max) = random {
        let nanos = rand::random_range(0..=max.as_nanos() as u64);
        delay += Duration::from_nanos(nanos);
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut response = (
        StatusCode::from_u16(reply.status).expect("scripted statuses are valid"),
        reply.body.clone(),
    )
        .into_response();
    for (name, value) in &reply.headers {
        response.headers_mut().insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).expect("valid header name"),
            value.parse().expect("valid header value"),
        );
    }
    if reply.confirm_samples {
        let n = std::panic::catch_unwind(|| captured.sample_count()).unwrap_or(0);
        response.headers_mut().insert(
            "X-Prometheus-Remote-Write-Samples-Written",
            n.to_string().parse().expect("a number is a header value"),
        );
    }
    response
}
