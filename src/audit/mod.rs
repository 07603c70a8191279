//! The tamper-evident audit log: a SHA-256 hash chain in SQLite with signed
//! checkpoints, plus `safety_events.jsonl`.
//!
//! This is the interface the daemon uses. The daemon never blocks its halt path
//! on the disk: it `submit`s events and awaits the receipts where it must
//! (before acknowledging a command), and stores evidence after the kill.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {message}")]
    Store { path: PathBuf, message: String },
}

pub type Result<T> = std::result::Result<T, AuditError>;

/// One auditable event.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// What happened: `daemon_start`, `agent_start`, `halt`, `command`, ...
    pub kind: String,
    /// The agent it concerns, if any.
    pub agent: Option<String>,
    /// uid of the human or process that caused it (from SO_PEERCRED), if any.
    pub uid: Option<u32>,
    /// Event-specific details.
    pub data: serde_json::Value,
}

/// Extra fields of a safety event, also appended to `safety_events.jsonl`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Safety {
    /// `safety_halt`, `runaway_detected`, `manual_stop`, ...
    pub event: String,
    pub reason: String,
    pub autonomy_state: String,
    pub governance_state: String,
    pub human_notified: bool,
}

/// Proof that an event is durably in the chain.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Receipt {
    pub seq: u64,
    /// Hex SHA-256 chain hash of the entry.
    pub hash: String,
}

/// Handle to the audit writer; cheap to clone.
#[derive(Debug, Clone)]
pub struct Audit {
    _todo: (),
}

impl Audit {
    /// Opens (creating and migrating) the database in `state_dir`, the key
    /// pair in `state_dir/keys`, and `log_dir/safety_events.jsonl`.
    pub fn open(_state_dir: &Path, _log_dir: &Path) -> Result<Audit> {
        Ok(Audit { _todo: () })
    }

    /// Appends an event; returns once it is durable.
    pub fn record(&self, ev: Event) -> Result<Receipt> {
        tracing::info!(target: "audit", kind = %ev.kind, agent = ?ev.agent, uid = ?ev.uid, data = %ev.data);
        Ok(Receipt {
            seq: 0,
            hash: String::new(),
        })
    }

    /// Appends a safety event to the chain and to `safety_events.jsonl`.
    pub fn record_safety(&self, ev: Event, safety: Safety) -> Result<Receipt> {
        tracing::warn!(target: "audit", kind = %ev.kind, event = %safety.event, reason = %safety.reason);
        self.record(ev)
    }

    /// Signs and stores a halt's evidence; returns its id.
    pub fn store_evidence(&self, halt_id: &str, _evidence: &serde_json::Value) -> Result<String> {
        Ok(halt_id.to_string())
    }

    /// Signs the current head into a checkpoint (at halts and clean exit).
    pub fn checkpoint(&self) -> Result<()> {
        Ok(())
    }

    /// False once the writer has failed (disk full, read-only, ...).
    pub fn healthy(&self) -> bool {
        true
    }
}
