//! Freeing leaked sessions: which orphaned sessions an operator's rules
//! make candidates, and terminating them only after a second listing says
//! they are still candidates and have not been active since the first.
//!
//! Safety, in order:
//! 1. Nothing is a candidate unless `reaper.users` names its user (empty
//!    by default: nothing is ever reaped until an operator names the CI
//!    accounts), it is orphaned for one of `reaper.reasons`, and it is at
//!    least `min_age` old and `min_idle` idle by the vCenter's clock. The
//!    reporter's own session, excluded users and extension sessions are
//!    never orphaned, so never candidates.
//! 2. At most `max_per_run` per vCenter, the longest idle first.
//! 3. Dry run unless asked (`reap --apply`, `reaper.apply: true`).
//! 4. After `recheck_delay`, the sessions are listed again and classified
//!    with the same jobs; a session that is gone, whose `lastActiveTime`
//!    moved, or that no longer qualifies is spared.
//! 5. A termination that fails is logged and counted; the rest go on.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures::future::join_all;
use regex::Regex;
use tracing::{info, warn};

use crate::correlate::CycleInput;
use crate::cycle::Cycle;
use crate::inventory::{Inventory, SessionEntry, Status};
use crate::leaks::OrphanReason;
use crate::vcenter::parse_time_ms;

/// Default of [`ReaperConfig::min_age`].
pub const DEFAULT_MIN_AGE: Duration = Duration::from_secs(2 * 60 * 60);
/// Default of [`ReaperConfig::min_idle`].
pub const DEFAULT_MIN_IDLE: Duration = Duration::from_secs(60 * 60);
/// Default of [`ReaperConfig::max_per_run`].
pub const DEFAULT_MAX_PER_RUN: usize = 100;
/// Default of [`ReaperConfig::recheck_delay`]: long enough for a client
/// that is still alive to show it, short enough for someone waiting.
pub const DEFAULT_RECHECK_DELAY: Duration = Duration::from_secs(5);

/// The `reaper:` settings, compiled.
#[derive(Debug, Clone)]
pub struct ReaperConfig {
    /// Run after each cycle of `start`.
    pub enabled: bool,
    /// Terminate in `start` (else a dry run that only counts candidates).
    pub apply: bool,
    /// Users whose orphaned sessions may be reaped (anchored,
    /// case-insensitive, against the normalised user name).
    pub users: Vec<Regex>,
    pub reasons: Vec<OrphanReason>,
    pub min_age: Duration,
    pub min_idle: Duration,
    pub max_per_run: usize,
    /// Time between the listing that chose the candidates and the one that
    /// confirms them.
    pub recheck_delay: Duration,
}

impl Default for ReaperConfig {
    fn default() -> Self {
        ReaperConfig {
            enabled: false,
            apply: false,
            users: Vec::new(),
            reasons: OrphanReason::ALL.to_vec(),
            min_age: DEFAULT_MIN_AGE,
            min_idle: DEFAULT_MIN_IDLE,
            max_per_run: DEFAULT_MAX_PER_RUN,
            recheck_delay: DEFAULT_RECHECK_DELAY,
        }
    }
}

impl ReaperConfig {
    /// Whether the rules make this session a candidate.
    pub fn qualifies(&self, s: &SessionEntry) -> bool {
        let old_enough = |seconds: Option<u64>, min: Duration| {
            seconds.is_some_and(|secs| Duration::from_secs(secs) >= min)
        };
        // A reporter's agent (this one, an HA twin, `sessions`, `reap`) is
        // never reaped, whatever its user normalises to.
        !s.user_agent.starts_with(crate::config::DEFAULT_USER_AGENT)
            && s.status == Status::Orphaned
            && s.reason
                .is_some_and(|r| self.reasons.iter().any(|x| x.as_str() == r))
            && self.users.iter().any(|re| re.is_match(&s.username))
            && old_enough(s.age_seconds, self.min_age)
            && old_enough(s.idle_seconds, self.min_idle)
    }
}

