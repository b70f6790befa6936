//! Measurements: HDR histograms per one-second interval (no per-sample storage), merged into the
//! run's totals and a per-second timeline. Intervals serialize (HDR V2, base64) so distributed
//! workers can stream them to the coordinator, which merges them exactly.

use std::collections::BTreeMap;

use anyhow::Context;
use base64::Engine;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds, 3 significant digits, 1 µs to 1 minute up front and
/// growing beyond when needed (merging into a histogram created empty with `new(3)` loses values).
pub fn histogram() -> Histogram<u64> {
    let mut h = Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid HDR bounds");
    h.auto(true);
    h
}

/// What one second (or one worker's second) measured.
#[derive(Debug, Clone)]
pub struct Interval {
    /// From each request's intended send time (open model) to its answer.
    pub corrected: Histogram<u64>,
    /// From the actual send to the answer.
    pub service: Histogram<u64>,
    pub ok: u64,
    /// Failed requests by class: `timeout`, `connect`, `io`, `HTTP 503`, `invalid body`.
    pub errors: BTreeMap<String, u64>,
}

impl Default for Interval {
    fn default() -> Self {
        Interval { corrected: histogram(), service: histogram(), ok: 0, errors: BTreeMap::new() }
    }
}

impl Interval {
    pub fn requests(&self) -> u64 {
        self.ok + self.error_count()
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Record one finished request; latencies in microseconds (`None`: no answer to time, e.g. connect error).
    pub fn record(&mut self, corrected_us: Option<u64>, service_us: Option<u64>, error: Option<&str>) {
        if let Some(c) = corrected_us {
            self.corrected.saturating_record(c.max(1));
        }
        if let Some(s) = service_us {
            self.service.saturating_record(s.max(1));
        }
        match error {
            None => self.ok += 1,
            Some(class) => match self.errors.get_mut(class) {
                Some(n) => *n += 1,
                None => {
                    self.errors.insert(class.to_owned(), 1);
                }
            },
        }
    }

    pub fn merge(&mut self, other: &Interval) -> anyhow::Result<()> {
        self.corrected.add(&other.corrected).context("merging latency histograms")?;
        self.service.add(&other.service).context("merging latency histograms")?;
        self.ok += other.ok;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        Ok(())
    }

    pub fn to_wire(&self, second: u64) -> anyhow::Result<WireInterval> {
        Ok(WireInterval {
            second,
            ok: self.ok,
            errors: self.errors.clone(),
            corrected: encode(&self.corrected)?,
            service: encode(&self.service)?,
        })
    }

    pub fn from_wire(w: &WireInterval) -> anyhow::Result<Interval> {
        Ok(Interval {
            corrected: decode(&w.corrected)?,
            service: decode(&w.service)?,
            ok: w.ok,
            errors: w.errors.clone(),
        })
    }
}

/// One interval as a worker streams it (one JSON line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireInterval {
    pub second: u64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    /// HDR histogram, V2 serialization, base64.
    pub corrected: String,
    pub service: String,
}

fn encode(h: &Histogram<u64>) -> anyhow::Result<String> {
    let mut buf = Vec::new();
    V2Serializer::new().serialize(h, &mut buf).map_err(|e| anyhow::anyhow!("serializing a histogram: {e:?}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(buf))
}

fn decode(text: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).context("histogram: invalid base64")?;
    let mut h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut std::io::Cursor::new(bytes))
        .map_err(|e| anyhow::anyhow!("histogram: invalid HDR V2 data: {e:?}"))?;
    h.auto(true);
    Ok(h)
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Percentiles {
    /// Samples behind the figures (0: no figure is meaningful).
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// One second of the timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    pub second: u64,
    pub ok: u64,
    pub errors: u64,
    /// Corrected latency (ms) of the requests answered in this second.
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// The run so far: totals and the timeline of finished seconds.
#[derive(Debug, Default)]
pub struct Aggregator {
    pub total: Interval,
    pub timeline: Vec<Point>,
    pending: BTreeMap<u64, Interval>,
}

impl Aggregator {
    /// Add (part of) second `second`.
    pub fn add(&mut self, second: u64, interval: &Interval) -> anyhow::Result<()> {
        self.pending.entry(second).or_default().merge(interval)
    }

    /// Seconds up to `second` are complete: fold them into the totals and the timeline.
    pub fn flush_upto(&mut self, second: u64) -> anyhow::Result<()> {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() > second {
                break;
            }
            let (s, iv) = entry.remove_entry();
            self.total.merge(&iv)?;
            let p = Percentiles::of(&iv.corrected);
            self.timeline.push(Point {
                second: s,
                ok: iv.ok,
                errors: iv.error_count(),
                p50: p.p50,
                p90: p.p90,
                p99: p.p99,
                max: p.max,
            });
        }
        Ok(())
    }

    pub fn flush_all(&mut self) -> anyhow::Result<()> {
        self.flush_upto(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_survive_the_wire_and_merge_exactly() -> anyhow::Result<()> {
        let mut a = Interval::default();
        let mut b = Interval::default();
        for v in 1..=1000 {
            a.record(Some(v * 10), Some(v), None);
        }
        b.record(Some(5_000_000), Some(100), Some("HTTP 503"));
        b.record(None, None, Some("connect"));
        let line = serde_json::to_string(&b.to_wire(3)?)?;
        let back = Interval::from_wire(&serde_json::from_str(&line)?)?;
        assert_eq!(back.corrected.len(), 1);
        assert_eq!(back.errors["connect"], 1);
        let mut agg = Aggregator::default();
        agg.add(0, &a)?;
        agg.add(0, &back)?;
        agg.flush_all()?;
        assert_eq!(agg.total.requests(), 1002);
        assert_eq!(agg.total.corrected.len(), 1001);
        assert_eq!(agg.timeline.len(), 1);
        let p = Percentiles::of(&agg.total.corrected);
        assert!((p.max - 5000.0).abs() / 5000.0 < 0.001, "{p:?}");
        assert!((p.p50 - 5.0).abs() / 5.0 < 0.005, "{p:?}");
        Ok(())
    }
}
