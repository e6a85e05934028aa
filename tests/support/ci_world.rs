//! Test support: a CI world on vcsim for the leak-finding tests: two
//! running jobs sharing `ci_user_01`, their attributed sessions, the leaks
//! of an ended cluster, users no job uses, a session older than the jobs,
//! and sessions that are never leaks.
//!
//! Include it with `#[path = "support/ci_world.rs"] mod ci_world;` beside
//! `fake_ci` and `vcsim` (declared by the including test as those names).
//!
//! The world: jobs A and B run as `ci_user_01`. A's CSI driver names A's
//! cluster in its agent (2 sessions); B's machine API connects from B's
//! master VM (3). A cluster whose job ended left a CSI session and a cloud
//! provider session from its worker VM; `ci_user_02` (2 sessions) and
//! `ci_user_03` (one, with a long agent) hold sessions though no job uses
//! them; one `ci_user_01` session logged in before the jobs started; the
//! installer's session is the user's, not proven to either job. The test's
//! own admin and a vCenter extension are excluded by [`World::config`].

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::fake_ci::{self, CompactScenario, FakeCi};
use crate::vcsim::{SessionDetail, SoapSession, Vcsim};

pub const VCENTER: &str = "127.0.0.1";
pub const REPORTER_AGENT: &str = "vsphere-ci-session-metrics";
pub const CSI_A: &str = "k8s-csi-useragent-ci-op-aaaaaaaa-af877-4p9dw";
pub const VM_B: &str = "ci-op-bbbbbbbb-x1y2z-master-0";
pub const VM_B_IP: &str = "127.0.0.21";
pub const MAPI: &str = "machineAPIvSphereProvider";
pub const CSI_ENDED: &str = "k8s-csi-useragent-ci-op-zzzzzzzz-q1w2e-7hj3k";
pub const VM_ENDED: &str = "ci-op-zzzzzzzz-q1w2e-worker-0-ab12c";
pub const VM_ENDED_IP: &str = "127.0.0.31";
pub const CCM: &str = "k8s-cloud-provider-vsphere";
pub const INSTALLER: &str = "openshift-install/4.18 govmomi/0.46";
pub const GOVC: &str = "govc/0.37.3";
pub const EXTENSION: &str = "VMware vim-java 1.0";
pub const LONG: &str = "openshift-tests/4.18 (vsphere-problem-detector; run=pull-ci-openshift-origin-main-e2e-vsphere-ovn-upi)";
pub const JOB_A: &str = "pull-ci-openshift-vsphere-csi-driver-main-e2e-vsphere";
pub const JOB_B: &str = "periodic-ci-openshift-release-master-nightly-e2e-vsphere-ovn";

/// The seeded world and the sessions the test holds.
pub struct World {
    pub vcsim: Vcsim,
    pub ci: FakeCi,
    pub admin: SoapSession,
    /// ci_user_02's two sessions (no running job), kept to act as them.
    pub user02: Vec<SoapSession>,
    _held: Vec<SoapSession>,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
}

pub fn scenario(start: &str) -> fake_ci::Scenario {
    let metadata = |infra: &str| json!({"infraID": infra, "vsphere": {"vCenter": VCENTER, "username": "ci_user_01@vsphere.local", "password": "never-log-me"}});
    let text = json!({
        "token": fake_ci::DEFAULT_TOKEN,
        "jobs": [
            {"name": "pj-a", "build_id": "2001", "job": JOB_A, "target": "e2e-vsphere",
             "ci_namespace": "ci-op-aaaaaaaa", "secret": {"metadata.json": metadata("ci-op-aaaaaaaa-af877-4p9dw")}},
            {"name": "pj-b", "build_id": "2002", "job": JOB_B, "target": "e2e-vsphere-ovn",
             "ci_namespace": "ci-op-bbbbbbbb", "secret": {"metadata.json": metadata("ci-op-bbbbbbbb-x1y2z")}},
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

pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl World {
    pub async fn seed() -> World {
        let vcsim = Vcsim::start(&[
            "-vm",
            &format!("{VM_B},{VM_B_IP}"),
            "-vm",
            &format!("{VM_ENDED},{VM_ENDED_IP}"),
            "-session",
            &format!("ci_user_01@vsphere.local,{GOVC},1"),
        ]);
        let admin = vcsim.admin().await;
        let mut user02 = Vec::new();
        for _ in 0..2 {
            user02.push(vcsim.login("ci_user_02@vsphere.local", GOVC).await);
        }
        // The jobs start two seconds from now (login_grace is 1s): the
        // sessions above predate them, those below do not.
        let start = SystemTime::now() + Duration::from_secs(2);
        let ci = FakeCi::start().await;
        ci.set_scenario(scenario(&rfc3339(start)));
        while SystemTime::now() < start + Duration::from_millis(1100) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(vcsim.login(r"VSPHERE.LOCAL\CI_User_01", CSI_A).await);
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
                .login("vpxd-extension-5c1f9e2a@vsphere.local", EXTENSION)
                .await,
        );
        held.push(vcsim.login("ci_user_03", LONG).await);
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = ci.kubeconfig_in(dir.path());
        World {
            vcsim,
            ci,
            admin,
            user02,
            _held: held,
            dir,
            kubeconfig,
        }
    }

    /// A config file for this world with `extra` appended.
    pub fn config(&self, name: &str, extra: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let text = format!(
            r#"vcenters:
  - url: {vc}
    username: reporter@vsphere.local
    password: never-log-me-either
    session_limit: 50
prow:
  url: {deck}
kubeconfig: {kubeconfig}
listen_port: 0
leaks:
  login_grace: 1s
  exclude_users: ['administrator', 'vpxd-extension-.*']
{extra}"#,
            vc = self.vcsim.url().as_str().trim_end_matches('/'),
            deck = self.ci.url(),
            kubeconfig = self.kubeconfig.display(),
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// vcsim's sessions by key, as the admin sees them.
    pub async fn listed(&self) -> BTreeMap<String, SessionDetail> {
        self.admin
            .session_details()
            .await
            .into_iter()
            .map(|s| (s.key.clone(), s))
            .collect()
    }
}
