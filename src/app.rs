//! Run modes and lifecycle: build the sources and sinks from a [`Config`],
//! then either run cycles on the schedule until shutdown (`start`) or run one
//! cycle (`once`).
//!
//! Shutdown is passed in as a future (SIGTERM/SIGINT in `main`, anything in
//! tests): the schedule stops, a running cycle may finish within
//! [`DRAIN_TIMEOUT`], the sinks send their stale markers, and the reporter
//! logs out of every vCenter so it leaves no session behind.

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::ci::{IdentityResolver, ResolverOptions};
use crate::config::{BuildCluster, Config, ProwSourceConfig};
use crate::cycle::{Cycle, Resolvers, Sources};
use crate::error::Error;
use crate::kube_client::{kube_client, kube_client_with};
use crate::prow::{DeckSource, ProwJobApiSource, ProwSource};
use crate::schedule::run_scheduled;
use crate::sink::Sink;
use crate::sink::pushgateway::PushgatewaySink;
use crate::sink::remote_write::RemoteWriteSink;
use crate::sink::scrape::{self, LatestSnapshot};
use crate::vcenter::VcenterClient;

/// How long a cycle running at shutdown may take to finish. Kubernetes gives
/// a pod 30 s between SIGTERM and SIGKILL; this leaves time for the stale
/// markers and the vCenter logout after it.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// Which subcommand runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Start,
    Once,
}

/// Build everything the cycles need. Fails on what can be checked before any
/// network call: unreadable kubeconfigs, bad TLS files, invalid sink settings.
pub async fn build_cycle(config: &Config) -> Result<(Cycle, Arc<LatestSnapshot>), Error> {
    let mut vcenters = Vec::new();
    for vc in &config.vcenters {
        vcenters.push(Arc::new(VcenterClient::new(vc.clone())?));
    }

    let prow = match &config.prow {
        ProwSourceConfig::Deck { url } => ProwSource::Deck(DeckSource::new(
            url.clone(),
            config.prow_timeout,
            config.selector.clone(),
        )?),
        ProwSourceConfig::Api {
            kubeconfig,
            namespace,
            list_unlabelled,
        } => {
            let client = kube_client(Some(kubeconfig), "prow")
                .await
                .map_err(|e| Error::Config(format!("--prow-kubeconfig (PROW_KUBECONFIG): {e}")))?;
            ProwSource::Api(
                ProwJobApiSource::new(
                    client,
                    namespace.clone(),
                    config.selector.clone(),
                    config.prow_timeout,
                )
                .with_unlabelled(*list_unlabelled),
            )
        }
    };

    let options = ResolverOptions {
        call_timeout: config.kube_timeout,
        ..ResolverOptions::default()
    };
    // A kubeconfig that cannot be loaded is a bad setting: it fails at start
    // (exit 2) naming where it came from.
    let resolver = |cluster: BuildCluster, origin: String| {
        let options = options.clone();
        async move {
            let client = kube_client_with(
                cluster.kubeconfig.as_deref(),
                &cluster.name,
                cluster.context.clone(),
            )
            .await
            .map_err(|e| Error::Config(format!("{origin}: {e}")))?;
            Ok::<_, Error>(Arc::new(IdentityResolver::new(
                client,
                cluster.name,
                options,
            )))
        }
    };
    let default = resolver(
        config.default_build_cluster.clone(),
        "--kubeconfig (KUBECONFIG)".to_string(),
    )
    .await?;
    let mut by_cluster = HashMap::new();
    for (i, cluster) in config.build_clusters.iter().enumerate() {
        let origin = format!("build_clusters[{i}] ({})", cluster.name);
        by_cluster.insert(
            cluster.name.clone(),
            resolver(cluster.clone(), origin).await?,
        );
    }

    let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
    for rw in &config.remote_write {
        sinks.push(Arc::new(RemoteWriteSink::new(
            rw.clone(),
            config.external_labels.clone(),
        )?));
    }
    if let Some(pg) = &config.pushgateway {
        sinks.push(Arc::new(PushgatewaySink::new(pg.clone())?));
    }

    let latest = Arc::new(LatestSnapshot::default());
    let (vcenter_timeout, _) = vcenter_budgets(config);
    let sources = Sources {
        vcenters,
        vcenter_timeout,
        prow,
        prow_timeout: config.prow_timeout,
        // The longest chain of calls for one job: namespace list, pod list,
        // log, secret.
        ci_timeout: config.kube_timeout * 4,
        resolvers: Resolvers {
            default,
            by_cluster,
        },
        leaks: config.leaks.clone(),
        reaper: config.reaper.clone(),
    };
    let cycle = Cycle::new(sources, sinks, latest.clone(), Arc::new(AtomicU64::new(0)));
    Ok((cycle, latest))
}

