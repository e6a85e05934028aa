//! Which sessions a running job provably holds, and which no running job
//! can own: the pure classification behind `job_sessions`, `orphaned`,
//! `oldest_session_age_seconds` and `idle_sessions`. No I/O and no clock:
//! the vCenter's `CurrentTime` comes in with the sessions.
//!
//! Evidence that ties a session to a job (DESIGN.md, "How a session is tied
//! to a job"), tried in this order, a session counted at most once:
//! 1. `user_agent`: the agent matches one of [`LeakRules::cluster_user_agents`]
//!    (the CSI driver's `k8s-csi-useragent-<clusterID>`), and the captured
//!    cluster ID is a running job's `infraID` or starts with its ci-op
//!    namespace or `infraID` followed by `-`;
//! 2. `vm_ip`: the session's address is a guest IP of a VM whose name starts
//!    with a running job's `infraID` or ci-op namespace followed by `-`.
//!
//! A session that no running job can own is orphaned, for the first reason
//! that holds:
//! 1. `job_ended`: its evidence (cluster ID or VM name) names a ci-op
//!    namespace (`ci-op-` and 8 characters, then `-`) that no running job has;
//! 2. `no_running_job`: no running job logs in as its user on this vCenter;
//! 3. `predates_running_jobs`: it logged in more than
//!    [`LeakRules::login_grace`] before every running job of its user started.
//!
//! No false alarms: nothing is orphaned in a cycle whose job list failed;
//! `job_ended` waits until every running job's namespace is known; a job
//! whose users are not known yet may log in as anyone, so a session it
//! could have opened (logged in after it started, or its start unknown) is
//! not `no_running_job` or `predates_running_jobs`. Never orphaned: the
//! reporter's own session (and its HA twin's), extension sessions, and
//! excluded users.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use regex::Regex;

use crate::correlate::{JobUsers, VcenterObservation, normalize_username};
use crate::metrics::{self, MetricFamily};
use crate::vcenter::{UserSession, VcenterClock, parse_time_ms};

/// The vSphere CSI driver's user agent: `k8s-csi-useragent-<clusterID>`,
/// newer versions append `-<feature>` (kept in the capture; the match on
/// the job's namespace or infraID prefix allows it).
pub const DEFAULT_CLUSTER_USER_AGENTS: &[&str] = &[r"^k8s-csi-useragent-(?P<cluster>.+)$"];

/// vCenter's own solution users and services, which hold sessions of their
/// own that no CI job owns (matched in full, case-insensitively, against
/// the normalised user name).
pub const DEFAULT_EXCLUDE_USERS: &[&str] = &[
    "vpxd-.*",
    "vpxd-extension-.*",
    "vsphere-webclient-.*",
    "machine-[0-9a-f-]{36}",
    "hvc-.*",
    "wcp-.*",
    "vsphere-ui-.*",
];

/// Default of [`LeakRules::login_grace`]: clock skew between Prow and the
/// vCenter, and a job's first login racing its recorded start.
pub const DEFAULT_LOGIN_GRACE: Duration = Duration::from_secs(5 * 60);
/// Default of [`LeakRules::idle_threshold`].
pub const DEFAULT_IDLE_THRESHOLD: Duration = Duration::from_secs(60 * 60);

/// The `leaks:` settings, compiled.
#[derive(Debug, Clone)]
pub struct LeakRules {
    /// User agents naming their cluster in a group named `cluster`.
    pub cluster_user_agents: Vec<Regex>,
    /// Users never counted as orphaned (anchored, case-insensitive).
    pub exclude_users: Vec<Regex>,
    pub login_grace: Duration,
    /// A session idle longer than this counts in `idle_sessions`.
    pub idle_threshold: Duration,
}

impl Default for LeakRules {
    fn default() -> Self {
        LeakRules {
            cluster_user_agents: DEFAULT_CLUSTER_USER_AGENTS
                .iter()
                .map(|p| Regex::new(p).expect("the default cluster user agent regex is valid"))
                .collect(),
            exclude_users: DEFAULT_EXCLUDE_USERS
                .iter()
                .map(|p| user_regex(p).expect("the default excluded user regexes are valid"))
                .collect(),
            login_grace: DEFAULT_LOGIN_GRACE,
            idle_threshold: DEFAULT_IDLE_THRESHOLD,
        }
    }
}

