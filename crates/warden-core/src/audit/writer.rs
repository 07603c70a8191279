//! The writer thread: the only owner of the read-write connection.
//!
//! Group commit: the thread takes every request queued on its channel (up
//! to [`MAX_BATCH`]), applies them in one `BEGIN IMMEDIATE` transaction,
//! updates the signed head record, commits (one WAL fsync, `synchronous=
//! FULL`), appends the batch's safety lines to `safety_events.jsonl` with
//! one fsync, and only then answers each caller. Any error poisons the
//! writer: the transaction is rolled back, every caller of the batch and
//! every later caller gets an error, and `Audit::healthy()` turns false.
//! Evidence is the exception: it is the halted tree's content, which an agent
//! shapes, so each evidence record is stored inside its own savepoint and a
//! failure to store it (too large, or refused by SQLite) is that caller's
//! error alone; the chain and every other request go on.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use rusqlite::{params, Connection};
use serde_json::json;

use super::chain::{self, Checkpoint, Entry, Host};
use super::safety_log::SafetyLog;
use super::store::{self, EvidenceRecord};
use super::{AuditError, Event, Receipt, Result, Safety, Shared};
use crate::crypto::{self, KeyPair};

/// Most requests committed in one transaction.
pub const MAX_BATCH: usize = 4096;

/// Largest evidence record stored, as canonical JSON. Capture caps evidence
/// well below this (`evidence::EVIDENCE_MAX`); this is the writer's own
/// bound, far under SQLite's 1 GB value limit (SQLITE_MAX_LENGTH).
pub const MAX_EVIDENCE_BYTES: usize = 64 << 20;

/// Where an answer goes.
pub enum Reply<T> {
    /// A blocked `record` call.
    Blocking(std::sync::mpsc::SyncSender<Result<T>>),
    /// An awaited `submit`.
    Async(tokio::sync::oneshot::Sender<Result<T>>),
}

impl<T> Reply<T> {
    fn send(self, value: Result<T>) {
        // A caller that stopped waiting has nobody to tell; the outcome is
        // still in the database (or the writer is poisoned).
        match self {
            Reply::Blocking(tx) => {
                let _ = tx.send(value);
            }
            Reply::Async(tx) => {
                let _ = tx.send(value);
            }
        }
    }
}

/// One queued request.
pub enum Request {
    Record {
        event: Event,
        safety: Option<Safety>,
        reply: Reply<Receipt>,
    },
    Evidence {
        halt_id: String,
        evidence: serde_json::Value,
        reply: Reply<String>,
    },
    Checkpoint {
        reply: Reply<Checkpoint>,
    },
}

impl Request {
    pub(super) fn fail(self, err: AuditError) {
        match self {
            Request::Record { reply, .. } => reply.send(Err(err)),
            Request::Evidence { reply, .. } => reply.send(Err(err)),
            Request::Checkpoint { reply } => reply.send(Err(err)),
        }
    }
}

/// The chain's head as the writer knows it.
#[derive(Clone)]
struct Head {
    seq: u64,
    hash: String,
    timestamp: i64,
}

pub struct Writer {
    /// The read-write connection (WAL, synchronous=FULL).
    conn: Connection,
    /// For error messages.
    db_path: std::path::PathBuf,
    /// Signs checkpoints, the head record and evidence.
    key: KeyPair,
    /// Put in every checkpoint.
    host: Host,
    /// Head of the committed chain.
    head: Head,
    /// The latest checkpoint, if any.
    last_checkpoint: Option<Checkpoint>,
    /// A periodic checkpoint is made when seq is a multiple of this (0: never).
    checkpoint_every: u64,
    /// `safety_events.jsonl`.
    safety: SafetyLog,
    /// New checkpoints go to the witness thread, if one is configured.
    witness: Option<Sender<Checkpoint>>,
    /// Health flag and first error, shared with every `Audit` handle.
    shared: Arc<Shared>,
    /// Entries of the open transaction, published once it commits.
    fresh: Vec<Entry>,
}

/// What a request produced inside the transaction, answered after commit.
enum Done {
    Receipt(Reply<Receipt>, Receipt, Option<String>),
    Evidence(Reply<String>, String),
    /// This evidence was not stored; nothing else is affected.
    EvidenceRefused(Reply<String>, AuditError),
    Checkpoint(Reply<Checkpoint>, Checkpoint),
}

