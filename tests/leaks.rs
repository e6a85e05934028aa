//! Finding the leaks, end to end: the reporter binary against vcsim seeded
//! with CI sessions and VMs, the in-process fake deck and build cluster, and
//! `/metrics` read as a user would.
//!
//! The scenario: jobs A, B and C run and all log in as `ci_user_01` (one of
//! them through a vCenter alias, with the user name in upper case). Job A's
//! CSI driver names A's cluster in its user agent; job B's machine API
//! connects from B's master VM. A cluster whose job ended left a CSI session
//! and a cloud-provider session from its worker VM; `ci_user_02` holds
//! sessions though no job uses it; one `ci_user_01` session logged in before
//! any of the jobs started. Every expected value is worked out from this
//! seeding (or read from vcsim itself), never from the reporter's output.
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

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fake_ci::{CompactScenario, FakeCi};
use reporter::{Reporter, promtool_check, scrape_until, value_of};
use serde_json::json;
use vcsim::{SoapSession, Vcsim};
use vsphere_ci_session_metrics::correlate::normalize_username;

const VCENTER: &str = "127.0.0.1";
const REPORTER_AGENT: &str = "vsphere-ci-session-metrics";
const SESSION_LIMIT: u64 = 50;
/// `leaks.idle_threshold` in this test: short, so seeded sessions go idle.
const IDLE_SECS: u64 = 3;

const INFRA_A: &str = "ci-op-aaaaaaaa-af877-4p9dw";
const CSI_A: &str = "k8s-csi-useragent-ci-op-aaaaaaaa-af877-4p9dw";
const VM_B: &str = "ci-op-bbbbbbbb-x1y2z-master-0";
const VM_B_IP: &str = "127.0.0.21";
const MAPI: &str = "machineAPIvSphereProvider";
const CSI_ENDED: &str = "k8s-csi-useragent-ci-op-zzzzzzzz-q1w2e-7hj3k";
const VM_ENDED: &str = "ci-op-zzzzzzzz-q1w2e-worker-0-ab12c";
const VM_ENDED_IP: &str = "127.0.0.31";
const CCM: &str = "k8s-cloud-provider-vsphere";
const INSTALLER: &str = "openshift-install/4.18 govmomi/0.46";
const OLD_GOVC: &str = "govc/0.37.3";

/// A running job of the scenario.
struct Job {
    name: &'static str,
    build_id: &'static str,
    job: &'static str,
    namespace: &'static str,
}

const JOB_A: Job = Job {
    name: "pj-a",
    build_id: "2001",
    job: "pull-ci-openshift-vsphere-csi-driver-main-e2e-vsphere",
    namespace: "ci-op-aaaaaaaa",
};
const JOB_B: Job = Job {
    name: "pj-b",
    build_id: "2002",
    job: "periodic-ci-openshift-release-master-nightly-e2e-vsphere-ovn",
    namespace: "ci-op-bbbbbbbb",
};
const JOB_C: Job = Job {
    name: "pj-c",
    build_id: "2003",
    job: "pull-ci-openshift-machine-api-operator-main-e2e-vsphere",
    namespace: "ci-op-cccccccc",
};

/// Jobs A (metadata.json with its infraID), B (metadata.json) and C
/// (platform.json naming the vCenter by its alias `localhost`, user in
/// upper case), all as ci_user_01, all started at `start` (RFC 3339).
fn scenario(start: &str) -> fake_ci::Scenario {
    let metadata = |infra: &str| json!({"infraID": infra, "vsphere": {"vCenter": VCENTER, "username": "ci_user_01@vsphere.local", "password": "never-log-me"}});
    let text = json!({
        "token": fake_ci::DEFAULT_TOKEN,
        "jobs": [
            {"name": JOB_A.name, "build_id": JOB_A.build_id, "job": JOB_A.job, "target": "e2e-vsphere",
             "ci_namespace": JOB_A.namespace, "secret": {"metadata.json": metadata(INFRA_A)}},
            {"name": JOB_B.name, "build_id": JOB_B.build_id, "job": JOB_B.job, "target": "e2e-vsphere-ovn",
             "ci_namespace": JOB_B.namespace, "secret": {"metadata.json": metadata("ci-op-bbbbbbbb-x1y2z")}},
            {"name": JOB_C.name, "build_id": JOB_C.build_id, "job": JOB_C.job, "target": "e2e-vsphere-operator",
             "ci_namespace": JOB_C.namespace,
             "secret": {"platform.json": {"vcenters": [{"server": "https://localhost/sdk", "user": "VSPHERE.LOCAL\\CI_USER_01", "password": "never-log-me"}]}}},
        ]
    });
    let mut scenario = CompactScenario::parse(&text.to_string())
        .expect("the test scenario is valid")
        .into_scenario();
    for job in &mut scenario.prowjobs {
        job["status"]["startTime"] = json!(start);
    }
    scenario
}

fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The reporter's config file for this world.
fn config(vcsim: &Vcsim, ci: &FakeCi, kubeconfig: &std::path::Path, port: u16) -> String {
    format!(
        r#"vcenters:
  - url: {vc}
    username: reporter@vsphere.local
    password: never-log-me-either
    session_limit: {SESSION_LIMIT}
    aliases: [localhost]
prow:
  url: {deck}
kubeconfig: {kubeconfig}
listen_port: {port}
interval: 1s
leaks:
  login_grace: 1s
  idle_threshold: {IDLE_SECS}s
  # The test's own admin session is a person's: not a leak.
  exclude_users: ['administrator', 'vpxd-extension-.*']
"#,
        vc = vcsim.url().as_str().trim_end_matches('/'),
        deck = ci.url(),
        kubeconfig = kubeconfig.display(),
    )
}

/// `name{labels}` with the labels sorted as exposed.
fn series(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<&(&str, &str)> = labels.iter().collect();
    labels.sort();
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", labels.join(","))
}

/// One sample line: `name{labels} value`.
fn line(name: &str, labels: &[(&str, &str)], value: f64) -> String {
    format!("{} {value}", series(name, labels))
}

fn family_lines(text: &str, name: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// Sessions per normalised user as vcsim lists them.
async fn vcsim_users(admin: &SoapSession) -> BTreeMap<String, f64> {
    let mut users = BTreeMap::new();
    for s in admin.session_details().await {
        *users.entry(normalize_username(&s.user)).or_default() += 1.0;
    }
    users
}

/// `sum by (username)` of `vsphere_ci_user_sessions_open` in a scrape.
fn open_by_user(text: &str) -> BTreeMap<String, f64> {
    let mut users = BTreeMap::new();
    for l in family_lines(text, "vsphere_ci_user_sessions_open") {
        let user = l
            .split("username=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_default()
            .to_string();
        let value: f64 = l.rsplit(' ').next().unwrap().parse().unwrap();
        *users.entry(user).or_default() += value;
    }
    users
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaked_sessions_are_named_with_their_job_or_reason_and_per_user_totals_stay_exact() {
    // Sessions that exist before any job starts: the old one of the shared
    // user, and those of a user no job uses.
    let vcsim = Vcsim::start(&[
        "-vm",
        &format!("{VM_B},{VM_B_IP}"),
        "-vm",
        &format!("{VM_ENDED},{VM_ENDED_IP}"),
        "-session",
        &format!("ci_user_01@vsphere.local,{OLD_GOVC},1"),
        "-session",
        "ci_user_02@vsphere.local,govc/0.37.3,2",
    ]);
    let admin = vcsim.admin().await;

    // The jobs start two seconds from now (login_grace is 1s): the
    // sessions above predate them, those below do not.
    let start = SystemTime::now() + Duration::from_secs(2);
    let ci = FakeCi::start().await;
    ci.set_scenario(scenario(&rfc3339(start)));
    while SystemTime::now() < start + Duration::from_millis(1100) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut held = Vec::new();
    for agent in [CSI_A, CSI_A] {
        held.push(vcsim.login(r"VSPHERE.LOCAL\CI_User_01", agent).await);
    }
    for _ in 0..3 {
        held.push(vcsim.login_from(VM_B_IP, "ci_user_01", MAPI).await);
    }
    held.push(vcsim.login("ci_user_01", CSI_ENDED).await);
    held.push(vcsim.login_from(VM_ENDED_IP, "ci_user_01", CCM).await);
    held.push(
        vcsim
            .login_from("127.0.0.41", "ci_user_01", INSTALLER)
            .await,
    );
    held.push(
        vcsim
            .login(
                "vpxd-extension-5c1f9e2a@vsphere.local",
                "VMware vim-java 1.0",
            )
            .await,
    );
    // A client with an absurdly long agent: its label is capped.
    held.push(vcsim.login("ci_user_03", &"k".repeat(600)).await);

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = ci.kubeconfig_in(dir.path());
    let port = receivers::free_port();
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, config(&vcsim, &ci, &kubeconfig, port)).unwrap();
    let reporter = Reporter::spawn(
        &[
            "start".to_string(),
            "--config".into(),
            config_path.display().to_string(),
        ],
        dir.path(),
    );

    // Wait until every seeded session has been idle past the threshold
    // (the last were logged in above), so idleness is settled too.
    let idle_since = SystemTime::now() + Duration::from_secs(IDLE_SECS + 1);
    let text = scrape_until(
        &reporter,
        port,
        Duration::from_secs(60),
        "a cycle after every seeded session went idle",
        |t| {
            SystemTime::now() > idle_since + Duration::from_secs(2)
                && value_of(
                    t,
                    &series(
                        "vsphere_ci_user_sessions_idle_sessions",
                        &[
                            ("user_agent", CSI_A),
                            ("username", "ci_user_01"),
                            ("vcenter", VCENTER),
                        ],
                    ),
                ) == Some(2.0)
        },
    )
    .await;
    promtool_check(&text);

    let common = |job: &Job| {
        vec![
            ("vcenter", VCENTER),
            ("username", "ci_user_01"),
            ("ci_job", job.job),
            ("build_id", job.build_id),
            ("pull_request", ""),
            ("namespace", job.namespace),
        ]
    };
    let with = |mut labels: Vec<(&'static str, &'static str)>,
                more: &[(&'static str, &'static str)]| {
        labels.extend_from_slice(more);
        labels
    };
    assert_eq!(
        family_lines(&text, "vsphere_ci_user_sessions_job_sessions"),
        {
            let mut want = vec![
                line(
                    "vsphere_ci_user_sessions_job_sessions",
                    &with(
                        common(&JOB_A),
                        &[("user_agent", CSI_A), ("attributed_by", "user_agent")],
                    ),
                    2.0,
                ),
                line(
                    "vsphere_ci_user_sessions_job_sessions",
                    &with(
                        common(&JOB_B),
                        &[("user_agent", MAPI), ("attributed_by", "vm_ip")],
                    ),
                    3.0,
                ),
            ];
            want.sort();
            want
        },
        "job_sessions; full output:\n{text}"
    );

    let orphan = |user: &str, agent: &str, reason: &str, ns: &str, n: f64| {
        line(
            "vsphere_ci_user_sessions_orphaned",
            &[
                ("vcenter", VCENTER),
                ("username", user),
                ("user_agent", agent),
                ("reason", reason),
                ("namespace", ns),
            ],
            n,
        )
    };
    // The long agent's session (no job uses ci_user_03): its label is cut
    // to 256 bytes with a hash of the whole value.
    let long: Vec<String> = family_lines(&text, "vsphere_ci_user_sessions_orphaned")
        .into_iter()
        .filter(|l| l.contains("username=\"ci_user_03\""))
        .collect();
    assert_eq!(long.len(), 1, "{long:?}");
    let agent = long[0]
        .split("user_agent=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap();
    assert_eq!(agent.len(), 256, "{agent}");
    assert!(
        agent.starts_with("kkkk") && agent.as_bytes()[247] == b'~',
        "{agent}"
    );
    assert!(
        agent[248..].chars().all(|c| c.is_ascii_hexdigit()),
        "{agent}"
    );
    let mut want = vec![
        long[0].clone(),
        orphan("ci_user_01", CSI_ENDED, "job_ended", "ci-op-zzzzzzzz", 1.0),
        orphan("ci_user_01", CCM, "job_ended", "ci-op-zzzzzzzz", 1.0),
        orphan("ci_user_02", "govc/0.37.3", "no_running_job", "", 2.0),
        orphan("ci_user_01", OLD_GOVC, "predates_running_jobs", "", 1.0),
    ];
    want.sort();
    assert_eq!(
        family_lines(&text, "vsphere_ci_user_sessions_orphaned"),
        want,
        "orphaned; full output:\n{text}"
    );

    // Per-user totals equal vcsim's own list (the admin session included,
    // which the reporter lists too).
    assert_eq!(open_by_user(&text), vcsim_users(&admin).await);

    // Every job is joinable, job C through the alias and the upper-case name.
    for job in [&JOB_A, &JOB_B, &JOB_C] {
        let labels = with(
            common(job),
            &[("cluster_profile", ""), ("build_cluster", "vsphere02")],
        );
        let labels: Vec<(&str, &str)> = labels
            .into_iter()
            .filter(|(k, _)| *k != "user_agent")
            .collect();
        let want = line("vsphere_ci_user_sessions_job_info", &labels, 1.0);
        assert!(text.lines().any(|l| l == want), "missing {want}\n{text}");
    }
    assert_eq!(
        value_of(
            &text,
            &format!("vsphere_ci_user_sessions_vcenter_session_limit{{vcenter=\"{VCENTER}\"}}")
        ),
        Some(SESSION_LIMIT as f64)
    );
    assert_eq!(
        value_of(
            &text,
            &format!(
                "vsphere_ci_user_sessions_user_jobs{{username=\"ci_user_01\",vcenter=\"{VCENTER}\"}}"
            )
        ),
        Some(3.0)
    );

    // Idleness: every seeded session is idle, the reporter's own is not.
    let idle = |user: &str, agent: &str| {
        value_of(
            &text,
            &format!(
                "vsphere_ci_user_sessions_idle_sessions{{user_agent=\"{agent}\",username=\"{user}\",vcenter=\"{VCENTER}\"}}"
            ),
        )
    };
    assert_eq!(idle("ci_user_02", "govc/0.37.3"), Some(2.0));
    assert_eq!(idle("ci_user_01", MAPI), Some(3.0));
    assert_eq!(idle("reporter", REPORTER_AGENT), Some(0.0));

    // Ages against vcsim's clock: CurrentTime minus the oldest login, as
    // vcsim lists them now; the scrape is at most a cycle or two older.
    let now = parse_ms(&admin.current_time().await);
    let oldest_02 = admin
        .session_details()
        .await
        .iter()
        .filter(|s| normalize_username(&s.user) == "ci_user_02")
        .map(|s| parse_ms(&s.login_time))
        .min()
        .unwrap();
    let expected = (now - oldest_02) as f64 / 1000.0;
    let age = value_of(
        &text,
        &format!(
            "vsphere_ci_user_sessions_oldest_session_age_seconds{{user_agent=\"govc/0.37.3\",username=\"ci_user_02\",vcenter=\"{VCENTER}\"}}"
        ),
    )
    .expect("an age for ci_user_02");
    assert!(
        // The scrape may show a cycle or two before vcsim's clock was read;
        // it already counted these sessions idle, so they were at least
        // IDLE_SECS old.
        age <= expected && age >= (IDLE_SECS as f64).max(expected - 15.0),
        "age {age} s, vcsim says {expected} s now"
    );

    // Deck fails: with no job list nothing can be called orphaned, so the
    // family empties rather than naming every session.
    ci.set_fault(fake_ci::Route::Deck, fake_ci::Fault::status(500));
    let text = scrape_until(&reporter, port, Duration::from_secs(30), "prow_up 0", |t| {
        value_of(t, "vsphere_ci_user_sessions_prow_up") == Some(0.0)
    })
    .await;
    assert_eq!(
        family_lines(&text, "vsphere_ci_user_sessions_orphaned"),
        Vec::<String>::new(),
        "{text}"
    );
    drop(held);
}

fn parse_ms(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
        .timestamp_millis()
}
