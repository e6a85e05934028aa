//! Every query of the Grafana dashboard `config/grafana/vsphere-ci-sessions.json`
//! run against what the reporter really pushed: the reporter on vcsim with
//! the CI world of `support/ci_world.rs`, remote-writing into Prometheus
//! 2.42. Each panel's query, with the dashboard variables substituted as
//! Grafana does, must parse and return exactly the series the world
//! implies; a panel without an expectation here fails the test, so a new
//! panel comes with its test.
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
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ci_world::*;
use receivers::Peer;
use reporter::Reporter;
use serde_json::Value;
use vcsim::ADMIN_AGENT;

const DASHBOARD: &str = "config/grafana/vsphere-ci-sessions.json";
/// The remote-write target's name, the `target` label of its self-metrics.
const TARGET: &str = "prometheus";

/// A query's result: label set (as `k=v` pairs) -> value.
type Result = BTreeMap<Vec<(String, String)>, f64>;

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

/// What a panel target must return.
enum Expect {
    /// Exactly these series with these values.
    Exactly(Result),
    /// Exactly these label sets; each value checked by the function.
    Series(Vec<Vec<(String, String)>>, fn(f64) -> bool),
}

/// Grafana's substitution for the variables: `All` for `vcenter` and
/// `username` (their `allValue` is `.*`), `$__rate_interval` as a range.
fn substitute(expr: &str, vcenter: &str, username: &str) -> String {
    expr.replace("$vcenter", vcenter)
        .replace("$username", username)
        .replace("$__rate_interval", "1m")
}

fn panels(dashboard: &Value) -> Vec<&Value> {
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|p| p["type"] != "row")
        .collect()
}

