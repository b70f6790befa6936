//! Kubernetes resource quantities ("500m", "2Gi", "1e3"), checked when values are read.
//!
//! A typo like "2Gb" is accepted by YAML and by most templating tools and only fails at apply time
//! (or worse, "2G" silently means 2*10^9 bytes instead of 2 GiB): audctl refuses it with the position.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub const EXPECTED: &str = "a Kubernetes quantity: a number with an optional suffix \
                            (m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei), e.g. 500m, 2Gi";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantity(String);

impl Quantity {
    pub fn parse(text: &str) -> Result<Self, String> {
        match parse_value(text) {
            Some(_) => Ok(Quantity(text.to_owned())),
            None => Err(format!("{text:?} is not {EXPECTED}")),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value in base units (cores, bytes) as f64: enough to compare requests with limits.
    pub fn value(&self) -> f64 {
        parse_value(&self.0).unwrap_or(0.0)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn parse_value(text: &str) -> Option<f64> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let unsigned = number.strip_prefix(['+', '-']).unwrap_or(number);
    let well_formed = !unsigned.is_empty()
        && unsigned.chars().all(|c| c.is_ascii_digit() || c == '.')
        && unsigned.matches('.').count() <= 1
        && unsigned != ".";
    if !well_formed {
        return None;
    }
    let base: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => 10f64.powi(exp[1..].parse::<i32>().ok()?),
        _ => return None,
    };
    Some(base * factor)
}

/// JVM-style sizes in `-Xmx6g`: bytes.
pub fn jvm_size(text: &str) -> Option<f64> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: f64 = number.parse().ok()?;
    let factor = match unit {
        "" => 1.0,
        "k" | "K" => 1024.0,
        "m" | "M" => 1024f64.powi(2),
        "g" | "G" => 1024f64.powi(3),
        "t" | "T" => 1024f64.powi(4),
        _ => return None,
    };
    Some(n * factor)
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // YAML reads `cpu: 2` as a number; Kubernetes accepts it, so do we.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Int(i64),
            Float(f64),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Text(s) => s,
            Raw::Int(i) => i.to_string(),
            Raw::Float(f) => f.to_string(),
        };
        Quantity::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Quantity {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Quantity".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": ["string", "number"],
            "description": EXPECTED,
            "pattern": "^[+-]?([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?[0-9]+)?$"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_kubernetes_forms_and_refuses_typos() {
        for ok in ["1000m", "2Gi", "500Mi", "1", "0.5", "1e3", "8G", "4000m"] {
            assert!(Quantity::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["2Gb", "2GiB", "", "m", "1.2.3", "two", "2 Gi"] {
            assert!(Quantity::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Quantity::parse("2Gi").unwrap().value(), 2.0 * 1024f64.powi(3));
        assert_eq!(Quantity::parse("1500m").unwrap().value(), 1.5);
        assert_eq!(jvm_size("6g"), Some(6.0 * 1024f64.powi(3)));
    }
}