/// Run in `mode` until done (`once`) or until `shutdown` resolves (`start`).
/// Returns the process exit code: 0 on success, 1 when `once` saw a failure.
pub async fn run(
    config: Config,
    mode: Mode,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<i32, Error> {
    // Whatever fails here (an unreadable CA or key file, a bad kubeconfig)
    // is a bad setting: exit 2, like a bad flag.
    let (cycle, latest) = build_cycle(&config).await.map_err(|e| match e {
        Error::Config(_) => e,
        other => Error::Config(other.to_string()),
    })?;
    let cycle = Arc::new(cycle);
    match mode {
        Mode::Once => {
            if let Some(path) = &config.state_file {
                load_state(&cycle, path);
            }
            // A signal during `once` (a CronJob's deadline, a node drain)
            // stops the cycle but still logs out, so no session is left.
            tokio::pin!(shutdown);
            let mut failures = tokio::select! {
                report = cycle.run() => report.failures,
                () = &mut shutdown => {
                    warn!("Signal received: stopping the cycle");
                    vec!["interrupted by a signal".to_string()]
                }
            };
            failures.extend(cycle.shutdown(false).await);
            failures.extend(cycle.behind());
            if let Some(path) = &config.state_file {
                // What was not delivered is kept for the next run.
                if let Err(e) = crate::state_file::save(path, cycle.export_states()) {
                    error!(file = %path.display(), error = %e, "Writing the state file failed");
                    failures.push(format!("state file {}: {e}", path.display()));
                }
            }
            if failures.is_empty() {
                info!("Once: every source and sink succeeded");
                Ok(0)
            } else {
                // The cycle logged each failure as it happened; this is the
                // one summary line a cron mail or a CronJob's status shows.
                error!(failures = %failures.join("; "), "Once failed");
                Ok(1)
            }
        }
        Mode::Start => {
            if let Some(path) = &config.state_file {
                warn!(file = %path.display(), "The state file is for once only; start keeps its state in memory");
            }
            let gap = config.schedule.longest_gap();
            let reaper_budget = config.reaper.enabled.then(|| reaper_budget(&config, gap));
            // One shutdown signal fans out to the HTTP server and the
            // schedule.
            let (stop_tx, stop_rx) = watch::channel(false);
            let server = if config.listen_port != 0 {
                let (listener, addr) = listen(&config).await?;
                info!(address = %addr, "Serving /metrics, /healthz and /livez");
                let stopped = wait_for(stop_rx.clone());
                let limit = scrape::liveness_limit(gap, longest_cycle(&config, reaper_budget));
                Some(tokio::spawn(scrape::serve(
                    listener, latest, limit, stopped,
                )))
            } else {
                None
            };
            // From here on a cycle hands its snapshot to each sink's
            // sender and returns: a dead target never holds the schedule.
            cycle.start_senders();
            let skipped = cycle.skipped_counter();
            let runner = cycle.clone();
            let scheduled = run_scheduled(
                config.schedule.clone(),
                move || {
                    let runner = runner.clone();
                    async move {
                        let report = runner.run().await;
                        if let Some(budget) = reaper_budget {
                            crate::oncall::reap_after_cycle(&runner, report, budget).await;
                        }
                    }
                },
                skipped,
                wait_for(stop_rx),
                DRAIN_TIMEOUT,
            );
            tokio::pin!(scheduled);
            tokio::pin!(shutdown);
            let result = tokio::select! {
                r = &mut scheduled => r,
                () = &mut shutdown => {
                    info!("Shutting down");
                    let _ = stop_tx.send(true);
                    // The vCenter logouts start now, beside the drain of a
                    // running cycle, so the sessions (and a login in
                    // flight) are released within the grace period
                    // whatever that cycle does; no login follows them.
                    let (result, _) = tokio::join!(&mut scheduled, cycle.logout_vcenters());
                    result
                }
            };
            let _ = stop_tx.send(true);
            if let Err(e) = &result {
                error!(error = %e, "Schedule failed");
            }
            cycle.shutdown(true).await;
            if let Some(server) = server {
                let _ = server.await;
            }
            info!("Stopped");
            result.map(|()| 0)
        }
    }
}

/// The longest a cycle may take by its budgets (vCenters and Prow at once,
/// then the CI users; a cycle of `start` only hands its snapshot to the
/// senders), plus the reaper's pass after it when there is one.
fn longest_cycle(config: &Config, reaper_budget: Option<Duration>) -> Duration {
    let (vcenters, _) = vcenter_budgets(config);
    let gather = vcenters.max(config.prow_timeout) + config.kube_timeout * 4;
    gather + reaper_budget.map_or(Duration::ZERO, |b| b + request_timeout(config))
}

/// When the reaper's pass after a cycle stops starting terminations: one
/// interval, or its wait and second listing when those are longer.
fn reaper_budget(config: &Config, gap: Option<Duration>) -> Duration {
    let (vcenters, _) = vcenter_budgets(config);
    let floor = config.reaper.recheck_delay + vcenters;
    gap.unwrap_or(floor).max(floor)
}

/// The longest SOAP request of any vCenter.
fn request_timeout(config: &Config) -> Duration {
    vcenter_budgets(config).1
}

/// (one vCenter's whole listing, one SOAP request), the longest over the
/// vCenters: four requests' worth for a listing (service content, login,
/// the list and one more page or a re-login).
fn vcenter_budgets(config: &Config) -> (Duration, Duration) {
    let request = config
        .vcenters
        .iter()
        .map(|v| v.timeout)
        .max()
        .unwrap_or(crate::config::DEFAULT_VCENTER_TIMEOUT);
    (request * 4, request)
}

/// The cycle of `sessions` and `reap`: the same sources as `once`, no
/// sink, so nothing is published.
pub async fn build_inspector(config: &Config) -> Result<Cycle, Error> {
    let mut config = config.clone();
    config.remote_write.clear();
    config.pushgateway = None;
    let (cycle, _) = build_cycle(&config).await.map_err(|e| match e {
        Error::Config(_) => e,
        other => Error::Config(other.to_string()),
    })?;
    Ok(cycle)
}

/// Give the sinks what the last `once` run kept. A file that cannot be
/// used is reported in one line (and set aside when it is damaged or not
/// ours); the run goes on without it.
fn load_state(cycle: &Cycle, path: &std::path::Path) {
    use crate::state_file::{LoadError, load, set_aside};
    match load(path) {
        Ok(None) => info!(file = %path.display(), "No state file yet: a first run"),
        Ok(Some(states)) => {
            for problem in cycle.import_states(states) {
                warn!(file = %path.display(), problem = %problem, "Part of the state file was not usable, going on without it");
            }
        }
        Err(LoadError::Unreadable(e)) => {
            warn!(file = %path.display(), error = %e, "Cannot read the state file, going on without it");
        }
        Err(LoadError::Invalid(e)) => match set_aside(path) {
            Ok(aside) => warn!(file = %path.display(), error = %e, set_aside = %aside.display(),
                "The state file is not usable, set it aside and going on without it"),
            Err(rename) => warn!(file = %path.display(), error = %e, rename_error = %rename,
                "The state file is not usable and could not be set aside, going on without it"),
        },
    }
}

/// The endpoint's socket: the configured address, else `[::]` (IPv4 and
/// IPv6 on a dual-stack host), else `0.0.0.0` where IPv6 is off.
async fn listen(config: &Config) -> Result<(TcpListener, SocketAddr), Error> {
    let port = config.listen_port;
    let cannot = |addr: SocketAddr, e: std::io::Error| Error::Io {
        context: format!("--listen-address/--listen-port {addr}: cannot listen"),
        source: e,
    };
    let addr = match config.listen_address {
        Some(ip) => SocketAddr::new(ip, port),
        None => {
            let any6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
            match TcpListener::bind(any6).await {
                Ok(listener) => return Ok((listener, any6)),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    return Err(cannot(any6, e));
                }
                // No IPv6 here: IPv4 alone.
                Err(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
            }
        }
    };
    let listener = TcpListener::bind(addr).await.map_err(|e| cannot(addr, e))?;
    Ok((listener, addr))
}

/// Resolves when the watch value turns true (or its sender is gone).
async fn wait_for(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
