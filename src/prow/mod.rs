//! Running vSphere CI jobs, from Prow's deck (`/prowjobs.js`) or from the
//! ProwJob API (`prow.k8s.io/v1`) on the Prow service cluster.
//!
//! - [`job`]: the ProwJob fields we read and the selection rule, shared by both paths.
//! - [`deck`]: deck's JSON list, streamed ([`parse_deck`]).
//! - [`api`]: the ProwJob API through a kube client.

pub mod api;
pub mod deck;
pub mod job;

pub use api::ProwJobApiSource;
pub use deck::{DeckSource, parse_deck};

use crate::error::Error;

/// A ProwJob in state `pending` that runs on vSphere, reduced to the fields
/// the reporter uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunningJob {
    /// `metadata.name` of the ProwJob; the ci-op namespace carries it in its
    /// `ci.openshift.io/jobid` label.
    pub id: String,
    /// Label `prow.k8s.io/build-id`, else `status.build_id`.
    pub build_id: String,
    /// `status.startTime` (Prow's clock), milliseconds since the Unix epoch;
    /// `None` when absent or unreadable. A session that logged in well
    /// before every job of its user started belongs to none of them.
    pub start_ms: Option<i64>,
    /// Annotation `prow.k8s.io/job`, else `spec.job`.
    pub job_name: String,
    /// First `spec.refs.pulls[].link`, empty for periodic jobs.
    pub pull_request: String,
    /// From `--target` in the first container's args (any form Go's flag
    /// package accepts): the name of the
    /// secret holding the cluster profile files in the ci-op namespace.
    pub target: String,
    /// Build cluster alias, `spec.cluster` (e.g. `vsphere02`).
    pub cluster: String,
    /// Label `ci-operator.openshift.io/cloud-cluster-profile`, may be empty.
    pub cluster_profile: String,
}

/// Which pending ProwJobs count as vSphere jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSelector {
    /// Value of label `ci-operator.openshift.io/cloud` that marks a vSphere job.
    pub cloud: String,
    /// For jobs without that label: `spec.cluster` must start with this.
    pub cluster_prefix: String,
}

impl Default for JobSelector {
    fn default() -> Self {
        JobSelector {
            cloud: "vsphere".to_string(),
            cluster_prefix: "vsphere".to_string(),
        }
    }
}

/// Where running jobs come from, chosen by the configuration.
#[derive(Debug)]
pub enum ProwSource {
    Deck(DeckSource),
    Api(ProwJobApiSource),
}

impl ProwSource {
    /// The running vSphere jobs, sorted by id.
    pub async fn list_running_jobs(&self) -> Result<Vec<RunningJob>, Error> {
        let mut jobs = match self {
            ProwSource::Deck(deck) => deck.list_running_jobs().await?,
            ProwSource::Api(api) => api.list_running_jobs().await?,
        };
        jobs.sort();
        jobs.dedup();
        Ok(jobs)
    }

    /// One line for logs: which source and where.
    pub fn describe(&self) -> String {
        match self {
            ProwSource::Deck(deck) => format!("deck {}", deck.url()),
            ProwSource::Api(api) => format!("ProwJob API, namespace {}", api.namespace()),
        }
    }
}
