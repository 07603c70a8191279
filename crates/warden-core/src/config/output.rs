//! Agent output and evidence bounds as the configuration states them, and
//! their resolution per agent: plain data, read by `logs` and `evidence`.

use std::time::Duration;

use crate::units::{Bytes, Dur};

/// Default size of an agent's log file before it is rotated.
pub const DEFAULT_LOG_MAX: u64 = 64 << 20;
/// Default number of rotated files kept (`NAME.log.1` .. `NAME.log.N`).
pub const DEFAULT_LOG_KEEP: u32 = 3;
/// Default sustained output rate the daemon drains (bytes per second).
pub const DEFAULT_LOG_RATE: u64 = 1 << 20;
/// Default output the daemon drains at once above the rate.
pub const DEFAULT_LOG_BURST: u64 = 4 << 20;
/// Default time evidence capture may take between freeze and kill.
pub const DEFAULT_EVIDENCE_BUDGET: Duration = Duration::from_millis(50);

/// Resolved output limits of one agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPolicy {
    /// Bytes in `NAME.log` before it is rotated.
    pub max: u64,
    /// Rotated files kept; the oldest is deleted.
    pub keep: u32,
    /// Sustained bytes per second drained from the agent's pipes; past it the
    /// daemon stops reading, so the agent blocks on its own write.
    pub rate: u64,
    /// Bytes drained at once above `rate` (the token bucket's depth).
    pub burst: u64,
}

impl Default for LogPolicy {
    fn default() -> Self {
        LogPolicy {
            max: DEFAULT_LOG_MAX,
            keep: DEFAULT_LOG_KEEP,
            rate: DEFAULT_LOG_RATE,
            burst: DEFAULT_LOG_BURST,
        }
    }
}

/// The four output keys, as written at the top level (defaults for every
/// agent) or in one `[[agent]]` table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogKeys {
    pub log_max: Option<Bytes>,
    pub log_keep: Option<u32>,
    pub log_rate: Option<Bytes>,
    pub log_burst: Option<Bytes>,
}

impl LogPolicy {
    /// Defaults, then the daemon-wide keys, then the agent's own.
    pub fn resolve(layers: &[LogKeys]) -> LogPolicy {
        let mut p = LogPolicy::default();
        for l in layers {
            if let Some(v) = l.log_max {
                p.max = v.0;
            }
            if let Some(v) = l.log_keep {
                p.keep = v;
            }
            if let Some(v) = l.log_rate {
                p.rate = v.0;
            }
            if let Some(v) = l.log_burst {
                p.burst = v.0;
            }
        }
        p
    }

    /// Checks ranges; the message names the key.
    pub fn validate(l: &LogKeys) -> Result<(), String> {
        if l.log_max.is_some_and(|b| b.0 < 4096) {
            return Err("log_max must be at least 4K".into());
        }
        if l.log_keep.is_some_and(|k| k > 100) {
            return Err("log_keep must be at most 100 rotated files".into());
        }
        if l.log_rate.is_some_and(|b| b.0 < 1024) {
            return Err("log_rate must be at least 1K (bytes per second)".into());
        }
        if l.log_burst.is_some_and(|b| b.0 < 1024) {
            return Err("log_burst must be at least 1K".into());
        }
        Ok(())
    }
}

/// Checks `evidence_budget`.
pub fn validate_evidence_budget(d: Option<Dur>) -> Result<(), String> {
    match d {
        Some(d) if d.0 < Duration::from_millis(1) || d.0 > Duration::from_secs(10) => {
            Err(format!("must be between 1ms and 10s, got {d}"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_override_in_order() {
        let top = LogKeys {
            log_max: Some(Bytes(1 << 20)),
            log_keep: Some(1),
            ..Default::default()
        };
        let agent = LogKeys {
            log_keep: Some(5),
            ..Default::default()
        };
        let p = LogPolicy::resolve(&[top, agent]);
        assert_eq!(
            p,
            LogPolicy {
                max: 1 << 20,
                keep: 5,
                rate: DEFAULT_LOG_RATE,
                burst: DEFAULT_LOG_BURST
            }
        );
    }

    #[test]
    fn ranges() {
        let k = |max| LogKeys {
            log_max: Some(Bytes(max)),
            ..Default::default()
        };
        assert!(LogPolicy::validate(&k(100))
            .unwrap_err()
            .contains("log_max"));
        assert!(LogPolicy::validate(&k(4096)).is_ok());
        assert!(validate_evidence_budget(Some(Dur(Duration::ZERO))).is_err());
        assert!(validate_evidence_budget(Some(Dur(Duration::from_millis(50)))).is_ok());
    }
}
