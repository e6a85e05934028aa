//! The pure join of one cycle: vCenter sessions × running jobs × CI users ->
//! metric families. No I/O and no clock, so every rule is table-tested here.
//!
//! The original exporter's series are kept as they were: for every running job
//! that logs in as a user, one `vsphere_ci_user_sessions_correlated` series per
//! user agent of that user, carrying the user's whole count. When several jobs
//! share a user (about four CI users exist per vCenter, so they often do), the
//! same count repeats once per job and `sum by (username)` over-counts. The
//! extra families fix that: `vsphere_ci_user_sessions_open` counts each
//! session exactly once per user and agent, and
//! `vsphere_ci_user_sessions_user_jobs` says how many jobs share the user.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::ci::CiIdentity;
use crate::leaks::{self, LeakRules, ReporterIdentity};
use crate::metrics::{self, MetricFamily};
use crate::prow::RunningJob;
use crate::vcenter::{UserSession, VcenterClock};

/// What one vCenter gave this cycle.
#[derive(Debug, Clone, Default)]
pub struct VcenterObservation {
    /// The `vcenter` label: lower-case host name.
    pub vcenter: String,
    /// `None` when listing failed: `vcenter_up` is 0 and no session series
    /// are produced for this vCenter.
    pub sessions: Option<Vec<UserSession>>,
    /// The vCenter's clock when the sessions were listed; `None` with them.
    pub clock: Option<VcenterClock>,
    /// Session address -> names of the VMs reporting it as a guest IP.
    pub vm_names_by_ip: HashMap<String, Vec<String>>,
    /// The configured session limit, exported as is.
    pub session_limit: u64,
    /// The reporter's own login here, never counted as leaked.
    pub reporter: ReporterIdentity,
}

/// A running job, the CI users it logs in as (empty while unresolved) and
/// what ties sessions to it.
#[derive(Debug, Clone)]
pub struct JobUsers {
    pub job: RunningJob,
    pub identities: Vec<CiIdentity>,
    /// Its ci-op namespace on the build cluster, once found.
    pub namespace: Option<String>,
    /// `infraID` from `metadata.json`, once the install wrote it.
    pub infra_id: Option<String>,
}

impl JobUsers {
    /// A job nothing is known of yet beyond Prow's fields.
    pub fn unresolved(job: RunningJob) -> Self {
        JobUsers {
            job,
            identities: Vec::new(),
            namespace: None,
            infra_id: None,
        }
    }
}

/// Everything gathered in one cycle.
#[derive(Debug, Clone, Default)]
pub struct CycleInput {
    pub vcenters: Vec<VcenterObservation>,
    /// Whether the running jobs were listed; when false, `jobs` is empty and
    /// no correlated or orphaned series are produced (rather than claiming
    /// no job runs).
    pub prow_up: bool,
    /// Identities already routed to configured vCenters
    /// ([`route_identities`]).
    pub jobs: Vec<JobUsers>,
    /// CI users per vCenter host that matches no configured vCenter.
    pub unmatched_identities: BTreeMap<String, usize>,
    pub rules: LeakRules,
}

/// Point every identity at its configured vCenter: a host listed as an
/// alias becomes that vCenter's host. Identities naming a host that is no
/// configured vCenter or alias are kept (they match no vCenter's sessions,
/// and the job still counts as resolved) and counted per host (distinct
/// users), with a debug line: a CI file naming a vCenter by another name
/// must not silently lose its user. `vcenters`: (host, aliases) of each
/// configured vCenter.
pub fn route_identities(
    jobs: &mut [JobUsers],
    vcenters: &[(String, Vec<String>)],
) -> BTreeMap<String, usize> {
    let mut host_of: HashMap<&str, &str> = HashMap::new();
    for (host, aliases) in vcenters {
        host_of.insert(host, host);
        for alias in aliases {
            host_of.entry(alias).or_insert(host);
        }
    }
    let mut unmatched: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in jobs.iter_mut() {
        for identity in entry.identities.iter_mut() {
            match host_of.get(identity.vcenter.as_str()) {
                Some(host) => identity.vcenter = host.to_string(),
                None => {
                    tracing::debug!(
                        job = %entry.job.id,
                        vcenter = %identity.vcenter,
                        user = %identity.username,
                        "CI user's vCenter matches no configured vCenter or alias"
                    );
                    unmatched
                        .entry(identity.vcenter.clone())
                        .or_default()
                        .insert(identity.username.clone());
                }
            }
        }
        entry.identities.sort();
        entry.identities.dedup();
    }
    unmatched
        .into_iter()
        .map(|(host, users)| (host, users.len()))
        .collect()
}

