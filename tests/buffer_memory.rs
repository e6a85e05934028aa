//! The outage buffer's byte count against the allocator: a counting global
//! allocator (this test binary's own) sees what buffering an hour of the
//! reporter's series really costs, and `OutageBuffer::bytes` must agree.
//! One test only, so nothing else allocates meanwhile.

#[path = "support/series.rs"]
mod series;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use vsphere_ci_session_metrics::sink::remote_write::buffer::OutageBuffer;
use vsphere_ci_session_metrics::sink::remote_write::encode::prepare;

/// The system allocator, counting the bytes live at any time.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only
// the byte count is kept beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` holds for `System` too.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc` and `alloc`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size, Ordering::Relaxed);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// An hour of 4,000 series every 60 s, as a one-hour outage buffers it.
#[test]
fn the_buffers_byte_count_matches_what_the_allocator_sees() {
    const SERIES: usize = 4000;
    const CYCLES: i64 = 60;
    let start = 1_800_000_000_000i64;
    let mut buffer = OutageBuffer::new(usize::MAX, usize::MAX, Duration::from_secs(7200));

    let before = LIVE.load(Ordering::Relaxed);
    for i in 0..CYCLES {
        let snapshot = series::realistic_snapshot(SERIES, start + i * 60_000);
        let prepared = prepare(&snapshot, &[]);
        assert!(prepared.invalid.is_empty());
        drop(snapshot);
        buffer.push(prepared.cycle, start + i * 60_000);
    }
    let grown = LIVE.load(Ordering::Relaxed) - before;
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
    let before_drain = LIVE.load(Ordering::Relaxed);
    while buffer.pop_front().is_some() {}
    assert_eq!(buffer.bytes(), 0);
    let freed = before_drain - LIVE.load(Ordering::Relaxed);
    assert!(
        freed as f64 >= 0.95 * counted as f64,
        "freed {freed} of {counted} counted bytes"
    );
}
