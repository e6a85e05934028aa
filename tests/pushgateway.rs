//! The Pushgateway sink against a real Pushgateway (what a user sees through
//! its API) and, for what a real gateway cannot be made to do (fail with a
//! 5xx, hang, count requests), against a recording stub on 127.0.0.1.

#[path = "support/pushgateway.rs"]
mod pushgateway_peer;
#[path = "support/receivers.rs"]
mod receivers;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use base64::Engine as _;
use pushgateway_peer::{Pushgateway, Series, labels};
use url::Url;
use vsphere_ci_session_metrics::error::Error;
use vsphere_ci_session_metrics::metrics::{CORRELATED, MetricFamily, Snapshot, VCENTER_UP};
use vsphere_ci_session_metrics::secret::Secret;
use vsphere_ci_session_metrics::sink::Sink;
use vsphere_ci_session_metrics::sink::pushgateway::{
    BasicAuth, DEFAULT_JOB, LAST_SUCCESS_TIMESTAMP, PUSH_FAILURES_TOTAL, PUSHES_TOTAL,
    PushgatewayConfig, PushgatewaySink, SAMPLES_DROPPED_TOTAL, SAMPLES_FAILED_TOTAL,
    SAMPLES_RETRIED_TOTAL, SAMPLES_SENT_TOTAL,
};

/// A running CI job holding sessions of one user: (job, build id, sessions).
type JobSessions<'a> = (&'a str, &'a str, f64);

fn correlated_labels(job: &str, build_id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("username", "ci-user-1".to_string()),
        ("user_agent", "terraform/1.5".to_string()),
        ("ci_job", job.to_string()),
        ("build_id", build_id.to_string()),
        (
            "pull_request",
            "https://github.com/openshift/installer/pull/1".to_string(),
        ),
        ("vcenter", "vc1.example.com".to_string()),
    ]
}

fn snapshot(jobs: &[JobSessions]) -> Arc<Snapshot> {
    let mut correlated = MetricFamily::gauge(CORRELATED, "Sessions per CI job.");
    for (job, build_id, sessions) in jobs {
        correlated.push(correlated_labels(job, build_id), *sessions);
    }
    Arc::new(Snapshot {
        timestamp_ms: 1_764_000_000_000,
        families: vec![
            correlated,
            MetricFamily::gauge(VCENTER_UP, "vCenter listed.")
                .with([("vcenter", "vc1.example.com")], 1.0),
        ],
    })
}

/// What the gateway shows for a sample pushed to group `key`: the sample's
/// labels plus the grouping key, plus `instance=""` which the gateway adds
/// when the key has no `instance`.
fn as_stored(sample: &[(&str, String)], key: &[(&str, &str)], value: f64) -> Series {
    let mut stored: BTreeMap<String, String> = sample
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    stored.extend(labels(key));
    stored.entry("instance".to_string()).or_default();
    Series {
        labels: stored,
        value,
    }
}

fn config(url: &Url) -> PushgatewayConfig {
    PushgatewayConfig::new(url.clone())
}

/// The sink's self-metric of that name, as a number.
fn self_metric(sink: &PushgatewaySink, name: &str) -> f64 {
    let families = sink.self_metrics();
    let family = families
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("self-metric {name} is missing"));
    assert_eq!(family.samples.len(), 1, "{name}");
    family.samples[0].value
}

fn pushgateway_error(result: Result<(), Error>) -> (Option<u16>, String) {
    match result {
        Err(Error::Pushgateway {
            status, message, ..
        }) => (status, message),
        other => panic!("expected a Pushgateway error, got {other:?}"),
    }
}

