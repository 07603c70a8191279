//! Case packs: one file per halt that proves, with nothing but itself, what
//! warden saw and did.
//!
//! A case pack is canonical JSON (see [`crate::crypto`]) followed by one
//! newline, holding:
//!
//! - `format` = `"warden-casepack"`, `version` = 1;
//! - `halt_id` and `halt_seq`: the halt and the seq of its `halt` entry;
//! - `public_key`: the host's Ed25519 public key, 64 hex digits, and its
//!   `key_id`;
//! - `evidence`: the evidence record (id, halt_id, timestamp, sha256,
//!   key_id, signature, data);
//! - `start`: the last checkpoint before the halt entry, or `null` when the
//!   slice starts at genesis;
//! - `entries`: every audit entry after `start` up to and including `end`;
//! - `end`: the first checkpoint at or after the halt entry (or, when the
//!   daemon died before making one, the signed head record).
//!
//! [`verify_pack`] accepts the file only when it is exactly in canonical
//! form and every field is bound to a signature: the chain recomputes from
//! `start.hash` and ends at `end.hash`, `start` and `end` are signed by
//! `public_key`, the halt entry names this halt, this evidence id and this
//! evidence's SHA-256, the evidence hashes to that SHA-256 and is signed.
//! So any changed byte makes it fail.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::audit::chain::{self, Checkpoint, Entry};
use crate::audit::schema;
use crate::audit::store::{self, EvidenceRecord};
use crate::audit::verify::{Finding, FindingKind};
use crate::crypto;

/// Value of the `format` field.
pub const FORMAT: &str = "warden-casepack";
/// Value of the `version` field written by this build.
pub const VERSION: u64 = 1;

/// The file's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasePack {
    /// Always [`FORMAT`].
    pub format: String,
    /// Format version; [`VERSION`].
    pub version: u64,
    /// The halt this pack is about.
    pub halt_id: String,
    /// seq of the `halt` entry.
    pub halt_seq: u64,
    /// The signer's Ed25519 public key, 32 bytes as hex.
    pub public_key: String,
    /// Its key id.
    pub key_id: String,
    /// The signed evidence.
    pub evidence: EvidenceRecord,
    /// Checkpoint the slice starts after; `None`: genesis.
    pub start: Option<Checkpoint>,
    /// The entries `start.seq + 1 ..= end.seq`.
    pub entries: Vec<Entry>,
    /// Checkpoint covering the halt entry.
    pub end: Checkpoint,
}

fn finding(kind: FindingKind, message: impl Into<String>) -> Finding {
    Finding {
        kind,
        seq: None,
        message: message.into(),
    }
}

/// Builds the case pack of `halt_id` from the database in `state_dir`
/// (read-only).
pub fn export(state_dir: &Path, halt_id: &str) -> Result<CasePack, String> {
    let db = state_dir.join(schema::DB_FILE);
    let conn = schema::open_read_only(&db).map_err(|e| e.to_string())?;
    let halt = store::halt_entry(&conn, halt_id)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no halt entry with halt_id {halt_id:?} in {}", db.display()))?;
    let evidence_id = halt
        .data
        .get("evidence_id")
        .and_then(|v| v.as_str())
        .ok_or_else(|| format!("the halt entry (seq {}) names no evidence_id", halt.seq))?;
    let evidence = store::evidence(&conn, evidence_id)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("evidence {evidence_id} is not in the database"))?;
    let start = store::checkpoint_before(&conn, halt.seq).map_err(|e| e.to_string())?;
    let end = match store::checkpoint_covering(&conn, halt.seq).map_err(|e| e.to_string())? {
        Some(cp) => cp,
        None => store::head_record(&conn)
            .map_err(|e| e.to_string())?
            .filter(|h| h.seq >= halt.seq)
            .ok_or_else(|| format!("no signed checkpoint or head covers seq {}", halt.seq))?,
    };
    let from = start.as_ref().map_or(0, |c| c.seq) + 1;
    let entries = store::entries(&conn, from, end.seq).map_err(|e| e.to_string())?;
    let pem = store::get_state(&conn, store::PUBLIC_KEY_KEY)
        .map_err(|e| e.to_string())?
        .ok_or("the database records no public key")?;
    let key = crypto::parse_public_pem(&pem).map_err(|e| e.to_string())?;
    let keys_pub = state_dir.join("keys").join(crypto::PUBLIC_KEY_FILE);
    if let Ok(file_key) = crypto::load_public_key(&keys_pub) {
        if file_key != key {
            return Err(format!(
                "{} differs from the key recorded in the database",
                keys_pub.display()
            ));
        }
    }
    let pack = CasePack {
        format: FORMAT.into(),
        version: VERSION,
        halt_id: halt_id.to_string(),
        halt_seq: halt.seq,
        public_key: hex::encode(key.as_bytes()),
        key_id: crypto::key_id(&key),
        evidence,
        start,
        entries,
        end,
    };
    // Refuse to write a pack that would not verify (a damaged log).
    verify_value(&pack, None).map_err(|f| format!("the exported pack does not verify: {f}"))?;
    Ok(pack)
}

/// The file's bytes.
pub fn to_bytes(pack: &CasePack) -> Vec<u8> {
    let mut text =
        crypto::canonical_json(&serde_json::to_value(pack).expect("a case pack serializes"));
    text.push('\n');
    text.into_bytes()
}

