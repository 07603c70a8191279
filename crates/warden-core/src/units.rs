//! Sizes ("512M") and durations ("5s") as the configuration writes them:
//! a leaf module that everything may import and that imports nothing of ours.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A byte count written as "512M", "2G" or a bare integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Bytes(n)),
            Raw::Text(s) => parse_bytes(&s).map(Bytes).map_err(serde::de::Error::custom),
        }
    }
}

/// Written as the plain number of bytes (audit records, JSON).
impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

/// Parses "2G", "512MiB", "1.5GB", "4096". Binary multiples (K = 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().map_err(|_| {
        format!("invalid size {s:?}: expected a number with an optional unit such as 512M or 2G")
    })?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {other:?} (use K, M, G or T)"
            ))
        }
    };
    let v = num * mult as f64;
    if !v.is_finite() || v < 1.0 {
        return Err(format!("invalid size {s:?}: must be at least one byte"));
    }
    Ok(v as u64)
}

/// A duration written as "5s", "250ms", "1m 30s".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

/// The longest duration warden accepts anywhere (config or request): ten
/// years. Anything longer is a typo or an attack, and `Instant + d` of an
/// unbounded `d` panics (which aborts the daemon).
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Parses "5s", "250ms", "1m 30s" (humantime), refusing values that
/// overflow or exceed [`MAX_DURATION`], with an error that names the value.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?}: {e} (use e.g. \"5s\", \"250ms\", \"2m\")"))?;
    if d > MAX_DURATION {
        return Err(format!(
            "invalid duration {s:?}: longer than the maximum of {}",
            humantime::format_duration(MAX_DURATION)
        ));
    }
    Ok(d)
}

/// Written as the config writes it ("1m 30s"), which parses back.
impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_that_overflow_or_exceed_the_maximum_are_refused() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        let e = parse_duration("99999999999999999999s").unwrap_err();
        assert!(e.contains("99999999999999999999s"), "{e}");
        let e = parse_duration("500000000y").unwrap_err();
        assert!(e.contains("maximum"), "{e}");
        assert!(parse_duration("11y").is_err());
        assert!(parse_duration("9y").is_ok());
        // Whatever passes can be added to now without a panic.
        let _ = std::time::Instant::now() + parse_duration("3650days").unwrap();
    }
}
