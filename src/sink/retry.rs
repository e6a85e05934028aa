//! When to try a request again, and how long to wait: the one retry policy
//! of every sink (remote-write and the Pushgateway).
//!
//! The rules of the Remote-Write 1.0 spec
//! (<https://prometheus.io/docs/specs/remote_write_spec/#retries-backoff>),
//! which suit the Pushgateway too: 5xx and network failures are retried
//! with backoff; 429 is retried, waiting as long as `Retry-After` asks
//! (delta-seconds or an HTTP-date, capped); any other 4xx is final, since
//! the same request would be refused again.
//!
//! Backoff is exponential with full jitter between `min_backoff` and
//! `max_backoff` (the names of Prometheus's `queue_config`), and every retry
//! loop runs against a deadline so a dead target cannot hold a cycle. The loop
//! is a policy type ([`RetryPolicy::run`]) taking the attempt as a closure, so
//! its timing is tested with a paused clock and no network.

use std::future::Future;
use std::time::{Duration, SystemTime};

use rand::Rng as _;
use tokio::time::Instant;

use crate::error::Error;

/// Backoff bounds for one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

/// What an HTTP status means for the request that got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: delivered.
    Delivered,
    /// 5xx or 429: the same request may succeed later.
    Retry,
    /// Any other status: the request itself is refused; never resend it.
    Refused,
}

/// Classify a response status.
pub fn classify(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        429 | 500..=599 => Verdict::Retry,
        _ => Verdict::Refused,
    }
}

/// The longest `Retry-After` honoured. A receiver asking for an hour may be
/// back in a minute; past this the normal backoff takes over again.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(5 * 60);

/// Parse a `Retry-After` value: delta-seconds (`"120"`) or an HTTP-date
/// (`"Wed, 21 Oct 2015 07:28:00 GMT"`), cut to [`MAX_RETRY_AFTER`]. A date
/// in the past means "now" (the backoff still applies: see
/// [`RetryPolicy::wait`]). Anything else is ignored (`None`), and the normal
/// backoff applies. No value can overflow: numbers too large for `u64` are
/// cut like any other long wait.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        let seconds = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

/// The result of one attempt, as the closure given to [`RetryPolicy::run`]
/// reports it.
#[derive(Debug)]
pub enum Attempt<T> {
    /// Done: stop and return this.
    Done(T),
    /// Failed in a way that may pass: try again after the backoff, or after
    /// `after` when the receiver said how long (`Retry-After` on a 429 or
    /// 503).
    Retry {
        error: Error,
        after: Option<Duration>,
    },
    /// Failed for good: stop.
    Fail(Error),
}

