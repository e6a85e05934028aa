//! Turning a [`Snapshot`] into remote-write requests.
//!
//! Follows the Remote-Write 1.0 spec
//! (<https://prometheus.io/docs/specs/remote_write_spec/>) and 2.0 spec
//! (<https://prometheus.io/docs/specs/prw/remote_write_spec_2_0/>):
//!
//! - every series carries `__name__`, its labels sorted by name and unique,
//!   labels with an empty value left out (an empty value means "no such label"
//!   in Prometheus), label names matching `[a-zA-Z_][a-zA-Z0-9_]*`;
//! - a series that breaks a rule is dropped here and counted, never sent:
//!   Prometheus 2.42 answers a duplicate label name or an empty label set with
//!   HTTP 500, which a 5xx retry would repeat forever;
//! - external labels are added only where the series lacks that label name,
//!   as Prometheus does;
//! - one timestamp (ms) per cycle;
//! - bodies are snappy *block* format (`snap::raw`), never the framed format.
//!
//! Preparing (validation, sorting) happens once per cycle in [`prepare`]; the
//! prepared [`Cycle`] is what the outage buffer keeps, so a resend is
//! byte-for-byte the same request.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use prost::Message as _;

use super::proto::{v1, v2};
use crate::error::Error;
use crate::metrics::{MetricType, Snapshot, is_valid_label_name};

/// The bits of Prometheus's staleness marker (`value.StaleNaN`). It must go on
/// the wire exactly like this: a normalised NaN is an ordinary NaN sample and
/// would not end the series.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// The staleness marker as a float, with its exact bits.
pub fn stale_nan() -> f64 {
    f64::from_bits(STALE_NAN_BITS)
}

/// Whether a value is the staleness marker (compared by bits: every NaN
/// compares unequal to itself).
pub fn is_stale_marker(value: f64) -> bool {
    value.to_bits() == STALE_NAN_BITS
}

/// Which message a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireVersion {
    /// `prometheus.WriteRequest` (Remote-Write 1.0).
    V1,
    /// `io.prometheus.write.v2.Request` (Remote-Write 2.0).
    V2,
}

impl WireVersion {
    /// The `Content-Type` header for this message.
    pub fn content_type(self) -> &'static str {
        match self {
            WireVersion::V1 => "application/x-protobuf",
            WireVersion::V2 => "application/x-protobuf;proto=io.prometheus.write.v2.Request",
        }
    }

    /// The `X-Prometheus-Remote-Write-Version` header for this message.
    pub fn version_header(self) -> &'static str {
        match self {
            WireVersion::V1 => "0.1.0",
            WireVersion::V2 => "2.0.0",
        }
    }

    /// Short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            WireVersion::V1 => "v1",
            WireVersion::V2 => "v2",
        }
    }
}

/// The full label set of one series: `__name__` first among equals, sorted by
/// name, unique, no empty values. Shared between cycles and the live-series
/// map, hence the `Arc`.
pub type SeriesLabels = Arc<Vec<(String, String)>>;

/// What a series is, for v1 metadata and v2 per-series metadata.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeriesMeta {
    pub family: &'static str,
    pub metric_type: MetricType,
    pub help: &'static str,
}

/// One sample of a prepared cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub labels: SeriesLabels,
    pub meta: SeriesMeta,
    pub value: f64,
}

/// A cycle ready to send: validated series, one timestamp. Stale markers for
/// series that ended are added to it by the sink before it is buffered.
#[derive(Debug, Clone, PartialEq)]
pub struct Cycle {
    pub timestamp_ms: i64,
    pub points: Vec<Point>,
}

impl Cycle {
    pub fn sample_count(&self) -> usize {
        self.points.len()
    }
}

/// A cycle and the series that could not be sent.
#[derive(Debug)]
pub struct Prepared {
    pub cycle: Cycle,
    /// Series dropped for breaking a label rule, with the reason for each.
    pub invalid: Vec<String>,
}