/// The candidates of one pass per vCenter, longest idle first, at most
/// `max_per_run` each; and how many more qualified beyond that cap.
pub fn candidates<'a>(
    sessions: &'a [SessionEntry],
    config: &ReaperConfig,
) -> BTreeMap<&'a str, (Vec<&'a SessionEntry>, usize)> {
    let mut by_vcenter: BTreeMap<&str, Vec<&SessionEntry>> = BTreeMap::new();
    for s in sessions.iter().filter(|s| config.qualifies(s)) {
        by_vcenter.entry(&s.vcenter).or_default().push(s);
    }
    by_vcenter
        .into_iter()
        .map(|(vcenter, mut list)| {
            // Longest idle first: by the time of the last call (to the
            // vCenter's sub-second precision), then the login.
            let at = |time: &str| parse_time_ms(time).unwrap_or(i64::MAX);
            list.sort_by(|a, b| {
                b.idle_seconds
                    .cmp(&a.idle_seconds)
                    .then(at(&a.last_active_time).cmp(&at(&b.last_active_time)))
                    .then(at(&a.login_time).cmp(&at(&b.login_time)))
                    .then(a.key_prefix.cmp(&b.key_prefix))
            });
            let over = list.len().saturating_sub(config.max_per_run);
            list.truncate(config.max_per_run);
            (vcenter, (list, over))
        })
        .collect()
}

/// What happened to one candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Dry run: it would be terminated.
    WouldTerminate,
    Terminated,
    /// Spared by the second listing, and why.
    Spared(String),
    /// `TerminateSession` failed: the error.
    Failed(String),
}

impl Action {
    /// One word for tables and logs.
    pub fn word(&self) -> &'static str {
        match self {
            Action::WouldTerminate => "would terminate",
            Action::Terminated => "terminated",
            Action::Spared(_) => "spared",
            Action::Failed(_) => "failed",
        }
    }

    pub fn detail(&self) -> &str {
        match self {
            Action::Spared(why) | Action::Failed(why) => why,
            _ => "",
        }
    }
}

/// Why a candidate of the first listing is not terminated after the
/// second, or `None` when it still must be.
pub fn recheck(
    first: &SessionEntry,
    second: Option<&SessionEntry>,
    config: &ReaperConfig,
) -> Option<String> {
    let Some(now) = second else {
        return Some("gone before the second listing".into());
    };
    if now.last_active_time != first.last_active_time {
        return Some(format!(
            "active again (lastActiveTime {} -> {})",
            first.last_active_time, now.last_active_time
        ));
    }
    if config.qualifies(now) {
        return None;
    }
    Some(match (&now.job, now.reason) {
        (Some(job), _) => format!("now attributed to {} #{}", job.job, job.build_id),
        (None, Some(reason)) if now.status == Status::Orphaned => {
            format!("orphaned for {reason}, not a reason reaped")
        }
        _ => format!("no longer orphaned ({:?})", now.status).to_lowercase(),
    })
}

/// One reaper pass.
#[derive(Debug, Default)]
pub struct Pass {
    /// The candidates acted on (at most `max_per_run` per vCenter) and
    /// what was done.
    pub actions: Vec<(SessionEntry, Action)>,
    /// Per vCenter: candidates left for a later run by the cap.
    pub over_cap: BTreeMap<String, usize>,
}

/// Choose the candidates of `inventory` and, with `apply`, confirm them
/// with a second listing of their vCenter and terminate them. vCenters go
/// at once; the sessions of one vCenter one after another, so the reaper
/// never floods a vCenter that is already struggling. No termination
/// starts after `deadline`: what is left waits for the next pass.
pub async fn run(
    cycle: &Cycle,
    inventory: &Inventory,
    input: &CycleInput,
    config: &ReaperConfig,
    apply: bool,
    deadline: Option<Instant>,
) -> Pass {
    let chosen = candidates(&inventory.sessions, config);
    let mut pass = Pass::default();
    for (vcenter, (_, over)) in &chosen {
        if *over > 0 {
            pass.over_cap.insert(vcenter.to_string(), *over);
        }
    }
    if !apply {
        pass.actions = chosen
            .values()
            .flat_map(|(list, _)| list.iter().map(|s| ((*s).clone(), Action::WouldTerminate)))
            .collect();
        return pass;
    }
    if chosen.is_empty() {
        return pass;
    }
    tokio::time::sleep(config.recheck_delay).await;
    let per_vcenter = chosen.iter().map(|(vcenter, (list, _))| {
        confirm_and_terminate(cycle, vcenter, list, input, config, deadline)
    });
    pass.actions = join_all(per_vcenter).await.into_iter().flatten().collect();
    pass
}

