//! What the fleet keeps in etcd, under one prefix (default `/warden`):
//!
//! | key | value | lease |
//! |---|---|---|
//! | `P/fleet/epoch` | the last epoch issued | none |
//! | `P/fleet/halt` | the [`HaltRecord`] in force | none |
//! | `P/fleet/resume/EPOCH` | the [`ResumeRecord`] that cleared it | none |
//! | `P/nodes/NODE` | the node's [`NodeState`] | the node's |
//! | `P/members/NODE` | the node's first-seen record: it stays when the node dies | none |
//! | `P/acks/EPOCH/NODE` | the node's [`Ack`] | none |
//!
//! Every value is JSON with a version `v`; `encode` and `decode` are paired.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Version of every record below.
pub const VERSION: u32 = 1;

/// The keys under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    pub prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }
    /// Everything a node watches: the halt record and resume records.
    pub fn fleet(&self) -> String {
        format!("{}/fleet/", self.prefix)
    }
    pub fn epoch(&self) -> String {
        format!("{}/fleet/epoch", self.prefix)
    }
    pub fn halt(&self) -> String {
        format!("{}/fleet/halt", self.prefix)
    }
    pub fn resume(&self, epoch: u64) -> String {
        format!("{}/fleet/resume/{epoch:020}", self.prefix)
    }
    pub fn resumes(&self) -> String {
        format!("{}/fleet/resume/", self.prefix)
    }
    pub fn nodes(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }
    pub fn node(&self, node: &str) -> String {
        format!("{}/nodes/{node}", self.prefix)
    }
    pub fn members(&self) -> String {
        format!("{}/members/", self.prefix)
    }
    pub fn member(&self, node: &str) -> String {
        format!("{}/members/{node}", self.prefix)
    }
    pub fn acks(&self, epoch: u64) -> String {
        format!("{}/acks/{epoch:020}/", self.prefix)
    }
    pub fn ack(&self, epoch: u64, node: &str) -> String {
        format!("{}/acks/{epoch:020}/{node}", self.prefix)
    }
}

/// A fleet halt: written by `warden fleet halt`, cleared by `warden fleet resume`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HaltRecord {
    pub v: u32,
    /// Increases by one with every halt; names it in acks, audit and resume.
    pub epoch: u64,
    pub reason: String,
    /// uid and host of whoever issued it.
    pub who: String,
    /// Nodes to halt; None: every node.
    pub targets: Option<Vec<String>>,
    /// Wall clock of the issuing host.
    pub issued_ms: u64,
}

impl HaltRecord {
    pub fn targets(&self, node: &str) -> bool {
        self.targets
            .as_ref()
            .is_none_or(|t| t.iter().any(|n| n == node))
    }
}

/// `warden fleet resume` cleared the halt record of `epoch`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResumeRecord {
    pub v: u32,
    pub epoch: u64,
    pub reason: String,
    pub who: String,
    /// The node where the human ran it.
    pub node: String,
    pub at_ms: u64,
    /// The record it cleared (for status: targets and acks).
    pub halt: HaltRecord,
}

/// A node's acknowledgement of a halt, with its phase timings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Ack {
    pub v: u32,
    pub node: String,
    pub epoch: u64,
    /// Wall clock (the node's) when the record reached the node.
    pub seen_ms: u64,
    /// Wall clock (the node's) when the ack was written.
    pub acked_ms: u64,
    /// The daemon's halt call, measured by the node (ms).
    pub halt_ms: f64,
    /// The daemon's report: its id and phases (µs after the trigger).
    pub halt_id: Option<String>,
    pub frozen_us: Option<u64>,
    pub killed_us: Option<u64>,
    pub empty_us: Option<u64>,
    pub processes: Option<u64>,
    pub survivors: Vec<i64>,
    /// The record came while this node was cut off (it had already halted
    /// itself, or will now).
    pub missed: bool,
    /// None: halted. Some: why the daemon's halt failed.
    pub error: Option<String>,
}

/// What a node publishes under its lease.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct NodeState {
    pub v: u32,
    pub node: String,
    /// Whether the daemon answers the fleet process's beats.
    pub daemon_up: bool,
    /// `running`, `safe_mode`, `stopping`.
    pub state: Option<String>,
    pub safe_mode: bool,
    /// Why the node is in SAFE MODE.
    pub safe_reason: Option<String>,
    /// Each agent's name and state.
    pub agents: Vec<AgentState>,
    /// The daemon's last halt: id, trigger, reason, phases.
    pub last_halt: Option<serde_json::Value>,
    /// The last halt epoch this node handled.
    pub epoch: u64,
    pub on_partition: String,
    /// Partitions this fleet process lived through (a `keep` node shows them).
    pub partitions: u64,
    /// Wall clock of the last partition's start.
    pub last_partition_ms: Option<u64>,
    pub updated_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentState {
    pub name: String,
    pub state: String,
}

/// The first time a node joined; never leased, so status can name a dead node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Member {
    pub v: u32,
    pub node: String,
    pub joined_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record {key}: {message}")]
    Bad { key: String, message: String },
    #[error("record {key}: version {found}, this build reads {VERSION}")]
    Version { key: String, found: u64 },
}

/// The JSON of a record.
pub fn encode<T: Serialize>(r: &T) -> Vec<u8> {
    serde_json::to_vec(r).expect("record serializes")
}

/// Reads a record written by [`encode`], refusing other versions.
pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, RecordError> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| RecordError::Bad {
        key: key.into(),
        message: e.to_string(),
    })?;
    let found = v.get("v").and_then(|v| v.as_u64()).unwrap_or(0);
    if found != VERSION as u64 {
        return Err(RecordError::Version {
            key: key.into(),
            found,
        });
    }
    serde_json::from_value(v).map_err(|e| RecordError::Bad {
        key: key.into(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_roundtrip_and_versions_are_checked() {
        let h = HaltRecord {
            v: VERSION,
            epoch: 7,
            reason: "r".into(),
            who: "uid 0 on h".into(),
            targets: Some(vec!["a".into(), "b".into()]),
            issued_ms: 1,
        };
        let back: HaltRecord = decode("k", &encode(&h)).unwrap();
        assert_eq!(back, h);
        assert!(h.targets("a") && !h.targets("c"));
        assert!(HaltRecord {
            targets: None,
            ..h.clone()
        }
        .targets("c"));
        let mut raw: serde_json::Value = serde_json::from_slice(&encode(&h)).unwrap();
        raw["v"] = 2.into();
        let e = decode::<HaltRecord>("k", raw.to_string().as_bytes()).unwrap_err();
        assert!(matches!(e, RecordError::Version { found: 2, .. }), "{e}");
        assert!(decode::<HaltRecord>("k", b"{").is_err());
    }

    #[test]
    fn keys_sort_by_epoch() {
        let k = Keys::new("/w");
        assert!(k.ack(9, "n") < k.ack(10, "n"));
        assert!(k.ack(10, "n").starts_with(&k.acks(10)));
        assert!(k.halt().starts_with(&k.fleet()) && k.resume(3).starts_with(&k.fleet()));
        assert!(!k.epoch().starts_with(&k.resumes()));
    }
}
