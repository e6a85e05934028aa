//! What `sessions` prints: an [`Inventory`] filtered and grouped into one
//! of three views, as tables or JSON.
//!
//! - [`View::Users`] (default): per vCenter, one row per user and agent,
//!   largest first, then the vCenter's total against its limit.
//! - [`View::Jobs`] (`--by job`): one row per running job, then the
//!   orphaned sessions grouped by the ended job's namespace.
//! - [`View::Orphaned`] (`--orphaned`): only what no running job can own,
//!   grouped by reason, user, agent and namespace.
//!
//! `wide` adds the client addresses and shortened session keys of each
//! row and is never cut to the terminal; `json` is the whole inventory,
//! filtered.

pub mod table;

use std::collections::{BTreeMap, BTreeSet};

use regex::Regex;

use crate::inventory::{Inventory, SessionEntry, Status};
use table::{Cell, Column, Table, Tone, age, count_cell, thousands};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Users,
    Jobs,
    Orphaned,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Wide,
    Json,
}

/// `--vcenter`, `--user`, `--agent`: each a regex matched anywhere,
/// case-insensitively (so a plain word is a substring match).
#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub vcenter: Option<Regex>,
    pub user: Option<Regex>,
    pub agent: Option<Regex>,
}

impl Filters {
    /// A filter from a flag's value: a regex, or the literal text when it
    /// is not a valid one (`ci_user[1` finds that text).
    pub fn pattern(text: &str) -> Regex {
        Regex::new(&format!("(?i){text}")).unwrap_or_else(|_| {
            Regex::new(&format!("(?i){}", regex::escape(text)))
                .expect("an escaped literal is a valid regex")
        })
    }

    pub fn is_empty(&self) -> bool {
        self.vcenter.is_none() && self.user.is_none() && self.agent.is_none()
    }

    fn vcenter(&self, vcenter: &str) -> bool {
        self.vcenter.as_ref().is_none_or(|r| r.is_match(vcenter))
    }

    /// A job is shown unless a vCenter or user filter is set and none of
    /// its CI users matches it (`--agent` filters sessions only).
    fn job(&self, j: &crate::inventory::JobEntry) -> bool {
        (self.vcenter.is_none() && self.user.is_none())
            || j.users.iter().any(|u| {
                self.vcenter(&u.vcenter)
                    && self.user.as_ref().is_none_or(|r| r.is_match(&u.username))
            })
    }

    fn session(&self, s: &SessionEntry) -> bool {
        self.vcenter(&s.vcenter)
            && self.user.as_ref().is_none_or(|r| r.is_match(&s.username))
            && self
                .agent
                .as_ref()
                .is_none_or(|r| r.is_match(&s.user_agent))
    }
}

/// How to print.
#[derive(Debug, Clone)]
pub struct Options {
    pub view: View,
    pub output: Output,
    pub filters: Filters,
    /// The terminal's width (`table` only); `None`: never cut.
    pub width: Option<usize>,
    pub colour: bool,
}

/// The whole report as it goes to stdout.
pub fn render(inventory: &Inventory, options: &Options) -> String {
    if options.output == Output::Json {
        return json(inventory, &options.filters);
    }
    let wide = options.output == Output::Wide;
    let width = if wide { None } else { options.width };
    let mut out = String::new();
    if !inventory.complete {
        out.push_str(&format!(
            "PARTIAL: {} source(s) failed, so this is not everything:\n",
            inventory.failures.len()
        ));
        for failure in &inventory.failures {
            out.push_str(&format!("  - {}\n", table::printable(failure)));
        }
        out.push('\n');
    }
    if !inventory.prow_up {
        out.push_str("The running jobs could not be listed: no session is attributed or orphaned in this pass.\n\n");
    }
    let body = match options.view {
        View::Users => users_view(inventory, options, wide, width),
        View::Jobs => jobs_view(inventory, options, wide, width),
        View::Orphaned => orphaned_view(inventory, options, wide, width),
    };
    out.push_str(&body);
    out
}

/// The inventory with only the vCenters, sessions and jobs the filters
/// keep, as one pretty-printed JSON document.
fn json(inventory: &Inventory, filters: &Filters) -> String {
    let sessions: Vec<&SessionEntry> = inventory
        .sessions
        .iter()
        .filter(|s| filters.session(s))
        .collect();
    let jobs: Vec<_> = inventory.jobs.iter().filter(|j| filters.job(j)).collect();
    // Borrowed, in the inventory's field order: no copy of the sessions.
    #[derive(serde::Serialize)]
    struct Document<'a> {
        generated_at: &'a str,
        complete: bool,
        failures: &'a [String],
        prow_up: bool,
        vcenters: Vec<&'a crate::inventory::VcenterSummary>,
        jobs: Vec<&'a crate::inventory::JobEntry>,
        sessions: Vec<&'a SessionEntry>,
    }
    let document = Document {
        generated_at: &inventory.generated_at,
        complete: inventory.complete,
        failures: &inventory.failures,
        prow_up: inventory.prow_up,
        vcenters: inventory
            .vcenters
            .iter()
            .filter(|v| filters.vcenter(&v.vcenter))
            .collect(),
        jobs,
        sessions,
    };
    let mut text = serde_json::to_string_pretty(&document).unwrap_or_default();
    text.push('\n');
    text
}

