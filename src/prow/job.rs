//! The ProwJob fields the reporter needs, and the rule that picks running
//! vSphere jobs. Shared by the deck path (`/prowjobs.js`, streamed) and the
//! ProwJob API path (`prow.k8s.io/v1`), so both give the same [`RunningJob`]s.
//!
//! The serde shape follows Prow's ProwJob type
//! (<https://github.com/kubernetes-sigs/prow/blob/main/pkg/apis/prowjobs/v1/types.go>):
//! only the fields read here are declared, serde skips everything else, so a
//! job costs a few small strings while it is looked at. Every field is
//! optional: a job with a missing or `null` field is skipped or gets an empty
//! value, never a parse failure of the whole list.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{JobSelector, RunningJob};

/// Label naming the cloud a ci-operator job runs on.
pub const CLOUD_LABEL: &str = "ci-operator.openshift.io/cloud";
/// Label naming the cluster profile (the lease pool) of a ci-operator job.
pub const CLUSTER_PROFILE_LABEL: &str = "ci-operator.openshift.io/cloud-cluster-profile";
/// Label carrying the build id; the ci-operator pod carries it too.
pub const BUILD_ID_LABEL: &str = "prow.k8s.io/build-id";
/// Annotation carrying the job name.
pub const JOB_ANNOTATION: &str = "prow.k8s.io/job";
/// The ProwJob state of a job that is running (Prow has no `running` state).
pub const PENDING: &str = "pending";

