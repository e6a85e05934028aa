//! Running jobs from the ProwJob API (`prow.k8s.io/v1`, kind `ProwJob`) on the
//! Prow service cluster, for deployments that can read ProwJobs directly
//! instead of going through deck.
//!
//! Server-side filtering: the cloud rule is a label, so one list uses the
//! selector `ci-operator.openshift.io/cloud=<cloud>`; the `pending` state is
//! checked here with the same code as the deck path ([`ProwJob::select`]).
//!
//! The cluster-prefix rule (jobs *without* that label whose `spec.cluster`
//! starts with a prefix) cannot be expressed as a label or field selector
//! (ProwJob's CRD supports no field selectors and `spec.cluster` is not a
//! label). Matching it takes a second list of every job without the label
//! (`!ci-operator.openshift.io/cloud`, the Kubernetes "does not exist"
//! selector), which on OpenShift CI is nearly the whole `ci` namespace as
//! full objects, every cycle. So on this path it is opt-in:
//! [`ProwJobApiSource::with_unlabelled`]`(true)` and a non-empty
//! `cluster_prefix`. By default only labelled jobs are found here (deck
//! applies both rules, as it gets every job anyway).
//!
//! Both lists page with `limit`/`continue`. Pages are fetched as text and
//! deserialized here ([`crate::kube_client::decode_response`]), so a page
//! that does not decode is reported by position, never logged whole.
//! API conventions: <https://kubernetes.io/docs/reference/using-api/api-concepts/>.

use std::time::Duration;

use kube::api::ListParams;
use serde::Deserialize;

use super::job::{CLOUD_LABEL, ProwJob};
use super::{JobSelector, RunningJob};
use crate::error::Error;
use crate::kube_client::decode_response;

/// Page size of ProwJob lists: keeps one response to a few MB.
const PAGE_SIZE: u32 = 500;

/// Name used in errors for the Prow service cluster.
const CLUSTER: &str = "prow";

/// Lists running vSphere jobs through the Kubernetes API.
#[derive(Clone)]
pub struct ProwJobApiSource {
    client: kube::Client,
    namespace: String,
    selector: JobSelector,
    timeout: Duration,
    include_unlabelled: bool,
}

impl std::fmt::Debug for ProwJobApiSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProwJobApiSource")
            .field("namespace", &self.namespace)
            .field("selector", &self.selector)
            .field("timeout", &self.timeout)
            .field("include_unlabelled", &self.include_unlabelled)
            .finish_non_exhaustive()
    }
}

/// A page of a ProwJob list: only the items' used fields and the continue token.
#[derive(Deserialize, Default)]
#[serde(default)]
struct ProwJobList {
    items: Vec<ProwJob>,
    metadata: ListMeta,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ListMeta {
    #[serde(rename = "continue")]
    continue_token: Option<String>,
}

impl ProwJobApiSource {
    /// `namespace` is where Prow keeps ProwJobs (`ci` on OpenShift CI);
    /// `timeout` bounds each API call. Lists labelled jobs only until
    /// [`with_unlabelled`](Self::with_unlabelled) says otherwise.
    pub fn new(
        client: kube::Client,
        namespace: String,
        selector: JobSelector,
        timeout: Duration,
    ) -> Self {
        ProwJobApiSource {
            client,
            namespace,
            selector,
            timeout,
            include_unlabelled: false,
        }
    }

    /// Also match jobs without the cloud label by `spec.cluster` prefix
    /// (when the selector's `cluster_prefix` is not empty). Costs a list of
    /// every unlabelled ProwJob per call; see the module docs.
    pub fn with_unlabelled(mut self, include: bool) -> Self {
        self.include_unlabelled = include;
        self
    }

    /// Whether unlabelled jobs are listed (see [`with_unlabelled`](Self::with_unlabelled)).
    pub fn includes_unlabelled(&self) -> bool {
        self.include_unlabelled && !self.selector.cluster_prefix.is_empty()
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Jobs with the cloud label, then (opted in) jobs without it matched by
    /// cluster prefix; sorted by id.
    pub async fn list_running_jobs(&self) -> Result<Vec<RunningJob>, Error> {
        let mut jobs = Vec::new();
        let labelled = format!("{CLOUD_LABEL}={}", self.selector.cloud);
        self.list_into(&labelled, &mut jobs).await?;
        if self.includes_unlabelled() {
            self.list_into(&format!("!{CLOUD_LABEL}"), &mut jobs)
                .await?;
        }
        jobs.sort();
        jobs.dedup();
        Ok(jobs)
    }

    async fn list_into(
        &self,
        label_selector: &str,
        jobs: &mut Vec<RunningJob>,
    ) -> Result<(), Error> {
        let path = format!(
            "/apis/prow.k8s.io/v1/namespaces/{}/prowjobs",
            self.namespace
        );
        let action = format!("list prowjobs in {} ({label_selector})", self.namespace);
        let mut continue_token = None;
        loop {
            let params = ListParams {
                label_selector: Some(label_selector.to_string()),
                limit: Some(PAGE_SIZE),
                continue_token: continue_token.take(),
                ..ListParams::default()
            };
            let request = kube::core::Request::new(path.clone())
                .list(&params)
                .map_err(|e| Error::Kube {
                    cluster: CLUSTER.into(),
                    action: action.clone(),
                    source: kube::Error::BuildRequest(e),
                })?;
            tracing::debug!(namespace = %self.namespace, selector = label_selector, "Listing ProwJobs");
            let page: ProwJobList = decode_response(
                CLUSTER,
                &action,
                self.timeout,
                self.client.request_text(request),
            )
            .await?;
            jobs.extend(
                page.items
                    .into_iter()
                    .filter_map(|j| j.select(&self.selector)),
            );
            match page.metadata.continue_token.filter(|t| !t.is_empty()) {
                Some(token) => continue_token = Some(token),
                None => return Ok(()),
            }
        }
    }
}
