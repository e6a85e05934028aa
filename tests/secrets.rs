//! No secret ever shows: the binary run at `RUST_LOG=trace` with every kind
//! of secret set, through paths that succeed and paths that fail, and
//! everything it prints, serves and pushes searched for each secret.
//!
//! Secrets: the vCenter password (a file) for a good and a dead vCenter, the
//! CI secret files' passwords on the fake build cluster, remote-write basic
//! auth (a password file) and a bearer token (inline, to a target that
//! refuses it), a Pushgateway bearer token (to a dead gateway), and a
//! password in URL user info (refused at start).
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

use std::time::Duration;

use fake_ci::{CompactScenario, FakeCi};
use receivers::{Reply, StubReceiver, free_port};
use reporter::{Reporter, cycles, scrape, scrape_until};
use vcsim::Vcsim;

const VC_PASSWORD: &str = "vc-Secret-4711";
const DEAD_VC_PASSWORD: &str = "vc-Secret-3344";
const CI_PASSWORD: &str = "ci-Secret-8123";
const RW_PASSWORD: &str = "rw-Secret-2233";
const RW_TOKEN: &str = "rw-Token-9944";
const PG_TOKEN: &str = "pg-Token-5566";
const URL_PASSWORD: &str = "url-Secret-7788";
const ALL: [&str; 7] = [
    VC_PASSWORD,
    DEAD_VC_PASSWORD,
    CI_PASSWORD,
    RW_PASSWORD,
    RW_TOKEN,
    PG_TOKEN,
    URL_PASSWORD,
];

fn assert_clean(what: &str, text: &str) {
    for secret in ALL {
        assert!(!text.contains(secret), "{secret} shows in {what}:\n{text}");
    }
}

struct World {
    /// A vCenter and a Pushgateway that refuse connections.
    dead_vcenter: receivers::DeadPort,
    dead_gateway: receivers::DeadPort,
    vcsim: Vcsim,
    ci: FakeCi,
    good: StubReceiver,
    refusing: StubReceiver,
    dir: tempfile::TempDir,
}

