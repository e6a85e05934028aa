//! Cost of turning one cycle into a remote-write body: prepare (validate and
//! sort labels), encode (protobuf) and compress (snappy block), for a
//! snapshot of 10,000 series shaped like ours (six labels, shared values), in
//! Remote-Write 1.0 and 2.0. Prints the compressed sizes once.
//!
//! Run with `cargo bench --bench encode`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use vsphere_ci_session_metrics::metrics::{MetricFamily, Snapshot};
use vsphere_ci_session_metrics::sink::remote_write::encode::{
    WireVersion, compress, encode, prepare,
};

const SERIES: usize = 10_000;

fn snapshot() -> Snapshot {
    let mut family = MetricFamily::gauge(
        "vsphere_ci_user_sessions_correlated",
        "Sessions of a CI user and user agent, per running job using the user.",
    );
    for i in 0..SERIES {
        family.push(
            [
                ("username", format!("ci-user-{}", i % 4)),
                (
                    "user_agent",
                    format!("terraform-provider-vsphere/{}", i % 7),
                ),
                (
                    "ci_job",
                    format!("pull-ci-openshift-installer-main-e2e-vsphere-{}", i % 50),
                ),
                (
                    "build_id",
                    format!("{}", 1_800_000_000_000_000_000u64 + i as u64),
                ),
                (
                    "pull_request",
                    format!(
                        "https://github.com/openshift/installer/pull/{}",
                        9000 + i % 300
                    ),
                ),
                ("vcenter", format!("vcenter-{}.ci.example", i % 3)),
            ],
            (i % 17) as f64,
        );
    }
    Snapshot {
        timestamp_ms: 1_764_000_000_000,
        families: vec![family],
    }
}

fn bench(c: &mut Criterion) {
    let snapshot = snapshot();
    let cycle = prepare(&snapshot, &[("replica".into(), "a".into())]).cycle;
    for version in [WireVersion::V1, WireVersion::V2] {
        let raw = encode(&cycle, version);
        let compressed = compress(&raw).expect("compressing a small body cannot fail");
        println!(
            "{} series, {}: protobuf {} bytes, snappy {} bytes",
            SERIES,
            version.as_str(),
            raw.len(),
            compressed.len()
        );
    }
    c.bench_function("prepare 10k series", |b| {
        b.iter(|| prepare(black_box(&snapshot), &[("replica".into(), "a".into())]))
    });
    c.bench_function("encode+compress 10k series v1", |b| {
        b.iter(|| compress(&encode(black_box(&cycle), WireVersion::V1)))
    });
    c.bench_function("encode+compress 10k series v2", |b| {
        b.iter(|| compress(&encode(black_box(&cycle), WireVersion::V2)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
