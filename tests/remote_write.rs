//! The remote-write sink against real receivers (Prometheus 2.42,
//! VictoriaMetrics 1.79) and an in-process stub that records every request.
//!
//! The stub tests also cover the cases of the Prometheus remote-write sender
//! compliance suite (prometheus/compliance `remotewrite/sender`) that apply
//! to a sender that does not scrape: headers, sorted labels, `__name__`,
//! repeated and empty labels, counters and gauges, special float values,
//! timestamps, staleness, ordering under random receiver delays, 400 and 500
//! handling, 415 fallback and response handling. (`up`, `job`/`instance`,
//! honor_labels, histograms and summaries concern scraping senders: this one
//! has external labels, tested here, and only gauges and counters.)

#[path = "support/pki.rs"]
mod pki;
#[path = "support/receivers.rs"]
mod receivers;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use receivers::{Captured, Peer, Reply, SentSeries, StubReceiver};
use vsphere_ci_session_metrics::Error;
use vsphere_ci_session_metrics::metrics::{MetricFamily, Snapshot};
use vsphere_ci_session_metrics::sink::Sink;
use vsphere_ci_session_metrics::sink::remote_write::config::{BasicAuth, RetryConfig, TlsConfig};
use vsphere_ci_session_metrics::sink::remote_write::encode::STALE_NAN_BITS;
use vsphere_ci_session_metrics::sink::remote_write::{
    BATCHES_SENT_TOTAL, BUFFERED_SAMPLES, Protocol, RemoteWriteConfig, RemoteWriteSink,
    SAMPLES_DROPPED_TOTAL, SAMPLES_RETRIED_TOTAL, SAMPLES_SENT_TOTAL,
};

const GAUGE: &str = "vsphere_ci_user_sessions_correlated";
const COUNTER: &str = "vsphere_ci_user_sessions_exporter_scrapes_total";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as i64
}

/// A config for tests: short timeouts and backoffs so failures are quick.
fn config(url: &str) -> RemoteWriteConfig {
    RemoteWriteConfig {
        url: url.to_string(),
        remote_timeout: Duration::from_secs(2),
        retry: RetryConfig {
            min_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
        },
        ..RemoteWriteConfig::default()
    }
}

fn sink(config: RemoteWriteConfig) -> RemoteWriteSink {
    RemoteWriteSink::new(config, Vec::new()).expect("the test config is valid")
}

/// One gauge per user, plus a counter, at `timestamp_ms`.
fn snapshot(timestamp_ms: i64, users: &[(&str, f64)]) -> Arc<Snapshot> {
    let mut gauge = MetricFamily::gauge(GAUGE, "Sessions of a CI user.");
    for (user, value) in users {
        gauge.push([("username", *user), ("vcenter", "vc1")], *value);
    }
    Arc::new(Snapshot {
        timestamp_ms,
        families: vec![
            gauge,
            MetricFamily::counter(COUNTER, "Cycles run.").with(Vec::<(&str, &str)>::new(), 7.0),
        ],
    })
}

/// A self-metric's value for this sink (first sample whose extra labels match).
fn self_metric(sink: &RemoteWriteSink, name: &str, extra: &[(&str, &str)]) -> f64 {
    let family = sink
        .self_metrics()
        .into_iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("self-metric {name} is missing"));
    family
        .samples
        .iter()
        .find(|s| {
            extra
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|s| s.value)
        .unwrap_or_else(|| panic!("self-metric {name} has no sample with {extra:?}"))
}

fn labels_of(series: &[(String, String)]) -> BTreeMap<String, String> {
    series.iter().cloned().collect()
}

fn find<'a>(series: &'a [SentSeries], name: &str, user: Option<&str>) -> Option<&'a SentSeries> {
    series.iter().find(|(labels, _)| {
        let l = labels_of(labels);
        l.get("__name__").map(String::as_str) == Some(name)
            && user.is_none_or(|u| l.get("username").map(String::as_str) == Some(u))
    })
}

// ---------------------------------------------------------------------------
// Real receivers
// ---------------------------------------------------------------------------

#[tokio::test]
async fn values_pushed_to_prometheus_are_read_back_exactly() {
    let prom = Peer::prometheus();
    let sink = sink(config(&prom.write_url()));
    let ts = now_ms() - 1_000;
    sink.publish(snapshot(ts, &[("ci-a", 3.0), ("ci-b", 0.25)]))
        .await
        .expect("Prometheus accepts the cycle");

    let at = (ts as f64) / 1000.0 + 0.5;
    let mut got = prom.query(GAUGE, at).await;
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let values: Vec<(String, f64)> = got
        .iter()
        .map(|(l, v)| (l["username"].clone(), *v))
        .collect();
    assert_eq!(
        values,
        [("ci-a".to_string(), 3.0), ("ci-b".to_string(), 0.25)]
    );
    assert_eq!(got[0].0["vcenter"], "vc1");
    let counter = prom.query(COUNTER, at).await;
    assert_eq!(counter.len(), 1);
    assert_eq!(counter[0].1, 7.0);
    assert_eq!(self_metric(&sink, SAMPLES_SENT_TOTAL, &[]), 3.0);
}

#[tokio::test]
async fn values_pushed_to_victoria_metrics_are_read_back_exactly() {
    let vm = Peer::victoria_metrics();
    let sink = sink(config(&vm.write_url()));
    let ts = now_ms() - 1_000;
    sink.publish(snapshot(ts, &[("ci-a", 3.0), ("ci-b", 0.25)]))
        .await
        .expect("VictoriaMetrics accepts the cycle");

    let at = (ts as f64) / 1000.0 + 0.5;
    let mut got = vm.query(GAUGE, at).await;
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let values: Vec<(String, f64)> = got
        .iter()
        .map(|(l, v)| (l["username"].clone(), *v))
        .collect();
    assert_eq!(
        values,
        [("ci-a".to_string(), 3.0), ("ci-b".to_string(), 0.25)]
    );
}

#[tokio::test]
async fn an_ended_series_vanishes_from_prometheus_instant_queries_at_once() {
    let prom = Peer::prometheus();
    let sink = sink(config(&prom.write_url()));
    let first = now_ms() - 3_000;
    sink.publish(snapshot(first, &[("ci-a", 1.0), ("ci-b", 2.0)]))
        .await
        .expect("first cycle accepted");
    let second = first + 1_000;
    sink.publish(snapshot(second, &[("ci-a", 1.0)]))
        .await
        .expect("second cycle accepted");

    // Without the stale marker ci-b would be returned for five more minutes.
    let got = prom.query(GAUGE, (second as f64) / 1000.0 + 0.5).await;
    let users: Vec<&str> = got.iter().map(|(l, _)| l["username"].as_str()).collect();
    assert_eq!(users, ["ci-a"]);
}

