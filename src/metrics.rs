//! Series, snapshots and metric names.
//!
//! A [`Snapshot`] is what one cycle produced: metric families with their
//! samples and one timestamp. Every sink (the local `/metrics`, remote-write,
//! the Pushgateway) receives the same snapshot, so what a scraper sees and
//! what is pushed never disagree.
//!
//! Names follow the Prometheus naming rules
//! (<https://prometheus.io/docs/practices/naming/>): base units, `_total` only
//! on counters, no label names inside metric names. The four names the Go
//! exporter had are kept exactly so dashboards keep working.

use std::fmt::Write as _;

/// Sessions of one user with one user agent, one series per running CI job
/// that logs in as that user (the original exporter's metric).
pub const CORRELATED: &str = "vsphere_ci_user_sessions_correlated";
/// 1 when the last cycle listed the vCenter's sessions, else 0.
pub const VCENTER_UP: &str = "vsphere_ci_user_sessions_vcenter_up";
/// 1 when the last cycle listed the running Prow jobs, else 0.
pub const PROW_UP: &str = "vsphere_ci_user_sessions_prow_up";
/// Cycles run since start (the original counted scrapes; here a cycle is a scrape).
pub const SCRAPES_TOTAL: &str = "vsphere_ci_user_sessions_exporter_scrapes_total";
/// Sessions open per user and user agent, counted once whatever the number of
/// jobs sharing the user: `sum by (username)` of this is exact.
pub const OPEN_SESSIONS: &str = "vsphere_ci_user_sessions_open";
/// Running CI jobs that log in as a user on a vCenter. Above 1 the
/// correlated series of that user repeat the same counts once per job.
pub const USER_JOBS: &str = "vsphere_ci_user_sessions_user_jobs";
/// Every session on the vCenter, CI or not: how close it is to its limit.
/// Named like the original's `vcenter_up`: the vCenter is the subject here,
/// not a label split into the name.
pub const VCENTER_SESSIONS: &str = "vsphere_ci_user_sessions_vcenter_sessions";
/// Running vSphere jobs found in Prow this cycle.
pub const RUNNING_JOBS: &str = "vsphere_ci_user_sessions_running_jobs";
/// Running jobs whose CI user could not be worked out (yet) this cycle.
pub const UNRESOLVED_JOBS: &str = "vsphere_ci_user_sessions_unresolved_jobs";
/// Sessions of a user and agent proven to belong to a running job, with
/// the evidence (`attributed_by`: `user_agent` or `vm_ip`).
pub const JOB_SESSIONS: &str = "vsphere_ci_user_sessions_job_sessions";
/// Sessions no running job can own, by `reason`.
pub const ORPHANED: &str = "vsphere_ci_user_sessions_orphaned";
/// Now minus the oldest login of a user and agent, by the vCenter's clock.
pub const OLDEST_SESSION_AGE: &str = "vsphere_ci_user_sessions_oldest_session_age_seconds";
/// Sessions of a user and agent idle longer than the idle threshold.
pub const IDLE_SESSIONS: &str = "vsphere_ci_user_sessions_idle_sessions";
/// The configured session limit of a vCenter.
pub const SESSION_LIMIT: &str = "vsphere_ci_user_sessions_vcenter_session_limit";
/// Distinct user agents capped on a vCenter this cycle, by `kind`
/// (`truncated` past 256 bytes, `other`: past 50 per user).
pub const CAPPED_USER_AGENTS: &str = "vsphere_ci_user_sessions_capped_user_agents";
/// 1 per running job and user it logs in as: the join to jobs.
pub const JOB_INFO: &str = "vsphere_ci_user_sessions_job_info";
/// CI users naming a vCenter host that matches no configured vCenter.
pub const UNMATCHED_IDENTITIES: &str = "vsphere_ci_user_sessions_unmatched_identities";
/// VMs in a vCenter's guest IP -> VM map.
pub const VM_MAP_VMS: &str = "vsphere_ci_user_sessions_vm_map_vms";
/// Bytes of `WaitForUpdatesEx` answers read for the VM map since start.
pub const VM_MAP_RECEIVED_BYTES: &str = "vsphere_ci_user_sessions_vm_map_received_bytes_total";
/// Reads of the VM map from scratch since start (1 in a steady state).
pub const VM_MAP_FULL_READS: &str = "vsphere_ci_user_sessions_vm_map_full_reads_total";
/// Wall time of the last cycle to gather and correlate (publishing follows
/// the snapshot, so it cannot be in it).
pub const CYCLE_DURATION: &str = "vsphere_ci_user_sessions_cycle_duration_seconds";
/// Wall time of each collector (vcenter, prow, ci) in the last cycle.
pub const COLLECTOR_DURATION: &str = "vsphere_ci_user_sessions_collector_duration_seconds";
/// 1 when a collector succeeded in the last cycle.
pub const COLLECTOR_SUCCESS: &str = "vsphere_ci_user_sessions_collector_success";
/// Logins the reporter made to a vCenter since start: 1 in a steady state;
/// a rising value means its session keeps being terminated or expiring.
pub const REPORTER_LOGINS_TOTAL: &str = "vsphere_ci_user_sessions_reporter_logins_total";
/// Failed logins of the reporter, by `reason` (`invalid_login`, `refused`,
/// `error`): a rising `invalid_login` means a rotated password the reporter
/// does not have.
pub const REPORTER_LOGIN_FAILURES_TOTAL: &str =
    "vsphere_ci_user_sessions_reporter_login_failures_total";
