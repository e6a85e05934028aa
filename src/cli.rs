//! The command line: the original exporter's flags and environment variables,
//! unchanged, plus the push and schedule options.
//!
//! Flags that can also come from the YAML file are `Option`s without clap
//! defaults, so [`crate::config::Config::build`] can tell "not given" from
//! "given the default" and apply defaults < file < environment < flags. The
//! defaults still show in `--help` through the help text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::secret::Secret;

/// Correlates vCenter sessions with the OpenShift CI jobs holding them and
/// publishes the series to Prometheus (local /metrics, remote-write, Pushgateway).
#[derive(Debug, Parser)]
#[command(name = "vsphere-ci-session-metrics", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run cycles on a schedule until SIGTERM/SIGINT, serving /metrics.
    Start(Flags),
    /// Run one cycle, push it to every sink and exit: 0 if every source and
    /// sink succeeded, 1 otherwise (for cron and Kubernetes CronJobs).
    Once(Flags),
    /// List every vCenter's sessions with their job or why they are leaked,
    /// as a table (or JSON), from one pass that publishes nothing. Exit 0
    /// when every source answered, 1 otherwise (what was read is printed).
    Sessions(SessionsArgs),
    /// Free leaked sessions chosen by the `reaper:` settings: a dry run
    /// unless --apply. Exit 0 when every source answered and every
    /// termination succeeded, 1 otherwise.
    Reap(ReapArgs),
}

impl Command {
    pub fn flags(&self) -> &Flags {
        match self {
            Command::Start(f) | Command::Once(f) => f,
            Command::Sessions(a) => &a.flags,
            Command::Reap(a) => &a.flags,
        }
    }
}

/// How `sessions` groups its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GroupBy {
    /// Per vCenter, per user and agent.
    User,
    /// Per running job, then the orphans of ended jobs by namespace.
    Job,
}

#[derive(Debug, Clone, Args)]
pub struct SessionsArgs {
    #[command(flatten)]
    pub flags: Flags,

    /// Rows per user and agent, or per running job.
    #[arg(long, value_enum, default_value = "user")]
    pub by: GroupBy,

    /// Only what no running job can own, by reason, user, agent, namespace.
    #[arg(long, conflicts_with = "by")]
    pub orphaned: bool,

    /// `table` fits the terminal; `wide` adds client IPs and shortened
    /// session keys; `json` is one document with every field.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: crate::report::Output,

    /// Only vCenters matching this (a regex or plain text, any case).
    #[arg(long, value_name = "PATTERN")]
    pub vcenter: Option<String>,

    /// Only users matching this (normalised names, e.g. ci_user_01).
    #[arg(long, value_name = "PATTERN")]
    pub user: Option<String>,

    /// Only user agents matching this.
    #[arg(long, value_name = "PATTERN")]
    pub agent: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ReapArgs {
    #[command(flatten)]
    pub flags: Flags,

    /// Terminate the candidates (after listing again to confirm them);
    /// without it nothing is terminated.
    #[arg(long)]
    pub apply: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Every flag of `start` and `once`. Environment variable names are the
/// original exporter's where it had one. `Debug` shows the password as
/// `<redacted>` (it is a [`Secret`]).
#[derive(Debug, Clone, Default, Args)]
pub struct Flags {
    /// YAML configuration file; flags and environment variables override it.
    #[arg(long, env = "CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Path to the build cluster kubeconfig (jobs' ci-op namespaces and
    /// secrets). Without it: the in-cluster service account in a pod, else
    /// the usual kubeconfig lookup.
    #[arg(
        long,
        visible_alias = "build-kubeconfig",
        env = "KUBECONFIG",
        value_name = "FILE"
    )]
    pub kubeconfig: Option<PathBuf>,

    /// Kubeconfig of the Prow service cluster: read ProwJobs from its API
    /// instead of deck.
    #[arg(long, env = "PROW_KUBECONFIG", value_name = "FILE")]
    pub prow_kubeconfig: Option<PathBuf>,

    /// Prow deck: a host (https assumed) or a URL with scheme and port
    /// [default: prow.ci.openshift.org].
    #[arg(long, env = "PROW", value_name = "HOST|URL")]
    pub prow: Option<String>,

