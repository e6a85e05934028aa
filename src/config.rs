//! Settings: built-in defaults < YAML file < environment < flags, merged in
//! one place ([`Config::build`]) into a validated [`Config`].
//!
//! Clap already resolves environment against flags (a flag wins), so the merge
//! here only has to put the file under both. A bad setting fails at start
//! with one line naming the flag and its environment variable, or the file and
//! the field, and what is wrong.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::cli::{Flags, LogFormat};
use crate::error::Error;
use crate::kube_client::ContextRule;
use crate::leaks::{self, LeakRules, OrphanReason};
use crate::prow::JobSelector;
use crate::reaper::ReaperConfig;
use crate::schedule::Schedule;
use crate::secret::Secret;
use crate::sink::pushgateway::PushgatewayConfig;
use crate::sink::remote_write::RemoteWriteConfig;
use crate::vcenter::{DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_SESSION_LIMIT, VcenterConfig};

/// The original exporter's defaults.
pub const DEFAULT_PROW: &str = "prow.ci.openshift.org";
pub const DEFAULT_USER_AGENT: &str = "vsphere-ci-session-metrics";
pub const DEFAULT_LISTEN_PORT: u16 = 8090;
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// A session list of a few thousand entries takes vCenter well under a
/// second; 30 s leaves room for a loaded vCenter without letting one stuck
/// call eat a whole 60 s cycle.
pub const DEFAULT_VCENTER_TIMEOUT: Duration = Duration::from_secs(30);
/// deck's job list is tens of MB.
pub const DEFAULT_PROW_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_KUBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the running jobs come from.
#[derive(Debug, Clone, PartialEq)]
pub enum ProwSourceConfig {
    /// deck's `/prowjobs.js` at this base URL.
    Deck { url: Url },
    /// The ProwJob API on the Prow service cluster.
    Api {
        kubeconfig: PathBuf,
        namespace: String,
        /// Also list ProwJobs without the cloud label (cluster-prefix rule).
        list_unlabelled: bool,
    },
}

/// A build cluster whose jobs' CI users are read with its own credentials.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildCluster {
    /// The `spec.cluster` alias of the jobs that run there (e.g. `vsphere02`).
    pub name: String,
    /// `None`: in-cluster service account or the usual kubeconfig lookup.
    pub kubeconfig: Option<PathBuf>,
    /// Which context of `kubeconfig` reaches it.
    pub context: crate::kube_client::ContextRule,
}

/// The validated settings the application runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub vcenters: Vec<VcenterConfig>,
    pub prow: ProwSourceConfig,
    pub selector: JobSelector,
    pub prow_timeout: Duration,
    /// Build cluster used for jobs whose `spec.cluster` has no entry in
    /// `build_clusters` (the only one for the original's command line).
    pub default_build_cluster: BuildCluster,
    pub build_clusters: Vec<BuildCluster>,
    pub kube_timeout: Duration,
    /// 0: no HTTP endpoint.
    pub listen_port: u16,
    /// `None`: `[::]` (dual-stack), or `0.0.0.0` where IPv6 is off.
    pub listen_address: Option<std::net::IpAddr>,
    pub log_level: String,
    pub log_format: LogFormat,
    pub schedule: Schedule,
    pub remote_write: Vec<RemoteWriteConfig>,
    pub external_labels: Vec<(String, String)>,
    pub pushgateway: Option<PushgatewayConfig>,
    /// How leaked sessions are told from a running job's.
    pub leaks: LeakRules,
    /// Which leaked sessions `reap` (and `start` with it enabled) frees.
    pub reaper: ReaperConfig,
    /// `once` only: where runs keep the sinks' state.
    pub state_file: Option<PathBuf>,
}

/// The YAML file, as written by users. Every field is optional; see
/// `config/example.yaml` for a commented example.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// vCenters to list sessions from; `--vsphere` adds one or overrides the
    /// entry with the same host.
    #[serde(default)]
    pub vcenters: Vec<FileVcenter>,
    #[serde(default)]
    pub prow: FileProw,
    /// Build cluster kubeconfig for jobs of clusters not listed below, and
    /// for listed ones without a kubeconfig of their own.
    pub kubeconfig: Option<PathBuf>,
    /// Build clusters by `spec.cluster` alias.
    #[serde(default)]
    pub build_clusters: Vec<FileBuildCluster>,
    /// Per-call deadline on the build clusters' API, e.g. `10s`.
    pub kube_timeout: Option<String>,
    pub listen_port: Option<u16>,
    /// Address of the local endpoint [default: [::]].
    pub listen_address: Option<String>,
    pub log_level: Option<String>,
    pub log_format: Option<LogFormat>,
    /// Time between cycles, e.g. `60s`.
    pub interval: Option<String>,
    /// Cron expression or duration; overrides `interval`.
    pub schedule: Option<String>,
    /// Remote-write targets, in Prometheus's own `remote_write` format.
    #[serde(default)]
    pub remote_write: Vec<RemoteWriteConfig>,
    /// Labels added to every pushed series (e.g. a replica label for HA
    /// deduplication in Mimir or Cortex).
    #[serde(default)]
    pub external_labels: BTreeMap<String, String>,
    pub pushgateway: Option<crate::sink::pushgateway::config::FilePushgateway>,
    /// How sessions are tied to jobs and told leaked.
    #[serde(default)]
    pub leaks: FileLeaks,
    /// Which leaked sessions may be freed.
    #[serde(default)]
    pub reaper: FileReaper,
    /// `once` only: where runs keep the sinks' state (`--state-file`).
    pub state_file: Option<PathBuf>,
}

/// The `leaks:` block.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLeaks {
    /// Regexes of user agents naming their cluster in a group `cluster`;
    /// replaces the default (the CSI driver's `k8s-csi-useragent-<id>`).
    pub cluster_user_agents: Option<Vec<String>>,
    /// Regexes of users never counted as orphaned, matched in full and
    /// case-insensitively against the normalised user name; replaces the
    /// default (vCenter's own solution users).
    pub exclude_users: Option<Vec<String>>,
    /// A session logged in this long before every running job of its user
    /// started is `predates_running_jobs`, e.g. `5m`.
    pub login_grace: Option<String>,
    /// Sessions idle longer than this count in `idle_sessions`, e.g. `1h`.
    pub idle_threshold: Option<String>,
    /// Tie sessions to jobs by their VM's guest IP (keeps a VM map of every
    /// vCenter) [default: true].
    pub vm_attribution: Option<bool>,
}