/// Whether a metric name is valid: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Check external labels once, at construction: valid names, no `__name__`,
/// no duplicates. Returns them sorted, without empty values.
pub fn normalise_external_labels(
    labels: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, Error> {
    let mut labels: Vec<(String, String)> =
        labels.into_iter().filter(|(_, v)| !v.is_empty()).collect();
    labels.sort();
    for (i, (name, _)) in labels.iter().enumerate() {
        if !is_valid_label_name(name) || name.starts_with("__") {
            return Err(Error::Config(format!(
                "external label {name:?}: a label name must match [a-zA-Z_][a-zA-Z0-9_]* and not start with __"
            )));
        }
        if i > 0 && labels[i - 1].0 == *name {
            return Err(Error::Config(format!(
                "external label {name:?} is given twice"
            )));
        }
    }
    Ok(labels)
}

/// Build the full label set of one sample, or say why it cannot be sent.
fn series_labels(
    family: &str,
    labels: &[(String, String)],
    external: &[(String, String)],
) -> Result<Vec<(String, String)>, String> {
    if !is_valid_metric_name(family) {
        return Err(format!("invalid metric name {family:?}"));
    }
    let mut out: Vec<(String, String)> = Vec::with_capacity(labels.len() + external.len() + 1);
    out.push(("__name__".to_string(), family.to_string()));
    for (name, value) in labels {
        if !is_valid_label_name(name) {
            return Err(format!("{family}: invalid label name {name:?}"));
        }
        if value.is_empty() {
            continue;
        }
        out.push((name.clone(), value.clone()));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(pair) = out.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(format!("{family}: label {:?} given twice", pair[0].0));
    }
    // External labels fill in only the names the series lacks (Prometheus's
    // rule); both lists are sorted, so this is a merge.
    if !external.is_empty() {
        let mut merged = Vec::with_capacity(out.len() + external.len());
        let mut own = out.into_iter().peekable();
        let mut ext = external.iter().peekable();
        loop {
            match (own.peek(), ext.peek()) {
                (Some(o), Some(e)) => {
                    if o.0 < e.0 {
                        merged.push(own.next().expect("peeked"));
                    } else if o.0 == e.0 {
                        merged.push(own.next().expect("peeked"));
                        ext.next();
                    } else {
                        merged.push(ext.next().expect("peeked").clone());
                    }
                }
                (Some(_), None) => merged.push(own.next().expect("peeked")),
                (None, Some(_)) => merged.push(ext.next().expect("peeked").clone()),
                (None, None) => break,
            }
        }
        out = merged;
    }
    Ok(out)
}

/// Validate and sort a snapshot's series once. Series that break a rule, and
/// repeats of a label set already seen in this snapshot (two values at one
/// timestamp would make Prometheus refuse the whole request), are left out and
/// listed in [`Prepared::invalid`].
pub fn prepare(snapshot: &Snapshot, external_labels: &[(String, String)]) -> Prepared {
    let mut points = Vec::with_capacity(snapshot.sample_count());
    let mut invalid = Vec::new();
    let mut seen: HashSet<SeriesLabels> = HashSet::with_capacity(snapshot.sample_count());
    for family in &snapshot.families {
        let meta = SeriesMeta {
            family: family.name,
            metric_type: family.metric_type,
            help: family.help,
        };
        for sample in &family.samples {
            match series_labels(family.name, &sample.labels, external_labels) {
                Ok(labels) => {
                    let labels = Arc::new(labels);
                    if !seen.insert(labels.clone()) {
                        invalid.push(format!("{}: the same series twice", family.name));
                        continue;
                    }
                    points.push(Point {
                        labels,
                        meta,
                        value: sample.value,
                    });
                }
                Err(reason) => invalid.push(reason),
            }
        }
    }
    Prepared {
        cycle: Cycle {
            timestamp_ms: snapshot.timestamp_ms,
            points,
        },
        invalid,
    }
}

fn v1_type(t: MetricType) -> v1::metric_metadata::MetricType {
    match t {
        MetricType::Gauge => v1::metric_metadata::MetricType::Gauge,
        MetricType::Counter => v1::metric_metadata::MetricType::Counter,
    }
}

fn v2_type(t: MetricType) -> v2::metadata::MetricType {
    match t {
        MetricType::Gauge => v2::metadata::MetricType::Gauge,
        MetricType::Counter => v2::metadata::MetricType::Counter,
    }
}

/// The series of a batch of cycles (oldest first), in first-seen order,
/// each with its samples in time order: a series that repeats every cycle
/// goes out once with several samples, and a stale marker after the
/// series' last value.
fn series_of<'a>(cycles: &[&'a Cycle]) -> Vec<(&'a Point, Vec<(i64, f64)>)> {
    let mut index: HashMap<&'a [(String, String)], usize> = HashMap::new();
    let mut series: Vec<(&'a Point, Vec<(i64, f64)>)> = Vec::new();
    for cycle in cycles {
        for p in &cycle.points {
            let sample = (cycle.timestamp_ms, p.value);
            match index.get(p.labels.as_slice()) {
                Some(&i) => series[i].1.push(sample),
                None => {
                    index.insert(p.labels.as_slice(), series.len());
                    series.push((p, vec![sample]));
                }
            }
        }
    }
    series
}

/// The Remote-Write 1.0 message for one cycle, with one metadata entry per
/// metric family (in name order, so requests are reproducible).
pub fn write_request_v1(cycle: &Cycle) -> v1::WriteRequest {
    write_request_v1_batch(&[cycle])
}

/// The Remote-Write 1.0 message for several cycles, oldest first.
pub fn write_request_v1_batch(cycles: &[&Cycle]) -> v1::WriteRequest {
    let mut families: BTreeMap<&'static str, SeriesMeta> = BTreeMap::new();
    let timeseries = series_of(cycles)
        .into_iter()
        .map(|(p, samples)| {
            families.entry(p.meta.family).or_insert(p.meta);
            v1::TimeSeries {
                labels: p
                    .labels
                    .iter()
                    .map(|(name, value)| v1::Label {
                        name: name.clone(),
                        value: value.clone(),
                    })
                    .collect(),
                samples: samples
                    .into_iter()
                    .map(|(timestamp, value)| v1::Sample { value, timestamp })
                    .collect(),
            }
        })
        .collect();
    let metadata = families
        .values()
        .map(|m| v1::MetricMetadata {
            r#type: v1_type(m.metric_type) as i32,
            metric_family_name: m.family.to_string(),
            help: m.help.to_string(),
            unit: String::new(),
        })
        .collect();
    v1::WriteRequest {
        timeseries,
        metadata,
    }
}

/// Interns strings into the v2 symbols table; index 0 is always "".
struct Symbols<'a> {
    table: Vec<&'a str>,
    index: HashMap<&'a str, u32>,
}