/// What a group of sessions adds up to.
#[derive(Default)]
struct Group<'a> {
    sessions: u64,
    attributed: u64,
    orphaned: u64,
    oldest: Option<u64>,
    longest_idle: Option<u64>,
    /// `#build job` -> sessions.
    jobs: BTreeMap<String, u64>,
    reasons: BTreeMap<&'static str, u64>,
    ips: BTreeSet<&'a str>,
    keys: Vec<&'a str>,
}

impl<'a> Group<'a> {
    fn add(&mut self, s: &'a SessionEntry) {
        self.sessions += 1;
        self.oldest = self.oldest.max(s.age_seconds);
        self.longest_idle = self.longest_idle.max(s.idle_seconds);
        if let Some(job) = &s.job {
            self.attributed += 1;
            *self
                .jobs
                .entry(format!("#{} {}", job.build_id, job.job))
                .or_default() += 1;
        }
        if let Some(reason) = s.reason {
            self.orphaned += 1;
            *self.reasons.entry(reason).or_default() += 1;
        }
        self.ips.insert(&s.ip_address);
        self.keys.push(&s.key_prefix);
    }

    fn age_cells(&self) -> [Cell; 2] {
        [
            Cell::new(age(self.oldest)),
            Cell::new(age(self.longest_idle)),
        ]
    }

    /// CLIENT IPS and KEYS for `wide`: every distinct address and key.
    fn wide_cells(&self) -> [Cell; 2] {
        let mut keys = self.keys.clone();
        keys.sort();
        [
            Cell::new(self.ips.iter().copied().collect::<Vec<_>>().join(",")),
            Cell::new(keys.join(",")),
        ]
    }
}

/// `a ×2, b` for a map of names to counts.
fn counted<K: AsRef<str>>(map: &BTreeMap<K, u64>) -> String {
    let list: Vec<String> = map
        .iter()
        .map(|(k, n)| match n {
            1 => k.as_ref().to_string(),
            n => format!("{} ×{n}", k.as_ref()),
        })
        .collect();
    if list.is_empty() {
        "-".into()
    } else {
        list.join(", ")
    }
}

fn with_wide(mut columns: Vec<Column>, wide: bool) -> Vec<Column> {
    if wide {
        columns.push(Column::text("CLIENT IPS"));
        columns.push(Column::text("KEYS"));
    }
    columns
}

/// `vCenter vc1: 2,812 / 3,000 sessions, 94% (...)`, or why it is missing.
fn vcenter_line(inventory: &Inventory, vcenter: &str, filters: &Filters) -> String {
    let Some(v) = inventory.vcenters.iter().find(|v| v.vcenter == vcenter) else {
        return String::new();
    };
    let Some(open) = v.sessions else {
        return format!("vCenter {vcenter}: NOT LISTED (see the failures above)\n");
    };
    let of_vcenter = || inventory.sessions.iter().filter(|s| s.vcenter == vcenter);
    let attributed = of_vcenter()
        .filter(|s| s.status == Status::Attributed)
        .count();
    let orphaned = of_vcenter()
        .filter(|s| s.status == Status::Orphaned)
        .count();
    let percent = (open as f64 * 100.0 / v.session_limit.max(1) as f64).round();
    let mut line = format!(
        "vCenter {vcenter}: {} / {} sessions, {percent}% (attributed {}, orphaned {})",
        thousands(open),
        thousands(v.session_limit),
        thousands(attributed as u64),
        thousands(orphaned as u64)
    );
    if !filters.is_empty() {
        let shown = of_vcenter().filter(|s| filters.session(s)).count();
        line.push_str(&format!(", {} shown", thousands(shown as u64)));
    }
    line.push('\n');
    line
}

/// The vCenters the filters keep, in the inventory's order.
fn vcenters<'a>(inventory: &'a Inventory, filters: &'a Filters) -> impl Iterator<Item = &'a str> {
    inventory
        .vcenters
        .iter()
        .map(|v| v.vcenter.as_str())
        .filter(|v| filters.vcenter(v))
}