/// The `reaper:` block.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileReaper {
    /// Run the reaper after each cycle of `start` [default: false].
    pub enabled: Option<bool>,
    /// Terminate in `start`; otherwise only count candidates [default: false].
    pub apply: Option<bool>,
    /// Regexes of the users whose orphaned sessions may be reaped, matched
    /// in full and case-insensitively against the normalised user name
    /// [default: none, so nothing is reaped].
    pub users: Option<Vec<String>>,
    /// Orphan reasons reaped [default: all three].
    pub reasons: Option<Vec<String>>,
    /// Youngest session reaped, by the vCenter's clock [default: 2h].
    pub min_age: Option<String>,
    /// Shortest idle time of a session reaped [default: 1h].
    pub min_idle: Option<String>,
    /// Most sessions terminated per vCenter and run [default: 100].
    pub max_per_run: Option<usize>,
    /// Wait between the listing choosing candidates and the one
    /// confirming them [default: 5s].
    pub recheck_delay: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileVcenter {
    /// Host (https assumed) or URL.
    pub url: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    pub user_agent: Option<String>,
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub insecure: bool,
    /// Per-request deadline, e.g. `30s`.
    pub timeout: Option<String>,
    /// The vCenter's session limit [default: 3000].
    pub session_limit: Option<u64>,
    /// The largest SOAP answer read, in bytes [default: 256 MiB].
    pub max_response_bytes: Option<u64>,
    /// Other host names or addresses the CI files use for this vCenter.
    #[serde(default)]
    pub aliases: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileProw {
    /// deck host or URL.
    pub url: Option<String>,
    /// Read ProwJobs from this cluster's API instead of deck.
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of the ProwJobs [default: ci].
    pub namespace: Option<String>,
    /// Label `ci-operator.openshift.io/cloud` value of vSphere jobs [default: vsphere].
    pub cloud: Option<String>,
    /// `spec.cluster` prefix for jobs without that label [default: vsphere].
    pub cluster_prefix: Option<String>,
    /// With `kubeconfig`: also list ProwJobs without the cloud label, for the
    /// `cluster_prefix` rule. Off by default, since that lists nearly every
    /// ProwJob of the namespace each cycle (deck always applies both rules).
    #[serde(default)]
    pub list_unlabelled: bool,
    /// Deadline of one job listing, e.g. `60s`.
    pub timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBuildCluster {
    pub name: String,
    /// A kubeconfig of its own (its current context is used unless
    /// `context` says otherwise).
    pub kubeconfig: Option<PathBuf>,
    /// The context to use; without a kubeconfig of its own, the shared one
    /// must then have a context named like the cluster.
    pub context: Option<String>,
}

impl Config {
    /// Read the file named by `--config` (if any) and merge it with the flags.
    pub fn build(flags: &Flags) -> Result<Config, Error> {
        let file = match &flags.config {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Error::Config(format!(
                        "--config (CONFIG) {}: cannot read: {e}",
                        path.display()
                    ))
                })?;
                serde_yaml::from_str(&text)
                    .map_err(|e| Error::Config(format!("config file {}: {e}", path.display())))?
            }
        };
        let origin = flags
            .config
            .as_deref()
            .map(|p| format!("config file {}", p.display()))
            .unwrap_or_default();
        merge(flags, file, &origin)
    }
}

/// Merge flags (already resolved against the environment by clap) over the
/// file over the defaults, and validate. Pure apart from reading password
/// files, so it is table-tested below.
pub fn merge(flags: &Flags, file: FileConfig, origin: &str) -> Result<Config, Error> {
    let at = |field: &str| format!("{origin}: {field}");
    let (leaks, vm_attribution) = leak_rules(&file.leaks, &at)?;
    let reaper = reaper_config(&file.reaper, &at)?;
    let mut vcenters = vcenters_config(flags, &file, &at)?;
    for vc in &mut vcenters {
        vc.vm_map = vm_attribution;
    }
    let (prow, selector, prow_timeout) = prow_config(flags, &file.prow, &at)?;
    let (default_build_cluster, build_clusters, kube_timeout) =
        build_clusters_config(flags, &file, &at)?;
    let schedule = schedule_config(flags, &file, &at)?;
    let log_level = log_level_config(flags, &file)?;
    let listen_address = listen_address_config(flags, &file, &at)?;
    let remote_write = remote_write_config(flags, file.remote_write)?;
    let pushgateway = pushgateway_config(flags, file.pushgateway, origin)?;
    let external_labels = external_labels_config(flags, file.external_labels, &at)?;
    Ok(Config {
        vcenters,
        prow,
        selector,
        prow_timeout,
        default_build_cluster,
        build_clusters,
        kube_timeout,
        listen_port: flags
            .listen_port
            .or(file.listen_port)
            .unwrap_or(DEFAULT_LISTEN_PORT),
        listen_address,
        log_level,
        log_format: flags
            .log_format
            .or(file.log_format)
            .unwrap_or(LogFormat::Text),
        schedule,
        remote_write,
        external_labels,
        pushgateway,
        leaks,
        reaper,
        state_file: flags.state_file.clone().or(file.state_file),
    })
}

/// The vCenters: the file's entries, then the one from the flags replacing
/// the entry of the same host or added after them; hosts and aliases unique.
fn vcenters_config(
    flags: &Flags,
    file: &FileConfig,
    at: &dyn Fn(&str) -> String,
) -> Result<Vec<VcenterConfig>, Error> {
    let mut vcenters = Vec::new();
    for (i, entry) in file.vcenters.iter().enumerate() {
        let field = |name: &str| at(&format!("vcenters[{i}].{name}"));
        vcenters.push(vcenter_from_file(entry, &field)?);
    }
    if let Some(vsphere) = &flags.vsphere {
        let url = parse_host_or_url(vsphere, "https").map_err(|e| {
            Error::Config(format!(
                "--vsphere (VSPHERE) {:?}: {e}",
                redact_userinfo(vsphere)
            ))
        })?;
        let host = host_label(&url);
        let existing = vcenters.iter().position(|v: &VcenterConfig| v.host == host);
        let base = existing.map(|i| vcenters.remove(i));
        let username = flags
            .vsphere_user
            .clone()
            .or_else(|| base.as_ref().map(|b| b.username.clone()))
            .filter(|u| !u.is_empty())
            .ok_or_else(|| {
                Error::Config("--vsphere-user (VSPHERE_USER) is required with --vsphere".into())
            })?;
        let password_file = match (&flags.vsphere_passwd, &flags.vsphere_passwd_file) {
            (None, Some(path)) => Some(path.clone()),
            (None, None) => base.as_ref().and_then(|b| b.password_file.clone()),
            _ => None,
        };
        let password = match (&flags.vsphere_passwd, &flags.vsphere_passwd_file) {
            (Some(_), Some(_)) => {
                return Err(Error::Config(
                    "--vsphere-passwd (VSPHERE_PASSWD) and --vsphere-passwd-file (VSPHERE_PASSWD_FILE) exclude each other".into(),
                ));
            }
            (Some(p), None) => p.clone(),
            (None, Some(path)) => read_secret(path, "--vsphere-passwd-file (VSPHERE_PASSWD_FILE)")?,
            (None, None) => base
                .as_ref()
                .map(|b| b.password.clone())
                .unwrap_or_default(),
        };
        if password.is_empty() {
            return Err(Error::Config(
                "--vsphere-passwd (VSPHERE_PASSWD) or --vsphere-passwd-file (VSPHERE_PASSWD_FILE) is required with --vsphere".into(),
            ));
        }
        vcenters.push(VcenterConfig {
            url,
            host,
            username,
            password,
            user_agent: flags
                .vsphere_user_agent
                .clone()
                .or_else(|| base.as_ref().map(|b| b.user_agent.clone()))
                .unwrap_or_else(|| DEFAULT_USER_AGENT.to_string()),
            ca_file: flags
                .vsphere_ca_file
                .clone()
                .or_else(|| base.as_ref().and_then(|b| b.ca_file.clone())),
            insecure: flags
                .vsphere_insecure
                .or(base.as_ref().map(|b| b.insecure))
                .unwrap_or(false),
            timeout: base
                .as_ref()
                .map(|b| b.timeout)
                .unwrap_or(DEFAULT_VCENTER_TIMEOUT),
            password_file,
            login_backoff: Default::default(),
            session_limit: base
                .as_ref()
                .map_or(DEFAULT_SESSION_LIMIT, |b| b.session_limit),
            max_response_bytes: base
                .as_ref()
                .map_or(DEFAULT_MAX_RESPONSE_BYTES, |b| b.max_response_bytes),
            aliases: base.map(|b| b.aliases).unwrap_or_default(),
            vm_map: true,
        });
    } else if flags.vsphere_user.is_some() || flags.vsphere_passwd.is_some() {
        return Err(Error::Config(
            "--vsphere (VSPHERE) is required: the vCenter host whose sessions to list".into(),
        ));
    }
    if vcenters.is_empty() {
        return Err(Error::Config(
            "--vsphere (VSPHERE) is required (or vcenters in the --config file): the vCenter host whose sessions to list".into(),
        ));
    }
    // The reporter's user agent is its own, whichever vCenter: the flag
    // overrides every entry of the file (an HA replica names itself).
    if let Some(agent) = &flags.vsphere_user_agent {
        for vc in &mut vcenters {
            vc.user_agent = agent.clone();
        }
    }
    if let Some(ca) = flags.vsphere_ca_file.as_ref().filter(|p| !p.is_file()) {
        return Err(Error::Config(format!(
            "--vsphere-ca-file (VSPHERE_CA_FILE) {}: no such file",
            ca.display()
        )));
    }
    let mut hosts = std::collections::BTreeSet::new();
    for vc in &vcenters {
        if !hosts.insert(vc.host.as_str()) {
            return Err(Error::Config(format!(
                "{}: vCenter {} is listed twice",
                at("vcenters"),
                vc.host
            )));
        }
    }
    // An alias naming two vCenters would route a CI user to either.
    for vc in &vcenters {
        for alias in &vc.aliases {
            if !hosts.insert(alias.as_str()) {
                return Err(Error::Config(format!(
                    "{}: alias {alias} of vCenter {} names another vCenter or is listed twice",
                    at("vcenters[].aliases"),
                    vc.host
                )));
            }
        }
    }
    Ok(vcenters)
}