/// Sessions of the reporter's own lost logins (no answer arrived) that it
/// terminated.
pub const REPORTER_ORPHANS_TERMINATED_TOTAL: &str =
    "vsphere_ci_user_sessions_reporter_orphans_terminated_total";
/// Orphaned sessions the reaper's rules choose in the cycle's classification.
pub const REAPER_CANDIDATES: &str = "vsphere_ci_user_sessions_reaper_candidates";
/// Leaked sessions the reaper terminated since start.
pub const REAPED_TOTAL: &str = "vsphere_ci_user_sessions_reaped_total";
/// Terminations of leaked sessions that failed.
pub const REAPER_FAILURES_TOTAL: &str = "vsphere_ci_user_sessions_reaper_failures_total";
/// Scheduler ticks skipped because the previous cycle was still running.
pub const CYCLES_SKIPPED_TOTAL: &str = "vsphere_ci_user_sessions_cycles_skipped_total";

/// The local clock in milliseconds since the Unix epoch: how cycles and
/// samples are stamped (0 before 1970, saturating far in the future).
pub fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The Prometheus metric type, as exposed in `# TYPE` lines and in
/// remote-write v2 metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Gauge,
    Counter,
}

impl MetricType {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Gauge => "gauge",
            MetricType::Counter => "counter",
        }
    }
}

/// Label pairs of one sample, sorted by name, without `__name__`.
pub type Labels = Vec<(String, String)>;

/// One value of a family at the snapshot's timestamp.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: Labels,
    pub value: f64,
}

impl Sample {
    /// A sample whose labels are sorted by name here, so callers may list
    /// them in whatever order reads best.
    pub fn new<K: Into<String>, V: Into<String>>(
        labels: impl IntoIterator<Item = (K, V)>,
        value: f64,
    ) -> Self {
        let mut labels: Labels = labels
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        labels.sort();
        Sample { labels, value }
    }
}

/// All samples of one metric name.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricFamily {
    pub name: &'static str,
    pub help: &'static str,
    pub metric_type: MetricType,
    pub samples: Vec<Sample>,
}

impl MetricFamily {
    pub fn gauge(name: &'static str, help: &'static str) -> Self {
        MetricFamily {
            name,
            help,
            metric_type: MetricType::Gauge,
            samples: Vec::new(),
        }
    }

    pub fn counter(name: &'static str, help: &'static str) -> Self {
        MetricFamily {
            name,
            help,
            metric_type: MetricType::Counter,
            samples: Vec::new(),
        }
    }

    /// Add a sample (labels in any order) and return the family, for chaining.
    pub fn with<K: Into<String>, V: Into<String>>(
        mut self,
        labels: impl IntoIterator<Item = (K, V)>,
        value: f64,
    ) -> Self {
        self.push(labels, value);
        self
    }

    pub fn push<K: Into<String>, V: Into<String>>(
        &mut self,
        labels: impl IntoIterator<Item = (K, V)>,
        value: f64,
    ) {
        self.samples.push(Sample::new(labels, value));
    }
}

/// What one cycle produced: every family and the one timestamp (milliseconds
/// since the Unix epoch) that all its samples carry when pushed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    pub timestamp_ms: i64,
    pub families: Vec<MetricFamily>,
}

