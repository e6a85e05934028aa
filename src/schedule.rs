//! When cycles run: a fixed interval or a cron expression, never two at once.
//!
//! The `--schedule` flag takes either a duration (`30s`, `5m`: a first cycle at
//! once, then one per interval) or a cron expression run by
//! [tokio-cron-scheduler](https://docs.rs/tokio-cron-scheduler) in UTC. Cron
//! expressions are accepted in the crontab / Kubernetes CronJob form of five
//! fields (`minute hour day-of-month month day-of-week`, see crontab(5)), in
//! the six-field form with seconds first that tokio-cron-scheduler's parser
//! ([croner](https://docs.rs/croner)) requires (with an optional seventh year
//! field), and as `@hourly`-style nicknames.
//!
//! A cycle lists every vCenter session and may take longer than the schedule
//! allows when a vCenter is slow; running a second one beside it would double
//! the load on the very vCenter that is struggling. So a tick that finds the
//! previous cycle still running is skipped, counted and logged instead.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle};
use tokio::time::MissedTickBehavior;
use tokio_cron_scheduler::{Job, JobScheduler};
use tracing::{error, info, warn};

use crate::error::Error;

/// The flag every schedule error names, so the operator knows what to fix.
const FLAG: &str = "--schedule (SCHEDULE)";

/// How often cycles run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// A first cycle at once, then one every period.
    Interval(Duration),
    /// A cron expression in the six-field form (seconds first) that
    /// tokio-cron-scheduler parses; [`Schedule::cron`] builds it from the
    /// five-field crontab form too.
    Cron(String),
}

impl Schedule {
    /// A cron schedule, checked now so a typo fails at start rather than at
    /// the first tick.
    ///
    /// Accepts 5 fields (crontab / Kubernetes CronJob: minute hour
    /// day-of-month month day-of-week), 6 fields (seconds first, as
    /// tokio-cron-scheduler wants), 7 fields (a year last) and the nicknames
    /// `@yearly`, `@monthly`, `@weekly`, `@daily`, `@hourly`. A five-field
    /// expression gets `0 ` prepended, so `*/5 * * * *` runs at second 0 of
    /// every fifth minute, as cron would.
    ///
    /// Expressions that restrict both day-of-month and day-of-week are
    /// refused: crontab runs when *either* matches, while tokio-cron-scheduler
    /// requires *both*, so the same text would silently mean something else.
    pub fn cron(expr: &str) -> Result<Self, Error> {
        let normalised = normalise_cron(expr)?;
        Ok(Schedule::Cron(normalised))
    }

    /// The value of `--schedule`: a duration (`30s`, `5m`, `1h 30m`) for a
    /// fixed interval, anything else as a cron expression.
    pub fn parse(value: &str) -> Result<Self, Error> {
        match humantime::parse_duration(value.trim()) {
            Ok(period) if period.is_zero() => Err(Error::Config(format!(
                "{FLAG}: the interval {value:?} must be more than 0"
            ))),
            Ok(period) => Ok(Schedule::Interval(period)),
            Err(_) => Schedule::cron(value),
        }
    }
}

impl Schedule {
    /// The longest time between two cycles: the interval, or for cron the
    /// widest gap among its fire times over the next eight days (a week
    /// and a day covers weekends and weekly schedules), at most 20,000 of
    /// them (a per-second schedule stops early, its gaps are all alike).
    /// `None` for an expression that never fires again.
    pub fn longest_gap(&self) -> Option<Duration> {
        match self {
            Schedule::Interval(period) => Some(*period),
            Schedule::Cron(expr) => {
                let now = Utc::now();
                let horizon = now + chrono::Duration::days(8);
                let cron: Cron = cron_parser().parse(expr).ok()?;
                let mut times = Vec::new();
                for t in cron.iter_after(now).take(20_000) {
                    times.push(t);
                    if t > horizon {
                        break;
                    }
                }
                times
                    .windows(2)
                    .filter_map(|w| (w[1] - w[0]).to_std().ok())
                    .max()
            }
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Interval(period) => {
                write!(f, "every {}", humantime::format_duration(*period))
            }
            Schedule::Cron(expr) => write!(f, "cron \"{expr}\" (UTC)"),
        }
    }
}

