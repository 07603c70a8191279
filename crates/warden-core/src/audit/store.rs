//! Reads of the database shared by the writer, `verify`, the CLI and case
//! packs. Rows that do not decode are reported with their seq, never skipped.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::chain::{Checkpoint, Entry};

/// `system_state` key of the signed head record.
pub const HEAD_KEY: &str = "head";
/// `system_state` key of the public key PEM recorded when the log was created.
pub const PUBLIC_KEY_KEY: &str = "public_key";

/// A row that is in the table but does not decode.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("entry {seq}: {message}")]
    BadRow { seq: i64, message: String },
    #[error("{what}: {message}")]
    BadRecord { what: String, message: String },
}

pub const ENTRY_COLUMNS: &str = "seq, timestamp, kind, agent, uid, data, prev_hash, hash";

/// Decodes one `audit_log` row selected with [`ENTRY_COLUMNS`].
pub fn entry_from_row(row: &Row<'_>) -> Result<Entry, ReadError> {
    let seq: i64 = row.get(0)?;
    let bad = |message: String| ReadError::BadRow { seq, message };
    let get = |i: usize| -> Result<rusqlite::types::Value, ReadError> { Ok(row.get(i)?) };
    use rusqlite::types::Value as V;
    let timestamp = match get(1)? {
        V::Integer(t) => t,
        other => return Err(bad(format!("timestamp is not an integer: {other:?}"))),
    };
    let kind = match get(2)? {
        V::Text(s) => s,
        other => return Err(bad(format!("kind is not text: {other:?}"))),
    };
    let agent = match get(3)? {
        V::Null => None,
        V::Text(s) => Some(s),
        other => return Err(bad(format!("agent is not text: {other:?}"))),
    };
    let uid = match get(4)? {
        V::Null => None,
        V::Integer(u) => Some(u32::try_from(u).map_err(|_| bad(format!("uid {u} out of range")))?),
        other => return Err(bad(format!("uid is not an integer: {other:?}"))),
    };
    let data = match get(5)? {
        V::Text(s) => {
            serde_json::from_str(&s).map_err(|e| bad(format!("data is not JSON: {e}")))?
        }
        other => return Err(bad(format!("data is not text: {other:?}"))),
    };
    let text = |i: usize, name: &str| -> Result<String, ReadError> {
        match get(i)? {
            V::Text(s) => Ok(s),
            other => Err(bad(format!("{name} is not text: {other:?}"))),
        }
    };
    let prev_hash = text(6, "prev_hash")?;
    let hash = text(7, "hash")?;
    let seq = u64::try_from(seq).map_err(|_| bad("negative seq".into()))?;
    Ok(Entry {
        seq,
        timestamp,
        kind,
        agent,
        uid,
        data,
        prev_hash,
        hash,
    })
}

/// The entry with this seq, if any.
pub fn entry(conn: &Connection, seq: u64) -> Result<Option<Entry>, ReadError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ENTRY_COLUMNS} FROM audit_log WHERE seq = ?1"
    ))?;
    let mut rows = stmt.query(params![seq as i64])?;
    match rows.next()? {
        Some(row) => Ok(Some(entry_from_row(row)?)),
        None => Ok(None),
    }
}

/// Entries with `from <= seq <= to`, in seq order.
pub fn entries(conn: &Connection, from: u64, to: u64) -> Result<Vec<Entry>, ReadError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ENTRY_COLUMNS} FROM audit_log WHERE seq >= ?1 AND seq <= ?2 ORDER BY seq"
    ))?;
    let mut rows = stmt.query(params![from as i64, to.min(i64::MAX as u64) as i64])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(entry_from_row(row)?);
    }
    Ok(out)
}

/// The last `n` entries, oldest first.
pub fn last_entries(conn: &Connection, n: u64) -> Result<Vec<Entry>, ReadError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ENTRY_COLUMNS} FROM audit_log ORDER BY seq DESC LIMIT ?1"
    ))?;
    let mut rows = stmt.query(params![n.min(i64::MAX as u64) as i64])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(entry_from_row(row)?);
    }
    out.reverse();
    Ok(out)
}

/// (seq, hash, timestamp) of the last entry, if any.
pub fn last(conn: &Connection) -> Result<Option<(u64, String, i64)>, ReadError> {
    Ok(last_entries(conn, 1)?
        .pop()
        .map(|e| (e.seq, e.hash, e.timestamp)))
}

const CHECKPOINT_COLUMNS: &str = "seq, hash, timestamp, host, machine_id, key_id, signature";

fn checkpoint_from_row(row: &Row<'_>) -> rusqlite::Result<Checkpoint> {
    Ok(Checkpoint {
        seq: row.get::<_, i64>(0)? as u64,
        hash: row.get(1)?,
        timestamp: row.get(2)?,
        host: row.get(3)?,
        machine_id: row.get(4)?,
        key_id: row.get(5)?,
        signature: row.get(6)?,
    })
}

