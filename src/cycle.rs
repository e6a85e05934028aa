//! One cycle: gather from every source at once, correlate, stamp, publish.
//!
//! Sources run concurrently, each bounded by its own timeouts; a failing
//! source sets its `up` gauge to 0 and the cycle still publishes what it has.
//! In the long-running mode the snapshot is handed off to each sink's own
//! sender and the cycle ends: delivery never holds up collection. `once`
//! drives the sinks concurrently and waits for them, each within its own
//! time bound.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use tracing::{debug, error, info, warn};

use crate::ci::IdentityResolver;
use crate::correlate::{self, CycleInput, JobUsers, VcenterObservation};
use crate::inventory::Inventory;
use crate::leaks::{LeakRules, ReporterIdentity};
use crate::metrics::{self, MetricFamily, Snapshot};
use crate::prow::{ProwSource, RunningJob};
use crate::reaper::ReaperConfig;
use crate::sink::Sink;
use crate::sink::scrape::LatestSnapshot;
use crate::vcenter::VcenterClient;

/// Time the sinks get on shutdown for their stale markers and group
/// deletion. With [`crate::app::DRAIN_TIMEOUT`] it stays under the 30 s
/// Kubernetes gives a pod between SIGTERM and SIGKILL; with a dead target
/// the process exits about this long after SIGTERM.
pub const SINK_SHUTDOWN_BUDGET: Duration = Duration::from_secs(8);

/// Time the vCenter logouts get on shutdown (beside the sinks). A logout
/// waits for a login in flight first, so this is what keeps a stuck vCenter
/// from holding the process past Kubernetes' grace period.
pub const LOGOUT_BUDGET: Duration = Duration::from_secs(10);

/// The CI-user resolvers of the build clusters.
pub struct Resolvers {
    /// For jobs whose `spec.cluster` has no resolver of its own.
    pub default: Arc<IdentityResolver>,
    /// By `spec.cluster` alias.
    pub by_cluster: HashMap<String, Arc<IdentityResolver>>,
}

impl Resolvers {
    /// Every resolver with the jobs of its build cluster (possibly none).
    fn route(&self, jobs: &[RunningJob]) -> Vec<(&IdentityResolver, Vec<RunningJob>)> {
        let mut default_jobs = Vec::new();
        let mut cluster_jobs: HashMap<&str, Vec<RunningJob>> = HashMap::new();
        for job in jobs {
            match self.by_cluster.get_key_value(job.cluster.as_str()) {
                Some((name, _)) => cluster_jobs.entry(name).or_default().push(job.clone()),
                None => default_jobs.push(job.clone()),
            }
        }
        let mut routes = vec![(self.default.as_ref(), default_jobs)];
        for (name, resolver) in &self.by_cluster {
            let jobs = cluster_jobs.remove(name.as_str()).unwrap_or_default();
            routes.push((resolver.as_ref(), jobs));
        }
        routes
    }

    /// Resolve every job on its build cluster, all clusters at once. Every
    /// resolver is called, even with no jobs, so it drops the cache entries
    /// of jobs that ended.
    async fn resolve(&self, jobs: &[RunningJob]) -> Vec<JobUsers> {
        let routes = self.route(jobs);
        let calls = routes.iter().map(|(resolver, jobs)| resolver.resolve(jobs));
        sorted(join_all(calls).await.into_iter().flatten().collect())
    }

    /// What the caches know of every job, without API calls.
    fn cached(&self, jobs: &[RunningJob]) -> Vec<JobUsers> {
        let routes = self.route(jobs);
        sorted(
            routes
                .iter()
                .flat_map(|(resolver, jobs)| resolver.cached(jobs))
                .collect(),
        )
    }

    /// Failed lookups since start, over all build clusters.
    fn failures(&self) -> u64 {
        std::iter::once(&self.default)
            .chain(self.by_cluster.values())
            .map(|r| r.stats().failures)
            .sum()
    }
}

