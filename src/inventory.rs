//! Every session of one gather-and-classify pass, with its verdict, ages
//! and job, as one document: what `sessions` prints (as tables or JSON)
//! and what `reap` chooses from. Pure: built from a [`CycleInput`] with
//! the same classification as the `orphaned` and `job_sessions` series, so
//! the terminal and the graphs never disagree.
//!
//! Session keys: on vCenter (and vcsim) a session's key can be enough to
//! act as that session, so the document holds only the first
//! [`KEY_PREFIX_CHARS`] characters; the full key is kept for the reaper
//! in a field that is never serialised and never shown by `Debug`.

use std::fmt;

use serde::Serialize;

use crate::correlate::{CycleInput, normalize_username};
use crate::leaks::{self, VcenterFacts, Verdict};
use crate::vcenter::{UserSession, parse_time_ms};

/// How much of a session key is ever shown.
pub const KEY_PREFIX_CHARS: usize = 8;

/// A session key: its first characters are shown, the rest never.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKey(String);

impl SessionKey {
    pub fn new(key: &str) -> Self {
        SessionKey(key.to_string())
    }

    /// The key, for `TerminateSession` only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The first [`KEY_PREFIX_CHARS`] characters.
    pub fn prefix(&self) -> String {
        self.0.chars().take(KEY_PREFIX_CHARS).collect()
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionKey({}…)", self.prefix())
    }
}