impl<'a> Symbols<'a> {
    fn new() -> Self {
        let mut index = HashMap::new();
        index.insert("", 0);
        Symbols {
            table: vec![""],
            index,
        }
    }

    fn intern(&mut self, s: &'a str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = u32::try_from(self.table.len()).unwrap_or(u32::MAX);
        self.table.push(s);
        self.index.insert(s, i);
        i
    }
}

/// The Remote-Write 2.0 message for one cycle: a deduplicated symbols table
/// starting with "", label refs, and type and help metadata on every series.
pub fn write_request_v2(cycle: &Cycle) -> v2::Request {
    write_request_v2_batch(&[cycle])
}

/// The Remote-Write 2.0 message for several cycles, oldest first.
pub fn write_request_v2_batch(cycles: &[&Cycle]) -> v2::Request {
    let mut symbols = Symbols::new();
    let timeseries = series_of(cycles)
        .into_iter()
        .map(|(p, samples)| {
            let mut labels_refs = Vec::with_capacity(p.labels.len() * 2);
            for (name, value) in p.labels.iter() {
                labels_refs.push(symbols.intern(name));
                labels_refs.push(symbols.intern(value));
            }
            v2::TimeSeries {
                labels_refs,
                samples: samples
                    .into_iter()
                    .map(|(timestamp, value)| v2::Sample { value, timestamp })
                    .collect(),
                histograms: Vec::new(),
                exemplars: Vec::new(),
                metadata: Some(v2::Metadata {
                    r#type: v2_type(p.meta.metric_type) as i32,
                    help_ref: symbols.intern(p.meta.help),
                    unit_ref: 0,
                }),
                created_timestamp: 0,
            }
        })
        .collect();
    v2::Request {
        symbols: symbols.table.into_iter().map(str::to_string).collect(),
        timeseries,
    }
}

/// The protobuf bytes of one cycle in the given version.
pub fn encode(cycle: &Cycle, version: WireVersion) -> Vec<u8> {
    encode_batch(&[cycle], version)
}

/// The protobuf bytes of several cycles (oldest first) in one request.
pub fn encode_batch(cycles: &[&Cycle], version: WireVersion) -> Vec<u8> {
    match version {
        WireVersion::V1 => write_request_v1_batch(cycles).encode_to_vec(),
        WireVersion::V2 => write_request_v2_batch(cycles).encode_to_vec(),
    }
}