fn reaping_key(s: &crate::inventory::SessionEntry) -> (String, String, String, &'static str) {
    (
        s.vcenter.clone(),
        s.username.clone(),
        s.agent_label.clone(),
        s.reason.unwrap_or_default(),
    )
}

fn sorted(mut job_users: Vec<JobUsers>) -> Vec<JobUsers> {
    job_users.sort_by(|a, b| a.job.cmp(&b.job));
    job_users
}

/// What a cycle needs to gather.
pub struct Sources {
    pub vcenters: Vec<Arc<VcenterClient>>,
    /// Bound of one vCenter's whole listing (login, retrieval, pages).
    pub vcenter_timeout: Duration,
    pub prow: ProwSource,
    /// Bound of one job listing (deck is tens of MB).
    pub prow_timeout: Duration,
    pub resolvers: Resolvers,
    /// Bound of the whole CI-user step of a cycle.
    pub ci_timeout: Duration,
    /// How leaked sessions are told from a running job's.
    pub leaks: LeakRules,
    /// Which leaked sessions may be freed (`start` runs it after each
    /// cycle when enabled).
    pub reaper: ReaperConfig,
}

/// The outcome of one cycle.
#[derive(Debug)]
pub struct CycleReport {
    pub snapshot: Arc<Snapshot>,
    /// One line per failed source or sink, naming it and the reason.
    pub failures: Vec<String>,
    /// What was gathered, for the reaper.
    pub input: CycleInput,
    /// The classification, when the reaper is enabled.
    pub inventory: Option<Inventory>,
}

/// Runs cycles; shared by the scheduler, `once` and the tests.
pub struct Cycle {
    sources: Sources,
    sinks: Vec<Arc<dyn Sink>>,
    latest: Arc<LatestSnapshot>,
    cycles: AtomicU64,
    /// Incremented by the scheduler when a tick finds a cycle running.
    skipped: Arc<AtomicU64>,
    /// The sinks' senders run: a cycle hands its snapshot off and ends.
    /// Otherwise (`once`, tests) it waits for each sink to deliver.
    senders_started: std::sync::atomic::AtomicBool,
    /// The reaper's series: this cycle's candidates, the passes' counts.
    reaping: std::sync::Mutex<Reaping>,
}

/// Label sets of `reaped_total` kept before new agents count as `other`.
pub const MAX_REAPED_SERIES: usize = 1000;

