//! The local `/metrics` endpoint kept for scrapers, `/healthz` (ready:
//! the process serves) and `/livez` (alive: cycles keep finishing).
//!
//! It serves the latest cycle's snapshot as it is: a scrape never triggers a
//! vCenter call (the original exporter logged in to vCenter on every scrape,
//! so each scraper multiplied its sessions).

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use crate::metrics::Snapshot;

/// Content type of the text exposition format 0.0.4.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The snapshot the endpoint serves, replaced by each cycle, and when.
#[derive(Debug)]
pub struct LatestSnapshot {
    latest: RwLock<Option<(Arc<Snapshot>, Instant)>>,
    started: Instant,
}

impl Default for LatestSnapshot {
    fn default() -> Self {
        LatestSnapshot {
            latest: RwLock::new(None),
            started: Instant::now(),
        }
    }
}

impl LatestSnapshot {
    pub fn set(&self, snapshot: Arc<Snapshot>) {
        // A poisoned lock only means a reader panicked while cloning an Arc;
        // the value inside is still whole.
        *self.latest.write().unwrap_or_else(|e| e.into_inner()) = Some((snapshot, Instant::now()));
    }

    pub fn get(&self) -> Option<Arc<Snapshot>> {
        self.latest
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(s, _)| s.clone())
    }

    /// When the last cycle finished, if one did.
    fn finished_at(&self) -> Option<Instant> {
        self.latest
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(_, at)| *at)
    }
}

/// How many of the schedule's longest gaps may pass without a finished
/// cycle before `/livez` fails and Kubernetes restarts the process.
pub const LIVENESS_GAPS: u32 = 3;

/// How long `/livez` waits for a finished cycle: [`LIVENESS_GAPS`] of the
/// schedule's longest gap, or, when longer, one gap plus the longest a
/// cycle (and the reaper's pass after it) may take by its budgets, so a
/// slow vCenter or build cluster never gets the process restarted.
/// `None` (never stale) for a schedule that does not fire again.
pub fn liveness_limit(gap: Option<Duration>, longest_cycle: Duration) -> Option<Duration> {
    let gap = gap?;
    Some(
        gap.saturating_mul(LIVENESS_GAPS)
            .max(gap.saturating_add(longest_cycle)),
    )
}

/// What the endpoint knows to answer `/livez`.
#[derive(Debug, Clone)]
struct Endpoint {
    latest: Arc<LatestSnapshot>,
    /// [`liveness_limit`].
    limit: Option<Duration>,
}

/// `/livez`: alive while the last cycle finished (or, before the first,
/// the process started) at most `limit` ago. Cycles are bounded by their
/// budgets, so only a stuck process misses that.
pub fn liveness(
    finished: Option<Instant>,
    started: Instant,
    now: Instant,
    limit: Option<Duration>,
) -> Result<String, String> {
    let since = now.saturating_duration_since(finished.unwrap_or(started));
    let what = if finished.is_some() {
        "the last cycle finished"
    } else {
        "started, no cycle finished yet,"
    };
    match limit {
        Some(limit) if since > limit => Err(format!(
            "stuck: {what} {}s ago, more than the {}s allowed\n",
            since.as_secs(),
            limit.as_secs()
        )),
        _ => Ok(format!("ok: {what} {}s ago\n", since.as_secs())),
    }
}

/// The router: `/metrics`, `/healthz` and `/livez` (see [`liveness_limit`]).
pub fn router(latest: Arc<LatestSnapshot>, limit: Option<Duration>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/livez", get(livez))
        .with_state(Endpoint { latest, limit })
}

/// Serve until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    latest: Arc<LatestSnapshot>,
    limit: Option<Duration>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(latest, limit))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn livez(State(endpoint): State<Endpoint>) -> Response {
    let latest = &endpoint.latest;
    match liveness(
        latest.finished_at(),
        latest.started,
        Instant::now(),
        endpoint.limit,
    ) {
        Ok(text) => text.into_response(),
        Err(text) => (StatusCode::SERVICE_UNAVAILABLE, text).into_response(),
    }
}

async fn metrics(State(endpoint): State<Endpoint>) -> Response {
    match endpoint.latest.get() {
        Some(snapshot) => (
            [(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)],
            snapshot.render_text(),
        )
            .into_response(),
        // Before the first cycle there is nothing true to say; 503 makes the
        // scrape fail visibly instead of reporting zero sessions.
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no cycle has completed yet\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alive_until_the_limit_passes_without_a_finished_cycle() {
        let t0 = Instant::now();
        let limit = Some(Duration::from_secs(180));
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Before the first cycle, counted from the start.
        assert!(liveness(None, t0, at(179), limit).is_ok());
        assert!(liveness(None, t0, at(181), limit).is_err());
        // After cycles, counted from the last one.
        assert!(liveness(Some(at(100)), t0, at(280), limit).is_ok());
        let stuck = liveness(Some(at(100)), t0, at(281), limit).unwrap_err();
        assert_eq!(
            stuck,
            "stuck: the last cycle finished 181s ago, more than the 180s allowed\n"
        );
        // A schedule that never fires again is never stale.
        assert!(liveness(Some(at(0)), t0, at(1_000_000), None).is_ok());
    }

    #[test]
    fn the_limit_is_three_gaps_or_one_gap_and_the_longest_cycle() {
        let s = Duration::from_secs;
        assert_eq!(liveness_limit(Some(s(60)), s(100)), Some(s(180)));
        // A cycle that may take 160 s and a reaper pass of 75 s after it.
        assert_eq!(liveness_limit(Some(s(60)), s(235)), Some(s(295)));
        assert_eq!(liveness_limit(None, s(100)), None);
    }
}
