//! A real Pushgateway (Debian's `prometheus-pushgateway`, 1.5 here) on a free
//! loopback port, for the sink's tests, and its groups read back through the
//! JSON API (`GET /api/v1/metrics`).
//!
//! Each test starts its own gateway (well under a second) with its
//! persistence file in a temp dir; it is killed when dropped.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use url::Url;

const BINARY: &str = "/usr/bin/prometheus-pushgateway";
/// The gateway is ready in well under a second; this bound only matters on a
/// starved CI machine.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Pushgateway {
    child: Child,
    /// Base URL, e.g. `http://127.0.0.1:40123/`.
    pub url: Url,
    dir: tempfile::TempDir,
}

/// One group as the gateway shows it.
#[derive(Debug, Clone)]
pub struct Group {
    /// The grouping key (`job` and the other grouping labels).
    pub labels: BTreeMap<String, String>,
    pub last_push_successful: bool,
    /// Metric families by name, including the gateway's own
    /// `push_time_seconds` and `push_failure_time_seconds`.
    pub families: BTreeMap<String, Family>,
}

#[derive(Debug, Clone)]
pub struct Family {
    /// `GAUGE`, `COUNTER`, ...
    pub metric_type: String,
    pub series: Vec<Series>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Group {
    /// The series of a family, sorted by labels; empty when it is absent.
    pub fn series(&self, name: &str) -> Vec<Series> {
        let mut series = self
            .families
            .get(name)
            .map(|f| f.series.clone())
            .unwrap_or_default();
        series.sort_by(|a, b| a.labels.cmp(&b.labels));
        series
    }

    /// The value of the gateway's own gauge for this group, e.g.
    /// `push_failure_time_seconds`.
    pub fn own_gauge(&self, name: &str) -> f64 {
        let series = self.series(name);
        assert_eq!(series.len(), 1, "{name} in group {:?}", self.labels);
        series[0].value
    }
}

/// Labels from `[("k", "v"), ...]`.
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Pushgateway {
    /// Start a gateway and wait until `/-/ready` answers 200.
    pub async fn start() -> Pushgateway {
        assert!(
            Path::new(BINARY).exists(),
            "{BINARY} is missing: install Debian package prometheus-pushgateway \
             (scripts/test.sh does it)"
        );
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        // The port is free when probed but another process may take it before
        // the gateway binds it: then the gateway exits and we try another.
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = free_port();
            let log_path = dir.path().join(format!("pushgateway-{port}.log"));
            let log = File::create(&log_path).expect("the log file can be created in the temp dir");
            let mut child = Command::new(BINARY)
                .arg("--web.listen-address")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--persistence.file")
                .arg(dir.path().join("persistence"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("the log file handle can be cloned"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {BINARY}: {e}"));
            let url = Url::parse(&format!("http://127.0.0.1:{port}/")).expect("a valid URL");
            if wait_ready(&mut child, &url).await {
                return Pushgateway { child, url, dir };
            }
            last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("the Pushgateway did not become ready; its log:\n{last_log}");
    }

    /// Every group the gateway holds.
    pub async fn groups(&self) -> Vec<Group> {
        let api = self.url.join("api/v1/metrics").expect("a valid path");
        let text = reqwest::get(api)
            .await
            .expect("the gateway answers its API")
            .text()
            .await
            .expect("the API answers a body");
        let body: Value = serde_json::from_str(&text).expect("the API answers JSON");
        assert_eq!(body["status"], "success", "{body}");
        body["data"]
            .as_array()
            .expect("data is a list of groups")
            .iter()
            .map(parse_group)
            .collect()
    }

    /// The group with exactly this grouping key, if the gateway has it.
    pub async fn group(&self, key: &[(&str, &str)]) -> Option<Group> {
        let key = labels(key);
        self.groups().await.into_iter().find(|g| g.labels == key)
    }
}

/// Poll `/-/ready`; false when the process exits or time runs out.
async fn wait_ready(child: &mut Child, url: &Url) -> bool {
    let client = reqwest::Client::new();
    let ready = url.join("-/ready").expect("a valid path");
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if let Ok(response) = client
            .get(ready.clone())
            .timeout(Duration::from_secs(1))
            .send()
            .await
            && response.status().is_success()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn parse_group(group: &Value) -> Group {
    let object = group.as_object().expect("a group is an object");
    let mut families = BTreeMap::new();
    for (name, family) in object {
        if name == "labels" || name == "last_push_successful" {
            continue;
        }
        let series = family["metrics"]
            .as_array()
            .expect("a family has a metrics list")
            .iter()
            .map(|m| Series {
                labels: string_map(&m["labels"]),
                value: m["value"]
                    .as_str()
                    .expect("a value is a string")
                    .parse()
                    .expect("a value is a number"),
            })
            .collect();
        families.insert(
            name.clone(),
            Family {
                metric_type: family["type"].as_str().unwrap_or_default().to_string(),
                series,
            },
        );
    }
    Group {
        labels: string_map(&group["labels"]),
        last_push_successful: group["last_push_successful"]
            .as_bool()
            .expect("last_push_successful is a bool"),
        families,
    }
}

fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .expect("labels are an object")
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_str().expect("label values are strings").to_string(),
            )
        })
        .collect()
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0 works")
        .port()
}

impl Drop for Pushgateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