#[tokio::test]
async fn pushed_snapshot_is_read_back_with_exact_values_and_labels() {
    let gateway = Pushgateway::start().await;
    let sink = PushgatewaySink::new(config(&gateway.url)).unwrap();

    sink.publish(snapshot(&[
        ("e2e-vsphere", "1001", 3.0),
        ("e2e-vsphere-upi", "1002", 1.0),
    ]))
    .await
    .unwrap();

    let key = [("job", DEFAULT_JOB)];
    let group = gateway.group(&key).await.expect("the group was created");
    assert!(group.last_push_successful);
    assert_eq!(
        group.series(CORRELATED),
        vec![
            as_stored(&correlated_labels("e2e-vsphere", "1001"), &key, 3.0),
            as_stored(&correlated_labels("e2e-vsphere-upi", "1002"), &key, 1.0),
        ]
    );
    assert_eq!(group.families[CORRELATED].metric_type, "GAUGE");
    assert_eq!(
        group.series(VCENTER_UP),
        vec![as_stored(
            &[("vcenter", "vc1.example.com".to_string())],
            &key,
            1.0
        )]
    );

    assert_eq!(self_metric(&sink, PUSHES_TOTAL), 1.0);
    assert_eq!(self_metric(&sink, PUSH_FAILURES_TOTAL), 0.0);
    assert_eq!(self_metric(&sink, SAMPLES_SENT_TOTAL), 3.0);
    for nothing_lost in [
        SAMPLES_FAILED_TOTAL,
        SAMPLES_RETRIED_TOTAL,
        SAMPLES_DROPPED_TOTAL,
    ] {
        assert_eq!(self_metric(&sink, nothing_lost), 0.0, "{nothing_lost}");
    }
    let pushed_at = self_metric(&sink, LAST_SUCCESS_TIMESTAMP);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        now - 60.0 < pushed_at && pushed_at <= now,
        "{pushed_at} vs {now}"
    );
}

#[tokio::test]
async fn series_of_an_ended_job_vanish_with_the_next_push() {
    let gateway = Pushgateway::start().await;
    let sink = PushgatewaySink::new(config(&gateway.url)).unwrap();
    sink.publish(snapshot(&[
        ("e2e-vsphere", "1001", 3.0),
        ("e2e-vsphere-upi", "1002", 1.0),
    ]))
    .await
    .unwrap();

    sink.publish(snapshot(&[("e2e-vsphere", "1001", 4.0)]))
        .await
        .unwrap();

    let key = [("job", DEFAULT_JOB)];
    let group = gateway.group(&key).await.expect("the group exists");
    assert_eq!(
        group.series(CORRELATED),
        vec![as_stored(
            &correlated_labels("e2e-vsphere", "1001"),
            &key,
            4.0
        )]
    );
    assert_eq!(self_metric(&sink, SAMPLES_SENT_TOTAL), 5.0);
}

#[tokio::test]
async fn grouping_values_with_a_slash_or_empty_land_in_their_own_group() {
    let gateway = Pushgateway::start().await;
    let mut odd = config(&gateway.url);
    odd.job = "ci/vsphere".to_string();
    odd.grouping = labels(&[
        ("datacenter", "dc1/cluster-2"),
        ("shard", ""),
        ("site", "a b%"),
    ]);
    let plain = {
        let mut c = config(&gateway.url);
        c.job = "ci/vsphere".to_string();
        c.grouping = labels(&[("datacenter", "dc1")]);
        c
    };

    PushgatewaySink::new(odd)
        .unwrap()
        .publish(snapshot(&[("e2e-vsphere", "1001", 2.0)]))
        .await
        .unwrap();
    PushgatewaySink::new(plain)
        .unwrap()
        .publish(snapshot(&[("e2e-vsphere", "2002", 5.0)]))
        .await
        .unwrap();

    let odd_key = [
        ("job", "ci/vsphere"),
        ("datacenter", "dc1/cluster-2"),
        ("shard", ""),
        ("site", "a b%"),
    ];
    let odd_group = gateway
        .group(&odd_key)
        .await
        .expect("the @base64 group exists");
    let series = odd_group.series(CORRELATED);
    assert_eq!(series.len(), 1, "{series:?}");
    assert_eq!(series[0].value, 2.0);
    assert_eq!(series[0].labels["build_id"], "1001");
    assert_eq!(series[0].labels["job"], "ci/vsphere");
    assert_eq!(series[0].labels["datacenter"], "dc1/cluster-2");
    assert_eq!(series[0].labels["site"], "a b%");

    let plain_group = gateway
        .group(&[("job", "ci/vsphere"), ("datacenter", "dc1")])
        .await
        .expect("the plain group exists beside it");
    let series = plain_group.series(CORRELATED);
    assert_eq!(series.len(), 1, "{series:?}");
    assert_eq!(series[0].labels["build_id"], "2002");
    assert_eq!(gateway.groups().await.len(), 2);
}

