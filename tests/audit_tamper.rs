//! Every kind of tampering is caught by `warden audit verify` with its own
//! exit code, and verification never changes the files it reads.

mod audit_common;

use std::path::{Path, PathBuf};

use audit_common::*;
use warden_cli::audit::{run, AuditCommand, VerifyArgs};
use warden_core::audit::verify::{verify, FindingKind, VerifyOptions};
use warden_core::audit::{Audit, AuditOptions};
use warden_core::crypto::{self, KeyPair};

fn verify_code(state: &Path, pubkey: Option<PathBuf>, against: Option<PathBuf>) -> i32 {
    run(AuditCommand::Verify(VerifyArgs {
        state_dir: state.to_owned(),
        pubkey,
        against,
    }))
}

fn kind(state: &Path) -> Option<FindingKind> {
    verify(&VerifyOptions {
        state_dir: state.to_owned(),
        ..Default::default()
    })
    .err()
    .map(|f| f.kind)
}

/// A fresh log of 40 ticks, a safety event and a halt (42 entries),
/// checkpoints every 8 and at the halt.
fn fresh() -> Scratch {
    let s = Scratch::new();
    populate(&s, 40, 8);
    assert_eq!(verify_code(&s.state(), None, None), 0);
    s
}

#[test]
fn intact_log_verifies_and_reports() {
    let s = fresh();
    let report = verify(&VerifyOptions {
        state_dir: s.state(),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(report.entries, 42);
    assert_eq!(report.evidence, 1);
    assert_eq!(report.last_checkpoint, 42);
    assert_eq!(report.checkpoints, 6);
}

#[test]
fn edited_entry_is_10() {
    let s = fresh();
    attacker(&s.state())
        .execute(
            "UPDATE audit_log SET data = '{\"i\":999}' WHERE seq = 5",
            [],
        )
        .unwrap();
    assert_eq!(verify_code(&s.state(), None, None), 10);

    // Editing and fixing up that entry's own hash breaks the next link.
    let s = fresh();
    let conn = attacker(&s.state());
    let mut e = warden_core::audit::store::entry(&conn, 5).unwrap().unwrap();
    e.kind = "nothing_to_see".into();
    e.hash = e.expected_hash().unwrap();
    conn.execute(
        "UPDATE audit_log SET kind = ?1, hash = ?2 WHERE seq = 5",
        rusqlite::params![e.kind, e.hash],
    )
    .unwrap();
    drop(conn);
    assert_eq!(verify_code(&s.state(), None, None), 10);
}

#[test]
fn rewritten_chain_without_resigning_is_10() {
    let s = fresh();
    // Recompute every hash after the edit but keep the old signatures: the
    // checkpoints no longer match.
    let conn = attacker(&s.state());
    let mut prev = warden_core::audit::chain::genesis_hash();
    for mut e in warden_core::audit::store::entries(&conn, 1, u64::MAX).unwrap() {
        if e.seq == 3 {
            e.data = serde_json::json!({"i": -1});
        }
        e.prev_hash = prev;
        e.hash = e.expected_hash().unwrap();
        prev = e.hash.clone();
        conn.execute(
            "UPDATE audit_log SET data = ?1, prev_hash = ?2, hash = ?3 WHERE seq = ?4",
            rusqlite::params![
                crypto::canonical_json(&e.data),
                e.prev_hash,
                e.hash,
                e.seq as i64
            ],
        )
        .unwrap();
    }
    drop(conn);
    assert_eq!(kind(&s.state()), Some(FindingKind::Edited));
}

#[test]
fn reordered_entries_are_11() {
    let s = fresh();
    attacker(&s.state())
        .execute_batch(
            "UPDATE audit_log SET seq = -1 WHERE seq = 5;
             UPDATE audit_log SET seq = 5 WHERE seq = 6;
             UPDATE audit_log SET seq = 6 WHERE seq = -1;",
        )
        .unwrap();
    assert_eq!(verify_code(&s.state(), None, None), 11);
}

#[test]
fn deleted_middle_entry_is_12() {
    let s = fresh();
    attacker(&s.state())
        .execute("DELETE FROM audit_log WHERE seq = 7", [])
        .unwrap();
    assert_eq!(verify_code(&s.state(), None, None), 12);
    // The first entry too.
    let s = fresh();
    attacker(&s.state())
        .execute("DELETE FROM audit_log WHERE seq = 1", [])
        .unwrap();
    assert_eq!(verify_code(&s.state(), None, None), 12);
}

#[test]
fn truncated_tail_is_13() {
    // The tail after the last periodic checkpoint: the head record knows.
    let s = fresh();
    let audit = Audit::open(&s.state(), &s.logs()).unwrap();
    for i in 0..3 {
        audit.record(tick(i)).unwrap();
    }
    drop(audit);
    assert_eq!(verify_code(&s.state(), None, None), 0);
    attacker(&s.state())
        .execute("DELETE FROM audit_log WHERE seq > 43", [])
        .unwrap();
    assert_eq!(kind(&s.state()), Some(FindingKind::Truncated));

    // The tail, and the head record with it: missing head record.
    let s = fresh();
    let conn = attacker(&s.state());
    conn.execute("DELETE FROM audit_log WHERE seq > 41", [])
        .unwrap();
    conn.execute("DELETE FROM system_state WHERE key = 'head'", [])
        .unwrap();
    drop(conn);
    assert_eq!(verify_code(&s.state(), None, None), 13);

    // Past checkpoints: they lie beyond the end.
    let s = fresh();
    attacker(&s.state())
        .execute("DELETE FROM audit_log WHERE seq > 20", [])
        .unwrap();
    assert_eq!(verify_code(&s.state(), None, None), 13);

    // An older signed head put back (replayed) still shows: the later
    // checkpoints lie beyond the end.
    let s = Scratch::new();
    let audit = Audit::open_with(
        &s.state(),
        &s.logs(),
        AuditOptions {
            checkpoint_every: 8,
            witness_command: None,
        },
    )
    .unwrap();
    for i in 0..20 {
        audit.record(tick(i)).unwrap();
    }
    drop(audit);
    let conn = attacker(&s.state());
    let old_head = warden_core::audit::store::get_state(&conn, "head")
        .unwrap()
        .unwrap();
    drop(conn);
    let audit = Audit::open(&s.state(), &s.logs()).unwrap();
    for i in 20..30 {
        audit.record(tick(i)).unwrap();
    }
    audit.checkpoint().unwrap();
    drop(audit);
    let conn = attacker(&s.state());
    conn.execute("DELETE FROM audit_log WHERE seq > 20", [])
        .unwrap();
    warden_core::audit::store::set_state(&conn, "head", &old_head).unwrap();
    drop(conn);
    assert_eq!(verify_code(&s.state(), None, None), 13);
}

#[test]
fn resigned_with_another_key_is_14() {
    let s = fresh();
    let trusted = s.path().join("trusted.pub");
    std::fs::copy(s.state().join("keys/signing.pub"), &trusted).unwrap();
    let evil = KeyPair::generate();
    rewrite_and_resign(&s.state(), 5, &evil);
    // With the stored key file (not replaced) and with the trusted key.
    assert_eq!(verify_code(&s.state(), None, None), 14);
    assert_eq!(verify_code(&s.state(), Some(trusted.clone()), None), 14);
    // An attacker who also replaces signing.pub fools a verify that trusts
    // the local key, but not one given the trusted key.
    std::fs::write(s.state().join("keys/signing.pub"), evil.public_pem()).unwrap();
    assert_eq!(verify_code(&s.state(), None, None), 0);
    assert_eq!(verify_code(&s.state(), Some(trusted), None), 14);
}

#[test]
fn evidence_edit_is_caught() {
    let s = fresh();
    attacker(&s.state())
        .execute("UPDATE evidence SET data = '{\"processes\":[]}'", [])
        .unwrap();
    assert_eq!(verify_code(&s.state(), None, None), 10);
}

#[test]
fn witness_catches_a_rewrite_with_the_real_key_16() {
    let s = Scratch::new();
    let heads = s.path().join("heads.jsonl");
    let audit = Audit::open_with(
        &s.state(),
        &s.logs(),
        AuditOptions {
            checkpoint_every: 8,
            witness_command: Some(vec![
                "/bin/sh".into(),
                "-c".into(),
                format!("cat >> '{}'", heads.display()),
            ]),
        },
    )
    .unwrap();
    for i in 0..30 {
        audit.record(tick(i)).unwrap();
    }
    audit.checkpoint().unwrap();
    // The witness runs on its own thread: wait for the 4 checkpoints
    // (8, 16, 24, 30).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::read_to_string(&heads)
        .unwrap_or_default()
        .lines()
        .count()
        < 4
    {
        assert!(std::time::Instant::now() < deadline, "witness did not run");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(audit);
    assert_eq!(verify_code(&s.state(), None, Some(heads.clone())), 0);
    // safety_events.jsonl works as a file of heads too.
    // Root rewrites history with the host's own key: everything local agrees.
    let key = crypto::load_private_key(&s.state().join("keys/signing.key")).unwrap();
    rewrite_and_resign(&s.state(), 3, &key);
    assert_eq!(verify_code(&s.state(), None, None), 0);
    assert_eq!(verify_code(&s.state(), None, Some(heads.clone())), 16);

    // A log that lost its tail and its head record, re-signed: the witness
    // saw further.
    let s2 = Scratch::new();
    populate(&s2, 10, 4);
    let wheads = s2.path().join("heads.jsonl");
    let head = {
        let conn = attacker(&s2.state());
        warden_core::audit::store::head_record(&conn)
            .unwrap()
            .unwrap()
    };
    std::fs::write(&wheads, head.to_json_line() + "\n").unwrap();
    let key = crypto::load_private_key(&s2.state().join("keys/signing.key")).unwrap();
    let conn = attacker(&s2.state());
    conn.execute("DELETE FROM audit_log WHERE seq > 8", [])
        .unwrap();
    conn.execute("DELETE FROM checkpoints WHERE seq > 8", [])
        .unwrap();
    let h8 = warden_core::audit::store::entry(&conn, 8)
        .unwrap()
        .unwrap()
        .hash;
    let fake = warden_core::audit::chain::Checkpoint::sign(
        &key,
        &warden_core::audit::chain::Host::current(),
        8,
        &h8,
        0,
    );
    warden_core::audit::store::set_state(&conn, "head", &fake.to_json_line()).unwrap();
    drop(conn);
    assert_eq!(verify_code(&s2.state(), None, None), 0);
    assert_eq!(verify_code(&s2.state(), None, Some(wheads)), 16);
}

#[test]
fn safety_log_serves_as_witnessed_heads() {
    let s = fresh();
    let jsonl = s.logs().join("safety_events.jsonl");
    assert_eq!(verify_code(&s.state(), None, Some(jsonl.clone())), 0);
    let key = crypto::load_private_key(&s.state().join("keys/signing.key")).unwrap();
    rewrite_and_resign(&s.state(), 2, &key);
    assert_eq!(verify_code(&s.state(), None, Some(jsonl)), 16);
}

#[test]
fn unreadable_or_foreign_database_is_15() {
    let s = Scratch::new();
    std::fs::create_dir_all(s.state()).unwrap();
    // Missing.
    assert_eq!(verify_code(&s.state(), None, None), 15);
    // Garbage.
    std::fs::write(s.state().join("warden.db"), vec![0x42u8; 8192]).unwrap();
    assert_eq!(verify_code(&s.state(), None, None), 15);
    // Another program's SQLite database.
    std::fs::remove_file(s.state().join("warden.db")).unwrap();
    let c = rusqlite::Connection::open(s.state().join("warden.db")).unwrap();
    c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .unwrap();
    drop(c);
    assert_eq!(verify_code(&s.state(), None, None), 15);
    // A warden database with a page overwritten.
    let s = fresh();
    let db = s.state().join("warden.db");
    let mut bytes = std::fs::read(&db).unwrap();
    let len = bytes.len();
    for b in &mut bytes[4096..len.min(12288)] {
        *b = 0xff;
    }
    std::fs::write(&db, bytes).unwrap();
    assert_eq!(verify_code(&s.state(), None, None), 15);
}

#[test]
fn verify_changes_no_file_of_a_copy_or_a_live_log() {
    let s = fresh();
    // A copy of a cleanly closed database: one file.
    let copy = s.path().join("copy");
    std::fs::create_dir_all(copy.join("keys")).unwrap();
    std::fs::copy(s.state().join("warden.db"), copy.join("warden.db")).unwrap();
    std::fs::copy(
        s.state().join("keys/signing.pub"),
        copy.join("keys/signing.pub"),
    )
    .unwrap();
    let before = snapshot(&copy);
    let bytes = std::fs::read(copy.join("warden.db")).unwrap();
    assert_eq!(verify_code(&copy, None, None), 0);
    assert_eq!(snapshot(&copy), before);
    assert_eq!(std::fs::read(copy.join("warden.db")).unwrap(), bytes);

    // A live log (WAL present): verify sees the committed entries.
    let audit = Audit::open(&s.state(), &s.logs()).unwrap();
    audit.record(tick(1000)).unwrap();
    assert!(s.state().join("warden.db-wal").exists());
    let before = std::fs::read(s.state().join("warden.db-wal")).unwrap();
    let report = verify(&VerifyOptions {
        state_dir: s.state(),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(report.entries, 43);
    assert_eq!(
        std::fs::read(s.state().join("warden.db-wal")).unwrap(),
        before
    );

    // While the writer keeps committing, verify sees one consistent snapshot.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let audit = audit.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                audit.record(tick(i)).unwrap();
                i += 1;
            }
        })
    };
    for _ in 0..10 {
        verify(&VerifyOptions {
            state_dir: s.state(),
            ..Default::default()
        })
        .unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    let entries = verify(&VerifyOptions {
        state_dir: s.state(),
        ..Default::default()
    })
    .unwrap()
    .entries;
    assert!(entries > 43);

    // A copy of the live files without the -shm index: still read in full,
    // and nothing is created beside the copy.
    let copy = s.path().join("copy-wal");
    std::fs::create_dir_all(copy.join("keys")).unwrap();
    for f in ["warden.db", "warden.db-wal", "keys/signing.pub"] {
        std::fs::copy(s.state().join(f), copy.join(f)).unwrap();
    }
    let before = snapshot(&copy);
    let report = verify(&VerifyOptions {
        state_dir: copy.clone(),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(report.entries, entries);
    assert_eq!(snapshot(&copy), before);
    drop(audit);
}