impl Writer {
    /// Prepares the writer on the caller's thread, so that a database, key
    /// or log problem is an error of `Audit::open`.
    pub fn new(
        conn: Connection,
        db_path: std::path::PathBuf,
        key: KeyPair,
        safety: SafetyLog,
        checkpoint_every: u64,
        witness: Option<Sender<Checkpoint>>,
        shared: Arc<Shared>,
    ) -> Result<Writer> {
        let path = db_path.clone();
        let db_err = |e: &dyn std::fmt::Display| AuditError::Store {
            path: path.clone(),
            message: e.to_string(),
        };
        let host = Host::current();
        let genesis = chain::genesis_hash();
        let head = match store::last(&conn).map_err(|e| db_err(&e))? {
            Some((seq, hash, timestamp)) => Head {
                seq,
                hash,
                timestamp,
            },
            None => Head {
                seq: 0,
                hash: genesis,
                timestamp: 0,
            },
        };
        let last_checkpoint = store::last_checkpoint(&conn).map_err(|e| db_err(&e))?;
        // The head record is written in the same transaction as the entries,
        // so it agrees with the last row unless someone changed the file.
        match store::head_record(&conn).map_err(|e| db_err(&e))? {
            Some(rec) if rec.seq != head.seq || rec.hash != head.hash => {
                return Err(db_err(&format!(
                    "the signed head record says seq {} but the log ends at seq {}; \
                     the log was changed outside warden: run `warden audit verify`",
                    rec.seq, head.seq
                )));
            }
            Some(_) => {}
            None if head.seq != 0 => {
                return Err(db_err(&format!(
                    "the log has {} entries but no head record; \
                     run `warden audit verify`",
                    head.seq
                )));
            }
            None => {}
        }
        let mut w = Writer {
            conn,
            db_path,
            key,
            host,
            head,
            last_checkpoint,
            checkpoint_every,
            safety,
            witness,
            shared,
            fresh: Vec::new(),
        };
        w.shared.head_seq.store(w.head.seq, Ordering::SeqCst);
        let recorded = store::get_state(&w.conn, store::PUBLIC_KEY_KEY).map_err(|e| db_err(&e))?;
        if let Some(pem) = &recorded {
            // A log whose key was replaced (keys/ wiped and regenerated)
            // would mix signatures that no single key verifies.
            let same = crypto::parse_public_pem(pem).is_ok_and(|k| k == w.key.verifying_key());
            if !same {
                return Err(AuditError::Key {
                    message: format!(
                        "the signing key in keys/ (id {}) is not the key this audit log was \
                         created with; restore the original keys/ directory",
                        w.key.key_id()
                    ),
                });
            }
        }
        if recorded.is_none() {
            // First open: record the key and sign the empty head.
            let r = (|| -> rusqlite::Result<()> {
                w.conn.execute_batch("BEGIN IMMEDIATE")?;
                store::set_state(&w.conn, store::PUBLIC_KEY_KEY, &w.key.public_pem())?;
                w.write_head_record()?;
                w.conn.execute_batch("COMMIT")
            })();
            if let Err(e) = r {
                let _ = w.conn.execute_batch("ROLLBACK");
                return Err(db_err(&e));
            }
        }
        Ok(w)
    }

