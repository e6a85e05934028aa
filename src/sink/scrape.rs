//! The local `/metrics` endpoint kept for scrapers, and `/healthz`.
//!
//! It serves the latest cycle's snapshot as it is: a scrape never triggers a
//! vCenter call (the original exporter logged in to vCenter on every scrape,
//! so each scraper multiplied its sessions).

use std::future::Future;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use crate::metrics::Snapshot;

/// Content type of the text exposition format 0.0.4.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The snapshot the endpoint serves, replaced by each cycle.
#[derive(Debug, Default)]
pub struct LatestSnapshot(RwLock<Option<Arc<Snapshot>>>);

impl LatestSnapshot {
    pub fn set(&self, snapshot: Arc<Snapshot>) {
        // A poisoned lock only means a reader panicked while cloning an Arc;
        // the value inside is still whole.
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(snapshot);
    }

    pub fn get(&self) -> Option<Arc<Snapshot>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The router: `/metrics` and `/healthz`.
pub fn router(latest: Arc<LatestSnapshot>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(latest)
}

/// Serve until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    latest: Arc<LatestSnapshot>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(latest))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(latest): State<Arc<LatestSnapshot>>) -> Response {
    match latest.get() {
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
