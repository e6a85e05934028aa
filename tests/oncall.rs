//! On call: `sessions` and `reap` as the person paged for a full vCenter
//! runs them, and the reaper of `start`, against vcsim seeded with a CI
//! world, the in-process fake deck and build cluster.
//!
//! The world is `support/ci_world.rs`. Every expected row is worked out
//! from its seeding or read from vcsim, never from the output.
//!
//! vcsim must be built first: `scripts/build-vcsim.sh` (scripts/test.sh does it).

#[path = "support/ci_world.rs"]
mod ci_world;
#[path = "support/fake_ci.rs"]
mod fake_ci;
#[path = "support/receivers.rs"]
mod receivers;
#[path = "support/reporter.rs"]
mod reporter;
#[path = "support/vcsim.rs"]
mod vcsim;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ci_world::*;
use reporter::{BIN, Reporter, scrape_until, value_of};
use serde_json::{Value, json};
use vcsim::{ADMIN_AGENT, SessionDetail};

/// Runs the binary to the end with a clean environment and `COLUMNS`.
async fn run(args: Vec<String>, columns: Option<usize>) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(BIN);
        command.args(&args).env_clear().stdin(Stdio::null());
        if let Some(c) = columns {
            command.env("COLUMNS", c.to_string());
        }
        command.output().expect("the binary runs")
    })
    .await
    .unwrap()
}

