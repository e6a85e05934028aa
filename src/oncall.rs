//! The commands for whoever is on call when a vCenter is full: `sessions`
//! (what holds the sessions, as a table or JSON) and `reap` (free the
//! leaked ones, a dry run unless asked), and the reaper run after each
//! cycle of `start`.
//!
//! Both commands make one gather-and-classify pass with the same sources
//! and settings as `once`, publish nothing, and log out of every vCenter
//! before they exit, so they leave no session behind.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use tracing::info;

use crate::app::build_inspector;
use crate::config::Config;
use crate::cycle::{Cycle, CycleReport};
use crate::error::Error;
use crate::inventory::{Inventory, SessionEntry};
use crate::reaper::{self, Action};
use crate::report::table::{Cell, Column, Table, Tone, age, printable};
use crate::report::{self, Options};

/// Exit code after SIGINT/SIGTERM (128 + SIGINT, as shells report it).
pub const INTERRUPTED: i32 = 130;

/// `sessions`: one pass, then the report on stdout and one line per
/// failed source on stderr. Exit code 0 when every source answered. A
/// signal stops the pass and still logs out.
pub async fn sessions(
    config: Config,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<i32, Error> {
    let cycle = build_inspector(&config).await?;
    let inspected = tokio::select! {
        inspected = cycle.inspect() => Some(inspected),
        () = shutdown => None,
    };
    cycle.logout_vcenters().await;
    let Some((input, failures)) = inspected else {
        eprintln!("error: interrupted by a signal");
        return Ok(INTERRUPTED);
    };
    let inventory = Inventory::build(&input, failures, crate::metrics::unix_now_ms());
    write_stdout(&report::render(&inventory, &options));
    Ok(report_failures(&inventory.failures))
}

/// `reap`: one pass, the candidates, then (with `apply`) the second
/// listing and the terminations. Exit code 0 when every source answered
/// and every termination succeeded. A signal stops it (no termination
/// starts after it) and still logs out.
pub async fn reap(
    config: Config,
    apply: bool,
    terminal: Terminal,
    shutdown: impl Future<Output = ()>,
) -> Result<i32, Error> {
    let cycle = build_inspector(&config).await?;
    let code = tokio::select! {
        code = reap_pass(&config, &cycle, apply, terminal) => code,
        () = shutdown => {
            eprintln!("error: interrupted by a signal");
            INTERRUPTED
        }
    };
    cycle.logout_vcenters().await;
    Ok(code)
}

async fn reap_pass(config: &Config, cycle: &Cycle, apply: bool, terminal: Terminal) -> i32 {
    let rules = &config.reaper;
    let (input, failures) = cycle.inspect().await;
    let inventory = Inventory::build(&input, failures, crate::metrics::unix_now_ms());
    if rules.users.is_empty() {
        write_stdout(
            "reaper.users is empty, so no session may be reaped: name the CI accounts \
             (regexes of user names) in the reaper: block of --config.\n",
        );
    }
    // The dry run's choice: what --apply then confirms and terminates.
    let dry = reaper::run(cycle, &inventory, &input, rules, false, None).await;
    let listed = dry.actions;
    let mut out = format!(
        "Candidates: {} (users {}; reasons {}; at least {} old and {} idle; at most {} per vCenter)\n",
        listed.len(),
        if rules.users.is_empty() {
            "none".to_string()
        } else {
            rules
                .users
                .iter()
                .map(|r| pattern_of(r.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        },
        rules
            .reasons
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        humantime::format_duration(rules.min_age),
        humantime::format_duration(rules.min_idle),
        rules.max_per_run,
    );
    if !listed.is_empty() {
        out.push_str(&actions_table(&listed, false).render(terminal.width, terminal.colour));
    }
    for (vcenter, over) in &dry.over_cap {
        out.push_str(&format!(
            "{vcenter}: {over} more candidates are left for a later run (reaper.max_per_run)\n"
        ));
    }
    let mut failed = 0;
    if !apply {
        out.push_str(if listed.is_empty() {
            "Dry run: nothing to terminate.\n"
        } else {
            "Dry run: nothing terminated. Run again with --apply to terminate these sessions.\n"
        });
        write_stdout(&out);
    } else if !listed.is_empty() {
        out.push_str(&format!(
            "Listing again in {} to confirm each one is still leaked and has not been active...\n",
            humantime::format_duration(rules.recheck_delay)
        ));
        write_stdout(&out);
        // The operator is watching (Ctrl-C stops it): no time limit.
        let pass = reaper::run(cycle, &inventory, &input, rules, true, None).await;
        let count = |word: &str| {
            pass.actions
                .iter()
                .filter(|(_, a)| a.word() == word)
                .count()
        };
        failed = count("failed");
        let mut out = actions_table(&pass.actions, true).render(terminal.width, terminal.colour);
        out.push_str(&format!(
            "Terminated {}, spared {}, failed {}.\n",
            count("terminated"),
            count("spared"),
            failed
        ));
        write_stdout(&out);
    } else {
        out.push_str("Nothing to terminate.\n");
        write_stdout(&out);
    }
    let mut code = report_failures(&inventory.failures);
    if failed > 0 {
        eprintln!("error: {failed} terminations failed (see the warnings above)");
        code = 1;
    }
    code
}

/// After a cycle of `start` with `reaper.enabled`: the same choice and
/// checks as `reap`, terminating only with `reaper.apply`, and starting no
/// termination after `budget`, so the schedule (and `/livez`) never waits
/// long on a slow vCenter; what is left is chosen again next pass.
pub async fn reap_after_cycle(cycle: &Cycle, report: CycleReport, budget: Duration) {
    let rules = cycle.reaper_config();
    let inventory = report.inventory.unwrap_or_else(|| {
        Inventory::build(
            &report.input,
            report.failures,
            crate::metrics::unix_now_ms(),
        )
    });
    let deadline = Instant::now() + budget;
    let pass = reaper::run(
        cycle,
        &inventory,
        &report.input,
        rules,
        rules.apply,
        Some(deadline),
    )
    .await;
    if !rules.apply && !pass.actions.is_empty() {
        info!(
            candidates = pass.actions.len(),
            "Reaper dry run: these sessions would be terminated (reaper.apply is false)"
        );
    }
    cycle.record_reaping(&pass);
}

/// The candidates, and with `done` what happened to each.
fn actions_table(rows: &[(SessionEntry, Action)], done: bool) -> Table {
    let mut columns = vec![
        Column::text("VCENTER"),
        Column::text("USER"),
        Column::flex("AGENT"),
        Column::text("IP"),
        Column::number("AGE"),
        Column::number("IDLE"),
        Column::text("REASON"),
        Column::text("NAMESPACE"),
        Column::text("KEY"),
    ];
    if done {
        columns.push(Column::text("ACTION"));
        columns.push(Column::flex("DETAIL"));
    }
    let mut t = Table::new(columns);
    for (s, action) in rows {
        let mut row = vec![
            Cell::new(&s.vcenter),
            Cell::new(&s.username),
            Cell::new(if s.user_agent.is_empty() {
                "-"
            } else {
                &s.user_agent
            }),
            Cell::new(&s.ip_address),
            Cell::new(age(s.age_seconds)),
            Cell::new(age(s.idle_seconds)),
            Cell::new(s.reason.unwrap_or("-")),
            Cell::new(s.namespace.as_deref().unwrap_or("-")),
            Cell::new(&s.key_prefix),
        ];
        if done {
            let tone = match action {
                Action::Terminated => Tone::Good,
                Action::Spared(_) => Tone::Warn,
                Action::Failed(_) => Tone::Bad,
                Action::WouldTerminate => Tone::Plain,
            };
            row.push(Cell::new(action.word()).tone(tone));
            row.push(Cell::new(action.detail()));
        }
        t.push(row);
    }
    t
}

/// The user's pattern inside the anchoring `user_regex` adds.
fn pattern_of(regex: &str) -> String {
    regex
        .strip_prefix("(?i)^(?:")
        .and_then(|r| r.strip_suffix(")$"))
        .unwrap_or(regex)
        .to_string()
}

/// Where stdout goes: its width and whether to colour.
#[derive(Debug, Clone, Copy, Default)]
pub struct Terminal {
    pub width: Option<usize>,
    pub colour: bool,
}

impl Terminal {
    /// `COLUMNS` when set (so scripts and tests choose), else the
    /// terminal's width; colour only on a terminal without `NO_COLOR`.
    pub fn detect() -> Terminal {
        let is_terminal = std::io::stdout().is_terminal();
        let columns = std::env::var("COLUMNS").ok();
        Terminal {
            width: width_from(
                columns.as_deref(),
                is_terminal.then(terminal_width).flatten(),
            ),
            colour: colour_enabled(is_terminal, std::env::var_os("NO_COLOR").as_deref()),
        }
    }
}

/// `COLUMNS` if it is a positive number, else the terminal's width.
pub fn width_from(columns: Option<&str>, terminal: Option<usize>) -> Option<usize> {
    columns
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|&c| c > 0)
        .or(terminal)
}

/// Colour on a terminal unless `NO_COLOR` is set to anything non-empty
/// (<https://no-color.org>).
pub fn colour_enabled(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The width of the terminal on stdout (`TIOCGWINSZ`).
fn terminal_width() -> Option<usize> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which
    // points at a live, writable value of that type.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) };
    (rc == 0 && size.ws_col > 0).then_some(size.ws_col as usize)
}

/// Write to stdout; a closed pipe (`| head`) is not an error worth a
/// panic.
fn write_stdout(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// One `error:` line per failure on stderr; the exit code.
fn report_failures(failures: &[String]) -> i32 {
    for failure in failures {
        // Failures quote what peers answered.
        eprintln!("error: {}", printable(failure));
    }
    i32::from(!failures.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn colour_needs_a_terminal_and_no_no_color() {
        assert!(colour_enabled(true, None));
        assert!(!colour_enabled(false, None));
        assert!(!colour_enabled(true, Some(OsStr::new("1"))));
        // An empty NO_COLOR does not count, as no-color.org says.
        assert!(colour_enabled(true, Some(OsStr::new(""))));
    }

    #[test]
    fn columns_wins_over_the_terminal_and_junk_is_ignored() {
        assert_eq!(width_from(Some("80"), Some(200)), Some(80));
        assert_eq!(width_from(Some("0"), Some(200)), Some(200));
        assert_eq!(width_from(Some("wide"), None), None);
        assert_eq!(width_from(None, Some(120)), Some(120));
    }
}
