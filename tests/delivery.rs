//! Delivery never stops collection: the reporter binary in `start` mode with
//! several targets while one of them is dead, as a user would run it.
//!
//! - A target that accepts connections and never answers: cycles keep their
//!   pace, `/metrics` stays current and the other target gets every cycle.
//! - Prometheus 2.42 stopped for 30 s and started again on the same port
//!   and storage: VictoriaMetrics and the Pushgateway keep receiving every
//!   cycle meanwhile, and Prometheus ends up with no gap.
//!
//! vcsim must be built first: `scripts/build-vcsim.sh` (scripts/test.sh does it).

#[path = "support/fake_ci.rs"]
mod fake_ci;
#[path = "support/pushgateway.rs"]
mod pushgateway;
#[path = "support/receivers.rs"]
mod receivers;
#[path = "support/reporter.rs"]
mod reporter;
#[path = "support/vcsim.rs"]
mod vcsim;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fake_ci::FakeCi;
use receivers::{Peer, StubReceiver, free_port};
use reporter::{Reporter, cycles, scrape, scrape_until, value_of};
use vcsim::Vcsim;

const SCRAPES: &str = "vsphere_ci_user_sessions_exporter_scrapes_total";

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// vcsim, the fake deck and build cluster (no jobs), a temp dir.
struct World {
    vcsim: Vcsim,
    ci: FakeCi,
    dir: tempfile::TempDir,
}

