//! Test support: the reporter binary run as a process, and reading what
//! its `/metrics` serves.
//!
//! Include it with `#[path = "support/reporter.rs"] mod reporter;` from an
//! integration test (it needs `CARGO_BIN_EXE_vsphere-ci-session-metrics`,
//! which cargo sets for integration tests only).
//!
//! - [`Reporter::spawn`] starts the binary with a clean environment and its
//!   log in a file (killed on drop); [`run_to_end`] for `once` and bad flags.
//! - [`scrape`], [`scrape_until`] (poll with a bound), [`value_of`],
//!   [`cycles`], [`mask_varying`] for golden files, [`promtool_check`].

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const BIN: &str = env!("CARGO_BIN_EXE_vsphere-ci-session-metrics");

/// A reporter process; killed when dropped, its log kept for failures.
pub struct Reporter {
    child: Child,
    log: PathBuf,
}

impl Reporter {
    pub fn spawn(args: &[String], dir: &Path) -> Reporter {
        Self::spawn_logging(args, dir, "info")
    }

    /// Like [`Reporter::spawn`] with `RUST_LOG` set to `level`, and stdout
    /// kept in the log too (for tests that read everything it prints).
    pub fn spawn_logging(args: &[String], dir: &Path, level: &str) -> Reporter {
        let log = dir.join(format!(
            "reporter-{}.log",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(BIN)
            .args(args)
            // A clean environment: the reporter reads generic variables
            // (CONFIG, INTERVAL, KUBECONFIG) that a CI machine may set.
            .env_clear()
            .env("RUST_LOG", level)
            .stdout(file.try_clone().expect("the log file handle can be cloned"))
            .stderr(file)
            .spawn()
            .expect("the reporter binary starts");
        Reporter { child, log }
    }

    /// A process started by the caller, its stderr going to `log`.
    pub fn adopt(child: Child, log: PathBuf) -> Reporter {
        Reporter { child, log }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn terminate(&mut self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pids fit in pid_t");
        // SAFETY: kill(2) with a pid of our own child and a valid signal.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(
            rc,
            0,
            "kill(SIGTERM) failed: {}",
            std::io::Error::last_os_error()
        );
    }

    pub fn wait_exit(&mut self, bound: Duration) -> ExitStatus {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "reporter did not exit within {bound:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run to completion (for `once` and bad settings), with a time bound.
pub fn run_to_end(args: &[String], dir: &Path, bound: Duration) -> (ExitStatus, String, Duration) {
    let started = Instant::now();
    let mut reporter = Reporter::spawn(args, dir);
    let status = reporter.wait_exit(bound);
    (status, reporter.log(), started.elapsed())
}

pub async fn scrape(port: u16) -> Option<String> {
    let response = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.text().await.ok()
}

/// The value of the first sample line starting with `series` (a name with
/// optional labels, exactly as exposed).
pub fn value_of(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Cycles the reporter has run, as `/metrics` says (0 before the first).
pub fn cycles(text: &str) -> f64 {
    value_of(text, "vsphere_ci_user_sessions_exporter_scrapes_total").unwrap_or(0.0)
}

/// Poll `/metrics` until `ready` holds for it, at most `bound`.
pub async fn scrape_until(
    reporter: &Reporter,
    port: u16,
    bound: Duration,
    what: &str,
    ready: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(text) = scrape(port).await {
            if ready(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "/metrics never showed {what} within {bound:?}; last:\n{text}\nlog:\n{}",
                reporter.log()
            );
        } else {
            assert!(
                Instant::now() < deadline,
                "/metrics never answered within {bound:?}; log:\n{}",
                reporter.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The exposition with the values that change from run to run (durations,
/// the cycle and skipped-tick counts) replaced by `<varies>`.
pub fn mask_varying(text: &str) -> String {
    // Skipped ticks too: on a loaded machine a cycle may outlast the 1 s
    // interval.
    // Session ages grow with the clock; the VM map's bytes depend on the
    // simulator's encoding (its own session ids).
    const VARYING: [&str; 6] = [
        "vsphere_ci_user_sessions_collector_duration_seconds",
        "vsphere_ci_user_sessions_cycle_duration_seconds",
        "vsphere_ci_user_sessions_cycles_skipped_total",
        "vsphere_ci_user_sessions_exporter_scrapes_total",
        "vsphere_ci_user_sessions_oldest_session_age_seconds",
        "vsphere_ci_user_sessions_vm_map_received_bytes_total",
    ];
    let mut out = String::new();
    for line in text.lines() {
        if !line.starts_with('#') && VARYING.iter().any(|v| line.starts_with(v)) {
            let (series, _) = line.rsplit_once(' ').unwrap_or((line, ""));
            out.push_str(series);
            out.push_str(" <varies>");
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

pub fn correlated_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("vsphere_ci_user_sessions_correlated{"))
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

pub fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool not found: install Debian package prometheus (scripts/test.sh does it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