    /// The thread body: runs until every sender is gone.
    pub fn run(mut self, rx: Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            if let Some(err) = self.shared.failure() {
                for r in batch {
                    r.fail(err.clone());
                }
                continue;
            }
            self.process(batch);
        }
    }

    fn store_err(&self, e: impl std::fmt::Display) -> AuditError {
        AuditError::Store {
            path: self.db_path.clone(),
            message: e.to_string(),
        }
    }

    fn process(&mut self, batch: Vec<Request>) {
        let saved = (self.head.clone(), self.last_checkpoint.clone());
        let mut done = Vec::with_capacity(batch.len());
        let mut new_checkpoints = Vec::new();
        let mut pending = batch.into_iter();
        let result = (|| -> rusqlite::Result<()> {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            for req in pending.by_ref() {
                match req {
                    Request::Record {
                        event,
                        safety,
                        reply,
                    } => {
                        let receipt = self.append(&event)?;
                        let line =
                            safety.map(|s| safety_line(&event, &s, &receipt, self.head.timestamp));
                        if self.checkpoint_every > 0 && receipt.seq % self.checkpoint_every == 0 {
                            new_checkpoints.push(self.checkpoint()?);
                        }
                        done.push(Done::Receipt(reply, receipt, line));
                    }
                    Request::Evidence {
                        halt_id,
                        evidence,
                        reply,
                    } => match self.store_evidence_contained(&halt_id, evidence)? {
                        Ok(id) => done.push(Done::Evidence(reply, id)),
                        Err(e) => done.push(Done::EvidenceRefused(reply, e)),
                    },
                    Request::Checkpoint { reply } => {
                        let cp = match &self.last_checkpoint {
                            Some(cp) if cp.seq == self.head.seq => cp.clone(),
                            _ => {
                                let cp = self.checkpoint()?;
                                new_checkpoints.push(cp.clone());
                                cp
                            }
                        };
                        done.push(Done::Checkpoint(reply, cp));
                    }
                }
            }
            if self.head.seq != saved.0.seq || self.last_checkpoint != saved.1 {
                self.write_head_record()?;
            }
            self.conn.execute_batch("COMMIT")
        })();
        if let Err(e) = result {
            // Nothing of the batch is committed: roll back and poison.
            self.fresh.clear();
            let rollback = self.conn.execute_batch("ROLLBACK");
            self.head = saved.0;
            self.last_checkpoint = saved.1;
            let mut message = e.to_string();
            if let Err(r) = rollback {
                if !self.conn.is_autocommit() {
                    message.push_str(&format!(" (and the rollback failed: {r})"));
                }
            }
            let err = self.shared.poison(self.store_err(message));
            for d in done {
                match d {
                    Done::Receipt(reply, ..) => reply.send(Err(err.clone())),
                    Done::Evidence(reply, _) => reply.send(Err(err.clone())),
                    Done::EvidenceRefused(reply, _) => reply.send(Err(err.clone())),
                    Done::Checkpoint(reply, _) => reply.send(Err(err.clone())),
                }
            }
            for r in pending {
                r.fail(err.clone());
            }
            return;
        }
        // Committed. The safety lines go to their file before anyone hears
        // back; if that fails, the safety callers (and everyone after) get
        // an error, the others' entries are durable and they get receipts.
        let lines: Vec<String> = done
            .iter()
            .filter_map(|d| match d {
                Done::Receipt(_, _, Some(line)) => Some(line.clone()),
                _ => None,
            })
            .collect();
        let safety_err = self.safety.append(&lines).err().map(|e| {
            self.shared.poison(AuditError::SafetyLog {
                path: self.safety.path().to_owned(),
                message: e.to_string(),
            })
        });
        self.shared.head_seq.store(self.head.seq, Ordering::SeqCst);
        for e in self.fresh.drain(..) {
            // No receiver is not an error: nobody is watching.
            let _ = self.shared.feed.send(Arc::new(e));
        }
        if let Some(witness) = &self.witness {
            for cp in &new_checkpoints {
                let _ = witness.send(cp.clone());
            }
        }
        for d in done {
            match d {
                Done::Receipt(reply, receipt, line) => match (&safety_err, line) {
                    (Some(err), Some(_)) => reply.send(Err(err.clone())),
                    _ => reply.send(Ok(receipt)),
                },
                Done::Evidence(reply, id) => reply.send(Ok(id)),
                Done::EvidenceRefused(reply, e) => reply.send(Err(e)),
                Done::Checkpoint(reply, cp) => reply.send(Ok(cp)),
            }
        }
    }

    /// Inserts the next entry and moves the head.
    fn append(&mut self, ev: &Event) -> rusqlite::Result<Receipt> {
        let seq = self.head.seq + 1;
        // Never below the previous entry: a stepped-back clock must not
        // look like reordering.
        let timestamp = chain::now_ms().max(self.head.timestamp);
        let canonical = chain::canonical_event(
            seq,
            timestamp,
            &ev.kind,
            ev.agent.as_deref(),
            ev.uid,
            &ev.data,
        );
        let hash = chain::chain_hash(&self.head.hash, &canonical)
            .expect("the writer's head hash is always 32 bytes of hex");
        self.conn
            .prepare_cached(
                "INSERT INTO audit_log (seq, timestamp, kind, agent, uid, data, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                seq as i64,
                timestamp,
                ev.kind,
                ev.agent,
                ev.uid,
                crypto::canonical_json(&ev.data),
                self.head.hash,
                hash,
            ])?;
        if self.shared.feed.receiver_count() > 0 {
            self.fresh.push(Entry {
                seq,
                timestamp,
                kind: ev.kind.clone(),
                agent: ev.agent.clone(),
                uid: ev.uid,
                data: ev.data.clone(),
                prev_hash: self.head.hash.clone(),
                hash: hash.clone(),
            });
        }
        self.head = Head {
            seq,
            hash: hash.clone(),
            timestamp,
        };
        Ok(Receipt { seq, hash })
    }

    /// Signs and stores a checkpoint of the current head.
    fn checkpoint(&mut self) -> rusqlite::Result<Checkpoint> {
        let cp = Checkpoint::sign(
            &self.key,
            &self.host,
            self.head.seq,
            &self.head.hash,
            chain::now_ms(),
        );
        store::insert_checkpoint(&self.conn, &cp)?;
        self.last_checkpoint = Some(cp.clone());
        Ok(cp)
    }

    /// The head record: a checkpoint of the head that is replaced, not
    /// added, at every commit, so that deleting the tail shows.
    fn write_head_record(&mut self) -> rusqlite::Result<()> {
        let rec = Checkpoint::sign(
            &self.key,
            &self.host,
            self.head.seq,
            &self.head.hash,
            chain::now_ms(),
        );
        store::set_state(&self.conn, store::HEAD_KEY, &rec.to_json_line())
    }

    /// Stores one evidence record inside a savepoint. The outer error is a
    /// failure of the database itself (the savepoint could not be taken or
    /// undone), which poisons like any other; the inner one is this record's
    /// alone, rolled back to the savepoint.
    fn store_evidence_contained(
        &mut self,
        halt_id: &str,
        data: serde_json::Value,
    ) -> rusqlite::Result<std::result::Result<String, AuditError>> {
        let canonical = crypto::canonical_json(&data);
        if canonical.len() > MAX_EVIDENCE_BYTES {
            return Ok(Err(self.store_err(format!(
                "evidence of halt {halt_id} is {} bytes, more than the {} stored; not stored",
                canonical.len(),
                MAX_EVIDENCE_BYTES
            ))));
        }
        self.conn.execute_batch("SAVEPOINT evidence")?;
        match self.store_evidence(halt_id, &canonical, data) {
            Ok(id) => {
                self.conn.execute_batch("RELEASE evidence")?;
                Ok(Ok(id))
            }
            Err(e) => {
                self.conn
                    .execute_batch("ROLLBACK TO evidence; RELEASE evidence")?;
                Ok(Err(self.store_err(format!(
                    "evidence of halt {halt_id} not stored: {e}"
                ))))
            }
        }
    }

    fn store_evidence(
        &mut self,
        halt_id: &str,
        canonical: &str,
        data: serde_json::Value,
    ) -> rusqlite::Result<String> {
        let sha256 = crypto::sha256_hex(canonical.as_bytes());
        let mut rec = EvidenceRecord {
            id: format!("ev-{}", crypto::random_hex(8)),
            halt_id: halt_id.to_string(),
            timestamp: chain::now_ms(),
            sha256,
            key_id: self.key.key_id().to_string(),
            signature: String::new(),
            data,
        };
        rec.signature = self.key.sign_hex(rec.statement().as_bytes());
        store::insert_evidence(&self.conn, &rec)?;
        Ok(rec.id)
    }
}

/// The `safety_events.jsonl` line of a safety event.
fn safety_line(ev: &Event, s: &Safety, receipt: &Receipt, timestamp: i64) -> String {
    crypto::canonical_json(&json!({
        "timestamp": chain::rfc3339_ms(timestamp),
        "timestamp_ms": timestamp,
        "event": s.event,
        "reason": s.reason,
        "autonomy_state": s.autonomy_state,
        "governance_state": s.governance_state,
        "human_notified": s.human_notified,
        "kind": ev.kind,
        "agent": ev.agent,
        "uid": ev.uid,
        "seq": receipt.seq,
        "hash": receipt.hash,
    }))
}

impl Shared {
    pub(super) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }
}
