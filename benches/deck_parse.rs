//! Throughput and peak memory of [`parse_deck`] on a deck body the size of
//! OpenShift CI's (~30 MB, 15,000 jobs, ~1% of them running on vSphere).
//!
//! Peak memory is measured with a counting global allocator: the bytes live
//! at once while parsing, above what was live before (the input buffer
//! itself is excluded, since in production the body is streamed from the
//! socket). Run with `cargo bench --bench deck_parse`; the numbers are
//! printed before criterion's timing.

#[path = "../tests/support/alloc.rs"]
mod alloc;

use std::time::Instant;

use criterion::{Criterion, Throughput};
use serde_json::json;
use vsphere_ci_session_metrics::prow::{JobSelector, parse_deck};

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

const JOBS: usize = 15_000;

/// A deck body: realistic ProwJobs (refs, pod_spec with a long arg list,
/// status), every 100th a pending vSphere job.
fn deck_body() -> Vec<u8> {
    let mut items = Vec::with_capacity(JOBS);
    for i in 0..JOBS {
        let vsphere = i % 100 == 0;
        let (cloud, cluster) = if vsphere {
            ("vsphere", "vsphere02")
        } else {
            ("aws", "build05")
        };
        let state = if vsphere || i % 3 == 0 {
            "pending"
        } else {
            "success"
        };
        let target = if vsphere {
            "e2e-vsphere-ovn"
        } else {
            "e2e-aws-ovn"
        };
        let job = format!("pull-ci-openshift-repo{}-main-{target}", i % 300);
        let args: Vec<String> = (0..1)
            .map(|k| format!("--secret-dir=/usr/local/{job}-cluster-profile-{k}"))
            .chain([
                format!("--target={target}"),
                "--report-credentials-file=/etc/report/credentials".into(),
            ])
            .collect();
        items.push(json!({
            "kind": "ProwJob", "apiVersion": "prow.k8s.io/v1",
            "metadata": {
                "name": format!("{i:08x}-5b1e-11f0-9a4e-0a580a800{:03}", i % 1000),
                "namespace": "ci",
                "resourceVersion": format!("{}", 9_000_000 + i),
                "creationTimestamp": "2026-11-25T09:00:00Z",
                "labels": {
                    "created-by-prow": "true",
                    "ci-operator.openshift.io/cloud": cloud,
                    "ci-operator.openshift.io/cloud-cluster-profile": cloud,
                    "prow.k8s.io/build-id": format!("18611{i:014}"),
                    "prow.k8s.io/job": job.chars().take(63).collect::<String>(),
                    "prow.k8s.io/refs.org": "openshift",
                    "prow.k8s.io/refs.repo": format!("repo{}", i % 300),
                    "prow.k8s.io/type": "presubmit"
                },
                "annotations": {"prow.k8s.io/job": job, "prow.k8s.io/context": format!("ci/prow/{target}")}
            },
            "spec": {
                "type": "presubmit", "agent": "kubernetes", "cluster": cluster, "namespace": "ci",
                "job": job, "report": true, "context": format!("ci/prow/{target}"),
                "rerun_command": format!("/test {target}"),
                "refs": {
                    "org": "openshift", "repo": format!("repo{}", i % 300), "base_ref": "main",
                    "base_sha": "0123456789abcdef0123456789abcdef01234567",
                    "pulls": [{"number": 1000 + i, "author": "someone", "sha": "89abcdef0123456789abcdef0123456789abcdef",
                               "link": format!("https://github.com/openshift/repo{}/pull/{}", i % 300, 1000 + i),
                               "title": "Bump the dependency versions to pick up the fixes"}]
                },
                "pod_spec": {"containers": [{"name": "", "image": "ci-operator:latest", "command": ["ci-operator"], "args": args,
                    "resources": {"requests": {"cpu": "10m"}},
                    "volumeMounts": [{"name": "pull-secret", "mountPath": "/etc/pull-secret", "readOnly": true}]}],
                    "serviceAccountName": "ci-operator"},
                "prowjob_defaults": {"tenant_id": "GlobalDefaultID"}
            },
            "status": {
                "startTime": "2026-11-25T09:00:01Z", "pendingTime": "2026-11-25T09:00:05Z", "state": state,
                "description": "Job triggered.", "pod_name": format!("{i:08x}"), "build_id": format!("18611{i:014}"),
                "url": format!("https://prow.ci.openshift.org/view/gs/test-platform-results/pr-logs/pull/openshift_repo/{}/{job}/18611{i:014}", 1000 + i)
            }
        }));
    }
    serde_json::to_vec(&json!({ "items": items })).expect("the generated body serializes")
}

fn bench(c: &mut Criterion) {
    let body = deck_body();
    let selector = JobSelector::default();

    // One measured pass: time and peak live bytes above the baseline.
    let baseline = alloc::reset_peak();
    let started = Instant::now();
    let jobs = parse_deck(body.as_slice(), &selector).expect("the generated body parses");
    let elapsed = started.elapsed();
    let peak = alloc::peak() - baseline;
    let mb = body.len() as f64 / 1e6;
    println!(
        "deck_parse: {mb:.1} MB, {JOBS} jobs, {} selected, one pass {:.0} ms ({:.0} MB/s), peak extra heap {:.1} KiB",
        jobs.len(),
        elapsed.as_secs_f64() * 1e3,
        mb / elapsed.as_secs_f64(),
        peak as f64 / 1024.0
    );
    // For comparison: the whole-tree approach this parser avoids.
    let baseline = alloc::reset_peak();
    let tree: serde_json::Value = serde_json::from_slice(&body).expect("the generated body parses");
    let tree_peak = alloc::peak() - baseline;
    drop(tree);
    println!(
        "deck_parse: a serde_json::Value tree of the same body peaks at {:.1} MiB",
        tree_peak as f64 / (1024.0 * 1024.0)
    );

    let mut group = c.benchmark_group("deck_parse");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.sample_size(10);
    group.bench_function("parse_deck_30mb", |b| {
        b.iter(|| parse_deck(body.as_slice(), &selector).expect("the generated body parses"))
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
