//! The records of the chain and how they are hashed and signed.
//!
//! - genesis = SHA-256("WARDEN_GENESIS")
//! - hash_n = SHA-256(hash_{n-1} as 32 raw bytes || canonical_json(event_n))
//!   where event_n = {"agent","data","kind","seq","timestamp","uid"} and
//!   `timestamp` is integer milliseconds since the Unix epoch (UTC). The
//!   writer never lets a timestamp go below the previous entry's, so the
//!   chain's timestamps are non-decreasing even when the wall clock steps
//!   back; a decreasing timestamp is a sign of reordering.
//! - A checkpoint (and the signed head record) signs
//!   canonical_json({"hash","host","key_id","machine_id","seq","timestamp"}).
//!
//! Hashes and signatures are lower-case hex everywhere.

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::crypto::{self, KeyPair};

/// The seed of the chain: hash_0.
pub const GENESIS_SEED: &[u8] = b"WARDEN_GENESIS";

/// Hex of SHA-256("WARDEN_GENESIS"), the `prev_hash` of entry 1.
pub fn genesis_hash() -> String {
    crypto::sha256_hex(GENESIS_SEED)
}

/// Milliseconds since the Unix epoch, now, as the chain stores it (SQLite
/// integers are signed); the clock is [`crate::clock`]'s.
pub fn now_ms() -> i64 {
    i64::try_from(crate::clock::now_ms()).unwrap_or(i64::MAX)
}

/// `2026-11-24T22:24:01.123Z` for a millisecond timestamp.
pub fn rfc3339_ms(ms: i64) -> String {
    let t = if ms >= 0 {
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64)
    } else {
        std::time::UNIX_EPOCH
    };
    humantime::format_rfc3339_millis(t).to_string()
}

/// hash_n from hash_{n-1} (hex) and the canonical event text. `None` when
/// `prev_hex` is not 32 bytes of hex (a tampered row).
pub fn chain_hash(prev_hex: &str, canonical_event: &str) -> Option<String> {
    let prev = crypto::decode_hex_lower(prev_hex)?;
    if prev.len() != 32 {
        return None;
    }
    let mut input = prev;
    input.extend_from_slice(canonical_event.as_bytes());
    Some(crypto::sha256_hex(&input))
}

/// One row of `audit_log`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Position in the chain, from 1, without gaps.
    pub seq: u64,
    /// Milliseconds since the Unix epoch (UTC), non-decreasing along the chain.
    pub timestamp: i64,
    /// What happened (`halt`, `command`, ...).
    pub kind: String,
    /// The agent concerned, if any.
    pub agent: Option<String>,
    /// uid of whoever caused it, if known.
    pub uid: Option<u32>,
    /// Event-specific details.
    pub data: serde_json::Value,
    /// hash of entry seq-1 (genesis for seq 1).
    pub prev_hash: String,
    /// This entry's chain hash.
    pub hash: String,
}

impl Entry {
    /// The hashed part of the entry, as canonical JSON.
    pub fn canonical_event(&self) -> String {
        canonical_event(
            self.seq,
            self.timestamp,
            &self.kind,
            self.agent.as_deref(),
            self.uid,
            &self.data,
        )
    }

    /// The hash this entry should have given its own `prev_hash`.
    pub fn expected_hash(&self) -> Option<String> {
        chain_hash(&self.prev_hash, &self.canonical_event())
    }
}

pub fn canonical_event(
    seq: u64,
    timestamp: i64,
    kind: &str,
    agent: Option<&str>,
    uid: Option<u32>,
    data: &serde_json::Value,
) -> String {
    crypto::canonical_json(&json!({
        "seq": seq,
        "timestamp": timestamp,
        "kind": kind,
        "agent": agent,
        "uid": uid,
        "data": data,
    }))
}

/// The host a checkpoint was made on.
#[derive(Debug, Clone)]
pub struct Host {
    /// `gethostname()`.
    pub hostname: String,
    /// `/etc/machine-id`, empty when there is none.
    pub machine_id: String,
}

impl Host {
    pub fn current() -> Host {
        let hostname = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        let machine_id = std::fs::read_to_string("/etc/machine-id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        Host {
            hostname,
            machine_id,
        }
    }
}

/// A signed statement "the chain had `hash` at `seq`". Stored in
/// `checkpoints`, as the head record in `system_state`, shipped to the
/// witness, and embedded in case packs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// seq of the last entry covered (0: the empty chain).
    pub seq: u64,
    /// Chain hash of that entry (genesis for seq 0).
    pub hash: String,
    /// When it was signed, milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// Hostname of the signer.
    pub host: String,
    /// /etc/machine-id of the signer.
    pub machine_id: String,
    /// Key id of the signing key.
    pub key_id: String,
    /// Ed25519 signature of [`Checkpoint::payload`].
    pub signature: String,
}

impl Checkpoint {
    pub fn sign(key: &KeyPair, host: &Host, seq: u64, hash: &str, timestamp: i64) -> Checkpoint {
        let mut cp = Checkpoint {
            seq,
            hash: hash.to_string(),
            timestamp,
            host: host.hostname.clone(),
            machine_id: host.machine_id.clone(),
            key_id: key.key_id().to_string(),
            signature: String::new(),
        };
        cp.signature = key.sign_hex(cp.payload().as_bytes());
        cp
    }

    /// The signed bytes.
    pub fn payload(&self) -> String {
        crypto::canonical_json(&json!({
            "seq": self.seq,
            "hash": self.hash,
            "timestamp": self.timestamp,
            "host": self.host,
            "machine_id": self.machine_id,
            "key_id": self.key_id,
        }))
    }

    /// True when `key` made this checkpoint.
    pub fn verify(&self, key: &VerifyingKey) -> bool {
        self.key_id == crypto::key_id(key)
            && crypto::verify_hex(key, self.payload().as_bytes(), &self.signature)
    }

    /// One line of canonical JSON, as sent to the witness.
    pub fn to_json_line(&self) -> String {
        crypto::canonical_json(&serde_json::to_value(self).expect("a checkpoint serializes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn genesis_is_sha256_of_seed() {
        assert_eq!(
            genesis_hash(),
            "07ef1051175a4e706478d5eb9a7c375a336502a0973ffbadf43d481f96e9a0cb"
        );
        assert_eq!(genesis_hash().len(), 64);
    }

    #[test]
    fn checkpoint_signs_and_detects_change() {
        let key = KeyPair::generate();
        let host = Host {
            hostname: "h".into(),
            machine_id: "m".into(),
        };
        let cp = Checkpoint::sign(&key, &host, 3, &genesis_hash(), 5);
        assert!(cp.verify(&key.verifying_key()));
        let mut bad = cp.clone();
        bad.seq = 4;
        assert!(!bad.verify(&key.verifying_key()));
        let back: Checkpoint = serde_json::from_str(&cp.to_json_line()).unwrap();
        assert_eq!(back, cp);
    }

    #[test]
    fn hash_depends_on_prev_and_event() {
        let a = chain_hash(&genesis_hash(), "{}").unwrap();
        let b = chain_hash(&a, "{}").unwrap();
        assert_ne!(a, b);
        assert!(chain_hash("xyz", "{}").is_none());
    }
}
