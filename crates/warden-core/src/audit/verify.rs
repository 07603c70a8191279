//! The offline check behind `warden audit verify`: read-only, on the live
//! database or a copy, with a typed result whose kind maps to an exit code.
//!
//! Checks, in order (the first finding wins):
//! 1. the file is a readable warden database (15);
//! 2. walking the chain by seq: no gap (12), each `prev_hash` is the hash
//!    of the entry before it (else 11 when it is the hash of another entry,
//!    i.e. entries changed places, and 10 otherwise), each hash recomputes
//!    (10), timestamps never decrease (11);
//! 3. every checkpoint, the head record and every evidence record is signed
//!    by the trusted key (14);
//! 4. every checkpoint and the head record lie within the chain (13: the
//!    tail was deleted) and match the hash the chain has at their seq (10:
//!    entries were rewritten after being signed); the head record is
//!    exactly the last entry (13); evidence hashes match their content (10);
//! 5. every witnessed head (`--against`) is in the chain with the same
//!    hash (16).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use rusqlite::Connection;

use super::chain::{self, Checkpoint};
use super::schema;
use super::store::{self, ReadError};
use crate::crypto;

/// What kind of damage verification found; each has its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindingKind {
    /// An entry's content or hash was changed (10).
    Edited,
    /// Entries changed places (11).
    Reordered,
    /// Entries are missing from the middle: a gap in seq (12).
    Deleted,
    /// The tail was deleted: a checkpoint or the head record lies beyond
    /// the last entry (13).
    Truncated,
    /// A signature does not verify with the trusted key (14).
    WrongKey,
    /// The file is unreadable, corrupt or not a warden database (15).
    Unreadable,
    /// A witnessed head is not in the log (16).
    WitnessMismatch,
}

impl FindingKind {
    pub fn exit_code(self) -> i32 {
        match self {
            FindingKind::Edited => 10,
            FindingKind::Reordered => 11,
            FindingKind::Deleted => 12,
            FindingKind::Truncated => 13,
            FindingKind::WrongKey => 14,
            FindingKind::Unreadable => 15,
            FindingKind::WitnessMismatch => 16,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            FindingKind::Edited => "edited",
            FindingKind::Reordered => "reordered",
            FindingKind::Deleted => "deleted",
            FindingKind::Truncated => "truncated",
            FindingKind::WrongKey => "wrong key",
            FindingKind::Unreadable => "unreadable",
            FindingKind::WitnessMismatch => "witness mismatch",
        }
    }
}

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", kind.label())]
pub struct Finding {
    /// Which kind of damage.
    pub kind: FindingKind,
    /// The entry (or checkpoint) where it shows, if one.
    pub seq: Option<u64>,
    /// What exactly, for a human.
    pub message: String,
}

impl Finding {
    fn new(kind: FindingKind, seq: Option<u64>, message: impl Into<String>) -> Finding {
        Finding {
            kind,
            seq,
            message: message.into(),
        }
    }
}

/// What to verify.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Directory holding `warden.db` (and `keys/signing.pub`).
    pub state_dir: PathBuf,
    /// A trusted public key (PEM). Without it, `keys/signing.pub` (or the key
    /// recorded in the database) is used, which proves nothing against
    /// someone who could replace both.
    pub pubkey: Option<PathBuf>,
    /// A file of witnessed heads: JSON lines with at least `seq` and `hash`
    /// (witness checkpoints, or `safety_events.jsonl`).
    pub against: Option<PathBuf>,
}

/// What an intact log looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Number of entries (= seq of the last one).
    pub entries: u64,
    /// Chain hash of the last entry (genesis when empty).
    pub head_hash: String,
    /// Number of signed checkpoints.
    pub checkpoints: usize,
    /// seq of the latest checkpoint (0 when none).
    pub last_checkpoint: u64,
    /// Number of evidence records checked.
    pub evidence: usize,
    /// Number of witnessed heads checked.
    pub witnessed: usize,
    /// Key id of the key the signatures were checked with.
    pub key_id: String,
    /// Where that key came from.
    pub key_source: String,
}

fn unreadable(message: impl Into<String>) -> Finding {
    Finding::new(FindingKind::Unreadable, None, message)
}