/// One pass, as `sessions --output json` prints it. Field names are
/// stable and documented in the README.
#[derive(Debug, Serialize)]
pub struct Inventory {
    /// When the pass ran (local clock, RFC 3339).
    pub generated_at: String,
    /// False when a source failed: what is listed is partial.
    pub complete: bool,
    /// One line per failed source.
    pub failures: Vec<String>,
    /// Whether the running jobs were listed; without them nothing is
    /// attributed or orphaned.
    pub prow_up: bool,
    pub vcenters: Vec<VcenterSummary>,
    pub jobs: Vec<JobEntry>,
    pub sessions: Vec<SessionEntry>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VcenterSummary {
    pub vcenter: String,
    /// Whether its sessions were listed.
    pub up: bool,
    /// Sessions open (`null` when not listed).
    pub sessions: Option<u64>,
    pub session_limit: u64,
    /// The vCenter's clock at the listing (RFC 3339 as it sent it).
    pub vcenter_time: Option<String>,
}

/// A running job and what ties sessions to it.
#[derive(Debug, Clone, Serialize)]
pub struct JobEntry {
    /// The ProwJob's name.
    pub prowjob: String,
    /// The job's name (`ci_job` in the series).
    pub job: String,
    pub build_id: String,
    pub pull_request: String,
    pub namespace: Option<String>,
    pub infra_id: Option<String>,
    /// `status.startTime`, RFC 3339.
    pub start_time: Option<String>,
    /// The CI users it logs in as (empty while not known yet).
    pub users: Vec<JobUser>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct JobUser {
    pub vcenter: String,
    pub username: String,
}

/// The verdict of one session (`status` in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Proven to belong to a running job.
    Attributed,
    /// No running job can own it.
    Orphaned,
    /// Its user is used by running jobs; which one holds it is not proven.
    Shared,
    /// Cannot be decided in this pass (a source failed, a job not resolved).
    Pending,
    /// The reporter's own session.
    Reporter,
    /// An extension session or an excluded user.
    Exempt,
}

/// The job a session is attributed to.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct JobRef {
    pub job: String,
    pub build_id: String,
    pub prowjob: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionEntry {
    pub vcenter: String,
    /// The first [`KEY_PREFIX_CHARS`] characters of the session key.
    pub key_prefix: String,
    /// Normalised: lower case, `VSPHERE.LOCAL\` and `@vsphere.local` dropped.
    pub username: String,
    /// As the vCenter sent it.
    pub user_name: String,
    pub user_agent: String,
    pub ip_address: String,
    pub login_time: String,
    pub last_active_time: String,
    /// By the vCenter's clock; `null` when a time did not parse.
    pub age_seconds: Option<u64>,
    pub idle_seconds: Option<u64>,
    pub call_count: i64,
    pub status: Status,
    /// `user_agent` or `vm_ip` (attributed only).
    pub attributed_by: Option<&'static str>,
    pub job: Option<JobRef>,
    /// `job_ended`, `no_running_job` or `predates_running_jobs` (orphaned only).
    pub reason: Option<&'static str>,
    /// The ended job's ci-op namespace (`job_ended`), or the attributed
    /// job's namespace.
    pub namespace: Option<String>,
    /// The full key, for the reaper; never serialised or shown.
    #[serde(skip)]
    pub key: SessionKey,
    /// The `user_agent` label the series give this session (capped as in
    /// [`crate::labels`]), for the reaper's series.
    #[serde(skip)]
    pub agent_label: String,
}

impl Inventory {
    /// Classify every session of `input`. `failures` are the pass's
    /// failure lines; `now_ms` stamps the document.
    pub fn build(input: &CycleInput, failures: Vec<String>, now_ms: i64) -> Inventory {
        let mut vcenters = Vec::new();
        let mut sessions = Vec::new();
        for observation in &input.vcenters {
            let clock = observation.clock;
            vcenters.push(VcenterSummary {
                vcenter: observation.vcenter.clone(),
                up: observation.sessions.is_some(),
                sessions: observation.sessions.as_ref().map(|s| s.len() as u64),
                session_limit: observation.session_limit,
                vcenter_time: clock.map(|c| rfc3339(c.vcenter_ms)),
            });
            let Some(listed) = &observation.sessions else {
                continue;
            };
            let facts = VcenterFacts {
                observation,
                jobs: &input.jobs,
                prow_up: input.prow_up,
                rules: &input.rules,
            };
            let verdicts = leaks::classify(&facts);
            let (agents, _) = crate::labels::agent_labels(listed);
            for ((session, verdict), agent) in listed.iter().zip(verdicts).zip(agents) {
                let vcenter_now = clock.map(|c| c.vcenter_ms);
                let mut e = entry(&observation.vcenter, session, verdict, input, vcenter_now);
                e.agent_label = agent.into_owned();
                sessions.push(e);
            }
        }
        // vCenters list sessions in any order: a stable one for people,
        // scripts and diffs.
        sessions.sort_by(|a, b| {
            (
                &a.vcenter,
                &a.username,
                &a.user_agent,
                &a.login_time,
                a.key.expose(),
            )
                .cmp(&(
                    &b.vcenter,
                    &b.username,
                    &b.user_agent,
                    &b.login_time,
                    b.key.expose(),
                ))
        });
        let jobs = input
            .jobs
            .iter()
            .map(|j| {
                let mut users: Vec<JobUser> = j
                    .identities
                    .iter()
                    .map(|id| JobUser {
                        vcenter: id.vcenter.clone(),
                        username: id.username.clone(),
                    })
                    .collect();
                users.sort();
                users.dedup();
                JobEntry {
                    prowjob: j.job.id.clone(),
                    job: j.job.job_name.clone(),
                    build_id: j.job.build_id.clone(),
                    pull_request: j.job.pull_request.clone(),
                    namespace: j.namespace.clone(),
                    infra_id: j.infra_id.clone(),
                    start_time: j.job.start_ms.map(rfc3339),
                    users,
                }
            })
            .collect();
        Inventory {
            generated_at: rfc3339(now_ms),
            complete: failures.is_empty(),
            failures,
            prow_up: input.prow_up,
            vcenters,
            jobs,
            sessions,
        }
    }
}

fn entry(
    vcenter: &str,
    session: &UserSession,
    verdict: Verdict,
    input: &CycleInput,
    vcenter_now: Option<i64>,
) -> SessionEntry {
    let since = |time: &str| {
        let (now, then) = (vcenter_now?, parse_time_ms(time)?);
        // A time ahead of the vCenter's own clock counts as just now.
        Some((now.saturating_sub(then).max(0) / 1000) as u64)
    };
    let key = SessionKey::new(&session.key);
    let mut e = SessionEntry {
        vcenter: vcenter.to_string(),
        key_prefix: key.prefix(),
        username: normalize_username(&session.user_name),
        user_name: session.user_name.clone(),
        user_agent: session.user_agent.clone(),
        ip_address: session.ip_address.clone(),
        login_time: session.login_time.clone(),
        last_active_time: session.last_active_time.clone(),
        age_seconds: since(&session.login_time),
        idle_seconds: since(&session.last_active_time),
        call_count: session.call_count,
        status: Status::Pending,
        attributed_by: None,
        job: None,
        reason: None,
        namespace: None,
        key,
        agent_label: String::new(),
    };
    match verdict {
        Verdict::Reporter => e.status = Status::Reporter,
        Verdict::Exempt => e.status = Status::Exempt,
        Verdict::Shared => e.status = Status::Shared,
        Verdict::Pending => e.status = Status::Pending,
        Verdict::Attributed { job, by } => {
            let j = &input.jobs[job];
            e.status = Status::Attributed;
            e.attributed_by = Some(by.as_str());
            e.job = Some(JobRef {
                job: j.job.job_name.clone(),
                build_id: j.job.build_id.clone(),
                prowjob: j.job.id.clone(),
            });
            e.namespace = j.namespace.clone();
        }
        Verdict::Orphaned { reason, namespace } => {
            e.status = Status::Orphaned;
            e.reason = Some(reason.as_str());
            e.namespace = namespace;
        }
    }
    e
}

/// Milliseconds since the epoch as RFC 3339 UTC, to the second.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_shows_only_its_first_eight_characters_in_debug_and_json() {
        let key = SessionKey::new("52b4d7a1-9f3e-4c1a-8d2b-0e6f5a7c9b31");
        assert_eq!(key.prefix(), "52b4d7a1");
        let shown = format!("{key:?}");
        assert!(!shown.contains("9f3e"), "{shown}");
        assert_eq!(key.expose(), "52b4d7a1-9f3e-4c1a-8d2b-0e6f5a7c9b31");
    }
}