/// The reaper's series: candidates of the latest cycle, terminations
/// since start, by (vCenter, user, agent label, reason).
#[derive(Default)]
struct Reaping {
    candidates: BTreeMap<(String, String, String, &'static str), u64>,
    reaped: BTreeMap<(String, String, String, &'static str), u64>,
    /// Terminations the vCenter refused or that got no answer, by vCenter.
    failures: BTreeMap<String, u64>,
}

impl Cycle {
    pub fn new(
        sources: Sources,
        sinks: Vec<Arc<dyn Sink>>,
        latest: Arc<LatestSnapshot>,
        skipped: Arc<AtomicU64>,
    ) -> Self {
        Cycle {
            sources,
            sinks,
            latest,
            cycles: AtomicU64::new(0),
            skipped,
            senders_started: std::sync::atomic::AtomicBool::new(false),
            reaping: Default::default(),
        }
    }

    /// The reaper's settings.
    pub fn reaper_config(&self) -> &ReaperConfig {
        &self.sources.reaper
    }

    /// The client of the vCenter with this `vcenter` label.
    pub fn vcenter(&self, host: &str) -> Option<&Arc<VcenterClient>> {
        self.sources.vcenters.iter().find(|c| c.host() == host)
    }

    /// One gather-and-classify pass, published nowhere (`sessions`,
    /// `reap`): what was gathered and the failure lines.
    pub async fn inspect(&self) -> (CycleInput, Vec<String>) {
        let gathered = self.gather().await;
        (gathered.input, gathered.failures)
    }

    /// One vCenter listed again, within the vCenter budget (the reaper's
    /// second look).
    pub async fn observe_again(&self, host: &str) -> Result<VcenterObservation, String> {
        let client = self
            .vcenter(host)
            .ok_or_else(|| format!("no vCenter {host} configured"))?;
        let result = tokio::time::timeout(self.sources.vcenter_timeout, client.observe())
            .await
            .unwrap_or_else(|_| {
                Err(crate::Error::Timeout {
                    what: format!("listing sessions of vCenter {host}"),
                    timeout: self.sources.vcenter_timeout,
                })
            });
        let observed = observed(client, result, Duration::ZERO);
        match observed.error {
            Some(e) => Err(e),
            None => Ok(observed.observation),
        }
    }

    /// The sessions the reaper's rules choose in this cycle's
    /// classification, before the per-run cap, for this cycle's snapshot:
    /// the candidates go out beside the orphans they are chosen from.
    fn record_candidates(&self, inventory: &Inventory) {
        let mut reaping = self.reaping.lock().unwrap_or_else(|e| e.into_inner());
        reaping.candidates.clear();
        for s in inventory
            .sessions
            .iter()
            .filter(|s| self.sources.reaper.qualifies(s))
        {
            *reaping.candidates.entry(reaping_key(s)).or_default() += 1;
        }
    }

    /// Count a reaper pass's terminations and failures (in the next
    /// snapshot: the pass runs after the cycle has published).
    pub fn record_reaping(&self, pass: &crate::reaper::Pass) {
        let mut reaping = self.reaping.lock().unwrap_or_else(|e| e.into_inner());
        for (s, action) in &pass.actions {
            match action {
                crate::reaper::Action::Terminated => {
                    // A long-running reporter sees endless agents (each
                    // leaked cluster's CSI driver names it): past the cap a
                    // new one counts under `other`, so memory stays bounded.
                    let mut key = reaping_key(s);
                    if !reaping.reaped.contains_key(&key)
                        && reaping.reaped.len() >= MAX_REAPED_SERIES
                    {
                        key.2 = crate::labels::OTHER_AGENT.to_string();
                    }
                    *reaping.reaped.entry(key).or_default() += 1;
                }
                crate::reaper::Action::Failed(_) => {
                    *reaping.failures.entry(s.vcenter.clone()).or_default() += 1;
                }
                _ => {}
            }
        }
    }

    /// Start every sink's sender task: from now on a cycle hands its
    /// snapshot off and never waits on delivery (the long-running mode).
    pub fn start_senders(&self) {
        if self.senders_started.swap(true, Ordering::SeqCst) {
            return;
        }
        for sink in &self.sinks {
            sink.clone().start_sender();
        }
    }

    /// The counter the scheduler increments for each skipped tick.
    pub fn skipped_counter(&self) -> Arc<AtomicU64> {
        self.skipped.clone()
    }

    /// Gather, correlate, snapshot, hand off. Never fails as a whole:
    /// failures are in the report and in the `up` gauges.
    pub async fn run(&self) -> CycleReport {
        let started = Instant::now();
        let timestamp_ms = metrics::unix_now_ms();
        let cycle_number = self.cycles.fetch_add(1, Ordering::Relaxed) + 1;

        let gathered = self.gather().await;
        // With the reaper on, the cycle's classification as one document:
        // its candidates go into this snapshot, and the pass after the
        // cycle acts on the same document.
        let inventory = self.sources.reaper.enabled.then(|| {
            let inventory = Inventory::build(
                &gathered.input,
                gathered.failures.clone(),
                metrics::unix_now_ms(),
            );
            self.record_candidates(&inventory);
            inventory
        });
        let mut families = correlate::correlate(&gathered.input);
        families.extend(
            self.self_metrics(&gathered.collectors, cycle_number, started)
                .await,
        );
        let snapshot = Arc::new(Snapshot {
            timestamp_ms,
            families: merge_families(families),
        });
        self.latest.set(snapshot.clone());
        let mut failures = gathered.failures;
        failures.extend(self.deliver(&snapshot).await);

        info!(
            cycle = cycle_number,
            sessions = gathered.sessions,
            jobs = gathered.input.jobs.len(),
            unresolved_jobs = gathered.unresolved,
            correlated_series = snapshot
                .family(metrics::CORRELATED)
                .map_or(0, |f| f.samples.len()),
            series = snapshot.sample_count(),
            failures = failures.len(),
            duration_ms = started.elapsed().as_millis() as u64,
            "Cycle finished"
        );
        CycleReport {
            snapshot,
            failures,
            input: gathered.input,
            inventory,
        }
    }

    /// Every source: vCenters and Prow at once, each within its budget,
    /// then the CI users of the running jobs. Cutting a vCenter call short
    /// is safe: the client finishes a login it started in a task of its
    /// own, so the session is kept (and logged out at the end), never lost.
    async fn gather(&self) -> Gathered {
        let (vcenters, (prow_result, prow_elapsed)) =
            tokio::join!(self.observe_vcenters(), self.list_jobs());
        let mut failures = Vec::new();
        let mut collectors = gathered_collectors(&vcenters.observations);
        failures.extend(collectors.iter().filter_map(|c| c.failure.clone()));
        let observations: Vec<VcenterObservation> = vcenters
            .observations
            .into_iter()
            .map(|v| v.observation)
            .collect();

        let (prow_up, jobs) = match prow_result {
            Ok(jobs) => (true, jobs),
            Err(e) => {
                error!(source = %self.sources.prow.describe(), kind = e.kind(), error = %e, "Listing running jobs failed");
                failures.push(e.to_string());
                (false, Vec::new())
            }
        };
        collectors.push(CollectorOutcome {
            collector: "prow",
            vcenter: None,
            elapsed: prow_elapsed,
            failure: (!prow_up).then(String::new),
        });

        // CI users need the job list, so this step follows.
        let t0 = Instant::now();
        let (mut job_users, ci_failure) = self.resolve_ci_users(prow_up, &jobs).await;
        failures.extend(ci_failure.clone());
        collectors.push(CollectorOutcome {
            collector: "ci",
            vcenter: None,
            elapsed: t0.elapsed(),
            failure: ci_failure,
        });
        let unresolved = job_users.iter().filter(|j| j.identities.is_empty()).count();

        let configured: Vec<(String, Vec<String>)> = self
            .sources
            .vcenters
            .iter()
            .map(|c| (c.host().to_string(), c.config().aliases.clone()))
            .collect();
        let unmatched_identities = correlate::route_identities(&mut job_users, &configured);
        Gathered {
            input: CycleInput {
                vcenters: observations,
                prow_up,
                jobs: job_users,
                unmatched_identities,
                rules: self.sources.leaks.clone(),
            },
            collectors,
            failures,
            sessions: vcenters.session_count,
            unresolved,
        }
    }

    /// The running jobs, within the Prow budget.
    async fn list_jobs(&self) -> (Result<Vec<RunningJob>, crate::Error>, Duration) {
        let t0 = Instant::now();
        let result = tokio::time::timeout(
            self.sources.prow_timeout,
            self.sources.prow.list_running_jobs(),
        )
        .await
        .unwrap_or_else(|_| {
            Err(crate::Error::Timeout {
                what: format!("listing running jobs from {}", self.sources.prow.describe()),
                timeout: self.sources.prow_timeout,
            })
        });
        (result, t0.elapsed())
    }

    /// The CI users of every job, within the CI budget, and the failure
    /// line when a lookup failed. When Prow is down the resolvers are not
    /// called, so their caches survive the outage instead of being emptied
    /// by an empty job list.
    async fn resolve_ci_users(
        &self,
        prow_up: bool,
        jobs: &[RunningJob],
    ) -> (Vec<JobUsers>, Option<String>) {
        if !prow_up {
            return (Vec::new(), None);
        }
        let resolvers = &self.sources.resolvers;
        let failures_before = resolvers.failures();
        match tokio::time::timeout(self.sources.ci_timeout, resolvers.resolve(jobs)).await {
            Ok(job_users) => {
                // A job whose secret is not written yet is normal; a lookup
                // the build cluster refused or dropped is not.
                let failed = resolvers.failures() - failures_before;
                let failure = (failed > 0).then(|| {
                    format!(
                        "build cluster: {failed} CI-user lookups failed (see the warnings above)"
                    )
                });
                (job_users, failure)
            }
            Err(_) => {
                // Each call has its own deadline; this bounds a cycle with
                // many new jobs. What the caches hold still counts, and what
                // was found meanwhile is cached for next time.
                warn!(timeout = ?self.sources.ci_timeout, jobs = jobs.len(), "Resolving CI users ran out of time");
                (
                    resolvers.cached(jobs),
                    Some(format!(
                        "build cluster: resolving CI users timed out after {:?}",
                        self.sources.ci_timeout
                    )),
                )
            }
        }
    }

    /// Every self-metric of the cycle, in one place: collectors, cycle
    /// counts, the reporter's logins, the VM maps and the sinks.
    async fn self_metrics(
        &self,
        collectors: &[CollectorOutcome],
        cycle_number: u64,
        started: Instant,
    ) -> Vec<MetricFamily> {
        let no_labels = Vec::<(String, String)>::new;
        let mut duration = MetricFamily::gauge(
            metrics::COLLECTOR_DURATION,
            "Time each collector took in the last cycle.",
        );
        let mut success = MetricFamily::gauge(
            metrics::COLLECTOR_SUCCESS,
            "1 if the collector succeeded in the last cycle, else 0.",
        );
        for c in collectors {
            let mut labels = vec![("collector", c.collector.to_string())];
            if let Some(vc) = &c.vcenter {
                labels.push(("vcenter", vc.clone()));
            }
            duration.push(labels.clone(), c.elapsed.as_secs_f64());
            success.push(labels, bool_value(c.failure.is_none()));
        }
        let mut logins = MetricFamily::counter(
            metrics::REPORTER_LOGINS_TOTAL,
            "Logins of the reporter to the vCenter since start; 1 when its session is reused as it should be.",
        );
        let mut login_failures = MetricFamily::counter(
            metrics::REPORTER_LOGIN_FAILURES_TOTAL,
            "Failed logins of the reporter to the vCenter since start, by reason.",
        );
        let mut orphans = MetricFamily::counter(
            metrics::REPORTER_ORPHANS_TERMINATED_TOTAL,
            "Sessions of the reporter's own logins that got no answer, terminated since start.",
        );
        for client in &self.sources.vcenters {
            logins.push([("vcenter", client.host())], client.logins() as f64);
            orphans.push(
                [("vcenter", client.host())],
                client.orphans_terminated() as f64,
            );
            for (reason, n) in client.login_failures() {
                login_failures.push([("vcenter", client.host()), ("reason", reason)], n as f64);
            }
        }
        let mut families = vec![
            duration,
            success,
            MetricFamily::counter(metrics::SCRAPES_TOTAL, "Cycles run since start.")
                .with(no_labels(), cycle_number as f64),
            MetricFamily::counter(
                metrics::CYCLES_SKIPPED_TOTAL,
                "Scheduled cycles skipped because the previous one was still running.",
            )
            .with(no_labels(), self.skipped.load(Ordering::Relaxed) as f64),
            logins,
            login_failures,
            orphans,
        ];
        families.extend(self.vm_map_families().await);
        families.extend(self.reaper_families());
        for sink in &self.sinks {
            families.extend(sink.self_metrics());
        }
        families.push(
            MetricFamily::gauge(
                metrics::CYCLE_DURATION,
                "Time the last cycle took to gather and correlate.",
            )
            .with(no_labels(), started.elapsed().as_secs_f64()),
        );
        families
    }

    /// Hand the snapshot to every sink's sender (long-running mode), or
    /// publish to every sink and wait (`once`). Returns the failure lines.
    async fn deliver(&self, snapshot: &Arc<Snapshot>) -> Vec<String> {
        let results: Vec<(String, Result<(), crate::Error>)> =
            if self.senders_started.load(Ordering::SeqCst) {
                self.sinks
                    .iter()
                    .map(|sink| (sink.name().to_string(), sink.hand_off(snapshot.clone())))
                    .collect()
            } else {
                join_all(self.sinks.iter().map(|sink| {
                    let snapshot = snapshot.clone();
                    async move { (sink.name().to_string(), sink.publish(snapshot).await) }
                }))
                .await
            };
        let mut failures = Vec::new();
        for (name, result) in results {
            if let Err(e) = result {
                warn!(sink = %name, kind = e.kind(), error = %e, "Publishing failed");
                failures.push(format!("sink {name}: {e}"));
            }
        }
        failures
    }

    /// Every vCenter at once, each within the vCenter budget.
    async fn observe_vcenters(&self) -> GatheredVcenters {
        let vcenter_timeout = self.sources.vcenter_timeout;
        let calls = self.sources.vcenters.iter().map(|client| async move {
            let t0 = Instant::now();
            let result = tokio::time::timeout(vcenter_timeout, client.observe())
                .await
                .unwrap_or_else(|_| {
                    Err(crate::Error::Timeout {
                        what: format!("listing sessions of vCenter {}", client.host()),
                        timeout: vcenter_timeout,
                    })
                });
            observed(client, result, t0.elapsed())
        });
        let vcenters: Vec<ObservedVcenter> = join_all(calls).await;
        let session_count = vcenters
            .iter()
            .filter_map(|v| v.observation.sessions.as_ref())
            .map(Vec::len)
            .sum();
        GatheredVcenters {
            observations: vcenters,
            session_count,
        }
    }

    /// The reaper's series (only when it is enabled).
    fn reaper_families(&self) -> Vec<MetricFamily> {
        if !self.sources.reaper.enabled {
            return Vec::new();
        }
        let mut candidates = MetricFamily::gauge(
            metrics::REAPER_CANDIDATES,
            "Orphaned sessions the reaper's rules choose in this cycle, before its per-run cap.",
        );
        let mut reaped = MetricFamily::counter(
            metrics::REAPED_TOTAL,
            "Leaked sessions the reaper terminated since start.",
        );
        let reaping = self.reaping.lock().unwrap_or_else(|e| e.into_inner());
        let labels = |(vc, user, agent, reason): &(String, String, String, &'static str)| {
            [
                ("vcenter", vc.clone()),
                ("username", user.clone()),
                ("user_agent", agent.clone()),
                ("reason", reason.to_string()),
            ]
        };
        for (key, n) in &reaping.candidates {
            candidates.push(labels(key), *n as f64);
        }
        for (key, n) in &reaping.reaped {
            reaped.push(labels(key), *n as f64);
        }
        let mut failures = MetricFamily::counter(
            metrics::REAPER_FAILURES_TOTAL,
            "Terminations of leaked sessions that failed since start (refused or unanswered).",
        );
        for client in &self.sources.vcenters {
            let n = reaping.failures.get(client.host()).copied().unwrap_or(0);
            failures.push([("vcenter", client.host())], n as f64);
        }
        vec![candidates, reaped, failures]
    }

    /// The VM maps' self-metrics.
    async fn vm_map_families(&self) -> Vec<MetricFamily> {
        let mut vms = MetricFamily::gauge(
            metrics::VM_MAP_VMS,
            "VMs in the vCenter's guest IP to VM map.",
        );
        let mut bytes = MetricFamily::counter(
            metrics::VM_MAP_RECEIVED_BYTES,
            "Bytes of WaitForUpdatesEx answers read for the VM map since start.",
        );
        let mut full_reads = MetricFamily::counter(
            metrics::VM_MAP_FULL_READS,
            "Reads of the VM map from scratch since start (after start, a new login or an error).",
        );
        for client in self.sources.vcenters.iter().filter(|c| c.config().vm_map) {
            let stats = client.vm_map_stats().await;
            let labels = [("vcenter", client.host())];
            vms.push(labels, stats.vms as f64);
            bytes.push(labels, stats.received_bytes as f64);
            full_reads.push(labels, stats.full_reads as f64);
        }
        vec![vms, bytes, full_reads]
    }

    /// Give each sink what an earlier run kept for it. Returns one line per
    /// entry that could not be used (the sink goes on without it).
    pub fn import_states(&self, mut states: crate::state_file::States) -> Vec<String> {
        let mut problems = Vec::new();
        for sink in &self.sinks {
            let Some(key) = sink.state_key() else {
                continue;
            };
            if let Some(state) = states.remove(&key)
                && let Err(e) = sink.import_state(&state)
            {
                problems.push(format!("{key}: {e}"));
            }
        }
        problems
    }

    /// One line per sink with cycles still waiting.
    pub fn behind(&self) -> Vec<String> {
        self.sinks.iter().filter_map(|sink| sink.behind()).collect()
    }

    /// What every sink must remember for the next run.
    pub fn export_states(&self) -> crate::state_file::States {
        self.sinks
            .iter()
            .filter_map(|sink| Some((sink.state_key()?, sink.export_state()?)))
            .collect()
    }

    /// End of a long-running process: stale markers and group deletion
    /// (each sink's own `shutdown`), then log out of every vCenter. `once`
    /// skips the sinks' part, since a stale marker right after the only push
    /// would hide what was just pushed.
    ///
    /// Logout runs alongside the sinks, not after them: a dead sink spending
    /// its whole budget must never keep the reporter from releasing its
    /// vCenter session before Kubernetes' SIGKILL.
    pub async fn shutdown(&self, sinks_too: bool) -> Vec<String> {
        let sinks = async {
            if !sinks_too {
                return Vec::new();
            }
            join_all(self.sinks.iter().map(|sink| async move {
                let result = tokio::time::timeout(SINK_SHUTDOWN_BUDGET, sink.shutdown())
                    .await
                    .unwrap_or_else(|_| {
                        Err(crate::Error::Timeout {
                            what: format!("{} shutdown", sink.name()),
                            timeout: SINK_SHUTDOWN_BUDGET,
                        })
                    });
                (sink.name().to_string(), result)
            }))
            .await
        };
        let (sink_results, mut failures) = tokio::join!(sinks, self.logout_vcenters());

        for (name, result) in sink_results {
            if let Err(e) = result {
                warn!(sink = %name, error = %e, "Sink shutdown failed");
                failures.push(format!("sink {name}: {e}"));
            }
        }
        failures
    }

    /// Log out of every vCenter at once, each within [`LOGOUT_BUDGET`]; no
    /// client logs in again afterwards. A login in flight is waited for and
    /// its session released. Safe to call twice (the second does nothing).
    /// Returns the failure lines.
    pub async fn logout_vcenters(&self) -> Vec<String> {
        let logouts = join_all(self.sources.vcenters.iter().map(|client| async move {
            let result = tokio::time::timeout(LOGOUT_BUDGET, client.logout())
                .await
                .unwrap_or_else(|_| {
                    Err(crate::Error::Timeout {
                        what: format!("logging out of vCenter {}", client.host()),
                        timeout: LOGOUT_BUDGET,
                    })
                });
            (client.host().to_string(), result)
        }))
        .await;
        let mut failures = Vec::new();
        // The client logs a successful logout itself.
        for (host, result) in logouts {
            if let Err(e) = result {
                warn!(vcenter = %host, error = %e, "Logout failed");
                failures.push(format!("logout: {e}"));
            }
        }
        failures
    }
}

/// What the vCenters gave this cycle.
struct GatheredVcenters {
    observations: Vec<ObservedVcenter>,
    session_count: usize,
}

/// One vCenter's observation with how its collectors fared.
struct ObservedVcenter {
    observation: VcenterObservation,
    elapsed: Duration,
    /// The listing's failure, already logged.
    error: Option<String>,
    /// `None` when the VM map is off.
    vm_map: Option<(Duration, Option<String>)>,
}

/// Turn a client's answer into the observation correlate reads, logging a
/// failure once.
fn observed(
    client: &VcenterClient,
    result: Result<crate::vcenter::Observation, crate::Error>,
    elapsed: Duration,
) -> ObservedVcenter {
    let config = client.config();
    let mut observation = VcenterObservation {
        vcenter: client.host().to_string(),
        session_limit: config.session_limit,
        reporter: ReporterIdentity {
            username: correlate::normalize_username(&config.username),
            user_agent: config.user_agent.clone(),
        },
        ..VcenterObservation::default()
    };
    match result {
        Ok(read) => {
            debug!(vcenter = %client.host(), sessions = read.sessions.len(), "Listed sessions");
            let vm_map = read.vm_map.map(|r| {
                (
                    read.vm_map_elapsed,
                    r.err()
                        .map(|e| format!("VM map of vCenter {}: {e}", client.host())),
                )
            });
            observation.sessions = Some(read.sessions);
            observation.clock = Some(read.clock);
            observation.vm_names_by_ip = read.vm_names_by_ip;
            ObservedVcenter {
                observation,
                elapsed,
                error: None,
                vm_map,
            }
        }
        Err(e) => {
            if matches!(e, crate::Error::LoginBackoff { .. }) {
                // Logged once when the wait began, not every cycle.
                debug!(vcenter = %client.host(), error = %e, "Waiting before logging in again");
            } else {
                error!(vcenter = %client.host(), kind = e.kind(), error = %e, "Listing vCenter sessions failed");
            }
            ObservedVcenter {
                observation,
                elapsed,
                error: Some(e.to_string()),
                vm_map: None,
            }
        }
    }
}

fn bool_value(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// What one cycle gathered, ready to correlate.
struct Gathered {
    input: CycleInput,
    collectors: Vec<CollectorOutcome>,
    /// One line per failed source, already logged.
    failures: Vec<String>,
    sessions: usize,
    unresolved: usize,
}

/// How one collector fared this cycle.
struct CollectorOutcome {
    /// `vcenter`, `vm_map`, `prow` or `ci`.
    collector: &'static str,
    /// The vCenter of a per-vCenter collector.
    vcenter: Option<String>,
    elapsed: Duration,
    /// The failure line, already logged; `None` on success.
    failure: Option<String>,
}

/// The outcome of each vCenter's collectors: `vcenter`, and `vm_map` when
/// it is on.
fn gathered_collectors(vcenters: &[ObservedVcenter]) -> Vec<CollectorOutcome> {
    let mut out = Vec::new();
    for v in vcenters {
        out.push(CollectorOutcome {
            collector: "vcenter",
            vcenter: Some(v.observation.vcenter.clone()),
            elapsed: v.elapsed,
            failure: v.error.clone(),
        });
        if let Some((elapsed, error)) = &v.vm_map {
            out.push(CollectorOutcome {
                collector: "vm_map",
                vcenter: Some(v.observation.vcenter.clone()),
                elapsed: *elapsed,
                failure: error.clone(),
            });
        }
    }
    out
}

/// Families of the same name (one per remote-write target, say) become one
/// family with all their samples, since exposition and remote-write v2
/// metadata need each name once.
fn merge_families(families: Vec<MetricFamily>) -> Vec<MetricFamily> {
    let mut merged: Vec<MetricFamily> = Vec::with_capacity(families.len());
    for family in families {
        match merged.iter_mut().find(|f| f.name == family.name) {
            Some(existing) => existing.samples.extend(family.samples),
            None => merged.push(family),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_of_one_name_merge_in_first_seen_order() {
        let families = vec![
            MetricFamily::gauge("a", "A").with([("target", "1")], 1.0),
            MetricFamily::gauge("b", "B").with([("x", "y")], 2.0),
            MetricFamily::gauge("a", "A").with([("target", "2")], 3.0),
        ];
        let merged = merge_families(families);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].name, "a");
        assert_eq!(merged[0].samples.len(), 2);
        assert_eq!(merged[1].name, "b");
    }
}
