//! Job -> ci-op namespace -> CI secret -> vCenter users, on one build cluster.
//!
//! Steps for a job not in the cache (see DESIGN.md, "How a job is tied to a CI
//! user"):
//! 1. the namespace labelled `ci.openshift.io/jobid=<ProwJob name>`;
//!    fallback for older ci-operator: the pod in `ci` labelled
//!    `prow.k8s.io/build-id=<build id>`, and the head of its `test` container
//!    log (`limitBytes`, never the whole log) with the line
//!    `Using namespace https://.../ci-op-xxxxxxxx`;
//! 2. the secret named after the job's target in that namespace, read through
//!    a struct holding only the four profile files (other keys are skipped by
//!    serde and never reach memory as values);
//! 3. [`profile::users_from_files`].
//!
//! Caching, per running job:
//! - users from `metadata.json` are final (the installer writes it when the
//!   install ends, with every vCenter): kept while the job runs, so a steady
//!   cycle makes no API call for such a job;
//! - users from `platform.json`, `govc.sh` or `vsphere_context.sh` (lease
//!   files, present while the install runs) are provisional: they are
//!   answered from the cache, and the secret alone (the namespace is
//!   remembered) is read again once they are older than
//!   [`ResolverOptions::recheck_interval`] (2 minutes by default: one GET
//!   per installing job per interval, while an install takes tens of
//!   minutes), until `metadata.json` appears, since it may name more
//!   vCenters. If that re-read fails or finds no user, the previous answer
//!   stands until the next interval;
//! - a job without users (namespace or secret not there yet, an error) is
//!   looked up again next call: from scratch until its namespace is found,
//!   then the secret alone. The namespace is reported as soon as it is
//!   known (leak detection needs every running job's namespace), and
//!   `metadata.json`'s `infraID` with the users.
//!
//! Every answer is fetched as text and deserialized here
//! ([`crate::kube_client::decode_response`]), never with
//! `Client::request::<T>`/`Api::list`, which log the whole body when it does
//! not deserialize: for the secret that would be its data, passwords
//! included. Calls run with bounded concurrency and a timeout each.
//! Lists ask for `resourceVersion=0`, so the API server answers from its
//! watch cache rather than from etcd: dozens of running jobs cost the
//! build cluster's control plane almost nothing.
//! API conventions: <https://kubernetes.io/docs/reference/using-api/api-concepts/>.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{AsyncReadExt, StreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{GetParams, ListParams, LogParams};
use regex::Regex;
use serde::Deserialize;

use super::CiIdentity;
use super::profile;
use crate::correlate::JobUsers;
use crate::error::Error;
use crate::kube_client::decode_response;
use crate::prow::RunningJob;

/// Label ci-operator puts on the namespace it creates for a job.
pub const JOB_ID_LABEL: &str = "ci.openshift.io/jobid";
/// Namespace of the ci-operator pods on a build cluster.
pub const CI_NAMESPACE: &str = "ci";
/// The ci-operator container of a job pod.
pub const TEST_CONTAINER: &str = "test";

/// Tuning of the build-cluster lookups.
#[derive(Debug, Clone)]
pub struct ResolverOptions {
    /// Bound on each API call (list, log read, secret read).
    pub call_timeout: Duration,
    /// Jobs resolved at the same time.
    pub concurrency: usize,
    /// How much of a ci-operator log is read when looking for the namespace
    /// line (it is printed in the first lines).
    pub log_limit_bytes: i64,
    /// Age after which a provisional answer (not from `metadata.json`) is
    /// checked again by re-reading the secret. Zero: every call.
    pub recheck_interval: Duration,
}

impl Default for ResolverOptions {
    fn default() -> Self {
        ResolverOptions {
            call_timeout: Duration::from_secs(10),
            concurrency: 8,
            log_limit_bytes: 64 * 1024,
            recheck_interval: Duration::from_secs(120),
        }
    }
}

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResolverStats {
    /// Namespace lists and (fallback) pod lists.
    pub namespace_lookups: u64,
    pub log_reads: u64,
    /// All secret reads, re-reads of provisional answers included.
    pub secret_reads: u64,
    /// Jobs answered from the cache with no API call.
    pub cache_hits: u64,
    /// Secret re-reads of jobs holding a provisional answer.
    pub rechecks: u64,
    /// Jobs left unresolved by an error (not by a namespace or secret that
    /// does not exist yet).
    pub failures: u64,
}

