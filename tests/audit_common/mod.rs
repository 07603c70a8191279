//! Helpers shared by the `audit_*` integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rusqlite::Connection;
use serde_json::json;
use warden_core::audit::chain::{self, Checkpoint, Host};
use warden_core::audit::{store, Audit, AuditOptions, Event, Safety};
use warden_core::crypto::KeyPair;
use warden_core::sys::fsattr;

/// A temporary directory whose files may carry the append-only flag; the
/// flag is cleared before the tree is removed.
pub struct Scratch {
    dir: Option<tempfile::TempDir>,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            dir: Some(tempfile::tempdir().expect("temp dir")),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    pub fn state(&self) -> PathBuf {
        self.path().join("state")
    }

    pub fn logs(&self) -> PathBuf {
        self.path().join("log")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = fsattr::clear_append_only_tree(dir.path());
            let _ = dir.close();
        }
    }
}

/// A mount that is undone on drop (lazily if it is still busy).
pub struct MountGuard {
    pub target: PathBuf,
}

impl MountGuard {
    pub fn tmpfs(target: &Path, size: &str) -> MountGuard {
        std::fs::create_dir_all(target).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size},mode=0755").as_str()),
        )
        .expect("mount tmpfs (tests run as root)");
        MountGuard {
            target: target.to_owned(),
        }
    }

    /// `target` becomes a read-only view of itself.
    pub fn read_only_bind(target: &Path) -> MountGuard {
        use nix::mount::MsFlags;
        nix::mount::mount(
            Some(target),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind mount (tests run as root)");
        let guard = MountGuard {
            target: target.to_owned(),
        };
        nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .expect("remount read-only");
        guard
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if nix::mount::umount(&self.target).is_err() {
            let _ = nix::mount::umount2(&self.target, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

pub fn safety() -> Safety {
    Safety {
        event: "safety_halt".into(),
        reason: "test".into(),
        autonomy_state: "running".into(),
        governance_state: "ok".into(),
        human_notified: true,
    }
}

pub fn tick(i: u64) -> Event {
    Event {
        kind: "tick".into(),
        agent: Some("a1".into()),
        uid: Some(1000),
        data: json!({ "i": i, "f": 0.1 * i as f64 }),
    }
}

/// Opens an audit log in `s`, records `n` ticks, a halt with evidence, and
/// closes it. Returns the halt id.
pub fn populate(s: &Scratch, n: u64, checkpoint_every: u64) -> String {
    let audit = Audit::open_with(
        &s.state(),
        &s.logs(),
        AuditOptions {
            checkpoint_every,
            witness_command: None,
        },
    )
    .unwrap();
    for i in 0..n {
        audit.record(tick(i)).unwrap();
    }
    let halt_id = record_halt(&audit, "halt-1");
    drop(audit);
    halt_id
}

pub fn evidence_json() -> serde_json::Value {
    json!({
        "agents": {"a1": {"memory.current": 123456, "pids.current": 3, "log_tail": "line 1\nline 2 ünïcode\n"}},
        "processes": [
            {"pid": 4242, "ppid": 1, "uid": 1000, "cmdline": ["python3", "-c", "while True: pass"],
             "exe": "/usr/bin/python3", "status": "State:\tT (stopped)", "fds": ["0 -> /dev/null"], "sockets": []},
        ],
        "cpu_seconds": 12.75,
    })
}

/// What the daemon does at a halt: safety event, evidence, halt entry,
/// checkpoint.
pub fn record_halt(audit: &Audit, halt_id: &str) -> String {
    audit
        .record_safety(
            Event {
                kind: "safety_violation".into(),
                agent: Some("a1".into()),
                uid: None,
                data: json!({"monitor": "busy_loop"}),
            },
            safety(),
        )
        .unwrap();
    let ev = evidence_json();
    let evidence_id = audit.store_evidence(halt_id, &ev).unwrap();
    let sha = warden_core::audit::evidence_sha256(&ev);
    audit
        .record(Event {
            kind: "halt".into(),
            agent: Some("a1".into()),
            uid: Some(0),
            data: json!({
                "halt_id": halt_id,
                "evidence_id": evidence_id,
                "evidence_sha256": sha,
                "phases_ms": {"frozen": 1.25, "evidence": 7, "killed": 2, "empty": 22},
            }),
        })
        .unwrap();
    audit.checkpoint().unwrap();
    halt_id.to_string()
}

/// A plain read-write connection to the database, with the append-only
/// triggers dropped, as an attacker would have.
pub fn attacker(state: &Path) -> Connection {
    let conn = Connection::open(state.join("warden.db")).unwrap();
    conn.execute_batch(
        "DROP TRIGGER IF EXISTS audit_log_append_only_u;
         DROP TRIGGER IF EXISTS audit_log_append_only_d;
         DROP TRIGGER IF EXISTS checkpoints_append_only_u;
         DROP TRIGGER IF EXISTS checkpoints_append_only_d;
         DROP TRIGGER IF EXISTS evidence_append_only_u;
         DROP TRIGGER IF EXISTS evidence_append_only_d;",
    )
    .unwrap();
    conn
}

/// Rewrites the whole chain after changing entry `seq`'s data, recomputes
/// every hash, and re-signs checkpoints, head record and evidence with `key`
/// (and records `key` as the log's key): what a root attacker holding a key
/// can do.
pub fn rewrite_and_resign(state: &Path, seq: u64, key: &KeyPair) {
    let conn = attacker(state);
    let mut entries = store::entries(&conn, 1, u64::MAX).unwrap();
    let mut prev = chain::genesis_hash();
    let mut hashes = std::collections::HashMap::new();
    hashes.insert(0u64, prev.clone());
    for e in entries.iter_mut() {
        if e.seq == seq {
            e.data = json!({"rewritten": true});
        }
        e.prev_hash = prev.clone();
        e.hash = e.expected_hash().unwrap();
        prev = e.hash.clone();
        hashes.insert(e.seq, e.hash.clone());
        conn.execute(
            "UPDATE audit_log SET data = ?1, prev_hash = ?2, hash = ?3 WHERE seq = ?4",
            rusqlite::params![
                warden_core::crypto::canonical_json(&e.data),
                e.prev_hash,
                e.hash,
                e.seq as i64
            ],
        )
        .unwrap();
    }
    let host = Host::current();
    for cp in store::checkpoints(&conn).unwrap() {
        let new = Checkpoint::sign(key, &host, cp.seq, &hashes[&cp.seq], cp.timestamp);
        conn.execute(
            "UPDATE checkpoints SET hash = ?1, key_id = ?2, signature = ?3 WHERE seq = ?4",
            rusqlite::params![new.hash, new.key_id, new.signature, cp.seq as i64],
        )
        .unwrap();
    }
    let head = store::head_record(&conn).unwrap().unwrap();
    let new = Checkpoint::sign(key, &host, head.seq, &hashes[&head.seq], head.timestamp);
    store::set_state(&conn, store::HEAD_KEY, &new.to_json_line()).unwrap();
    let ids: Vec<String> = conn
        .prepare("SELECT id FROM evidence")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for id in ids {
        let mut rec = store::evidence(&conn, &id).unwrap().unwrap();
        rec.key_id = key.key_id().to_string();
        rec.signature = key.sign_hex(rec.statement().as_bytes());
        conn.execute(
            "UPDATE evidence SET key_id = ?1, signature = ?2 WHERE id = ?3",
            rusqlite::params![rec.key_id, rec.signature, id],
        )
        .unwrap();
    }
    store::set_state(&conn, store::PUBLIC_KEY_KEY, &key.public_pem()).unwrap();
}

/// Names of the files in `dir` with their sizes and modification times.
pub fn snapshot(dir: &Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                m.len(),
                m.modified().unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}