#[tokio::test]
async fn a_prometheus_outage_within_the_buffer_bounds_leaves_no_gap() {
    let mut prom = Peer::prometheus();
    let mut cfg = config(&prom.write_url());
    // One attempt per request (the backoff outlasts the budget): a refused
    // connection fails at once, an answer has ample time.
    cfg.remote_timeout = Duration::from_secs(3);
    cfg.retry.min_backoff = Duration::from_secs(4);
    cfg.retry.max_backoff = Duration::from_secs(4);
    let sink = sink(cfg);
    let base = now_ms() - 60_000;
    let cycle_ts: Vec<i64> = (0..8).map(|i| base + i * 2_000).collect();

    // Cycle 0 before the outage, 1..=4 during it, 5..=7 after it.
    let outage = 1..5;
    let samples_per_cycle = snapshot(0, &[("ci-a", 0.0)]).sample_count();

    sink.publish(snapshot(cycle_ts[0], &[("ci-a", 0.0)]))
        .await
        .expect("delivered before the outage");
    prom.stop();
    for (i, ts) in cycle_ts
        .iter()
        .enumerate()
        .take(outage.end)
        .skip(outage.start)
    {
        let started = Instant::now();
        let result = sink.publish(snapshot(*ts, &[("ci-a", i as f64)])).await;
        assert!(
            result.is_err(),
            "cycle {i} cannot be delivered during the outage"
        );
        assert!(
            started.elapsed() < sink.publish_timeout() + Duration::from_secs(2),
            "publish is bounded"
        );
    }
    // The same series every cycle: no staleness markers, nothing else buffered.
    assert_eq!(
        self_metric(&sink, BUFFERED_SAMPLES, &[]),
        (outage.len() * samples_per_cycle) as f64
    );
    prom.restart();
    for (i, ts) in cycle_ts.iter().enumerate().skip(outage.end) {
        sink.publish(snapshot(*ts, &[("ci-a", i as f64)]))
            .await
            .expect("delivered after the outage, with the backlog");
    }
    assert_eq!(self_metric(&sink, BUFFERED_SAMPLES, &[]), 0.0);

    let end = (*cycle_ts.last().expect("eight cycles") as f64) / 1000.0 + 0.5;
    let got = prom
        .raw_samples(&format!("{GAUGE}{{username=\"ci-a\"}}"), "2m", end)
        .await;
    assert_eq!(got.len(), 1, "{got:?}");
    let expected: Vec<(i64, f64)> = cycle_ts
        .iter()
        .enumerate()
        .map(|(i, ts)| (*ts, i as f64))
        .collect();
    assert_eq!(got[0].1, expected);

    // A range query over the outage shows the values too, one per cycle.
    let range = prom
        .query_range(
            &format!("{GAUGE}{{username=\"ci-a\"}}"),
            cycle_ts[0] as f64 / 1000.0,
            end - 0.5,
            2.0,
        )
        .await;
    let values: Vec<f64> = range[0].1.iter().map(|(_, v)| *v).collect();
    assert_eq!(values, (0..8).map(f64::from).collect::<Vec<_>>());
}

#[tokio::test]
async fn auto_protocol_falls_back_to_v1_against_prometheus_2_42_and_the_data_arrives() {
    let prom = Peer::prometheus();
    let mut cfg = config(&prom.write_url());
    cfg.protocol = Some(Protocol::Auto);
    let sink = sink(cfg);
    let ts = now_ms() - 1_000;
    sink.publish(snapshot(ts, &[("ci-a", 5.0)]))
        .await
        .expect("delivered after falling back to v1");
    let got = prom.query(GAUGE, (ts as f64) / 1000.0 + 0.5).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, 5.0);
}