fn read_err(e: ReadError) -> Finding {
    match e {
        ReadError::BadRow { seq, message } => Finding::new(
            FindingKind::Edited,
            u64::try_from(seq).ok(),
            format!("entry {seq} does not decode: {message}"),
        ),
        ReadError::BadRecord { what, message } => Finding::new(
            FindingKind::Edited,
            None,
            format!("{what} does not decode: {message}"),
        ),
        ReadError::Sqlite(e) => unreadable(format!("database read failed: {e}")),
    }
}

/// Verifies the database in `opts.state_dir` without changing any file.
pub fn verify(opts: &VerifyOptions) -> Result<VerifyReport, Finding> {
    let db = opts.state_dir.join(schema::DB_FILE);
    let conn = schema::open_read_only(&db).map_err(|e| unreadable(e.to_string()))?;
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| unreadable(format!("{}: {e}", db.display())))?;
    if check != "ok" {
        return Err(unreadable(format!(
            "{}: integrity check: {check}",
            db.display()
        )));
    }
    let (key, key_source) = trusted_key(&conn, &opts.state_dir, opts.pubkey.as_deref())?;
    let witnessed = match &opts.against {
        Some(path) => read_heads(path)?,
        None => Vec::new(),
    };
    verify_conn(&conn, &key, key_source, &witnessed)
}

/// The key to check signatures with: `--pubkey`, else `keys/signing.pub`,
/// else the key recorded in the database when it was created.
fn trusted_key(
    conn: &Connection,
    state_dir: &Path,
    pubkey: Option<&Path>,
) -> Result<(VerifyingKey, String), Finding> {
    if let Some(path) = pubkey {
        let key =
            crypto::load_public_key(path).map_err(|e| unreadable(format!("trusted key: {e}")))?;
        return Ok((key, format!("{} (trusted)", path.display())));
    }
    let file = state_dir.join("keys").join(crypto::PUBLIC_KEY_FILE);
    if file.exists() {
        let key = crypto::load_public_key(&file).map_err(|e| unreadable(e.to_string()))?;
        return Ok((key, file.display().to_string()));
    }
    match store::get_state(conn, store::PUBLIC_KEY_KEY) {
        Ok(Some(pem)) => {
            let key = crypto::parse_public_pem(&pem)
                .map_err(|e| unreadable(format!("public key recorded in the database: {e}")))?;
            Ok((key, "the key recorded in the database".into()))
        }
        Ok(None) => Err(unreadable(format!(
            "no public key: pass --pubkey or restore {}",
            file.display()
        ))),
        Err(e) => Err(unreadable(e.to_string())),
    }
}

/// Reads a file of witnessed heads: one JSON object per line with `seq`
/// and `hash`; blank lines are skipped.
pub fn read_heads(path: &Path) -> Result<Vec<(u64, String)>, Finding> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| unreadable(format!("{}: {e}", path.display())))?;
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        // A last line cut short (the disk filled mid-append) holds no head.
        let cut_short = i + 1 == lines.len() && !text.ends_with('\n');
        if cut_short && serde_json::from_str::<serde_json::Value>(line).is_err() {
            break;
        }
        let bad = || {
            unreadable(format!(
                "{} line {}: not a JSON head with seq and hash",
                path.display(),
                i + 1
            ))
        };
        let v: serde_json::Value = serde_json::from_str(line).map_err(|_| bad())?;
        let seq = v.get("seq").and_then(|s| s.as_u64()).ok_or_else(bad)?;
        let hash = v.get("hash").and_then(|h| h.as_str()).ok_or_else(bad)?;
        out.push((seq, hash.to_string()));
    }
    Ok(out)
}