/// Where the running jobs come from, which count, and the listing's bound.
fn prow_config(
    flags: &Flags,
    file: &FileProw,
    at: &dyn Fn(&str) -> String,
) -> Result<(ProwSourceConfig, JobSelector, Duration), Error> {
    let selector = JobSelector {
        cloud: file
            .cloud
            .clone()
            .unwrap_or_else(|| JobSelector::default().cloud),
        cluster_prefix: file
            .cluster_prefix
            .clone()
            .unwrap_or_else(|| JobSelector::default().cluster_prefix),
    };
    let prow_kubeconfig = flags.prow_kubeconfig.clone().or(file.kubeconfig.clone());
    let prow = match prow_kubeconfig {
        Some(kubeconfig) => ProwSourceConfig::Api {
            kubeconfig,
            namespace: file.namespace.clone().unwrap_or_else(|| "ci".to_string()),
            list_unlabelled: file.list_unlabelled,
        },
        None => {
            let raw = flags
                .prow
                .clone()
                .or(file.url.clone())
                .unwrap_or_else(|| DEFAULT_PROW.to_string());
            let source = if flags.prow.is_some() {
                "--prow (PROW)".to_string()
            } else {
                at("prow.url")
            };
            let url = parse_host_or_url(&raw, "https")
                .map_err(|e| Error::Config(format!("{source} {:?}: {e}", redact_userinfo(&raw))))?;
            ProwSourceConfig::Deck { url }
        }
    };
    let prow_timeout = duration_or(&file.timeout, DEFAULT_PROW_TIMEOUT, &at("prow.timeout"))?;

    Ok((prow, selector, prow_timeout))
}

/// The default build cluster, the named ones, and the API call bound.
fn build_clusters_config(
    flags: &Flags,
    file: &FileConfig,
    at: &dyn Fn(&str) -> String,
) -> Result<(BuildCluster, Vec<BuildCluster>, Duration), Error> {
    let default_build_cluster = BuildCluster {
        name: "build".to_string(),
        kubeconfig: flags.kubeconfig.clone().or(file.kubeconfig.clone()),
        context: ContextRule::NamedOrCurrent,
    };
    let mut build_clusters = Vec::new();
    for (i, c) in file.build_clusters.iter().enumerate() {
        if c.name.is_empty() {
            return Err(Error::Config(format!(
                "{}: must not be empty",
                at(&format!("build_clusters[{i}].name"))
            )));
        }
        // With a kubeconfig of its own, a build cluster uses that file's
        // current context (or the one it names). Without, it shares the
        // default kubeconfig and needs a context there: named in the entry,
        // or named like the cluster. Falling back to the shared current
        // context would look its jobs up on the wrong cluster.
        let context = match (&c.context, &c.kubeconfig) {
            (Some(name), _) => ContextRule::Named(name.clone()),
            (None, Some(_)) => ContextRule::Current,
            (None, None) => ContextRule::Named(c.name.clone()),
        };
        build_clusters.push(BuildCluster {
            name: c.name.clone(),
            kubeconfig: c
                .kubeconfig
                .clone()
                .or_else(|| default_build_cluster.kubeconfig.clone()),
            context,
        });
    }
    let kube_timeout = duration_or(
        &file.kube_timeout,
        DEFAULT_KUBE_TIMEOUT,
        &at("kube_timeout"),
    )?;

    Ok((default_build_cluster, build_clusters, kube_timeout))
}

/// `--schedule` > `--interval` > the file's schedule > the file's interval.
fn schedule_config(
    flags: &Flags,
    file: &FileConfig,
    at: &dyn Fn(&str) -> String,
) -> Result<Schedule, Error> {
    Ok(if let Some(expr) = &flags.schedule {
        Schedule::parse(expr)?
    } else if flags.interval.is_none() && file.schedule.is_some() {
        let expr = file.schedule.as_deref().unwrap_or_default();
        Schedule::parse(expr).map_err(|e| Error::Config(format!("{}: {e}", at("schedule"))))?
    } else {
        let interval = match &flags.interval {
            Some(raw) => parse_duration(raw)
                .map_err(|e| Error::Config(format!("--interval (INTERVAL) {raw:?}: {e}")))?,
            None => duration_or(&file.interval, DEFAULT_INTERVAL, &at("interval"))?,
        };
        if interval.is_zero() {
            let source = if flags.interval.is_some() {
                "--interval (INTERVAL)".to_string()
            } else {
                at("interval")
            };
            return Err(Error::Config(format!("{source} must be greater than 0")));
        }
        Schedule::Interval(interval)
    })
}

/// `--listen-address` or the file's `listen_address`, as an IP literal.
fn listen_address_config(
    flags: &Flags,
    file: &FileConfig,
    at: &dyn Fn(&str) -> String,
) -> Result<Option<std::net::IpAddr>, Error> {
    let (raw, source) = match (&flags.listen_address, &file.listen_address) {
        (Some(raw), _) => (raw, "--listen-address (LISTEN_ADDRESS)".to_string()),
        (None, Some(raw)) => (raw, at("listen_address")),
        (None, None) => return Ok(None),
    };
    let literal = raw.trim().trim_start_matches('[').trim_end_matches(']');
    literal.parse().map(Some).map_err(|_| {
        Error::Config(format!(
            "{source} {raw:?}: not an IP address (e.g. 0.0.0.0, 127.0.0.1, [::])"
        ))
    })
}

fn log_level_config(flags: &Flags, file: &FileConfig) -> Result<String, Error> {
    let log_level = flags
        .log_level
        .clone()
        .or(file.log_level.clone())
        .unwrap_or_else(|| "info".to_string());
    if !["error", "warn", "info", "debug", "trace"]
        .contains(&log_level.to_ascii_lowercase().as_str())
    {
        return Err(Error::Config(format!(
            "--log-level (LOG_LEVEL) {log_level:?}: expected one of error, warn, info, debug, trace"
        )));
    }

    Ok(log_level)
}

