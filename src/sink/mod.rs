//! Where snapshots go: the local `/metrics` endpoint, remote-write targets and
//! the Pushgateway. Every sink receives the same [`Snapshot`].
//!
//! In the long-running mode each pushing sink is a sender of its own: a
//! cycle hands its snapshot off ([`Sink::hand_off`]) and ends, and the
//! sink's task delivers it (remote-write keeps every cycle, oldest first;
//! the Pushgateway only the newest). A slow or dead target costs only its
//! own queue: the schedule, `/metrics` and every other target keep their
//! pace.

pub mod pushgateway;
pub mod remote_write;
pub mod retry;
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

    /// Deliver one cycle's snapshot in the caller's task. Returns when the
    /// sink has delivered it or given up for now (a sink may keep it queued
    /// for later), within the sink's own time bound. `once` uses this.
    async fn publish(&self, snapshot: Arc<Snapshot>) -> Result<(), Error>;

    /// Give the snapshot to the sink's sender task and return at once:
    /// delivery never holds up collection. Needs [`Sink::start_sender`].
    /// An error only when the snapshot cannot be taken at all.
    fn hand_off(&self, snapshot: Arc<Snapshot>) -> Result<(), Error>;

    /// Start the task that delivers what is handed off (long-running mode).
    fn start_sender(self: Arc<Self>);

    /// When cycles are still waiting for this sink: one line saying how
    /// many and how old (for `once`'s summary). `None` when it is current.
    fn behind(&self) -> Option<String> {
        None
    }

    /// The key of this sink's entry in a `--state-file`; `None` when it
    /// keeps nothing between `once` runs.
    fn state_key(&self) -> Option<String> {
        None
    }

    /// What this sink must remember for the next `once` run, as JSON.
    fn export_state(&self) -> Option<Box<serde_json::value::RawValue>> {
        None
    }

    /// Take back what an earlier run exported. An error (naming what is
    /// wrong, never a value) leaves the sink as it was.
    fn import_state(&self, _state: &serde_json::value::RawValue) -> Result<(), String> {
        Ok(())
    }

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