#[derive(Default)]
struct Counters {
    namespace_lookups: AtomicU64,
    log_reads: AtomicU64,
    secret_reads: AtomicU64,
    cache_hits: AtomicU64,
    rechecks: AtomicU64,
    failures: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The profile files of a CI secret and nothing else. No `Debug`: the
/// values hold passwords.
#[derive(Deserialize, Default)]
#[serde(default)]
struct ProfileSecret {
    data: ProfileData,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ProfileData {
    #[serde(rename = "metadata.json")]
    metadata_json: Option<ByteString>,
    #[serde(rename = "platform.json")]
    platform_json: Option<ByteString>,
    #[serde(rename = "govc.sh")]
    govc_sh: Option<ByteString>,
    #[serde(rename = "vsphere_context.sh")]
    vsphere_context_sh: Option<ByteString>,
}

/// A list answer reduced to the items' names.
#[derive(Deserialize, Default)]
#[serde(default)]
struct NameList {
    items: Vec<Named>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Named {
    metadata: NameOnly,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct NameOnly {
    name: Option<String>,
}

impl NameList {
    /// The first name in sort order, so a repeated lookup picks the same.
    fn first_name(self) -> Option<String> {
        self.items.into_iter().filter_map(|i| i.metadata.name).min()
    }
}

impl ProfileData {
    fn file(&self, key: &str) -> Option<&[u8]> {
        let value = match key {
            "metadata.json" => &self.metadata_json,
            "platform.json" => &self.platform_json,
            "govc.sh" => &self.govc_sh,
            "vsphere_context.sh" => &self.vsphere_context_sh,
            _ => &None,
        };
        value.as_ref().map(|b| b.0.as_slice())
    }
}

/// Resolves running jobs to CI users on one build cluster, with a cache.
pub struct IdentityResolver {
    client: kube::Client,
    cluster: String,
    options: ResolverOptions,
    namespace_line: Regex,
    /// Job id -> its users, only for jobs that resolved to at least one user.
    cache: Mutex<HashMap<String, Cached>>,
    counters: Counters,
}

impl std::fmt::Debug for IdentityResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityResolver")
            .field("cluster", &self.cluster)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// A job's users and where they were found. An entry with no users yet
/// remembers the namespace, so the next lookup reads only the secret.
#[derive(Clone)]
struct Cached {
    namespace: String,
    identities: Vec<CiIdentity>,
    /// `infraID` of `metadata.json`, once the install wrote it.
    infra_id: Option<String>,
    /// From `metadata.json`: never read again while the job runs.
    is_final: bool,
    /// When the secret was last read for this answer.
    checked_at: tokio::time::Instant,
}

impl Cached {
    fn is_due(&self, interval: Duration) -> bool {
        !self.is_final && (self.identities.is_empty() || self.checked_at.elapsed() >= interval)
    }

    fn job_users(&self, job: &RunningJob) -> JobUsers {
        JobUsers {
            job: job.clone(),
            identities: self.identities.clone(),
            namespace: Some(self.namespace.clone()),
            infra_id: self.infra_id.clone(),
        }
    }
}

/// Outcome of one job's lookup.
enum Lookup {
    Found(Cached),
    /// Not an error: the namespace or secret does not exist yet, or holds
    /// no user yet. Tried again next call; the namespace, once found, is
    /// kept.
    NotYet(&'static str, Option<String>),
}

impl IdentityResolver {
    /// `cluster_name` names the build cluster in errors and logs.
    pub fn new(client: kube::Client, cluster_name: String, options: ResolverOptions) -> Self {
        IdentityResolver {
            client,
            cluster: cluster_name,
            options,
            namespace_line: Regex::new(r"Using namespace .*/(ci-op-[a-z0-9]{8})")
                .expect("the namespace line regex is a valid constant"),
            cache: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        }
    }

    pub fn stats(&self) -> ResolverStats {
        let c = &self.counters;
        ResolverStats {
            namespace_lookups: c.namespace_lookups.load(Ordering::Relaxed),
            log_reads: c.log_reads.load(Ordering::Relaxed),
            secret_reads: c.secret_reads.load(Ordering::Relaxed),
            cache_hits: c.cache_hits.load(Ordering::Relaxed),
            rechecks: c.rechecks.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
        }
    }

    /// Users of every job, in the order given. Answers come from the cache,
    /// except provisional ones older than the recheck interval: those are
    /// re-read (secret only) and kept when the re-read gives nothing
    /// better. Jobs without users are looked up again; cache entries of
    /// jobs not in `jobs` are dropped. Errors are
    /// logged per job and leave that job with its previous answer, if any.
    pub async fn resolve(&self, jobs: &[RunningJob]) -> Vec<JobUsers> {
        let mut known: HashMap<String, Cached> = HashMap::new();
        let mut seen = HashSet::new();
        // Owned jobs: a stream of futures over borrowed jobs trips the
        // compiler's higher-ranked `Send` check when the cycle runs in a
        // spawned task.
        let mut todo: Vec<(RunningJob, Option<Cached>)> = Vec::new();
        {
            let mut cache = self
                .cache
                .lock()
                .expect("resolver cache lock is never poisoned");
            let running: HashSet<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
            cache.retain(|id, _| running.contains(id.as_str()));
            for job in jobs {
                if !seen.insert(job.id.as_str()) {
                    continue;
                }
                match cache.get(&job.id) {
                    Some(entry) if !entry.is_due(self.options.recheck_interval) => {
                        bump(&self.counters.cache_hits);
                        known.insert(job.id.clone(), entry.clone());
                    }
                    entry => todo.push((job.clone(), entry.cloned())),
                }
            }
        }
        let concurrency = self.options.concurrency.max(1);
        // Each answer goes into the cache as soon as it is found, so a cycle
        // cut short by its deadline keeps what it learnt.
        let resolved: Vec<(String, Option<Cached>)> = futures::stream::iter(todo)
            .map(|(job, previous)| async move {
                let found = self.resolve_job(&job, previous.as_ref()).await;
                let entry = self.remember(&job.id, previous, found);
                (job.id, entry)
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        for (id, entry) in resolved {
            if let Some(entry) = entry {
                known.insert(id, entry);
            }
        }
        jobs.iter()
            .map(|job| match known.get(&job.id) {
                Some(entry) => entry.job_users(job),
                None => unknown(job),
            })
            .collect()
    }

    /// Store what a lookup found (or keep the previous provisional answer,
    /// checked again after another interval) and return the job's users.
    fn remember(
        &self,
        id: &str,
        previous: Option<Cached>,
        found: Option<Cached>,
    ) -> Option<Cached> {
        let previous = previous.map(|p| Cached {
            checked_at: tokio::time::Instant::now(),
            ..p
        });
        // A re-read that found no user never replaces users known before.
        let entry = match (found, previous) {
            (Some(found), Some(previous))
                if found.identities.is_empty() && !previous.identities.is_empty() =>
            {
                previous
            }
            (found, previous) => found.or(previous)?,
        };
        self.cache
            .lock()
            .expect("resolver cache lock is never poisoned")
            .insert(id.to_string(), entry.clone());
        Some(entry)
    }

    /// The users the cache holds for each job, without any API call: what a
    /// cycle reports when resolving ran out of time.
    pub fn cached(&self, jobs: &[RunningJob]) -> Vec<JobUsers> {
        let cache = self
            .cache
            .lock()
            .expect("resolver cache lock is never poisoned");
        jobs.iter()
            .map(|job| match cache.get(&job.id) {
                Some(entry) => entry.job_users(job),
                None => unknown(job),
            })
            .collect()
    }

    /// Look a job up: from scratch, or (with a provisional `previous`
    /// answer) by re-reading its secret. `None` when nothing was found.
    async fn resolve_job(&self, job: &RunningJob, previous: Option<&Cached>) -> Option<Cached> {
        let namespace = previous.map(|p| p.namespace.as_str());
        if previous.is_some_and(|p| !p.identities.is_empty()) {
            bump(&self.counters.rechecks);
        }
        match self.lookup(job, namespace).await {
            Ok(Lookup::Found(found)) => {
                tracing::debug!(
                    cluster = %self.cluster,
                    job = %job.id,
                    users = found.identities.len(),
                    is_final = found.is_final,
                    "Resolved CI users"
                );
                Some(found)
            }
            Ok(Lookup::NotYet(why, namespace)) => {
                tracing::debug!(cluster = %self.cluster, job = %job.id, reason = why, "CI users not known yet");
                namespace.map(|namespace| Cached {
                    namespace,
                    identities: Vec::new(),
                    infra_id: None,
                    is_final: false,
                    checked_at: tokio::time::Instant::now(),
                })
            }
            Err(error) => {
                bump(&self.counters.failures);
                tracing::warn!(
                    cluster = %self.cluster,
                    job = %job.id,
                    build_id = %job.build_id,
                    error = %error,
                    "Resolving CI users failed"
                );
                None
            }
        }
    }

    /// `namespace`: the job's ci-op namespace when already known.
    async fn lookup(&self, job: &RunningJob, namespace: Option<&str>) -> Result<Lookup, Error> {
        let namespace = match namespace {
            Some(ns) => ns.to_string(),
            None => match self.find_namespace(job).await? {
                Some(ns) => ns,
                None => return Ok(Lookup::NotYet("no ci-op namespace yet", None)),
            },
        };
        let Some(secret) = self.read_secret(&namespace, &job.target).await? else {
            return Ok(Lookup::NotYet("no CI secret yet", Some(namespace)));
        };
        match profile::users_from_files(|key| secret.data.file(key)) {
            Ok(None) => Ok(Lookup::NotYet(
                "no user in the CI secret yet",
                Some(namespace),
            )),
            Ok(Some(users)) => Ok(Lookup::Found(Cached {
                is_final: users.is_final(),
                identities: users.identities,
                infra_id: secret
                    .data
                    .file(profile::FINAL_FILE)
                    .and_then(profile::parse_infra_id),
                namespace,
                checked_at: tokio::time::Instant::now(),
            })),
            Err(errors) => {
                let message = errors
                    .iter()
                    .map(|e| format!("{}: {}", e.file, e.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                Err(Error::CiSecret {
                    namespace,
                    name: job.target.clone(),
                    message,
                })
            }
        }
    }

    /// Run one API call with the per-call timeout, mapping errors.
    async fn call<T>(
        &self,
        action: impl Fn() -> String,
        fut: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.options.call_timeout, fut).await {
            Err(_) => Err(Error::KubeTimeout {
                cluster: self.cluster.clone(),
                action: action(),
                timeout: self.options.call_timeout,
            }),
            Ok(Err(source)) => Err(Error::Kube {
                cluster: self.cluster.clone(),
                action: action(),
                source: crate::kube_client::bounded(source),
            }),
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// Fetch the list at `path` (names only) with `selector`.
    async fn list_names(&self, path: String, selector: &str) -> Result<NameList, Error> {
        let action = format!("list {path} ({selector})");
        // resourceVersion=0: served from the API server's watch cache, not
        // etcd; a namespace a few seconds stale is looked up again next
        // cycle anyway.
        let request = kube::core::Request::new(path)
            .list(&ListParams::default().labels(selector).match_any())
            .map_err(|e| self.build_error(&action, e))?;
        decode_response(
            &self.cluster,
            &action,
            self.options.call_timeout,
            self.client.request_text(request),
        )
        .await
    }

    fn build_error(&self, action: &str, e: kube::core::request::Error) -> Error {
        Error::Kube {
            cluster: self.cluster.clone(),
            action: action.to_string(),
            source: kube::Error::BuildRequest(e),
        }
    }

    async fn find_namespace(&self, job: &RunningJob) -> Result<Option<String>, Error> {
        let selector = format!("{JOB_ID_LABEL}={}", job.id);
        bump(&self.counters.namespace_lookups);
        let list = self
            .list_names("/api/v1/namespaces".to_string(), &selector)
            .await?;
        if let Some(name) = list.first_name() {
            return Ok(Some(name));
        }
        if job.build_id.is_empty() {
            return Ok(None);
        }
        self.namespace_from_log(job).await
    }

    /// Older ci-operator: the namespace is only in the `test` container log.
    async fn namespace_from_log(&self, job: &RunningJob) -> Result<Option<String>, Error> {
        let selector = format!("{}={}", crate::prow::job::BUILD_ID_LABEL, job.build_id);
        bump(&self.counters.namespace_lookups);
        // Pods are listed by name only: their specs can carry secrets in
        // environment values.
        let list = self
            .list_names(format!("/api/v1/namespaces/{CI_NAMESPACE}/pods"), &selector)
            .await?;
        let Some(pod) = list.first_name() else {
            return Ok(None);
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), CI_NAMESPACE);
        bump(&self.counters.log_reads);
        let limit = self.options.log_limit_bytes.max(1);
        let params = LogParams {
            container: Some(TEST_CONTAINER.to_string()),
            limit_bytes: Some(limit),
            ..LogParams::default()
        };
        let action = || format!("read log of {CI_NAMESPACE}/{pod}/{TEST_CONTAINER}");
        let head = self
            .call(action, async {
                let stream = pods.log_stream(&pod, &params).await?;
                let mut head = Vec::new();
                // Even a server ignoring limitBytes is read no further.
                stream
                    .take(limit as u64)
                    .read_to_end(&mut head)
                    .await
                    .map_err(kube::Error::ReadEvents)?;
                Ok(head)
            })
            .await?;
        let text = String::from_utf8_lossy(&head);
        Ok(self
            .namespace_line
            .captures(&text)
            .and_then(|c| c.get(1))
            .map(|m| m.as_str().to_string()))
    }

    async fn read_secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ProfileSecret>, Error> {
        bump(&self.counters.secret_reads);
        let path = format!("/api/v1/namespaces/{namespace}/secrets");
        let action = format!("read secret {namespace}/{name}");
        let request = kube::core::Request::new(path)
            .get(name, &GetParams::default())
            .map_err(|e| self.build_error(&action, e))?;
        // Text first, decoded here: see the module docs (the body holds
        // passwords, and a body that fails to decode must not be logged).
        match decode_response::<ProfileSecret>(
            &self.cluster,
            &action,
            self.options.call_timeout,
            self.client.request_text(request),
        )
        .await
        {
            Ok(secret) => Ok(Some(secret)),
            Err(Error::Kube {
                source: kube::Error::Api(status),
                ..
            }) if status.code == 404 => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A job nothing is known of yet.
fn unknown(job: &RunningJob) -> JobUsers {
    JobUsers {
        job: job.clone(),
        identities: Vec::new(),
        namespace: None,
        infra_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(is_final: bool) -> Cached {
        Cached {
            namespace: "ci-op-x".into(),
            identities: vec![CiIdentity {
                vcenter: "vc".into(),
                username: "u".into(),
            }],
            infra_id: None,
            is_final,
            checked_at: tokio::time::Instant::now(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn provisional_answers_fall_due_after_the_interval_and_final_ones_never() {
        let interval = Duration::from_secs(120);
        let (provisional, last) = (cached(false), cached(true));
        assert!(!provisional.is_due(interval));
        tokio::time::advance(Duration::from_secs(119)).await;
        assert!(!provisional.is_due(interval));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(provisional.is_due(interval));
        assert!(cached(false).is_due(Duration::ZERO));
        tokio::time::advance(Duration::from_secs(86_400)).await;
        assert!(!last.is_due(interval));
    }
}
