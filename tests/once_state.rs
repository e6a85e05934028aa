//! `once --state-file`: runs of the binary that remember what the last one
//! sent, as a cron job or Kubernetes CronJob runs them. A stub receiver
//! records every request, decoded from the wire.
//!
//! vcsim must be built first: `scripts/build-vcsim.sh` (scripts/test.sh does it).

#[path = "support/fake_ci.rs"]
mod fake_ci;
#[path = "support/receivers.rs"]
mod receivers;
#[path = "support/reporter.rs"]
mod reporter;
#[path = "support/vcsim.rs"]
mod vcsim;

use std::path::{Path, PathBuf};
use std::time::Duration;

use fake_ci::{CompactScenario, FakeCi};
use receivers::{Captured, Reply, StubReceiver};
use reporter::run_to_end;
use vcsim::Vcsim;

const CORRELATED: &str = "vsphere_ci_user_sessions_correlated";
const SCRAPES: &str = "vsphere_ci_user_sessions_exporter_scrapes_total";
const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Job A runs (as ci-user-1) or has ended.
fn scenario(with_a: bool) -> fake_ci::Scenario {
    let a = r#"{"name": "pj-a", "build_id": "3001", "target": "e2e-vsphere", "ci_namespace": "ci-op-aaaaaaaa",
                "secret": {"metadata.json": {"vsphere": {"vCenter": "127.0.0.1", "username": "ci-user-1@vsphere.local"}}}}"#;
    let jobs = if with_a { a } else { "" };
    CompactScenario::parse(&format!(
        r#"{{"token": "{}", "jobs": [{jobs}]}}"#,
        fake_ci::DEFAULT_TOKEN
    ))
    .expect("valid scenario")
    .into_scenario()
}

struct World {
    vcsim: Vcsim,
    ci: FakeCi,
    stub: StubReceiver,
    dir: tempfile::TempDir,
    state: PathBuf,
}

impl World {
    async fn start() -> World {
        let vcsim = Vcsim::start(&["-session", "ci-user-1@vsphere.local,govc,2"]);
        let ci = FakeCi::start().await;
        ci.set_scenario(scenario(true));
        let stub = StubReceiver::start().await;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        World {
            vcsim,
            ci,
            stub,
            dir,
            state,
        }
    }

    /// One `once` run with the state file; returns its exit code and log.
    fn once(&self) -> (Option<i32>, String) {
        let kubeconfig = self.ci.kubeconfig_in(self.dir.path());
        let config = format!(
            "vcenters:\n  - url: {vc}\n    username: reporter@vsphere.local\n    password: pw\n\
             prow:\n  url: {deck}\nkubeconfig: {kc}\nlisten_port: 0\nstate_file: {state}\n\
             remote_write:\n  - url: {stub}\n    remote_timeout: 2s\n    \
             queue_config: {{min_backoff: 50ms, max_backoff: 200ms}}\n",
            vc = self.vcsim.url().as_str().trim_end_matches('/'),
            deck = self.ci.url(),
            kc = kubeconfig.display(),
            state = self.state.display(),
            stub = self.stub.url,
        );
        let path = self.dir.path().join("config.yaml");
        std::fs::write(&path, config).unwrap();
        let (status, log, _) = run_to_end(
            &["once".into(), "--config".into(), path.display().to_string()],
            self.dir.path(),
            Duration::from_secs(30),
        );
        (status.code(), log)
    }
}

/// Samples of the series named `name` (and whose labels include `with`) in
/// `requests`, in wire order, with values as bits.
fn samples(requests: &[Captured], name: &str, with: (&str, &str)) -> Vec<(i64, u64)> {
    requests
        .iter()
        .flat_map(|r| r.series())
        .filter(|(labels, _)| {
            labels.iter().any(|(k, v)| k == "__name__" && v == name)
                && (with.0.is_empty() || labels.iter().any(|(k, v)| k == with.0 && v == with.1))
        })
        .flat_map(|(_, s)| s)
        .map(|(ts, v)| (ts, v.to_bits()))
        .collect()
}