/// Why [`RetryPolicy::run`] stopped without a result.
#[derive(Debug)]
pub struct GaveUp {
    /// The last attempt's error; or, when the last attempt got no answer
    /// before the deadline, the one before it (or a timeout when no attempt
    /// could start).
    pub error: Error,
    /// True when the failure may pass (keep the request for later), false
    /// when the request was refused for good.
    pub retriable: bool,
    /// When a receiver asked (429 or 503) not to be called before a time that lies
    /// past the deadline: the caller should not try before it.
    pub not_before: Option<Instant>,
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0 for the first retry): a random
    /// duration between `min_backoff` and `min_backoff × 2^retry`, capped at
    /// `max_backoff` ("full jitter", so many senders do not retry in step).
    pub fn backoff(&self, retry: u32) -> Duration {
        let min = self.min_backoff;
        let cap = min
            .checked_mul(1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
            .max(min);
        if cap == min {
            return min;
        }
        let nanos = rand::rng().random_range(min.as_nanos()..=cap.as_nanos());
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The wait before retry number `retry`: the backoff, or the receiver's
    /// `Retry-After` when it asks for longer (never shorter than the
    /// backoff, so `Retry-After: 0` cannot make a tight loop; never longer
    /// than [`MAX_RETRY_AFTER`]).
    pub fn wait(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let backoff = self.backoff(retry);
        match retry_after {
            Some(after) => after.min(MAX_RETRY_AFTER).max(backoff),
            None => backoff,
        }
    }

    /// Call `attempt` until it is done, fails for good, or `deadline` would be
    /// passed by the next wait. `attempt` gets the attempt number (0 first)
    /// and the time left before the deadline, to use as its own timeout.
    pub async fn run<T, F, Fut>(&self, deadline: Instant, attempt: F) -> Result<T, GaveUp>
    where
        F: FnMut(u32, Duration) -> Fut,
        Fut: Future<Output = Attempt<T>>,
    {
        self.run_for("remote-write request", deadline, attempt)
            .await
    }

    /// [`run`](Self::run) for requests of another kind: `what` names them
    /// in logs and in the timeout error (`Pushgateway request`).
    pub async fn run_for<T, F, Fut>(
        &self,
        what: &str,
        deadline: Instant,
        mut attempt: F,
    ) -> Result<T, GaveUp>
    where
        F: FnMut(u32, Duration) -> Fut,
        Fut: Future<Output = Attempt<T>>,
    {
        let mut number = 0u32;
        // A wait that overslept the deadline (a loaded machine) must still
        // report what the last attempt said, not a bare timeout.
        let mut last_error: Option<Error> = None;
        loop {
            let now = Instant::now();
            let left = deadline.saturating_duration_since(now);
            if left.is_zero() {
                return Err(GaveUp {
                    error: last_error.unwrap_or_else(|| Error::Timeout {
                        what: what.to_string(),
                        timeout: Duration::ZERO,
                    }),
                    retriable: true,
                    not_before: None,
                });
            }
            match attempt(number, left).await {
                Attempt::Done(value) => return Ok(value),
                Attempt::Fail(error) => {
                    return Err(GaveUp {
                        error,
                        retriable: false,
                        not_before: None,
                    });
                }
                Attempt::Retry { error, after } => {
                    // An attempt that got no answer before the deadline was
                    // cut short by our own budget: its "no answer" says less
                    // than the failure before it (a refused certificate, a
                    // 503). A late answer is reported as it is.
                    let error = match last_error.take() {
                        Some(earlier) if !error.is_answer() && Instant::now() >= deadline => {
                            earlier
                        }
                        _ => error,
                    };
                    let wait = self.wait(number, after);
                    let resume = Instant::now().checked_add(wait).unwrap_or(deadline);
                    if resume >= deadline {
                        return Err(GaveUp {
                            error,
                            retriable: true,
                            not_before: after.map(|_| resume),
                        });
                    }
                    tracing::warn!(
                        request = what,
                        error = %error,
                        attempt = number + 1,
                        wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        "Request failed, retrying"
                    );
                    tokio::time::sleep_until(resume).await;
                    last_error = Some(error);
                    number += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn policy() -> RetryPolicy {
        RetryPolicy {
            min_backoff: Duration::from_millis(30),
            max_backoff: Duration::from_secs(5),
        }
    }

    fn server_error() -> Error {
        Error::RemoteWrite {
            target: "t".into(),
            status: Some(500),
            message: "HTTP 500".into(),
        }
    }

    #[test]
    fn statuses_are_classified_as_the_spec_says() {
        assert_eq!(classify(204), Verdict::Delivered);
        assert_eq!(classify(200), Verdict::Delivered);
        assert_eq!(classify(500), Verdict::Retry);
        assert_eq!(classify(503), Verdict::Retry);
        assert_eq!(classify(429), Verdict::Retry);
        assert_eq!(classify(400), Verdict::Refused);
        assert_eq!(classify(404), Verdict::Refused);
        assert_eq!(classify(415), Verdict::Refused);
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(42));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(42))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(42));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn no_retry_after_value_can_overflow_stall_or_spin() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let past = httpdate::fmt_http_date(now - Duration::from_secs(3600));
        let far = httpdate::fmt_http_date(now + Duration::from_secs(86_400 * 365));
        let cases: [(&str, Option<Duration>); 9] = [
            ("0", Some(Duration::ZERO)),
            ("1", Some(Duration::from_secs(1))),
            ("3600", Some(MAX_RETRY_AFTER)),
            ("18446744073709551615", Some(MAX_RETRY_AFTER)),
            ("99999999999999999999999999", Some(MAX_RETRY_AFTER)),
            (&past, Some(Duration::ZERO)),
            (&far, Some(MAX_RETRY_AFTER)),
            ("-5", None),
            ("\u{0}garbage", None),
        ];
        for (value, want) in cases {
            assert_eq!(parse_retry_after(value, now), want, "{value:?}");
        }
        let p = RetryPolicy {
            min_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(30),
        };
        // Never below the backoff (no tight loop on `0` or a past date)...
        assert!(p.wait(0, Some(Duration::ZERO)) >= Duration::from_secs(2));
        // ... the receiver's wait when longer, capped.
        assert_eq!(
            p.wait(0, Some(Duration::from_secs(60))),
            Duration::from_secs(60)
        );
        assert_eq!(p.wait(3, Some(Duration::MAX)), MAX_RETRY_AFTER);
    }

    #[tokio::test(start_paused = true)]
    async fn a_huge_retry_after_gives_up_at_the_deadline_without_panicking() {
        let started = Instant::now();
        let result: Result<(), GaveUp> = policy()
            .run(started + Duration::from_secs(1), |_, _| async {
                Attempt::Retry {
                    error: server_error(),
                    after: Some(Duration::MAX),
                }
            })
            .await;
        let gave_up = result.expect_err("gives up");
        assert!(gave_up.retriable);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn backoff_grows_from_min_and_never_passes_max() {
        let p = policy();
        for retry in 0..64 {
            let d = p.backoff(retry);
            assert!(d >= p.min_backoff, "{d:?}");
            assert!(d <= p.max_backoff, "{d:?}");
            let cap = p.min_backoff * 2u32.saturating_pow(retry.min(20));
            assert!(d <= cap.max(p.min_backoff), "retry {retry}: {d:?}");
        }
        assert_eq!(p.backoff(0), p.min_backoff);
    }

    #[tokio::test(start_paused = true)]
    async fn server_errors_are_retried_until_success() {
        let calls = Arc::new(AtomicU32::new(0));
        let started = Instant::now();
        let result = policy()
            .run(started + Duration::from_secs(30), |_, _| {
                let calls = calls.clone();
                async move {
                    if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                        Attempt::Retry {
                            error: server_error(),
                            after: None,
                        }
                    } else {
                        Attempt::Done("ok")
                    }
                }
            })
            .await;
        assert_eq!(result.unwrap(), "ok");
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        // Three waits of at least 30 ms, each at most 30 ms × 2^n.
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(90), "{waited:?}");
        assert!(waited <= Duration::from_millis(30 + 60 + 120), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_at_the_deadline_and_stay_retriable() {
        let calls = Arc::new(AtomicU32::new(0));
        let started = Instant::now();
        let deadline = started + Duration::from_secs(2);
        let result: Result<(), GaveUp> = policy()
            .run(deadline, |_, left| {
                let calls = calls.clone();
                assert!(left <= Duration::from_secs(2));
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Attempt::Retry {
                        error: server_error(),
                        after: None,
                    }
                }
            })
            .await;
        let gave_up = result.unwrap_err();
        assert!(gave_up.retriable);
        assert!(Instant::now() <= deadline);
        assert!(calls.load(Ordering::SeqCst) > 3);
    }

    /// Two attempts: a 500 slow enough that the retry gets only the last
    /// 10 ms of the budget (a loaded machine), then `last` at the deadline.
    /// What the loop reports.
    async fn reported_after_a_cut_short_retry(last: fn(Duration) -> Error) -> GaveUp {
        let deadline = Instant::now() + Duration::from_secs(1);
        let result: Result<(), GaveUp> = policy()
            .run(deadline, |n, left| async move {
                let (wait, error) = if n == 0 {
                    (left - Duration::from_millis(40), server_error())
                } else {
                    (left, last(left))
                };
                tokio::time::sleep(wait).await;
                Attempt::Retry { error, after: None }
            })
            .await;
        result.unwrap_err()
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_cut_short_by_the_deadline_reports_the_answer_before_it() {
        let gave_up = reported_after_a_cut_short_retry(|left| Error::Timeout {
            what: "remote-write request".into(),
            timeout: left,
        })
        .await;
        assert!(gave_up.retriable);
        assert_eq!(gave_up.error.to_string(), server_error().to_string());
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_answer_at_the_deadline_is_reported_as_it_is() {
        let late = |_| Error::RemoteWrite {
            target: "t".into(),
            status: Some(503),
            message: "HTTP 503: late".into(),
        };
        let gave_up = reported_after_a_cut_short_retry(late).await;
        assert_eq!(gave_up.error.to_string(), late(Duration::ZERO).to_string());
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_are_never_retried() {
        let calls = Arc::new(AtomicU32::new(0));
        let result: Result<(), GaveUp> = policy()
            .run(Instant::now() + Duration::from_secs(30), |_, _| {
                let calls = calls.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Attempt::Fail(server_error())
                }
            })
            .await;
        assert!(!result.unwrap_err().retriable);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_waited_exactly() {
        let started = Instant::now();
        let times = Arc::new(std::sync::Mutex::new(Vec::new()));
        let result = policy()
            .run(started + Duration::from_secs(30), |n, _| {
                times.lock().unwrap().push(started.elapsed());
                async move {
                    if n == 0 {
                        Attempt::Retry {
                            error: server_error(),
                            after: Some(Duration::from_secs(3)),
                        }
                    } else {
                        Attempt::Done(())
                    }
                }
            })
            .await;
        assert!(result.is_ok());
        assert_eq!(
            *times.lock().unwrap(),
            [Duration::ZERO, Duration::from_secs(3)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_past_the_deadline_gives_up_at_once_with_a_resume_time() {
        let started = Instant::now();
        let result: Result<(), GaveUp> = policy()
            .run(started + Duration::from_secs(5), |_, _| async {
                Attempt::Retry {
                    error: server_error(),
                    after: Some(Duration::from_secs(60)),
                }
            })
            .await;
        let gave_up = result.unwrap_err();
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(gave_up.not_before, Some(started + Duration::from_secs(60)));
    }
}
