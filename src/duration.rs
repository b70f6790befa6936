//! Durations as people write them, one reading for every flag and data file: `250ms`, `30s`,
//! `5m`, `1h`, `7d`, `2w`, and combinations (`1m30s`, `1d12h`). Command-line flags also take a bare
//! number of seconds ([`parse_or_seconds`]); checklist data must name its unit ([`parse`]), so a
//! `maxAge: 7` is refused rather than read as seven seconds.

use std::time::Duration;

/// A duration with units, e.g. `7d`, `1m30s`, `250ms`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration: expected e.g. 250ms, 30s, 5m, 12h, 7d".into());
    }
    let mut total = 0.0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (num, tail) = rest.split_at(digits);
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let value: f64 = num.parse().map_err(|_| format!("{text:?}: a number must come before {unit:?}"))?;
        let factor = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            "w" => 7.0 * 86_400.0,
            "" => return Err(format!("{text:?}: missing unit after {num} (use ms, s, m, h, d or w)")),
            _ => return Err(format!("{text:?}: unknown unit {unit:?} (use ms, s, m, h, d or w)")),
        };
        total += value * factor;
        rest = tail;
    }
    Duration::try_from_secs_f64(total).map_err(|_| format!("{text:?}: not a valid duration"))
}

/// [`parse`], or a bare number of seconds (`90`, `0.5`): what command-line flags accept.
pub fn parse_or_seconds(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<f64>() {
        Ok(secs) => Duration::try_from_secs_f64(secs).map_err(|_| format!("{text:?}: not a valid duration")),
        Err(_) => parse(text),
    }
}

/// Whole seconds, in the largest units that read well: `7d`, `1d12h`, `2h5m`, `90s` -> `1m`.
pub fn format(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s >= 86_400 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s >= 86_400 => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
        s if s >= 3600 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_combinations() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse("1d12h"), Ok(Duration::from_secs(36 * 3600)));
        assert_eq!(parse("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_or_seconds("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_or_seconds("5m"), Ok(Duration::from_secs(300)));
    }

    #[test]
    fn refusals_say_why() {
        assert!(parse("7").unwrap_err().contains("missing unit"));
        assert!(parse("5m3").unwrap_err().contains("missing unit"));
        assert!(parse("7y").unwrap_err().contains("unknown unit"));
        assert!(parse("3 weeks").is_err());
        assert!(parse("").is_err());
        assert!(parse_or_seconds("-1").is_err());
        assert!(parse_or_seconds("5x").is_err());
    }

    #[test]
    fn formats_in_readable_units() {
        assert_eq!(format(Duration::from_secs(36 * 3600)), "1d12h");
        assert_eq!(format(Duration::from_secs(7 * 86_400)), "7d");
        assert_eq!(format(Duration::from_secs(45)), "45s");
    }
}
