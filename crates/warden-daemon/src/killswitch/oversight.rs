//! Human oversight: with `oversight_timeout` configured, a person must check
//! in (`warden checkin`) at least that often, or every agent is halted.
//! Autonomy is granted by an attentive human; when nobody is watching, the
//! boundary closes.
//!
//! The timer starts when the watch is made (the daemon's start), so a fresh
//! start gives the operator one full timeout to check in. The daemon audits
//! each check-in; [`OversightWatch::restore`] takes the last one back after a
//! restart, so restarting warden does not reset the clock.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::monitor::Breach;

/// Name of the monitor in a [`Breach`].
pub const MONITOR: &str = "oversight";

/// One human check-in.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckIn {
    /// The caller's uid, from SO_PEERCRED of the control socket.
    pub uid: u32,
    pub at_ms: u64,
}

/// The oversight timer of the host.
#[derive(Debug, Clone)]
pub struct OversightWatch {
    /// `None`: oversight is not required and [`check`](Self::check) never trips.
    timeout: Option<Duration>,
    /// When the watch started: the reference before the first check-in.
    started_ms: u64,
    /// The most recent check-in.
    last: Option<CheckIn>,
}

impl OversightWatch {
    pub fn new(timeout: Option<Duration>, started_ms: u64) -> Self {
        OversightWatch {
            timeout,
            started_ms,
            last: None,
        }
    }

    /// Restores the last check-in recorded before a restart. An old one makes
    /// the watch trip at once, which is the point: fail closed.
    pub fn restore(&mut self, last: CheckIn) {
        self.last = Some(last);
    }

    /// Records a check-in by `uid`.
    pub fn checkin(&mut self, uid: u32, now_ms: u64) -> CheckIn {
        let c = CheckIn { uid, at_ms: now_ms };
        self.last = Some(c.clone());
        c
    }

    pub fn last(&self) -> Option<&CheckIn> {
        self.last.as_ref()
    }

    /// When the next check-in is due, if oversight is required.
    pub fn due_ms(&self) -> Option<u64> {
        let t = self.timeout?.as_millis() as u64;
        let since = self.last.as_ref().map_or(self.started_ms, |c| c.at_ms);
        Some(since + t)
    }

    /// A breach (agent `None`: it halts everything) once the timeout has
    /// passed without a check-in; at exactly the timeout it trips.
    pub fn check(&self, now_ms: u64) -> Option<Breach> {
        let due = self.due_ms()?;
        if now_ms < due {
            return None;
        }
        let timeout = self.timeout?;
        let value = match &self.last {
            Some(c) => format!(
                "no human check-in for {} (last by uid {})",
                super::human_ms(now_ms.saturating_sub(c.at_ms)),
                c.uid
            ),
            None => format!(
                "no human check-in for {} since start",
                super::human_ms(now_ms.saturating_sub(self.started_ms))
            ),
        };
        Some(Breach {
            monitor: MONITOR.into(),
            agent: None,
            value,
            threshold: format!("oversight_timeout {}", humantime::format_duration(timeout)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    #[test]
    fn checkins_keep_it_quiet_and_silence_trips() {
        let mut w = OversightWatch::new(Some(Duration::from_secs(3600)), 0);
        assert_eq!(w.check(60 * MIN - 1), None);
        let b = w.check(60 * MIN).unwrap();
        assert_eq!(b.monitor, "oversight");
        assert_eq!(b.agent, None);
        assert_eq!(b.value, "no human check-in for 1h since start");
        assert_eq!(b.threshold, "oversight_timeout 1h");

        let c = w.checkin(1000, 61 * MIN);
        assert_eq!(
            c,
            CheckIn {
                uid: 1000,
                at_ms: 61 * MIN
            }
        );
        assert_eq!(w.check(120 * MIN), None);
        let b = w.check(125 * MIN).unwrap();
        assert_eq!(b.value, "no human check-in for 1h 4m (last by uid 1000)");
        assert_eq!(w.last().unwrap().uid, 1000);
    }

    #[test]
    fn without_a_timeout_it_never_trips() {
        let w = OversightWatch::new(None, 0);
        assert_eq!(w.check(u64::MAX / 2), None);
        assert_eq!(w.due_ms(), None);
    }

    #[test]
    fn a_restored_old_checkin_trips_at_once() {
        let mut w = OversightWatch::new(Some(Duration::from_secs(600)), 100 * MIN);
        w.restore(CheckIn { uid: 0, at_ms: 0 });
        assert!(w.check(100 * MIN).is_some());
    }
}
