//! Counters the daemon keeps for `warden web`'s `/metrics`: halts by
//! trigger and the duration of each halt phase as a histogram. Everything
//! else on `/metrics` is read from `status` at scrape time. Counters start
//! at zero with each daemon start, as Prometheus expects of a restart.

use std::collections::BTreeMap;

use serde::Serialize;
use warden_core::halt::Report;

/// Upper bounds (seconds) of the phase histogram's buckets: a halt's
/// phases run from tens of microseconds to the empty deadline.
pub const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A Prometheus histogram: cumulative counts per bucket, sum and count.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Histogram {
    /// `counts[i]`: observations ≤ `BUCKETS[i]` (cumulative).
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&mut self, seconds: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (c, b) in self.counts.iter_mut().zip(BUCKETS) {
            if seconds <= b {
                *c += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Metrics {
    /// Hard halts by trigger (`stop_file`, `cli`, `monitor`, ...).
    pub halts_total: BTreeMap<String, u64>,
    /// Halt phases: `freeze`, `evidence`, `kill`, `empty`, `total`.
    pub halt_phase_seconds: BTreeMap<&'static str, Histogram>,
}

impl Metrics {
    /// Counts one halt. Timings are microseconds since the trigger, so each
    /// phase is the difference to the one before.
    pub fn halt(&mut self, r: &Report) {
        *self.halts_total.entry(r.trigger.clone()).or_default() += 1;
        let t = &r.timings;
        let s = |us: u64| us as f64 / 1e6;
        for (phase, v) in [
            ("freeze", t.frozen_us),
            ("evidence", t.evidence_us.saturating_sub(t.frozen_us)),
            ("kill", t.killed_us.saturating_sub(t.evidence_us)),
            ("empty", t.empty_us.saturating_sub(t.killed_us)),
            ("total", t.empty_us),
        ] {
            self.halt_phase_seconds
                .entry(phase)
                .or_default()
                .observe(s(v));
        }
    }

    /// The `metrics` answer: these counters plus the audit head.
    pub fn to_json(&self, audit_seq: u64) -> serde_json::Value {
        serde_json::json!({
            "halts_total": self.halts_total,
            "halt_phase_seconds": self.halt_phase_seconds,
            "buckets": BUCKETS,
            "audit_seq": audit_seq,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative() {
        let mut h = Histogram::default();
        h.observe(0.003);
        h.observe(0.2);
        assert_eq!(h.counts[0], 0);
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[6], 2);
        assert_eq!(h.count, 2);
        assert!((h.sum - 0.203).abs() < 1e-9);
    }
}
