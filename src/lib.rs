//! vsphere-ci-session-metrics: which OpenShift CI job holds the sessions of a
//! shared vCenter.
//!
//! Each cycle lists the vCenter's sessions, the running vSphere Prow jobs and
//! the CI user each job logs in as, joins them and publishes one [`Snapshot`]
//! to every sink. Modules, in the order data flows through them:
//!
//! - [`cli`], [`config`]: flags, environment and YAML file merged into one validated `Config`.
//! - [`vcenter`]: SOAP client holding one reused session per vCenter.
//! - [`prow`]: running vSphere jobs from deck (streamed JSON) or the ProwJob API.
//! - [`kube_client`]: Kubernetes clients from a kubeconfig or the in-cluster account.
//! - [`ci`]: job -> ci-op namespace -> CI users, cached while the job runs.
//! - [`correlate`]: the pure join of sessions, jobs and users into metric families.
//! - [`leaks`]: sessions attributed to the job that opened them, and orphaned ones (pure).
//! - [`labels`]: label values a receiver accepts (capped user agents).
//! - [`metrics`]: `Snapshot`, metric families, names and the text format.
//! - [`cycle`]: one gather-correlate-publish round and its self-metrics.
//! - [`sink`]: the local `/metrics`, remote-write and the Pushgateway.
//! - [`http`]: basic auth, TLS settings and the HTTP client shared by the pushing sinks.
//! - [`schedule`]: cron or interval, cycles never overlapping.
//! - [`state_file`]: what `once` keeps between runs (`--state-file`).
//! - [`app`]: run modes (`start`, `once`) and shutdown.
//! - [`error`], [`secret`]: the crate-wide error and the redacting secret type.
//!
//! [`Snapshot`]: metrics::Snapshot

pub mod app;
pub mod ci;
pub mod cli;
pub mod config;
pub mod correlate;
pub mod cycle;
pub mod error;
pub mod http;
pub mod inventory;
pub mod kube_client;
pub mod labels;
pub mod leaks;
pub mod metrics;
pub mod oncall;
pub mod prow;
pub mod reaper;
pub mod report;
pub mod schedule;
pub mod secret;
pub mod sink;
pub mod state_file;
pub mod vcenter;

pub use error::Error;