    /// vSphere hostname (https assumed) or a URL with scheme and port.
    #[arg(long, env = "VSPHERE", value_name = "HOST|URL")]
    pub vsphere: Option<String>,

    /// Username for vSphere.
    #[arg(long, env = "VSPHERE_USER", value_name = "USER")]
    pub vsphere_user: Option<String>,

    /// Password for vSphere (prefer --vsphere-passwd-file: flags show in `ps`).
    #[arg(
        long,
        env = "VSPHERE_PASSWD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub vsphere_passwd: Option<Secret>,

    /// File holding the vSphere password (one trailing newline is ignored).
    #[arg(long, env = "VSPHERE_PASSWD_FILE", value_name = "FILE")]
    pub vsphere_passwd_file: Option<PathBuf>,

    /// User agent of the reporter's own vSphere session
    /// [default: vsphere-ci-session-metrics].
    #[arg(long, env = "VSPHERE_USER_AGENT", value_name = "AGENT")]
    pub vsphere_user_agent: Option<String>,

    /// PEM file of CA certificates trusted for the vCenter.
    #[arg(long, env = "VSPHERE_CA_FILE", value_name = "FILE")]
    pub vsphere_ca_file: Option<PathBuf>,

    /// Do not verify the vCenter's TLS certificate.
    #[arg(long, env = "VSPHERE_INSECURE", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub vsphere_insecure: Option<bool>,

    /// Port of the local /metrics and /healthz endpoint; 0 = no endpoint
    /// [default: 8090].
    #[arg(long, env = "LISTEN_PORT", value_name = "PORT")]
    pub listen_port: Option<u16>,

    /// Address of the local endpoint: an IPv4 or IPv6 literal, brackets
    /// optional [default: [::], every address, IPv4 too].
    #[arg(long, env = "LISTEN_ADDRESS", value_name = "ADDRESS")]
    pub listen_address: Option<String>,

    /// Log level: error, warn, info, debug, trace [default: info].
    #[arg(long, env = "LOG_LEVEL", value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Log format [default: text].
    #[arg(long, env = "LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Time between cycles, e.g. 60s, 5m [default: 60s]. Ignored with --schedule.
    #[arg(long, env = "INTERVAL", value_name = "DURATION")]
    pub interval: Option<String>,

    /// Cron expression for cycles: 5 fields as in crontab and Kubernetes
    /// CronJob, or 6 with seconds first; a duration (e.g. 30s) means that
    /// interval. Overrides --interval.
    #[arg(long, env = "SCHEDULE", value_name = "CRON")]
    pub schedule: Option<String>,

    /// Remote-write URL to push every cycle to (repeatable; the config file
    /// has auth, TLS, tenant and protocol settings).
    #[arg(
        long = "remote-write",
        env = "REMOTE_WRITE",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub remote_write: Vec<String>,

    /// Pushgateway base URL to PUT every cycle to.
    #[arg(long, env = "PUSHGATEWAY", value_name = "URL")]
    pub pushgateway: Option<String>,

    /// Label added to every pushed series, `name=value` (repeatable; over
    /// `external_labels` of the file). An HA pair gives each replica its own,
    /// e.g. `--external-label=replica=$(POD_NAME)` in Kubernetes.
    #[arg(long = "external-label", value_name = "NAME=VALUE")]
    pub external_label: Vec<String>,

    /// Pushgateway job name [default: vsphere-ci-session-metrics].
    #[arg(long, env = "PUSHGATEWAY_JOB", value_name = "JOB")]
    pub pushgateway_job: Option<String>,

    /// Extra Pushgateway grouping label, `name=value` (repeatable).
    #[arg(long = "pushgateway-grouping", value_name = "NAME=VALUE")]
    pub pushgateway_grouping: Vec<String>,

    /// `once` only: file where runs keep what the remote-write targets must
    /// remember (series last sent, cycles not delivered), so series that
    /// ended get stale markers and missed cycles are replayed next run.
    #[arg(long, env = "STATE_FILE", value_name = "FILE")]
    pub state_file: Option<PathBuf>,
}