/// The checks on an open connection; see the module doc.
pub fn verify_conn(
    conn: &Connection,
    key: &VerifyingKey,
    key_source: String,
    witnessed: &[(u64, String)],
) -> Result<VerifyReport, Finding> {
    let checkpoints = store::checkpoints(conn).map_err(|e| match e {
        ReadError::Sqlite(e) => Finding::new(
            FindingKind::Edited,
            None,
            format!("checkpoints do not decode: {e}"),
        ),
        other => read_err(other),
    })?;
    let head = store::head_record(conn).map_err(read_err)?;

    // The seqs whose hash is needed after the walk.
    let mut wanted: BTreeMap<u64, Option<String>> = BTreeMap::new();
    for cp in &checkpoints {
        wanted.insert(cp.seq, None);
    }
    if let Some(h) = &head {
        wanted.insert(h.seq, None);
    }
    for (seq, _) in witnessed {
        wanted.insert(*seq, None);
    }
    let genesis = chain::genesis_hash();
    wanted.insert(0, Some(genesis.clone()));

    // 2. The walk.
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {} FROM audit_log ORDER BY seq",
            store::ENTRY_COLUMNS
        ))
        .map_err(|e| unreadable(format!("audit_log: {e}")))?;
    let mut rows = stmt
        .query([])
        .map_err(|e| unreadable(format!("audit_log: {e}")))?;
    let mut expected_seq = 1u64;
    let mut prev_hash = genesis.clone();
    let mut prev_ts = i64::MIN;
    while let Some(row) = rows
        .next()
        .map_err(|e| unreadable(format!("audit_log: {e}")))?
    {
        let e = store::entry_from_row(row).map_err(read_err)?;
        if e.seq != expected_seq {
            let missing = if e.seq == expected_seq + 1 {
                format!("entry {expected_seq} is missing")
            } else {
                format!("entries {expected_seq} to {} are missing", e.seq - 1)
            };
            return Err(Finding::new(
                FindingKind::Deleted,
                Some(expected_seq),
                missing,
            ));
        }
        if e.prev_hash != prev_hash {
            if let Some(other) = seq_with_hash(conn, &e.prev_hash, &genesis) {
                return Err(Finding::new(
                    FindingKind::Reordered,
                    Some(e.seq),
                    format!(
                        "entry {} follows the hash of entry {other}, not of entry {}",
                        e.seq,
                        e.seq - 1
                    ),
                ));
            }
            return Err(Finding::new(
                FindingKind::Edited,
                Some(e.seq),
                format!(
                    "entry {}'s prev_hash does not match entry {}'s hash",
                    e.seq,
                    e.seq - 1
                ),
            ));
        }
        if e.expected_hash().as_deref() != Some(e.hash.as_str()) {
            return Err(Finding::new(
                FindingKind::Edited,
                Some(e.seq),
                format!(
                    "entry {} does not hash to its stored hash: its content was changed",
                    e.seq
                ),
            ));
        }
        if e.timestamp < prev_ts {
            return Err(Finding::new(
                FindingKind::Reordered,
                Some(e.seq),
                format!(
                    "entry {}'s timestamp is earlier than entry {}'s",
                    e.seq,
                    e.seq - 1
                ),
            ));
        }
        if let Some(slot) = wanted.get_mut(&e.seq) {
            *slot = Some(e.hash.clone());
        }
        prev_hash = e.hash;
        prev_ts = e.timestamp;
        expected_seq += 1;
    }
    let last = expected_seq - 1;
    let key_id = crypto::key_id(key);

    // 3. Signatures.
    for cp in &checkpoints {
        if !cp.verify(key) {
            return Err(wrong_key(
                &format!("checkpoint at seq {}", cp.seq),
                cp,
                &key_id,
            ));
        }
    }
    match &head {
        Some(h) if !h.verify(key) => return Err(wrong_key("the head record", h, &key_id)),
        _ => {}
    }
    let evidence = verify_evidence(conn, key, &key_id)?;

    // 4. Checkpoints and head against the chain.
    for cp in &checkpoints {
        check_signed_head(&format!("checkpoint at seq {}", cp.seq), cp, last, &wanted)?;
    }
    match &head {
        None => {
            return Err(Finding::new(
                FindingKind::Truncated,
                None,
                "the signed head record is missing",
            ))
        }
        Some(h) => {
            check_signed_head("the head record", h, last, &wanted)?;
            if h.seq != last {
                return Err(Finding::new(
                    FindingKind::Truncated,
                    Some(h.seq),
                    format!(
                        "the signed head record is at seq {} but the log ends at seq {last}",
                        h.seq
                    ),
                ));
            }
        }
    }

    // 5. Witnessed heads.
    for (seq, hash) in witnessed {
        match wanted.get(seq).cloned().flatten() {
            None => {
                return Err(Finding::new(
                    FindingKind::WitnessMismatch,
                    Some(*seq),
                    format!("a witnessed head is at seq {seq} but the log ends at seq {last}"),
                ))
            }
            Some(h) if &h != hash => {
                return Err(Finding::new(
                    FindingKind::WitnessMismatch,
                    Some(*seq),
                    format!(
                    "entry {seq} has hash {h} but the witness saw {hash}: the log was rewritten"
                ),
                ))
            }
            Some(_) => {}
        }
    }

    Ok(VerifyReport {
        entries: last,
        head_hash: prev_hash,
        checkpoints: checkpoints.len(),
        last_checkpoint: checkpoints.last().map_or(0, |c| c.seq),
        evidence,
        witnessed: witnessed.len(),
        key_id,
        key_source,
    })
}

