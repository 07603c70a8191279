//! Dead man's switch: an agent must keep beating (through its agent socket)
//! or it is hard-halted on its own (evidence first; the other agents and the
//! host carry on, and it stays down until an operator starts it).
//!
//! Configured per agent as `heartbeat = "30s"`, `missed = 3`. Each beat is
//! answered with a [`HealthToken`] signed by warden's host key, which the
//! agent can show to others (a peer, a fleet controller) as proof that the
//! supervisor saw it alive within the last interval.
//!
//! When it trips, counted from the last beat, or before the first beat from
//! the agent's start:
//! - after a beat at `t`, the breach is due at `t + missed × interval`;
//!   at exactly that instant it trips (`>=`): `missed` whole intervals have
//!   passed without a beat, which is what `missed = 3` says;
//! - before the first beat, one extra interval of grace is added
//!   (`start + (missed + 1) × interval`), because an agent needs time to start
//!   its runtime and open the socket before it can beat at all.

use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::monitor::Breach;
use warden_core::crypto::{self, KeyPair};

/// Name of the monitor in a [`Breach`].
pub const MONITOR: &str = "heartbeat";

/// The per-agent settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatConfig {
    /// How often the agent must beat; also how long a token stays valid.
    pub interval: Duration,
    /// How many intervals may pass without a beat before the agent is halted.
    pub missed: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeartbeatError {
    #[error("heartbeat interval must be at least 1s, got {0:?}")]
    IntervalTooShort(Duration),
    #[error("missed must be at least 1")]
    MissedZero,
}

impl HeartbeatConfig {
    /// Validates: a zero interval or `missed = 0` would trip at once.
    pub fn new(interval: Duration, missed: u32) -> Result<Self, HeartbeatError> {
        if interval < Duration::from_secs(1) {
            return Err(HeartbeatError::IntervalTooShort(interval));
        }
        if missed == 0 {
            return Err(HeartbeatError::MissedZero);
        }
        Ok(HeartbeatConfig { interval, missed })
    }

    fn interval_ms(&self) -> u64 {
        self.interval.as_millis() as u64
    }
}

/// What warden signs for each beat: exactly these four fields, as canonical
/// JSON (see [`crypto::canonical_json`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HealthClaim {
    pub agent: String,
    pub issued_at_ms: u64,
    /// `issued_at_ms + interval`: by then the agent should have beaten again.
    pub valid_until_ms: u64,
    /// Counts beats since the watch started, so a replayed older token is
    /// recognisably older.
    pub seq: u64,
}

impl HealthClaim {
    /// The signed bytes.
    pub fn canonical(&self) -> Vec<u8> {
        crypto::canonical_json(&serde_json::to_value(self).expect("claim serializes")).into_bytes()
    }
}

/// A signed [`HealthClaim`], the answer to a beat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HealthToken {
    pub claim: HealthClaim,
    /// Hex Ed25519 signature of `claim.canonical()` by warden's host key.
    pub signature: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("health token signature does not verify")]
    BadSignature,
    #[error("health token for agent {agent} expired {ago} ago")]
    Expired { agent: String, ago: String },
    #[error("health token is issued in the future")]
    NotYetValid,
}

impl HealthToken {
    /// Checks the signature and that `now_ms` lies in
    /// `[issued_at_ms, valid_until_ms)`.
    pub fn verify(&self, key: &VerifyingKey, now_ms: u64) -> Result<(), TokenError> {
        if !crypto::verify_hex(key, &self.claim.canonical(), &self.signature) {
            return Err(TokenError::BadSignature);
        }
        if now_ms >= self.claim.valid_until_ms {
            return Err(TokenError::Expired {
                agent: self.claim.agent.clone(),
                ago: super::human_ms(now_ms - self.claim.valid_until_ms),
            });
        }
        if now_ms < self.claim.issued_at_ms {
            return Err(TokenError::NotYetValid);
        }
        Ok(())
    }
}

/// The switch of one running agent. The daemon makes one when the agent
/// starts and drops it when the agent stops.
#[derive(Debug)]
pub struct HeartbeatWatch {
    /// The agent's name, in tokens and breaches.
    agent: String,
    config: HeartbeatConfig,
    /// Signs the tokens.
    key: KeyPair,
    /// When the agent started: the reference before its first beat.
    started_ms: u64,
    /// The last beat, if any.
    last_beat_ms: Option<u64>,
    /// Beats so far; the next token carries `seq + 1`.
    seq: u64,
}

impl HeartbeatWatch {
    pub fn new(agent: &str, config: HeartbeatConfig, key: KeyPair, started_ms: u64) -> Self {
        HeartbeatWatch {
            agent: agent.into(),
            config,
            key,
            started_ms,
            last_beat_ms: None,
            seq: 0,
        }
    }

    /// Records a beat and returns the signed token for it.
    pub fn beat(&mut self, now_ms: u64) -> HealthToken {
        // A clock stepped backwards must not move the deadline back too.
        let now_ms = now_ms.max(self.last_beat_ms.unwrap_or(0));
        self.last_beat_ms = Some(now_ms);
        self.seq += 1;
        let claim = HealthClaim {
            agent: self.agent.clone(),
            issued_at_ms: now_ms,
            valid_until_ms: now_ms + self.config.interval_ms(),
            seq: self.seq,
        };
        HealthToken {
            signature: self.key.sign_hex(&claim.canonical()),
            claim,
        }
    }