/// A user-name pattern matched in full and case-insensitively.
pub fn user_regex(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("(?i)^(?:{pattern})$"))
}

/// A user-agent pattern; it must capture a group named `cluster`.
pub fn cluster_agent_regex(pattern: &str) -> Result<Regex, String> {
    let regex = Regex::new(pattern).map_err(|e| e.to_string())?;
    if !regex.capture_names().any(|n| n == Some("cluster")) {
        return Err("has no group named `cluster`, e.g. (?P<cluster>...)".into());
    }
    Ok(regex)
}

/// How a session was tied to a job (the `attributed_by` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AttributedBy {
    UserAgent,
    VmIp,
}

impl AttributedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            AttributedBy::UserAgent => "user_agent",
            AttributedBy::VmIp => "vm_ip",
        }
    }
}

/// Why no running job can own a session (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OrphanReason {
    JobEnded,
    NoRunningJob,
    PredatesRunningJobs,
}

impl OrphanReason {
    pub fn as_str(self) -> &'static str {
        match self {
            OrphanReason::JobEnded => "job_ended",
            OrphanReason::NoRunningJob => "no_running_job",
            OrphanReason::PredatesRunningJobs => "predates_running_jobs",
        }
    }

    pub const ALL: [OrphanReason; 3] = [
        OrphanReason::JobEnded,
        OrphanReason::NoRunningJob,
        OrphanReason::PredatesRunningJobs,
    ];
}

/// What the classification says of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The reporter's own session.
    Reporter,
    /// An extension session or an excluded user: never orphaned.
    Exempt,
    /// Proven to belong to the running job at this index of the input.
    Attributed { job: usize, by: AttributedBy },
    /// No running job can own it.
    Orphaned {
        reason: OrphanReason,
        /// The ended job's ci-op namespace (`job_ended` only).
        namespace: Option<String>,
    },
    /// Its user is used by running jobs, none of which it is proven to be
    /// part of: counted per user only.
    Shared,
    /// Cannot be decided this cycle (job list failed, a running job's
    /// namespace or users not known yet): neither attributed nor orphaned.
    Pending,
}

/// Who the reporter is on a vCenter, to recognise its own session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReporterIdentity {
    /// Normalised with [`normalize_username`].
    pub username: String,
    pub user_agent: String,
}

impl ReporterIdentity {
    /// Whether a session of the reporter's user with this agent is a
    /// reporter's: its own agent, or any agent starting with the default
    /// one, so the other replica of an HA pair (agents
    /// `vsphere-ci-session-metrics/<pod>`) and a `sessions` or `reap` run
    /// are never taken for leaks.
    pub fn is_agent(&self, agent: &str) -> bool {
        agent == self.user_agent || agent.starts_with(crate::config::DEFAULT_USER_AGENT)
    }
}

/// Lookups built once per vCenter and cycle, so each session costs a few
/// hash lookups whatever the number of jobs.
struct Index<'a> {
    jobs: &'a [JobUsers],
    /// Namespace or infraID -> job index.
    by_prefix: HashMap<&'a str, usize>,
    /// User -> indexes of the jobs logging in as it on this vCenter.
    jobs_by_user: HashMap<&'a str, Vec<usize>>,
    /// Start times of jobs whose users are not known yet.
    unresolved_starts: Vec<Option<i64>>,
    every_namespace_known: bool,
}

impl<'a> Index<'a> {
    fn new(vcenter: &'a str, jobs: &'a [JobUsers]) -> Self {
        let mut by_prefix = HashMap::new();
        let mut jobs_by_user: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut unresolved_starts = Vec::new();
        for (i, entry) in jobs.iter().enumerate() {
            for prefix in [&entry.namespace, &entry.infra_id].into_iter().flatten() {
                by_prefix.entry(prefix.as_str()).or_insert(i);
            }
            if entry.identities.is_empty() {
                unresolved_starts.push(entry.job.start_ms);
            }
            for identity in entry.identities.iter().filter(|id| id.vcenter == vcenter) {
                let users = jobs_by_user.entry(identity.username.as_str()).or_default();
                if !users.contains(&i) {
                    users.push(i);
                }
            }
        }
        Index {
            jobs,
            by_prefix,
            jobs_by_user,
            unresolved_starts,
            every_namespace_known: jobs.iter().all(|j| j.namespace.is_some()),
        }
    }

