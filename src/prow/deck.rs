//! Running jobs from Prow's deck: `GET <deck>/prowjobs.js?omit=decoration_config`.
//!
//! The body is `{"items":[<ProwJob>...]}` with every job Prow still keeps
//! (tens of MB on OpenShift CI). It is never held whole: the HTTP byte stream
//! feeds a blocking reader, and a serde visitor over `items` deserializes one
//! job at a time into [`ProwJob`] (only the fields we read), keeps it if it is
//! a running vSphere job and drops it otherwise. Memory is O(one job) plus the
//! matches.

use std::fmt;
use std::io::Read;
use std::time::Duration;

use futures::TryStreamExt;
use serde::Deserializer as _;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::job::ProwJob;
use super::{JobSelector, RunningJob};
use crate::error::{Error, truncate_body};

/// Deck's job list path, without the decoration config (large, unused).
pub const PROWJOBS_PATH: &str = "prowjobs.js?omit=decoration_config";

/// Reads running jobs from one deck.
#[derive(Debug, Clone)]
pub struct DeckSource {
    url: url::Url,
    selector: JobSelector,
    timeout: Duration,
    http: reqwest::Client,
}

impl DeckSource {
    /// `base` is the deck root (`https://prow.ci.openshift.org`); `timeout`
    /// bounds the whole request, body included.
    pub fn new(base: url::Url, timeout: Duration, selector: JobSelector) -> Result<Self, Error> {
        let mut base = base;
        // Url::join drops the last path segment unless it ends with '/'.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let url = base
            .join(PROWJOBS_PATH)
            .map_err(|e| Error::Config(format!("--prow {base}: {e}")))?;
        // No redirects: deck is read from the configured host only.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!(
                env!("CARGO_PKG_NAME"),
                "/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|e| Error::Config(format!("deck HTTP client: {e}")))?;
        Ok(DeckSource {
            url,
            selector,
            timeout,
            http,
        })
    }

    /// The full URL fetched, for logs and `describe`.
    pub fn url(&self) -> &url::Url {
        &self.url
    }

    /// Fetch and stream-parse the job list.
    pub async fn list_running_jobs(&self) -> Result<Vec<RunningJob>, Error> {
        let url = self.url.to_string();
        let http_error = |e: reqwest::Error| Error::DeckHttp {
            url: url.clone(),
            message: if e.is_timeout() {
                format!("timed out after {:?}", self.timeout)
            } else {
                // The URL is in the error already; its text would repeat it.
                crate::error::error_chain(&e.without_url())
            },
        };
        let response = self
            .http
            .get(self.url.clone())
            .send()
            .await
            .map_err(http_error)?;
        let status = response.status();
        tracing::debug!(url = %url, status = status.as_u16(), "Deck answered");
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(Error::DeckHttp {
                url,
                message: format!("HTTP {}: {}", status.as_u16(), truncate_body(&body, 1024)),
            });
        }
        let stream = response.bytes_stream().map_err(std::io::Error::other);
        let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
        let selector = self.selector.clone();
        let parsed = tokio::task::spawn_blocking(move || {
            parse_deck(
                std::io::BufReader::with_capacity(64 * 1024, reader),
                &selector,
            )
        })
        .await
        .map_err(|e| Error::DeckParse {
            url: url.clone(),
            message: format!("parser task failed: {e}"),
        })?;
        parsed.map_err(|e| {
            if e.is_io() {
                // The body stream broke (timeout, reset): a transport failure.
                Error::DeckHttp {
                    url: url.clone(),
                    message: format!("reading the body: {}", io_message(&e, self.timeout)),
                }
            } else {
                Error::DeckParse {
                    url: url.clone(),
                    message: e.to_string(),
                }
            }
        })
    }
}

fn io_message(e: &serde_json::Error, timeout: Duration) -> String {
    let text = crate::error::error_chain(e);
    if text.contains("timed out") || text.contains("operation timed out") {
        format!("timed out after {timeout:?}")
    } else {
        text
    }
}

/// Parse a deck body `{"items":[...]}` from `reader`, keeping only the jobs
/// `selector` picks. Other top-level keys are skipped; a missing `items` gives
/// no jobs. Errors carry serde's line and column (`expected value at line 1
/// column 1` for an HTML page, `EOF while parsing` for a cut body).
pub fn parse_deck<R: Read>(
    reader: R,
    selector: &JobSelector,
) -> Result<Vec<RunningJob>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_reader(reader);
    let jobs = (&mut de).deserialize_map(DeckVisitor { selector })?;
    de.end()?;
    Ok(jobs)
}

struct DeckVisitor<'a> {
    selector: &'a JobSelector,
}

impl<'de> Visitor<'de> for DeckVisitor<'_> {
    type Value = Vec<RunningJob>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a deck job list object {\"items\": [...]}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut jobs = Vec::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "items" {
                map.next_value_seed(ItemsSeed {
                    selector: self.selector,
                    jobs: &mut jobs,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(jobs)
    }
}

/// Visits the `items` array, one [`ProwJob`] at a time.
struct ItemsSeed<'a> {
    selector: &'a JobSelector,
    jobs: &'a mut Vec<RunningJob>,
}

impl<'de> DeserializeSeed<'de> for ItemsSeed<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ItemsSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of ProwJobs (or null)")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(job) = seq.next_element::<ProwJob>()? {
            if let Some(running) = job.select(self.selector) {
                self.jobs.push(running);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Vec<RunningJob>, serde_json::Error> {
        parse_deck(body.as_bytes(), &JobSelector::default())
    }

    const VSPHERE_JOB: &str = r#"{"metadata":{"name":"a","labels":{"ci-operator.openshift.io/cloud":"vsphere"}},
        "spec":{"cluster":"vsphere02","pod_spec":{"containers":[{"args":["--target=t"]}]}},
        "status":{"state":"pending"}}"#;

    #[test]
    fn keeps_matching_jobs_and_skips_other_keys() {
        let body = format!(
            r#"{{"kind":"x","items":[{VSPHERE_JOB},{{"metadata":{{"name":"b"}},"status":{{"state":"success"}}}}],"extra":{{"a":[1,2]}}}}"#
        );
        let jobs = parse(&body).expect("valid body parses");
        assert_eq!(
            jobs.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
    }

    #[test]
    fn bad_bodies_table() {
        // (body, what the error must say)
        let cases = [
            ("<!DOCTYPE html><html></html>", "line 1 column 1"),
            ("garbage", "line 1 column 1"),
            (r#"{"items":[{"metadata":"#, "EOF"),
            ("[1,2]", "invalid type"),
            (r#"{"items":[]} trailing"#, "trailing characters"),
            (r#"{"items":[{"status":{"state":5}}]}"#, "invalid type"),
            ("", "EOF"),
        ];
        for (body, want) in cases {
            let err = parse(body).expect_err(body);
            assert!(err.to_string().contains(want), "{body}: {err}");
        }
    }

    #[test]
    fn empty_and_null_items_give_no_jobs() {
        assert!(parse(r#"{"items":null}"#).unwrap().is_empty());
        assert!(parse(r#"{}"#).unwrap().is_empty());
    }
}