#[tokio::test]
async fn tls_with_a_private_ca_and_a_client_certificate_reaches_prometheus() {
    let pki = pki::TestPki::generate();
    let web = format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  \
         client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n",
        pki.path("server.crt").display(),
        pki.path("server.key").display(),
        pki.path("ca.crt").display()
    );
    let prom = Peer::prometheus_with_web_config(&web);
    let url = format!("https://127.0.0.1:{}/api/v1/write", prom.port);
    let ts = now_ms() - 1_000;
    let tls = |ca: bool, client: bool, insecure: bool| TlsConfig {
        ca_file: ca.then(|| pki.path("ca.crt")),
        cert_file: client.then(|| pki.path("client.crt")),
        key_file: client.then(|| pki.path("client.key")),
        insecure_skip_verify: insecure,
        server_name: None,
    };
    let with_tls = |tls: TlsConfig| {
        let mut cfg = config(&url);
        // Prometheus answers 503 until its storage is ready: retried.
        cfg.remote_timeout = Duration::from_secs(15);
        cfg.tls_config = Some(tls);
        sink(cfg)
    };

    let trusted = with_tls(tls(true, true, false));
    trusted
        .publish(snapshot(ts, &[("ci-a", 1.0)]))
        .await
        .expect("the private CA is trusted and the client certificate accepted");

    // Exactly one attempt (the backoff outlasts the budget): its answer is
    // the refused certificate, whatever the machine's load.
    let mut short = config(&url);
    short.remote_timeout = Duration::from_secs(5);
    short.retry.min_backoff = Duration::from_secs(6);
    short.retry.max_backoff = Duration::from_secs(6);
    short.tls_config = Some(tls(false, true, false));
    let untrusted = sink(short);
    let err = untrusted
        .publish(snapshot(ts, &[("ci-a", 1.0)]))
        .await
        .expect_err("a certificate from an unknown CA is refused");
    assert!(
        matches!(err, Error::RemoteWrite { status: None, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("certificate"), "{err}");

    let insecure = with_tls(tls(false, true, true));
    insecure
        .publish(snapshot(ts + 1, &[("ci-a", 1.0)]))
        .await
        .expect("insecure_skip_verify accepts any server certificate");
}

// ---------------------------------------------------------------------------
// Stub receiver: protocol
// ---------------------------------------------------------------------------

fn assert_protocol_headers(req: &Captured, v2: bool) {
    assert_eq!(req.method, "POST");
    assert_eq!(req.header("content-encoding").as_deref(), Some("snappy"));
    if v2 {
        assert_eq!(
            req.header("content-type").as_deref(),
            Some("application/x-protobuf;proto=io.prometheus.write.v2.Request")
        );
        assert_eq!(
            req.header("x-prometheus-remote-write-version").as_deref(),
            Some("2.0.0")
        );
    } else {
        assert_eq!(
            req.header("content-type").as_deref(),
            Some("application/x-protobuf")
        );
        assert_eq!(
            req.header("x-prometheus-remote-write-version").as_deref(),
            Some("0.1.0")
        );
    }
    let ua = req.header("user-agent").expect("a User-Agent is sent");
    assert_eq!(
        ua,
        format!("vsphere-ci-session-metrics/{}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn every_request_carries_the_protocol_headers_auth_tenant_and_extra_headers() {
    let stub = StubReceiver::start().await;
    let mut cfg = config(&stub.url);
    cfg.headers.insert("X-Team".into(), "ci".into());
    cfg.tenant = Some("team-a".into());
    cfg.basic_auth = Some(BasicAuth {
        username: "writer".into(),
        password: Some(vsphere_ci_session_metrics::secret::Secret::new("s3cret")),
        password_file: None,
    });
    let sink = sink(cfg);
    sink.publish(snapshot(now_ms(), &[("ci-a", 1.0)]))
        .await
        .unwrap();
    let reqs = stub.requests();
    assert_eq!(reqs.len(), 1);
    assert_protocol_headers(&reqs[0], false);
    assert_eq!(reqs[0].path, "/api/v1/write");
    assert_eq!(reqs[0].header("x-team").as_deref(), Some("ci"));
    assert_eq!(reqs[0].header("x-scope-orgid").as_deref(), Some("team-a"));
    // base64("writer:s3cret")
    assert_eq!(
        reqs[0].header("authorization").as_deref(),
        Some("Basic d3JpdGVyOnMzY3JldA==")
    );
    assert!(!format!("{sink:?}").contains("s3cret"));
}

#[tokio::test]
async fn a_rotated_bearer_token_file_is_read_at_every_request() {
    let stub = StubReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "one\n").unwrap();
    let mut cfg = config(&stub.url);
    cfg.bearer_token_file = Some(token.clone());
    let sink = sink(cfg);
    let ts = now_ms();
    sink.publish(snapshot(ts, &[("ci-a", 1.0)])).await.unwrap();
    std::fs::write(&token, "two\n").unwrap();
    sink.publish(snapshot(ts + 1, &[("ci-a", 1.0)]))
        .await
        .unwrap();
    let auth: Vec<Option<String>> = stub
        .requests()
        .iter()
        .map(|r| r.header("authorization"))
        .collect();
    assert_eq!(
        auth,
        [
            Some("Bearer one".to_string()),
            Some("Bearer two".to_string())
        ]
    );
}

#[tokio::test]
async fn bodies_are_snappy_block_format_never_framed() {
    let stub = StubReceiver::start().await;
    let sink = sink(config(&stub.url));
    sink.publish(snapshot(now_ms(), &[("ci-a", 1.0)]))
        .await
        .unwrap();
    let req = &stub.requests()[0];
    // The framed format opens with a stream identifier chunk.
    assert!(!req.body.starts_with(b"\xff\x06\x00\x00sNaPpY"));
    assert!(!req.decompressed().is_empty());
}

#[tokio::test]
async fn labels_are_sorted_unique_named_and_empty_values_are_dropped() {
    let stub = StubReceiver::start().await;
    let sink = RemoteWriteSink::new(
        config(&stub.url),
        vec![
            ("replica".into(), "r1".into()),
            ("username".into(), "external-loses".into()),
        ],
    )
    .unwrap();
    let mut family = MetricFamily::gauge(GAUGE, "h");
    family.push(
        [
            ("vcenter", "vc1"),
            ("username", "ci-a"),
            ("pull_request", ""),
            ("build_id", "42"),
        ],
        1.0,
    );
    let ts = now_ms();
    sink.publish(Arc::new(Snapshot {
        timestamp_ms: ts,
        families: vec![family],
    }))
    .await
    .unwrap();
    let series = stub.requests()[0].series();
    assert_eq!(series.len(), 1);
    let names: Vec<&str> = series[0].0.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["__name__", "build_id", "replica", "username", "vcenter"]
    );
    let labels = labels_of(&series[0].0);
    assert_eq!(labels["__name__"], GAUGE);
    assert_eq!(
        labels["username"], "ci-a",
        "a series label wins over an external one"
    );
    assert_eq!(series[0].1, [(ts, 1.0)]);
}

#[tokio::test]
async fn series_with_repeated_or_invalid_label_names_are_dropped_and_counted() {
    let stub = StubReceiver::start().await;
    let sink = sink(config(&stub.url));
    let mut family = MetricFamily::gauge(GAUGE, "h");
    family
        .samples
        .push(vsphere_ci_session_metrics::metrics::Sample {
            labels: vec![
                ("username".into(), "a".into()),
                ("username".into(), "b".into()),
            ],
            value: 1.0,
        });
    family.push([("user-name", "a")], 1.0);
    family.push([("username", "ok")], 1.0);
    sink.publish(Arc::new(Snapshot {
        timestamp_ms: now_ms(),
        families: vec![family],
    }))
    .await
    .unwrap();
    let series = stub.requests()[0].series();
    assert_eq!(series.len(), 1);
    assert_eq!(labels_of(&series[0].0)["username"], "ok");
    assert_eq!(
        self_metric(
            &sink,
            SAMPLES_DROPPED_TOTAL,
            &[("reason", "invalid_series")]
        ),
        2.0
    );
}

#[tokio::test]
async fn a_sample_without_labels_is_sent_with_only_its_name() {
    let stub = StubReceiver::start().await;
    let sink = sink(config(&stub.url));
    // One family with one sample whose label set is empty: the series must
    // still carry `__name__`, and no empty label set may go on the wire.
    let family = MetricFamily::gauge(GAUGE, "h").with(Vec::<(&str, &str)>::new(), 1.0);
    sink.publish(Arc::new(Snapshot {
        timestamp_ms: now_ms(),
        families: vec![family],
    }))
    .await
    .unwrap();
    let reqs = stub.requests();
    assert_eq!(reqs.len(), 1);
    let series = reqs[0].series();
    assert_eq!(series.len(), 1, "{series:?}");
    assert_eq!(
        series[0].0,
        [("__name__".to_string(), GAUGE.to_string())],
        "{series:?}"
    );
}

#[tokio::test]
async fn counters_gauges_and_special_floats_are_sent_as_they_are() {
    let stub = StubReceiver::start().await;
    let sink = sink(config(&stub.url));
    let ts = now_ms();
    let family = MetricFamily::gauge(GAUGE, "h")
        .with([("username", "nan")], f64::NAN)
        .with([("username", "inf")], f64::INFINITY)
        .with([("username", "ninf")], f64::NEG_INFINITY);
    let counter =
        MetricFamily::counter(COUNTER, "Cycles run.").with(Vec::<(&str, &str)>::new(), 12.0);
    sink.publish(Arc::new(Snapshot {
        timestamp_ms: ts,
        families: vec![family, counter],
    }))
    .await
    .unwrap();
    let req = &stub.requests()[0];
    let series = req.series();
    let value = |u: &str| find(&series, GAUGE, Some(u)).unwrap().1[0].1;
    assert!(value("nan").is_nan());
    assert_eq!(value("inf"), f64::INFINITY);
    assert_eq!(value("ninf"), f64::NEG_INFINITY);
    assert_eq!(find(&series, COUNTER, None).unwrap().1, [(ts, 12.0)]);
    // Metadata tells the receiver which is which.
    let meta = req.v1().metadata;
    let types: HashMap<String, i32> = meta
        .iter()
        .map(|m| (m.metric_family_name.clone(), m.r#type))
        .collect();
    assert_eq!(types[GAUGE], 2, "gauge");
    assert_eq!(types[COUNTER], 1, "counter");
}

#[tokio::test]
async fn every_sample_of_a_cycle_carries_the_cycle_timestamp() {
    let stub = StubReceiver::start().await;
    let sink = sink(config(&stub.url));
    let ts = now_ms() - 12_345;
    sink.publish(snapshot(ts, &[("ci-a", 1.0), ("ci-b", 2.0)]))
        .await
        .unwrap();
    for (_, samples) in stub.requests()[0].series() {
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].0, ts);
    }
}

#[tokio::test]
async fn an_ended_series_gets_one_stale_marker_with_the_exact_bits() {
    let stub = StubReceiver::start().await;
    let sink = sink(config(&stub.url));
    let ts = now_ms();
    sink.publish(snapshot(ts, &[("ci-a", 1.0), ("ci-b", 2.0)]))
        .await
        .unwrap();
    sink.publish(snapshot(ts + 1_000, &[("ci-a", 1.0)]))
        .await
        .unwrap();
    sink.publish(snapshot(ts + 2_000, &[("ci-a", 1.0)]))
        .await
        .unwrap();
    let reqs = stub.requests();
    let second = reqs[1].series();
    let (_, samples) = find(&second, GAUGE, Some("ci-b")).expect("a stale marker for ci-b");
    assert_eq!(samples.len(), 1);
    assert_eq!(samples[0].0, ts + 1_000);
    assert_eq!(samples[0].1.to_bits(), STALE_NAN_BITS);
    assert!(
        find(&reqs[2].series(), GAUGE, Some("ci-b")).is_none(),
        "only one stale marker"
    );
}

#[tokio::test]
async fn shutdown_marks_every_live_series_stale_after_the_last_cycle() {
    let stub = StubReceiver::start().await;
    let sink = sink(config(&stub.url));
    let ts = now_ms() + 5_000; // a cycle stamped ahead of the clock: shutdown must still be later
    sink.publish(snapshot(ts, &[("ci-a", 1.0), ("ci-b", 2.0)]))
        .await
        .unwrap();
    sink.shutdown().await.expect("stale markers delivered");
    let reqs = stub.requests();
    assert_eq!(reqs.len(), 2);
    let last = reqs[1].series();
    assert_eq!(last.len(), 3, "two gauges and the counter");
    for (labels, samples) in &last {
        assert_eq!(samples.len(), 1, "{labels:?}");
        assert!(samples[0].0 > ts);
        assert_eq!(samples[0].1.to_bits(), STALE_NAN_BITS, "{labels:?}");
    }
}

// ---------------------------------------------------------------------------
// Stub receiver: retries and response handling
// ---------------------------------------------------------------------------

#[tokio::test]
async fn server_errors_are_retried_with_the_same_body_until_accepted() {
    let stub = StubReceiver::start().await;
    stub.script([Reply::status(500), Reply::status(503), Reply::status(500)]);
    let sink = sink(config(&stub.url));
    sink.publish(snapshot(now_ms(), &[("ci-a", 1.0)]))
        .await
        .expect("accepted on the fourth attempt");
    let reqs = stub.requests();
    assert_eq!(reqs.len(), 4);
    assert!(
        reqs.iter().all(|r| r.body == reqs[0].body),
        "same bytes resent"
    );
    assert_eq!(self_metric(&sink, SAMPLES_RETRIED_TOTAL, &[]), 6.0);
    assert_eq!(self_metric(&sink, SAMPLES_SENT_TOTAL, &[]), 2.0);
    // Backoff: at least min_backoff between attempts.
    for pair in reqs.windows(2) {
        assert!(pair[1].at - pair[0].at >= Duration::from_millis(10));
    }
}

#[tokio::test]
async fn a_400_is_sent_once_never_retried_and_its_samples_are_counted_dropped() {
    let stub = StubReceiver::start().await;
    stub.script([Reply::status(400).body("out of bounds")]);
    let sink = sink(config(&stub.url));
    let err = sink
        .publish(snapshot(now_ms(), &[("ci-a", 1.0)]))
        .await
        .expect_err("a 400 fails the cycle");
    assert!(
        matches!(
            err,
            Error::RemoteWrite {
                status: Some(400),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("out of bounds"));
    assert_eq!(stub.requests().len(), 1);
    assert_eq!(
        self_metric(&sink, SAMPLES_DROPPED_TOTAL, &[("reason", "rejected")]),
        2.0
    );
    assert_eq!(self_metric(&sink, BUFFERED_SAMPLES, &[]), 0.0);
}

#[tokio::test]
async fn throttling_waits_as_long_as_retry_after_seconds_says() {
    let stub = StubReceiver::start().await;
    stub.script([Reply::status(429).header("Retry-After", "1")]);
    let mut cfg = config(&stub.url);
    // Room for the 1 s wait however long the 429 takes to come back.
    cfg.remote_timeout = Duration::from_secs(5);
    let sink = sink(cfg);
    sink.publish(snapshot(now_ms(), &[("ci-a", 1.0)]))
        .await
        .expect("accepted after waiting");
    let reqs = stub.requests();
    assert_eq!(reqs.len(), 2);
    assert!(reqs[1].at - reqs[0].at >= Duration::from_secs(1));
}

#[tokio::test]
async fn throttling_honours_an_http_date_retry_after() {
    let stub = StubReceiver::start().await;
    let mut cfg = config(&stub.url);
    cfg.remote_timeout = Duration::from_secs(6);
    let sink = sink(cfg);
    // HTTP dates have one-second resolution: the fraction of a second is
    // dropped, so 3 s ahead is always more than 2 s ahead.
    let when = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3));
    stub.script([Reply::status(429).header("Retry-After", &when)]);
    sink.publish(snapshot(now_ms(), &[("ci-a", 1.0)]))
        .await
        .expect("accepted after waiting");
    let reqs = stub.requests();
    assert_eq!(reqs.len(), 2);
    // Over 2 s of the wait remain when the 429 arrives, less whatever a
    // loaded machine spends before that: 1 s leaves ample margin.
    assert!(reqs[1].at - reqs[0].at >= Duration::from_secs(1));
}

#[tokio::test]
async fn a_retry_after_beyond_the_timeout_keeps_the_cycle_buffered_without_waiting() {
    let stub = StubReceiver::start().await;
    stub.script([Reply::status(429).header("Retry-After", "600")]);
    let sink = sink(config(&stub.url));
    let started = Instant::now();
    let err = sink
        .publish(snapshot(now_ms(), &[("ci-a", 1.0)]))
        .await
        .expect_err("not delivered now");
    assert!(err.is_retriable());
    // It gives up at once instead of waiting 600 s; the margin is for a
    // loaded CI machine.
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(self_metric(&sink, BUFFERED_SAMPLES, &[]), 2.0);
}

#[tokio::test]
async fn a_slow_receiver_times_out_and_publish_stays_within_its_bound() {
    let stub = StubReceiver::start().await;
    stub.default_reply(Reply::status(204).delay(Duration::from_secs(10)));
    let mut cfg = config(&stub.url);
    cfg.remote_timeout = Duration::from_millis(500);
    let sink = sink(cfg);
    let started = Instant::now();
    let err = sink
        .publish(snapshot(now_ms(), &[("ci-a", 1.0)]))
        .await
        .expect_err("no answer in time");
    assert!(err.is_retriable(), "{err:?}");
    assert!(
        started.elapsed() <= sink.publish_timeout() + Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(self_metric(&sink, BUFFERED_SAMPLES, &[]), 2.0);
}

#[tokio::test]
async fn a_refused_connection_is_bounded_and_the_cycle_stays_buffered() {
    let dead = receivers::dead_port();
    let port = dead.port;
    let mut cfg = config(&format!("http://127.0.0.1:{port}/api/v1/write"));
    cfg.remote_timeout = Duration::from_millis(300);
    let sink = sink(cfg);
    let started = Instant::now();
    let err = sink
        .publish(snapshot(now_ms(), &[("ci-a", 1.0)]))
        .await
        .expect_err("nothing listens");
    assert!(err.is_retriable());
    assert!(
        matches!(err, Error::RemoteWrite { status: None, .. }),
        "{err:?}"
    );
    assert!(started.elapsed() <= sink.publish_timeout() + Duration::from_secs(2));
    assert_eq!(self_metric(&sink, BUFFERED_SAMPLES, &[]), 2.0);
}

#[tokio::test]
async fn a_failed_request_never_shows_a_token_from_the_url_query() {
    let dead = receivers::dead_port();
    let port = dead.port;
    let mut cfg = config(&format!(
        "http://127.0.0.1:{port}/api/v1/write?token=s3cr3t"
    ));
    // One attempt, whose answer is the refused connection.
    cfg.remote_timeout = Duration::from_secs(2);
    cfg.retry.min_backoff = Duration::from_secs(3);
    cfg.retry.max_backoff = Duration::from_secs(3);
    let sink = sink(cfg);
    let err = sink
        .publish(snapshot(now_ms(), &[("ci-a", 1.0)]))
        .await
        .expect_err("nothing listens");
    assert!(
        matches!(err, Error::RemoteWrite { status: None, .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("request failed"), "{message}");
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(!message.contains("s3cr3t"), "{message}");
    assert!(!format!("{err:?}").contains("s3cr3t"), "{err:?}");
    assert!(!sink.target_name().contains("s3cr3t"));
}

#[tokio::test]
async fn a_url_with_user_info_is_refused_at_start_without_echoing_the_password() {
    let stub = StubReceiver::start().await;
    let url = stub.url.replace("http://", "http://user:pa55w0rd@");
    let err = RemoteWriteSink::new(config(&url), Vec::new())
        .expect_err("credentials belong in basic_auth");
    let message = err.to_string();
    assert!(
        message.contains("must not carry credentials; use basic_auth"),
        "{message}"
    );
    assert!(!message.contains("pa55w0rd"), "{message}");
    assert!(stub.requests().is_empty());
}

#[tokio::test]
async fn a_huge_error_body_is_cut_to_one_kib() {
    let stub = StubReceiver::start().await;
    stub.script([Reply::status(400).body("x".repeat(1024 * 1024))]);
    let sink = sink(config(&stub.url));
    let err = sink
        .publish(snapshot(now_ms(), &[("ci-a", 1.0)]))
        .await
        .expect_err("refused");
    let message = err.to_string();
    assert!(message.len() < 1200, "{} bytes", message.len());
    assert!(message.contains(&"x".repeat(1024)));
    assert!(message.ends_with("bytes)"), "{message}");
}

#[tokio::test]
async fn cycles_buffered_during_an_outage_are_sent_oldest_first_when_it_ends() {
    let stub = StubReceiver::start().await;
    stub.script([
        Reply::status(503),
        Reply::status(503),
        Reply::status(503),
        Reply::status(503),
    ]);
    let mut cfg = config(&stub.url);
    // One attempt per publish: the timeout is shorter than any backoff. The
    // last publish has `publish_timeout` (6 s) to deliver five cycles.
    cfg.remote_timeout = Duration::from_secs(3);
    cfg.retry.min_backoff = Duration::from_secs(4);
    cfg.retry.max_backoff = Duration::from_secs(4);
    let sink = sink(cfg);
    let ts = now_ms();
    for i in 0..4 {
        assert!(
            sink.publish(snapshot(ts + i * 1_000, &[("ci-a", i as f64)]))
                .await
                .is_err()
        );
    }
    sink.publish(snapshot(ts + 4_000, &[("ci-a", 4.0)]))
        .await
        .expect("the outage is over");
    // The backlog goes in one request (well under max_samples_per_send),
    // each series with its samples oldest first.
    let delivered = &stub.requests()[4..];
    assert_eq!(delivered.len(), 1, "one batch");
    let gauge = delivered[0]
        .series()
        .into_iter()
        .find(|(labels, _)| labels.iter().any(|(k, v)| k == "__name__" && v == GAUGE))
        .expect("the gauge was sent");
    assert_eq!(
        gauge.1,
        (0..5)
            .map(|i| (ts + i * 1_000, i as f64))
            .collect::<Vec<_>>()
    );
    assert_eq!(self_metric(&sink, BUFFERED_SAMPLES, &[]), 0.0);
    assert_eq!(self_metric(&sink, BATCHES_SENT_TOTAL, &[]), 1.0);
}

#[tokio::test]
async fn the_outage_buffer_drops_the_oldest_cycles_past_its_bound() {
    let dead = receivers::dead_port();
    let port = dead.port;
    let mut cfg = config(&format!("http://127.0.0.1:{port}/api/v1/write"));
    cfg.remote_timeout = Duration::from_millis(50);
    cfg.max_buffered_samples = 4;
    let sink = sink(cfg);
    let ts = now_ms();
    for i in 0..3 {
        let _ = sink
            .publish(snapshot(ts + i * 1_000, &[("ci-a", 1.0)]))
            .await;
    }
    assert_eq!(self_metric(&sink, BUFFERED_SAMPLES, &[]), 4.0);
    assert_eq!(
        self_metric(&sink, SAMPLES_DROPPED_TOTAL, &[("reason", "buffer_full")]),
        2.0
    );
}

#[tokio::test]
async fn timestamps_only_move_forward_under_random_receiver_delays_and_failures() {
    let stub = StubReceiver::start().await;
    stub.random_delays(Duration::from_millis(30));
    stub.script([
        Reply::status(500),
        Reply::status(204),
        Reply::status(500),
        Reply::status(500),
    ]);
    let sink = sink(config(&stub.url));
    let ts = now_ms();
    for i in 0..10 {
        let users: Vec<(&str, f64)> = if i % 3 == 0 {
            vec![("ci-a", 1.0)]
        } else {
            vec![("ci-a", 1.0), ("ci-b", 2.0)]
        };
        sink.publish(snapshot(ts + i * 1_000, &users))
            .await
            .unwrap();
    }
    let reqs = stub.requests();
    assert_eq!(reqs.len(), 13, "ten cycles and three retries");
    let mut last: HashMap<Vec<(String, String)>, i64> = HashMap::new();
    let mut previous_body: Option<&Vec<u8>> = None;
    for req in &reqs {
        // A retry resends the same bytes; every other request only moves forward.
        if previous_body == Some(&req.body) {
            continue;
        }
        previous_body = Some(&req.body);
        for (labels, samples) in req.series() {
            for (t, _) in samples {
                if let Some(prev) = last.get(&labels) {
                    assert!(t > *prev, "{labels:?}: {t} after {prev}");
                }
                last.insert(labels.clone(), t);
            }
        }
    }
    assert_eq!(last.len(), 3);
}

#[tokio::test]
async fn a_cycle_not_newer_than_the_last_is_refused_and_counted() {
    let stub = StubReceiver::start().await;
    let sink = sink(config(&stub.url));
    let ts = now_ms();
    sink.publish(snapshot(ts, &[("ci-a", 1.0)])).await.unwrap();
    assert!(sink.publish(snapshot(ts, &[("ci-a", 1.0)])).await.is_err());
    assert_eq!(stub.requests().len(), 1);
    assert_eq!(
        self_metric(&sink, SAMPLES_DROPPED_TOTAL, &[("reason", "out_of_order")]),
        2.0
    );
}

// ---------------------------------------------------------------------------
// Stub receiver: Remote-Write 2.0 and negotiation
// ---------------------------------------------------------------------------

#[tokio::test]
async fn v2_requests_carry_a_deduplicated_symbols_table_and_metadata() {
    let stub = StubReceiver::start().await;
    stub.default_reply(Reply::accepted_v2());
    let mut cfg = config(&stub.url);
    cfg.protocol = Some(Protocol::V2);
    let sink = sink(cfg);
    let ts = now_ms();
    sink.publish(snapshot(ts, &[("ci-a", 1.0), ("ci-b", 2.0)]))
        .await
        .unwrap();
    let req = &stub.requests()[0];
    assert_protocol_headers(req, true);
    let body = req.v2();
    assert_eq!(body.symbols[0], "");
    let mut unique = body.symbols.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), body.symbols.len(), "symbols are deduplicated");
    assert_eq!(
        body.symbols.iter().filter(|s| s.as_str() == GAUGE).count(),
        1
    );
    for ts_ in &body.timeseries {
        assert_eq!(ts_.labels_refs.len() % 2, 0);
        let meta = ts_.metadata.as_ref().expect("metadata on every series");
        assert!(meta.r#type == 1 || meta.r#type == 2);
        assert!(!body.symbols[meta.help_ref as usize].is_empty());
    }
    let series = req.series();
    assert_eq!(find(&series, GAUGE, Some("ci-b")).unwrap().1, [(ts, 2.0)]);
}

#[tokio::test]
async fn auto_falls_back_to_v1_on_415_and_remembers_it() {
    let stub = StubReceiver::start().await;
    stub.script([Reply::status(415)]);
    let mut cfg = config(&stub.url);
    cfg.protocol = Some(Protocol::Auto);
    let sink = sink(cfg);
    let ts = now_ms();
    sink.publish(snapshot(ts, &[("ci-a", 1.0)])).await.unwrap();
    sink.publish(snapshot(ts + 1_000, &[("ci-a", 1.0)]))
        .await
        .unwrap();
    let versions: Vec<bool> = stub.requests().iter().map(Captured::is_v2).collect();
    assert_eq!(versions, [true, false, false]);
    assert_protocol_headers(&stub.requests()[1], false);
    assert_eq!(
        stub.requests()[1].series()[0].1[0].0,
        ts,
        "same cycle resent"
    );
}

#[tokio::test]
async fn auto_resends_as_v1_when_a_2xx_does_not_confirm_samples_written() {
    let stub = StubReceiver::start().await;
    let mut cfg = config(&stub.url);
    cfg.protocol = Some(Protocol::Auto);
    let sink = sink(cfg);
    let ts = now_ms();
    sink.publish(snapshot(ts, &[("ci-a", 1.0)])).await.unwrap();
    let reqs = stub.requests();
    assert_eq!(reqs.len(), 2);
    assert!(reqs[0].is_v2());
    assert!(!reqs[1].is_v2());
    assert_eq!(reqs[1].series().len(), 2);
}

#[tokio::test]
async fn auto_stays_on_v2_when_the_receiver_confirms_samples_written() {
    let stub = StubReceiver::start().await;
    stub.default_reply(Reply::accepted_v2());
    let mut cfg = config(&stub.url);
    cfg.protocol = Some(Protocol::Auto);
    let sink = sink(cfg);
    let ts = now_ms();
    sink.publish(snapshot(ts, &[("ci-a", 1.0)])).await.unwrap();
    // Once v2 is confirmed, a 400 is a real refusal, not a reason to fall back.
    stub.script([Reply::status(400)]);
    assert!(
        sink.publish(snapshot(ts + 1, &[("ci-a", 1.0)]))
            .await
            .is_err()
    );
    sink.publish(snapshot(ts + 2, &[("ci-a", 1.0)]))
        .await
        .unwrap();
    assert!(stub.requests().iter().all(Captured::is_v2));
}

#[tokio::test]
async fn explicit_v2_does_not_fall_back_on_415() {
    let stub = StubReceiver::start().await;
    stub.script([Reply::status(415)]);
    let mut cfg = config(&stub.url);
    cfg.protocol = Some(Protocol::V2);
    let sink = sink(cfg);
    let err = sink
        .publish(snapshot(now_ms(), &[("ci-a", 1.0)]))
        .await
        .expect_err("refused");
    assert!(matches!(
        err,
        Error::RemoteWrite {
            status: Some(415),
            ..
        }
    ));
    assert_eq!(stub.requests().len(), 1);
}

#[tokio::test]
async fn explicit_v2_fails_and_drops_the_cycle_when_samples_written_is_not_confirmed() {
    // The stub answers 204 without the header, as a 1.0-only receiver does.
    let stub = StubReceiver::start().await;
    let mut cfg = config(&stub.url);
    cfg.protocol = Some(Protocol::V2);
    let sink = sink(cfg);
    let snap = snapshot(now_ms(), &[("ci-a", 1.0)]);
    let err = sink
        .publish(Arc::clone(&snap))
        .await
        .expect_err("an unconfirmed 2.0 request is not a delivery");
    assert!(
        matches!(
            err,
            Error::RemoteWrite {
                status: Some(204),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_retriable());
    let message = err.to_string();
    assert!(
        message.contains("receiver does not support Remote-Write 2.0"),
        "{message}"
    );
    assert!(message.contains("use protocol: v1 or auto"), "{message}");
    let reqs = stub.requests();
    assert_eq!(reqs.len(), 1, "not retried");
    assert!(reqs[0].is_v2(), "no fallback with an explicit protocol");
    assert_eq!(
        self_metric(&sink, SAMPLES_DROPPED_TOTAL, &[("reason", "unsupported")]),
        snap.sample_count() as f64
    );
    assert_eq!(
        self_metric(&sink, SAMPLES_DROPPED_TOTAL, &[("reason", "rejected")]),
        0.0
    );
    assert_eq!(self_metric(&sink, SAMPLES_SENT_TOTAL, &[]), 0.0);
    assert_eq!(self_metric(&sink, BUFFERED_SAMPLES, &[]), 0.0);
}

#[tokio::test]
async fn auto_falls_back_to_v1_when_a_confirmed_receiver_stops_confirming() {
    let stub = StubReceiver::start().await;
    stub.script([Reply::accepted_v2()]);
    let mut cfg = config(&stub.url);
    cfg.protocol = Some(Protocol::Auto);
    let sink = sink(cfg);
    let ts = now_ms();
    sink.publish(snapshot(ts, &[("ci-a", 1.0)])).await.unwrap();
    // From here the stub answers 204 without the header.
    sink.publish(snapshot(ts + 1_000, &[("ci-a", 2.0)]))
        .await
        .unwrap();
    let versions: Vec<bool> = stub.requests().iter().map(Captured::is_v2).collect();
    assert_eq!(versions, [true, true, false]);
    assert_eq!(
        find(&stub.requests()[2].series(), GAUGE, Some("ci-a"))
            .expect("the unconfirmed cycle is resent as 1.0")
            .1,
        [(ts + 1_000, 2.0)]
    );
}

#[tokio::test]
async fn self_metrics_name_the_target_without_credentials() {
    let stub = StubReceiver::start().await;
    let url = format!("{}?token=s3cr3t", stub.url);
    let sink = sink(config(&url));
    assert!(!sink.target_name().contains("s3cr3t"));
    sink.publish(snapshot(now_ms(), &[("ci-a", 1.0)]))
        .await
        .unwrap();
    for family in sink.self_metrics() {
        assert!(
            family
                .name
                .starts_with("vsphere_ci_user_sessions_remote_write_")
        );
        for s in &family.samples {
            assert!(
                s.labels
                    .iter()
                    .any(|(k, v)| k == "target" && v == sink.target_name())
            );
        }
    }
    assert_eq!(sink.name(), "remote_write");
    assert_eq!(
        self_metric(
            &sink,
            vsphere_ci_session_metrics::sink::remote_write::REQUESTS_TOTAL,
            &[("code", "204")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_slow_target_never_delays_another() {
    let slow_stub = StubReceiver::start().await;
    slow_stub.default_reply(Reply::status(204).delay(Duration::from_secs(10)));
    let healthy_stub = StubReceiver::start().await;
    let mut slow_cfg = config(&slow_stub.url);
    slow_cfg.remote_timeout = Duration::from_secs(3);
    let slow = sink(slow_cfg);
    let healthy = sink(config(&healthy_stub.url));
    let ts = now_ms();
    let started = Instant::now();
    let healthy_done = async {
        let r = healthy.publish(snapshot(ts, &[("ci-a", 1.0)])).await;
        (r, started.elapsed())
    };
    let slow_done = async {
        let r = slow.publish(snapshot(ts, &[("ci-a", 1.0)])).await;
        (r, started.elapsed())
    };
    let ((healthy_result, healthy_took), (slow_result, slow_took)) =
        tokio::join!(healthy_done, slow_done);
    healthy_result.expect("the healthy target got its cycle");
    assert!(slow_result.is_err());
    // The healthy target is done long before the slow one gives up.
    assert!(
        healthy_took < slow_took && slow_took >= Duration::from_secs(3),
        "healthy {healthy_took:?}, slow {slow_took:?}"
    );
}

// ------------------------------------------------- the sender (start mode)

/// Poll `check` every 20 ms for at most `bound`.
async fn wait_for(what: &str, bound: Duration, check: impl Fn() -> bool) {
    let deadline = Instant::now() + bound;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The samples of the gauge series of `user` over `requests`, in the order
/// they arrived.
fn gauge_samples(requests: &[Captured], user: &str) -> Vec<(i64, u64)> {
    requests
        .iter()
        .flat_map(|r| r.series())
        .filter(|(labels, _)| {
            let l = labels_of(labels);
            l.get("__name__").map(String::as_str) == Some(GAUGE)
                && l.get("username").map(String::as_str) == Some(user)
        })
        .flat_map(|(_, samples)| samples)
        .map(|(ts, v)| (ts, v.to_bits()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_replays_a_backlog_oldest_first_in_batches_with_stale_markers_last() {
    let stub = StubReceiver::start().await;
    stub.script([Reply::status(503), Reply::status(503)]);
    let sink = Arc::new(sink(config(&stub.url)));
    let ts = now_ms() - 60_000;
    // Ten cycles handed off while nothing sends them yet; ci-b ends after
    // the fourth.
    for i in 0..10i64 {
        let users: Vec<(&str, f64)> = if i < 4 {
            vec![("ci-a", i as f64), ("ci-b", 1.0)]
        } else {
            vec![("ci-a", i as f64)]
        };
        Sink::hand_off(&*sink, snapshot(ts + i * 1_000, &users)).expect("handed off");
    }
    assert_eq!(
        self_metric(&sink, BUFFERED_SAMPLES, &[]),
        25.0,
        "4×3 + 1 stale + 6×2"
    );
    sink.clone().start_sender();
    wait_for("the backlog delivered", Duration::from_secs(10), || {
        self_metric(&sink, BUFFERED_SAMPLES, &[]) == 0.0
    })
    .await;

    let requests = stub.requests();
    // Two refused attempts, then the whole backlog in one request.
    assert_eq!(requests.len(), 3, "{} requests", requests.len());
    let delivered = &requests[2..];
    assert_eq!(
        gauge_samples(delivered, "ci-a"),
        (0..10)
            .map(|i| (ts + i * 1_000, (i as f64).to_bits()))
            .collect::<Vec<_>>()
    );
    let mut b: Vec<(i64, u64)> = (0..4).map(|i| (ts + i * 1_000, 1f64.to_bits())).collect();
    b.push((ts + 4_000, STALE_NAN_BITS));
    assert_eq!(
        gauge_samples(delivered, "ci-b"),
        b,
        "stale marker after the last value"
    );
    assert_eq!(self_metric(&sink, BATCHES_SENT_TOTAL, &[]), 1.0);
    assert_eq!(self_metric(&sink, SAMPLES_SENT_TOTAL, &[]), 25.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_is_resent_one_cycle_at_a_time_so_only_the_bad_cycle_is_lost() {
    let stub = StubReceiver::start().await;
    // The batch of five is refused; alone, the first cycle is refused
    // again and the other four are accepted.
    stub.script([Reply::status(400), Reply::status(400)]);
    let mut cfg = config(&stub.url);
    cfg.queue_config.max_samples_per_send = Some(100);
    let sink = sink(cfg);
    let ts = now_ms() - 10_000;
    for i in 0..4i64 {
        Sink::hand_off(&sink, snapshot(ts + i * 1_000, &[("ci-a", i as f64)])).unwrap();
    }
    let err = sink.publish(snapshot(ts + 4_000, &[("ci-a", 4.0)])).await;
    assert!(
        err.is_ok(),
        "the cycle published now was delivered: {err:?}"
    );
    let requests = stub.requests();
    assert_eq!(requests.len(), 6, "one batch, then five single cycles");
    assert_eq!(
        gauge_samples(&requests[2..], "ci-a"),
        (1..5)
            .map(|i| (ts + i * 1_000, (i as f64).to_bits()))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        self_metric(&sink, SAMPLES_DROPPED_TOTAL, &[("reason", "rejected")]),
        2.0,
        "the first cycle's gauge and counter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_retry_after_value_panics_spins_or_loses_the_cycle() {
    let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(600));
    for value in [
        "0",
        "1",
        "3600",
        "18446744073709551615",
        "garbage",
        past.as_str(),
    ] {
        for status in [429, 503] {
            let stub = StubReceiver::start().await;
            stub.script([Reply::status(status).header("Retry-After", value)]);
            let mut cfg = config(&stub.url);
            // Room for a 1 s wait however long the first answer takes.
            cfg.remote_timeout = Duration::from_secs(5);
            cfg.retry.min_backoff = Duration::from_millis(200);
            cfg.retry.max_backoff = Duration::from_millis(200);
            let sink = sink(cfg);
            let result = sink.publish(snapshot(now_ms(), &[("ci-a", 1.0)])).await;
            let requests = stub.requests();
            match value {
                // Asked to wait past the publish: kept for later, not retried now.
                "3600" | "18446744073709551615" => {
                    assert!(result.is_err(), "{status} {value}");
                    assert_eq!(requests.len(), 1, "{status} {value}");
                    assert_eq!(self_metric(&sink, BUFFERED_SAMPLES, &[]), 2.0);
                }
                // A short or meaningless wait: retried after at least the backoff.
                _ => {
                    result.unwrap_or_else(|e| panic!("{status} {value}: {e}"));
                    assert_eq!(requests.len(), 2, "{status} {value}");
                    let gap = requests[1].at - requests[0].at;
                    assert!(
                        gap >= Duration::from_millis(190),
                        "{status} {value}: {gap:?}"
                    );
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_clock_steps_back_the_queue_still_goes_out() {
    let stub = StubReceiver::start().await;
    stub.default_reply(Reply::status(503));
    let mut cfg = config(&stub.url);
    // One attempt per publish (the backoff outlasts the request budget),
    // and a budget no loaded machine runs out of.
    cfg.remote_timeout = Duration::from_secs(2);
    cfg.retry.min_backoff = Duration::from_secs(3);
    cfg.retry.max_backoff = Duration::from_secs(3);
    let sink = sink(cfg);
    let ts = now_ms();
    assert!(sink.publish(snapshot(ts, &[("ci-a", 1.0)])).await.is_err());
    assert_eq!(self_metric(&sink, BUFFERED_SAMPLES, &[]), 2.0);
    stub.default_reply(Reply::status(204));

    // The clock stepped back: this cycle cannot be sent after the queued
    // one, but the queued one is delivered all the same.
    let err = sink
        .publish(snapshot(ts - 60_000, &[("ci-a", 2.0)]))
        .await
        .expect_err("an older cycle is refused");
    assert!(
        err.to_string().contains("not after the previous one"),
        "{err}"
    );
    assert_eq!(self_metric(&sink, BUFFERED_SAMPLES, &[]), 0.0);
    assert_eq!(
        gauge_samples(&stub.requests(), "ci-a").last(),
        Some(&(ts, 1f64.to_bits()))
    );
    assert_eq!(
        self_metric(&sink, SAMPLES_DROPPED_TOTAL, &[("reason", "out_of_order")]),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_errors_is_ridden_out_with_backoff_and_nothing_lost() {
    let stub = StubReceiver::start().await;
    let storm: Vec<Reply> = (0..12)
        .map(|i| match i % 3 {
            0 => Reply::status(500),
            1 => Reply::status(503).header("Retry-After", "0"),
            _ => Reply::status(429).header("Retry-After", "garbage"),
        })
        .collect();
    stub.script(storm);
    let mut cfg = config(&stub.url);
    cfg.retry.min_backoff = Duration::from_millis(20);
    cfg.retry.max_backoff = Duration::from_millis(160);
    let sink = Arc::new(sink(cfg));
    sink.clone().start_sender();
    let ts = now_ms() - 10_000;
    for i in 0..5i64 {
        Sink::hand_off(&*sink, snapshot(ts + i * 1_000, &[("ci-a", i as f64)])).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for("the storm ridden out", Duration::from_secs(20), || {
        self_metric(&sink, BUFFERED_SAMPLES, &[]) == 0.0
    })
    .await;
    let requests = stub.requests();
    assert_eq!(
        requests.len() - 12,
        self_metric(&sink, BATCHES_SENT_TOTAL, &[]) as usize
    );
    // Every cycle once, oldest first, across however many batches.
    assert_eq!(
        gauge_samples(&requests[12..], "ci-a"),
        (0..5)
            .map(|i| (ts + i * 1_000, (i as f64).to_bits()))
            .collect::<Vec<_>>()
    );
    // No tight loop: consecutive failed attempts are at least the minimum
    // backoff apart, whatever Retry-After said.
    for pair in requests[..12].windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(15), "{gap:?}");
    }
    assert_eq!(
        self_metric(&sink, SAMPLES_DROPPED_TOTAL, &[("reason", "rejected")]),
        0.0
    );
}

#[tokio::test]
async fn auto_falls_back_to_v1_on_a_400_before_any_confirmation() {
    let stub = StubReceiver::start().await;
    stub.script([Reply::status(400).body("cannot decode")]);
    let mut cfg = config(&stub.url);
    cfg.protocol = Some(Protocol::Auto);
    let sink = sink(cfg);
    let ts = now_ms();
    sink.publish(snapshot(ts, &[("ci-a", 1.0)]))
        .await
        .expect("resent as 1.0 and accepted");
    let versions: Vec<bool> = stub.requests().iter().map(Captured::is_v2).collect();
    assert_eq!(versions, [true, false]);
    assert_eq!(
        stub.requests()[1].series()[0].1[0].0,
        ts,
        "same cycle resent"
    );
    assert_eq!(
        self_metric(&sink, SAMPLES_DROPPED_TOTAL, &[("reason", "rejected")]),
        0.0
    );
}

#[tokio::test]
async fn auto_reaches_victoria_metrics_whatever_it_answers_to_2_0() {
    let vm = Peer::victoria_metrics();
    let mut cfg = config(&vm.write_url());
    cfg.protocol = Some(Protocol::Auto);
    let sink = sink(cfg);
    let ts = now_ms() - 1_000;
    sink.publish(snapshot(ts, &[("ci-a", 3.0)]))
        .await
        .expect("VictoriaMetrics takes the cycle");
    let got = vm.query(GAUGE, (ts as f64) / 1000.0 + 0.5).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].1, 3.0);
}
