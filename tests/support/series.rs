//! Test support: snapshots shaped like the reporter's real output, for
//! memory and size measurements (tests/buffer_memory.rs, benches).
//!
//! Include it with `#[path = "support/series.rs"] mod series;`.

#![allow(dead_code)]

use vsphere_ci_session_metrics::metrics::{MetricFamily, Snapshot};

/// A snapshot of `series` series at `timestamp_ms`, in the reporter's
/// shapes: two thirds `correlated` (six labels: job names, PR links, user
/// agents as CI has them), the rest `open` and `job_sessions`.
pub fn realistic_snapshot(series: usize, timestamp_ms: i64) -> Snapshot {
    let mut correlated = MetricFamily::gauge(
        "vsphere_ci_user_sessions_correlated",
        "vSphere sessions of a CI user with a user agent, one series per running CI job logging in as that user.",
    );
    let mut open = MetricFamily::gauge(
        "vsphere_ci_user_sessions_open",
        "vSphere sessions open per user and user agent, each session counted once.",
    );
    let mut job_sessions = MetricFamily::gauge(
        "vsphere_ci_user_sessions_job_sessions",
        "Sessions of a user and agent proven to belong to a running CI job.",
    );
    for i in 0..series {
        let user = format!("ci_user_{:02}", i % 40);
        let agent = format!(
            "openshift-install/4.{}.{i} govmomi/0.{} (go1.22.{}; linux; amd64)",
            i % 20,
            30 + i % 7,
            i % 9
        );
        let job = format!(
            "pull-ci-openshift-installer-release-4.{}-e2e-vsphere-ovn-techpreview-{}",
            i % 20,
            i % 50
        );
        let build = format!("{}", 1_861_000_000_000_000_000u64 + i as u64);
        let pull = format!(
            "https://github.com/openshift/installer/pull/{}",
            9000 + i % 300
        );
        let vcenter = format!("vcenter-{}.ci.ibmc.devcluster.openshift.com", i % 4);
        match i % 3 {
            0 | 1 => correlated.push(
                [
                    ("username", user.as_str()),
                    ("user_agent", agent.as_str()),
                    ("ci_job", job.as_str()),
                    ("build_id", build.as_str()),
                    ("pull_request", pull.as_str()),
                    ("vcenter", vcenter.as_str()),
                ],
                (i % 17) as f64,
            ),
            _ if i % 2 == 0 => open.push(
                [
                    ("vcenter", vcenter.as_str()),
                    ("username", user.as_str()),
                    ("user_agent", agent.as_str()),
                ],
                (i % 23) as f64,
            ),
            _ => {
                let namespace = format!("ci-op-{:08x}", i);
                job_sessions.push(
                    [
                        ("vcenter", vcenter.as_str()),
                        ("username", user.as_str()),
                        ("user_agent", agent.as_str()),
                        ("ci_job", job.as_str()),
                        ("build_id", build.as_str()),
                        ("pull_request", pull.as_str()),
                        ("namespace", namespace.as_str()),
                        ("attributed_by", "user_agent"),
                    ],
                    (i % 5) as f64,
                )
            }
        }
    }
    Snapshot {
        timestamp_ms,
        families: vec![correlated, open, job_sessions],
    }
}