    /// The job whose namespace or infraID `name` equals or starts with,
    /// followed by `-`.
    fn job_named_by(&self, name: &str) -> Option<usize> {
        if let Some(&job) = self.by_prefix.get(name) {
            return Some(job);
        }
        name.match_indices('-')
            .find_map(|(pos, _)| self.by_prefix.get(&name[..pos]).copied())
    }
}

/// The ci-op namespace `name` starts with: `ci-op-` and 8 lower-case
/// letters or digits, followed by `-`.
pub fn ci_op_namespace(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("ci-op-")?;
    let id = rest.get(..8)?;
    let valid = id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (valid && rest[8..].starts_with('-')).then(|| &name[..14])
}

/// The cluster ID a user agent names, by the first pattern that matches.
fn cluster_of<'s>(agent: &'s str, rules: &LeakRules) -> Option<&'s str> {
    rules
        .cluster_user_agents
        .iter()
        .find_map(|re| re.captures(agent)?.name("cluster"))
        .map(|m| m.as_str())
        .filter(|c| !c.is_empty())
}

/// Everything the classification of one vCenter's sessions needs.
pub struct VcenterFacts<'a> {
    pub observation: &'a VcenterObservation,
    pub jobs: &'a [JobUsers],
    pub prow_up: bool,
    pub rules: &'a LeakRules,
}

/// One verdict per session of the observation, in its order (empty when
/// the listing failed).
pub fn classify(facts: &VcenterFacts<'_>) -> Vec<Verdict> {
    let Some(sessions) = &facts.observation.sessions else {
        return Vec::new();
    };
    let index = Index::new(&facts.observation.vcenter, facts.jobs);
    sessions
        .iter()
        .map(|session| classify_one(session, facts, &index))
        .collect()
}

fn classify_one(session: &UserSession, facts: &VcenterFacts<'_>, index: &Index<'_>) -> Verdict {
    let observation = facts.observation;
    let rules = facts.rules;
    let user = normalize_username(&session.user_name);
    let reporter = &observation.reporter;
    if user == reporter.username && reporter.is_agent(&session.user_agent) {
        return Verdict::Reporter;
    }
    if session.extension_session || rules.exclude_users.iter().any(|re| re.is_match(&user)) {
        return Verdict::Exempt;
    }

    let cluster = cluster_of(&session.user_agent, rules);
    if let Some(job) = cluster.and_then(|c| index.job_named_by(c)) {
        return Verdict::Attributed {
            job,
            by: AttributedBy::UserAgent,
        };
    }
    let vm_names = observation
        .vm_names_by_ip
        .get(&session.ip_address)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if let Some(job) = vm_names.iter().find_map(|name| index.job_named_by(name)) {
        return Verdict::Attributed {
            job,
            by: AttributedBy::VmIp,
        };
    }

    if !facts.prow_up {
        return Verdict::Pending;
    }
    let ended = cluster
        .and_then(ci_op_namespace)
        .or_else(|| vm_names.iter().find_map(|n| ci_op_namespace(n)));
    if let Some(namespace) = ended {
        // A running job whose namespace is not known yet may be this one.
        if !index.every_namespace_known {
            return Verdict::Pending;
        }
        return Verdict::Orphaned {
            reason: OrphanReason::JobEnded,
            namespace: Some(namespace.to_string()),
        };
    }

    let login_ms = login_local_ms(session, observation.clock);
    // Jobs whose users are not known yet could have opened the session
    // unless it is older than all of them.
    if !index.unresolved_starts.is_empty()
        && !predates_all(login_ms, &index.unresolved_starts, rules.login_grace)
    {
        return Verdict::Pending;
    }
    let users_jobs = index
        .jobs_by_user
        .get(user.as_str())
        .map(Vec::as_slice)
        .unwrap_or_default();
    if users_jobs.is_empty() {
        return Verdict::Orphaned {
            reason: OrphanReason::NoRunningJob,
            namespace: None,
        };
    }
    let starts: Vec<Option<i64>> = users_jobs
        .iter()
        .map(|&i| index.jobs[i].job.start_ms)
        .collect();
    if predates_all(login_ms, &starts, rules.login_grace) {
        return Verdict::Orphaned {
            reason: OrphanReason::PredatesRunningJobs,
            namespace: None,
        };
    }
    Verdict::Shared
}