/// The parser exactly as tokio-cron-scheduler 0.15 configures it (seconds
/// required, day-of-month AND day-of-week), so what we accept is what it runs.
fn cron_parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Required)
        .dom_and_dow(true)
        .build()
}

/// Bring a cron expression to the form tokio-cron-scheduler parses, or say
/// what is wrong with it.
fn normalise_cron(expr: &str) -> Result<String, Error> {
    let invalid = |why: String| Error::Config(format!("{FLAG}: cron expression {expr:?} {why}"));
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let normalised = match fields.len() {
        0 => {
            return Err(Error::Config(format!(
                "{FLAG}: the cron expression is empty"
            )));
        }
        // Nicknames expand inside the parser to the seconds-first form.
        1 if fields[0].starts_with('@') => fields[0].to_string(),
        5 => format!("0 {}", fields.join(" ")),
        6 | 7 => fields.join(" "),
        n => {
            return Err(invalid(format!(
                "has {n} fields; expected 5 (minute hour day-of-month month day-of-week) \
                 or 6 (seconds first)"
            )));
        }
    };
    let six: Vec<&str> = normalised.split_whitespace().collect();
    if let Err(e) = cron_parser().parse(&normalised) {
        return Err(invalid(match failing_field(&six) {
            Some((name, value)) => format!("is invalid in its {name} field {value:?}: {e}"),
            None => format!("is invalid: {e}"),
        }));
    }
    let restricted = |field: Option<&&str>| field.is_some_and(|f| *f != "*" && *f != "?");
    if restricted(six.get(3)) && restricted(six.get(5)) {
        return Err(invalid(
            "restricts both day-of-month and day-of-week; crontab runs when either matches \
             but this scheduler needs both to match, so set only one of them"
                .to_string(),
        ));
    }
    Ok(normalised)
}

/// The field the parser refuses, found by parsing each field alone (the
/// others as `*`): croner's messages do not say which field they mean.
fn failing_field<'a>(fields: &[&'a str]) -> Option<(&'static str, &'a str)> {
    const NAMES: [&str; 7] = [
        "second",
        "minute",
        "hour",
        "day-of-month",
        "month",
        "day-of-week",
        "year",
    ];
    if fields.len() < 6 {
        // A nickname: nothing to single out.
        return None;
    }
    (0..fields.len().min(NAMES.len())).find_map(|i| {
        let alone: Vec<&str> = (0..fields.len())
            .map(|j| if i == j { fields[j] } else { "*" })
            .collect();
        cron_parser()
            .parse(&alone.join(" "))
            .is_err()
            .then_some((NAMES[i], fields[i]))
    })
}

/// The next `count` fire times of a (normalised) cron expression after
/// `after`, as the scheduler computes them.
fn upcoming(expr: &str, after: DateTime<Utc>, count: usize) -> Result<Vec<DateTime<Utc>>, Error> {
    let cron: Cron = cron_parser()
        .parse(expr)
        .map_err(|e| Error::Config(format!("{FLAG}: cron expression {expr:?} is invalid: {e}")))?;
    Ok(cron.iter_after(after).take(count).collect())
}

/// Runs `cycle` on the schedule until `shutdown` resolves.
///
/// Interval: a first cycle at once, then one per interval. Cron: per
/// tokio-cron-scheduler (which ticks every 500 ms, so a cron cycle starts up
/// to half a second after its second), in UTC. Cycles never overlap: a tick
/// that finds the previous cycle running is skipped, counted in `skipped` and
/// logged at warn. On shutdown: stop scheduling, let a running cycle finish
/// within `drain_timeout` (then abandon it with a warn), return.
pub async fn run_scheduled<F, Fut>(
    schedule: Schedule,
    cycle: F,
    skipped: Arc<AtomicU64>,
    shutdown: impl Future<Output = ()>,
    drain_timeout: Duration,
) -> Result<(), Error>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut ticks = Ticks::start(&schedule).await?;
    info!(schedule = %schedule, "Schedule started");
    tokio::pin!(shutdown);
    // The cycle runs in its own task so this loop keeps seeing ticks (and
    // counting the skipped ones) and the shutdown while it runs.
    let mut running: Option<JoinHandle<()>> = None;
    let stopped_by = loop {
        tokio::select! {
            // Shutdown first, then reaping a finished cycle, so a tick that
            // arrives together with the end of a cycle starts a new one.
            biased;
            () = &mut shutdown => break None,
            joined = wait_for(&mut running) => {
                report_cycle_end(joined);
                running = None;
            }
            tick = ticks.next() => {
                if tick.is_none() {
                    break Some(Error::Scheduler(
                        "the cron scheduler stopped delivering ticks".to_string(),
                    ));
                }
                match running.take() {
                    Some(handle) if !handle.is_finished() => {
                        running = Some(handle);
                        let total = skipped.fetch_add(1, Ordering::Relaxed) + 1;
                        warn!(skipped_total = total, "Previous cycle still running, skipping this tick");
                    }
                    finished => {
                        if let Some(handle) = finished {
                            report_cycle_end(handle.await);
                        }
                        running = Some(tokio::spawn(cycle()));
                    }
                }
            }
        }
    };
    ticks.stop().await;
    drain(running, drain_timeout).await;
    match stopped_by {
        None => {
            info!("Schedule stopped");
            Ok(())
        }
        Some(e) => Err(e),
    }
}