fn args(words: &[&str], config: &Path) -> Vec<String> {
    let mut v: Vec<String> = words.iter().map(|s| s.to_string()).collect();
    v.push("--config".into());
    v.push(config.display().to_string());
    v
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The cells of a table line: columns are separated by two spaces or more.
fn cells(line: &str) -> Vec<String> {
    regex::Regex::new(r"\s{2,}")
        .unwrap()
        .split(line.trim())
        .map(str::to_string)
        .collect()
}

/// The rows of the table whose header starts with `header`, up to the
/// first line that is not a row (a summary line has no column gaps).
fn table(out: &str, header: &[&str]) -> Vec<Vec<String>> {
    let mut lines = out.lines();
    let found = lines.by_ref().find(|l| {
        let c = cells(l);
        c.len() >= header.len() && c[..header.len()] == *header
    });
    assert!(found.is_some(), "no table headed {header:?} in:\n{out}");
    lines.map(cells).take_while(|c| c.len() >= 3).collect()
}

fn row(values: &[&str]) -> Vec<String> {
    values.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_names_every_leak_with_its_reason_and_every_job_with_its_sessions() {
    let world = World::seed().await;
    let config = world.config("sessions.yaml", "");

    // Default view, a terminal wide enough for everything.
    let out = run(args(&["sessions"], &config), Some(400)).await;
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        text(&out.stderr)
    );
    let dash = "-";
    let young = "<1m";
    let by_user = [
        row(&[
            "ci_user_01",
            MAPI,
            "3",
            "3",
            dash,
            young,
            young,
            &format!("#2002 {JOB_B} ×3"),
            dash,
        ]),
        row(&[
            "ci_user_01",
            CSI_A,
            "2",
            "2",
            dash,
            young,
            young,
            &format!("#2001 {JOB_A} ×2"),
            dash,
        ]),
        row(&[
            "ci_user_02",
            GOVC,
            "2",
            dash,
            "2",
            young,
            young,
            dash,
            "no_running_job ×2",
        ]),
        row(&[
            "administrator",
            ADMIN_AGENT,
            "1",
            dash,
            dash,
            young,
            young,
            dash,
            dash,
        ]),
        row(&[
            "ci_user_01",
            GOVC,
            "1",
            dash,
            "1",
            young,
            young,
            dash,
            "predates_running_jobs",
        ]),
        row(&[
            "ci_user_01",
            CCM,
            "1",
            dash,
            "1",
            young,
            young,
            dash,
            "job_ended",
        ]),
        row(&[
            "ci_user_01",
            CSI_ENDED,
            "1",
            dash,
            "1",
            young,
            young,
            dash,
            "job_ended",
        ]),
        row(&[
            "ci_user_01",
            INSTALLER,
            "1",
            dash,
            dash,
            young,
            young,
            dash,
            dash,
        ]),
        row(&[
            "ci_user_03",
            LONG,
            "1",
            dash,
            "1",
            young,
            young,
            dash,
            "no_running_job",
        ]),
        row(&[
            "reporter",
            REPORTER_AGENT,
            "1",
            dash,
            dash,
            young,
            young,
            dash,
            dash,
        ]),
        row(&[
            "vpxd-extension-5c1f9e2a",
            EXTENSION,
            "1",
            dash,
            dash,
            young,
            young,
            dash,
            dash,
        ]),
    ];
    assert_eq!(
        table(&stdout, &["USER", "AGENT", "SESSIONS"]),
        by_user,
        "default view:\n{stdout}"
    );
    // 15 sessions: the 13 held or seeded, the admin's and the reporter's.
    assert!(
        stdout.contains("vCenter 127.0.0.1: 15 / 50 sessions, 30% (attributed 5, orphaned 6)\n"),
        "{stdout}"
    );
    assert!(
        !stdout.contains('\x1b'),
        "no colour into a pipe: {stdout:?}"
    );

    // Narrow terminals: every line fits, long agents are cut with `…`;
    // at 80 columns the job and reason lists give way, and say so.
    for columns in [100, 80] {
        let out = run(args(&["sessions"], &config), Some(columns)).await;
        let narrow = text(&out.stdout);
        for line in narrow.lines() {
            assert!(
                line.chars().count() <= columns,
                "wider than {columns}: {line:?}\n{narrow}"
            );
        }
        let rows = table(&narrow, &["USER", "AGENT", "SESSIONS"]);
        let long_row = rows
            .iter()
            .find(|r| r[0] == "ci_user_03")
            .expect("ci_user_03's row");
        let cut = long_row[1]
            .strip_suffix('…')
            .unwrap_or_else(|| panic!("agent not cut: {long_row:?}"));
        assert!(LONG.starts_with(cut) && cut.len() >= 11, "{long_row:?}");
        let hidden =
            narrow.contains("(JOBS, REASONS hidden to fit 80 columns; -o wide shows everything)");
        assert_eq!(hidden, columns == 80, "{narrow}");
        assert_eq!(rows.len(), by_user.len(), "{narrow}");
    }

    // Wide: every client address and key prefix of a row, as vcsim has them.
    let out = run(args(&["sessions", "-o", "wide"], &config), Some(80)).await;
    let wide = text(&out.stdout);
    let listed = world.listed().await;
    let rows = table(&wide, &["USER", "AGENT", "SESSIONS"]);
    for (user, agent) in [
        ("ci_user_01", MAPI),
        ("ci_user_02", GOVC),
        ("ci_user_03", LONG),
    ] {
        let of = |s: &&SessionDetail| {
            vsphere_ci_session_metrics::correlate::normalize_username(&s.user) == user
                && s.user_agent == agent
        };
        let ips: BTreeSet<&str> = listed
            .values()
            .filter(of)
            .map(|s| s.ip_address.as_str())
            .collect();
        let mut keys: Vec<&str> = listed.values().filter(of).map(|s| &s.key[..8]).collect();
        keys.sort();
        let r = rows
            .iter()
            .find(|r| r[0] == user && r[1] == agent)
            .unwrap_or_else(|| panic!("{user} {agent} in:\n{wide}"));
        let n = r.len();
        assert_eq!(
            r[n - 2],
            ips.into_iter().collect::<Vec<_>>().join(","),
            "{r:?}"
        );
        assert_eq!(r[n - 1], keys.join(","), "{r:?}");
    }
    for key in listed.keys() {
        assert!(
            !wide.contains(key.as_str()),
            "a full key is printed:\n{wide}"
        );
    }

    // By job: B holds 3 (by VM IP), A 2 (by agent); the installer's is
    // shared by both; the ended job's two sessions under its namespace.
    let out = run(args(&["sessions", "--by", "job"], &config), Some(400)).await;
    let jobs = text(&out.stdout);
    assert!(out.status.success(), "{jobs}");
    let users = "ci_user_01@127.0.0.1";
    assert_eq!(
        table(&jobs, &["JOB", "BUILD"]),
        [
            row(&[
                JOB_B,
                "2002",
                "ci-op-bbbbbbbb",
                users,
                "3",
                "1",
                "vm_ip ×3",
                young,
                young
            ]),
            row(&[
                JOB_A,
                "2001",
                "ci-op-aaaaaaaa",
                users,
                "2",
                "1",
                "user_agent ×2",
                young,
                young
            ]),
        ],
        "{jobs}"
    );
    assert_eq!(
        table(&jobs, &["ENDED JOB NAMESPACE"]),
        [row(&[
            "ci-op-zzzzzzzz",
            VCENTER,
            "ci_user_01",
            "2",
            young,
            young
        ])],
        "{jobs}"
    );
    assert!(
        jobs.contains(
            "Orphaned with no job named: no_running_job ×3, predates_running_jobs (see --orphaned)"
        ),
        "{jobs}"
    );

    // Only the orphans, by reason, then user, agent and namespace.
    let out = run(args(&["sessions", "--orphaned"], &config), Some(400)).await;
    let orphaned = text(&out.stdout);
    assert_eq!(
        table(&orphaned, &["REASON", "VCENTER"]),
        [
            row(&[
                "job_ended",
                VCENTER,
                "ci_user_01",
                CCM,
                "ci-op-zzzzzzzz",
                "1",
                young,
                young
            ]),
            row(&[
                "job_ended",
                VCENTER,
                "ci_user_01",
                CSI_ENDED,
                "ci-op-zzzzzzzz",
                "1",
                young,
                young
            ]),
            row(&[
                "no_running_job",
                VCENTER,
                "ci_user_02",
                GOVC,
                dash,
                "2",
                young,
                young
            ]),
            row(&[
                "no_running_job",
                VCENTER,
                "ci_user_03",
                LONG,
                dash,
                "1",
                young,
                young
            ]),
            row(&[
                "predates_running_jobs",
                VCENTER,
                "ci_user_01",
                GOVC,
                dash,
                "1",
                young,
                young
            ]),
        ],
        "{orphaned}"
    );
    assert!(orphaned.contains("Orphaned: 6\n"), "{orphaned}");

    // Filters: a regex on the user, plain text on the agent.
    let out = run(
        args(
            &[
                "sessions",
                "--orphaned",
                "--user",
                "^ci_user_0[2-3]$",
                "--agent",
                "govc/",
            ],
            &config,
        ),
        Some(400),
    )
    .await;
    let filtered = text(&out.stdout);
    assert_eq!(
        table(&filtered, &["REASON", "VCENTER"]),
        [row(&[
            "no_running_job",
            VCENTER,
            "ci_user_02",
            GOVC,
            dash,
            "2",
            young,
            young
        ])],
        "{filtered}"
    );
    assert!(filtered.contains("2 shown"), "{filtered}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_json_has_every_field_of_every_session_and_never_a_full_key() {
    let world = World::seed().await;
    let config = world.config("json.yaml", "");
    let out = run(args(&["sessions", "-o", "json"], &config), None).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let doc: Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"));
    let now = world.admin.current_time().await;
    let now_ms = chrono::DateTime::parse_from_rfc3339(&now)
        .unwrap()
        .timestamp_millis();
    let listed = world.listed().await;

    assert_eq!(doc["complete"], true);
    assert_eq!(doc["prow_up"], true);
    assert_eq!(doc["failures"], json!([]));
    assert_eq!(doc["vcenters"][0]["vcenter"], VCENTER);
    assert_eq!(doc["vcenters"][0]["up"], true);
    assert_eq!(doc["vcenters"][0]["session_limit"], 50);
    // The reporter's own session was listed too; it logged out since.
    assert_eq!(doc["vcenters"][0]["sessions"], listed.len() + 1);
    let jobs = doc["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    let job_a = jobs.iter().find(|j| j["build_id"] == "2001").unwrap();
    assert_eq!(job_a["job"], JOB_A);
    assert_eq!(job_a["prowjob"], "pj-a");
    assert_eq!(job_a["namespace"], "ci-op-aaaaaaaa");
    assert_eq!(job_a["infra_id"], "ci-op-aaaaaaaa-af877-4p9dw");
    assert_eq!(
        job_a["users"],
        json!([{"vcenter": VCENTER, "username": "ci_user_01"}])
    );

    // What the seeding says of each (user, agent).
    let job =
        |build: &str, name: &str, pj: &str| json!({"build_id": build, "job": name, "prowjob": pj});
    let expect = |user: &str, agent: &str| -> (&str, Value, Value, Value, Value) {
        match (user, agent) {
            (_, CSI_A) => (
                "attributed",
                json!("user_agent"),
                job("2001", JOB_A, "pj-a"),
                Value::Null,
                json!("ci-op-aaaaaaaa"),
            ),
            (_, MAPI) => (
                "attributed",
                json!("vm_ip"),
                job("2002", JOB_B, "pj-b"),
                Value::Null,
                json!("ci-op-bbbbbbbb"),
            ),
            (_, CSI_ENDED | CCM) => (
                "orphaned",
                Value::Null,
                Value::Null,
                json!("job_ended"),
                json!("ci-op-zzzzzzzz"),
            ),
            ("ci_user_02", _) | ("ci_user_03", _) => (
                "orphaned",
                Value::Null,
                Value::Null,
                json!("no_running_job"),
                Value::Null,
            ),
            ("ci_user_01", GOVC) => (
                "orphaned",
                Value::Null,
                Value::Null,
                json!("predates_running_jobs"),
                Value::Null,
            ),
            ("ci_user_01", INSTALLER) => {
                ("shared", Value::Null, Value::Null, Value::Null, Value::Null)
            }
            ("reporter", _) => (
                "reporter",
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
            ),
            _ => ("exempt", Value::Null, Value::Null, Value::Null, Value::Null),
        }
    };
    let sessions = doc["sessions"].as_array().unwrap();
    // The reporter logged out before the admin listed, so it is the one
    // session of the document vcsim no longer has.
    assert_eq!(sessions.len(), listed.len() + 1, "{stdout}");
    for s in sessions {
        let user = s["username"].as_str().unwrap();
        let agent = s["user_agent"].as_str().unwrap();
        let (status, by, job, reason, namespace) = expect(user, agent);
        assert_eq!(s["status"], status, "{s}");
        assert_eq!(s["attributed_by"], by, "{s}");
        assert_eq!(s["job"], job, "{s}");
        assert_eq!(s["reason"], reason, "{s}");
        assert_eq!(s["namespace"], namespace, "{s}");
        assert_eq!(s["vcenter"], VCENTER);
        let prefix = s["key_prefix"].as_str().unwrap();
        assert_eq!(prefix.chars().count(), 8, "{s}");
        if user == "reporter" {
            assert_eq!(agent, REPORTER_AGENT);
            continue;
        }
        let v = listed
            .values()
            .find(|d| d.key.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} not in vcsim"));
        assert_eq!(s["user_name"], v.user.as_str());
        assert_eq!(agent, v.user_agent);
        assert_eq!(s["ip_address"], v.ip_address.as_str());
        assert_eq!(s["login_time"], v.login_time.as_str());
        assert!(s["call_count"].as_u64().unwrap() <= v.call_count, "{s}");
        let login_ms = chrono::DateTime::parse_from_rfc3339(&v.login_time)
            .unwrap()
            .timestamp_millis();
        let age = s["age_seconds"].as_i64().unwrap();
        // The document was made before `now` was read, within a minute.
        let upper = (now_ms - login_ms) / 1000;
        assert!(
            age <= upper && age >= upper - 60,
            "age {age}, vcsim says at most {upper}: {s}"
        );
        assert!(s["idle_seconds"].as_i64().unwrap() <= age, "{s}");
    }
    for key in listed.keys() {
        assert!(
            !stdout.contains(key.as_str()),
            "a full key is printed: {key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_source_prints_what_was_read_marked_partial_and_exits_1() {
    let world = World::seed().await;
    let config = world.config("partial.yaml", "");
    world
        .ci
        .set_fault(fake_ci::Route::Deck, fake_ci::Fault::status(503));
    let out = run(args(&["sessions"], &config), Some(200)).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.starts_with("PARTIAL: 1 source(s) failed"),
        "{stdout}"
    );
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "one line per failed source:\n{stderr}");
    assert!(
        errors[0].contains("deck") && errors[0].contains("503"),
        "{stderr}"
    );
    // Still every session, none orphaned without the job list.
    assert!(
        stdout.contains("vCenter 127.0.0.1: 15 / 50 sessions, 30% (attributed 0, orphaned 0)"),
        "{stdout}"
    );
}

/// The header of the table of what `reap --apply` did.
const ACTION_HEADER: [&str; 10] = [
    "VCENTER",
    "USER",
    "AGENT",
    "IP",
    "AGE",
    "IDLE",
    "REASON",
    "NAMESPACE",
    "KEY",
    "ACTION",
];

/// The reaper's settings for `reap` tests.
/// `min` is the age and idleness asked for; `recheck` the wait before the
/// second listing, long enough for what a test does meanwhile.
fn reaper(users: &str, max: usize, min: &str, recheck: &str) -> String {
    format!(
        "reaper:\n  users: {users}\n  min_age: {min}\n  min_idle: {min}\n  max_per_run: {max}\n  recheck_delay: {recheck}\n"
    )
}

/// vcsim's sessions other than the reporter's (which logs out at exit).
fn without_reporter(listed: &BTreeMap<String, SessionDetail>) -> BTreeSet<String> {
    listed
        .values()
        .filter(|s| s.user_agent != REPORTER_AGENT)
        .map(|s| s.key.clone())
        .collect()
}

/// The keys of the sessions of `user` with `agent`.
fn keys_of(listed: &BTreeMap<String, SessionDetail>, user: &str, agent: &str) -> BTreeSet<String> {
    listed
        .values()
        .filter(|s| {
            vsphere_ci_session_metrics::correlate::normalize_username(&s.user) == user
                && s.user_agent == agent
        })
        .map(|s| s.key.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reap_terminates_exactly_the_confirmed_candidates_and_nothing_else() {
    let world = World::seed().await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // past min_age and min_idle
    let before = world.listed().await;
    let leaked: BTreeSet<String> = [
        keys_of(&before, "ci_user_01", GOVC),
        keys_of(&before, "ci_user_01", CSI_ENDED),
        keys_of(&before, "ci_user_01", CCM),
        keys_of(&before, "ci_user_02", GOVC),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert_eq!(leaked.len(), 5);

    // Nobody named in reaper.users: nothing, even with --apply.
    let none = world.config("none.yaml", "");
    let out = run(args(&["reap", "--apply"], &none), Some(200)).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("reaper.users is empty"), "{stdout}");
    assert_eq!(
        without_reporter(&world.listed().await),
        without_reporter(&before)
    );

    // The dry run names the five (ci_user_03 is not named; the reporter
    // is, and with no minimum age its fresh session would qualify, yet it
    // is never a candidate) and terminates nothing.
    let config = world.config(
        "reap.yaml",
        &reaper("['ci_user_0[12]', 'reporter']", 100, "0s", "2s"),
    );
    let out = run(args(&["reap"], &config), Some(200)).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let listed_keys: BTreeSet<String> = table(&stdout, &["VCENTER", "USER", "AGENT"])
        .iter()
        .map(|r| r[r.len() - 1].clone())
        .collect();
    let want: BTreeSet<String> = leaked.iter().map(|k| k[..8].to_string()).collect();
    assert_eq!(listed_keys, want, "{stdout}");
    assert!(stdout.contains("Dry run: nothing terminated."), "{stdout}");
    assert_eq!(
        without_reporter(&world.listed().await),
        without_reporter(&before)
    );

    // --apply: exactly those, every other session untouched. Someone else
    // ends one of them a moment before the reaper does: vcsim answers
    // NotFound, which is no failure, and the others go on.
    let raced = world.user02[0].key().to_string();
    assert!(leaked.contains(&raced));
    world.vcsim.end_first(&raced).await;
    let out = run(args(&["reap", "--apply"], &config), Some(200)).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("Terminated 4, spared 1, failed 0."),
        "{stdout}"
    );
    let raced_row: Vec<Vec<String>> = table(&stdout, &ACTION_HEADER)
        .into_iter()
        .filter(|r| r[8] == raced[..8])
        .collect();
    assert_eq!(raced_row.len(), 1, "{stdout}");
    assert_eq!(raced_row[0][9..], ["spared", "already gone"], "{stdout}");
    let after = without_reporter(&world.listed().await);
    let expected: BTreeSet<String> = without_reporter(&before)
        .difference(&leaked)
        .cloned()
        .collect();
    assert_eq!(after, expected, "{stdout}\n{stderr}");
    // One info line per termination, with its facts and never the key.
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("Terminated a leaked session"))
        .collect();
    assert_eq!(lines.len(), 4, "{stderr}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("reason=\"job_ended\"") || l.contains("reason=job_ended")),
        "{stderr}"
    );
    for key in &leaked {
        assert!(
            !stderr.contains(key.as_str()) && !stdout.contains(key.as_str()),
            "full key {key} printed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reap_spares_a_session_active_again_goes_on_past_a_refusal_and_keeps_to_its_cap() {
    let world = World::seed().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = world.listed().await;
    // The vCenter refuses to end ci_user_02's first session.
    let refused = world.user02[0].key().to_string();
    world.vcsim.refuse_terminate(&refused).await;
    let active = world.user02[1].key().to_string();

    // Five candidates, at most four: the longest idle go first, so the
    // last of the ended cluster's sessions waits for the next run.
    let config = world.config("cap.yaml", &reaper("['ci_user_0[12]']", 4, "1s", "6s"));
    let path = world.dir.path().join("reap.out");
    let mut child = Command::new(BIN)
        .args(args(&["reap", "--apply"], &config))
        .env_clear()
        .env("COLUMNS", "200")
        .stdout(std::fs::File::create(&path).unwrap())
        .stderr(std::fs::File::create(world.dir.path().join("reap.err")).unwrap())
        .spawn()
        .unwrap();
    // While the reaper waits to list again, the second session's client
    // makes a call.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&path)
        .unwrap_or_default()
        .contains("Listing again in")
    {
        assert!(
            Instant::now() < deadline,
            "no candidates listed:\n{}",
            std::fs::read_to_string(&path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    world.user02[1].current_time().await;
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    let stdout = std::fs::read_to_string(&path).unwrap();
    let stderr = std::fs::read_to_string(world.dir.path().join("reap.err")).unwrap();
    assert_eq!(
        status.code(),
        Some(1),
        "a failed termination fails the run:\n{stdout}\n{stderr}"
    );

    let acted: BTreeMap<String, String> = table(&stdout, &ACTION_HEADER)
        .into_iter()
        .map(|r| (r[8].clone(), r[9].clone()))
        .collect();
    // The ended cluster's two sessions: the one idle longer (it made its
    // last call first) is terminated, the other left for the next run.
    let ms = |k: &String| {
        chrono::DateTime::parse_from_rfc3339(&before[k].last_active_time)
            .unwrap()
            .timestamp_nanos_opt()
            .unwrap()
    };
    let mut ended: Vec<String> = [CSI_ENDED, CCM]
        .iter()
        .flat_map(|a| keys_of(&before, "ci_user_01", a))
        .collect();
    ended.sort_by_key(|k| ms(k));
    let (first_ended, last_ended) = (ended[0].clone(), ended[1].clone());
    let predates = keys_of(&before, "ci_user_01", GOVC)
        .into_iter()
        .next()
        .unwrap();
    let want: BTreeMap<String, String> = [
        (refused[..8].to_string(), "failed".to_string()),
        (active[..8].to_string(), "spared".to_string()),
        (predates[..8].to_string(), "terminated".to_string()),
        (first_ended[..8].to_string(), "terminated".to_string()),
    ]
    .into_iter()
    .collect();
    assert_eq!(acted, want, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("127.0.0.1: 1 more candidates are left for a later run"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Terminated 2, spared 1, failed 1."),
        "{stdout}"
    );

    let after = without_reporter(&world.listed().await);
    let gone: BTreeSet<String> = without_reporter(&before)
        .difference(&after)
        .cloned()
        .collect();
    assert_eq!(
        gone,
        [predates, first_ended].into_iter().collect(),
        "{stdout}\n{stderr}"
    );
    assert!(after.contains(&last_ended) && after.contains(&refused) && after.contains(&active));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_with_the_reaper_applied_frees_the_leaks_within_two_cycles() {
    let world = World::seed().await;
    // Past min_age and min_idle before the first cycle, so the cycle that
    // first shows the leaks also shows them chosen.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let port = receivers::free_port();
    let extra = "reaper:\n  enabled: true\n  apply: true\n  users: ['ci_user_0[12]']\n  min_age: 1s\n  min_idle: 1s\n  recheck_delay: 1s\ninterval: 2s\n";
    let config = world.config("start.yaml", extra);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("listen_port: 0", &format!("listen_port: {port}"));
    std::fs::write(&config, text).unwrap();
    let before = world.listed().await;
    let leaked: BTreeSet<String> = [
        keys_of(&before, "ci_user_01", GOVC),
        keys_of(&before, "ci_user_01", CSI_ENDED),
        keys_of(&before, "ci_user_01", CCM),
        keys_of(&before, "ci_user_02", GOVC),
    ]
    .into_iter()
    .flatten()
    .collect();
    let reporter = Reporter::spawn(
        &[
            "start".to_string(),
            "--config".into(),
            config.display().to_string(),
        ],
        world.dir.path(),
    );

    let orphaned_of = |t: &str| -> f64 {
        t.lines()
            .filter(|l| {
                l.starts_with("vsphere_ci_user_sessions_orphaned{")
                    && (l.contains("username=\"ci_user_01\"")
                        || l.contains("username=\"ci_user_02\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let first = scrape_until(
        &reporter,
        port,
        Duration::from_secs(60),
        "a cycle showing the leaks",
        |t| orphaned_of(t) == 5.0,
    )
    .await;
    let seen_at = reporter::cycles(&first);
    // The candidates go out with the orphans they are chosen from, and
    // leave with them.
    let candidates_of = |t: &str| -> f64 {
        t.lines()
            .filter(|l| l.starts_with("vsphere_ci_user_sessions_reaper_candidates{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(candidates_of(&first), 5.0, "{first}");
    let freed = scrape_until(
        &reporter,
        port,
        Duration::from_secs(60),
        "a cycle without them",
        |t| orphaned_of(t) == 0.0,
    )
    .await;
    assert!(
        reporter::cycles(&freed) <= seen_at + 2.0,
        "freed only at cycle {} (seen at {seen_at})",
        reporter::cycles(&freed)
    );
    assert_eq!(candidates_of(&freed), 0.0, "{freed}");

    let after = without_reporter(&world.listed().await);
    let expected: BTreeSet<String> = without_reporter(&before)
        .difference(&leaked)
        .cloned()
        .collect();
    assert_eq!(after, expected, "log:\n{}", reporter.log());

    // The counters say the same: 5 reaped, by user, agent and reason.
    let text = scrape_until(
        &reporter,
        port,
        Duration::from_secs(30),
        "the reaped counters",
        |t| {
            t.lines()
                .filter(|l| l.starts_with("vsphere_ci_user_sessions_reaped_total{"))
                .count()
                == 4
        },
    )
    .await;
    let reaped = |user: &str, agent: &str, reason: &str| {
        value_of(
            &text,
            &format!(
                "vsphere_ci_user_sessions_reaped_total{{reason=\"{reason}\",user_agent=\"{agent}\",username=\"{user}\",vcenter=\"{VCENTER}\"}}"
            ),
        )
    };
    assert_eq!(
        reaped("ci_user_01", GOVC, "predates_running_jobs"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        reaped("ci_user_01", CSI_ENDED, "job_ended"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(reaped("ci_user_01", CCM, "job_ended"), Some(1.0), "{text}");
    assert_eq!(
        reaped("ci_user_02", GOVC, "no_running_job"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value_of(
            &text,
            &format!("vsphere_ci_user_sessions_reaper_failures_total{{vcenter=\"{VCENTER}\"}}")
        ),
        Some(0.0),
        "{text}"
    );
    // Nothing left to reap: the next pass finds no candidate.
    scrape_until(
        &reporter,
        port,
        Duration::from_secs(30),
        "a reaper pass without candidates",
        |t| !t.contains("vsphere_ci_user_sessions_reaper_candidates{"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_while_reap_waits_to_confirm_terminates_nothing_and_logs_out() {
    let world = World::seed().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = without_reporter(&world.listed().await);
    let config = world.config("int.yaml", &reaper("['ci_user_0[12]']", 100, "1s", "30s"));
    let path = world.dir.path().join("int.out");
    let child = Command::new(BIN)
        .args(args(&["reap", "--apply"], &config))
        .env_clear()
        .stdout(std::fs::File::create(&path).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&path)
        .unwrap_or_default()
        .contains("Listing again in")
    {
        assert!(Instant::now() < deadline, "no candidates listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SIGTERM, as Kubernetes or `timeout` sends; Ctrl-C (SIGINT) takes the
    // same path.
    let mut reporter = Reporter::adopt(child, path.clone());
    reporter.terminate();
    let status = reporter.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(130), "{}", reporter.log());
    let listed = world.listed().await;
    assert_eq!(without_reporter(&listed), before, "nothing was terminated");
    assert!(
        listed.values().all(|s| s.user_agent != REPORTER_AGENT),
        "the reporter logged out"
    );
}
