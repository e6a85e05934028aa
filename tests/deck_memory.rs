//! The deck memory claim, against the allocator: a 30 MB job list served
//! over HTTP (chunked, and gzipped as deck's proxy does) is parsed with
//! less than 1 MiB of extra heap at its peak, since it is decompressed and
//! parsed as it streams and only the selected jobs are kept. A counting
//! global allocator of this test binary sees every allocation, the
//! in-process server's included. One test only, so nothing else runs.

#[path = "support/alloc.rs"]
mod alloc;
#[path = "support/fake_ci.rs"]
mod fake_ci;

use std::time::Duration;

use bytes::Bytes;
use vsphere_ci_session_metrics::prow::{DeckSource, JobSelector};

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

/// 15,000 ProwJobs, one in a hundred a running vSphere job: about 30 MB.
fn job_list() -> Vec<u8> {
    let jobs: Vec<serde_json::Value> = (0..15_000)
        .map(|i| {
            let job = fake_ci::vsphere_job(&format!("job-{i:05}"), &format!("{i}"), "e2e-vsphere");
            if i % 100 == 0 {
                job
            } else {
                fake_ci::with_state(job, "success")
            }
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "items": jobs })).unwrap()
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut encoder, body).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30_mb_gzipped_job_list_is_parsed_with_under_a_mebibyte_of_heap() {
    let plain = job_list();
    assert!(plain.len() > 25_000_000, "{} bytes", plain.len());
    let body = Bytes::from(gzip(&plain));
    drop(plain);
    // Served in 64 KiB slices of one buffer: the server allocates no copy.
    let app = axum::Router::new().route(
        "/prowjobs.js",
        axum::routing::get(move || {
            let body = body.clone();
            async move {
                let chunks = (0..body.len().div_ceil(65_536)).map(move |i| {
                    let end = ((i + 1) * 65_536).min(body.len());
                    Ok::<_, std::convert::Infallible>(body.slice(i * 65_536..end))
                });
                (
                    [
                        ("content-type", "application/json"),
                        ("content-encoding", "gzip"),
                    ],
                    axum::body::Body::from_stream(futures::stream::iter(chunks)),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let deck = DeckSource::new(
        url::Url::parse(&format!("http://{addr}/")).unwrap(),
        Duration::from_secs(60),
        JobSelector::default(),
    )
    .unwrap();
    // A first call warms up the client (TLS roots, connection pool).
    let warm = deck.list_running_jobs().await.unwrap();
    assert_eq!(warm.len(), 150);
    drop(warm);

    let base = alloc::reset_peak();
    let jobs = deck.list_running_jobs().await.unwrap();
    let peak = alloc::peak() - base;
    eprintln!("deck over gzip: 150 of 15,000 jobs, peak extra heap {peak} bytes");
    assert_eq!(jobs.len(), 150);
    assert!(peak < 1024 * 1024, "peak extra heap {peak} bytes");
}
