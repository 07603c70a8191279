//! The tamper-evident audit log: a SHA-256 hash chain in SQLite with signed
//! checkpoints, signed evidence, and `safety_events.jsonl`.
//!
//! - [`Audit`] is the daemon's handle. A dedicated writer thread
//!   ([`writer`]) owns the database connection and commits whatever is
//!   queued in one transaction (group commit); `record` returns once the
//!   event is durable, `submit` returns a future of the same receipt.
//! - [`chain`]: how entries are hashed and checkpoints signed.
//! - [`schema`]: the tables and their migrations.
//! - [`store`]: reads shared by the writer, [`verify`], the CLI and case packs.
//! - [`verify`]: the offline check behind `warden audit verify`.
//! - [`safety_log`]: the `safety_events.jsonl` file.
//! - [`witness`]: ships each new checkpoint to an external command.
//!
//! The daemon never blocks its halt path on the disk: it `submit`s events
//! and awaits the receipts where it must (before acknowledging a command),
//! and stores evidence after the kill. If the writer ever fails, every later
//! call fails and [`Audit::healthy`] is false: the daemon then halts the
//! agents (fail closed).
//!
//! See `docs/audit.md` for the formats and the guarantees.

pub mod chain;
pub mod safety_log;
pub mod schema;
pub mod store;
pub mod verify;
pub mod witness;
pub mod writer;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

pub use chain::{Checkpoint, Entry};
pub use store::EvidenceRecord;
pub use verify::{verify, Finding, FindingKind, VerifyOptions, VerifyReport};

use writer::{Reply, Request, Writer};

/// Default `state_dir` of the CLI verbs.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/warden";
/// How long one run of the witness command may take before it is killed.
pub const WITNESS_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// The database could not be opened, read or written.
    #[error("audit log {path}: {message}")]
    Store { path: PathBuf, message: String },
    /// The signing key could not be loaded or created.
    #[error("audit key: {message}")]
    Key { message: String },
    /// `safety_events.jsonl` could not be opened or written.
    #[error("safety log {path}: {message}")]
    SafetyLog { path: PathBuf, message: String },
    /// An earlier write failed; the writer accepts nothing any more.
    #[error("audit writer failed earlier and accepts no more events: {0}")]
    Failed(String),
    /// The writer thread is gone.
    #[error("audit writer is not running")]
    Closed,
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

impl Event {
    /// An event with no agent and no uid.
    pub fn new(kind: impl Into<String>, data: serde_json::Value) -> Event {
        Event {
            kind: kind.into(),
            agent: None,
            uid: None,
            data,
        }
    }
}

/// Extra fields of a safety event, also appended to `safety_events.jsonl`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Safety {
    /// `safety_halt`, `runaway_detected`, `manual_stop`, ...
    pub event: String,
    /// Why, in words a human reads.
    pub reason: String,
    /// State of the autonomy layer at the time.
    pub autonomy_state: String,
    /// State of the governance layer at the time.
    pub governance_state: String,
    /// Whether a human has been told.
    pub human_notified: bool,
}

/// Proof that an event is durably in the chain.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Receipt {
    /// Position of the entry in the chain.
    pub seq: u64,
    /// Hex SHA-256 chain hash of the entry.
    pub hash: String,
}

/// Settings of [`Audit::open_with`]; the daemon maps its config keys here.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// Sign a checkpoint whenever seq is a multiple of this (0: only on
    /// `checkpoint()`). Config key `checkpoint_every`.
    pub checkpoint_every: u64,
    /// argv run with each new checkpoint on stdin. Config key `witness_command`.
    pub witness_command: Option<Vec<String>>,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            checkpoint_every: 64,
            witness_command: None,
        }
    }
}

/// Health shared by the writer and every handle.
pub struct Shared {
    /// False from the first failed write on.
    healthy: AtomicBool,
    /// The first failure, for every later error message.
    failure: Mutex<Option<String>>,
    /// Every committed entry, for subscribers (`warden web`'s event stream).
    /// Sending never blocks the writer: a subscriber that falls more than
    /// [`FEED_CAPACITY`] entries behind sees `Lagged` and is dropped.
    feed: tokio::sync::broadcast::Sender<Arc<Entry>>,
    /// seq of the last committed entry (`warden_audit_seq`).
    head_seq: std::sync::atomic::AtomicU64,
}

/// Entries the live feed holds for its slowest subscriber.
pub const FEED_CAPACITY: usize = 1024;

impl Shared {
    /// Marks the writer failed (keeping the first reason) and returns `err`.
    fn poison(&self, err: AuditError) -> AuditError {
        let mut first = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            tracing::error!(target: "audit", "audit writer failed: {err}");
            *first = Some(err.to_string());
        }
        self.healthy.store(false, Ordering::SeqCst);
        err
    }

    /// The error every call gets once the writer has failed.
    fn failure(&self) -> Option<AuditError> {
        if self.is_healthy() {
            return None;
        }
        let first = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        Some(AuditError::Failed(first.clone().unwrap_or_default()))
    }
}