pub fn insert_checkpoint(conn: &Connection, cp: &Checkpoint) -> rusqlite::Result<()> {
    conn.prepare_cached(&format!(
        "INSERT INTO checkpoints ({CHECKPOINT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    ))?
    .execute(params![
        cp.seq as i64,
        cp.hash,
        cp.timestamp,
        cp.host,
        cp.machine_id,
        cp.key_id,
        cp.signature
    ])?;
    Ok(())
}

/// Every checkpoint, in seq order.
pub fn checkpoints(conn: &Connection) -> Result<Vec<Checkpoint>, ReadError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY seq"
    ))?;
    let rows = stmt.query_map([], checkpoint_from_row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// The last checkpoint with `seq < before`, if any.
pub fn checkpoint_before(conn: &Connection, before: u64) -> Result<Option<Checkpoint>, ReadError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE seq < ?1 ORDER BY seq DESC LIMIT 1"
        ))?
        .query_row(params![before as i64], checkpoint_from_row)
        .optional()?)
}

/// The first checkpoint with `seq >= at`, if any.
pub fn checkpoint_covering(conn: &Connection, at: u64) -> Result<Option<Checkpoint>, ReadError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE seq >= ?1 ORDER BY seq LIMIT 1"
        ))?
        .query_row(params![at as i64], checkpoint_from_row)
        .optional()?)
}

/// The latest checkpoint, if any.
pub fn last_checkpoint(conn: &Connection) -> Result<Option<Checkpoint>, ReadError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY seq DESC LIMIT 1"
        ))?
        .query_row([], checkpoint_from_row)
        .optional()?)
}

pub fn get_state(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SELECT value FROM system_state WHERE key = ?1")?
        .query_row(params![key], |r| r.get(0))
        .optional()
}

pub fn set_state(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO system_state (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![key, value])?;
    Ok(())
}

/// The signed head record, if present.
pub fn head_record(conn: &Connection) -> Result<Option<Checkpoint>, ReadError> {
    match get_state(conn, HEAD_KEY)? {
        None => Ok(None),
        Some(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| ReadError::BadRecord {
                what: "head record".into(),
                message: e.to_string(),
            }),
    }
}

/// A stored evidence record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceRecord {
    /// The id returned by `store_evidence`.
    pub id: String,
    /// The halt it belongs to.
    pub halt_id: String,
    /// When it was stored, milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// Hex SHA-256 of the canonical JSON of `data`.
    pub sha256: String,
    /// Key id of the signer.
    pub key_id: String,
    /// Ed25519 signature of [`EvidenceRecord::statement`].
    pub signature: String,
    /// The evidence itself, as the daemon captured it.
    pub data: serde_json::Value,
}

impl EvidenceRecord {
    /// The signed bytes: the evidence's identity and hash, which binds its
    /// content through `sha256`.
    pub fn statement(&self) -> String {
        crate::crypto::canonical_json(&serde_json::json!({
            "evidence_id": self.id,
            "halt_id": self.halt_id,
            "timestamp": self.timestamp,
            "sha256": self.sha256,
            "key_id": self.key_id,
        }))
    }
}

const EVIDENCE_COLUMNS: &str = "id, halt_id, timestamp, sha256, key_id, signature, data";

pub fn insert_evidence(conn: &Connection, ev: &EvidenceRecord) -> rusqlite::Result<()> {
    conn.prepare_cached(&format!(
        "INSERT INTO evidence ({EVIDENCE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    ))?
    .execute(params![
        ev.id,
        ev.halt_id,
        ev.timestamp,
        ev.sha256,
        ev.key_id,
        ev.signature,
        crate::crypto::canonical_json(&ev.data)
    ])?;
    Ok(())
}

pub fn evidence(conn: &Connection, id: &str) -> Result<Option<EvidenceRecord>, ReadError> {
    let row = conn
        .prepare_cached(&format!(
            "SELECT {EVIDENCE_COLUMNS} FROM evidence WHERE id = ?1"
        ))?
        .query_row(params![id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
            ))
        })
        .optional()?;
    let Some((id, halt_id, timestamp, sha256, key_id, signature, data)) = row else {
        return Ok(None);
    };
    let data = serde_json::from_str(&data).map_err(|e| ReadError::BadRecord {
        what: format!("evidence {id}"),
        message: format!("data is not JSON: {e}"),
    })?;
    Ok(Some(EvidenceRecord {
        id,
        halt_id,
        timestamp,
        sha256,
        key_id,
        signature,
        data,
    }))
}

/// The `halt` entry whose data has this `halt_id` (the last one if several).
pub fn halt_entry(conn: &Connection, halt_id: &str) -> Result<Option<Entry>, ReadError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ENTRY_COLUMNS} FROM audit_log
         WHERE kind = 'halt' AND json_valid(data) AND json_extract(data, '$.halt_id') = ?1
         ORDER BY seq DESC LIMIT 1"
    ))?;
    let mut rows = stmt.query(params![halt_id])?;
    match rows.next()? {
        Some(row) => Ok(Some(entry_from_row(row)?)),
        None => Ok(None),
    }
}