/// The file's remote-write targets and the `--remote-write` URLs, each
/// checked, their target names distinct.
fn remote_write_config(
    flags: &Flags,
    from_file: Vec<RemoteWriteConfig>,
) -> Result<Vec<RemoteWriteConfig>, Error> {
    let mut remote_write = from_file;
    for url in &flags.remote_write {
        if remote_write.iter().any(|rw| rw.url.as_str() == url) {
            continue;
        }
        let entry: RemoteWriteConfig = serde_json::from_value(serde_json::json!({ "url": url }))
            .map_err(|e| {
                Error::Config(format!(
                    "--remote-write (REMOTE_WRITE) {}: {e}",
                    crate::sink::remote_write::config::redact_url(url)
                ))
            })?;
        remote_write.push(entry);
    }
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    for (i, rw) in remote_write.iter().enumerate() {
        // The URL may carry credentials (that is one of the errors).
        let url = crate::sink::remote_write::config::redact_url(&rw.url);
        rw.validate()
            .map_err(|e| Error::Config(format!("remote_write[{i}] ({url}): {e}")))?;
        // Self-metrics are labelled by target name: two alike would make
        // duplicate series, which a Pushgateway refuses outright.
        let name = rw.target_name();
        if let Some(first) = names.insert(name.clone(), i) {
            return Err(Error::Config(format!(
                "remote_write[{i}] ({url}): target name {name:?} is remote_write[{first}]'s too; \
                 targets with the same URL (two tenants, say) need a distinct `name` each"
            )));
        }
    }

    Ok(remote_write)
}

/// External labels: empty values dropped, names valid.
/// The file's `external_labels`, then each `--external-label` over the one
/// of the same name.
fn external_labels_config(
    flags: &Flags,
    mut labels: BTreeMap<String, String>,
    at: &dyn Fn(&str) -> String,
) -> Result<Vec<(String, String)>, Error> {
    let check = |name: &str, origin: &str| {
        if !crate::metrics::is_valid_label_name(name) || name == "__name__" {
            return Err(Error::Config(format!(
                "{origin}: {name:?} is not a valid label name"
            )));
        }
        Ok(())
    };
    for name in labels.keys() {
        check(name, &at("external_labels"))?;
    }
    for pair in &flags.external_label {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| Error::Config(format!("--external-label {pair:?}: want NAME=VALUE")))?;
        check(name, "--external-label")?;
        labels.insert(name.to_string(), value.to_string());
    }
    let mut external_labels: Vec<(String, String)> = labels.into_iter().collect();
    external_labels.retain(|(_, v)| !v.is_empty());
    Ok(external_labels)
}

/// A configured list of patterns compiled (it replaces `defaults`), each
/// error naming the entry (`<field>[i]`).
fn compile_patterns(
    patterns: Option<&[String]>,
    defaults: Vec<regex::Regex>,
    field: &str,
    compile: impl Fn(&str) -> Result<regex::Regex, String>,
) -> Result<Vec<regex::Regex>, Error> {
    let Some(patterns) = patterns else {
        return Ok(defaults);
    };
    patterns
        .iter()
        .enumerate()
        .map(|(i, p)| compile(p).map_err(|e| Error::Config(format!("{field}[{i}]: {p:?}: {e}"))))
        .collect()
}

/// The `leaks:` block compiled, and whether VM attribution is on.
fn leak_rules(file: &FileLeaks, at: &dyn Fn(&str) -> String) -> Result<(LeakRules, bool), Error> {
    let defaults = LeakRules::default();
    let cluster_user_agents = compile_patterns(
        file.cluster_user_agents.as_deref(),
        defaults.cluster_user_agents,
        &at("leaks.cluster_user_agents"),
        leaks::cluster_agent_regex,
    )?;
    let exclude_users = compile_patterns(
        file.exclude_users.as_deref(),
        defaults.exclude_users,
        &at("leaks.exclude_users"),
        |p| leaks::user_regex(p).map_err(|e| e.to_string()),
    )?;
    let rules = LeakRules {
        cluster_user_agents,
        exclude_users,
        login_grace: duration_or(
            &file.login_grace,
            defaults.login_grace,
            &at("leaks.login_grace"),
        )?,
        idle_threshold: duration_or(
            &file.idle_threshold,
            defaults.idle_threshold,
            &at("leaks.idle_threshold"),
        )?,
    };
    Ok((rules, file.vm_attribution.unwrap_or(true)))
}

/// The `reaper:` block compiled.
fn reaper_config(file: &FileReaper, at: &dyn Fn(&str) -> String) -> Result<ReaperConfig, Error> {
    let defaults = ReaperConfig::default();
    let users = compile_patterns(
        file.users.as_deref(),
        Vec::new(),
        &at("reaper.users"),
        |p| leaks::user_regex(p).map_err(|e| e.to_string()),
    )?;
    let reasons = match &file.reasons {
        None => defaults.reasons,
        Some(names) => {
            let mut reasons = Vec::new();
            for (i, name) in names.iter().enumerate() {
                let reason = OrphanReason::ALL
                    .into_iter()
                    .find(|r| r.as_str() == name)
                    .ok_or_else(|| {
                        Error::Config(format!(
                            "{}[{i}]: {name:?}: not a reason; use job_ended, no_running_job or predates_running_jobs",
                            at("reaper.reasons")
                        ))
                    })?;
                if !reasons.contains(&reason) {
                    reasons.push(reason);
                }
            }
            reasons
        }
    };
    let max_per_run = file.max_per_run.unwrap_or(defaults.max_per_run);
    if max_per_run == 0 {
        return Err(Error::Config(format!(
            "{}: 0 would never reap; turn the reaper off with enabled: false instead",
            at("reaper.max_per_run")
        )));
    }
    Ok(ReaperConfig {
        enabled: file.enabled.unwrap_or(false),
        apply: file.apply.unwrap_or(false),
        users,
        reasons,
        min_age: duration_or(&file.min_age, defaults.min_age, &at("reaper.min_age"))?,
        min_idle: duration_or(&file.min_idle, defaults.min_idle, &at("reaper.min_idle"))?,
        max_per_run,
        recheck_delay: duration_or(
            &file.recheck_delay,
            defaults.recheck_delay,
            &at("reaper.recheck_delay"),
        )?,
    })
}

fn vcenter_from_file(
    entry: &FileVcenter,
    field: &dyn Fn(&str) -> String,
) -> Result<VcenterConfig, Error> {
    let url = parse_host_or_url(&entry.url, "https").map_err(|e| {
        Error::Config(format!(
            "{}: {:?}: {e}",
            field("url"),
            redact_userinfo(&entry.url)
        ))
    })?;
    let password = match (&entry.password, &entry.password_file) {
        (Some(_), Some(_)) => {
            return Err(Error::Config(format!(
                "{}: password and password_file exclude each other",
                field("password")
            )));
        }
        (Some(p), None) => p.clone(),
        (None, Some(path)) => read_secret(path, &field("password_file"))?,
        (None, None) => Secret::default(),
    };
    let username = entry.username.clone().unwrap_or_default();
    if username.is_empty() {
        return Err(Error::Config(format!("{}: is required", field("username"))));
    }
    if password.is_empty() {
        return Err(Error::Config(format!(
            "{}: a password or password_file is required",
            field("password")
        )));
    }
    if let Some(ca) = entry.ca_file.as_ref().filter(|p| !p.is_file()) {
        return Err(Error::Config(format!(
            "{}: {}: no such file",
            field("ca_file"),
            ca.display()
        )));
    }
    Ok(VcenterConfig {
        host: host_label(&url),
        url,
        username,
        password,
        password_file: entry.password_file.clone(),
        login_backoff: Default::default(),
        user_agent: entry
            .user_agent
            .clone()
            .unwrap_or_else(|| DEFAULT_USER_AGENT.to_string()),
        ca_file: entry.ca_file.clone(),
        insecure: entry.insecure,
        timeout: duration_or(&entry.timeout, DEFAULT_VCENTER_TIMEOUT, &field("timeout"))?,
        session_limit: match entry.session_limit {
            Some(0) => {
                return Err(Error::Config(format!(
                    "{}: must be greater than 0",
                    field("session_limit")
                )));
            }
            Some(limit) => limit,
            None => DEFAULT_SESSION_LIMIT,
        },
        aliases: entry
            .aliases
            .iter()
            .enumerate()
            .map(|(i, alias)| {
                let host = crate::ci::profile::normalize_host(alias);
                if host.is_empty() {
                    Err(Error::Config(format!(
                        "{}: {alias:?} is not a host name or address",
                        field(&format!("aliases[{i}]"))
                    )))
                } else {
                    Ok(host)
                }
            })
            .collect::<Result<_, _>>()?,
        vm_map: true,
        max_response_bytes: match entry.max_response_bytes {
            Some(0) => {
                return Err(Error::Config(format!(
                    "{}: must be greater than 0",
                    field("max_response_bytes")
                )));
            }
            Some(n) => n,
            None => DEFAULT_MAX_RESPONSE_BYTES,
        },
    })
}