/// Handle to the audit writer; cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct Audit {
    inner: Arc<Inner>,
}

struct Inner {
    /// Requests to the writer; taken on drop so the writer sees the end.
    tx: Option<mpsc::Sender<Request>>,
    /// The writer thread, joined when the last handle drops.
    writer: Option<std::thread::JoinHandle<()>>,
    /// Health of the writer.
    shared: Arc<Shared>,
    /// Where the database and keys live.
    state_dir: PathBuf,
    /// Key id of the signing key.
    key_id: String,
    /// Whether `safety_events.jsonl` has the append-only attribute.
    safety_append_only: bool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the writer after it has drained the queue.
        drop(self.tx.take());
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
    }
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("state_dir", &self.inner.state_dir)
            .field("key_id", &self.inner.key_id)
            .field("healthy", &self.healthy())
            .finish()
    }
}

/// A submitted request's outcome: a future that resolves once the writer
/// has answered. Dropping it does not cancel the request.
pub struct Pending<T> {
    rx: tokio::sync::oneshot::Receiver<Result<T>>,
}

impl<T> Pending<T> {
    /// The outcome if the writer has answered, without blocking.
    pub fn try_get(&mut self) -> Option<Result<T>> {
        match self.rx.try_recv() {
            Ok(r) => Some(r),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => None,
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => Some(Err(AuditError::Closed)),
        }
    }
}

impl<T> Future for Pending<T> {
    type Output = Result<T>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(AuditError::Closed)))
    }
}

impl Audit {
    /// Opens (creating and migrating) the database in `state_dir`, the key
    /// pair in `state_dir/keys`, and `log_dir/safety_events.jsonl`, with
    /// default options.
    pub fn open(state_dir: &Path, log_dir: &Path) -> Result<Audit> {
        Audit::open_with(state_dir, log_dir, AuditOptions::default())
    }

    /// As [`Audit::open`], with options.
    pub fn open_with(state_dir: &Path, log_dir: &Path, opts: AuditOptions) -> Result<Audit> {
        if !state_dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(state_dir)
                .map_err(|e| AuditError::Store {
                    path: state_dir.to_owned(),
                    message: format!("cannot create the state directory: {e}"),
                })?;
        }
        let key = crate::crypto::load_or_generate(&state_dir.join("keys")).map_err(|e| {
            AuditError::Key {
                message: e.to_string(),
            }
        })?;
        let db_path = state_dir.join(schema::DB_FILE);
        let conn = schema::open_writer(&db_path).map_err(|e| AuditError::Store {
            path: db_path.clone(),
            message: e.to_string(),
        })?;
        let safety = safety_log::SafetyLog::open(log_dir).map_err(|e| AuditError::SafetyLog {
            path: log_dir.join(safety_log::SAFETY_FILE),
            message: e.to_string(),
        })?;
        let safety_append_only = safety.append_only;
        let shared = Arc::new(Shared {
            healthy: AtomicBool::new(true),
            failure: Mutex::new(None),
            feed: tokio::sync::broadcast::channel(FEED_CAPACITY).0,
            head_seq: std::sync::atomic::AtomicU64::new(0),
        });
        let key_id = key.key_id().to_string();

        // The witness thread records its failures through a weak handle, so
        // that it does not keep the writer alive.
        let handle: Arc<OnceLock<Weak<Inner>>> = Arc::new(OnceLock::new());
        let witness_tx = match opts.witness_command.filter(|argv| !argv.is_empty()) {
            None => None,
            Some(argv) => {
                let (tx, rx) = mpsc::channel();
                let handle = handle.clone();
                std::thread::Builder::new()
                    .name("warden-witness".into())
                    .spawn(move || {
                        witness::run(argv, WITNESS_TIMEOUT, rx, |cp, message| {
                            if let Some(inner) = handle.get().and_then(Weak::upgrade) {
                                let audit = Audit { inner };
                                // Not awaited: the witness must not wait on
                                // the writer, and a failed writer is known.
                                drop(audit.submit(Event::new(
                                    "witness_failed",
                                    serde_json::json!({
                                        "seq": cp.seq,
                                        "hash": cp.hash,
                                        "error": message,
                                    }),
                                )));
                            }
                        })
                    })
                    .map_err(|e| AuditError::Store {
                        path: db_path.clone(),
                        message: format!("cannot start the witness thread: {e}"),
                    })?;
                Some(tx)
            }
        };