/// One ProwJob as it appears in a deck `items` entry or an API list.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ProwJob {
    pub metadata: Metadata,
    pub spec: Spec,
    pub status: Status,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Metadata {
    pub name: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Spec {
    pub job: Option<String>,
    pub cluster: Option<String>,
    pub refs: Option<Refs>,
    pub pod_spec: Option<PodSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Refs {
    pub pulls: Option<Vec<Pull>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Pull {
    pub link: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PodSpec {
    pub containers: Option<Vec<Container>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Container {
    pub args: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Status {
    pub state: Option<String>,
    pub build_id: Option<String>,
    #[serde(rename = "startTime")]
    pub start_time: Option<String>,
}

impl ProwJob {
    fn label(&self, key: &str) -> Option<&str> {
        self.metadata.labels.as_ref()?.get(key).map(String::as_str)
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata
            .annotations
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }

    /// Whether the job is running and runs on vSphere: state `pending`, and
    /// either the cloud label equals `selector.cloud`, or (no cloud label at
    /// all) `spec.cluster` starts with `selector.cluster_prefix`. A job whose
    /// cloud label names another cloud never matches by its cluster.
    pub fn is_running_on(&self, selector: &JobSelector) -> bool {
        if self.status.state.as_deref() != Some(PENDING) {
            return false;
        }
        match self.label(CLOUD_LABEL) {
            Some(cloud) => cloud == selector.cloud,
            None => self
                .spec
                .cluster
                .as_deref()
                .is_some_and(|c| c.starts_with(&selector.cluster_prefix)),
        }
    }

    /// The value of `--target` in the first container's args, if any, in
    /// every form Go's flag package (ci-operator's) accepts: `--target=x`,
    /// `-target=x`, and the value as the next argument.
    pub fn target(&self) -> Option<&str> {
        let container = self.spec.pod_spec.as_ref()?.containers.as_ref()?.first()?;
        let args = container.args.as_ref()?;
        args.iter()
            .enumerate()
            .find_map(|(i, arg)| {
                let flag = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-'))?;
                match flag.strip_prefix("target") {
                    Some("") => args.get(i + 1).map(String::as_str),
                    Some(rest) => rest.strip_prefix('='),
                    None => None,
                }
            })
            .filter(|t| !t.is_empty())
    }

    /// Reduce to a [`RunningJob`], or `None` (with a debug line) when the job
    /// lacks what the build-cluster lookup needs: a name or a target.
    pub fn into_running_job(self) -> Option<RunningJob> {
        let Some(id) = self.metadata.name.clone().filter(|n| !n.is_empty()) else {
            tracing::debug!("Skipping ProwJob without a name");
            return None;
        };
        let Some(target) = self.target().map(str::to_string) else {
            tracing::debug!(job = %id, "Skipping ProwJob without --target in its first container");
            return None;
        };
        let build_id = self
            .label(BUILD_ID_LABEL)
            .filter(|b| !b.is_empty())
            .map(str::to_string)
            .or_else(|| self.status.build_id.clone())
            .unwrap_or_default();
        let job_name = self
            .annotation(JOB_ANNOTATION)
            .filter(|j| !j.is_empty())
            .map(str::to_string)
            .or_else(|| self.spec.job.clone())
            .unwrap_or_default();
        let cluster_profile = self
            .label(CLUSTER_PROFILE_LABEL)
            .unwrap_or_default()
            .to_string();
        let pull_request = self
            .spec
            .refs
            .as_ref()
            .and_then(|r| r.pulls.as_ref())
            .and_then(|p| p.iter().find_map(|pull| pull.link.clone()))
            .unwrap_or_default();
        let start_ms = self
            .status
            .start_time
            .as_deref()
            .and_then(crate::vcenter::parse_time_ms);
        Some(RunningJob {
            id,
            build_id,
            start_ms,
            job_name,
            pull_request,
            target,
            cluster: self.spec.cluster.unwrap_or_default(),
            cluster_profile,
        })
    }

    /// [`is_running_on`](Self::is_running_on) then
    /// [`into_running_job`](Self::into_running_job).
    pub fn select(self, selector: &JobSelector) -> Option<RunningJob> {
        if self.is_running_on(selector) {
            self.into_running_job()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(value: serde_json::Value) -> ProwJob {
        serde_json::from_value(value).expect("test job is valid JSON for ProwJob")
    }

    fn full() -> serde_json::Value {
        json!({
            "metadata": {
                "name": "abc-123",
                "labels": {
                    "ci-operator.openshift.io/cloud": "vsphere",
                    "ci-operator.openshift.io/cloud-cluster-profile": "vsphere-2",
                    "prow.k8s.io/build-id": "1790"
                },
                "annotations": {"prow.k8s.io/job": "pull-ci-x-e2e-vsphere"}
            },
            "spec": {
                "job": "spec-job-name",
                "cluster": "vsphere02",
                "refs": {"pulls": [{"number": 1, "link": "https://github.com/o/r/pull/1"}, {"link": "second"}]},
                "pod_spec": {"containers": [
                    {"args": ["--give-pr-author-access-to-namespace=true", "--target=e2e-vsphere-ovn"]},
                    {"args": ["--target=other"]}
                ]}
            },
            "status": {"state": "pending", "build_id": "status-id", "startTime": "2026-11-25T09:00:01Z"}
        })
    }

    #[test]
    fn a_full_job_gives_every_field() {
        let got = job(full()).select(&JobSelector::default());
        assert_eq!(
            got,
            Some(RunningJob {
                id: "abc-123".into(),
                build_id: "1790".into(),
                // 2026-11-25T09:00:01Z
                start_ms: Some(1_795_597_201_000),
                job_name: "pull-ci-x-e2e-vsphere".into(),
                pull_request: "https://github.com/o/r/pull/1".into(),
                target: "e2e-vsphere-ovn".into(),
                cluster: "vsphere02".into(),
                cluster_profile: "vsphere-2".into(),
            })
        );
    }

    #[test]
    fn selection_rules_table() {
        let sel = JobSelector::default();
        // (description, edit of the full job, selected?)
        type Edit = fn(&mut serde_json::Value);
        let cases: Vec<(&str, Edit, bool)> = vec![
            ("full job", |_| {}, true),
            (
                "state success",
                |j| j["status"]["state"] = json!("success"),
                false,
            ),
            ("state missing", |j| j["status"] = json!({}), false),
            (
                "other cloud",
                |j| j["metadata"]["labels"]["ci-operator.openshift.io/cloud"] = json!("aws"),
                false,
            ),
            (
                "other cloud on a vsphere cluster",
                |j| {
                    j["metadata"]["labels"]["ci-operator.openshift.io/cloud"] = json!("gcp");
                    j["spec"]["cluster"] = json!("vsphere02");
                },
                false,
            ),
            (
                "no cloud label, vsphere cluster prefix",
                |j| {
                    j["metadata"]["labels"]
                        .as_object_mut()
                        .unwrap()
                        .remove("ci-operator.openshift.io/cloud");
                },
                true,
            ),
            (
                "no cloud label, other cluster",
                |j| {
                    j["metadata"]["labels"]
                        .as_object_mut()
                        .unwrap()
                        .remove("ci-operator.openshift.io/cloud");
                    j["spec"]["cluster"] = json!("build01");
                },
                false,
            ),
            (
                "no labels at all, vsphere cluster",
                |j| j["metadata"]["labels"] = json!(null),
                true,
            ),
            (
                "no pod_spec",
                |j| j["spec"]["pod_spec"] = json!(null),
                false,
            ),
            (
                "no containers",
                |j| j["spec"]["pod_spec"] = json!({}),
                false,
            ),
            (
                "empty containers",
                |j| j["spec"]["pod_spec"]["containers"] = json!([]),
                false,
            ),
            (
                "no args",
                |j| j["spec"]["pod_spec"]["containers"][0] = json!({"image": "x"}),
                false,
            ),
            (
                "no --target in first container",
                |j| j["spec"]["pod_spec"]["containers"][0]["args"] = json!(["--foo=bar"]),
                false,
            ),
            (
                "empty --target",
                |j| j["spec"]["pod_spec"]["containers"][0]["args"] = json!(["--target="]),
                false,
            ),
            (
                "--target as two arguments",
                |j| j["spec"]["pod_spec"]["containers"][0]["args"] = json!(["--target", "e2e"]),
                true,
            ),
            (
                "-target= with one dash",
                |j| j["spec"]["pod_spec"]["containers"][0]["args"] = json!(["-target=e2e"]),
                true,
            ),
            (
                "--target last, without a value",
                |j| j["spec"]["pod_spec"]["containers"][0]["args"] = json!(["--target"]),
                false,
            ),
            (
                "--targets is another flag",
                |j| j["spec"]["pod_spec"]["containers"][0]["args"] = json!(["--targets=e2e"]),
                false,
            ),
            ("no name", |j| j["metadata"]["name"] = json!(null), false),
        ];
        for (what, edit, want) in cases {
            let mut value = full();
            edit(&mut value);
            let selected = job(value).select(&sel);
            assert_eq!(selected.is_some(), want, "{what}");
            if what.contains("target") && want {
                assert_eq!(
                    selected.map(|j| j.target),
                    Some("e2e".to_string()),
                    "{what}"
                );
            }
        }
    }

    #[test]
    fn fallbacks_table() {
        let sel = JobSelector::default();
        type Edit = fn(&mut serde_json::Value);
        // (description, edit, field getter, expected)
        type Field = fn(&RunningJob) -> &str;
        let cases: Vec<(&str, Edit, Field, &str)> = vec![
            (
                "build id from status when label missing",
                |j| {
                    j["metadata"]["labels"]
                        .as_object_mut()
                        .unwrap()
                        .remove("prow.k8s.io/build-id");
                },
                |r| &r.build_id,
                "status-id",
            ),
            (
                "job name from spec when annotation missing",
                |j| j["metadata"]["annotations"] = json!({}),
                |r| &r.job_name,
                "spec-job-name",
            ),
            (
                "no refs gives empty pull request",
                |j| j["spec"]["refs"] = json!(null),
                |r| &r.pull_request,
                "",
            ),
            (
                "no pulls gives empty pull request",
                |j| j["spec"]["refs"] = json!({"org": "o"}),
                |r| &r.pull_request,
                "",
            ),
            (
                "no profile label gives empty profile",
                |j| {
                    j["metadata"]["labels"]
                        .as_object_mut()
                        .unwrap()
                        .remove("ci-operator.openshift.io/cloud-cluster-profile");
                },
                |r| &r.cluster_profile,
                "",
            ),
        ];
        for (what, edit, field, want) in cases {
            let mut value = full();
            edit(&mut value);
            let got = job(value).select(&sel).expect("job stays selected");
            assert_eq!(field(&got), want, "{what}");
        }
    }

    #[test]
    fn selector_values_are_configurable() {
        let sel = JobSelector {
            cloud: "vsphere-multi".into(),
            cluster_prefix: "vs".into(),
        };
        let mut value = full();
        value["metadata"]["labels"]["ci-operator.openshift.io/cloud"] = json!("vsphere-multi");
        assert!(job(value).is_running_on(&sel));
        assert!(!job(full()).is_running_on(&sel));
    }
}