    /// The instant at which [`check`](Self::check) trips (see the module doc).
    pub fn deadline_ms(&self) -> u64 {
        let interval = self.config.interval_ms();
        let missed = u64::from(self.config.missed);
        match self.last_beat_ms {
            Some(t) => t + missed * interval,
            None => self.started_ms + (missed + 1) * interval,
        }
    }

    /// A breach once the deadline is reached; `None` before. It keeps
    /// returning the breach until a beat arrives: the daemon decides once.
    pub fn check(&self, now_ms: u64) -> Option<Breach> {
        if now_ms < self.deadline_ms() {
            return None;
        }
        let since = self.last_beat_ms.unwrap_or(self.started_ms);
        let silent_s = now_ms.saturating_sub(since) / 1000;
        let value = match self.last_beat_ms {
            Some(_) => format!("no heartbeat for {silent_s}s"),
            None => format!("no heartbeat for {silent_s}s since start"),
        };
        Some(Breach {
            monitor: MONITOR.into(),
            agent: Some(self.agent.clone()),
            value,
            threshold: format!(
                "{} missed intervals of {}",
                self.config.missed,
                humantime::format_duration(self.config.interval)
            ),
        })
    }

    /// Beats so far.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;

    fn watch(start: u64) -> (HeartbeatWatch, KeyPair) {
        let key = KeyPair::generate();
        let cfg = HeartbeatConfig::new(Duration::from_secs(30), 3).unwrap();
        (HeartbeatWatch::new("alpha", cfg, key.clone(), start), key)
    }

    #[test]
    fn beats_keep_the_agent_alive() {
        let (mut w, _) = watch(0);
        for i in 1..=20 {
            w.beat(i * 30 * S);
            assert_eq!(w.check(i * 30 * S + 89 * S), None);
        }
        assert_eq!(w.seq(), 20);
    }

    #[test]
    fn trips_at_exactly_missed_intervals_after_a_beat() {
        let (mut w, _) = watch(0);
        w.beat(10 * S);
        assert_eq!(w.check(10 * S + 90 * S - 1), None);
        let b = w
            .check(10 * S + 90 * S)
            .expect("trips at exactly 3 intervals");
        assert_eq!(b.monitor, "heartbeat");
        assert_eq!(b.agent.as_deref(), Some("alpha"));
        assert_eq!(b.value, "no heartbeat for 90s");
        assert_eq!(b.threshold, "3 missed intervals of 30s");
        assert_eq!(
            w.check(10 * S + 95 * S).unwrap().value,
            "no heartbeat for 95s"
        );
        // A late beat clears it.
        w.beat(10 * S + 96 * S);
        assert_eq!(w.check(10 * S + 97 * S), None);
    }

    #[test]
    fn one_interval_of_grace_at_start() {
        let (w, _) = watch(1_000_000);
        assert_eq!(w.check(1_000_000 + 119 * S), None);
        let b = w.check(1_000_000 + 120 * S).unwrap();
        assert_eq!(b.value, "no heartbeat for 120s since start");
    }

    #[test]
    fn a_clock_step_back_does_not_shorten_the_deadline() {
        let (mut w, _) = watch(0);
        w.beat(100 * S);
        w.beat(50 * S);
        assert_eq!(w.deadline_ms(), 190 * S);
    }

    #[test]
    fn tokens_verify_and_tampered_or_expired_fail() {
        let (mut w, key) = watch(0);
        let t = w.beat(5 * S);
        assert_eq!(t.claim.valid_until_ms, 35 * S);
        assert_eq!(t.claim.seq, 1);
        let vk = key.verifying_key();
        t.verify(&vk, 5 * S).unwrap();
        t.verify(&vk, 35 * S - 1).unwrap();
        assert!(crypto::verify_hex(
            &vk,
            &crypto::canonical_json(&serde_json::json!({
                "agent": "alpha", "issued_at_ms": 5000, "valid_until_ms": 35000, "seq": 1
            }))
            .into_bytes(),
            &t.signature
        ));
        assert!(matches!(
            t.verify(&vk, 35 * S),
            Err(TokenError::Expired { .. })
        ));
        let mut forged = t.clone();
        forged.claim.valid_until_ms += 3600 * S;
        assert_eq!(forged.verify(&vk, 40 * S), Err(TokenError::BadSignature));
        let mut renamed = t.clone();
        renamed.claim.agent = "beta".into();
        assert_eq!(renamed.verify(&vk, 6 * S), Err(TokenError::BadSignature));
        let other = KeyPair::generate().verifying_key();
        assert_eq!(t.verify(&other, 6 * S), Err(TokenError::BadSignature));
        assert_eq!(t.verify(&vk, 4 * S), Err(TokenError::NotYetValid));
        let wire = serde_json::to_string(&t).unwrap();
        let back: HealthToken = serde_json::from_str(&wire).unwrap();
        back.verify(&vk, 6 * S).unwrap();
    }

    #[test]
    fn config_is_validated() {
        assert_eq!(
            HeartbeatConfig::new(Duration::from_secs(30), 0),
            Err(HeartbeatError::MissedZero)
        );
        assert!(HeartbeatConfig::new(Duration::from_millis(10), 3).is_err());
    }
}