#[tokio::test]
async fn type_clash_with_another_group_is_refused_with_the_gateways_message() {
    let gateway = Pushgateway::start().await;
    let mut first = config(&gateway.url);
    first.grouping = labels(&[("instance", "reporter-a")]);
    PushgatewaySink::new(first)
        .unwrap()
        .publish(snapshot(&[("e2e-vsphere", "1001", 3.0)]))
        .await
        .unwrap();

    let mut second = config(&gateway.url);
    second.grouping = labels(&[("instance", "reporter-b")]);
    let sink = PushgatewaySink::new(second).unwrap();
    let as_counter = Arc::new(Snapshot {
        timestamp_ms: 1,
        families: vec![
            MetricFamily::counter(CORRELATED, "Same name, other type.")
                .with(correlated_labels("e2e-vsphere", "1002"), 1.0),
        ],
    });
    let (status, message) = pushgateway_error(sink.publish(as_counter).await);

    assert_eq!(status, Some(400));
    assert!(
        message.starts_with(&format!(
            "PUT /metrics/job/{DEFAULT_JOB}/instance/reporter-b answered 400 Bad Request: \
             pushed metrics are invalid or inconsistent with existing metrics"
        )),
        "{message}"
    );
    assert_eq!(self_metric(&sink, PUSH_FAILURES_TOTAL), 1.0);
    let refused = gateway
        .group(&[("job", DEFAULT_JOB), ("instance", "reporter-b")])
        .await
        .expect("a refused push still creates its group");
    assert!(!refused.last_push_successful);
    assert!(refused.own_gauge("push_failure_time_seconds") > 0.0);
    let kept = gateway
        .group(&[("job", DEFAULT_JOB), ("instance", "reporter-a")])
        .await
        .expect("the first group is untouched");
    assert_eq!(kept.series(CORRELATED).len(), 1);
}

#[tokio::test]
async fn duplicate_series_is_refused_with_the_gateways_message() {
    let gateway = Pushgateway::start().await;
    let sink = PushgatewaySink::new(config(&gateway.url)).unwrap();

    let (status, message) = pushgateway_error(
        sink.publish(snapshot(&[
            ("e2e-vsphere", "1001", 3.0),
            ("e2e-vsphere", "1001", 3.0),
        ]))
        .await,
    );

    assert_eq!(status, Some(400));
    assert!(
        message.contains("400 Bad Request: pushed metrics are invalid"),
        "{message}"
    );
    assert_eq!(self_metric(&sink, SAMPLES_SENT_TOTAL), 0.0);
}

#[tokio::test]
async fn series_that_collide_once_grouping_labels_are_dropped_are_sent_once() {
    let gateway = Pushgateway::start().await;
    let mut config = config(&gateway.url);
    config.grouping = labels(&[("instance", "reporter-1")]);
    let sink = PushgatewaySink::new(config).unwrap();
    // Two series differing only in `instance`, which the group's key sets:
    // sent as they are, the gateway would refuse the whole push.
    let with_instance = |instance: &str| {
        let mut labels = correlated_labels("e2e-vsphere", "1001");
        labels.push(("instance", instance.to_string()));
        labels
    };
    let pushed = Arc::new(Snapshot {
        timestamp_ms: 1,
        families: vec![
            MetricFamily::gauge(CORRELATED, "Sessions per CI job.")
                .with(with_instance("a"), 3.0)
                .with(with_instance("b"), 4.0),
        ],
    });

    sink.publish(pushed).await.unwrap();

    let key = [("job", DEFAULT_JOB), ("instance", "reporter-1")];
    let group = gateway.group(&key).await.expect("the group was created");
    assert_eq!(
        group.series(CORRELATED),
        vec![as_stored(
            &correlated_labels("e2e-vsphere", "1001"),
            &key,
            3.0
        )]
    );
    assert_eq!(self_metric(&sink, SAMPLES_SENT_TOTAL), 1.0);
    assert_eq!(self_metric(&sink, SAMPLES_DROPPED_TOTAL), 1.0);
    assert_eq!(self_metric(&sink, PUSH_FAILURES_TOTAL), 0.0);
}