fn users_view(
    inventory: &Inventory,
    options: &Options,
    wide: bool,
    width: Option<usize>,
) -> String {
    let mut out = String::new();
    for vcenter in vcenters(inventory, &options.filters) {
        let mut groups: BTreeMap<(&str, &str), Group> = BTreeMap::new();
        for s in inventory
            .sessions
            .iter()
            .filter(|s| s.vcenter == vcenter && options.filters.session(s))
        {
            groups
                .entry((s.username.as_str(), s.user_agent.as_str()))
                .or_default()
                .add(s);
        }
        let mut rows: Vec<_> = groups.into_iter().collect();
        // Largest first; ties by user and agent, so the order is stable.
        rows.sort_by(|a, b| b.1.sessions.cmp(&a.1.sessions).then(a.0.cmp(&b.0)));
        let mut t = Table::new(with_wide(
            vec![
                Column::flex("USER"),
                Column::flex("AGENT"),
                Column::number("SESSIONS"),
                Column::number("ATTRIBUTED"),
                Column::number("ORPHANED"),
                Column::number("OLDEST"),
                Column::number("IDLE"),
                Column::flex("JOBS").optional(),
                Column::flex("REASONS").optional(),
            ],
            wide,
        ));
        for ((user, agent), g) in &rows {
            let mut row = vec![
                Cell::new(*user),
                Cell::new(if agent.is_empty() { "-" } else { agent }),
                Cell::new(thousands(g.sessions)),
                count_cell(g.attributed, Tone::Good),
                count_cell(g.orphaned, Tone::Bad),
            ];
            row.extend(g.age_cells());
            row.push(Cell::new(counted(&g.jobs)));
            row.push(Cell::new(counted(&g.reasons)).tone(if g.orphaned > 0 {
                Tone::Bad
            } else {
                Tone::Plain
            }));
            if wide {
                row.extend(g.wide_cells());
            }
            t.push(row);
        }
        out.push_str(&t.render(width, options.colour));
        out.push_str(&vcenter_line(inventory, vcenter, &options.filters));
        out.push('\n');
    }
    out
}

fn jobs_view(inventory: &Inventory, options: &Options, wide: bool, width: Option<usize>) -> String {
    let filters = &options.filters;
    let sessions: Vec<&SessionEntry> = inventory
        .sessions
        .iter()
        .filter(|s| filters.session(s))
        .collect();
    // Shared sessions per (vCenter, user): each job of the user lists them.
    let mut shared: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for s in sessions.iter().filter(|s| s.status == Status::Shared) {
        *shared
            .entry((s.vcenter.as_str(), s.username.as_str()))
            .or_default() += 1;
    }
    let mut t = Table::new(with_wide(
        vec![
            Column::flex("JOB"),
            Column::text("BUILD"),
            Column::text("NAMESPACE"),
            Column::flex("USERS"),
            Column::number("ATTRIBUTED"),
            Column::number("SHARED"),
            Column::flex("BY").optional(),
            Column::number("OLDEST").optional(),
            Column::number("IDLE").optional(),
        ],
        wide,
    ));
    let mut jobs: Vec<_> = inventory
        .jobs
        .iter()
        .filter(|j| filters.job(j))
        .map(|j| {
            let mut g = Group::default();
            let mut by: BTreeMap<&str, u64> = BTreeMap::new();
            for s in sessions
                .iter()
                .filter(|s| s.job.as_ref().is_some_and(|r| r.prowjob == j.prowjob))
            {
                g.add(s);
                *by.entry(s.attributed_by.unwrap_or_default()).or_default() += 1;
            }
            let shared: u64 = j
                .users
                .iter()
                .map(|u| {
                    shared
                        .get(&(u.vcenter.as_str(), u.username.as_str()))
                        .copied()
                        .unwrap_or(0)
                })
                .sum();
            (j, g, by, shared)
        })
        .collect();
    jobs.sort_by(|a, b| {
        b.1.sessions
            .cmp(&a.1.sessions)
            .then(a.0.job.cmp(&b.0.job))
            .then(a.0.build_id.cmp(&b.0.build_id))
    });
    for (j, g, by, shared) in &jobs {
        let users: Vec<String> = j
            .users
            .iter()
            .map(|u| format!("{}@{}", u.username, u.vcenter))
            .collect();
        let mut row = vec![
            Cell::new(&j.job),
            Cell::new(&j.build_id),
            Cell::new(j.namespace.as_deref().unwrap_or("?")),
            Cell::new(if users.is_empty() {
                "? (not known yet)".to_string()
            } else {
                users.join(", ")
            }),
            count_cell(g.sessions, Tone::Good),
            count_cell(*shared, Tone::Warn),
            Cell::new(counted(by)),
        ];
        row.extend(g.age_cells());
        if wide {
            row.extend(g.wide_cells());
        }
        t.push(row);
    }
    let mut out = format!("Running jobs: {}\n", jobs.len());
    out.push_str(&t.render(width, options.colour));
    out.push('\n');

    // The leaks of jobs that ended, by namespace.
    let mut ended: BTreeMap<(&str, &str, &str), Group> = BTreeMap::new();
    let mut other: BTreeMap<&'static str, u64> = BTreeMap::new();
    for s in sessions.iter().filter(|s| s.status == Status::Orphaned) {
        match (s.reason, s.namespace.as_deref()) {
            (Some("job_ended"), Some(ns)) => ended
                .entry((ns, s.vcenter.as_str(), s.username.as_str()))
                .or_default()
                .add(s),
            (reason, _) => *other.entry(reason.unwrap_or_default()).or_default() += 1,
        }
    }
    let mut t = Table::new(with_wide(
        vec![
            Column::text("ENDED JOB NAMESPACE"),
            Column::text("VCENTER"),
            Column::text("USER"),
            Column::number("SESSIONS"),
            Column::number("OLDEST"),
            Column::number("IDLE"),
        ],
        wide,
    ));
    for ((ns, vcenter, user), g) in &ended {
        let mut row = vec![
            Cell::new(*ns),
            Cell::new(*vcenter),
            Cell::new(*user),
            count_cell(g.sessions, Tone::Bad),
        ];
        row.extend(g.age_cells());
        if wide {
            row.extend(g.wide_cells());
        }
        t.push(row);
    }
    let total: u64 = ended.values().map(|g| g.sessions).sum();
    out.push_str(&format!(
        "Orphaned sessions of ended jobs: {}\n",
        thousands(total)
    ));
    if !ended.is_empty() {
        out.push_str(&t.render(width, options.colour));
    }
    if !other.is_empty() {
        out.push_str(&format!(
            "Orphaned with no job named: {} (see --orphaned)\n",
            counted(&other)
        ));
    }
    out.push('\n');
    out
}

