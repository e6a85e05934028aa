//! The outage buffer's byte count against the allocator: a counting global
//! allocator (this test binary's own) sees what buffering an hour of the
//! reporter's series really costs, and `OutageBuffer::bytes` must agree.
//! One test only, so nothing else allocates meanwhile.

#[path = "support/alloc.rs"]
mod alloc;
#[path = "support/series.rs"]
mod series;

use std::time::Duration;

use vsphere_ci_session_metrics::sink::remote_write::buffer::OutageBuffer;
use vsphere_ci_session_metrics::sink::remote_write::encode::prepare;

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

/// An hour of 4,000 series every 60 s, as a one-hour outage buffers it.
#[test]
fn the_buffers_byte_count_matches_what_the_allocator_sees() {
    const SERIES: usize = 4000;
    const CYCLES: i64 = 60;
    let start = 1_800_000_000_000i64;
    let mut buffer = OutageBuffer::new(usize::MAX, usize::MAX, Duration::from_secs(7200));

    let before = alloc::live();
    for i in 0..CYCLES {
        let snapshot = series::realistic_snapshot(SERIES, start + i * 60_000);
        let prepared = prepare(&snapshot, &[]);
        assert!(prepared.invalid.is_empty());
        drop(snapshot);
        buffer.push(prepared.cycle, start + i * 60_000);
    }
    let grown = alloc::live() - before;
    let counted = buffer.bytes();
    let samples = buffer.samples();
    eprintln!(
        "outage buffer: {CYCLES} cycles x {SERIES} series = {samples} samples; counted {counted} bytes \
         ({:.1} per sample), allocator {grown} bytes",
        counted as f64 / samples as f64
    );
    assert_eq!(samples, SERIES * CYCLES as usize);
    // What the count leaves out is the tables' spare capacity: a few
    // percent at most.
    let gap = grown.abs_diff(counted) as f64 / grown as f64;
    assert!(gap < 0.05, "counted {counted}, the allocator saw {grown}");

    // Emptying the buffer gives it all back.
    let before_drain = alloc::live();
    while buffer.pop_front().is_some() {}
    assert_eq!(buffer.bytes(), 0);
    let freed = before_drain - alloc::live();
    assert!(
        freed as f64 >= 0.95 * counted as f64,
        "freed {freed} of {counted} counted bytes"
    );
}
