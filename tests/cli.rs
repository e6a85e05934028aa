//! The built binary run as a process, end to end, against real peers: vcsim
//! for vCenter, the in-process fake Kubernetes API and deck for Prow and the
//! build cluster, real Prometheus 2.42 and the Pushgateway for pushes.
//!
//! Every expected value below is worked out from the scenario the test sets
//! up (sessions seeded into vcsim, jobs served by the fake), never copied
//! from the reporter's output.

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

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fake_ci::{CompactScenario, FakeCi, Route};
use reporter::{
    BIN, Reporter, correlated_lines, cycles, mask_varying, promtool_check, run_to_end, scrape,
    scrape_until, strings, value_of,
};
use vcsim::Vcsim;
/// The reporter's own vCenter login in these tests.
const REPORTER_USER: &str = "reporter@vsphere.local";
const REPORTER_AGENT: &str = "vsphere-ci-session-metrics";
const VCENTER: &str = "127.0.0.1";

// Sessions seeded into vcsim: (user as logged in, user agent, count).
const SEEDED: &[(&str, &str, usize)] = &[
    ("ci-user-1@vsphere.local", "openshift-install", 3),
    (r"VSPHERE.LOCAL\ci-user-1", "csi-driver", 2),
    ("ci-user-2@vsphere.local", "machine-api-operator", 1),
    ("ci-user-3@vsphere.local", "govc", 2),
];

/// A running job of the scenario and the user its secret names.
struct ExpectedJob {
    name: &'static str,
    build_id: &'static str,
    job: &'static str,
    pull: &'static str,
    user: &'static str,
}

const JOB_A: ExpectedJob = ExpectedJob {
    name: "pj-a",
    build_id: "1001",
    job: "pull-ci-openshift-installer-main-e2e-vsphere-ovn",
    pull: "https://github.com/openshift/installer/pull/1",
    user: "ci-user-1",
};
const JOB_B: ExpectedJob = ExpectedJob {
    name: "pj-b",
    build_id: "1002",
    job: "periodic-ci-openshift-release-master-nightly-e2e-vsphere-upi",
    pull: "",
    user: "ci-user-1",
};
const JOB_C: ExpectedJob = ExpectedJob {
    name: "pj-c",
    build_id: "1003",
    job: "pull-ci-openshift-machine-api-operator-main-e2e-vsphere-operator",
    pull: "https://github.com/openshift/machine-api-operator/pull/3",
    user: "ci-user-2",
};

/// The fake's scenario: jobs A and B share ci-user-1 (metadata.json, and
/// platform.json behind the log fallback), C logs in as ci-user-2 with only
/// govc.sh, D is an AWS job, E has finished, F uses ci-user-3 on another
/// vCenter. With `with_c = false`, job C has ended.
fn scenario(with_c: bool) -> CompactScenario {
    let c = if with_c {
        format!(
            r#"{{"name": "{}", "build_id": "{}", "job": "{}", "target": "e2e-vsphere-operator",
                "pull": "{}", "ci_namespace": "ci-op-cccccccc",
                "secret": {{"govc.sh": "export GOVC_URL='https://{VCENTER}/sdk'\nexport GOVC_USERNAME='{}@vsphere.local'\nexport GOVC_PASSWORD='never-log-me'\n"}}}},"#,
            JOB_C.name, JOB_C.build_id, JOB_C.job, JOB_C.pull, JOB_C.user
        )
    } else {
        String::new()
    };
    let text = format!(
        r#"{{"token": "{token}", "jobs": [
            {{"name": "{a}", "build_id": "{a_build}", "job": "{a_job}", "target": "e2e-vsphere-ovn",
              "pull": "{a_pull}", "ci_namespace": "ci-op-aaaaaaaa",
              "secret": {{"metadata.json": {{"vsphere": {{"vCenter": "{VCENTER}", "username": "{a_user}@vsphere.local", "password": "never-log-me"}}}}}}}},
            {{"name": "{b}", "build_id": "{b_build}", "job": "{b_job}", "target": "e2e-vsphere-upi",
              "ci_namespace": "ci-op-bbbbbbbb", "namespace_via": "log",
              "secret": {{"platform.json": {{"vcenters": [{{"server": "{VCENTER}", "user": "{b_user}@vsphere.local", "password": "never-log-me"}}]}}}}}},
            {c}
            {{"name": "pj-d", "cloud": "aws", "cluster": "build01", "target": "e2e-aws"}},
            {{"name": "pj-e", "state": "success", "target": "e2e-vsphere-zones"}},
            {{"name": "pj-f", "target": "e2e-vsphere-multi", "ci_namespace": "ci-op-ffffffff",
              "secret": {{"metadata.json": {{"vsphere": {{"vCenter": "vcenter.other.example.com", "username": "ci-user-3@vsphere.local"}}}}}}}}
        ]}}"#,
        token = fake_ci::DEFAULT_TOKEN,
        a = JOB_A.name,
        a_build = JOB_A.build_id,
        a_job = JOB_A.job,
        a_pull = JOB_A.pull,
        a_user = JOB_A.user,
        b = JOB_B.name,
        b_build = JOB_B.build_id,
        b_job = JOB_B.job,
        b_user = JOB_B.user,
    );
    CompactScenario::parse(&text).expect("the test scenario is valid")
}