/// Normalise a vCenter user name so the forms a vCenter reports
/// (`VSPHERE.LOCAL\CI-User-1`) and the forms CI files hold
/// (`ci-user-1@vsphere.local`) compare equal. vSphere SSO user names are
/// case-insensitive, so the result is lower case. Users of the default SSO
/// domain `vsphere.local` become the bare `user`; users of any other domain
/// become `user@domain`, so they never merge with a `vsphere.local` user of
/// the same name.
pub fn normalize_username(raw: &str) -> String {
    let lower = raw.trim().to_lowercase();
    let raw = lower.as_str();
    let (user, domain) = if let Some((domain, user)) = raw.split_once('\\') {
        (user, Some(domain))
    } else if let Some((user, domain)) = raw.rsplit_once('@') {
        (user, Some(domain))
    } else {
        (raw, None)
    };
    match domain {
        None => user.to_string(),
        Some(d) if d == "vsphere.local" || d.is_empty() => user.to_string(),
        Some(d) => format!("{user}@{d}"),
    }
}

/// Join one cycle's observations into metric families.
pub fn correlate(input: &CycleInput) -> Vec<MetricFamily> {
    let mut correlated = MetricFamily::gauge(
        metrics::CORRELATED,
        "vSphere sessions of a CI user with a user agent, one series per running CI job logging in as that user.",
    );
    let mut open = MetricFamily::gauge(
        metrics::OPEN_SESSIONS,
        "vSphere sessions open per user and user agent, each session counted once.",
    );
    let mut user_jobs = MetricFamily::gauge(
        metrics::USER_JOBS,
        "Running CI jobs logging in to the vCenter as the user.",
    );
    let mut total = MetricFamily::gauge(
        metrics::VCENTER_SESSIONS,
        "Sessions open on the vCenter, all users.",
    );
    let mut capped_agents = MetricFamily::gauge(
        metrics::CAPPED_USER_AGENTS,
        "Distinct user agents capped on the vCenter this cycle: cut to 256 bytes (truncated) or summed under other.",
    );
    let mut vcenter_up = MetricFamily::gauge(
        metrics::VCENTER_UP,
        "1 if the vCenter's sessions were listed in the last cycle, else 0.",
    );
    let mut prow_up = MetricFamily::gauge(
        metrics::PROW_UP,
        "1 if the running Prow jobs were listed in the last cycle, else 0.",
    );
    prow_up.push(Vec::<(String, String)>::new(), bool_value(input.prow_up));
    let mut running = MetricFamily::gauge(
        metrics::RUNNING_JOBS,
        "Running vSphere CI jobs found in Prow in the last cycle.",
    );
    let mut unresolved = MetricFamily::gauge(
        metrics::UNRESOLVED_JOBS,
        "Running vSphere CI jobs whose CI user is not known yet.",
    );
    if input.prow_up {
        running.push(Vec::<(String, String)>::new(), input.jobs.len() as f64);
        let count = input
            .jobs
            .iter()
            .filter(|j| j.identities.is_empty())
            .count();
        unresolved.push(Vec::<(String, String)>::new(), count as f64);
    }

    // Each vCenter's capped agent labels, computed once and shared with the
    // leak families; empty for a vCenter not listed this cycle.
    let mut agents_by_vcenter = Vec::with_capacity(input.vcenters.len());
    for observation in &input.vcenters {
        let vc = observation.vcenter.as_str();
        vcenter_up.push(
            [("vcenter", vc)],
            bool_value(observation.sessions.is_some()),
        );
        let Some(sessions) = &observation.sessions else {
            agents_by_vcenter.push(Vec::new());
            continue;
        };
        total.push([("vcenter", vc)], sessions.len() as f64);

        // (user, agent) -> sessions, and user -> its agents, in sorted order so
        // the output is deterministic.
        let (agents, capped) = crate::labels::agent_labels(sessions);
        for (kind, n) in [("truncated", capped.truncated), ("other", capped.folded)] {
            capped_agents.push([("vcenter", vc), ("kind", kind)], n as f64);
        }
        let mut by_user_agent: BTreeMap<(String, &str), u64> = BTreeMap::new();
        for (session, agent) in sessions.iter().zip(&agents) {
            let key = (normalize_username(&session.user_name), agent.as_ref());
            *by_user_agent.entry(key).or_default() += 1;
        }
        for ((user, agent), count) in &by_user_agent {
            open.push(
                [
                    ("vcenter", vc),
                    ("username", user.as_str()),
                    ("user_agent", *agent),
                ],
                *count as f64,
            );
        }

        // user -> the distinct jobs using it on this vCenter. A job naming
        // the same user twice (two files of one secret) counts once.
        let mut jobs_by_user: BTreeMap<&str, BTreeSet<&RunningJob>> = BTreeMap::new();
        for entry in &input.jobs {
            for identity in entry.identities.iter().filter(|i| i.vcenter == vc) {
                jobs_by_user
                    .entry(identity.username.as_str())
                    .or_default()
                    .insert(&entry.job);
            }
        }
        for (user, jobs) in &jobs_by_user {
            user_jobs.push([("vcenter", vc), ("username", *user)], jobs.len() as f64);
            // Label sets must be unique per series; two ProwJobs cannot share
            // a build id, but a set keeps a malformed input from producing a
            // duplicate that a receiver would refuse.
            let mut seen = BTreeSet::new();
            for job in jobs {
                for ((u, agent), count) in by_user_agent.range((user.to_string(), "")..) {
                    if u != user {
                        break;
                    }
                    let key = (&job.job_name, &job.build_id, &job.pull_request, *agent);
                    if !seen.insert(key) {
                        continue;
                    }
                    correlated.push(
                        [
                            ("username", *user),
                            ("user_agent", *agent),
                            ("ci_job", job.job_name.as_str()),
                            ("build_id", job.build_id.as_str()),
                            ("pull_request", job.pull_request.as_str()),
                            ("vcenter", vc),
                        ],
                        *count as f64,
                    );
                }
            }
        }
        agents_by_vcenter.push(agents);
    }

    let mut families = vec![
        correlated,
        open,
        user_jobs,
        total,
        vcenter_up,
        prow_up,
        running,
        unresolved,
        capped_agents,
    ];
    families.extend(leaks::leak_families(
        &input.vcenters,
        &agents_by_vcenter,
        &input.jobs,
        input.prow_up,
        &input.rules,
    ));
    families.push(job_info(input));
    let mut limit = MetricFamily::gauge(
        metrics::SESSION_LIMIT,
        "The vCenter's session limit, as configured.",
    );
    for observation in &input.vcenters {
        limit.push(
            [("vcenter", observation.vcenter.as_str())],
            observation.session_limit as f64,
        );
    }
    families.push(limit);
    let mut unmatched = MetricFamily::gauge(
        metrics::UNMATCHED_IDENTITIES,
        "Distinct CI users whose files name this vCenter host, which matches no configured vCenter or alias.",
    );
    for (host, users) in &input.unmatched_identities {
        unmatched.push([("vcenter", host.as_str())], *users as f64);
    }
    families.push(unmatched);
    families
}