fn orphaned_view(
    inventory: &Inventory,
    options: &Options,
    wide: bool,
    width: Option<usize>,
) -> String {
    // (reason order, vCenter, user, agent, namespace) -> (reason, sessions)
    type Key<'a> = (usize, &'a str, &'a str, &'a str, &'a str);
    let mut groups: BTreeMap<Key, (&str, Group)> = BTreeMap::new();
    for s in inventory
        .sessions
        .iter()
        .filter(|s| s.status == Status::Orphaned && options.filters.session(s))
    {
        let reason = s.reason.unwrap_or_default();
        // job_ended first, then no_running_job, then predates_running_jobs.
        let order = crate::leaks::OrphanReason::ALL
            .iter()
            .position(|r| r.as_str() == reason)
            .unwrap_or(usize::MAX);
        groups
            .entry((
                order,
                s.vcenter.as_str(),
                s.username.as_str(),
                s.user_agent.as_str(),
                s.namespace.as_deref().unwrap_or(""),
            ))
            .or_insert_with(|| (reason, Group::default()))
            .1
            .add(s);
    }
    let mut t = Table::new(with_wide(
        vec![
            Column::text("REASON"),
            Column::flex("VCENTER"),
            Column::flex("USER"),
            Column::flex("AGENT"),
            Column::text("NAMESPACE"),
            Column::number("SESSIONS"),
            Column::number("OLDEST").optional(),
            Column::number("IDLE").optional(),
        ],
        wide,
    ));
    let mut rows: Vec<_> = groups.into_iter().collect();
    rows.sort_by(|a, b| {
        (a.0.0, std::cmp::Reverse(a.1.1.sessions), &a.0).cmp(&(
            b.0.0,
            std::cmp::Reverse(b.1.1.sessions),
            &b.0,
        ))
    });
    let mut total = 0;
    for ((_, vcenter, user, agent, ns), (reason, g)) in &rows {
        total += g.sessions;
        let mut row = vec![
            Cell::new(*reason).tone(Tone::Bad),
            Cell::new(*vcenter),
            Cell::new(*user),
            Cell::new(if agent.is_empty() { "-" } else { agent }),
            Cell::new(if ns.is_empty() { "-" } else { ns }),
            count_cell(g.sessions, Tone::Bad),
        ];
        row.extend(g.age_cells());
        if wide {
            row.extend(g.wide_cells());
        }
        t.push(row);
    }
    let mut out = String::new();
    if rows.is_empty() {
        out.push_str("No orphaned sessions.\n");
    } else {
        out.push_str(&t.render(width, options.colour));
    }
    out.push_str(&format!("Orphaned: {}\n", thousands(total)));
    for vcenter in vcenters(inventory, &options.filters) {
        out.push_str(&vcenter_line(inventory, vcenter, &options.filters));
    }
    out.push('\n');
    out
}