fn wrong_key(what: &str, cp: &Checkpoint, key_id: &str) -> Finding {
    Finding::new(
        FindingKind::WrongKey,
        Some(cp.seq),
        format!(
            "{what} does not verify with key {key_id} (it names key {})",
            cp.key_id
        ),
    )
}

fn check_signed_head(
    what: &str,
    cp: &Checkpoint,
    last: u64,
    hashes: &BTreeMap<u64, Option<String>>,
) -> Result<(), Finding> {
    if cp.seq > last {
        return Err(Finding::new(
            FindingKind::Truncated,
            Some(cp.seq),
            format!(
                "{what} covers seq {} but the log ends at seq {last}: its tail was deleted",
                cp.seq
            ),
        ));
    }
    match hashes.get(&cp.seq).cloned().flatten() {
        Some(h) if h == cp.hash => Ok(()),
        _ => Err(Finding::new(
            FindingKind::Edited,
            Some(cp.seq),
            format!(
                "{what} signed hash {} but entry {} now hashes differently: entries up to it were rewritten",
                cp.hash, cp.seq
            ),
        )),
    }
}

/// The seq of an entry with this hash (0 for genesis), if any.
fn seq_with_hash(conn: &Connection, hash: &str, genesis: &str) -> Option<u64> {
    if hash == genesis {
        return Some(0);
    }
    conn.query_row(
        "SELECT seq FROM audit_log WHERE hash = ?1 LIMIT 1",
        [hash],
        |r| r.get::<_, i64>(0),
    )
    .ok()
    .and_then(|s| u64::try_from(s).ok())
}

/// Checks every evidence record's hash and signature; returns how many.
fn verify_evidence(conn: &Connection, key: &VerifyingKey, key_id: &str) -> Result<usize, Finding> {
    let mut stmt = conn
        .prepare("SELECT id FROM evidence ORDER BY rowid")
        .map_err(|e| unreadable(format!("evidence: {e}")))?;
    let ids: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| Finding::new(FindingKind::Edited, None, format!("evidence ids: {e}")))?;
    let mut seen = HashMap::new();
    for id in &ids {
        let rec = store::evidence(conn, id)
            .map_err(|e| Finding::new(FindingKind::Edited, None, format!("evidence {id}: {e}")))?
            .ok_or_else(|| unreadable(format!("evidence {id} vanished while reading")))?;
        if !crypto::verify_hex(key, rec.statement().as_bytes(), &rec.signature) {
            return Err(Finding::new(
                FindingKind::WrongKey,
                None,
                format!(
                    "evidence {id} is not signed by key {key_id} (it names key {})",
                    rec.key_id
                ),
            ));
        }
        if crypto::sha256_hex(crypto::canonical_json(&rec.data).as_bytes()) != rec.sha256 {
            return Err(Finding::new(
                FindingKind::Edited,
                None,
                format!(
                    "evidence {id} does not hash to its signed sha256: its content was changed"
                ),
            ));
        }
        seen.insert(id.clone(), ());
    }
    Ok(seen.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_file_tolerates_only_a_cut_short_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heads");
        std::fs::write(
            &path,
            "{\"seq\":1,\"hash\":\"ab\"}\n\n{\"seq\":2,\"hash\":\"cd\"}\n{\"seq\":3,",
        )
        .unwrap();
        assert_eq!(
            read_heads(&path).unwrap(),
            vec![(1, "ab".to_string()), (2, "cd".to_string())]
        );
        std::fs::write(&path, "{\"seq\":1,\"hash\":\"ab\"}\n{\"seq\":3,\n").unwrap();
        assert_eq!(read_heads(&path).unwrap_err().kind, FindingKind::Unreadable);
        std::fs::write(&path, "{\"seq\":1}\n").unwrap();
        assert!(read_heads(&path).is_err());
    }
}