/// `job_info` = 1 for every running job and each user it logs in as on a
/// configured vCenter: the join from any per-user series to the jobs.
fn job_info(input: &CycleInput) -> MetricFamily {
    let mut info = MetricFamily::gauge(
        metrics::JOB_INFO,
        "1 for each running CI job and each vCenter user it logs in as.",
    );
    let mut seen = BTreeSet::new();
    for entry in &input.jobs {
        for identity in &entry.identities {
            if !input.vcenters.iter().any(|o| o.vcenter == identity.vcenter)
                || !seen.insert((&entry.job.id, identity))
            {
                continue;
            }
            let job = &entry.job;
            info.push(
                [
                    ("vcenter", identity.vcenter.as_str()),
                    ("username", identity.username.as_str()),
                    ("ci_job", job.job_name.as_str()),
                    ("build_id", job.build_id.as_str()),
                    ("pull_request", job.pull_request.as_str()),
                    ("namespace", entry.namespace.as_deref().unwrap_or_default()),
                    ("cluster_profile", job.cluster_profile.as_str()),
                    ("build_cluster", job.cluster.as_str()),
                ],
                1.0,
            );
        }
    }
    info
}

fn bool_value(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(user: &str, agent: &str) -> UserSession {
        UserSession {
            key: format!("{user}-{agent}"),
            user_name: user.to_string(),
            full_name: String::new(),
            login_time: String::new(),
            last_active_time: String::new(),
            ip_address: String::new(),
            user_agent: agent.to_string(),
            call_count: 0,
            extension_session: false,
        }
    }

    fn job(name: &str, build: &str) -> RunningJob {
        RunningJob {
            id: format!("id-{build}"),
            build_id: build.to_string(),
            start_ms: None,
            job_name: name.to_string(),
            pull_request: String::new(),
            target: "e2e-vsphere".to_string(),
            cluster: "vsphere02".to_string(),
            cluster_profile: "vsphere-2".to_string(),
        }
    }

    fn identity(vc: &str, user: &str) -> CiIdentity {
        CiIdentity {
            vcenter: vc.to_string(),
            username: user.to_string(),
        }
    }

    use crate::metrics::testing::series;

    #[test]
    fn usernames_of_the_default_domain_lose_it_in_both_forms() {
        let cases = [
            ("ci-user-1@vsphere.local", "ci-user-1"),
            (r"VSPHERE.LOCAL\ci-user-1", "ci-user-1"),
            (r"vsphere.local\ci-user-1", "ci-user-1"),
            ("ci-user-1@VSphere.Local", "ci-user-1"),
            ("ci-user-1", "ci-user-1"),
            (r"CORP\bob", "bob@corp"),
            ("bob@Corp", "bob@corp"),
            ("  padded@vsphere.local ", "padded"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_username(raw), want, "normalising {raw:?}");
        }
    }

    #[test]
    fn each_job_sharing_a_user_gets_the_users_counts_and_open_counts_stay_exact() {
        let input = CycleInput {
            vcenters: vec![VcenterObservation {
                vcenter: "vc1".into(),
                sessions: Some(vec![
                    session(r"VSPHERE.LOCAL\ci-1", "govc"),
                    session("ci-1@vsphere.local", "govc"),
                    session(r"VSPHERE.LOCAL\ci-1", "csi"),
                    session(r"VSPHERE.LOCAL\ci-2", "govc"),
                    session(r"VSPHERE.LOCAL\admin", "browser"),
                ]),
                ..VcenterObservation::default()
            }],
            prow_up: true,
            jobs: vec![
                JobUsers {
                    identities: vec![identity("vc1", "ci-1")],
                    ..JobUsers::unresolved(job("job-a", "1"))
                },
                JobUsers {
                    identities: vec![identity("vc1", "ci-1"), identity("vc1", "ci-1")],
                    ..JobUsers::unresolved(job("job-b", "2"))
                },
                JobUsers {
                    identities: vec![],
                    ..JobUsers::unresolved(job("job-c", "3"))
                },
            ],
            ..CycleInput::default()
        };
        let families = correlate(&input);
        let p = "build_id";
        assert_eq!(
            series(&families, metrics::CORRELATED),
            vec![
                (
                    format!(
                        "{p}=1,ci_job=job-a,pull_request=,user_agent=csi,username=ci-1,vcenter=vc1"
                    ),
                    1.0
                ),
                (
                    format!(
                        "{p}=1,ci_job=job-a,pull_request=,user_agent=govc,username=ci-1,vcenter=vc1"
                    ),
                    2.0
                ),
                (
                    format!(
                        "{p}=2,ci_job=job-b,pull_request=,user_agent=csi,username=ci-1,vcenter=vc1"
                    ),
                    1.0
                ),
                (
                    format!(
                        "{p}=2,ci_job=job-b,pull_request=,user_agent=govc,username=ci-1,vcenter=vc1"
                    ),
                    2.0
                ),
            ]
        );
        assert_eq!(
            series(&families, metrics::OPEN_SESSIONS),
            vec![
                (
                    "user_agent=browser,username=admin,vcenter=vc1".to_string(),
                    1.0
                ),
                ("user_agent=csi,username=ci-1,vcenter=vc1".to_string(), 1.0),
                ("user_agent=govc,username=ci-1,vcenter=vc1".to_string(), 2.0),
                ("user_agent=govc,username=ci-2,vcenter=vc1".to_string(), 1.0),
            ]
        );
        assert_eq!(
            series(&families, metrics::USER_JOBS),
            vec![("username=ci-1,vcenter=vc1".to_string(), 2.0)]
        );
        assert_eq!(
            series(&families, metrics::VCENTER_SESSIONS),
            vec![("vcenter=vc1".to_string(), 5.0)]
        );
        assert_eq!(
            series(&families, metrics::RUNNING_JOBS),
            vec![(String::new(), 3.0)]
        );
        assert_eq!(
            series(&families, metrics::UNRESOLVED_JOBS),
            vec![(String::new(), 1.0)]
        );
    }

    #[test]
    fn identities_follow_aliases_and_unknown_hosts_are_counted_per_distinct_user() {
        let mut jobs = vec![
            JobUsers {
                identities: vec![identity("10.0.0.10", "ci-1"), identity("vc1", "ci-1")],
                ..JobUsers::unresolved(job("job-a", "1"))
            },
            JobUsers {
                identities: vec![identity("old-vc.example.com", "ci-2")],
                ..JobUsers::unresolved(job("job-b", "2"))
            },
            JobUsers {
                identities: vec![
                    identity("old-vc.example.com", "ci-2"),
                    identity("old-vc.example.com", "ci-3"),
                ],
                ..JobUsers::unresolved(job("job-c", "3"))
            },
        ];
        let vcenters = [("vc1".to_string(), vec!["10.0.0.10".to_string()])];
        let unmatched = route_identities(&mut jobs, &vcenters);
        assert_eq!(
            jobs[0].identities,
            [identity("vc1", "ci-1")],
            "alias merged"
        );
        assert_eq!(
            jobs[1].identities,
            [identity("old-vc.example.com", "ci-2")],
            "kept: the job is resolved, on a vCenter not watched here"
        );
        assert_eq!(
            unmatched,
            BTreeMap::from([("old-vc.example.com".to_string(), 2)])
        );
        let input = CycleInput {
            vcenters: vec![VcenterObservation {
                vcenter: "vc1".into(),
                sessions: Some(vec![]),
                ..VcenterObservation::default()
            }],
            prow_up: true,
            jobs,
            unmatched_identities: unmatched,
            ..CycleInput::default()
        };
        assert_eq!(
            series(&correlate(&input), metrics::UNMATCHED_IDENTITIES),
            vec![("vcenter=old-vc.example.com".to_string(), 2.0)]
        );
    }

    #[test]
    fn a_job_on_another_vcenter_is_not_correlated_here() {
        let input = CycleInput {
            vcenters: vec![VcenterObservation {
                vcenter: "vc1".into(),
                sessions: Some(vec![session("ci-1", "govc")]),
                ..VcenterObservation::default()
            }],
            prow_up: true,
            jobs: vec![JobUsers {
                identities: vec![identity("vc2", "ci-1")],
                ..JobUsers::unresolved(job("job-a", "1"))
            }],
            ..CycleInput::default()
        };
        let families = correlate(&input);
        assert!(series(&families, metrics::CORRELATED).is_empty());
        assert!(series(&families, metrics::USER_JOBS).is_empty());
    }

    #[test]
    fn a_failed_vcenter_is_down_and_contributes_no_sessions() {
        let input = CycleInput {
            vcenters: vec![VcenterObservation {
                vcenter: "vc1".into(),
                sessions: None,
                ..VcenterObservation::default()
            }],
            prow_up: false,
            jobs: vec![],
            ..CycleInput::default()
        };
        let families = correlate(&input);
        assert_eq!(
            series(&families, metrics::VCENTER_UP),
            vec![("vcenter=vc1".to_string(), 0.0)]
        );
        assert_eq!(
            series(&families, metrics::PROW_UP),
            vec![(String::new(), 0.0)]
        );
        assert!(series(&families, metrics::VCENTER_SESSIONS).is_empty());
        assert!(series(&families, metrics::RUNNING_JOBS).is_empty());
    }

    #[test]
    fn a_user_with_jobs_but_no_sessions_has_no_correlated_series() {
        let input = CycleInput {
            vcenters: vec![VcenterObservation {
                vcenter: "vc1".into(),
                sessions: Some(vec![]),
                ..VcenterObservation::default()
            }],
            prow_up: true,
            jobs: vec![JobUsers {
                identities: vec![identity("vc1", "ci-1")],
                ..JobUsers::unresolved(job("job-a", "1"))
            }],
            ..CycleInput::default()
        };
        let families = correlate(&input);
        assert!(series(&families, metrics::CORRELATED).is_empty());
        assert_eq!(
            series(&families, metrics::USER_JOBS),
            vec![("username=ci-1,vcenter=vc1".to_string(), 1.0)]
        );
        assert_eq!(
            series(&families, metrics::VCENTER_SESSIONS),
            vec![("vcenter=vc1".to_string(), 0.0)]
        );
    }
}
