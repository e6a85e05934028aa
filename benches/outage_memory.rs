//! Memory of a one-hour outage: 4,000 of the reporter's series every 60 s
//! handed to a remote-write target that is down, so all 60 cycles stay in
//! its queue. Prints the queue's own byte count, bytes per sample, and the
//! process's peak RSS (`VmHWM`) before and after.
//!
//! Run: `cargo bench --bench outage_memory` (or the built binary under
//! `/usr/bin/time -v` for the whole-process figure).

#[path = "../tests/support/series.rs"]
mod series;

use std::sync::Arc;

use vsphere_ci_session_metrics::sink::Sink;
use vsphere_ci_session_metrics::sink::remote_write::{
    BUFFERED_BYTES, BUFFERED_SAMPLES, RemoteWriteConfig, RemoteWriteSink,
};

const SERIES: usize = 4000;
const CYCLES: i64 = 60;

/// `VmHWM` of this process, in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn gauge(sink: &RemoteWriteSink, name: &str) -> f64 {
    sink.self_metrics()
        .into_iter()
        .find(|f| f.name == name)
        .and_then(|f| f.samples.first().map(|s| s.value))
        .unwrap_or(0.0)
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let _guard = runtime.enter();
    let sink = RemoteWriteSink::new(
        RemoteWriteConfig {
            // Nothing listens there: the target is down for the whole hour.
            url: "http://127.0.0.1:9/api/v1/write".into(),
            ..RemoteWriteConfig::default()
        },
        vec![("replica".into(), "a".into())],
    )
    .expect("a valid config");
    let start_rss = peak_rss_kib();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64;
    // The oldest cycle just inside the hour the queue keeps.
    let start = now - (CYCLES - 1) * 60_000 - 30_000;
    for i in 0..CYCLES {
        let snapshot = Arc::new(series::realistic_snapshot(SERIES, start + i * 60_000));
        Sink::hand_off(&sink, snapshot).expect("a newer cycle is taken");
    }
    let samples = gauge(&sink, BUFFERED_SAMPLES);
    let bytes = gauge(&sink, BUFFERED_BYTES);
    let queued_rss = peak_rss_kib();
    // What `once --state-file` would write for this queue.
    let state = sink
        .export_state()
        .expect("a remote-write target has state");
    let state = state.get();
    println!(
        "one-hour outage, {SERIES} series x {CYCLES} cycles: {samples} samples queued, \
         {bytes} bytes ({:.1} bytes/sample); peak RSS {} KiB at start, {} KiB with the \
         queue full; its state file {} bytes ({:.1} bytes/sample), peak RSS {} KiB after writing it",
        bytes / samples,
        start_rss,
        queued_rss,
        state.len(),
        state.len() as f64 / samples,
        peak_rss_kib()
    );
}