/// Verifies a case pack file's bytes; `trusted` is a key the pack's key
/// must equal. Returns the parsed pack.
pub fn verify_pack(
    bytes: &[u8],
    trusted: Option<&ed25519_dalek::VerifyingKey>,
) -> Result<CasePack, Finding> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| finding(FindingKind::Unreadable, "not UTF-8: not a case pack"))?;
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| finding(FindingKind::Unreadable, format!("not JSON: {e}")))?;
    if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(finding(
            FindingKind::Unreadable,
            "not a warden case pack (format)",
        ));
    }
    if value.get("version").and_then(|v| v.as_u64()) != Some(VERSION) {
        return Err(finding(
            FindingKind::Unreadable,
            format!("unsupported case pack version (this warden reads {VERSION})"),
        ));
    }
    let mut canonical = crypto::canonical_json(&value);
    canonical.push('\n');
    if canonical != text {
        return Err(finding(
            FindingKind::Edited,
            "the file is not in canonical form: it was changed after export",
        ));
    }
    let pack: CasePack = serde_json::from_value(value)
        .map_err(|e| finding(FindingKind::Edited, format!("unexpected structure: {e}")))?;
    verify_value(&pack, trusted)?;
    Ok(pack)
}

/// The checks of [`verify_pack`] on a parsed pack.
fn verify_value(
    pack: &CasePack,
    trusted: Option<&ed25519_dalek::VerifyingKey>,
) -> Result<(), Finding> {
    use FindingKind::*;
    let raw: [u8; 32] = crypto::decode_hex_lower(&pack.public_key)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| finding(WrongKey, "public_key is not 32 bytes of hex"))?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&raw)
        .map_err(|e| finding(WrongKey, format!("public_key is not an Ed25519 key: {e}")))?;
    if let Some(t) = trusted {
        if t != &key {
            return Err(finding(
                WrongKey,
                format!(
                    "the pack is signed by key {}, not by the trusted key {}",
                    crypto::key_id(&key),
                    crypto::key_id(t)
                ),
            ));
        }
    }
    let key_id = crypto::key_id(&key);
    if pack.key_id != key_id {
        return Err(finding(WrongKey, "key_id does not match public_key"));
    }

    // The slice: chained from `start` to `end` (signatures last: they are
    // the slow part).
    let (start_seq, start_hash) = match &pack.start {
        None => (0, chain::genesis_hash()),
        Some(cp) => (cp.seq, cp.hash.clone()),
    };
    let mut prev = start_hash;
    let mut seq = start_seq;
    for e in &pack.entries {
        if e.seq != seq + 1 {
            return Err(finding(
                Deleted,
                format!("entry {} follows entry {seq}", e.seq),
            ));
        }
        if e.prev_hash != prev || e.expected_hash().as_deref() != Some(e.hash.as_str()) {
            return Err(finding(
                Edited,
                format!("entry {} does not chain: it was changed", e.seq),
            ));
        }
        prev = e.hash.clone();
        seq = e.seq;
    }
    if pack.end.seq != seq || pack.end.hash != prev {
        return Err(finding(
            Edited,
            format!(
                "the slice ends at seq {seq} but the end checkpoint signs seq {} with another hash",
                pack.end.seq
            ),
        ));
    }

    // The halt entry ties halt, evidence and slice together.
    let halt = pack
        .entries
        .iter()
        .find(|e| e.seq == pack.halt_seq)
        .ok_or_else(|| {
            finding(
                Edited,
                format!("halt_seq {} is not in the slice", pack.halt_seq),
            )
        })?;
    let field = |name: &str| halt.data.get(name).and_then(|v| v.as_str());
    if halt.kind != "halt" || field("halt_id") != Some(pack.halt_id.as_str()) {
        return Err(finding(
            Edited,
            format!(
                "entry {} is not the halt entry of {}",
                halt.seq, pack.halt_id
            ),
        ));
    }
    let ev = &pack.evidence;
    if field("evidence_id") != Some(ev.id.as_str())
        || field("evidence_sha256") != Some(ev.sha256.as_str())
        || ev.halt_id != pack.halt_id
    {
        return Err(finding(
            Edited,
            "the halt entry does not name this evidence",
        ));
    }
    if crypto::sha256_hex(crypto::canonical_json(&ev.data).as_bytes()) != ev.sha256 {
        return Err(finding(
            Edited,
            "the evidence does not hash to its SHA-256: it was changed",
        ));
    }
    if ev.key_id != key_id || !crypto::verify_hex(&key, ev.statement().as_bytes(), &ev.signature) {
        return Err(finding(
            WrongKey,
            "the evidence is not signed by the pack's key",
        ));
    }
    if let Some(cp) = &pack.start {
        if !cp.verify(&key) {
            return Err(finding(
                WrongKey,
                format!(
                    "start checkpoint (seq {}) is not signed by the pack's key",
                    cp.seq
                ),
            ));
        }
    }
    if !pack.end.verify(&key) {
        return Err(finding(
            WrongKey,
            format!(
                "end checkpoint (seq {}) is not signed by the pack's key",
                pack.end.seq
            ),
        ));
    }
    Ok(())
}
