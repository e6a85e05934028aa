//! Where snapshots go: the local `/metrics` endpoint, remote-write targets and
//! the Pushgateway. Every sink receives the same [`Snapshot`].

pub mod pushgateway;
pub mod remote_write;
pub mod scrape;

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::Error;
use crate::metrics::{MetricFamily, Snapshot};

/// A destination for snapshots.
#[async_trait]
pub trait Sink: Send + Sync {
    /// Short name for logs and failure lines, e.g. `remote_write`,
    /// `pushgateway`.
    fn name(&self) -> &str;

    /// Deliver one cycle's snapshot. Returns when the sink has accepted it or
    /// given up for this cycle (a sink may keep it buffered for later).
    async fn publish(&self, snapshot: Arc<Snapshot>) -> Result<(), Error>;

    /// Called once on shutdown, after the last publish (stale markers, group
    /// deletion). Must return within the sink's own time bound.
    async fn shutdown(&self) -> Result<(), Error> {
        Ok(())
    }

    /// The sink's own counters and gauges, added to the next snapshot.
    fn self_metrics(&self) -> Vec<MetricFamily> {
        Vec::new()
    }
}