impl Snapshot {
    /// Number of samples over all families.
    pub fn sample_count(&self) -> usize {
        self.families.iter().map(|f| f.samples.len()).sum()
    }

    /// The family of that name, if the snapshot has it.
    pub fn family(&self, name: &str) -> Option<&MetricFamily> {
        self.families.iter().find(|f| f.name == name)
    }

    /// The text exposition format 0.0.4
    /// (<https://prometheus.io/docs/instrumenting/exposition_formats/>), without
    /// timestamps: scrapers stamp samples themselves, and the Pushgateway
    /// refuses timestamped pushes. Families are written in snapshot order and
    /// samples sorted by labels, so the output is stable for diffing. It always
    /// ends in a newline, as the Pushgateway requires.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        for family in &self.families {
            let _ = writeln!(out, "# HELP {} {}", family.name, escape_help(family.help));
            let _ = writeln!(
                out,
                "# TYPE {} {}",
                family.name,
                family.metric_type.as_str()
            );
            let mut samples: Vec<&Sample> = family.samples.iter().collect();
            samples.sort_by(|a, b| a.labels.cmp(&b.labels));
            for sample in samples {
                out.push_str(family.name);
                if !sample.labels.is_empty() {
                    out.push('{');
                    for (i, (name, value)) in sample.labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{}=\"{}\"", name, escape_label_value(value));
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {}", format_value(sample.value));
            }
        }
        out
    }
}

/// Label values escape backslash, double quote and newline.
fn escape_label_value(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// HELP text escapes backslash and newline only.
fn escape_help(help: &str) -> String {
    help.replace('\\', r"\\").replace('\n', r"\n")
}

/// Whether a label name is valid: `[a-zA-Z_][a-zA-Z0-9_]*`
/// (<https://prometheus.io/docs/concepts/data_model/#metric-names-and-labels>).
/// Names starting with `__` pass: they are reserved, and callers that must
/// refuse them check that themselves.
pub fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Go's formatting of floats as Prometheus writes them: integers without a
/// fraction, special values by name.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{v}")
    }
}

/// Helpers for the unit tests of the modules that build families.
#[cfg(test)]
pub(crate) mod testing {
    use super::MetricFamily;

    /// `(labels rendered as k=v, value)` of one family, sorted, for
    /// compact asserts.
    pub fn series(families: &[MetricFamily], name: &str) -> Vec<(String, f64)> {
        let family = families
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("family {name} is missing"));
        let mut out: Vec<(String, f64)> = family
            .samples
            .iter()
            .map(|s| {
                let labels: Vec<String> =
                    s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                (labels.join(","), s.value)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_output_sorts_labels_and_escapes_values() {
        let snapshot = Snapshot {
            timestamp_ms: 0,
            families: vec![
                MetricFamily::gauge(CORRELATED, "help with \\ and\nnewline").with(
                    [
                        ("user_agent", "a \"quoted\"\nagent"),
                        ("username", r"dom\user"),
                    ],
                    3.0,
                ),
            ],
        };
        let text = snapshot.render_text();
        assert_eq!(
            text,
            "# HELP vsphere_ci_user_sessions_correlated help with \\\\ and\\nnewline\n\
             # TYPE vsphere_ci_user_sessions_correlated gauge\n\
             vsphere_ci_user_sessions_correlated{user_agent=\"a \\\"quoted\\\"\\nagent\",username=\"dom\\\\user\"} 3\n"
        );
    }

    #[test]
    fn values_print_like_prometheus() {
        assert_eq!(format_value(1.0), "1");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
    }

    #[test]
    fn label_names_follow_the_prometheus_syntax() {
        for good in ["username", "_x", "a1_B2", "__name__"] {
            assert!(is_valid_label_name(good), "{good}");
        }
        for bad in ["", "1a", "user-name", "a.b", "a:b", "é", "a b"] {
            assert!(!is_valid_label_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_family_without_samples_still_has_help_and_type() {
        let snapshot = Snapshot {
            timestamp_ms: 0,
            families: vec![MetricFamily::counter(SCRAPES_TOTAL, "cycles")],
        };
        assert_eq!(snapshot.sample_count(), 0);
        assert!(
            snapshot
                .render_text()
                .ends_with("# TYPE vsphere_ci_user_sessions_exporter_scrapes_total counter\n")
        );
    }
}