impl World {
    async fn start() -> World {
        let vcsim = Vcsim::start(&["-session", "ci-user-1@vsphere.local,govc,2"]);
        let ci = FakeCi::start().await;
        let scenario = format!(
            r#"{{"token": "{}", "jobs": [
                {{"name": "pj-a", "target": "e2e-vsphere", "ci_namespace": "ci-op-aaaaaaaa",
                  "secret": {{"metadata.json": {{"vsphere": {{"vCenter": "127.0.0.1", "username": "ci-user-1@vsphere.local", "password": "{CI_PASSWORD}"}}}},
                              "govc.sh": "export GOVC_URL=https://127.0.0.1/sdk\nexport GOVC_USERNAME=ci-user-1\nexport GOVC_PASSWORD='{CI_PASSWORD}'\n"}}}},
                {{"name": "pj-b", "target": "e2e-vsphere", "ci_namespace": "ci-op-bbbbbbbb",
                  "secret": {{"metadata.json": "{{\"vsphere\": {{\"password\": \"{CI_PASSWORD}\", broken"}}}}
            ]}}"#,
            fake_ci::DEFAULT_TOKEN
        );
        ci.set_scenario(CompactScenario::parse(&scenario).unwrap().into_scenario());
        let good = StubReceiver::start().await;
        let refusing = StubReceiver::start().await;
        refusing.default_reply(Reply::status(401).body("unauthorized"));
        World {
            dead_vcenter: receivers::dead_port(),
            dead_gateway: receivers::dead_port(),
            vcsim,
            ci,
            good,
            refusing,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn config(&self, port: u16) -> String {
        let write = |name: &str, text: &str| {
            let path = self.dir.path().join(name);
            std::fs::write(&path, format!("{text}\n")).unwrap();
            path.display().to_string()
        };
        format!(
            "vcenters:\n  - url: {vc}\n    username: reporter@vsphere.local\n    password_file: {vc_pw}\n\
             \x20 - url: http://localhost:{dead}\n    username: reporter@vsphere.local\n    password: {DEAD_VC_PASSWORD}\n    timeout: 2s\n\
             prow:\n  url: {deck}\nkubeconfig: {kc}\nlisten_port: {port}\ninterval: 1s\n\
             remote_write:\n  - url: {good}\n    name: good\n    basic_auth: {{username: u, password_file: {rw_pw}}}\n\
             \x20 - url: {refusing}\n    name: refusing\n    bearer_token: {RW_TOKEN}\n    remote_timeout: 2s\n\
             pushgateway:\n  url: http://127.0.0.1:{dead_pg}\n  bearer_token: {PG_TOKEN}\n  timeout: 1s\n",
            vc = self.vcsim.url().as_str().trim_end_matches('/'),
            vc_pw = write("vc-password", VC_PASSWORD),
            dead = self.dead_vcenter.port,
            deck = self.ci.url(),
            kc = self.ci.kubeconfig_in(self.dir.path()).display(),
            good = self.good.url,
            rw_pw = write("rw-password", RW_PASSWORD),
            refusing = self.refusing.url,
            dead_pg = self.dead_gateway.port,
        )
    }

    /// Every series both receivers got, as text.
    fn pushed(&self) -> String {
        let mut text = String::new();
        for stub in [&self.good, &self.refusing] {
            for request in stub.requests() {
                text.push_str(&format!("{:?}\n", request.series()));
            }
        }
        text
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_at_trace_level_shows_no_secret_anywhere() {
    let world = World::start().await;
    let port = free_port();
    let path = world.dir.path().join("config.yaml");
    std::fs::write(&path, world.config(port)).unwrap();
    let mut reporter = Reporter::spawn_logging(
        &[
            "start".into(),
            "--config".into(),
            path.display().to_string(),
        ],
        world.dir.path(),
        "trace",
    );
    let text = scrape_until(&reporter, port, Duration::from_secs(60), "3 cycles", |t| {
        cycles(t) >= 3.0
    })
    .await;
    assert!(
        !world.good.requests().is_empty(),
        "the good target got pushes"
    );
    assert!(
        !world.refusing.requests().is_empty(),
        "the refusing one was tried"
    );
    assert_clean("/metrics", &text);
    assert_clean("/healthz", &scrape(port).await.unwrap_or_default());
    reporter.terminate();
    let status = reporter.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    let log = reporter.log();
    assert!(log.contains("TRACE"), "trace logging was on");
    assert_clean("the log", &log);
    assert_clean("the pushed series", &world.pushed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_at_trace_level_and_bad_settings_show_no_secret_anywhere() {
    let world = World::start().await;
    let path = world.dir.path().join("config.yaml");
    std::fs::write(&path, world.config(0)).unwrap();
    let (status, log, _) = run(&world, &["once", "--config", &path.display().to_string()]);
    assert_eq!(
        status,
        Some(1),
        "the dead vCenter and targets fail once:\n{log}"
    );
    assert_clean("once's log", &log);
    assert_clean("the pushed series", &world.pushed());

    // URL user info is refused at start without being shown.
    for args in [
        vec![
            "once".to_string(),
            "--vsphere".into(),
            format!("https://administrator%40vsphere.local:{URL_PASSWORD}@vc.example.com"),
            "--vsphere-user".into(),
            "u".into(),
            "--vsphere-passwd".into(),
            "p".into(),
        ],
        vec![
            "once".to_string(),
            "--config".into(),
            path.display().to_string(),
            "--prow".into(),
            format!("https://u:{URL_PASSWORD}@deck.example.com"),
        ],
        vec![
            "once".to_string(),
            "--config".into(),
            path.display().to_string(),
            "--remote-write".into(),
            format!("http://u:{URL_PASSWORD}@127.0.0.1:1/api/v1/write"),
        ],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, log, _) = run(&world, &args);
        assert_eq!(status, Some(2), "{log}");
        assert_clean("a start-up error", &log);
    }
}

fn run(world: &World, args: &[&str]) -> (Option<i32>, String, Duration) {
    let started = std::time::Instant::now();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let mut reporter = Reporter::spawn_logging(&args, world.dir.path(), "trace");
    let status = reporter.wait_exit(Duration::from_secs(60));
    (status.code(), reporter.log(), started.elapsed())
}