impl World {
    async fn start() -> World {
        let vcsim = Vcsim::start(&["-session", "ci-user-1@vsphere.local,govc,2"]);
        let ci = FakeCi::start().await;
        World {
            vcsim,
            ci,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// `start --config` with this world's sources and `sinks` (YAML lines),
    /// one cycle a second, /metrics on a free port.
    fn start_reporter(&self, sinks: &str) -> (Reporter, u16) {
        let port = free_port();
        let kubeconfig = self.ci.kubeconfig_in(self.dir.path());
        let config = format!(
            "vcenters:\n  - url: {vc}\n    username: reporter@vsphere.local\n    password: pw\n\
             prow:\n  url: {deck}\nkubeconfig: {kc}\nlisten_port: {port}\ninterval: 1s\n{sinks}",
            vc = self.vcsim.url().as_str().trim_end_matches('/'),
            deck = self.ci.url(),
            kc = kubeconfig.display(),
        );
        let path = self.dir.path().join("config.yaml");
        std::fs::write(&path, config).unwrap();
        let reporter = Reporter::spawn(
            &[
                "start".into(),
                "--config".into(),
                path.display().to_string(),
            ],
            self.dir.path(),
        );
        (reporter, port)
    }
}

/// A TCP port that accepts connections and never answers; the thread holds
/// every connection open for the life of the test process.
fn black_hole() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_costs_only_its_own_queue() {
    let world = World::start().await;
    let dead = black_hole();
    let good = StubReceiver::start().await;
    let (reporter, port) = world.start_reporter(&format!(
        "remote_write:\n  - url: http://127.0.0.1:{dead}/api/v1/write\n    name: dead\n  \
         - url: {}\n    name: good\n",
        good.url
    ));
    let first = scrape_until(&reporter, port, Duration::from_secs(30), "a cycle", |t| {
        cycles(t) >= 1.0
    })
    .await;
    let (c0, t0) = (cycles(&first), Instant::now());

    // Eight seconds later: with the dead target's 30 s timeout, a cycle
    // waiting on it would have run once; handed off, about eight run.
    while t0.elapsed() < Duration::from_secs(8) {
        let text = scrape(port).await.expect("/metrics answers throughout");
        assert!(cycles(&text) >= c0, "{text}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let text = scrape(port).await.unwrap();
    // The default address serves IPv6 as well as IPv4.
    let over_v6 = reqwest::get(format!("http://[::1]:{port}/healthz"))
        .await
        .expect("/healthz answers on [::1]");
    assert!(over_v6.status().is_success());
    let ran = cycles(&text) - c0;
    assert!(
        ran >= 5.0,
        "only {ran} cycles in 8 s; log:\n{}",
        reporter.log()
    );
    // A cycle waiting on the dead target would skip about eight ticks; a
    // loaded machine may make a cycle outlast its 1 s tick now and then.
    let skipped = value_of(&text, "vsphere_ci_user_sessions_cycles_skipped_total")
        .expect("the skipped counter is served");
    assert!(skipped <= 2.0, "{skipped} ticks skipped");

    // The good target got every cycle: one distinct cycle count per cycle
    // (each handed off when its cycle ended, so waited for a little).
    let delivered = || -> BTreeSet<i64> {
        good.requests()
            .iter()
            .flat_map(|r| r.series())
            .filter(|(labels, _)| labels.iter().any(|(k, v)| k == "__name__" && v == SCRAPES))
            .flat_map(|(_, samples)| samples.into_iter().map(|(_, v)| v as i64))
            .collect()
    };
    let last = cycles(&text) as i64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(1..=last).all(|n| delivered().contains(&n)) {
        assert!(
            Instant::now() < deadline,
            "cycles 1..={last} not all at the good target: {:?}",
            delivered()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The dead one is behind, and says so.
    let behind = |name: &str| {
        value_of(
            &text,
            &format!("vsphere_ci_user_sessions_remote_write_{name}{{target=\"dead\"}}"),
        )
        .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
    };
    assert!(behind("buffered_samples") > 0.0);
    assert!(behind("oldest_buffered_age_seconds") >= 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30_second_prometheus_outage_leaves_no_gap_and_the_others_miss_no_cycle() {
    let world = World::start().await;
    let mut prometheus = Peer::prometheus();
    let victoria = Peer::victoria_metrics();
    let gateway = pushgateway::Pushgateway::start().await;
    let (reporter, port) = world.start_reporter(&format!(
        "remote_write:\n  - url: {}\n    name: prometheus\n    queue_config: {{max_backoff: 2s}}\n  \
         - url: {}\n    name: victoria\npushgateway:\n  url: {}\n",
        prometheus.write_url(),
        victoria.write_url(),
        gateway.url
    ));
    scrape_until(&reporter, port, Duration::from_secs(30), "3 cycles", |t| {
        cycles(t) >= 3.0
    })
    .await;

    prometheus.stop();
    let outage_start = unix_now();
    let started = Instant::now();
    // Meanwhile the Pushgateway gets every cycle: its group's value follows
    // the cycle count within a few cycles (two, or three on a busy machine).
    while started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let text = scrape(port)
            .await
            .expect("/metrics answers during the outage");
        let now_cycles = cycles(&text);
        let group = gateway
            .group(&[("job", "vsphere-ci-session-metrics")])
            .await
            .expect("the group exists");
        let pushed = group.own_gauge(SCRAPES);
        assert!(
            now_cycles - pushed <= 3.0,
            "the gateway is behind: {pushed} pushed, {now_cycles} run"
        );
    }
    prometheus.start();
    let outage_end = unix_now();

    // The backlog reaches Prometheus.
    scrape_until(
        &reporter,
        port,
        Duration::from_secs(60),
        "an empty queue",
        |t| {
            value_of(
                t,
                "vsphere_ci_user_sessions_remote_write_buffered_samples{target=\"prometheus\"}",
            ) == Some(0.0)
        },
    )
    .await;

    let seconds = outage_end - outage_start;
    let window = format!("{}s", seconds.ceil() as u64);
    for (peer, name) in [(&prometheus, "Prometheus"), (&victoria, "VictoriaMetrics")] {
        let stored = peer.raw_samples(SCRAPES, &window, outage_end).await;
        let samples: usize = stored.iter().map(|(_, s)| s.len()).sum();
        assert!(
            // A cycle a second, less the ticks a busy machine skips.
            samples as f64 >= 0.8 * seconds,
            "{name} holds {samples} samples for a {seconds:.0} s outage"
        );
        // And the counter kept its pace: a cycle a second.
        let values: Vec<f64> = stored
            .iter()
            .flat_map(|(_, s)| s.iter().map(|p| p.1))
            .collect();
        // No gap: every cycle of the outage is there. (A skipped tick makes
        // no cycle, so this holds on a busy machine too.)
        let mut numbers: Vec<i64> = values.iter().map(|v| *v as i64).collect();
        numbers.sort_unstable();
        numbers.dedup();
        let missing_after: Vec<i64> = numbers
            .windows(2)
            .filter(|w| w[1] != w[0] + 1)
            .map(|w| w[0])
            .collect();
        assert!(
            missing_after.is_empty(),
            "{name}: cycles missing after {missing_after:?}"
        );
        let span = values.iter().cloned().fold(f64::MIN, f64::max)
            - values.iter().cloned().fold(f64::MAX, f64::min);
        assert!(
            span >= 0.8 * seconds - 1.0,
            "{name}: the cycle count advanced by {span}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_dead_target_releases_the_vcenter_session_at_once_and_exits_in_time() {
    let world = World::start().await;
    let dead = black_hole();
    let (mut reporter, port) = world.start_reporter(&format!(
        "remote_write:\n  - url: http://127.0.0.1:{dead}/api/v1/write\n"
    ));
    scrape_until(&reporter, port, Duration::from_secs(30), "2 cycles", |t| {
        cycles(t) >= 2.0
    })
    .await;
    let admin = world.vcsim.admin().await;
    let ours = || async {
        admin
            .sessions_with_agent("vsphere-ci-session-metrics")
            .await
            .len()
    };
    assert_eq!(ours().await, 1);

    let signalled = Instant::now();
    reporter.terminate();
    // The logout does not wait for the dead target's stale markers.
    while ours().await > 0 {
        assert!(
            signalled.elapsed() < Duration::from_secs(5),
            "the vCenter session outlived SIGTERM by 5 s; log:\n{}",
            reporter.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The sinks' 8 s shutdown budget, well inside Kubernetes' 30 s.
    let status = reporter.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status:?}; log:\n{}", reporter.log());
}
