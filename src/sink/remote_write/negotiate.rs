//! What a receiver's answer means for the request that got it, and for the
//! protocol spoken from then on: the one place that decides delivery,
//! retry, refusal and the Remote-Write 2.0 -> 1.0 fallback. Pure, so every
//! case is a row of the table test below.
//!
//! A 2.0 receiver confirms a request with the
//! `X-Prometheus-Remote-Write-Samples-Written` header
//! (<https://prometheus.io/docs/specs/prw/remote_write_spec_2_0/#required-written-response-headers>).
//! A 1.0-only receiver shows itself three ways: HTTP 415; HTTP 400 before
//! any 2.0 request was confirmed (it could not decode the body); or a 2xx
//! without the header (it decoded the 2.0 body as an empty 1.0 message and
//! wrote nothing).

use super::config::Protocol;
use super::encode::WireVersion;
use super::retry::{Verdict, classify};

/// What the receiver said, reduced to what the decision needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// The 2.0 samples-written header was present.
    pub samples_written: bool,
}

/// What is known of the target before the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    /// The configured protocol (`auto` may fall back).
    pub protocol: Protocol,
    /// The message the request carried.
    pub sent: WireVersion,
    /// A 2.0 request to this target was confirmed before.
    pub v2_confirmed: bool,
    /// `queue_config.retry_on_http_429`.
    pub retry_on_http_429: bool,
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Written. `confirmed_v2`: a 2.0 request was confirmed.
    Delivered { confirmed_v2: bool },
    /// The receiver speaks only 1.0: send the same cycles as 1.0 now and
    /// from now on.
    FallBackToV1,
    /// `protocol: v2` and the receiver does not speak it: drop, never retry.
    Unsupported,
    /// May pass: try again later, honouring `Retry-After` when asked.
    RetryLater { honour_retry_after: bool },
    /// Refused for good: drop the request.
    Refused,
}

/// Decide what an answer means.
pub fn next(known: Known, answer: Answer) -> Next {
    let auto = known.protocol == Protocol::Auto;
    let v2 = known.sent == WireVersion::V2;
    match classify(answer.status) {
        Verdict::Delivered if !v2 => Next::Delivered {
            confirmed_v2: false,
        },
        Verdict::Delivered if answer.samples_written => Next::Delivered { confirmed_v2: true },
        Verdict::Delivered if auto => Next::FallBackToV1,
        Verdict::Delivered => Next::Unsupported,
        Verdict::Retry if answer.status == 429 && !known.retry_on_http_429 => Next::Refused,
        Verdict::Retry => Next::RetryLater {
            honour_retry_after: answer.status == 429 || answer.status == 503,
        },
        Verdict::Refused => {
            let v1_only = answer.status == 415 || (answer.status == 400 && !known.v2_confirmed);
            if v2 && auto && v1_only {
                Next::FallBackToV1
            } else {
                Next::Refused
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_answer_gets_the_decision_the_specs_imply() {
        use Next::*;
        use Protocol::{Auto, V1, V2};
        use WireVersion as W;
        let rows: &[(Protocol, W, bool, bool, u16, bool, Next)] = &[
            // protocol, sent, confirmed before, retry 429, status, header -> next
            (
                V1,
                W::V1,
                false,
                true,
                204,
                false,
                Delivered {
                    confirmed_v2: false,
                },
            ),
            (
                V1,
                W::V1,
                false,
                true,
                200,
                true,
                Delivered {
                    confirmed_v2: false,
                },
            ),
            (
                V2,
                W::V2,
                false,
                true,
                204,
                true,
                Delivered { confirmed_v2: true },
            ),
            (
                Auto,
                W::V2,
                false,
                true,
                204,
                true,
                Delivered { confirmed_v2: true },
            ),
            // 2xx without the header: a 1.0-only receiver wrote nothing.
            (Auto, W::V2, false, true, 204, false, FallBackToV1),
            (V2, W::V2, false, true, 204, false, Unsupported),
            // 415, and 400 before any confirmation: 1.0 only.
            (Auto, W::V2, false, true, 415, false, FallBackToV1),
            (Auto, W::V2, false, true, 400, false, FallBackToV1),
            (Auto, W::V2, true, true, 400, false, Refused),
            (V2, W::V2, false, true, 415, false, Refused),
            (V1, W::V1, false, true, 400, false, Refused),
            (Auto, W::V1, false, true, 400, false, Refused),
            (V1, W::V1, false, true, 404, false, Refused),
            // Server errors and throttling.
            (
                V1,
                W::V1,
                false,
                true,
                500,
                false,
                RetryLater {
                    honour_retry_after: false,
                },
            ),
            (
                V1,
                W::V1,
                false,
                true,
                503,
                false,
                RetryLater {
                    honour_retry_after: true,
                },
            ),
            (
                V1,
                W::V1,
                false,
                true,
                429,
                false,
                RetryLater {
                    honour_retry_after: true,
                },
            ),
            (V1, W::V1, false, false, 429, false, Refused),
            (
                V1,
                W::V1,
                false,
                false,
                503,
                false,
                RetryLater {
                    honour_retry_after: true,
                },
            ),
        ];
        for &(protocol, sent, v2_confirmed, retry_on_http_429, status, header, want) in rows {
            let known = Known {
                protocol,
                sent,
                v2_confirmed,
                retry_on_http_429,
            };
            let answer = Answer {
                status,
                samples_written: header,
            };
            assert_eq!(next(known, answer), want, "{known:?} {answer:?}");
        }
    }
}