/// The session's login time on the local clock: the vCenter's time moved
/// by the offset `CurrentTime` measured. `None` when either is unknown.
fn login_local_ms(session: &UserSession, clock: Option<VcenterClock>) -> Option<i64> {
    let clock = clock?;
    Some(parse_time_ms(&session.login_time)? - clock.offset_ms())
}

/// Whether a login at `login_ms` came more than `grace` before every start.
/// Unknown times never predate anything.
fn predates_all(login_ms: Option<i64>, starts: &[Option<i64>], grace: Duration) -> bool {
    let Some(login) = login_ms else {
        return false;
    };
    let grace = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
    starts
        .iter()
        .all(|start| start.is_some_and(|s| s.saturating_sub(login) > grace))
}

/// The leak families of one cycle: `job_sessions`, `orphaned`,
/// `oldest_session_age_seconds`, `idle_sessions`. `agents` holds each
/// observation's capped agent labels (`labels::agent_labels`), one per
/// session, so the labels match the open-session series exactly.
pub fn leak_families(
    observations: &[VcenterObservation],
    agents: &[Vec<Cow<'_, str>>],
    jobs: &[JobUsers],
    prow_up: bool,
    rules: &LeakRules,
) -> Vec<MetricFamily> {
    let mut job_sessions = MetricFamily::gauge(
        metrics::JOB_SESSIONS,
        "Sessions of a user and agent proven to belong to a running CI job, by the evidence that ties them (user_agent, vm_ip).",
    );
    let mut orphaned = MetricFamily::gauge(
        metrics::ORPHANED,
        "Sessions no running CI job can own, by reason (job_ended, no_running_job, predates_running_jobs).",
    );
    let mut oldest = MetricFamily::gauge(
        metrics::OLDEST_SESSION_AGE,
        "Age of the oldest session of a user and agent, by the vCenter's clock.",
    );
    let mut idle = MetricFamily::gauge(
        metrics::IDLE_SESSIONS,
        "Sessions of a user and agent idle longer than the idle threshold, by the vCenter's clock.",
    );
    debug_assert_eq!(observations.len(), agents.len());
    for (observation, agents) in observations.iter().zip(agents) {
        let Some(sessions) = &observation.sessions else {
            continue;
        };
        debug_assert_eq!(sessions.len(), agents.len());
        let vc = observation.vcenter.as_str();
        let facts = VcenterFacts {
            observation,
            jobs,
            prow_up,
            rules,
        };
        let verdicts = classify(&facts);
        let mut attributed: BTreeMap<(String, &str, usize, AttributedBy), u64> = BTreeMap::new();
        let mut orphans: BTreeMap<(String, &str, OrphanReason, Option<String>), u64> =
            BTreeMap::new();
        // (user, agent) -> (oldest login, idle count)
        let mut ages: BTreeMap<(String, &str), (Option<i64>, u64)> = BTreeMap::new();
        for ((session, verdict), agent) in sessions.iter().zip(verdicts).zip(agents) {
            let user = normalize_username(&session.user_name);
            let agent = agent.as_ref();
            match verdict {
                Verdict::Attributed { job, by } => {
                    *attributed
                        .entry((user.clone(), agent, job, by))
                        .or_default() += 1;
                }
                Verdict::Orphaned { reason, namespace } => {
                    *orphans
                        .entry((user.clone(), agent, reason, namespace))
                        .or_default() += 1;
                }
                _ => {}
            }
            let entry = ages.entry((user, agent)).or_default();
            if let Some(clock) = observation.clock {
                if let Some(login) = parse_time_ms(&session.login_time) {
                    entry.0 = Some(entry.0.map_or(login, |o: i64| o.min(login)));
                }
                if let Some(active) = parse_time_ms(&session.last_active_time)
                    && clock.vcenter_ms.saturating_sub(active)
                        > i64::try_from(rules.idle_threshold.as_millis()).unwrap_or(i64::MAX)
                {
                    entry.1 += 1;
                }
            }
        }
        for ((user, agent, job, by), count) in attributed {
            let job = &jobs[job];
            job_sessions.push(
                [
                    ("vcenter", vc),
                    ("username", user.as_str()),
                    ("user_agent", agent),
                    ("ci_job", job.job.job_name.as_str()),
                    ("build_id", job.job.build_id.as_str()),
                    ("pull_request", job.job.pull_request.as_str()),
                    ("namespace", job.namespace.as_deref().unwrap_or_default()),
                    ("attributed_by", by.as_str()),
                ],
                count as f64,
            );
        }
        for ((user, agent, reason, namespace), count) in orphans {
            orphaned.push(
                [
                    ("vcenter", vc),
                    ("username", user.as_str()),
                    ("user_agent", agent),
                    ("reason", reason.as_str()),
                    ("namespace", namespace.as_deref().unwrap_or_default()),
                ],
                count as f64,
            );
        }
        let Some(clock) = observation.clock else {
            continue;
        };
        for ((user, agent), (oldest_login, idle_count)) in ages {
            let labels = [
                ("vcenter", vc),
                ("username", user.as_str()),
                ("user_agent", agent),
            ];
            if let Some(login) = oldest_login {
                let age = clock.vcenter_ms.saturating_sub(login).max(0);
                oldest.push(labels, age as f64 / 1000.0);
            }
            idle.push(labels, idle_count as f64);
        }
    }
    vec![job_sessions, orphaned, oldest, idle]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ci::CiIdentity;
    use crate::prow::RunningJob;

    const VC: &str = "vc1.example.com";
    /// The vCenter's clock reads 2026-12-02T10:00:00Z while the local clock
    /// is 30 s behind it.
    const VC_NOW: &str = "2026-12-02T10:00:00Z";
    const SKEW_MS: i64 = 30_000;

    fn ms(time: &str) -> i64 {
        parse_time_ms(time).expect("test times are valid")
    }

    fn session(user: &str, agent: &str, ip: &str, login: &str) -> UserSession {
        UserSession {
            key: format!("{user}/{agent}/{ip}/{login}"),
            user_name: user.into(),
            full_name: String::new(),
            login_time: login.into(),
            last_active_time: login.into(),
            ip_address: ip.into(),
            user_agent: agent.into(),
            call_count: 1,
            extension_session: false,
        }
    }

    /// A resolved job logging in as `user`, started at `start` (Prow's
    /// clock, which is the local one), its namespace `ci-op-<id>`.
    fn job(id: &str, user: &str, start: &str) -> JobUsers {
        JobUsers {
            job: RunningJob {
                id: format!("pj-{id}"),
                build_id: format!("b-{id}"),
                start_ms: Some(ms(start)),
                job_name: format!("job-{id}"),
                pull_request: String::new(),
                target: "e2e-vsphere".into(),
                cluster: "vsphere02".into(),
                cluster_profile: "vsphere-2".into(),
            },
            identities: vec![CiIdentity {
                vcenter: VC.into(),
                username: user.into(),
            }],
            namespace: Some(format!("ci-op-{id}")),
            infra_id: Some(format!("ci-op-{id}-af877-4p9dw")),
        }
    }

    fn observation(sessions: Vec<UserSession>, vms: &[(&str, &str)]) -> VcenterObservation {
        VcenterObservation {
            vcenter: VC.into(),
            sessions: Some(sessions),
            clock: Some(VcenterClock {
                vcenter_ms: ms(VC_NOW),
                local_ms: ms(VC_NOW) - SKEW_MS,
            }),
            vm_names_by_ip: vms
                .iter()
                .map(|(ip, name)| (ip.to_string(), vec![name.to_string()]))
                .collect(),
            session_limit: 3000,
            reporter: ReporterIdentity {
                username: "reporter".into(),
                user_agent: "vsphere-ci-session-metrics".into(),
            },
        }
    }

    fn verdicts(
        observation: &VcenterObservation,
        jobs: &[JobUsers],
        prow_up: bool,
    ) -> Vec<Verdict> {
        classify(&VcenterFacts {
            observation,
            jobs,
            prow_up,
            rules: &LeakRules::default(),
        })
    }

    fn orphaned(reason: OrphanReason, namespace: Option<&str>) -> Verdict {
        Verdict::Orphaned {
            reason,
            namespace: namespace.map(str::to_string),
        }
    }

    const CSI: &str = "k8s-csi-useragent-";
    const T0: &str = "2026-12-02T08:00:00Z";
    /// Logins after every job started.
    const LATER: &str = "2026-12-02T09:00:00Z";

    #[test]
    fn shared_user_sessions_are_split_by_cluster_and_vm_evidence() {
        let jobs = [
            job("aaaaaaaa", "ci_user_01", T0),
            job("bbbbbbbb", "ci_user_01", T0),
            job("cccccccc", "ci_user_01", T0),
        ];
        let sessions = vec![
            // Job A's CSI driver, the old and the newer (feature) agent form.
            session(
                r"VSPHERE.LOCAL\ci_user_01",
                &format!("{CSI}ci-op-aaaaaaaa-af877-4p9dw"),
                "10.1.0.9",
                LATER,
            ),
            session(
                "ci_user_01@vsphere.local",
                &format!("{CSI}ci-op-aaaaaaaa-af877-4p9dw-cns"),
                "10.1.0.9",
                LATER,
            ),
            // Job B's machine API from its master's guest IP.
            session(
                r"VSPHERE.LOCAL\CI_User_01",
                "machineAPIvSphereProvider",
                "10.1.0.21",
                LATER,
            ),
            // The installer from the build cluster: the user's only.
            session(
                r"VSPHERE.LOCAL\ci_user_01",
                "openshift-install govmomi/0.34",
                "10.128.0.5",
                LATER,
            ),
        ];
        let obs = observation(
            sessions,
            &[("10.1.0.21", "ci-op-bbbbbbbb-af877-4p9dw-master-0")],
        );
        assert_eq!(
            verdicts(&obs, &jobs, true),
            vec![
                Verdict::Attributed {
                    job: 0,
                    by: AttributedBy::UserAgent
                },
                Verdict::Attributed {
                    job: 0,
                    by: AttributedBy::UserAgent
                },
                Verdict::Attributed {
                    job: 1,
                    by: AttributedBy::VmIp
                },
                Verdict::Shared,
            ]
        );
    }

    #[test]
    fn the_user_agent_is_tried_before_the_vm_address() {
        let jobs = [
            job("aaaaaaaa", "ci_user_01", T0),
            job("bbbbbbbb", "ci_user_01", T0),
        ];
        // A CSI session of job A from a VM of job B (a shared address).
        let obs = observation(
            vec![session(
                "ci_user_01",
                &format!("{CSI}ci-op-aaaaaaaa-x-y"),
                "10.1.0.21",
                LATER,
            )],
            &[("10.1.0.21", "ci-op-bbbbbbbb-x-y-worker-0")],
        );
        assert_eq!(
            verdicts(&obs, &jobs, true),
            vec![Verdict::Attributed {
                job: 0,
                by: AttributedBy::UserAgent
            }]
        );
    }

    #[test]
    fn orphan_reasons_are_tried_in_order() {
        let jobs = [job("aaaaaaaa", "ci_user_01", T0)];
        let obs = observation(
            vec![
                // A cluster whose job ended, by agent and by VM name.
                session(
                    "ci_user_01",
                    &format!("{CSI}ci-op-zzzzzzzz-af877-4p9dw"),
                    "10.9.9.9",
                    LATER,
                ),
                session(
                    "ci_user_01",
                    "k8s-cloud-provider-vsphere",
                    "10.1.0.77",
                    LATER,
                ),
                // A user no running job uses.
                session("ci_user_02", "govc/0.37", "10.128.0.5", LATER),
                // Logged in 5m10s before job A started: the vCenter's
                // 07:55:20 is 07:54:50 on the local (Prow's) clock. Compared
                // without the offset it would be inside the grace.
                session(
                    "ci_user_01",
                    "govc/0.37",
                    "10.128.0.5",
                    "2026-12-02T07:55:20Z",
                ),
                // Inside the 5-minute grace: 4 minutes before.
                session(
                    "ci_user_01",
                    "govc/0.37",
                    "10.128.0.5",
                    "2026-12-02T07:56:30Z",
                ),
            ],
            &[("10.1.0.77", "ci-op-zzzzzzzz-af877-4p9dw-worker-a-1")],
        );
        assert_eq!(
            verdicts(&obs, &jobs, true),
            vec![
                orphaned(OrphanReason::JobEnded, Some("ci-op-zzzzzzzz")),
                orphaned(OrphanReason::JobEnded, Some("ci-op-zzzzzzzz")),
                orphaned(OrphanReason::NoRunningJob, None),
                orphaned(OrphanReason::PredatesRunningJobs, None),
                Verdict::Shared,
            ]
        );
    }

    #[test]
    fn a_session_predates_only_when_older_than_every_job_of_its_user() {
        let jobs = [
            job("aaaaaaaa", "ci_user_01", T0),
            job("bbbbbbbb", "ci_user_01", "2026-12-02T06:00:00Z"),
        ];
        let obs = observation(
            vec![session(
                "ci_user_01",
                "govc",
                "10.128.0.5",
                "2026-12-02T07:00:00Z",
            )],
            &[],
        );
        assert_eq!(verdicts(&obs, &jobs, true), vec![Verdict::Shared]);
    }

    #[test]
    fn the_reporter_extensions_and_excluded_users_are_never_orphaned() {
        let mut extension = session("com.vmware.vsan.health", "vsan", "127.0.0.1", LATER);
        extension.extension_session = true;
        let obs = observation(
            vec![
                session(
                    r"VSPHERE.LOCAL\Reporter",
                    "vsphere-ci-session-metrics",
                    "10.0.0.1",
                    LATER,
                ),
                // Same user, another agent: not the reporter's session.
                session("reporter@vsphere.local", "govc", "10.0.0.1", LATER),
                // The other replica of an HA pair.
                session(
                    "reporter@vsphere.local",
                    "vsphere-ci-session-metrics/vsphere-ci-session-metrics-7d9f-abcde",
                    "10.0.0.2",
                    LATER,
                ),
                extension,
                session(
                    r"VSPHERE.LOCAL\vpxd-extension-1b2c3d4e",
                    "VMware vim-java 1.0",
                    "127.0.0.1",
                    LATER,
                ),
                session(
                    "VSphere-WebClient-5f6a@VSPHERE.LOCAL",
                    "vsphere-ui",
                    "127.0.0.1",
                    LATER,
                ),
            ],
            &[],
        );
        assert_eq!(
            verdicts(&obs, &[], true),
            vec![
                Verdict::Reporter,
                orphaned(OrphanReason::NoRunningJob, None),
                Verdict::Reporter,
                Verdict::Exempt,
                Verdict::Exempt,
                Verdict::Exempt,
            ]
        );
    }

    #[test]
    fn nothing_is_orphaned_while_the_facts_are_incomplete() {
        let leak = session("ci_user_02", "govc", "10.128.0.5", LATER);
        let ended = session(
            "ci_user_01",
            &format!("{CSI}ci-op-zzzzzzzz-a-b"),
            "10.9.9.9",
            LATER,
        );
        let obs = observation(vec![leak.clone(), ended.clone()], &[]);

        // The job list failed.
        assert_eq!(
            verdicts(&obs, &[], false),
            vec![Verdict::Pending, Verdict::Pending]
        );

        // A running job whose namespace is not known yet may be ci-op-zzzzzzzz,
        // and, users unknown, may log in as ci_user_02.
        let mut unresolved = job("yyyyyyyy", "x", T0);
        unresolved.identities.clear();
        unresolved.namespace = None;
        unresolved.infra_id = None;
        assert_eq!(
            verdicts(&obs, std::slice::from_ref(&unresolved), true),
            vec![Verdict::Pending, Verdict::Pending]
        );

        // Once its namespace is known, the ended cluster is told; a session
        // older than the unresolved job by more than the grace is told too.
        unresolved.namespace = Some("ci-op-yyyyyyyy".into());
        let old = session("ci_user_02", "govc", "10.128.0.5", "2026-12-02T07:00:00Z");
        let obs = observation(vec![leak, ended, old], &[]);
        assert_eq!(
            verdicts(&obs, &[unresolved], true),
            vec![
                Verdict::Pending,
                orphaned(OrphanReason::JobEnded, Some("ci-op-zzzzzzzz")),
                orphaned(OrphanReason::NoRunningJob, None),
            ]
        );
    }

    #[test]
    fn ci_op_namespaces_are_recognised_exactly() {
        let cases = [
            ("ci-op-110jib7j-af877-4p9dw", Some("ci-op-110jib7j")),
            ("ci-op-110jib7j-master-0", Some("ci-op-110jib7j")),
            ("ci-op-110jib7j", None),
            ("ci-op-110JIB7J-x", None),
            ("ci-op-110jib7-x", None),
            ("ci-op-ééééé-x", None),
            ("build01-worker", None),
        ];
        for (name, want) in cases {
            assert_eq!(ci_op_namespace(name), want, "{name}");
        }
    }

    use crate::metrics::testing::series;

    #[test]
    fn families_count_each_session_once_by_job_reason_age_and_idleness() {
        let jobs = [
            job("aaaaaaaa", "ci_user_01", T0),
            job("bbbbbbbb", "ci_user_01", T0),
        ];
        let mut idle = session("ci_user_02", "govc", "10.128.0.5", "2026-12-02T07:00:00Z");
        idle.last_active_time = "2026-12-02T08:59:59Z".into(); // 1h00m01s before VC_NOW
        let mut active = session("ci_user_02", "govc", "10.128.0.5", "2026-12-02T09:30:00Z");
        active.last_active_time = "2026-12-02T09:00:01Z".into(); // 59m59s before
        let csi = format!("{CSI}ci-op-aaaaaaaa-af877-4p9dw");
        let obs = observation(
            vec![
                session("ci_user_01", &csi, "10.1.0.9", LATER),
                session("ci_user_01", &csi, "10.1.0.10", LATER),
                idle,
                active,
            ],
            &[],
        );
        let (agents, _) = crate::labels::agent_labels(obs.sessions.as_deref().unwrap_or_default());
        let families = leak_families(
            std::slice::from_ref(&obs),
            &[agents],
            &jobs,
            true,
            &LeakRules::default(),
        );
        let agent = format!("user_agent={csi}");
        assert_eq!(
            series(&families, metrics::JOB_SESSIONS),
            vec![(
                format!(
                    "attributed_by=user_agent,build_id=b-aaaaaaaa,ci_job=job-aaaaaaaa,namespace=ci-op-aaaaaaaa,pull_request=,{agent},username=ci_user_01,vcenter={VC}"
                ),
                2.0
            )]
        );
        assert_eq!(
            series(&families, metrics::ORPHANED),
            vec![(
                format!(
                    "namespace=,reason=no_running_job,user_agent=govc,username=ci_user_02,vcenter={VC}"
                ),
                2.0
            )]
        );
        // 10:00 - 07:00 = 3 h; 10:00 - 09:00 = 1 h.
        assert_eq!(
            series(&families, metrics::OLDEST_SESSION_AGE),
            vec![
                (
                    format!("user_agent=govc,username=ci_user_02,vcenter={VC}"),
                    10_800.0
                ),
                (format!("{agent},username=ci_user_01,vcenter={VC}"), 3_600.0),
            ]
        );
        assert_eq!(
            series(&families, metrics::IDLE_SESSIONS),
            vec![
                (
                    format!("user_agent=govc,username=ci_user_02,vcenter={VC}"),
                    1.0
                ),
                (format!("{agent},username=ci_user_01,vcenter={VC}"), 0.0),
            ]
        );
    }
}