#[test]
fn the_dashboard_is_grafana_10_json_with_a_datasource_and_its_variables() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    // Grafana 10.0 writes schemaVersion 38; 10.4 writes 39.
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 38);
    let vars: Vec<&Value> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    let names: Vec<&str> = vars.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["datasource", "vcenter", "username"]);
    assert_eq!(vars[0]["type"], "datasource");
    assert_eq!(vars[0]["query"], "prometheus");
    for v in &vars[1..] {
        assert_eq!(v["type"], "query");
        assert!(
            v["definition"]
                .as_str()
                .unwrap()
                .starts_with("label_values(")
        );
        assert_eq!(v["allValue"], ".*");
    }
    let mut ids = BTreeSet::new();
    for p in dashboard["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate id: {p}");
        let grid = &p["gridPos"];
        assert!(
            grid["w"].as_u64().unwrap() + grid["x"].as_u64().unwrap() <= 24,
            "{p}"
        );
    }
    for p in panels(&dashboard) {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has no query", p["title"]);
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_query_returns_the_series_the_ci_world_implies() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let prometheus = Peer::prometheus();
    let world = World::seed().await;
    let port = receivers::free_port();
    // Sessions idle for a second count as idle; the reaper counts its
    // candidates (a dry run) so its panel has data.
    let config = world.config(
        "dashboard.yaml",
        &format!(
            "interval: 1s\nremote_write:\n  - url: {}\n    name: {TARGET}\nreaper:\n  enabled: true\n  users: ['ci_user_0[12]']\n  min_age: 0s\n  min_idle: 0s\n",
            prometheus.write_url()
        ),
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("listen_port: 0", &format!("listen_port: {port}"))
        .replace(
            "  login_grace: 1s\n",
            "  login_grace: 1s\n  idle_threshold: 1s\n",
        );
    std::fs::write(&config, text).unwrap();
    let reporter = Reporter::spawn(
        &[
            "start".to_string(),
            "--config".into(),
            config.display().to_string(),
        ],
        world.dir.path(),
    );

    // Wait until Prometheus holds a cycle in which every held session is
    // idle and the reaper has made a pass.
    let deadline = Instant::now() + Duration::from_secs(60);
    let now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    loop {
        let idle = prometheus
            .query("sum(vsphere_ci_user_sessions_idle_sessions)", now())
            .await;
        let candidates = prometheus
            .query("sum(vsphere_ci_user_sessions_reaper_candidates)", now())
            .await;
        // 13 held or seeded sessions and the admin's: every one but the
        // reporter's is idle.
        if idle.first().map(|s| s.1) == Some(14.0) && candidates.first().map(|s| s.1) == Some(5.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never had the world (idle {idle:?}, candidates {candidates:?}); reporter log:\n{}",
            reporter.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let at = now();
    // The probes the Kubernetes manifests use: ready, and alive because
    // cycles keep finishing.
    for (path, want) in [
        ("healthz", "ok\n"),
        ("livez", "ok: the last cycle finished "),
    ] {
        let response = reqwest::get(format!("http://127.0.0.1:{port}/{path}"))
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "/{path}");
        let body = response.text().await.unwrap();
        assert!(body.starts_with(want), "/{path}: {body:?}");
    }

    let expectations = expectations();
    let mut checked = 0;
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap();
        for target in panel["targets"].as_array().unwrap() {
            let ref_id = target["refId"].as_str().unwrap();
            let expr = substitute(target["expr"].as_str().unwrap(), ".*", ".*");
            let want = expectations
                .get(&(title, ref_id))
                .unwrap_or_else(|| panic!("no expectation for panel {title:?} {ref_id}: add one"));
            let got: Result = prometheus
                .query(&expr, at)
                .await
                .into_iter()
                .map(|(l, v)| (l.into_iter().collect(), v))
                .collect();
            match want {
                Expect::Exactly(want) => {
                    assert_eq!(&got, want, "panel {title:?} {ref_id}: {expr}")
                }
                Expect::Series(want, ok) => {
                    let series: Vec<_> = got.keys().cloned().collect();
                    assert_eq!(&series, want, "panel {title:?} {ref_id}: {expr}");
                    for (l, v) in &got {
                        assert!(ok(*v), "panel {title:?} {ref_id}: {l:?} = {v}");
                    }
                }
            }
            checked += 1;
        }
    }
    assert_eq!(
        checked,
        expectations.len(),
        "expectations for panels that are gone"
    );

    // The variables: label_values as Grafana asks Prometheus for them.
    let values = |label: &str, matcher: &str| {
        let prometheus = &prometheus;
        let label = label.to_string();
        let matcher = matcher.to_string();
        async move {
            let url = format!(
                "{}/api/v1/label/{label}/values?match[]={}",
                prometheus.base_url(),
                percent_encode(&matcher)
            );
            let text = reqwest::get(url).await.unwrap().text().await.unwrap();
            let body: Value = serde_json::from_str(&text).unwrap();
            body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        values("vcenter", "vsphere_ci_user_sessions_vcenter_up").await,
        [VCENTER]
    );
    assert_eq!(
        values(
            "username",
            &substitute(
                r#"vsphere_ci_user_sessions_open{vcenter=~"$vcenter"}"#,
                ".*",
                ".*"
            )
        )
        .await,
        [
            "administrator",
            "ci_user_01",
            "ci_user_02",
            "ci_user_03",
            "reporter",
            "vpxd-extension-5c1f9e2a"
        ]
    );

    // A chosen user narrows a panel to that user's series.
    let orphans = panels(&dashboard)
        .into_iter()
        .find(|p| p["title"] == "Orphaned sessions by reason and namespace")
        .unwrap();
    let expr = substitute(
        orphans["targets"][0]["expr"].as_str().unwrap(),
        VCENTER.replace('.', "\\\\.").as_str(),
        "ci_user_02",
    );
    let got = prometheus.query(&expr, at).await;
    assert_eq!(got.len(), 1, "{expr}: {got:?}");
    assert_eq!(
        got[0].0.get("reason").map(String::as_str),
        Some("no_running_job")
    );
    assert_eq!(got[0].1, 2.0);
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Per (panel title, refId): what the world implies.
fn expectations() -> BTreeMap<(&'static str, &'static str), Expect> {
    use Expect::*;
    let one = |pairs: &[(&str, &str)], v: f64| (labels(pairs), v);
    let mut e = BTreeMap::new();

    // The original's view: every session of a job's user, per agent, for
    // each of the two jobs of ci_user_01.
    let mut by_job = Result::new();
    for job in [JOB_A, JOB_B] {
        for (agent, n) in [
            (CSI_A, 2.0),
            (MAPI, 3.0),
            (CSI_ENDED, 1.0),
            (CCM, 1.0),
            (INSTALLER, 1.0),
            (GOVC, 1.0),
        ] {
            by_job.insert(labels(&[("ci_job", job), ("user_agent", agent)]), n);
        }
    }
    e.insert(("Sessions by CI job and user agent", "A"), Exactly(by_job));
    // 13 held or seeded, the admin's and the reporter's.
    e.insert(
        ("Sessions against the limit", "A"),
        Exactly([one(&[("vcenter", VCENTER)], 15.0)].into()),
    );
    e.insert(
        ("Sessions against the limit", "B"),
        Exactly([one(&[("vcenter", VCENTER)], 50.0)].into()),
    );
    e.insert(
        ("Share of the limit", "A"),
        Exactly([one(&[("vcenter", VCENTER)], 0.3)].into()),
    );

    let per_user_agent = [
        ("ci_user_01", MAPI, 3.0),
        ("ci_user_01", CSI_A, 2.0),
        ("ci_user_02", GOVC, 2.0),
        ("administrator", ADMIN_AGENT, 1.0),
        ("ci_user_01", GOVC, 1.0),
        ("ci_user_01", CCM, 1.0),
        ("ci_user_01", CSI_ENDED, 1.0),
        ("ci_user_01", INSTALLER, 1.0),
        ("ci_user_03", LONG, 1.0),
        ("reporter", REPORTER_AGENT, 1.0),
        ("vpxd-extension-5c1f9e2a", EXTENSION, 1.0),
    ];
    e.insert(
        ("Sessions by user and agent", "A"),
        Exactly(
            per_user_agent
                .iter()
                .map(|(u, a, n)| {
                    one(
                        &[("vcenter", VCENTER), ("username", u), ("user_agent", a)],
                        *n,
                    )
                })
                .collect(),
        ),
    );
    e.insert(
        ("Jobs per user", "A"),
        Exactly(
            [one(
                &[("vcenter", VCENTER), ("username", "ci_user_01")],
                2.0,
            )]
            .into(),
        ),
    );
    e.insert(
        ("Orphaned sessions by reason and namespace", "A"),
        Exactly(
            [
                one(
                    &[("reason", "job_ended"), ("namespace", "ci-op-zzzzzzzz")],
                    2.0,
                ),
                one(&[("reason", "no_running_job"), ("namespace", "")], 3.0),
                one(
                    &[("reason", "predates_running_jobs"), ("namespace", "")],
                    1.0,
                ),
            ]
            .into_iter()
            .map(|(l, v)| (l.into_iter().filter(|(_, v)| !v.is_empty()).collect(), v))
            .collect(),
        ),
    );
    let orphan = |u: &str, a: &str, reason: &str, ns: &str, n: f64| {
        let mut l = vec![
            ("vcenter", VCENTER),
            ("username", u),
            ("user_agent", a),
            ("reason", reason),
        ];
        if !ns.is_empty() {
            l.push(("namespace", ns));
        }
        one(&l, n)
    };
    e.insert(
        ("Orphaned sessions by user and agent", "A"),
        Exactly(
            [
                orphan("ci_user_01", CSI_ENDED, "job_ended", "ci-op-zzzzzzzz", 1.0),
                orphan("ci_user_01", CCM, "job_ended", "ci-op-zzzzzzzz", 1.0),
                orphan("ci_user_02", GOVC, "no_running_job", "", 2.0),
                orphan("ci_user_03", LONG, "no_running_job", "", 1.0),
                orphan("ci_user_01", GOVC, "predates_running_jobs", "", 1.0),
            ]
            .into(),
        ),
    );
    e.insert(
        ("Sessions attributed to jobs", "A"),
        Exactly(
            [
                one(
                    &[
                        ("ci_job", JOB_A),
                        ("build_id", "2001"),
                        ("namespace", "ci-op-aaaaaaaa"),
                        ("attributed_by", "user_agent"),
                    ],
                    2.0,
                ),
                one(
                    &[
                        ("ci_job", JOB_B),
                        ("build_id", "2002"),
                        ("namespace", "ci-op-bbbbbbbb"),
                        ("attributed_by", "vm_ip"),
                    ],
                    3.0,
                ),
            ]
            .into(),
        ),
    );
    // Every session but the reporter's is idle past the 1s threshold.
    e.insert(
        ("Idle sessions", "A"),
        Exactly(
            per_user_agent
                .iter()
                .filter(|(u, _, _)| *u != "reporter")
                .map(|(u, a, n)| one(&[("username", u), ("user_agent", a)], *n))
                .collect(),
        ),
    );
    // The ten oldest: all but the reporter's, which logged in last.
    e.insert(
        ("Oldest session", "A"),
        Series(
            per_user_agent
                .iter()
                .filter(|(u, _, _)| *u != "reporter")
                .map(|(u, a, _)| {
                    labels(&[("vcenter", VCENTER), ("username", u), ("user_agent", a)])
                })
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            |age| (0.0..600.0).contains(&age),
        ),
    );
    e.insert(
        ("Reaper", "A"),
        Exactly(
            [
                one(&[("vcenter", VCENTER), ("reason", "job_ended")], 2.0),
                one(&[("vcenter", VCENTER), ("reason", "no_running_job")], 2.0),
                one(
                    &[("vcenter", VCENTER), ("reason", "predates_running_jobs")],
                    1.0,
                ),
            ]
            .into(),
        ),
    );
    // A dry run terminates nothing: no reaped series.
    e.insert(("Reaper", "B"), Exactly(Result::new()));
    e.insert(
        ("Sources up", "A"),
        Exactly([one(&[("vcenter", VCENTER)], 1.0)].into()),
    );
    e.insert(("Sources up", "B"), Exactly([one(&[], 1.0)].into()));
    e.insert(
        ("Cycle duration", "A"),
        Series(vec![labels(&[])], |s| (0.0..10.0).contains(&s)),
    );
    e.insert(
        ("Cycle duration", "B"),
        Series(
            ["ci", "prow", "vcenter", "vm_map"]
                .iter()
                .map(|c| labels(&[("collector", c)]))
                .collect(),
            |s| (0.0..10.0).contains(&s),
        ),
    );
    e.insert(
        ("Reporter logins", "A"),
        Exactly([one(&[("vcenter", VCENTER)], 1.0)].into()),
    );
    e.insert(
        ("Reporter logins", "B"),
        Exactly(
            ["error", "invalid_login", "refused"]
                .iter()
                .map(|r| one(&[("vcenter", VCENTER), ("reason", r)], 0.0))
                .collect(),
        ),
    );
    e.insert(
        ("Remote-write queue per target", "A"),
        Series(vec![labels(&[("target", TARGET)])], |n| n >= 0.0),
    );
    e.insert(
        ("Remote-write lag per target", "A"),
        Series(vec![labels(&[("target", TARGET)])], |s| {
            (0.0..30.0).contains(&s)
        }),
    );
    e
}
