//! Cost of the pure join for a busy vCenter: 2,000 sessions over 40 users and
//! 12 user agents, 200 running jobs sharing those users, rendered as text.

use criterion::{Criterion, criterion_group, criterion_main};
use vsphere_ci_session_metrics::ci::CiIdentity;
use vsphere_ci_session_metrics::correlate::{CycleInput, JobUsers, VcenterObservation, correlate};
use vsphere_ci_session_metrics::metrics::Snapshot;
use vsphere_ci_session_metrics::prow::RunningJob;
use vsphere_ci_session_metrics::vcenter::UserSession;

fn input() -> CycleInput {
    let sessions = (0..2000)
        .map(|i| UserSession {
            key: format!("key-{i}"),
            user_name: format!("VSPHERE.LOCAL\\ci-user-{}", i % 40),
            full_name: String::new(),
            login_time: "2026-11-25T10:00:00Z".into(),
            last_active_time: "2026-11-25T10:00:00Z".into(),
            ip_address: "10.0.0.1".into(),
            user_agent: format!("agent-{}", i % 12),
            call_count: i,
        })
        .collect();
    let jobs = (0..200)
        .map(|i| JobUsers {
            job: RunningJob {
                id: format!("job-{i}"),
                build_id: format!("{}", 1_800_000_000_000_000_000u64 + i),
                job_name: format!("pull-ci-openshift-installer-main-e2e-vsphere-{i}"),
                pull_request: format!("https://github.com/openshift/installer/pull/{i}"),
                target: "e2e-vsphere".into(),
                cluster: "vsphere02".into(),
                cluster_profile: "vsphere-2".into(),
            },
            identities: vec![CiIdentity {
                vcenter: "vcenter.example.com".into(),
                username: format!("ci-user-{}", i % 40),
            }],
        })
        .collect();
    CycleInput {
        vcenters: vec![VcenterObservation {
            vcenter: "vcenter.example.com".into(),
            sessions: Some(sessions),
        }],
        prow_up: true,
        jobs,
    }
}

fn bench(c: &mut Criterion) {
    let input = input();
    c.bench_function("correlate 2000 sessions x 200 jobs", |b| {
        b.iter(|| correlate(std::hint::black_box(&input)))
    });
    let snapshot = Snapshot {
        timestamp_ms: 0,
        families: correlate(&input),
    };
    c.bench_function("render_text of that snapshot", |b| {
        b.iter(|| std::hint::black_box(&snapshot).render_text())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