/// Pushgateway settings: the file's block (decoded typed), with
/// `--pushgateway`, `--pushgateway-job` and `--pushgateway-grouping` laid
/// over it.
fn pushgateway_config(
    flags: &Flags,
    file: Option<crate::sink::pushgateway::config::FilePushgateway>,
    origin: &str,
) -> Result<Option<PushgatewayConfig>, Error> {
    let mut block = file.unwrap_or_default();
    let raw = match flags.pushgateway.clone().or(block.url.take()) {
        Some(raw) => raw,
        None if block.is_empty()
            && flags.pushgateway_job.is_none()
            && flags.pushgateway_grouping.is_empty() =>
        {
            return Ok(None);
        }
        None if block.is_empty() => {
            return Err(Error::Config(
                "--pushgateway (PUSHGATEWAY) is required with --pushgateway-job and --pushgateway-grouping".into(),
            ));
        }
        None => {
            return Err(Error::Config(format!(
                "{origin}: pushgateway.url (or --pushgateway) is required with the other pushgateway settings"
            )));
        }
    };
    let source = if flags.pushgateway.is_some() {
        "--pushgateway (PUSHGATEWAY)".to_string()
    } else {
        format!("{origin}: pushgateway.url")
    };
    // The URL is never echoed with its user info: that is a password.
    let url = Url::parse(&raw).map_err(|e| {
        Error::Config(format!(
            "{source} {:?}: invalid URL: {e}",
            redact_userinfo(&raw)
        ))
    })?;
    if let Some(job) = &flags.pushgateway_job {
        block.job = Some(job.clone());
    }
    for pair in &flags.pushgateway_grouping {
        let (name, value) = pair.split_once('=').ok_or_else(|| {
            Error::Config(format!(
                "--pushgateway-grouping {pair:?}: expected NAME=VALUE"
            ))
        })?;
        block.grouping.insert(name.to_string(), value.to_string());
    }
    let config = block.into_config(url);
    config
        .validate()
        .map_err(|e| Error::Config(format!("pushgateway: {e}")))?;
    Ok(Some(config))
}

/// `raw` (a host or URL as written) with its user info replaced, for error
/// messages: `https://admin:pw@vc/sdk` gives `https://<redacted>@vc/sdk`.
/// Works on text that does not parse as a URL too.
pub fn redact_userinfo(raw: &str) -> String {
    let (scheme, rest) = match raw.find("://") {
        Some(i) => raw.split_at(i + 3),
        None => ("", raw),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}<redacted>@{}", &rest[at + 1..]),
        None => raw.to_string(),
    }
}

fn read_secret(path: &Path, what: &str) -> Result<Secret, Error> {
    Secret::from_file(path)
        .map_err(|e| Error::Config(format!("{what} {}: cannot read: {e}", path.display())))
}

fn duration_or(raw: &Option<String>, default: Duration, field: &str) -> Result<Duration, Error> {
    match raw {
        None => Ok(default),
        Some(text) => {
            parse_duration(text).map_err(|e| Error::Config(format!("{field}: {text:?}: {e}")))
        }
    }
}

/// `60s`, `5m`, `1h30m`, or a bare number of seconds as the original's
/// users may pass.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let duration = match text.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(text)
            .map_err(|e| format!("not a duration ({e}); use e.g. 30s, 5m"))?,
    };
    within_a_day(duration)
}

/// The longest duration any setting takes. Longer values are mistakes (a
/// unit typo: `30d` for `30s`) and would overflow time arithmetic or stall
/// a target for days.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

fn within_a_day(duration: Duration) -> Result<Duration, String> {
    if duration > MAX_DURATION {
        return Err(format!(
            "{} is longer than one day (24h), the most any setting takes",
            humantime::format_duration(duration)
        ));
    }
    Ok(duration)
}

/// [`deserialize_duration`] for an optional field (absent: `None`; the
/// struct must be `#[serde(default)]`).
pub fn deserialize_opt_duration<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    deserialize_duration(deserializer).map(Some)
}

/// Serde helper for duration fields of the sinks' blocks: a string as
/// [`parse_duration`] reads it (`30s`, `1m30s`), or a whole number of
/// seconds, which YAML hands over as an integer rather than a string.
pub fn deserialize_duration<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Duration, D::Error> {
    struct DurationVisitor;

    impl serde::de::Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration such as 30s or 1m30s, or a number of seconds")
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Duration, E> {
            parse_duration(text).map_err(|e| E::custom(format!("invalid duration {text:?}: {e}")))
        }

        fn visit_u64<E: serde::de::Error>(self, secs: u64) -> Result<Duration, E> {
            within_a_day(Duration::from_secs(secs))
                .map_err(|e| E::custom(format!("invalid duration {secs}: {e}")))
        }

        fn visit_i64<E: serde::de::Error>(self, secs: i64) -> Result<Duration, E> {
            let secs = u64::try_from(secs)
                .map_err(|_| E::custom(format!("invalid duration {secs}: must not be negative")))?;
            self.visit_u64(secs)
        }
    }

    deserializer.deserialize_any(DurationVisitor)
}