/// Snappy block-format compression, as both specs require (never the framed
/// "stream" format, which receivers reject).
pub fn compress(bytes: &[u8]) -> Result<Vec<u8>, snap::Error> {
    snap::raw::Encoder::new().compress_vec(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::MetricFamily;

    fn snapshot(families: Vec<MetricFamily>) -> Snapshot {
        Snapshot {
            timestamp_ms: 1_000,
            families,
        }
    }

    fn names(labels: &[(String, String)]) -> Vec<&str> {
        labels.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn labels_are_sorted_named_and_empty_values_are_dropped() {
        let s = snapshot(vec![
            MetricFamily::gauge("m", "h").with([("zeta", "1"), ("alpha", "2"), ("empty", "")], 1.0),
        ]);
        let p = prepare(&s, &[]);
        assert!(p.invalid.is_empty());
        assert_eq!(
            names(&p.cycle.points[0].labels),
            ["__name__", "alpha", "zeta"]
        );
        assert_eq!(p.cycle.points[0].labels[0].1, "m");
    }

    #[test]
    fn external_labels_fill_in_only_missing_names() {
        let s = snapshot(vec![
            MetricFamily::gauge("m", "h").with([("site", "own")], 1.0),
        ]);
        let ext = normalise_external_labels(vec![
            ("site".into(), "ext".into()),
            ("cluster_a".into(), "x".into()),
        ])
        .unwrap();
        let p = prepare(&s, &ext);
        let labels = &p.cycle.points[0].labels;
        assert_eq!(names(labels), ["__name__", "cluster_a", "site"]);
        assert_eq!(labels[2].1, "own");
    }

    #[test]
    fn series_with_invalid_or_repeated_label_names_are_dropped() {
        let mut family = MetricFamily::gauge("m", "h");
        family.samples.push(crate::metrics::Sample {
            labels: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
            value: 1.0,
        });
        family.push([("bad-name", "1")], 1.0);
        family.push([("__name__", "other")], 1.0);
        family.push([("ok", "1")], 1.0);
        family.push([("ok", "1")], 2.0);
        let p = prepare(&snapshot(vec![family]), &[]);
        assert_eq!(p.cycle.points.len(), 1);
        assert_eq!(p.invalid.len(), 4, "{:?}", p.invalid);
    }

    #[test]
    fn external_labels_must_be_valid_and_unique() {
        assert!(normalise_external_labels(vec![("a-b".into(), "1".into())]).is_err());
        assert!(normalise_external_labels(vec![("__name__".into(), "1".into())]).is_err());
        assert!(
            normalise_external_labels(vec![("a".into(), "1".into()), ("a".into(), "2".into())])
                .is_err()
        );
    }

    #[test]
    fn v2_symbols_start_empty_and_are_deduplicated() {
        let s = snapshot(vec![
            MetricFamily::gauge("m", "help")
                .with([("a", "x")], 1.0)
                .with([("a", "y")], 2.0),
        ]);
        let req = write_request_v2(&prepare(&s, &[]).cycle);
        assert_eq!(req.symbols[0], "");
        let unique: HashSet<&String> = req.symbols.iter().collect();
        assert_eq!(unique.len(), req.symbols.len());
        let ts = &req.timeseries[1];
        let labels: Vec<&str> = ts
            .labels_refs
            .iter()
            .map(|&i| req.symbols[i as usize].as_str())
            .collect();
        assert_eq!(labels, ["__name__", "m", "a", "y"]);
        let meta = ts.metadata.as_ref().unwrap();
        assert_eq!(req.symbols[meta.help_ref as usize], "help");
        assert_eq!(meta.r#type, v2::metadata::MetricType::Gauge as i32);
    }

    #[test]
    fn stale_marker_keeps_its_exact_bits_through_encoding() {
        let s = snapshot(vec![MetricFamily::gauge("m", "h").with([("a", "1")], 0.0)]);
        let mut cycle = prepare(&s, &[]).cycle;
        cycle.points[0].value = stale_nan();
        let bytes = snap::raw::Decoder::new()
            .decompress_vec(&compress(&encode(&cycle, WireVersion::V1)).unwrap())
            .unwrap();
        let req = v1::WriteRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(req.timeseries[0].samples[0].value.to_bits(), STALE_NAN_BITS);
        assert!(!is_stale_marker(f64::NAN));
    }
}
