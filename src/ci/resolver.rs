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
//! 3. [`profile::identities_from_files`].
//!
//! A job with users stays cached while it keeps running, so a steady cycle
//! makes no API call at all. A job without users (namespace or secret not
//! there yet, install still running, an error) is tried again next call.
//! Calls run with bounded concurrency and a timeout each.
//! API conventions: <https://kubernetes.io/docs/reference/using-api/api-concepts/>.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{AsyncReadExt, StreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::{GetParams, ListParams, LogParams};
use regex::Regex;
use serde::Deserialize;

use super::CiIdentity;
use super::profile;
use crate::correlate::JobUsers;
use crate::error::Error;
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
}

impl Default for ResolverOptions {
    fn default() -> Self {
        ResolverOptions {
            call_timeout: Duration::from_secs(10),
            concurrency: 8,
            log_limit_bytes: 64 * 1024,
        }
    }
}

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResolverStats {
    /// Namespace lists and (fallback) pod lists.
    pub namespace_lookups: u64,
    pub log_reads: u64,
    pub secret_reads: u64,
    /// Jobs answered from the cache.
    pub cache_hits: u64,
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
    cache: Mutex<HashMap<String, Vec<CiIdentity>>>,
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

/// Outcome of one job's lookup.
enum Lookup {
    Found(Vec<CiIdentity>),
    /// Not an error: the namespace or secret does not exist yet, or holds
    /// no user yet. Tried again next call.
    NotYet(&'static str),
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
            failures: c.failures.load(Ordering::Relaxed),
        }
    }

    /// Users of every job, in the order given. Cached jobs are answered from
    /// the cache; cache entries of jobs not in `jobs` are dropped; jobs
    /// without users are looked up again. Errors are logged per job and
    /// leave that job with no users.
    pub async fn resolve(&self, jobs: &[RunningJob]) -> Vec<JobUsers> {
        let mut known: HashMap<String, Vec<CiIdentity>> = HashMap::new();
        {
            let mut cache = self
                .cache
                .lock()
                .expect("resolver cache lock is never poisoned");
            let running: HashSet<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
            cache.retain(|id, _| running.contains(id.as_str()));
            for job in jobs {
                if let Some(ids) = cache.get(&job.id) {
                    bump(&self.counters.cache_hits);
                    known.insert(job.id.clone(), ids.clone());
                }
            }
        }
        let mut seen = HashSet::new();
        // Owned jobs: a stream of futures over borrowed jobs trips the
        // compiler's higher-ranked `Send` check when the cycle runs in a
        // spawned task.
        let todo: Vec<RunningJob> = jobs
            .iter()
            .filter(|j| !known.contains_key(&j.id) && seen.insert(j.id.as_str()))
            .cloned()
            .collect();
        let concurrency = self.options.concurrency.max(1);
        let resolved: Vec<(String, Vec<CiIdentity>)> = futures::stream::iter(todo)
            .map(|job| async move {
                let users = self.resolve_uncached(&job).await;
                (job.id, users)
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        {
            let mut cache = self
                .cache
                .lock()
                .expect("resolver cache lock is never poisoned");
            for (id, ids) in resolved {
                if !ids.is_empty() {
                    cache.insert(id.clone(), ids.clone());
                }
                known.insert(id, ids);
            }
        }
        jobs.iter()
            .map(|job| JobUsers {
                job: job.clone(),
                identities: known.get(&job.id).cloned().unwrap_or_default(),
            })
            .collect()
    }

    async fn resolve_uncached(&self, job: &RunningJob) -> Vec<CiIdentity> {
        match self.lookup(job).await {
            Ok(Lookup::Found(ids)) => {
                tracing::debug!(cluster = %self.cluster, job = %job.id, users = ids.len(), "Resolved CI users");
                ids
            }
            Ok(Lookup::NotYet(why)) => {
                tracing::debug!(cluster = %self.cluster, job = %job.id, reason = why, "CI users not known yet");
                Vec::new()
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
                Vec::new()
            }
        }
    }

    async fn lookup(&self, job: &RunningJob) -> Result<Lookup, Error> {
        let Some(namespace) = self.find_namespace(job).await? else {
            return Ok(Lookup::NotYet("no ci-op namespace yet"));
        };
        let Some(secret) = self.read_secret(&namespace, &job.target).await? else {
            return Ok(Lookup::NotYet("no CI secret yet"));
        };
        match profile::identities_from_files(|key| secret.data.file(key)) {
            Ok(ids) if ids.is_empty() => Ok(Lookup::NotYet("no user in the CI secret yet")),
            Ok(ids) => Ok(Lookup::Found(ids)),
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
                source,
            }),
            Ok(Ok(v)) => Ok(v),
        }
    }

    async fn find_namespace(&self, job: &RunningJob) -> Result<Option<String>, Error> {
        let selector = format!("{JOB_ID_LABEL}={}", job.id);
        bump(&self.counters.namespace_lookups);
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let list = self
            .call(
                || format!("list namespaces ({selector})"),
                namespaces.list(&ListParams::default().labels(&selector)),
            )
            .await?;
        let mut names: Vec<String> = list
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect();
        names.sort();
        if let Some(name) = names.into_iter().next() {
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
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), CI_NAMESPACE);
        let list = self
            .call(
                || format!("list pods in {CI_NAMESPACE} ({selector})"),
                pods.list(&ListParams::default().labels(&selector)),
            )
            .await?;
        let mut names: Vec<String> = list
            .items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        names.sort();
        let Some(pod) = names.into_iter().next() else {
            return Ok(None);
        };
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
        let action = || format!("read secret {namespace}/{name}");
        let request = kube::core::Request::new(path)
            .get(name, &GetParams::default())
            .map_err(|e| Error::Kube {
                cluster: self.cluster.clone(),
                action: action(),
                source: kube::Error::BuildRequest(e),
            })?;
        match self
            .call(action, self.client.request::<ProfileSecret>(request))
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