/// A bare host gets `default_scheme`; a URL keeps its scheme and port. A
/// trailing `/sdk` is dropped so both `vc.example.com` and
/// `https://vc.example.com/sdk` name the same endpoint.
pub fn parse_host_or_url(raw: &str, default_scheme: &str) -> Result<Url, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err("must not be empty".to_string());
    }
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("{default_scheme}://{raw}")
    };
    let mut url = Url::parse(&with_scheme).map_err(|e| format!("not a host or URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("scheme {:?} is not http or https", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".to_string());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials; use the user and password settings".to_string());
    }
    let path = url
        .path()
        .trim_end_matches('/')
        .trim_end_matches("/sdk")
        .to_string();
    url.set_path(&path);
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// The `vcenter` label: the URL's host as CI files' servers are normalised
/// (lower case, no port, no trailing dot), so the two always compare equal.
pub fn host_label(url: &Url) -> String {
    crate::ci::profile::normalize_host(url.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> Flags {
        Flags {
            vsphere: Some("vc.example.com".into()),
            vsphere_user: Some("administrator@vsphere.local".into()),
            vsphere_passwd: Some(Secret::new("tops3cret")),
            kubeconfig: Some("mykc".into()),
            ..Flags::default()
        }
    }

    fn yaml(text: &str) -> FileConfig {
        serde_yaml::from_str(text).unwrap()
    }

    #[test]
    fn the_original_command_line_gives_the_original_defaults() {
        let config = merge(&flags(), FileConfig::default(), "").unwrap();
        assert_eq!(config.vcenters.len(), 1);
        let vc = &config.vcenters[0];
        assert_eq!(vc.url.as_str(), "https://vc.example.com/");
        assert_eq!(vc.host, "vc.example.com");
        assert_eq!(vc.user_agent, "vsphere-ci-session-metrics");
        assert!(!vc.insecure);
        assert_eq!(
            config.prow,
            ProwSourceConfig::Deck {
                url: Url::parse("https://prow.ci.openshift.org").unwrap()
            }
        );
        assert_eq!(config.listen_port, 8090);
        assert_eq!(config.log_level, "info");
        assert_eq!(config.schedule, Schedule::Interval(Duration::from_secs(60)));
        assert_eq!(
            config.default_build_cluster.kubeconfig,
            Some(PathBuf::from("mykc"))
        );
        assert!(config.remote_write.is_empty());
        assert!(config.pushgateway.is_none());
    }

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let file = yaml(
            "listen_port: 9000\nlog_level: debug\ninterval: 2m\nprow:\n  url: http://127.0.0.1:1234\n",
        );
        let mut f = flags();
        f.log_level = Some("warn".into());
        let config = merge(&f, file, "config file c.yaml").unwrap();
        assert_eq!(config.listen_port, 9000);
        assert_eq!(config.log_level, "warn");
        assert_eq!(
            config.schedule,
            Schedule::Interval(Duration::from_secs(120))
        );
        assert_eq!(
            config.prow,
            ProwSourceConfig::Deck {
                url: Url::parse("http://127.0.0.1:1234").unwrap()
            }
        );
    }

    #[test]
    fn vsphere_takes_a_host_or_a_url_with_port() {
        let cases = [
            (
                "vc.example.com",
                "https://vc.example.com/",
                "vc.example.com",
            ),
            (
                "http://127.0.0.1:8989",
                "http://127.0.0.1:8989/",
                "127.0.0.1",
            ),
            (
                "https://VC.Example.com/sdk",
                "https://vc.example.com/",
                "vc.example.com",
            ),
        ];
        for (raw, url, host) in cases {
            let parsed = parse_host_or_url(raw, "https").unwrap();
            assert_eq!(parsed.as_str(), url, "{raw}");
            assert_eq!(host_label(&parsed), host, "{raw}");
        }
    }

    #[test]
    fn bad_settings_name_the_flag_and_its_environment_variable() {
        type Change = Box<dyn Fn(&mut Flags)>;
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|f| f.vsphere = None),
                "--vsphere (VSPHERE) is required",
            ),
            (
                Box::new(|f| f.vsphere_user = None),
                "--vsphere-user (VSPHERE_USER) is required",
            ),
            (
                Box::new(|f| f.vsphere_passwd = None),
                "--vsphere-passwd (VSPHERE_PASSWD) or --vsphere-passwd-file",
            ),
            (
                Box::new(|f| f.vsphere = Some("ftp://x".into())),
                "--vsphere (VSPHERE) \"ftp://x\": scheme",
            ),
            (
                Box::new(|f| f.interval = Some("soon".into())),
                "--interval (INTERVAL) \"soon\": not a duration",
            ),
            (
                Box::new(|f| f.interval = Some("0s".into())),
                "--interval (INTERVAL) must be greater than 0",
            ),
            (
                Box::new(|f| f.log_level = Some("loud".into())),
                "--log-level (LOG_LEVEL) \"loud\"",
            ),
            (
                Box::new(|f| f.prow = Some("".into())),
                "--prow (PROW) \"\": must not be empty",
            ),
            (
                Box::new(|f| f.vsphere_passwd_file = Some("/nonexistent/p".into())),
                "exclude each other",
            ),
            (
                Box::new(|f| {
                    f.vsphere_passwd = None;
                    f.vsphere_passwd_file = Some("/nonexistent/p".into());
                }),
                "--vsphere-passwd-file (VSPHERE_PASSWD_FILE) /nonexistent/p: cannot read",
            ),
            (
                Box::new(|f| f.vsphere_ca_file = Some("/nonexistent/ca.pem".into())),
                "--vsphere-ca-file (VSPHERE_CA_FILE) /nonexistent/ca.pem: no such file",
            ),
            (
                Box::new(|f| f.schedule = Some("every day".into())),
                "--schedule",
            ),
            (
                Box::new(|f| f.pushgateway_job = Some("j".into())),
                "--pushgateway (PUSHGATEWAY) is required",
            ),
        ];
        for (change, want) in cases {
            let mut f = flags();
            change(&mut f);
            let err = merge(&f, FileConfig::default(), "")
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "want {want:?} in {err:?}");
            assert!(!err.contains("tops3cret"), "password leaked in {err:?}");
        }
    }

    #[test]
    fn a_password_file_is_read_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "p<&'\"w\n").unwrap();
        let mut f = flags();
        f.vsphere_passwd = None;
        f.vsphere_passwd_file = Some(path);
        let config = merge(&f, FileConfig::default(), "").unwrap();
        assert_eq!(config.vcenters[0].password.expose(), "p<&'\"w");
        assert!(!format!("{config:?}").contains("p<&'"));
    }

    #[test]
    fn file_vcenters_and_the_flag_vcenter_merge_by_host() {
        let file = yaml(
            "vcenters:\n  - url: vc.example.com\n    username: file-user\n    password: filepw\n    timeout: 5s\n  - url: other.example.com\n    username: u2\n    password: p2\n",
        );
        let mut f = flags();
        f.vsphere_user = None;
        f.vsphere_passwd = None;
        let config = merge(&f, file, "config file c.yaml").unwrap();
        let hosts: Vec<&str> = config.vcenters.iter().map(|v| v.host.as_str()).collect();
        assert_eq!(hosts, ["other.example.com", "vc.example.com"]);
        let vc = &config.vcenters[1];
        assert_eq!(vc.username, "file-user");
        assert_eq!(vc.password.expose(), "filepw");
        assert_eq!(vc.timeout, Duration::from_secs(5));
    }

    #[test]
    fn unknown_file_fields_are_refused_with_the_field_name() {
        let err = serde_yaml::from_str::<FileConfig>("vcenter: x\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `vcenter`"), "{err}");
    }

    #[test]
    fn a_prow_kubeconfig_switches_to_the_prowjob_api() {
        let mut f = flags();
        f.prow_kubeconfig = Some("prow-kc".into());
        let config = merge(&f, FileConfig::default(), "").unwrap();
        assert_eq!(
            config.prow,
            ProwSourceConfig::Api {
                kubeconfig: "prow-kc".into(),
                namespace: "ci".into(),
                list_unlabelled: false,
            }
        );
    }

    #[test]
    fn remote_write_flags_add_targets_once() {
        let file = yaml("remote_write:\n  - url: http://a/api/v1/write\n");
        let mut f = flags();
        f.remote_write = vec![
            "http://a/api/v1/write".into(),
            "http://b/api/v1/write".into(),
        ];
        let config = merge(&f, file, "c").unwrap();
        let urls: Vec<String> = config
            .remote_write
            .iter()
            .map(|r| r.url.to_string())
            .collect();
        assert_eq!(urls, ["http://a/api/v1/write", "http://b/api/v1/write"]);
    }

    #[test]
    fn pushgateway_flags_fill_the_block() {
        let mut f = flags();
        f.pushgateway = Some("http://127.0.0.1:9091".into());
        f.pushgateway_grouping = vec!["instance=ci".into()];
        let config = merge(&f, FileConfig::default(), "").unwrap();
        let pg = config.pushgateway.unwrap();
        assert_eq!(pg.job, "vsphere-ci-session-metrics");
        assert_eq!(pg.grouping.get("instance").map(String::as_str), Some("ci"));
    }

    #[test]
    fn bad_file_vcenters_fail_at_start_naming_the_field() {
        let cases = [
            (
                "vcenters:\n  - url: a.example.com\n    password: p\n",
                "c.yaml: vcenters[0].username: is required",
            ),
            (
                "vcenters:\n  - url: a.example.com\n    username: u\n",
                "c.yaml: vcenters[0].password: a password or password_file is required",
            ),
            (
                "vcenters:\n  - url: a.example.com\n    username: u\n    password: p\n    ca_file: /nonexistent/ca.pem\n",
                "c.yaml: vcenters[0].ca_file: /nonexistent/ca.pem: no such file",
            ),
            (
                "vcenters:\n  - url: a.example.com\n    username: u\n    password: p\n  - url: https://A.example.com:443\n    username: u\n    password: p\n",
                "c.yaml: vcenters: vCenter a.example.com is listed twice",
            ),
            (
                "vcenters:\n  - url: a.example.com\n    username: u\n    password: p\n    session_limit: 0\n",
                "c.yaml: vcenters[0].session_limit: must be greater than 0",
            ),
            (
                "vcenters:\n  - url: a.example.com\n    username: u\n    password: p\n  - url: b.example.com\n    username: u\n    password: p\n    aliases: [A.example.com]\n",
                "c.yaml: vcenters[].aliases: alias a.example.com of vCenter b.example.com names another vCenter or is listed twice",
            ),
            (
                "vcenters:\n  - url: a.example.com\n    username: u\n    password: p\n    aliases: ['']\n",
                "c.yaml: vcenters[0].aliases[0]: \"\" is not a host name or address",
            ),
        ];
        for (text, want) in cases {
            let f = Flags::default();
            let err = merge(&f, yaml(text), "c.yaml").unwrap_err().to_string();
            assert_eq!(err, want);
        }
    }

    #[test]
    fn two_targets_with_one_name_are_refused_and_long_durations_too() {
        let cases = [
            (
                "remote_write:\n  - url: http://mimir/api/v1/push\n    tenant: a\n  - url: http://mimir/api/v1/push\n    tenant: b\n",
                "remote_write[1] (http://mimir/api/v1/push): target name \"http://mimir/api/v1/push\" is remote_write[0]'s too; targets with the same URL (two tenants, say) need a distinct `name` each",
            ),
            (
                "remote_write:\n  - url: http://a/w\n    name: x\n  - url: http://b/w\n    name: x\n",
                "target name \"x\" is remote_write[0]'s too",
            ),
            (
                "remote_write:\n  - url: http://a/w\n    remote_timeout: 30d\n",
                "invalid duration \"30d\": 30days is longer than one day (24h)",
            ),
            (
                "remote_write:\n  - url: http://a/w\n    max_buffered_age: 86401\n",
                "invalid duration 86401: 1day 1s is longer than one day (24h)",
            ),
            (
                "leaks:\n  idle_threshold: 25h\n",
                "c.yaml: leaks.idle_threshold: ",
            ),
            ("interval: 2d\n", "c.yaml: interval: "),
        ];
        let vc = "vcenters:\n  - url: a.example.com\n    username: u\n    password: p\n";
        for (text, want) in cases {
            let result = serde_yaml::from_str::<FileConfig>(&format!("{vc}{text}"))
                .map_err(|e| e.to_string())
                .and_then(|file| {
                    merge(&Flags::default(), file, "c.yaml").map_err(|e| e.to_string())
                });
            let err = result.expect_err(text);
            assert!(err.contains(want), "{text}: want {want:?}, got {err:?}");
        }
        // Distinct names make the same URL fine.
        let file = yaml(&format!(
            "{vc}remote_write:\n  - url: http://mimir/api/v1/push\n    name: a\n  - url: http://mimir/api/v1/push\n    name: b\n"
        ));
        assert_eq!(
            merge(&Flags::default(), file, "c.yaml")
                .unwrap()
                .remote_write
                .len(),
            2
        );
        assert!(parse_duration("24h").is_ok());
    }

    #[test]
    fn user_info_is_redacted_from_every_url_in_every_message() {
        let cases = [
            (
                "https://admin:pw@vc.example.com/sdk",
                "https://<redacted>@vc.example.com/sdk",
            ),
            ("admin:pw@vc.example.com", "<redacted>@vc.example.com"),
            (
                "https://a%40vsphere.local:p@ss@vc:443",
                "https://<redacted>@vc:443",
            ),
            ("https://vc.example.com/a@b", "https://vc.example.com/a@b"),
            ("vc.example.com", "vc.example.com"),
        ];
        for (raw, want) in cases {
            assert_eq!(redact_userinfo(raw), want, "{raw}");
        }
        let secret = "tops3cret";
        let mut f = flags();
        f.vsphere = Some(format!(
            "https://administrator%40vsphere.local:{secret}@vc.example.com"
        ));
        let err = merge(&f, FileConfig::default(), "")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--vsphere (VSPHERE)"), "{err}");
        assert!(!err.contains(secret), "{err}");
        let mut f = flags();
        f.prow = Some(format!("https://u:{secret}@deck.example.com"));
        let err = merge(&f, FileConfig::default(), "")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--prow (PROW)") && !err.contains(secret),
            "{err}"
        );
        for text in [
            format!("prow:\n  url: https://u:{secret}@deck\n"),
            format!(
                "vcenters:\n  - url: https://u:{secret}@vc\n    username: u\n    password: p\n"
            ),
            format!("pushgateway:\n  url: http://u:{secret}@pg:9091\n"),
            format!("pushgateway:\n  url: http://u:{secret}@/x\n"),
        ] {
            let err = merge(&flags(), yaml(&text), "c.yaml")
                .unwrap_err()
                .to_string();
            assert!(!err.contains(secret), "{text}: {err}");
        }
    }

    #[test]
    fn secrets_written_as_numbers_are_taken_as_text_and_never_shown() {
        let file = yaml(
            "pushgateway:\n  url: http://pg:9091\n  bearer_token: 8812345671\n\
             remote_write:\n  - url: http://rw/api/v1/write\n    basic_auth: {username: u, password: 20240101}\n",
        );
        let config = merge(&flags(), file, "c.yaml").unwrap();
        let pg = config.pushgateway.as_ref().unwrap();
        assert_eq!(pg.bearer_token.as_ref().unwrap().expose(), "8812345671");
        let rw = &config.remote_write[0];
        assert_eq!(
            rw.basic_auth
                .as_ref()
                .unwrap()
                .password
                .as_ref()
                .unwrap()
                .expose(),
            "20240101"
        );
        let shown = format!("{config:?}");
        for secret in ["8812345671", "20240101", "secret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }

    #[test]
    fn the_listen_address_is_an_ip_literal_with_or_without_brackets() {
        for (raw, want) in [("[::]", "::"), ("::1", "::1"), ("0.0.0.0", "0.0.0.0")] {
            let mut f = flags();
            f.listen_address = Some(raw.into());
            let config = merge(&f, FileConfig::default(), "").unwrap();
            assert_eq!(config.listen_address.unwrap().to_string(), want);
        }
        assert_eq!(
            merge(&flags(), FileConfig::default(), "")
                .unwrap()
                .listen_address,
            None
        );
        let mut f = flags();
        f.listen_address = Some("localhost".into());
        let err = merge(&f, FileConfig::default(), "")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--listen-address (LISTEN_ADDRESS) \"localhost\""),
            "{err}"
        );
    }

    #[test]
    fn bad_leak_settings_fail_at_start_naming_the_field() {
        let vc = "vcenters:\n  - url: a.example.com\n    username: u\n    password: p\n";
        let cases = [
            (
                "leaks:\n  cluster_user_agents: ['^k8s-csi-useragent-(.+)$']\n",
                "c.yaml: leaks.cluster_user_agents[0]: \"^k8s-csi-useragent-(.+)$\": has no group named `cluster`, e.g. (?P<cluster>...)",
            ),
            (
                "leaks:\n  exclude_users: ['ok', 'vpxd-(']\n",
                "c.yaml: leaks.exclude_users[1]: \"vpxd-(\": ",
            ),
            (
                "leaks:\n  login_grace: soon\n",
                "c.yaml: leaks.login_grace: ",
            ),
            ("leaks:\n  idle: 1h\n", "unknown field `idle`"),
            (
                "reaper:\n  reasons: [job_ended, leaked]\n",
                "c.yaml: reaper.reasons[1]: \"leaked\": not a reason; use job_ended, no_running_job or predates_running_jobs",
            ),
            (
                "reaper:\n  users: ['ci_user_(']\n",
                "c.yaml: reaper.users[0]: \"ci_user_(\": ",
            ),
            (
                "reaper:\n  max_per_run: 0\n",
                "c.yaml: reaper.max_per_run: 0 would never reap",
            ),
            ("reaper:\n  min_idle: 2d\n", "c.yaml: reaper.min_idle: "),
            ("reaper:\n  dry_run: false\n", "unknown field `dry_run`"),
        ];
        for (text, want) in cases {
            let result = serde_yaml::from_str::<FileConfig>(&format!("{vc}{text}"))
                .map_err(|e| e.to_string())
                .and_then(|file| {
                    merge(&Flags::default(), file, "c.yaml").map_err(|e| e.to_string())
                });
            let err = result.expect_err(text);
            assert!(err.contains(want), "{text}: want {want:?}, got {err:?}");
        }
    }

    #[test]
    fn the_user_agent_flag_names_the_reporter_on_every_vcenter_of_the_file() {
        let file = yaml(
            "vcenters:\n  - url: a.example.com\n    username: u\n    password: p\n  - url: b.example.com\n    username: u\n    password: p\n    user_agent: from-file\n",
        );
        let flags = Flags {
            vsphere_user_agent: Some("vsphere-ci-session-metrics/pod-a".into()),
            ..Flags::default()
        };
        let config = merge(&flags, file, "c.yaml").unwrap();
        let agents: Vec<&str> = config
            .vcenters
            .iter()
            .map(|v| v.user_agent.as_str())
            .collect();
        assert_eq!(agents, ["vsphere-ci-session-metrics/pod-a"; 2]);
    }

    #[test]
    fn external_label_flags_add_to_the_file_and_win_over_it() {
        let file = yaml(
            "vcenters:\n  - url: a.example.com\n    username: u\n    password: p\nexternal_labels: {cluster: ci, replica: x}\n",
        );
        let flags = Flags {
            external_label: vec![
                "replica=vsphere-ci-session-metrics-7d9f-abcde".into(),
                "zone=east".into(),
            ],
            ..Flags::default()
        };
        let config = merge(&flags, file, "c.yaml").unwrap();
        assert_eq!(
            config.external_labels,
            [
                ("cluster".to_string(), "ci".to_string()),
                (
                    "replica".to_string(),
                    "vsphere-ci-session-metrics-7d9f-abcde".to_string()
                ),
                ("zone".to_string(), "east".to_string()),
            ]
        );
        for (bad, want) in [
            ("replica", "want NAME=VALUE"),
            ("0x=1", "is not a valid label name"),
        ] {
            let flags = Flags {
                external_label: vec![bad.into()],
                ..Flags::default()
            };
            let file =
                yaml("vcenters:\n  - url: a.example.com\n    username: u\n    password: p\n");
            let err = merge(&flags, file, "c.yaml").unwrap_err().to_string();
            assert!(
                err.contains("--external-label") && err.contains(want),
                "{err}"
            );
        }
    }

    #[test]
    fn the_reaper_reaps_nothing_by_default_and_its_users_match_in_full_in_any_case() {
        let config = merge(
            &Flags::default(),
            yaml("vcenters:\n  - url: a.example.com\n    username: u\n    password: p\n"),
            "c.yaml",
        )
        .unwrap();
        let r = &config.reaper;
        assert!(!r.enabled && !r.apply && r.users.is_empty());
        assert_eq!(r.reasons, crate::leaks::OrphanReason::ALL);
        assert_eq!(
            (r.min_age, r.min_idle),
            (Duration::from_secs(7200), Duration::from_secs(3600))
        );
        assert_eq!(r.max_per_run, 100);
        let file = yaml(
            "vcenters:\n  - url: a.example.com\n    username: u\n    password: p\nreaper:\n  enabled: true\n  users: ['ci_user_[0-9]+']\n  reasons: [job_ended, job_ended]\n  recheck_delay: 0s\n",
        );
        let r = merge(&Flags::default(), file, "c.yaml").unwrap().reaper;
        assert!(r.enabled && !r.apply);
        assert!(r.users[0].is_match("CI_USER_07"));
        assert!(!r.users[0].is_match("ci_user_07-admin"));
        assert_eq!(r.reasons, [crate::leaks::OrphanReason::JobEnded]);
        assert_eq!(r.recheck_delay, Duration::ZERO);
    }

    #[test]
    fn leak_settings_replace_the_defaults_and_vm_attribution_reaches_every_vcenter() {
        let file = yaml(
            "vcenters:\n  - url: a.example.com\n    username: u\n    password: p\n    aliases: ['https://VC-A.example.com:443/sdk']\nleaks:\n  exclude_users: ['svc-.*']\n  login_grace: 10s\n  vm_attribution: false\n",
        );
        let config = merge(&Flags::default(), file, "c.yaml").unwrap();
        assert_eq!(config.vcenters[0].aliases, ["vc-a.example.com"]);
        assert!(!config.vcenters[0].vm_map);
        assert_eq!(config.leaks.login_grace, Duration::from_secs(10));
        assert_eq!(config.leaks.exclude_users.len(), 1);
        assert!(config.leaks.exclude_users[0].is_match("SVC-backup"));
        assert!(!config.leaks.exclude_users[0].is_match("vpxd-1"));
        assert_eq!(
            config.leaks.idle_threshold,
            crate::leaks::DEFAULT_IDLE_THRESHOLD
        );
    }

    #[test]
    fn build_clusters_without_a_kubeconfig_use_the_default_one() {
        let file = yaml(
            "build_clusters:\n  - name: vsphere02\n  - name: vsphere03\n    kubeconfig: other\n",
        );
        let config = merge(&flags(), file, "c").unwrap();
        let kubeconfigs: Vec<Option<PathBuf>> = config
            .build_clusters
            .iter()
            .map(|c| c.kubeconfig.clone())
            .collect();
        assert_eq!(kubeconfigs, [Some("mykc".into()), Some("other".into())]);
    }

    #[test]
    fn schedule_takes_a_cron_expression_or_a_duration() {
        let mut f = flags();
        f.schedule = Some("30s".into());
        let config = merge(&f, FileConfig::default(), "").unwrap();
        assert_eq!(config.schedule, Schedule::Interval(Duration::from_secs(30)));
        f.schedule = Some("*/5 * * * *".into());
        let config = merge(&f, FileConfig::default(), "").unwrap();
        assert!(matches!(config.schedule, Schedule::Cron(_)));
    }

    #[test]
    fn the_flags_debug_output_hides_the_password() {
        let f = flags();
        let debug = format!("{f:?}");
        assert!(!debug.contains("tops3cret"), "{debug}");
    }
}