/// Resolves when the running cycle ends; never when none runs.
async fn wait_for(running: &mut Option<JoinHandle<()>>) -> Result<(), JoinError> {
    match running {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

/// A cycle handles its own errors; all that can reach here is a panic.
fn report_cycle_end(joined: Result<(), JoinError>) {
    if let Err(e) = joined
        && e.is_panic()
    {
        error!(error = %e, "Cycle panicked");
    }
}

/// Let a running cycle finish (it may be publishing), but not forever: a
/// stuck vCenter call must not hold the process past its termination grace
/// period.
async fn drain(running: Option<JoinHandle<()>>, drain_timeout: Duration) {
    let Some(mut handle) = running else { return };
    if !handle.is_finished() {
        info!(
            drain_timeout = %humantime::format_duration(drain_timeout),
            "Waiting for the running cycle to finish"
        );
    }
    match tokio::time::timeout(drain_timeout, &mut handle).await {
        Ok(joined) => report_cycle_end(joined),
        Err(_) => {
            warn!(
                drain_timeout = %humantime::format_duration(drain_timeout),
                "Running cycle did not finish in time, abandoning it"
            );
            handle.abort();
        }
    }
}

/// Where ticks come from.
enum Ticks {
    Interval(tokio::time::Interval),
    /// tokio-cron-scheduler runs the job's future in its own task; the job
    /// only forwards a tick here so that the overlap check lives in one place.
    Cron {
        scheduler: JobScheduler,
        ticks: mpsc::UnboundedReceiver<()>,
    },
}

impl Ticks {
    async fn start(schedule: &Schedule) -> Result<Self, Error> {
        match schedule {
            Schedule::Interval(period) => {
                if period.is_zero() {
                    return Err(Error::Config(format!(
                        "{FLAG}: the interval must be more than 0"
                    )));
                }
                let mut interval = tokio::time::interval(*period);
                // After a stall (a suspended host) one tick, not a burst of
                // ticks that would all be counted as skipped.
                interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
                Ok(Ticks::Interval(interval))
            }
            Schedule::Cron(expr) => {
                // The variant is public: normalise again in case it was built
                // by hand from a five-field expression.
                let expr = normalise_cron(expr)?;
                let scheduler_error = |what: &str, e: tokio_cron_scheduler::JobSchedulerError| {
                    Error::Scheduler(format!("{what}: {e}"))
                };
                let scheduler = JobScheduler::new()
                    .await
                    .map_err(|e| scheduler_error("creating the cron scheduler", e))?;
                let (tx, rx) = mpsc::unbounded_channel();
                let job = Job::new_async(expr.as_str(), move |_id, _scheduler| {
                    let tx = tx.clone();
                    Box::pin(async move {
                        // Fails only once the loop is gone, when ticks no
                        // longer matter.
                        let _ = tx.send(());
                    })
                })
                .map_err(|e| scheduler_error(&format!("cron expression {expr:?}"), e))?;
                scheduler
                    .add(job)
                    .await
                    .map_err(|e| scheduler_error("adding the cron job", e))?;
                scheduler
                    .start()
                    .await
                    .map_err(|e| scheduler_error("starting the cron scheduler", e))?;
                if let Ok(next) = upcoming(&expr, Utc::now(), 1)
                    && let Some(next) = next.first()
                {
                    info!(next = %next.to_rfc3339(), "First cron tick");
                }
                Ok(Ticks::Cron {
                    scheduler,
                    ticks: rx,
                })
            }
        }
    }

    /// The next tick; `None` when the cron scheduler is gone.
    async fn next(&mut self) -> Option<()> {
        match self {
            Ticks::Interval(interval) => {
                interval.tick().await;
                Some(())
            }
            Ticks::Cron { ticks, .. } => ticks.recv().await,
        }
    }

    async fn stop(self) {
        if let Ticks::Cron { mut scheduler, .. } = self
            && let Err(e) = scheduler.shutdown().await
        {
            warn!(error = %e, "Stopping the cron scheduler failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use tokio::time::Instant;

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339)
            .expect("test timestamps are valid RFC 3339")
            .with_timezone(&Utc)
    }

    fn cron_expr(schedule: &Schedule) -> &str {
        match schedule {
            Schedule::Cron(expr) => expr,
            other => panic!("expected a cron schedule, got {other:?}"),
        }
    }

    #[test]
    fn the_longest_gap_is_the_interval_or_the_widest_cron_gap() {
        assert_eq!(
            Schedule::parse("90s").unwrap().longest_gap(),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            Schedule::cron("*/5 * * * *").unwrap().longest_gap(),
            Some(Duration::from_secs(300))
        );
        // Weekdays at 09:00: Friday to Monday is the widest gap.
        assert_eq!(
            Schedule::cron("0 9 * * 1-5").unwrap().longest_gap(),
            Some(Duration::from_secs(3 * 86_400))
        );
        // Every 5 minutes in office hours: Friday 17:55 to Monday 09:00,
        // far beyond the first 500 ticks.
        assert_eq!(
            Schedule::cron("*/5 9-17 * * 1-5").unwrap().longest_gap(),
            Some(Duration::from_secs(2 * 86_400 + 15 * 3600 + 5 * 60))
        );
    }

    #[test]
    fn five_field_crontab_fires_at_second_zero_of_every_fifth_minute() {
        let schedule = Schedule::cron("*/5 * * * *").unwrap();
        let fires = upcoming(cron_expr(&schedule), at("2026-03-01T10:02:30Z"), 3).unwrap();
        assert_eq!(
            fires,
            vec![
                at("2026-03-01T10:05:00Z"),
                at("2026-03-01T10:10:00Z"),
                at("2026-03-01T10:15:00Z"),
            ]
        );
    }

    #[test]
    fn six_field_expression_keeps_its_seconds() {
        let schedule = Schedule::cron("*/20 * * * * *").unwrap();
        let fires = upcoming(cron_expr(&schedule), at("2026-03-01T10:00:05Z"), 3).unwrap();
        assert_eq!(
            fires,
            vec![
                at("2026-03-01T10:00:20Z"),
                at("2026-03-01T10:00:40Z"),
                at("2026-03-01T10:01:00Z"),
            ]
        );
    }

    #[test]
    fn five_field_expression_with_hours_and_weekdays_is_read_as_crontab() {
        // 06:30 on weekdays; 2026-03-06 is a Friday.
        let schedule = Schedule::cron("30 6 * * MON-FRI").unwrap();
        let fires = upcoming(cron_expr(&schedule), at("2026-03-06T07:00:00Z"), 2).unwrap();
        assert_eq!(
            fires,
            vec![at("2026-03-09T06:30:00Z"), at("2026-03-10T06:30:00Z")]
        );
    }

    #[test]
    fn hourly_nickname_fires_on_the_hour() {
        let schedule = Schedule::cron("@hourly").unwrap();
        let fires = upcoming(cron_expr(&schedule), at("2026-03-01T10:02:00Z"), 2).unwrap();
        assert_eq!(
            fires,
            vec![at("2026-03-01T11:00:00Z"), at("2026-03-01T12:00:00Z")]
        );
    }

    #[test]
    fn invalid_cron_expressions_name_the_flag_and_the_problem() {
        let cases = [
            ("", "--schedule (SCHEDULE): the cron expression is empty"),
            ("* * * *", "has 4 fields; expected 5"),
            ("0 0 * * * * * *", "has 8 fields; expected 5"),
            ("61 * * * *", "is invalid in its minute field \"61\""),
            ("0 0 25 * * *", "is invalid in its hour field \"25\""),
            (
                "* * * * FUNDAY",
                "is invalid in its day-of-week field \"FUNDAY\"",
            ),
            (
                "0 0 13 * FRI",
                "restricts both day-of-month and day-of-week",
            ),
        ];
        for (expr, expected) in cases {
            let message = match Schedule::cron(expr) {
                Err(Error::Config(message)) => message,
                other => panic!("{expr:?}: expected a config error, got {other:?}"),
            };
            assert!(
                message.starts_with("--schedule (SCHEDULE): "),
                "{expr:?}: {message}"
            );
            assert!(message.contains(expected), "{expr:?}: {message}");
            if !expr.is_empty() {
                assert!(
                    message.contains(&format!("{expr:?}")),
                    "{expr:?}: {message}"
                );
            }
        }
    }

    #[test]
    fn schedule_flag_takes_a_duration_or_a_cron_expression() {
        assert_eq!(
            Schedule::parse("30s").unwrap(),
            Schedule::Interval(Duration::from_secs(30))
        );
        assert_eq!(
            Schedule::parse("1h 30m").unwrap(),
            Schedule::Interval(Duration::from_secs(5400))
        );
        assert_eq!(
            Schedule::parse("*/5 * * * *").unwrap(),
            Schedule::Cron("0 */5 * * * *".to_string())
        );
        assert_eq!(
            Schedule::parse("*/10 * * * * *").unwrap(),
            Schedule::Cron("*/10 * * * * *".to_string())
        );
        let zero = Schedule::parse("0s").unwrap_err().to_string();
        assert!(
            zero.starts_with("--schedule (SCHEDULE):") && zero.contains("more than 0"),
            "{zero}"
        );
    }

    /// What the cycles under test did, shared with the test body.
    #[derive(Default)]
    struct Probe {
        started: AtomicU64,
        finished: AtomicU64,
        running: AtomicU64,
        max_running: AtomicU64,
        dropped_unfinished: AtomicBool,
    }

    impl Probe {
        /// A cycle that takes `duration` and records its overlap with others.
        fn cycle(
            self: &Arc<Self>,
            duration: Duration,
        ) -> impl Fn() -> futures::future::BoxFuture<'static, ()> + Send + Sync + 'static {
            let probe = Arc::clone(self);
            move || {
                let probe = Arc::clone(&probe);
                Box::pin(async move {
                    probe.started.fetch_add(1, Ordering::SeqCst);
                    let now = probe.running.fetch_add(1, Ordering::SeqCst) + 1;
                    probe.max_running.fetch_max(now, Ordering::SeqCst);
                    let mut guard = DropGuard {
                        probe: Arc::clone(&probe),
                        finished: false,
                    };
                    tokio::time::sleep(duration).await;
                    guard.finished = true;
                    probe.running.fetch_sub(1, Ordering::SeqCst);
                    probe.finished.fetch_add(1, Ordering::SeqCst);
                })
            }
        }
    }

    /// Set when a cycle's future is dropped before it finished (abandoned).
    struct DropGuard {
        probe: Arc<Probe>,
        finished: bool,
    }

    impl Drop for DropGuard {
        fn drop(&mut self) {
            if !self.finished {
                self.probe.dropped_unfinished.store(true, Ordering::SeqCst);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn interval_cycles_never_overlap_and_skipped_ticks_are_counted() {
        let probe = Arc::new(Probe::default());
        let skipped = Arc::new(AtomicU64::new(0));
        // Ticks at 0,1,2,3,4 s; a cycle takes 3.5 s: it runs at 0 and 4, the
        // ticks at 1, 2 and 3 find it running. Shutdown at 4.5 s lets the
        // second one finish at 7.5 s.
        let start = Instant::now();
        run_scheduled(
            Schedule::Interval(Duration::from_secs(1)),
            probe.cycle(Duration::from_millis(3500)),
            Arc::clone(&skipped),
            tokio::time::sleep(Duration::from_millis(4500)),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(probe.started.load(Ordering::SeqCst), 2);
        assert_eq!(probe.finished.load(Ordering::SeqCst), 2);
        assert_eq!(probe.max_running.load(Ordering::SeqCst), 1);
        assert_eq!(skipped.load(Ordering::SeqCst), 3);
        assert_eq!(start.elapsed(), Duration::from_millis(7500));
    }

    #[tokio::test(start_paused = true)]
    async fn first_interval_cycle_runs_at_once() {
        let probe = Arc::new(Probe::default());
        let skipped = Arc::new(AtomicU64::new(0));
        run_scheduled(
            Schedule::Interval(Duration::from_secs(3600)),
            probe.cycle(Duration::from_millis(10)),
            Arc::clone(&skipped),
            tokio::time::sleep(Duration::from_secs(1)),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(probe.finished.load(Ordering::SeqCst), 1);
        assert_eq!(skipped.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_waits_for_the_running_cycle() {
        let probe = Arc::new(Probe::default());
        let start = Instant::now();
        run_scheduled(
            Schedule::Interval(Duration::from_secs(60)),
            probe.cycle(Duration::from_secs(20)),
            Arc::new(AtomicU64::new(0)),
            tokio::time::sleep(Duration::from_secs(5)),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        assert_eq!(probe.finished.load(Ordering::SeqCst), 1);
        assert!(!probe.dropped_unfinished.load(Ordering::SeqCst));
        assert_eq!(start.elapsed(), Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn drain_timeout_abandons_a_stuck_cycle() {
        let probe = Arc::new(Probe::default());
        let start = Instant::now();
        run_scheduled(
            Schedule::Interval(Duration::from_secs(60)),
            probe.cycle(Duration::from_secs(3600)),
            Arc::new(AtomicU64::new(0)),
            tokio::time::sleep(Duration::from_secs(5)),
            Duration::from_secs(2),
        )
        .await
        .unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(7));
        assert_eq!(probe.finished.load(Ordering::SeqCst), 0);
        // The abort lands when the runtime next polls the task. Sleeping
        // (not yielding) lets the paused clock advance, so a missing abort
        // makes the timeout fire instead of hanging the test.
        tokio::time::timeout(Duration::from_secs(1), async {
            while !probe.dropped_unfinished.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the abandoned cycle is aborted");
    }

    #[tokio::test(start_paused = true)]
    async fn zero_interval_is_refused() {
        let err = run_scheduled(
            Schedule::Interval(Duration::ZERO),
            || async {},
            Arc::new(AtomicU64::new(0)),
            std::future::pending(),
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string().starts_with("--schedule (SCHEDULE):"),
            "{err}"
        );
    }

    /// Real time (tokio-cron-scheduler reads the wall clock): a cron firing
    /// every second and a cycle longer than any gap between two fires.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cron_ticks_that_find_a_cycle_running_are_skipped() {
        let probe = Arc::new(Probe::default());
        let skipped = Arc::new(AtomicU64::new(0));
        // Fires land within 500 ms after each second, so two fires are 0.5 to
        // 1.5 s apart: a 1.6 s cycle always sees the next one.
        let shutdown = {
            let probe = Arc::clone(&probe);
            let skipped = Arc::clone(&skipped);
            async move {
                while probe.finished.load(Ordering::SeqCst) < 1
                    || skipped.load(Ordering::SeqCst) < 1
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        // About 3.1 s are needed; the generous limit is for a loaded machine
        // and costs nothing, as the test returns once both conditions hold.
        tokio::time::timeout(
            Duration::from_secs(15),
            run_scheduled(
                Schedule::cron("* * * * * *").unwrap(),
                probe.cycle(Duration::from_millis(1600)),
                Arc::clone(&skipped),
                shutdown,
                Duration::from_secs(3),
            ),
        )
        .await
        .expect("a cron cycle ran and a tick was skipped within 15 s")
        .unwrap();
        assert!(skipped.load(Ordering::SeqCst) >= 1);
        assert!(probe.finished.load(Ordering::SeqCst) >= 1);
        assert_eq!(probe.max_running.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hand_built_five_field_cron_variant_is_normalised() {
        // Never fires during the test: only checks the scheduler accepts it.
        let result = run_scheduled(
            Schedule::Cron("0 0 1 1 *".to_string()),
            || async {},
            Arc::new(AtomicU64::new(0)),
            async {},
            Duration::from_secs(1),
        )
        .await;
        assert!(result.is_ok(), "{result:?}");
    }
}