        let writer = Writer::new(
            conn,
            db_path.clone(),
            key,
            safety,
            opts.checkpoint_every,
            witness_tx,
            shared.clone(),
        )?;
        let (tx, rx) = mpsc::channel();
        let join = std::thread::Builder::new()
            .name("warden-audit".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| AuditError::Store {
                path: db_path.clone(),
                message: format!("cannot start the writer thread: {e}"),
            })?;
        let inner = Arc::new(Inner {
            tx: Some(tx),
            writer: Some(join),
            shared,
            state_dir: state_dir.to_owned(),
            key_id,
            safety_append_only,
        });
        let _ = handle.set(Arc::downgrade(&inner));
        Ok(Audit { inner })
    }

    fn send(&self, req: Request) {
        if let Some(err) = self.inner.shared.failure() {
            return req.fail(err);
        }
        match &self.inner.tx {
            Some(tx) => {
                if let Err(mpsc::SendError(req)) = tx.send(req) {
                    req.fail(AuditError::Closed);
                }
            }
            None => req.fail(AuditError::Closed),
        }
    }

    fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(make(Reply::Blocking(tx)));
        rx.recv().unwrap_or(Err(AuditError::Closed))
    }

    fn call_async<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Pending<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(make(Reply::Async(tx)));
        Pending { rx }
    }

    /// Appends an event; returns once it is durable.
    pub fn record(&self, event: Event) -> Result<Receipt> {
        tracing::debug!(target: "audit", kind = %event.kind, agent = ?event.agent, uid = ?event.uid);
        self.call(|reply| Request::Record {
            event,
            safety: None,
            reply,
        })
    }

    /// Queues an event without blocking; the returned future resolves once
    /// it is durable (or failed).
    pub fn submit(&self, event: Event) -> Pending<Receipt> {
        self.call_async(|reply| Request::Record {
            event,
            safety: None,
            reply,
        })
    }

    /// Appends a safety event to the chain and to `safety_events.jsonl`;
    /// returns once both are durable. The chain entry's `data` gets the
    /// safety fields under `"safety"` (wrapped as `{"value": data}` first if
    /// `data` is not an object).
    pub fn record_safety(&self, event: Event, safety: Safety) -> Result<Receipt> {
        tracing::warn!(target: "audit", kind = %event.kind, event = %safety.event, reason = %safety.reason);
        let event = with_safety(event, &safety);
        self.call(|reply| Request::Record {
            event,
            safety: Some(safety),
            reply,
        })
    }

    /// [`Audit::record_safety`] without blocking.
    pub fn submit_safety(&self, event: Event, safety: Safety) -> Pending<Receipt> {
        let event = with_safety(event, &safety);
        self.call_async(|reply| Request::Record {
            event,
            safety: Some(safety),
            reply,
        })
    }

    /// Signs and stores a halt's evidence; returns its id once durable.
    pub fn store_evidence(&self, halt_id: &str, evidence: &serde_json::Value) -> Result<String> {
        let halt_id = halt_id.to_string();
        let evidence = evidence.clone();
        self.call(|reply| Request::Evidence {
            halt_id,
            evidence,
            reply,
        })
    }

    /// Signs the current head into a checkpoint (at halts and clean exit).
    pub fn checkpoint(&self) -> Result<()> {
        self.signed_checkpoint().map(drop)
    }

    /// As [`Audit::checkpoint`], returning the checkpoint (the existing one
    /// when the head is already checkpointed).
    pub fn signed_checkpoint(&self) -> Result<Checkpoint> {
        self.call(|reply| Request::Checkpoint { reply })
    }

    /// False once the writer has failed (disk full, read-only, ...).
    pub fn healthy(&self) -> bool {
        self.inner.shared.is_healthy()
    }

    /// Why the writer failed, if it did.
    pub fn failure(&self) -> Option<AuditError> {
        self.inner.shared.failure()
    }

    /// Key id of the signing key.
    pub fn key_id(&self) -> &str {
        &self.inner.key_id
    }

    /// A receiver of every entry committed from now on, in seq order.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Entry>> {
        self.inner.shared.feed.subscribe()
    }

    /// seq of the last committed entry.
    pub fn head_seq(&self) -> u64 {
        self.inner.shared.head_seq.load(Ordering::SeqCst)
    }

    /// Where the database and keys live.
    pub fn state_dir(&self) -> &Path {
        &self.inner.state_dir
    }

    /// Whether `safety_events.jsonl` carries the append-only attribute.
    pub fn safety_log_append_only(&self) -> bool {
        self.inner.safety_append_only
    }
}

/// The `evidence_sha256` the daemon puts in a `halt` entry: hex SHA-256 of
/// the canonical JSON of the evidence, the same hash `store_evidence` signs
/// and `casepack verify` checks against the halt entry.
pub fn evidence_sha256(evidence: &serde_json::Value) -> String {
    crate::crypto::sha256_hex(crate::crypto::canonical_json(evidence).as_bytes())
}

fn with_safety(mut event: Event, safety: &Safety) -> Event {
    let s = serde_json::to_value(safety).expect("safety fields serialize");
    match &mut event.data {
        serde_json::Value::Object(map) => {
            map.insert("safety".into(), s);
        }
        other => {
            let value = other.take();
            event.data = serde_json::json!({ "value": value, "safety": s });
        }
    }
    event
}
