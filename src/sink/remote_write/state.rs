//! What a remote-write target must remember between `once` runs: the series
//! it last sent (so the next run can end the ones that vanished with stale
//! markers) and the cycles it could not deliver (replayed first next run).
//!
//! The shape is ours, versioned and self-contained: a table of series
//! (labels, family, type) referenced by index from the live set and from
//! each buffered cycle's points. Values travel as their IEEE 754 bits,
//! since JSON has no NaN and a stale marker must keep its exact bits.
//! Everything read back is checked (indexes in range, label names valid),
//! so a damaged file is refused as a whole rather than half-used.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use super::encode::{Cycle, Point, SeriesLabels, SeriesMeta};
use crate::metrics::{MetricType, is_valid_label_name};

/// One target's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetState {
    /// Timestamp of the last cycle taken in; later cycles must be newer.
    pub last_timestamp_ms: Option<i64>,
    pub series: Vec<SeriesEntry>,
    /// Indexes into `series` of the series last sent.
    pub live: Vec<usize>,
    /// Cycles not delivered yet, oldest first.
    pub backlog: Vec<CycleEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesEntry {
    /// Sorted, `__name__` included, as sent.
    pub labels: Vec<(String, String)>,
    pub family: String,
    /// `gauge` or `counter`.
    #[serde(rename = "type")]
    pub metric_type: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CycleEntry {
    pub timestamp_ms: i64,
    /// (index into `series`, value bits).
    pub points: Vec<(usize, u64)>,
}

/// Metric family names and help texts live as `&'static str` in the sink;
/// names read from a state file are kept once each, for the process's life.
/// Bounded, so a hostile file cannot make the process keep an unbounded set.
const MAX_INTERNED_NAMES: usize = 4096;

fn static_name(name: &str) -> Option<&'static str> {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(known) = names.get(name) {
        return Some(known);
    }
    if names.len() >= MAX_INTERNED_NAMES {
        return None;
    }
    let leaked: &'static str = Box::leak(name.to_string().into_boxed_str());
    names.insert(leaked);
    Some(leaked)
}

/// Builds the series table while exporting.
#[derive(Default)]
struct Table {
    series: Vec<SeriesEntry>,
    index: HashMap<SeriesLabels, usize>,
}

impl Table {
    fn index_of(&mut self, labels: &SeriesLabels, meta: &SeriesMeta) -> usize {
        if let Some(&i) = self.index.get(labels) {
            return i;
        }
        let i = self.series.len();
        self.series.push(SeriesEntry {
            labels: labels.as_ref().clone(),
            family: meta.family.to_string(),
            metric_type: meta.metric_type.as_str().to_string(),
        });
        self.index.insert(labels.clone(), i);
        i
    }
}

/// The state of a target from its live series and its queue.
pub fn export<'a>(
    last_timestamp_ms: Option<i64>,
    live: impl IntoIterator<Item = (&'a SeriesLabels, &'a SeriesMeta)>,
    backlog: impl IntoIterator<Item = &'a Cycle>,
) -> TargetState {
    let mut table = Table::default();
    let mut live: Vec<usize> = live
        .into_iter()
        .map(|(labels, meta)| table.index_of(labels, meta))
        .collect();
    live.sort_unstable();
    let backlog = backlog
        .into_iter()
        .map(|cycle| CycleEntry {
            timestamp_ms: cycle.timestamp_ms,
            points: cycle
                .points
                .iter()
                .map(|p| (table.index_of(&p.labels, &p.meta), p.value.to_bits()))
                .collect(),
        })
        .collect();
    TargetState {
        last_timestamp_ms,
        series: table.series,
        live,
        backlog,
    }
}

/// A target's state made usable again, or why it cannot be.
pub struct Imported {
    pub last_timestamp_ms: Option<i64>,
    pub live: HashMap<SeriesLabels, SeriesMeta>,
    pub backlog: Vec<Cycle>,
}