/// List `vcenter` again, then terminate each candidate that is still one.
async fn confirm_and_terminate(
    cycle: &Cycle,
    vcenter: &str,
    list: &[&SessionEntry],
    input: &CycleInput,
    config: &ReaperConfig,
    deadline: Option<Instant>,
) -> Vec<(SessionEntry, Action)> {
    let second = match cycle.observe_again(vcenter).await {
        Ok(second) => second,
        Err(e) => {
            let why = format!("the second listing failed: {e}");
            return list
                .iter()
                .map(|s| {
                    let action = Action::Spared(why.clone());
                    log_action(s, &action);
                    ((*s).clone(), action)
                })
                .collect();
        }
    };
    let again = Inventory::build(
        &CycleInput {
            vcenters: vec![second],
            prow_up: input.prow_up,
            jobs: input.jobs.clone(),
            rules: input.rules.clone(),
            ..CycleInput::default()
        },
        Vec::new(),
        0,
    );
    let by_key: HashMap<&str, &SessionEntry> =
        again.sessions.iter().map(|s| (s.key.expose(), s)).collect();
    let mut done = Vec::with_capacity(list.len());
    for s in list {
        let action = match recheck(s, by_key.get(s.key.expose()).copied(), config) {
            Some(why) => Action::Spared(why),
            None => terminate(cycle, vcenter, s, deadline).await,
        };
        log_action(s, &action);
        done.push(((*s).clone(), action));
    }
    done
}

/// End one confirmed candidate, unless time is up or it is the reporter's
/// own session after all.
async fn terminate(
    cycle: &Cycle,
    vcenter: &str,
    s: &SessionEntry,
    deadline: Option<Instant>,
) -> Action {
    let Some(client) = cycle.vcenter(vcenter) else {
        return Action::Spared(format!("no vCenter {vcenter} configured"));
    };
    if deadline.is_some_and(|d| Instant::now() >= d) {
        return Action::Spared("out of time in this pass: left for the next".into());
    }
    if client.is_own_session(s.key.expose()).await {
        return Action::Spared("the reporter's own session".into());
    }
    match client.terminate_session(s.key.expose()).await {
        Ok(()) => Action::Terminated,
        // Ended meanwhile by its client, another reaper or an admin.
        Err(crate::Error::SoapFault { fault, .. }) if fault == "NotFound" => {
            Action::Spared("already gone".into())
        }
        Err(e) => Action::Failed(e.to_string()),
    }
}

