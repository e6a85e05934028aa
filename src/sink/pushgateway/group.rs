//! The group's URL on the Pushgateway: `<base>/metrics/job/<job>{/<label>/<value>}`,
//! each segment encoded the way the gateway reads it back.

use std::collections::BTreeMap;

use base64::Engine as _;
use url::Url;

use crate::error::Error;

/// The group's URL: `<base>/metrics/job/<job>{/<label>/<value>}`.
pub(super) fn group_url(
    base: &Url,
    job: &str,
    grouping: &BTreeMap<String, String>,
) -> Result<Url, Error> {
    let mut url = base.clone();
    {
        let mut segments = url.path_segments_mut().map_err(|()| {
            Error::Config(format!(
                "pushgateway.url: {:?} cannot be a base URL",
                base.as_str()
            ))
        })?;
        segments.pop_if_empty().push("metrics");
        for (name, value) in std::iter::once(("job", job)).chain(
            grouping
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str())),
        ) {
            if needs_base64(value) {
                segments.push(&format!("{name}@base64"));
                segments.push(&encode_base64(value));
            } else {
                // `push` percent-encodes the segment.
                segments.push(name);
                segments.push(value);
            }
        }
    }
    Ok(url)
}

/// Values the Pushgateway can only read in base64: a `/` would split the
/// segment (even encoded as `%2F`), and an empty or dot segment disappears
/// when the path is cleaned.
fn needs_base64(value: &str) -> bool {
    value.is_empty() || value.contains('/') || value == "." || value == ".."
}

/// RFC 4648 URL-safe base64; the Pushgateway reads a lone `=` as the empty
/// value (its README, "URL" section).
fn encode_base64(value: &str) -> String {
    if value.is_empty() {
        "=".to_string()
    } else {
        base64::engine::general_purpose::URL_SAFE.encode(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Base URL, job, grouping labels, expected group URL.
    type UrlCase<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    fn url(text: &str) -> Url {
        Url::parse(text).expect("test URLs are valid")
    }

    fn grouping(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn group_urls_encode_each_segment_as_the_gateway_reads_it() {
        let cases: &[UrlCase] = &[
            (
                "http://pg:9091",
                "vsphere-ci-session-metrics",
                &[],
                "http://pg:9091/metrics/job/vsphere-ci-session-metrics",
            ),
            (
                "http://pg:9091/",
                "j",
                &[("vcenter", "vc1.example.com")],
                "http://pg:9091/metrics/job/j/vcenter/vc1.example.com",
            ),
            (
                "https://proxy.example.com/pushgateway/",
                "j",
                &[],
                "https://proxy.example.com/pushgateway/metrics/job/j",
            ),
            // Grouping labels come in name order.
            (
                "http://pg:9091",
                "j",
                &[("zone", "z"), ("instance", "i")],
                "http://pg:9091/metrics/job/j/instance/i/zone/z",
            ),
            (
                "http://pg:9091",
                "ci/jobs",
                &[],
                "http://pg:9091/metrics/job@base64/Y2kvam9icw==",
            ),
            (
                "http://pg:9091",
                "j",
                &[("dc", "a/b")],
                "http://pg:9091/metrics/job/j/dc@base64/YS9i",
            ),
            // URL-safe alphabet: standard base64 of "???/" is "Pz8/Lw==".
            (
                "http://pg:9091",
                "j",
                &[("dc", "???/")],
                "http://pg:9091/metrics/job/j/dc@base64/Pz8_Lw==",
            ),
            (
                "http://pg:9091",
                "j",
                &[("shard", "")],
                "http://pg:9091/metrics/job/j/shard@base64/=",
            ),
            (
                "http://pg:9091",
                "j",
                &[("a", "."), ("b", "..")],
                "http://pg:9091/metrics/job/j/a@base64/Lg==/b@base64/Li4=",
            ),
            (
                "http://pg:9091",
                "j",
                &[("site", "a b%?#")],
                "http://pg:9091/metrics/job/j/site/a%20b%25%3F%23",
            ),
            (
                "http://pg:9091",
                "j",
                &[("user", "ci@vsphere.local")],
                "http://pg:9091/metrics/job/j/user/ci@vsphere.local",
            ),
        ];
        for (base, job, pairs, expected) in cases {
            let built = group_url(&url(base), job, &grouping(pairs)).unwrap();
            assert_eq!(built.as_str(), *expected, "{base} {job} {pairs:?}");
        }
    }
}