/// Check and rebuild a target's state. The message names what is wrong,
/// never a value.
pub fn import(state: TargetState) -> Result<Imported, String> {
    let mut series: Vec<(SeriesLabels, SeriesMeta)> = Vec::with_capacity(state.series.len());
    for (i, entry) in state.series.into_iter().enumerate() {
        if entry.labels.is_empty() || entry.labels.iter().any(|(k, _)| !is_valid_label_name(k)) {
            return Err(format!("series {i} has an invalid label set"));
        }
        let metric_type = match entry.metric_type.as_str() {
            "gauge" => MetricType::Gauge,
            "counter" => MetricType::Counter,
            _ => return Err(format!("series {i} has an unknown type")),
        };
        let family = static_name(&entry.family)
            .ok_or_else(|| "too many distinct metric names".to_string())?;
        series.push((
            Arc::new(entry.labels),
            SeriesMeta {
                family,
                metric_type,
                help: "",
            },
        ));
    }
    let get = |i: usize| {
        series
            .get(i)
            .ok_or_else(|| format!("a series index ({i}) is out of range"))
    };
    let mut live = HashMap::with_capacity(state.live.len());
    for i in state.live {
        let (labels, meta) = get(i)?;
        live.insert(labels.clone(), *meta);
    }
    let mut backlog = Vec::with_capacity(state.backlog.len());
    let mut previous = i64::MIN;
    for cycle in state.backlog {
        if cycle.timestamp_ms <= previous {
            return Err("the backlog is not in time order".into());
        }
        previous = cycle.timestamp_ms;
        let points = cycle
            .points
            .into_iter()
            .map(|(i, bits)| {
                let (labels, meta) = get(i)?;
                Ok(Point {
                    labels: labels.clone(),
                    meta: *meta,
                    value: f64::from_bits(bits),
                })
            })
            .collect::<Result<Vec<Point>, String>>()?;
        backlog.push(Cycle {
            timestamp_ms: cycle.timestamp_ms,
            points,
        });
    }
    if let (Some(last), Some(newest)) = (state.last_timestamp_ms, backlog.last())
        && newest.timestamp_ms > last
    {
        return Err("the backlog is newer than the last cycle".into());
    }
    Ok(Imported {
        last_timestamp_ms: state.last_timestamp_ms,
        live,
        backlog,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::remote_write::encode::{STALE_NAN_BITS, stale_nan};

    fn meta() -> SeriesMeta {
        SeriesMeta {
            family: "m",
            metric_type: MetricType::Counter,
            help: "h",
        }
    }

    fn labels(v: &str) -> SeriesLabels {
        Arc::new(vec![
            ("__name__".into(), "m".into()),
            ("u".into(), v.into()),
        ])
    }

    #[test]
    fn live_series_and_the_backlog_survive_a_round_trip_with_exact_bits() {
        let (a, b) = (labels("a"), labels("b"));
        let cycles = [
            Cycle {
                timestamp_ms: 1,
                points: vec![
                    Point {
                        labels: a.clone(),
                        meta: meta(),
                        value: 1.5,
                    },
                    Point {
                        labels: b.clone(),
                        meta: meta(),
                        value: stale_nan(),
                    },
                ],
            },
            Cycle {
                timestamp_ms: 2,
                points: vec![Point {
                    labels: a.clone(),
                    meta: meta(),
                    value: 2.0,
                }],
            },
        ];
        let live = HashMap::from([(a.clone(), meta())]);
        let state = export(Some(2), live.iter(), cycles.iter());
        assert_eq!(state.series.len(), 2, "each series once");
        let text = serde_json::to_string(&state).unwrap();
        let back = import(serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(back.last_timestamp_ms, Some(2));
        assert_eq!(back.live.keys().collect::<Vec<_>>(), [&a]);
        assert_eq!(back.backlog.len(), 2);
        assert_eq!(back.backlog[0].points[1].value.to_bits(), STALE_NAN_BITS);
        assert_eq!(back.backlog[1].points[0].value, 2.0);
        assert_eq!(back.backlog[0].points[0].meta.family, "m");
    }

    #[test]
    fn a_damaged_state_is_refused_as_a_whole() {
        let good = export(
            Some(5),
            std::iter::empty(),
            [Cycle {
                timestamp_ms: 5,
                points: vec![Point {
                    labels: labels("a"),
                    meta: meta(),
                    value: 1.0,
                }],
            }]
            .iter(),
        );
        let mut bad_index = good.clone();
        bad_index.backlog[0].points[0].0 = 7;
        let mut bad_label = good.clone();
        bad_label.series[0].labels[1].0 = "not a label".into();
        let mut bad_type = good.clone();
        bad_type.series[0].metric_type = "histogram".into();
        let mut bad_order = good.clone();
        bad_order.backlog.push(bad_order.backlog[0].clone());
        let mut bad_last = good.clone();
        bad_last.last_timestamp_ms = Some(1);
        for (state, want) in [
            (bad_index, "out of range"),
            (bad_label, "invalid label set"),
            (bad_type, "unknown type"),
            (bad_order, "time order"),
            (bad_last, "newer than the last cycle"),
        ] {
            let err = import(state).err().expect("refused");
            assert!(err.contains(want), "{err}");
        }
    }
}