/// One info line per termination (and a warning per failure), with the
/// session's facts and never its full key.
pub fn log_action(s: &SessionEntry, action: &Action) {
    let (age, idle) = (s.age_seconds.unwrap_or(0), s.idle_seconds.unwrap_or(0));
    let reason = s.reason.unwrap_or_default();
    let namespace = s.namespace.as_deref().unwrap_or("");
    match action {
        Action::Terminated => info!(
            vcenter = %s.vcenter, user = %s.username, user_agent = %s.user_agent,
            ip = %s.ip_address, age_seconds = age, idle_seconds = idle, reason,
            namespace, session = %s.key_prefix,
            "Terminated a leaked session"
        ),
        Action::Failed(error) => warn!(
            vcenter = %s.vcenter, user = %s.username, user_agent = %s.user_agent,
            ip = %s.ip_address, age_seconds = age, idle_seconds = idle, reason,
            namespace, session = %s.key_prefix, error = %error,
            "Terminating a leaked session failed, going on with the others"
        ),
        Action::Spared(why) => info!(
            vcenter = %s.vcenter, user = %s.username, user_agent = %s.user_agent,
            session = %s.key_prefix, why = %why,
            "Spared a candidate after the second listing"
        ),
        Action::WouldTerminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{JobRef, SessionKey};
    use crate::leaks::user_regex;

    fn orphan(key: &str, user: &str, reason: &'static str, age: u64, idle: u64) -> SessionEntry {
        SessionEntry {
            vcenter: "vc1".into(),
            key_prefix: key.into(),
            username: user.into(),
            user_name: user.into(),
            user_agent: "govc/0.37.3".into(),
            ip_address: "10.0.0.1".into(),
            login_time: "2026-12-02T01:00:00Z".into(),
            last_active_time: "2026-12-02T02:00:00Z".into(),
            age_seconds: Some(age),
            idle_seconds: Some(idle),
            call_count: 3,
            status: Status::Orphaned,
            attributed_by: None,
            job: None,
            reason: Some(reason),
            namespace: None,
            key: SessionKey::new(key),
            agent_label: "govc/0.37.3".into(),
        }
    }

    fn config(users: &[&str]) -> ReaperConfig {
        ReaperConfig {
            users: users.iter().map(|u| user_regex(u).unwrap()).collect(),
            ..ReaperConfig::default()
        }
    }

    const H: u64 = 3600;

    #[test]
    fn only_orphans_of_named_users_old_and_idle_enough_for_a_chosen_reason_qualify() {
        let c = config(&["ci_user_.*"]);
        assert!(c.qualifies(&orphan("a", "ci_user_01", "job_ended", 3 * H, 2 * H)));
        // Nobody named: nothing qualifies, ever.
        assert!(!config(&[]).qualifies(&orphan("a", "ci_user_01", "job_ended", 9 * H, 9 * H)));
        // Matched in full: a prefix of the pattern is not enough.
        assert!(!config(&["ci_user"]).qualifies(&orphan(
            "a",
            "ci_user_01",
            "job_ended",
            3 * H,
            2 * H
        )));
        assert!(!c.qualifies(&orphan("a", "admin", "job_ended", 3 * H, 2 * H)));
        assert!(!c.qualifies(&orphan("a", "ci_user_01", "job_ended", 2 * H - 1, 2 * H)));
        assert!(!c.qualifies(&orphan("a", "ci_user_01", "job_ended", 3 * H, H - 1)));
        let mut unknown_age = orphan("a", "ci_user_01", "job_ended", 3 * H, 2 * H);
        unknown_age.age_seconds = None;
        assert!(!c.qualifies(&unknown_age));
        let only_ended = ReaperConfig {
            reasons: vec![OrphanReason::JobEnded],
            ..c.clone()
        };
        assert!(!only_ended.qualifies(&orphan("a", "ci_user_01", "no_running_job", 3 * H, 2 * H)));
        // A reporter's agent, whatever its user became after normalising.
        let mut twin = orphan("a", "ci_user_01", "no_running_job", 3 * H, 2 * H);
        twin.user_agent = "vsphere-ci-session-metrics/pod-b".into();
        assert!(!c.qualifies(&twin));
        for status in [
            Status::Attributed,
            Status::Shared,
            Status::Pending,
            Status::Reporter,
            Status::Exempt,
        ] {
            let mut s = orphan("a", "ci_user_01", "job_ended", 3 * H, 2 * H);
            s.status = status;
            assert!(!c.qualifies(&s), "{status:?}");
        }
    }

    #[test]
    fn the_cap_keeps_the_longest_idle_of_each_vcenter() {
        let c = ReaperConfig {
            max_per_run: 2,
            ..config(&["ci_user_01"])
        };
        let mut sessions = vec![
            orphan("k1", "ci_user_01", "job_ended", 9 * H, 2 * H),
            orphan("k2", "ci_user_01", "job_ended", 9 * H, 5 * H),
            orphan("k3", "ci_user_01", "job_ended", 9 * H, 3 * H),
        ];
        let mut other = orphan("k4", "ci_user_01", "job_ended", 9 * H, 2 * H);
        other.vcenter = "vc2".into();
        sessions.push(other);
        let chosen = candidates(&sessions, &c);
        let keys = |vc: &str| -> (Vec<&str>, usize) {
            let (list, over) = &chosen[vc];
            (list.iter().map(|s| s.key_prefix.as_str()).collect(), *over)
        };
        assert_eq!(keys("vc1"), (vec!["k2", "k3"], 1));
        assert_eq!(keys("vc2"), (vec!["k4"], 0));
    }

    #[test]
    fn the_second_listing_spares_what_is_gone_active_or_claimed() {
        let c = config(&["ci_user_01"]);
        let first = orphan("k1", "ci_user_01", "job_ended", 3 * H, 2 * H);
        assert_eq!(recheck(&first, Some(&first.clone()), &c), None);
        assert!(recheck(&first, None, &c).unwrap().contains("gone"));
        let mut active = first.clone();
        active.last_active_time = "2026-12-02T03:00:00Z".into();
        active.idle_seconds = Some(0);
        assert!(
            recheck(&first, Some(&active), &c)
                .unwrap()
                .starts_with("active again")
        );
        let mut claimed = first.clone();
        claimed.status = Status::Attributed;
        claimed.reason = None;
        claimed.job = Some(JobRef {
            job: "e2e-vsphere".into(),
            build_id: "7".into(),
            prowjob: "pj".into(),
        });
        assert_eq!(
            recheck(&first, Some(&claimed), &c).unwrap(),
            "now attributed to e2e-vsphere #7"
        );
        let mut pending = first.clone();
        pending.status = Status::Pending;
        pending.reason = None;
        assert_eq!(
            recheck(&first, Some(&pending), &c).unwrap(),
            "no longer orphaned (pending)"
        );
    }
}
