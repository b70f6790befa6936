//! What a run does over time: the open model's arrival schedule (constant rate or k6-style stages)
//! or the closed model's concurrency, and the parsers of durations, rates, stages and mixes.

use std::time::Duration;

use crate::cli::Scenario;
use crate::error::usage;

/// One stretch of the open model: the rate ramps linearly from `from` to `to` (requests/s).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Segment {
    pub from: f64,
    pub to: f64,
    pub duration: Duration,
}

impl Segment {
    fn arrivals(&self) -> f64 {
        (self.from + self.to) / 2.0 * self.duration.as_secs_f64()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Model {
    /// Arrivals on a schedule, whatever the service does (latency counted from the intended time).
    Open { segments: Vec<Segment> },
    /// `concurrency` requests in flight, each sent when the previous one answered.
    Closed { concurrency: usize, duration: Duration },
}

impl Model {
    pub fn duration(&self) -> Duration {
        match self {
            Model::Open { segments } => segments.iter().map(|s| s.duration).sum(),
            Model::Closed { duration, .. } => *duration,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Model::Open { .. } => "open",
            Model::Closed { .. } => "closed",
        }
    }

    /// Peak target rate of the open model.
    pub fn peak_rate(&self) -> Option<f64> {
        match self {
            Model::Open { segments } => Some(segments.iter().map(|s| s.from.max(s.to)).fold(0.0, f64::max)),
            Model::Closed { .. } => None,
        }
    }

    /// Arrivals the open model plans in all.
    pub fn planned_arrivals(&self) -> Option<u64> {
        match self {
            Model::Open { segments } => {
                Some((segments.iter().map(Segment::arrivals).sum::<f64>() + 1e-9).floor() as u64)
            }
            Model::Closed { .. } => None,
        }
    }

    /// The share of worker `index` of `count`: rates divided, concurrency split.
    pub fn share(&self, index: usize, count: usize) -> Model {
        match self {
            Model::Open { segments } => Model::Open {
                segments: segments
                    .iter()
                    .map(|s| Segment { from: s.from / count as f64, to: s.to / count as f64, duration: s.duration })
                    .collect(),
            },
            Model::Closed { concurrency, duration } => {
                Model::Closed { concurrency: split(*concurrency, index, count).max(1), duration: *duration }
            }
        }
    }

    /// When arrival `n` (0-based) is due, counted from the start; `None` past the schedule's end.
    /// Arrival `n` is due when the cumulative count N(t) = integral of the rate reaches `n + 1`
    /// (constant 100/s: at 10 ms, 20 ms, ...; a run of 0.5/s for 1 s plans no arrival at all).
    pub fn arrival_time(&self, n: u64) -> Option<Duration> {
        let Model::Open { segments } = self else { return None };
        let mut left = n as f64 + 1.0;
        let mut offset = Duration::ZERO;
        for s in segments {
            let count = s.arrivals();
            if left <= count + 1e-9 {
                let d = s.duration.as_secs_f64();
                let slope = (s.to - s.from) / d;
                let t = if slope.abs() < 1e-12 {
                    left / s.from
                } else {
                    // from*t + slope*t^2/2 = left
                    let a = slope / 2.0;
                    let disc = (s.from * s.from + 4.0 * a * left).max(0.0);
                    (-s.from + disc.sqrt()) / (2.0 * a)
                };
                return Some(offset + Duration::from_secs_f64(t.clamp(0.0, d)));
            }
            left -= count;
            offset += s.duration;
        }
        None
    }
}

/// `n` split over `count` parts: part `index` gets its share, the first ones one more.
pub fn split(n: usize, index: usize, count: usize) -> usize {
    n / count + usize::from(index < n % count)
}

/// `250ms`, `30s`, `2m`, `1h`, `1m30s`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::duration::parse_or_seconds(text)
}

/// `1%`, `0.5%` or a fraction `0.01`.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let value = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| format!("{text:?}: expected a percentage such as 1% or a fraction such as 0.01"))?;
    if !(0.0..=1.0).contains(&value) {
        return Err(format!("{text:?}: must be between 0% and 100%"));
    }
    Ok(value)
}

/// k6-style stages `30s:100,2m:500,30s:0`: each ramps linearly from the previous target (0 first).
pub fn parse_stages(text: &str) -> Result<Vec<Segment>, String> {
    let mut from = 0.0;
    let mut out = Vec::new();
    for (i, part) in text.split(',').map(str::trim).filter(|p| !p.is_empty()).enumerate() {
        let Some((d, r)) = part.split_once(':') else {
            return Err(format!("stage {} {part:?}: expected DURATION:RATE such as 30s:100", i + 1));
        };
        let duration = parse_duration(d).map_err(|e| format!("stage {}: {e}", i + 1))?;
        let to: f64 = r
            .trim()
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| format!("stage {} {part:?}: the rate must be a number >= 0", i + 1))?;
        if duration.is_zero() {
            return Err(format!("stage {} {part:?}: the duration must be above zero", i + 1));
        }
        out.push(Segment { from, to, duration });
        from = to;
    }
    if out.is_empty() {
        return Err("--stages is empty: expected e.g. 30s:100,2m:500,30s:0".into());
    }
    if out.iter().all(|s| s.from == 0.0 && s.to == 0.0) {
        return Err("--stages: every stage has rate 0".into());
    }
    Ok(out)
}