#[test]
fn grouping_by_a_label_of_the_reporters_series_is_refused_at_start() {
    let mut config = config(&Url::parse("http://127.0.0.1:9091/").unwrap());
    config.grouping = labels(&[("vcenter", "vc1.example.com")]);

    let err = PushgatewaySink::new(config).unwrap_err().to_string();

    assert!(
        err.starts_with(
            "pushgateway.grouping: \"vcenter\" is a label of the reporter's own series"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn delete_on_shutdown_removes_the_group() {
    let gateway = Pushgateway::start().await;
    let mut keeps = config(&gateway.url);
    keeps.grouping = labels(&[("instance", "keeps")]);
    let mut deletes = config(&gateway.url);
    deletes.grouping = labels(&[("instance", "deletes")]);
    deletes.delete_on_shutdown = true;
    let keeps = PushgatewaySink::new(keeps).unwrap();
    let deletes = PushgatewaySink::new(deletes).unwrap();
    for sink in [&keeps, &deletes] {
        sink.publish(snapshot(&[("e2e-vsphere", "1001", 3.0)]))
            .await
            .unwrap();
    }
    assert_eq!(gateway.groups().await.len(), 2);

    keeps.shutdown().await.unwrap();
    deletes.shutdown().await.unwrap();

    let left: Vec<_> = gateway
        .groups()
        .await
        .into_iter()
        .map(|g| g.labels)
        .collect();
    assert_eq!(
        left,
        vec![labels(&[("job", DEFAULT_JOB), ("instance", "keeps")])]
    );
}

/// A request as the stub saw it.
#[derive(Debug, Clone)]
struct Recorded {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Default)]
struct StubState {
    /// Answers in order; the last one repeats.
    answers: Mutex<VecDeque<(StatusCode, String)>>,
    requests: Mutex<Vec<Recorded>>,
}

/// An HTTP server on 127.0.0.1 that records requests and answers as told.
struct Stub {
    url: Url,
    state: Arc<StubState>,
    server: tokio::task::JoinHandle<()>,
}

impl Stub {
    async fn start(answers: &[(StatusCode, &str)]) -> Stub {
        let state = Arc::new(StubState {
            answers: Mutex::new(
                answers
                    .iter()
                    .map(|(status, body)| (*status, body.to_string()))
                    .collect(),
            ),
            requests: Mutex::default(),
        });
        let router = Router::new()
            .fallback(record)
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0 works");
        let url = Url::parse(&format!(
            "http://{}/",
            listener
                .local_addr()
                .expect("a bound listener has an address")
        ))
        .expect("a valid URL");
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .await
                .expect("the stub serves until aborted");
        });
        Stub { url, state, server }
    }

    fn requests(&self) -> Vec<Recorded> {
        self.state
            .requests
            .lock()
            .expect("no test thread panicked")
            .clone()
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn record(
    State(state): State<Arc<StubState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    state
        .requests
        .lock()
        .expect("no test thread panicked")
        .push(Recorded {
            method,
            path: uri.path().to_string(),
            headers,
            body,
        });
    let mut answers = state.answers.lock().expect("no test thread panicked");
    if answers.len() > 1 {
        answers.pop_front().expect("checked non-empty")
    } else {
        answers
            .front()
            .cloned()
            .unwrap_or((StatusCode::OK, String::new()))
    }
}

#[tokio::test]
async fn push_is_a_put_of_the_text_format_with_credentials_from_a_file() {
    let stub = Stub::start(&[(StatusCode::OK, "")]).await;
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "s3cret\n").unwrap();
    let mut config = config(&stub.url);
    config.grouping = labels(&[("instance", "reporter-1")]);
    config.basic_auth = Some(BasicAuth {
        username: "pusher".to_string(),
        password: None,
        password_file: Some(password_file),
    });
    let sink = PushgatewaySink::new(config).unwrap();
    let pushed = snapshot(&[("e2e-vsphere", "1001", 3.0)]);

    sink.publish(Arc::clone(&pushed)).await.unwrap();

    let requests = stub.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, Method::PUT);
    assert_eq!(
        request.path,
        format!("/metrics/job/{DEFAULT_JOB}/instance/reporter-1")
    );
    assert_eq!(
        request.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let expected_auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("pusher:s3cret")
    );
    assert_eq!(request.headers["authorization"], expected_auth.as_str());
    // The exposition text written by hand (labels sorted by name): no
    // timestamps, ends in a newline.
    let expected = "\
# HELP vsphere_ci_user_sessions_correlated Sessions per CI job.
# TYPE vsphere_ci_user_sessions_correlated gauge
vsphere_ci_user_sessions_correlated{build_id=\"1001\",ci_job=\"e2e-vsphere\",\
pull_request=\"https://github.com/openshift/installer/pull/1\",user_agent=\"terraform/1.5\",\
username=\"ci-user-1\",vcenter=\"vc1.example.com\"} 3
# HELP vsphere_ci_user_sessions_vcenter_up vCenter listed.
# TYPE vsphere_ci_user_sessions_vcenter_up gauge
vsphere_ci_user_sessions_vcenter_up{vcenter=\"vc1.example.com\"} 1
";
    let body = std::str::from_utf8(&request.body).expect("the body is UTF-8");
    assert_eq!(body, expected);
    // Every sample line is `name{labels} value`: no third field (timestamp).
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        assert_eq!(line.split(' ').count(), 2, "{line}");
    }
}

#[tokio::test]
async fn bearer_token_file_is_read_again_at_each_push() {
    let stub = Stub::start(&[(StatusCode::OK, "")]).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "first-token\n").unwrap();
    let mut config = config(&stub.url);
    config.bearer_token_file = Some(token_file.clone());
    let sink = PushgatewaySink::new(config).unwrap();

    sink.publish(snapshot(&[])).await.unwrap();
    std::fs::write(&token_file, "rotated-token\n").unwrap();
    sink.publish(snapshot(&[])).await.unwrap();

    let sent: Vec<_> = stub
        .requests()
        .iter()
        .map(|r| r.headers["authorization"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(sent, ["Bearer first-token", "Bearer rotated-token"]);
}

#[tokio::test]
async fn inline_bearer_token_is_sent_but_never_shown() {
    let stub = Stub::start(&[(StatusCode::FORBIDDEN, "denied")]).await;
    let mut config = config(&stub.url);
    config.bearer_token = Some(Secret::new("t0ken-value"));
    assert!(!format!("{config:?}").contains("t0ken-value"));
    let sink = PushgatewaySink::new(config).unwrap();

    let err = sink.publish(snapshot(&[])).await.unwrap_err();

    assert_eq!(
        stub.requests()[0].headers["authorization"],
        "Bearer t0ken-value"
    );
    assert!(!err.to_string().contains("t0ken-value"));
    assert!(
        err.to_string().ends_with("answered 403 Forbidden: denied"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_request_is_reported_with_its_body_and_sent_once() {
    let stub = Stub::start(&[(
        StatusCode::BAD_REQUEST,
        "text format parsing error in line 3: expected float as value\n",
    )])
    .await;
    let sink = PushgatewaySink::new(config(&stub.url)).unwrap();

    let (status, message) = pushgateway_error(sink.publish(snapshot(&[])).await);

    assert_eq!(status, Some(400));
    assert_eq!(
        message,
        format!(
            "PUT /metrics/job/{DEFAULT_JOB} answered 400 Bad Request: \
             text format parsing error in line 3: expected float as value"
        )
    );
    assert_eq!(stub.requests().len(), 1);
}

#[tokio::test]
async fn samples_of_a_refused_push_are_counted_as_dropped() {
    let stub = Stub::start(&[(StatusCode::BAD_REQUEST, "invalid")]).await;
    let sink = PushgatewaySink::new(config(&stub.url)).unwrap();
    let pushed = snapshot(&[("e2e-vsphere", "1001", 3.0)]);

    sink.publish(Arc::clone(&pushed)).await.unwrap_err();

    let samples = pushed.sample_count() as f64;
    assert_eq!(self_metric(&sink, SAMPLES_DROPPED_TOTAL), samples);
    assert_eq!(self_metric(&sink, SAMPLES_FAILED_TOTAL), 0.0);
    assert_eq!(self_metric(&sink, SAMPLES_RETRIED_TOTAL), 0.0);
    assert_eq!(self_metric(&sink, SAMPLES_SENT_TOTAL), 0.0);
    assert_eq!(self_metric(&sink, PUSH_FAILURES_TOTAL), 1.0);
}

#[tokio::test]
async fn samples_of_a_push_accepted_on_retry_are_counted_as_retried_and_sent() {
    let stub = Stub::start(&[
        (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
        (StatusCode::OK, ""),
    ])
    .await;
    let sink = PushgatewaySink::new(config(&stub.url)).unwrap();
    let pushed = snapshot(&[("e2e-vsphere", "1001", 3.0)]);

    sink.publish(Arc::clone(&pushed)).await.unwrap();

    let samples = pushed.sample_count() as f64;
    assert_eq!(stub.requests().len(), 2);
    assert_eq!(self_metric(&sink, SAMPLES_RETRIED_TOTAL), samples);
    assert_eq!(self_metric(&sink, SAMPLES_SENT_TOTAL), samples);
    assert_eq!(self_metric(&sink, SAMPLES_FAILED_TOTAL), 0.0);
    assert_eq!(self_metric(&sink, SAMPLES_DROPPED_TOTAL), 0.0);
}

#[tokio::test]
async fn long_error_bodies_are_cut_to_a_kibibyte() {
    let long = "x".repeat(5000);
    let stub = Stub::start(&[(StatusCode::BAD_REQUEST, &long)]).await;
    let sink = PushgatewaySink::new(config(&stub.url)).unwrap();

    let (_, message) = pushgateway_error(sink.publish(snapshot(&[])).await);

    assert!(message.ends_with("... (5000 bytes in all)"), "{message}");
    assert!(message.len() < 1200, "{}", message.len());
}

#[tokio::test]
async fn server_errors_are_retried_until_the_gateway_accepts() {
    let stub = Stub::start(&[
        (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
        (StatusCode::INTERNAL_SERVER_ERROR, ""),
        (StatusCode::OK, ""),
    ])
    .await;
    let sink = PushgatewaySink::new(config(&stub.url)).unwrap();
    let pushed = snapshot(&[("e2e-vsphere", "1001", 3.0)]);

    sink.publish(Arc::clone(&pushed)).await.unwrap();

    let requests = stub.requests();
    assert_eq!(requests.len(), 3);
    assert!(requests.iter().all(|r| r.body == pushed.render_text()));
    let samples = pushed.sample_count() as f64;
    assert_eq!(self_metric(&sink, PUSHES_TOTAL), 1.0);
    assert_eq!(self_metric(&sink, PUSH_FAILURES_TOTAL), 0.0);
    assert_eq!(self_metric(&sink, SAMPLES_SENT_TOTAL), samples);
    // Sent three times: the two retries count.
    assert_eq!(self_metric(&sink, SAMPLES_RETRIED_TOTAL), 2.0 * samples);
}

#[tokio::test]
async fn server_errors_give_up_after_three_attempts() {
    let stub = Stub::start(&[(StatusCode::BAD_GATEWAY, "upstream down")]).await;
    let sink = PushgatewaySink::new(config(&stub.url)).unwrap();
    let pushed = snapshot(&[]);

    let (status, message) = pushgateway_error(sink.publish(Arc::clone(&pushed)).await);

    assert_eq!(status, Some(502));
    assert!(
        message.ends_with("answered 502 Bad Gateway: upstream down"),
        "{message}"
    );
    assert_eq!(stub.requests().len(), 3);
    assert_eq!(self_metric(&sink, PUSH_FAILURES_TOTAL), 1.0);
    assert_eq!(self_metric(&sink, LAST_SUCCESS_TIMESTAMP), 0.0);
    let samples = pushed.sample_count() as f64;
    assert_eq!(self_metric(&sink, SAMPLES_FAILED_TOTAL), samples);
    assert_eq!(self_metric(&sink, SAMPLES_RETRIED_TOTAL), 2.0 * samples);
    assert_eq!(self_metric(&sink, SAMPLES_DROPPED_TOTAL), 0.0);
}

#[tokio::test]
async fn refused_connection_fails_within_the_time_bound() {
    let dead = receivers::dead_port();
    let port = dead.port;
    let mut config = config(&Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap());
    // Each attempt has 3 s to be refused (instant, unless the machine
    // stalls); the push as a whole is bounded by timeout × attempts.
    config.timeout = Duration::from_secs(3);
    let sink = PushgatewaySink::new(config).unwrap();

    let started = Instant::now();
    let err = sink.publish(snapshot(&[])).await.unwrap_err();

    assert!(
        started.elapsed() < Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
    let shown = err.to_string();
    let (status, message) = pushgateway_error(Err(err));
    assert_eq!(status, None);
    assert!(
        message.to_lowercase().contains("connection refused"),
        "{message}"
    );
    // The target is named once, as configured; reqwest's own text (which
    // quotes the request URL) is not repeated.
    assert_eq!(
        shown.matches(&format!("127.0.0.1:{port}")).count(),
        1,
        "{shown}"
    );
    assert!(
        message.starts_with(&format!("PUT /metrics/job/{DEFAULT_JOB} failed: ")),
        "{message}"
    );
}

#[tokio::test]
async fn silent_gateway_fails_within_timeout_times_attempts() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            sockets.push(socket);
        }
    });
    let mut config = config(&url);
    config.timeout = Duration::from_millis(300);
    let sink = PushgatewaySink::new(config).unwrap();

    let started = Instant::now();
    let (status, message) = pushgateway_error(sink.publish(snapshot(&[])).await);
    let elapsed = started.elapsed();
    held.abort();

    assert_eq!(status, None);
    assert!(message.contains("timed out after 300ms"), "{message}");
    assert!(
        // About 850 ms expected; the upper margin is for a loaded machine.
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn shutdown_deletes_the_group_with_one_request() {
    let stub = Stub::start(&[(StatusCode::ACCEPTED, "")]).await;
    let mut config = config(&stub.url);
    config.grouping = labels(&[("instance", "reporter-1")]);
    config.delete_on_shutdown = true;
    let sink = PushgatewaySink::new(config).unwrap();

    sink.shutdown().await.unwrap();

    let requests = stub.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, Method::DELETE);
    assert_eq!(
        requests[0].path,
        format!("/metrics/job/{DEFAULT_JOB}/instance/reporter-1")
    );
    assert!(requests[0].body.is_empty());
}

#[tokio::test]
async fn shutdown_accepts_200_from_a_proxy() {
    let stub = Stub::start(&[(StatusCode::OK, "")]).await;
    let mut config = config(&stub.url);
    config.delete_on_shutdown = true;
    let sink = PushgatewaySink::new(config).unwrap();

    sink.shutdown().await.unwrap();

    assert_eq!(stub.requests().len(), 1);
}

#[tokio::test]
async fn shutdown_reports_a_delete_answered_with_another_2xx() {
    let stub = Stub::start(&[(StatusCode::NO_CONTENT, "")]).await;
    let mut config = config(&stub.url);
    config.delete_on_shutdown = true;
    let sink = PushgatewaySink::new(config).unwrap();

    let (status, message) = pushgateway_error(sink.shutdown().await);

    assert_eq!(status, Some(204));
    assert_eq!(
        message,
        format!("DELETE /metrics/job/{DEFAULT_JOB} answered 204 No Content, expected 202 Accepted")
    );
    assert_eq!(stub.requests().len(), 1, "not retried");
}