/// The correlated series a scrape must show for the jobs given: for each job,
/// one line per user agent of its user, with that user's session count.
fn expected_correlated(jobs: &[&ExpectedJob]) -> Vec<String> {
    let mut lines = Vec::new();
    for job in jobs {
        let mut agents: Vec<(&str, usize)> = Vec::new();
        for (user, agent, count) in SEEDED {
            let normal = user
                .trim_start_matches(r"VSPHERE.LOCAL\")
                .trim_end_matches("@vsphere.local");
            if normal == job.user {
                match agents.iter_mut().find(|(a, _)| a == agent) {
                    Some(entry) => entry.1 += count,
                    None => agents.push((agent, *count)),
                }
            }
        }
        for (agent, count) in agents {
            lines.push(format!(
                "vsphere_ci_user_sessions_correlated{{build_id=\"{}\",ci_job=\"{}\",pull_request=\"{}\",user_agent=\"{}\",username=\"{}\",vcenter=\"{VCENTER}\"}} {}",
                job.build_id, job.job, job.pull, agent, job.user, count
            ));
        }
    }
    lines.sort();
    lines
}

/// vcsim with the seeded sessions, the fake CI with the scenario, and a
/// kubeconfig reaching the fake.
struct World {
    vcsim: Vcsim,
    ci: FakeCi,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl World {
    async fn start() -> World {
        let mut args: Vec<String> = Vec::new();
        for (user, agent, count) in SEEDED {
            args.push("-session".into());
            args.push(format!("{user},{agent},{count}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let vcsim = Vcsim::start(&args);
        let ci = FakeCi::start().await;
        ci.set_scenario(scenario(true).into_scenario());
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = ci.kubeconfig_in(dir.path());
        World {
            vcsim,
            ci,
            dir,
            kubeconfig,
        }
    }

    /// The reporter's flags for this world, in the original's form.
    fn flags(&self) -> Vec<String> {
        vec![
            "--kubeconfig".into(),
            self.kubeconfig.display().to_string(),
            "--vsphere".into(),
            self.vcsim.url().as_str().trim_end_matches('/').to_string(),
            "--vsphere-user".into(),
            REPORTER_USER.into(),
            "--vsphere-passwd".into(),
            "p<&'\"ss".into(),
            "--prow".into(),
            self.ci.url(),
        ]
    }

    /// `start` with this world's flags, a free `--listen-port`, a cycle
    /// every second and `extra` flags.
    fn start_reporter(&self, extra: &[&str]) -> (Reporter, u16) {
        let port = receivers::free_port();
        let mut args = vec!["start".to_string()];
        args.extend(self.flags());
        args.extend(strings(&[
            "--listen-port",
            &port.to_string(),
            "--interval",
            "1s",
        ]));
        args.extend(strings(extra));
        (Reporter::spawn(&args, self.dir.path()), port)
    }

    /// `once` with this world's flags, no HTTP endpoint and `extra` flags.
    fn once_args(&self, extra: &[&str]) -> Vec<String> {
        let mut args = vec!["once".to_string()];
        args.extend(self.flags());
        args.extend(strings(&["--listen-port", "0"]));
        args.extend(strings(extra));
        args
    }

    /// How many sessions of the reporter's user agent an admin sees.
    async fn reporter_sessions(&self) -> usize {
        let admin = self.vcsim.admin().await;
        let n = admin.sessions_with_agent(REPORTER_AGENT).await.len();
        admin.logout().await;
        n
    }
}

#[test]
fn start_help_lists_every_flag_of_the_original_and_the_new_ones() {
    let out = Command::new(BIN)
        .args(["start", "--help"])
        .env_clear()
        .output()
        .expect("binary runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for (flag, env) in [
        ("--kubeconfig", Some("KUBECONFIG")),
        ("--build-kubeconfig", None),
        ("--prow-kubeconfig", Some("PROW_KUBECONFIG")),
        ("--prow", Some("PROW")),
        ("--vsphere", Some("VSPHERE")),
        ("--vsphere-user", Some("VSPHERE_USER")),
        ("--vsphere-passwd", Some("VSPHERE_PASSWD")),
        ("--vsphere-passwd-file", Some("VSPHERE_PASSWD_FILE")),
        ("--vsphere-user-agent", Some("VSPHERE_USER_AGENT")),
        ("--vsphere-ca-file", Some("VSPHERE_CA_FILE")),
        ("--vsphere-insecure", Some("VSPHERE_INSECURE")),
        ("--listen-port", Some("LISTEN_PORT")),
        ("--log-level", Some("LOG_LEVEL")),
        ("--log-format", Some("LOG_FORMAT")),
        ("--interval", Some("INTERVAL")),
        ("--schedule", Some("SCHEDULE")),
        ("--config", Some("CONFIG")),
        ("--remote-write", Some("REMOTE_WRITE")),
        ("--pushgateway", Some("PUSHGATEWAY")),
        ("--pushgateway-job", Some("PUSHGATEWAY_JOB")),
        ("--pushgateway-grouping", None),
    ] {
        let listed = [" ", "]", ","]
            .iter()
            .any(|end| help.contains(&format!("{flag}{end}")));
        assert!(listed, "{flag} missing from:\n{help}");
        if let Some(env) = env {
            assert!(
                help.contains(&format!("[env: {env}")),
                "{env} missing from:\n{help}"
            );
        }
    }
    for default in [
        "prow.ci.openshift.org",
        "8090",
        "vsphere-ci-session-metrics",
        "60s",
        "info",
    ] {
        assert!(
            help.contains(default),
            "default {default} missing from:\n{help}"
        );
    }
}

#[test]
fn a_bad_setting_fails_at_start_with_one_line_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "start",
                "--vsphere-user",
                "u",
                "--vsphere-passwd",
                "tops3cret",
            ],
            "error: --vsphere (VSPHERE) is required",
        ),
        (
            &[
                "once",
                "--vsphere",
                "vc",
                "--vsphere-user",
                "u",
                "--vsphere-passwd",
                "tops3cret",
                "--interval",
                "often",
            ],
            "error: --interval (INTERVAL) \"often\": not a duration",
        ),
        (
            &[
                "start",
                "--vsphere",
                "vc",
                "--vsphere-user",
                "u",
                "--vsphere-passwd",
                "tops3cret",
                "--schedule",
                "61 * * * *",
            ],
            "error: --schedule",
        ),
        (
            &[
                "start",
                "--vsphere",
                "vc",
                "--vsphere-user",
                "u",
                "--vsphere-passwd",
                "tops3cret",
                "--config",
                "/nonexistent/c.yaml",
            ],
            "error: --config (CONFIG) /nonexistent/c.yaml: cannot read",
        ),
        (
            &[
                "once",
                "--vsphere",
                "vc",
                "--vsphere-user",
                "u",
                "--vsphere-passwd",
                "tops3cret",
                "--kubeconfig",
                "/nonexistent/kc",
            ],
            "error: --kubeconfig (KUBECONFIG): ",
        ),
        (
            &[
                "once",
                "--vsphere",
                "vc",
                "--vsphere-user",
                "u",
                "--vsphere-passwd",
                "pw",
                "--remote-write",
                "http://u:tops3cret@127.0.0.1:1/api/v1/write",
            ],
            "error: remote_write[0] (",
        ),
        (
            &[
                "once",
                "--vsphere",
                "vc",
                "--vsphere-user",
                "u",
                "--vsphere-passwd",
                "tops3cret",
                "--schedule",
                "0s",
            ],
            "error: --schedule",
        ),
    ];
    for (args, want) in cases {
        let (status, log, _) = run_to_end(&strings(args), dir.path(), Duration::from_secs(10));
        assert_eq!(status.code(), Some(2), "{args:?}: {log}");
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: expected one line, got:\n{log}");
        assert!(
            lines[0].starts_with(want),
            "{args:?}: want {want:?}, got {log:?}"
        );
        assert!(!log.contains("tops3cret"), "password leaked: {log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_serves_exact_correlated_counts_and_holds_one_session_however_many_cycles() {
    let world = World::start().await;
    let (mut reporter, port) = world.start_reporter(&[]);

    let text = scrape_until(&reporter, port, Duration::from_secs(60), "6 cycles", |t| {
        cycles(t) >= 6.0
    })
    .await;

    assert_eq!(
        correlated_lines(&text),
        expected_correlated(&[&JOB_A, &JOB_B, &JOB_C]),
        "full output:\n{text}"
    );
    // The whole exposition, against the golden file. Its values follow from
    // SEEDED and the scenario: 9 sessions (3 + 2 + 1 + 2 seeded and the
    // reporter's own), ci-user-1 shared by jobs A and B, 4 running vSphere
    // jobs (A, B, C and F, whose user is on another vCenter: one unmatched
    // identity), none unresolved, one login. ci-user-3's two sessions are
    // orphaned (no running job uses it here); nothing is attributed (no CSI
    // agent names a cluster, no VM has a guest IP); nothing is idle an hour;
    // the VM map holds vcsim's 4 model VMs. Durations, cycle counts, ages
    // and the VM map's bytes vary: masked.
    assert_eq!(
        mask_varying(&text),
        std::fs::read_to_string("tests/fixtures/golden/start_metrics.txt").unwrap(),
        "/metrics differs from tests/fixtures/golden/start_metrics.txt"
    );
    // Exact per-user totals, whatever the number of jobs sharing the user.
    let open = |user: &str, agent: &str| {
        value_of(
            &text,
            &format!(
                "vsphere_ci_user_sessions_open{{user_agent=\"{agent}\",username=\"{user}\",vcenter=\"{VCENTER}\"}}"
            ),
        )
    };
    assert_eq!(open("ci-user-1", "openshift-install"), Some(3.0));
    assert_eq!(open("ci-user-1", "csi-driver"), Some(2.0));
    assert_eq!(open("ci-user-3", "govc"), Some(2.0));
    assert_eq!(open("reporter", REPORTER_AGENT), Some(1.0), "{text}");
    assert_eq!(
        value_of(
            &text,
            &format!(
                "vsphere_ci_user_sessions_user_jobs{{username=\"ci-user-1\",vcenter=\"{VCENTER}\"}}"
            )
        ),
        Some(2.0)
    );
    assert_eq!(
        value_of(
            &text,
            &format!("vsphere_ci_user_sessions_reporter_logins_total{{vcenter=\"{VCENTER}\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        value_of(
            &text,
            &format!("vsphere_ci_user_sessions_vcenter_up{{vcenter=\"{VCENTER}\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        value_of(&text, "vsphere_ci_user_sessions_prow_up"),
        Some(1.0)
    );
    // A, B, C and F run on vSphere; F's user is on another vCenter.
    assert_eq!(
        value_of(&text, "vsphere_ci_user_sessions_running_jobs"),
        Some(4.0)
    );
    assert_eq!(
        value_of(&text, "vsphere_ci_user_sessions_unresolved_jobs"),
        Some(0.0)
    );
    promtool_check(&text);

    // One reporter session on the vCenter after all those cycles, and none
    // once it has stopped.
    assert_eq!(world.reporter_sessions().await, 1);
    // A steady cycle reads no secrets: resolved jobs are cached.
    let secrets_before = world.ci.count(Route::Secret);
    let cycles_before = cycles(&text);
    scrape_until(
        &reporter,
        port,
        Duration::from_secs(30),
        "2 more cycles",
        |t| cycles(t) >= cycles_before + 2.0,
    )
    .await;
    assert_eq!(world.ci.count(Route::Secret), secrets_before);

    reporter.terminate();
    let status = reporter.wait_exit(Duration::from_secs(30));
    assert!(
        status.success(),
        "exit {status:?}; log:\n{}",
        reporter.log()
    );
    assert_eq!(
        world.reporter_sessions().await,
        0,
        "log:\n{}",
        reporter.log()
    );
    let log = reporter.log();
    assert!(
        !log.contains("never-log-me") && !log.contains("p<&'"),
        "a password leaked:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_terminated_from_outside_is_replaced_by_exactly_one() {
    let world = World::start().await;
    let (reporter, port) = world.start_reporter(&[]);
    scrape_until(
        &reporter,
        port,
        Duration::from_secs(60),
        "a first cycle",
        |t| cycles(t) >= 1.0,
    )
    .await;

    let admin = world.vcsim.admin().await;
    let ours = admin.sessions_with_agent(REPORTER_AGENT).await;
    assert_eq!(ours.len(), 1);
    admin.terminate(&ours[0].key).await;

    let text = scrape_until(
        &reporter,
        port,
        Duration::from_secs(30),
        "a second login",
        |t| {
            value_of(
                t,
                &format!("vsphere_ci_user_sessions_reporter_logins_total{{vcenter=\"{VCENTER}\"}}"),
            ) == Some(2.0)
        },
    )
    .await;
    assert_eq!(
        value_of(
            &text,
            &format!("vsphere_ci_user_sessions_vcenter_up{{vcenter=\"{VCENTER}\"}}")
        ),
        Some(1.0)
    );
    let now = admin.sessions_with_agent(REPORTER_AGENT).await;
    assert_eq!(now.len(), 1, "exactly one new reporter session");
    assert_ne!(now[0].key, ours[0].key);
    admin.logout().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deck_input_sets_prow_up_to_zero_and_the_process_keeps_serving() {
    let world = World::start().await;
    let (mut reporter, port) = world.start_reporter(&[]);
    scrape_until(&reporter, port, Duration::from_secs(60), "prow up", |t| {
        value_of(t, "vsphere_ci_user_sessions_prow_up") == Some(1.0)
    })
    .await;

    for fault in [
        fake_ci::Fault::raw(
            200,
            "text/html",
            "<html><body>Service Unavailable</body></html>",
        ),
        fake_ci::Fault::raw(
            200,
            "application/json",
            "{\"items\": [{\"metadata\": {\"name\": ",
        ),
        fake_ci::Fault::status(500),
    ] {
        world.ci.set_fault(Route::Deck, fault);
        let text = scrape_until(&reporter, port, Duration::from_secs(30), "prow down", |t| {
            value_of(t, "vsphere_ci_user_sessions_prow_up") == Some(0.0)
        })
        .await;
        // Sessions are still reported while Prow is down.
        assert_eq!(
            value_of(
                &text,
                &format!("vsphere_ci_user_sessions_vcenter_up{{vcenter=\"{VCENTER}\"}}")
            ),
            Some(1.0)
        );
        assert!(
            correlated_lines(&text).is_empty(),
            "no job is claimed while Prow is down"
        );
        world.ci.clear_fault(Route::Deck);
        let text = scrape_until(&reporter, port, Duration::from_secs(30), "prow back", |t| {
            value_of(t, "vsphere_ci_user_sessions_prow_up") == Some(1.0)
        })
        .await;
        assert_eq!(
            correlated_lines(&text),
            expected_correlated(&[&JOB_A, &JOB_B, &JOB_C])
        );
    }
    let log = reporter.log();
    assert!(
        log.contains("Listing running jobs failed"),
        "no clear log line:\n{log}"
    );
    assert!(reporter.is_running(), "the reporter must keep running");
    reporter.terminate();
    assert!(reporter.wait_exit(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_example_command_line_runs_unchanged() {
    // From the original README: `--kubeconfig mykc --vsphere vc.example.com
    // --vsphere-user administrator@vsphere.local --vsphere-passwd tops3cret`,
    // run in a directory holding `mykc`. vc.example.com is not reachable
    // here, so the vCenter is reported down while /metrics serves (on a free port here, given by LISTEN_PORT).
    let ci = FakeCi::start().await;
    ci.set_scenario(scenario(true).into_scenario());
    let dir = tempfile::tempdir().unwrap();
    ci.write_kubeconfig(&dir.path().join("mykc")).unwrap();
    let log = dir.path().join("reporter.log");
    let port = receivers::free_port();
    let child = Command::new(BIN)
        .current_dir(dir.path())
        .args([
            "start",
            "--kubeconfig",
            "mykc",
            "--vsphere",
            "vc.example.com",
            "--vsphere-user",
            "administrator@vsphere.local",
            "--vsphere-passwd",
            "tops3cret",
        ])
        .env_clear()
        // Prow's public deck is not reachable here, and 8090 may be taken on
        // a shared machine: the environment (not the command line) points at
        // the fake deck and a free port.
        .env("PROW", ci.url())
        .env("LISTEN_PORT", port.to_string())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut reporter = Reporter::adopt(child, log);
    let text = scrape_until(
        &reporter,
        port,
        Duration::from_secs(90),
        "vcenter down",
        |t| {
            value_of(
                t,
                "vsphere_ci_user_sessions_vcenter_up{vcenter=\"vc.example.com\"}",
            ) == Some(0.0)
        },
    )
    .await;
    assert_eq!(
        value_of(&text, "vsphere_ci_user_sessions_prow_up"),
        Some(1.0)
    );
    reporter.terminate();
    assert!(reporter.wait_exit(Duration::from_secs(30)).success());
    assert!(!reporter.log().contains("tops3cret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_pushes_the_exact_series_to_prometheus_and_the_pushgateway_and_exits_zero() {
    let world = World::start().await;
    let prometheus = receivers::Peer::prometheus();
    let gateway = pushgateway::Pushgateway::start().await;
    let args = world.once_args(&[
        "--remote-write",
        &prometheus.write_url(),
        "--pushgateway",
        gateway.url.as_str(),
    ]);
    let (status, log, _) = run_to_end(&args, world.dir.path(), Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "log:\n{log}");

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let stored = prometheus
        .query("vsphere_ci_user_sessions_correlated", now)
        .await;
    let mut lines: Vec<String> = stored
        .iter()
        .map(|(labels, value)| {
            let pairs: Vec<String> = labels
                .iter()
                .filter(|(k, _)| k.as_str() != "__name__")
                .map(|(k, v)| format!("{k}=\"{v}\""))
                .collect();
            format!(
                "vsphere_ci_user_sessions_correlated{{{}}} {}",
                pairs.join(","),
                value
            )
        })
        .collect();
    lines.sort();
    // Prometheus drops empty label values, so job B's empty pull_request is
    // absent there.
    let expected: Vec<String> = expected_correlated(&[&JOB_A, &JOB_B, &JOB_C])
        .into_iter()
        .map(|l| l.replace("pull_request=\"\",", ""))
        .collect();
    assert_eq!(lines, expected);

    let group = gateway
        .group(&[("job", "vsphere-ci-session-metrics")])
        .await
        .expect("the gateway has the group");
    let mut gw_lines: Vec<String> = group
        .series("vsphere_ci_user_sessions_correlated")
        .iter()
        .map(|s| {
            let pairs: Vec<String> = s
                .labels
                .iter()
                .filter(|(k, _)| !["job", "instance"].contains(&k.as_str()))
                .map(|(k, v)| format!("{k}=\"{v}\""))
                .collect();
            format!(
                "vsphere_ci_user_sessions_correlated{{{}}} {}",
                pairs.join(","),
                s.value
            )
        })
        .collect();
    gw_lines.sort();
    // The gateway keeps the empty pull_request label as pushed.
    assert_eq!(gw_lines, expected_correlated(&[&JOB_A, &JOB_B, &JOB_C]));
    // `once` logs out: no reporter session is left on the vCenter.
    assert_eq!(world.reporter_sessions().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_against_a_dead_receiver_exits_non_zero_in_bounded_time_naming_the_sink() {
    let world = World::start().await;
    let dead_port = receivers::dead_port();
    let dead = format!("http://127.0.0.1:{}/api/v1/write", dead_port.port);
    let config = world.dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!("remote_write:\n  - url: {dead}\n    remote_timeout: 2s\n"),
    )
    .unwrap();
    let args = world.once_args(&["--config", &config.display().to_string()]);
    let (status, log, took) = run_to_end(&args, world.dir.path(), Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "log:\n{log}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(
        log.lines()
            .any(|l| l.contains("sink remote_write") && l.contains(&dead)),
        "no line names the sink and its target:\n{log}"
    );
    assert_eq!(world.reporter_sessions().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_job_vanishes_at_once_and_sigterm_leaves_nothing_behind() {
    let world = World::start().await;
    let prometheus = receivers::Peer::prometheus();
    let gateway = pushgateway::Pushgateway::start().await;
    let (mut reporter, _port) = world.start_reporter(&[
        "--remote-write",
        &prometheus.write_url(),
        "--pushgateway",
        gateway.url.as_str(),
    ]);
    let job_c = format!(
        "vsphere_ci_user_sessions_correlated{{ci_job=\"{}\"}}",
        JOB_C.job
    );
    let now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };

    // The gateway's group holding job C, as it must before job C ends.
    let group_has_c = || async {
        let group = gateway
            .group(&[("job", "vsphere-ci-session-metrics")])
            .await?;
        Some(
            group
                .series("vsphere_ci_user_sessions_correlated")
                .iter()
                .any(|s| s.labels.get("ci_job").map(String::as_str) == Some(JOB_C.job)),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while prometheus.query(&job_c, now()).await.is_empty() || group_has_c().await != Some(true) {
        assert!(
            Instant::now() < deadline,
            "job C never reached Prometheus and the gateway; log:\n{}",
            reporter.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Job C ends: its series disappear from an instant query (stale marker)
    // and from the gateway's group (PUT replaces it), which still exists.
    world.ci.set_scenario(scenario(false).into_scenario());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let in_prometheus = !prometheus.query(&job_c, now()).await.is_empty();
        let in_gateway = group_has_c().await;
        assert!(in_gateway.is_some(), "the gateway's group vanished");
        let in_gateway = in_gateway == Some(true);
        if !in_prometheus && !in_gateway {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "job C lingers (prometheus {in_prometheus}, gateway {in_gateway})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let remaining = prometheus
        .query("vsphere_ci_user_sessions_correlated", now())
        .await;
    assert_eq!(
        remaining.len(),
        expected_correlated(&[&JOB_A, &JOB_B]).len()
    );

    // SIGTERM in the middle of a cycle (deck answers slowly and the request
    // has arrived): the cycle finishes, then stale markers for every live
    // series, logout, exit 0.
    world
        .ci
        .set_fault(Route::Deck, fake_ci::Fault::delay(Duration::from_secs(5)));
    let requests = world.ci.count(Route::Deck);
    let deadline = Instant::now() + Duration::from_secs(30);
    while world.ci.count(Route::Deck) == requests {
        assert!(Instant::now() < deadline, "no cycle reached deck");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reporter.terminate();
    let status = reporter.wait_exit(Duration::from_secs(30));
    let log = reporter.log();
    assert!(status.success(), "log:\n{log}");
    let after_signal = log
        .split("Shutting down")
        .nth(1)
        .unwrap_or_else(|| panic!("no shutdown line:\n{log}"));
    assert!(
        after_signal.contains("Cycle finished"),
        "the running cycle was not let finish:\n{log}"
    );
    assert!(
        prometheus
            .query("vsphere_ci_user_sessions_correlated", now())
            .await
            .is_empty(),
        "stale markers on shutdown hide every series"
    );
    assert_eq!(world.reporter_sessions().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_once_still_logs_out_and_exits_non_zero() {
    let world = World::start().await;
    // deck answers slowly, so the signal lands in the middle of the cycle.
    world
        .ci
        .set_fault(Route::Deck, fake_ci::Fault::delay(Duration::from_secs(20)));
    let args = world.once_args(&[]);
    let mut reporter = Reporter::spawn(&args, world.dir.path());
    let deadline = Instant::now() + Duration::from_secs(30);
    while world.ci.count(Route::Deck) == 0 {
        assert!(Instant::now() < deadline, "the cycle never reached deck");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The vCenter side runs beside deck; wait until the reporter holds its
    // session, so the signal has one to release.
    let deadline = Instant::now() + Duration::from_secs(30);
    while world.reporter_sessions().await == 0 {
        assert!(Instant::now() < deadline, "the reporter never logged in");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reporter.terminate();
    let status = reporter.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(1), "log:\n{}", reporter.log());
    assert!(
        reporter.log().contains("interrupted by a signal"),
        "log:\n{}",
        reporter.log()
    );
    assert_eq!(
        world.reporter_sessions().await,
        0,
        "log:\n{}",
        reporter.log()
    );
}

/// A vCenter stand-in whose every answer is `status` with `body`, for what
/// vcsim cannot be made to do (run out of sessions, send broken XML).
async fn broken_vcenter(status: u16, body: &'static str) -> String {
    use axum::http::StatusCode;
    let app = axum::Router::new().fallback(move || async move {
        (
            StatusCode::from_u16(status).expect("test statuses are valid"),
            [("content-type", "text/xml; charset=utf-8")],
            body,
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vcenter_out_of_sessions_or_sending_broken_xml_is_down_and_the_process_keeps_serving() {
    let ci = FakeCi::start().await;
    ci.set_scenario(scenario(true).into_scenario());
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = ci.kubeconfig_in(dir.path());
    for (status, body, logged) in [
        (503, "Service Unavailable: too many sessions", "HTTP 503"),
        (
            200,
            "<?xml version=\"1.0\"?><soapenv:Envelope><soapenv:Body><Retriev",
            "malformed SOAP response",
        ),
    ] {
        let vcenter = broken_vcenter(status, body).await;
        let port = receivers::free_port();
        let args = strings(&[
            "start",
            "--kubeconfig",
            &kubeconfig.display().to_string(),
            "--vsphere",
            &vcenter,
            "--vsphere-user",
            REPORTER_USER,
            "--vsphere-passwd",
            "pw",
            "--prow",
            &ci.url(),
            "--listen-port",
            &port.to_string(),
            "--interval",
            "1s",
        ]);
        let mut reporter = Reporter::spawn(&args, dir.path());
        let text = scrape_until(
            &reporter,
            port,
            Duration::from_secs(30),
            "two cycles",
            |t| cycles(t) >= 2.0,
        )
        .await;
        assert_eq!(
            value_of(
                &text,
                "vsphere_ci_user_sessions_vcenter_up{vcenter=\"127.0.0.1\"}"
            ),
            Some(0.0)
        );
        // Prow and the build cluster still answer; the jobs are counted.
        assert_eq!(
            value_of(&text, "vsphere_ci_user_sessions_prow_up"),
            Some(1.0)
        );
        assert_eq!(
            value_of(&text, "vsphere_ci_user_sessions_running_jobs"),
            Some(4.0)
        );
        let log = reporter.log();
        assert!(
            log.lines()
                .any(|l| l.contains("Listing vCenter sessions failed") && l.contains(logged)),
            "no clear log line with {logged:?}:\n{log}"
        );
        assert!(reporter.is_running(), "the reporter must keep running");
        reporter.terminate();
        assert!(
            reporter.wait_exit(Duration::from_secs(30)).success(),
            "{}",
            reporter.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_vcenters_and_two_build_clusters_are_correlated_each_on_its_own() {
    // vCenter "127.0.0.1" and vCenter "localhost": two vcsims, one host each.
    let vc_a = Vcsim::start(&["-session", "ci-user-1@vsphere.local,openshift-install,2"]);
    let vc_b = Vcsim::start(&[
        "-session",
        "ci-user-1@vsphere.local,csi-driver,1",
        "-session",
        "ci-user-4@vsphere.local,govc,3",
    ]);
    let url_a = vc_a.url().as_str().trim_end_matches('/').to_string();
    let url_b = url_a.replace("127.0.0.1", "localhost").replace(
        &vc_a.url().port().unwrap().to_string(),
        &vc_b.url().port().unwrap().to_string(),
    );

    // Job X runs on build cluster vsphere02 (its own API, `ci_b`) and logs
    // in to both vCenters as ci-user-1; job Y runs on the default build
    // cluster (`ci_a`, which also serves deck) as ci-user-4 on localhost.
    // `ci_a` has no namespace for X, so X resolves only if it is routed to
    // vsphere02.
    let x = r#"{"name": "pj-x", "build_id": "2001", "job": "e2e-vsphere-multi-vcenter", "cluster": "vsphere02",
                "target": "e2e-vsphere-multi"%NS%}"#;
    let x_ns = r#", "ci_namespace": "ci-op-xxxxxxxx", "secret": {"metadata.json": {"vsphere": {"VCenters": [
                {"vCenter": "127.0.0.1", "username": "ci-user-1@vsphere.local", "password": "never-log-me"},
                {"vCenter": "LOCALHOST", "username": "ci-user-1@vsphere.local", "password": "never-log-me"}]}}}"#;
    let y = r#"{"name": "pj-y", "build_id": "2002", "job": "e2e-vsphere-upi", "cluster": "vsphere-build05",
                "target": "e2e-vsphere-upi", "ci_namespace": "ci-op-yyyyyyyy",
                "secret": {"vsphere_context.sh": "export GOVC_URL=https://localhost/sdk\nexport GOVC_USERNAME=ci-user-4@vsphere.local\n"}}"#;
    let ci_a = FakeCi::start().await;
    ci_a.set_scenario(
        CompactScenario::parse(&format!(r#"{{"jobs": [{}, {y}]}}"#, x.replace("%NS%", "")))
            .unwrap()
            .into_scenario(),
    );
    let ci_b = FakeCi::start().await;
    ci_b.set_scenario(
        CompactScenario::parse(&format!(r#"{{"jobs": [{}]}}"#, x.replace("%NS%", x_ns)))
            .unwrap()
            .into_scenario(),
    );
    let dir = tempfile::tempdir().unwrap();
    let kc_a = dir.path().join("kc-a");
    ci_a.write_kubeconfig(&kc_a).unwrap();
    let kc_b = dir.path().join("kc-b");
    ci_b.write_kubeconfig(&kc_b).unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "vcenters:\n  - url: {url_a}\n    username: {REPORTER_USER}\n    password: pw\n  - url: {url_b}\n    username: {REPORTER_USER}\n    password: pw\n\
             prow:\n  url: {}\nkubeconfig: {}\nbuild_clusters:\n  - name: vsphere02\n    kubeconfig: {}\n",
            ci_a.url(),
            kc_a.display(),
            kc_b.display()
        ),
    )
    .unwrap();
    let port = receivers::free_port();
    let args = strings(&[
        "start",
        "--config",
        &config.display().to_string(),
        "--listen-port",
        &port.to_string(),
        "--interval",
        "1s",
    ]);
    let mut reporter = Reporter::spawn(&args, dir.path());
    let text = scrape_until(
        &reporter,
        port,
        Duration::from_secs(60),
        "both jobs resolved",
        |t| {
            value_of(t, "vsphere_ci_user_sessions_running_jobs") == Some(2.0)
                && value_of(t, "vsphere_ci_user_sessions_unresolved_jobs") == Some(0.0)
        },
    )
    .await;
    let line = |build: &str, job: &str, agent: &str, user: &str, vc: &str, n: u32| {
        format!(
            "vsphere_ci_user_sessions_correlated{{build_id=\"{build}\",ci_job=\"{job}\",pull_request=\"\",user_agent=\"{agent}\",username=\"{user}\",vcenter=\"{vc}\"}} {n}"
        )
    };
    let mut expected = vec![
        line(
            "2001",
            "e2e-vsphere-multi-vcenter",
            "openshift-install",
            "ci-user-1",
            "127.0.0.1",
            2,
        ),
        line(
            "2001",
            "e2e-vsphere-multi-vcenter",
            "csi-driver",
            "ci-user-1",
            "localhost",
            1,
        ),
        line(
            "2002",
            "e2e-vsphere-upi",
            "govc",
            "ci-user-4",
            "localhost",
            3,
        ),
    ];
    expected.sort();
    assert_eq!(correlated_lines(&text), expected, "{text}");
    for vc in ["127.0.0.1", "localhost"] {
        assert_eq!(
            value_of(
                &text,
                &format!("vsphere_ci_user_sessions_vcenter_up{{vcenter=\"{vc}\"}}")
            ),
            Some(1.0)
        );
        assert_eq!(
            value_of(
                &text,
                &format!("vsphere_ci_user_sessions_reporter_logins_total{{vcenter=\"{vc}\"}}")
            ),
            Some(1.0)
        );
    }
    // X's secret was read on vsphere02 only.
    assert_eq!(
        ci_a.count(Route::Secret),
        1,
        "only Y's secret is on the default cluster"
    );
    assert!(ci_b.count(Route::Secret) >= 1);
    reporter.terminate();
    assert!(reporter.wait_exit(Duration::from_secs(30)).success());
    for vcsim in [&vc_a, &vc_b] {
        let admin = vcsim.admin().await;
        assert!(admin.sessions_with_agent(REPORTER_AGENT).await.is_empty());
        admin.logout().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_prow_kubeconfig_jobs_come_from_the_prowjob_api_not_deck() {
    let world = World::start().await;
    let kubeconfig = world.kubeconfig.display().to_string();
    let (mut reporter, port) = world.start_reporter(&["--prow-kubeconfig", &kubeconfig]);
    let text = scrape_until(&reporter, port, Duration::from_secs(60), "prow up", |t| {
        value_of(t, "vsphere_ci_user_sessions_prow_up") == Some(1.0)
    })
    .await;
    assert_eq!(
        correlated_lines(&text),
        expected_correlated(&[&JOB_A, &JOB_B, &JOB_C])
    );
    assert_eq!(
        value_of(&text, "vsphere_ci_user_sessions_running_jobs"),
        Some(4.0)
    );
    assert!(world.ci.count(Route::ProwJobList) >= 1);
    assert_eq!(world.ci.count(Route::Deck), 0, "deck is not read");
    reporter.terminate();
    assert!(reporter.wait_exit(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_cluster_without_a_context_of_its_own_is_refused_at_start() {
    let world = World::start().await;
    let config = world.dir.path().join("clusters.yaml");
    std::fs::write(
        &config,
        format!(
            "kubeconfig: {}\nbuild_clusters:\n  - name: vsphere09\n",
            world.kubeconfig.display()
        ),
    )
    .unwrap();
    let mut args = world.once_args(&[]);
    args.extend(strings(&["--config", &config.display().to_string()]));
    let (status, log, _) = run_to_end(&args, world.dir.path(), Duration::from_secs(10));
    assert_eq!(status.code(), Some(2), "{log}");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains("build_clusters[0] (vsphere09)")
            && lines[0].contains("no context named \"vsphere09\""),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_says_503_until_the_first_cycle_and_scrapes_never_call_the_vcenter() {
    let world = World::start().await;
    // A slow deck holds the first cycle for a few seconds (enough for a
    // loaded machine to see /healthz up and /metrics still empty).
    world
        .ci
        .set_fault(Route::Deck, fake_ci::Fault::delay(Duration::from_secs(8)));
    let port = receivers::free_port();
    let mut args = vec!["start".to_string()];
    args.extend(world.flags());
    args.extend(strings(&[
        "--listen-port",
        &port.to_string(),
        "--interval",
        "1h",
    ]));
    let reporter = Reporter::spawn(&args, world.dir.path());
    let get = |path: &'static str| async move {
        reqwest::get(format!("http://127.0.0.1:{port}{path}"))
            .await
            .ok()
            .map(|r| r.status().as_u16())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while get("/healthz").await != Some(200) {
        assert!(
            Instant::now() < deadline,
            "/healthz never answered; log:\n{}",
            reporter.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        get("/metrics").await,
        Some(503),
        "no cycle has finished yet"
    );
    world.ci.clear_fault(Route::Deck);
    scrape_until(
        &reporter,
        port,
        Duration::from_secs(30),
        "the first cycle",
        |t| cycles(t) >= 1.0,
    )
    .await;

    // With the next cycle an hour away, scrapes alone must not touch vCenter.
    let admin = world.vcsim.admin().await;
    let calls = || async {
        admin
            .session_details()
            .await
            .into_iter()
            .find(|s| s.user_agent == REPORTER_AGENT)
            .expect("the reporter's session")
            .call_count
    };
    let before = calls().await;
    for _ in 0..20 {
        assert!(scrape(port).await.is_some());
    }
    assert_eq!(calls().await, before, "20 scrapes made vCenter calls");
}

/// `once`'s exit code and summary for each kind of failure, each within the
/// README's budget for the failing step plus 5 s (a process start on a
/// loaded machine), and 0 for a job whose secret is not written yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_exit_codes_name_each_failure_within_its_budget() {
    let refusing = receivers::StubReceiver::start().await;
    refusing.default_reply(receivers::Reply::status(400).body("out of bounds"));
    let dead_vcenter = receivers::dead_port();
    // (what, extra YAML, fault to set, expected exit code, budget, a word the summary holds)
    type Case = (
        &'static str,
        String,
        Option<(Route, fake_ci::Fault)>,
        i32,
        u64,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "a job whose secret is not written yet",
            String::new(),
            None,
            0,
            30,
            "",
        ),
        (
            "the vCenter down",
            format!(
                "vcenters:\n  - url: http://127.0.0.1:{}\n    username: u\n    password: p\n    timeout: 2s\n",
                dead_vcenter.port
            ),
            None,
            1,
            4 * 2,
            "127.0.0.1",
        ),
        (
            "deck down",
            String::new(),
            Some((Route::Deck, fake_ci::Fault::status(500))),
            1,
            60,
            "deck",
        ),
        (
            "the build cluster answering 401",
            "kube_timeout: 2s\n".to_string(),
            Some((Route::NamespaceList, fake_ci::Fault::status(401))),
            1,
            4 * 2,
            "build cluster",
        ),
        (
            "the build cluster timing out",
            "kube_timeout: 1s\n".to_string(),
            Some((
                Route::NamespaceList,
                fake_ci::Fault::delay(Duration::from_secs(30)),
            )),
            1,
            4,
            "build cluster",
        ),
        (
            "the Pushgateway refusing (4xx)",
            "pushgateway:\n  url: {deck}\n  timeout: 2s\n".to_string(),
            None,
            1,
            3 * 2,
            "pushgateway",
        ),
        (
            "remote-write refusing (4xx)",
            format!(
                "remote_write:\n  - url: {}\n    remote_timeout: 2s\n",
                refusing.url
            ),
            None,
            1,
            2 * 2 + 1,
            "remote_write",
        ),
    ];
    for (what, yaml, fault, code, budget, word) in cases {
        let world = World::start().await;
        let mut scenario = scenario(true).into_scenario();
        // Job G: its namespace exists, its secret does not yet.
        let g = fake_ci::vsphere_job("pj-g", "1007", "e2e-vsphere-g");
        scenario.prowjobs.push(g);
        scenario
            .namespaces
            .push(fake_ci::ci_namespace("ci-op-gggggggg", "pj-g"));
        world.ci.set_scenario(scenario);
        if let Some((route, fault)) = fault {
            world.ci.set_fault(route, fault);
        }
        let config = world.dir.path().join("case.yaml");
        std::fs::write(&config, yaml.replace("{deck}", &world.ci.url())).unwrap();
        let mut args = world.once_args(&[]);
        if what == "the vCenter down" {
            // The file's vCenter replaces the flags' one.
            let at = args.iter().position(|a| a == "--vsphere").unwrap();
            args.drain(at..at + 6);
        }
        args.extend(strings(&["--config", &config.display().to_string()]));
        let (status, log, took) = run_to_end(&args, world.dir.path(), Duration::from_secs(90));
        assert_eq!(status.code(), Some(code), "{what}:\n{log}");
        assert!(
            took <= Duration::from_secs(budget + 5),
            "{what}: took {took:?}, budget {budget} s"
        );
        if code == 1 {
            let summary = log
                .lines()
                .find(|l| l.contains("Once failed"))
                .unwrap_or_else(|| panic!("{what}: no summary line:\n{log}"));
            assert!(summary.contains(word), "{what}: {summary}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_build_cluster_fails_the_ci_collector_but_keeps_the_cached_answers() {
    let world = World::start().await;
    let config = world.dir.path().join("kube.yaml");
    std::fs::write(&config, "kube_timeout: 1s\n").unwrap();
    let (reporter, port) = world.start_reporter(&["--config", &config.display().to_string()]);
    let ci_success = "vsphere_ci_user_sessions_collector_success{collector=\"ci\"}";
    scrape_until(
        &reporter,
        port,
        Duration::from_secs(60),
        "a good cycle",
        |t| value_of(t, ci_success) == Some(1.0) && correlated_lines(t).len() == 5,
    )
    .await;

    // A new job starts while the build cluster stops answering in time.
    let mut scenario = scenario(true).into_scenario();
    scenario
        .prowjobs
        .push(fake_ci::vsphere_job("pj-h", "1008", "e2e-vsphere-h"));
    world.ci.set_scenario(scenario);
    world.ci.set_fault(
        Route::NamespaceList,
        fake_ci::Fault::delay(Duration::from_secs(30)),
    );
    let text = scrape_until(
        &reporter,
        port,
        Duration::from_secs(30),
        "a failed CI step",
        |t| value_of(t, ci_success) == Some(0.0),
    )
    .await;
    assert_eq!(
        correlated_lines(&text),
        expected_correlated(&[&JOB_A, &JOB_B, &JOB_C]),
        "the cached answers still count"
    );
    assert_eq!(
        value_of(&text, "vsphere_ci_user_sessions_unresolved_jobs"),
        Some(1.0),
        "only the new job is unknown"
    );
    let failures = reporter
        .log()
        .lines()
        .filter(|l| l.contains("Resolving CI users failed") && l.contains("pj-h"))
        .count();
    assert!(failures >= 1, "{}", reporter.log());
}
