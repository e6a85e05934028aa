//! Cost of the pure join for a busy vCenter: 2,000 sessions over 40 users and
//! 12 user agents, 200 running jobs sharing those users, rendered as text.
//! A quarter of the sessions are CSI sessions naming a cluster (of a running
//! job or of one of 50 ended ones), a quarter come from VM guest IPs, so
//! the leak classification does its real work. The same input gives the
//! cost of `sessions`: the inventory and each view.

use criterion::{Criterion, criterion_group, criterion_main};
use vsphere_ci_session_metrics::ci::CiIdentity;
use vsphere_ci_session_metrics::correlate::{CycleInput, JobUsers, VcenterObservation, correlate};
use vsphere_ci_session_metrics::inventory::Inventory;
use vsphere_ci_session_metrics::metrics::Snapshot;
use vsphere_ci_session_metrics::prow::RunningJob;
use vsphere_ci_session_metrics::report::{Filters, Options, Output, View, render};
use vsphere_ci_session_metrics::vcenter::{UserSession, VcenterClock};

/// The ci-op namespace of job `i` (jobs 200..250 have ended).
fn namespace(i: u64) -> String {
    format!("ci-op-{i:08}")
}

fn input() -> CycleInput {
    let sessions = (0..2000u64)
        .map(|i| UserSession {
            key: format!("key-{i}"),
            user_name: format!("VSPHERE.LOCAL\\ci-user-{}", i % 40),
            full_name: String::new(),
            login_time: "2026-11-25T10:00:00Z".into(),
            last_active_time: "2026-11-25T10:00:00Z".into(),
            ip_address: format!("10.0.{}.{}", (i / 4) % 250, i % 4),
            user_agent: match i % 4 {
                0 => format!("k8s-csi-useragent-{}-ab123-cd456", namespace((i / 4) % 250)),
                _ => format!("agent-{}", i % 12),
            },
            call_count: i as i64,
            extension_session: false,
        })
        .collect();
    let jobs = (0..200)
        .map(|i| JobUsers {
            job: RunningJob {
                id: format!("job-{i}"),
                start_ms: Some(1_795_597_201_000),
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
            namespace: Some(namespace(i)),
            infra_id: Some(format!("{}-ab123-cd456", namespace(i))),
        })
        .collect();
    // Every fourth address, 10.0.N.1, is a guest IP of job N's worker.
    let vm_names_by_ip = (0..250u64)
        .map(|n| {
            (
                format!("10.0.{n}.1"),
                vec![format!("{}-ab123-cd456-worker-0", namespace(n))],
            )
        })
        .collect();
    CycleInput {
        vcenters: vec![VcenterObservation {
            vcenter: "vcenter.example.com".into(),
            sessions: Some(sessions),
            clock: Some(VcenterClock {
                vcenter_ms: 1_795_600_000_000,
                local_ms: 1_795_600_000_000,
            }),
            vm_names_by_ip,
            session_limit: 3000,
            ..VcenterObservation::default()
        }],
        prow_up: true,
        jobs,
        ..CycleInput::default()
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

    // What `sessions` does after the gather: every session's verdict as a
    // document, then each view.
    c.bench_function("inventory of 2000 sessions x 200 jobs", |b| {
        b.iter(|| Inventory::build(std::hint::black_box(&input), Vec::new(), 0))
    });
    let inventory = Inventory::build(&input, Vec::new(), 0);
    for (name, view, output) in [
        ("sessions table (by user)", View::Users, Output::Table),
        ("sessions --by job", View::Jobs, Output::Table),
        ("sessions --orphaned", View::Orphaned, Output::Table),
        ("sessions -o json", View::Users, Output::Json),
    ] {
        let options = Options {
            view,
            output,
            filters: Filters::default(),
            width: Some(120),
            colour: false,
        };
        c.bench_function(name, |b| {
            b.iter(|| render(std::hint::black_box(&inventory), &options))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