/// `ingest=70,read=20,list=10`.
pub fn parse_mix(text: &str) -> Result<Vec<(Scenario, u32)>, String> {
    use clap::ValueEnum;
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, weight)) = part.split_once('=') else {
            return Err(format!("--mix {part:?}: expected NAME=WEIGHT such as ingest=70"));
        };
        let scenario = Scenario::from_str(name.trim(), true).map_err(|_| {
            format!("--mix {part:?}: unknown scenario {name:?} (ingest, batch, read, list, verify, get)")
        })?;
        let weight: u32 =
            weight.trim().parse().map_err(|_| format!("--mix {part:?}: the weight must be an integer"))?;
        if weight > 0 {
            out.push((scenario, weight));
        }
    }
    if out.is_empty() {
        return Err("--mix: no scenario with a weight above 0".into());
    }
    Ok(out)
}

/// The model the flags ask for.
pub fn model(args: &crate::cli::LoadArgs) -> anyhow::Result<Model> {
    let duration = parse_duration(&args.duration).map_err(|e| usage(format!("--duration {e}")))?;
    if let Some(stages) = &args.stages {
        return Ok(Model::Open { segments: parse_stages(stages).map_err(usage)? });
    }
    if duration.is_zero() {
        return Err(usage("--duration must be above zero"));
    }
    if let Some(c) = args.concurrency {
        if c == 0 {
            return Err(usage("--concurrency must be at least 1"));
        }
        return Ok(Model::Closed { concurrency: c, duration });
    }
    let rate = args.rate.unwrap_or(100.0);
    if !(rate.is_finite() && rate > 0.0) {
        return Err(usage("--rate must be a number of requests per second above 0"));
    }
    Ok(Model::Open { segments: vec![Segment { from: rate, to: rate, duration }] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_rates_stages() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("3 weeks").is_err());
        assert_eq!(parse_rate("1%"), Ok(0.01));
        assert_eq!(parse_rate("0.05"), Ok(0.05));
        assert!(parse_rate("150%").is_err());
        let s = parse_stages("30s:100,2m:500,30s:0").unwrap();
        assert_eq!(s[1], Segment { from: 100.0, to: 500.0, duration: Duration::from_secs(120) });
        assert!(parse_stages("30s").is_err());
        assert_eq!(parse_mix("ingest=70,read=20,list=10").unwrap()[1], (Scenario::Read, 20));
        assert!(parse_mix("ingest=70,write=3").unwrap_err().contains("write"));
    }

    #[test]
    fn arrival_schedule_matches_the_integral_of_the_rate() {
        // Constant 10/s for 2 s: arrivals at 0.1, 0.2, ... 2.0; 20 in all.
        let m = Model::Open { segments: vec![Segment { from: 10.0, to: 10.0, duration: Duration::from_secs(2) }] };
        assert_eq!(m.arrival_time(0).map(|d| d.as_millis()), Some(100));
        assert_eq!(m.arrival_time(15).map(|d| d.as_millis()), Some(1600));
        assert_eq!(m.arrival_time(19).map(|d| d.as_millis()), Some(2000));
        assert_eq!(m.arrival_time(20), None);
        assert_eq!(m.planned_arrivals(), Some(20));
        // Too low a rate for the duration: nothing to send.
        let m = Model::Open { segments: vec![Segment { from: 0.5, to: 0.5, duration: Duration::from_secs(1) }] };
        assert_eq!((m.arrival_time(0), m.planned_arrivals()), (None, Some(0)));
        // Ramp 0 -> 100 over 10 s: N(t) = 5 t^2, so arrival 124 (the 125th) is at t = 5 s; 500 in all.
        let m = Model::Open { segments: parse_stages("10s:100").unwrap() };
        assert_eq!(m.planned_arrivals(), Some(500));
        assert!(m.arrival_time(499).is_some() && m.arrival_time(500).is_none());
        let t = m.arrival_time(124).unwrap().as_secs_f64();
        assert!((t - 5.0).abs() < 1e-6, "{t}");
        // Two workers each get half the rate.
        assert_eq!(m.share(1, 2).planned_arrivals(), Some(250));
        assert_eq!(split(5, 0, 2), 3);
        assert_eq!(split(5, 1, 2), 2);
    }
}