fn state_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("the state file exists"))
        .expect("the state file is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_remember_what_ended_and_what_was_not_delivered() {
    let world = World::start().await;

    // Run 1: job A runs, the receiver takes everything.
    let (code, log) = world.once();
    assert_eq!(code, Some(0), "{log}");
    let run1 = world.stub.requests();
    let a1 = samples(&run1, CORRELATED, ("build_id", "3001"));
    assert!(!a1.is_empty(), "job A's series were sent");
    let t1 = a1[0].0;

    // Run 2: job A ended, the receiver is down: exit 1, the cycle (with
    // the stale marker for A's series) stays in the file.
    world.ci.set_scenario(scenario(false));
    world.stub.default_reply(Reply::status(503));
    let (code, log) = world.once();
    assert_eq!(code, Some(1), "{log}");
    let summary = log
        .lines()
        .find(|l| l.contains("Once failed"))
        .unwrap_or_else(|| panic!("no summary line: {log}"));
    assert!(
        summary.contains("is behind: 1 cycle ("),
        "the summary says the target is behind: {summary}"
    );
    let state = state_json(&world.state);
    let backlog = &state["sinks"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .expect("the target's entry")["backlog"];
    assert_eq!(backlog.as_array().map(Vec::len), Some(1), "{state}");

    // Run 3: the receiver is back: run 2's cycle first, then run 3's, and
    // A's series ends with a stale marker right after its last value.
    world.stub.default_reply(Reply::status(204));
    let before = world.stub.requests().len();
    let (code, log) = world.once();
    assert_eq!(code, Some(0), "{log}");
    let run3 = world.stub.requests()[before..].to_vec();
    let a3 = samples(&run3, CORRELATED, ("build_id", "3001"));
    assert_eq!(
        a3.len(),
        a1.len(),
        "one stale marker per series of job A: {a3:?}"
    );
    let t2 = a3[0].0;
    assert!(t2 > t1);
    assert!(
        a3.iter()
            .all(|&(ts, bits)| ts == t2 && bits == STALE_NAN_BITS)
    );
    let cycles: Vec<f64> = samples(&run3, SCRAPES, ("", ""))
        .into_iter()
        .map(|(_, bits)| f64::from_bits(bits))
        .collect();
    assert_eq!(cycles.len(), 2, "run 2's cycle and run 3's: {cycles:?}");
    let times: Vec<i64> = samples(&run3, SCRAPES, ("", ""))
        .iter()
        .map(|s| s.0)
        .collect();
    assert!(times[0] == t2 && times[1] > t2, "oldest first: {times:?}");

    let state = state_json(&world.state);
    let entry = state["sinks"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    assert_eq!(entry["backlog"].as_array().map(Vec::len), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_is_set_aside_in_one_line_and_loses_nothing() {
    let world = World::start().await;
    std::fs::write(&world.state, "{\"format\": \"vsphere-ci-sess").unwrap();
    let (code, log) = world.once();
    assert_eq!(code, Some(0), "{log}");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("state file is not usable"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains(&world.state.display().to_string()),
        "{}",
        lines[0]
    );
    let aside: Vec<_> = std::fs::read_dir(world.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.json.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1);
    // The cycle went out, and a good file replaced the bad one.
    assert!(!samples(&world.stub.requests(), SCRAPES, ("", "")).is_empty());
    assert_eq!(
        state_json(&world.state)["format"],
        "vsphere-ci-session-metrics/state"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_racing_on_one_file_never_leave_a_torn_one() {
    let world = World::start().await;
    let (first, second) = std::thread::scope(|s| {
        let a = s.spawn(|| world.once());
        let b = s.spawn(|| world.once());
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(first.0, Some(0), "{}", first.1);
    assert_eq!(second.0, Some(0), "{}", second.1);
    assert_eq!(
        state_json(&world.state)["format"],
        "vsphere-ci-session-metrics/state"
    );
    let leftovers: Vec<String> = std::fs::read_dir(world.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
