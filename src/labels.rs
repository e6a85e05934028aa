//! Label values a receiver accepts, whatever a vCenter client sends.
//!
//! A session's user agent is chosen by whoever logs in: it may be long
//! (Mimir refuses label values over 2,048 bytes, and refuses the whole
//! request with them) or endlessly varied (a client putting a request id in
//! its agent would make a new series per session). So, per vCenter:
//! - an agent longer than [`MAX_LABEL_BYTES`] is cut and given a short hash
//!   of the whole value, which keeps distinct agents distinct;
//! - each user keeps its [`MAX_AGENTS_PER_USER`] agents with the most
//!   sessions (ties by name); the rest are summed under `other`.
//!
//! The mapping is pure and deterministic, so every family of a cycle uses
//! the same one.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use crate::correlate::normalize_username;
use crate::vcenter::UserSession;

/// The longest label value sent, in bytes, hash suffix included.
pub const MAX_LABEL_BYTES: usize = 256;
/// Distinct user agents kept per user and vCenter.
pub const MAX_AGENTS_PER_USER: usize = 50;
/// The agent the rest of a user's agents are summed under.
pub const OTHER_AGENT: &str = "other";

/// What the caps did on one vCenter this cycle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capped {
    /// Distinct agents cut to [`MAX_LABEL_BYTES`].
    pub truncated: usize,
    /// Distinct agents folded into `other`.
    pub folded: usize,
}

/// The `user_agent` label value of each session, in order, and what was
/// capped.
pub fn agent_labels(sessions: &[UserSession]) -> (Vec<Cow<'_, str>>, Capped) {
    let mut capped = Capped::default();
    let mut cut: HashMap<&str, Cow<'_, str>> = HashMap::new();
    for s in sessions {
        cut.entry(s.user_agent.as_str()).or_insert_with(|| {
            let value = cap(&s.user_agent);
            if matches!(value, Cow::Owned(_)) {
                capped.truncated += 1;
            }
            value
        });
    }
    // Sessions per (user, agent), to keep each user's busiest agents.
    let mut counts: BTreeMap<(String, &str), usize> = BTreeMap::new();
    let users: Vec<String> = sessions
        .iter()
        .map(|s| normalize_username(&s.user_name))
        .collect();
    for (s, user) in sessions.iter().zip(&users) {
        *counts
            .entry((user.clone(), cut[s.user_agent.as_str()].as_ref()))
            .or_default() += 1;
    }
    let mut per_user: BTreeMap<&str, Vec<(&str, usize)>> = BTreeMap::new();
    for ((user, agent), n) in &counts {
        per_user.entry(user.as_str()).or_default().push((agent, *n));
    }
    let mut kept: HashMap<(&str, &str), bool> = HashMap::new();
    for (user, mut agents) in per_user {
        agents.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        for (i, (agent, _)) in agents.into_iter().enumerate() {
            let keep = i < MAX_AGENTS_PER_USER;
            if !keep {
                capped.folded += 1;
            }
            kept.insert((user, agent), keep);
        }
    }
    let labels = sessions
        .iter()
        .zip(&users)
        .map(|(s, user)| {
            let agent = cut[s.user_agent.as_str()].clone();
            if kept[&(user.as_str(), agent.as_ref())] {
                agent
            } else {
                Cow::Borrowed(OTHER_AGENT)
            }
        })
        .collect();
    (labels, capped)
}

/// `value` cut to [`MAX_LABEL_BYTES`] (at a character boundary) with `~`
/// and 8 hex digits of its hash, or as it is when short enough.
pub fn cap(value: &str) -> Cow<'_, str> {
    if value.len() <= MAX_LABEL_BYTES {
        return Cow::Borrowed(value);
    }
    let mut end = MAX_LABEL_BYTES - 9;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}~{:08x}", &value[..end], fnv1a(value) as u32))
}

/// FNV-1a, 64 bits: stable across builds and platforms, so a capped label
/// stays the same series from one release to the next.
fn fnv1a(value: &str) -> u64 {
    value.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(user: &str, agent: &str) -> UserSession {
        UserSession {
            key: String::new(),
            user_name: user.into(),
            full_name: String::new(),
            login_time: String::new(),
            last_active_time: String::new(),
            ip_address: String::new(),
            user_agent: agent.into(),
            call_count: 0,
            extension_session: false,
        }
    }

    #[test]
    fn long_agents_are_cut_and_stay_distinct() {
        let a = format!("{}-a", "x".repeat(600));
        let b = format!("{}-b", "x".repeat(600));
        let (ca, cb) = (cap(&a), cap(&b));
        assert_eq!(ca.len(), MAX_LABEL_BYTES);
        assert_eq!(cb.len(), MAX_LABEL_BYTES);
        assert_ne!(ca, cb);
        assert_eq!(cap("govc/0.37"), "govc/0.37");
        let wide = "é".repeat(200);
        assert!(cap(&wide).len() <= MAX_LABEL_BYTES);
        // The same value always gives the same label.
        assert_eq!(cap(&a), cap(&a));
    }

    #[test]
    fn a_users_busiest_fifty_agents_are_kept_and_the_rest_summed_as_other() {
        let mut sessions = Vec::new();
        for i in 0..60 {
            // Agent i has i + 1 sessions: agents 10..59 are the busiest.
            for _ in 0..=i {
                sessions.push(session("ci_user_01", &format!("request-{i:03}")));
            }
        }
        sessions.push(session("ci_user_02", "govc"));
        sessions.push(session("ci_user_02", &"y".repeat(300)));
        let (labels, capped) = agent_labels(&sessions);
        assert_eq!(
            capped,
            Capped {
                truncated: 1,
                folded: 10
            }
        );
        let others = labels.iter().filter(|l| *l == OTHER_AGENT).count();
        assert_eq!(others, (1..=10).sum::<usize>(), "sessions of agents 0..9");
        assert_eq!(labels[sessions.len() - 2], "govc");
        assert_eq!(labels[sessions.len() - 1].len(), MAX_LABEL_BYTES);
    }
}
