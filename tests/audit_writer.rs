//! The daemon-facing API: group commit under concurrency, async submit on a
//! current-thread runtime, checkpoints, the safety log and the witness.

mod audit_common;

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use audit_common::*;
use warden_cli::audit::{run, AuditCommand, ShowArgs, TailArgs};
use warden_core::audit::chain::Checkpoint;
use warden_core::audit::{schema, store, witness, Audit, AuditOptions, Event};

fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}

#[test]
fn audit_is_send_sync_clone() {
    assert_send_sync_clone::<Audit>();
}

fn verify_ok(state: &std::path::Path) -> warden_core::audit::VerifyReport {
    warden_core::audit::verify(&warden_core::audit::VerifyOptions {
        state_dir: state.to_owned(),
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn concurrent_records_get_unique_contiguous_receipts() {
    let s = Scratch::new();
    let audit = Audit::open_with(
        &s.state(),
        &s.logs(),
        AuditOptions {
            checkpoint_every: 16,
            witness_command: None,
        },
    )
    .unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let audit = audit.clone();
            std::thread::spawn(move || {
                (0..25)
                    .map(|i| audit.record(tick(t * 100 + i)).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seqs: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .map(|r| r.seq)
        .collect();
    seqs.sort();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    drop(audit);
    let report = verify_ok(&s.state());
    assert_eq!(report.entries, 200);
    assert_eq!(report.checkpoints, 200 / 16);
}

#[tokio::test(flavor = "current_thread")]
async fn submit_works_on_a_current_thread_runtime() {
    let s = Scratch::new();
    let audit = Audit::open(&s.state(), &s.logs()).unwrap();
    let pending: Vec<_> = (0..50).map(|i| audit.submit(tick(i))).collect();
    let mut seqs = Vec::new();
    for p in pending {
        seqs.push(p.await.unwrap().seq);
    }
    assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
    let r = audit.submit_safety(tick(99), safety()).await.unwrap();
    assert_eq!(r.seq, 51);
    // The blocking call works from inside the runtime too (the writer is
    // its own thread).
    assert_eq!(audit.record(tick(100)).unwrap().seq, 52);
    let mut p = audit.submit(tick(101));
    let deadline = Instant::now() + Duration::from_secs(10);
    let receipt = loop {
        if let Some(r) = p.try_get() {
            break r.unwrap();
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(receipt.seq, 53);
    drop(audit);
    verify_ok(&s.state());
}

#[test]
fn receipts_match_the_stored_chain_and_reopen_continues_it() {
    let s = Scratch::new();
    let audit = Audit::open(&s.state(), &s.logs()).unwrap();
    let r1 = audit.record(tick(1)).unwrap();
    drop(audit);
    let audit = Audit::open(&s.state(), &s.logs()).unwrap();
    let r2 = audit.record(tick(2)).unwrap();
    assert_eq!((r1.seq, r2.seq), (1, 2));
    drop(audit);
    let conn = schema::open_read_only(&s.state().join("warden.db")).unwrap();
    let e2 = store::entry(&conn, 2).unwrap().unwrap();
    assert_eq!(e2.hash, r2.hash);
    assert_eq!(e2.prev_hash, r1.hash);
    assert_eq!(e2.agent.as_deref(), Some("a1"));
    assert_eq!(e2.uid, Some(1000));
}

#[test]
fn checkpoints_every_n_and_on_request() {
    let s = Scratch::new();
    let audit = Audit::open_with(
        &s.state(),
        &s.logs(),
        AuditOptions {
            checkpoint_every: 4,
            witness_command: None,
        },
    )
    .unwrap();
    // The empty log can be checkpointed too.
    assert_eq!(audit.signed_checkpoint().unwrap().seq, 0);
    for i in 0..10 {
        audit.record(tick(i)).unwrap();
    }
    let cp = audit.signed_checkpoint().unwrap();
    assert_eq!(cp.seq, 10);
    // Nothing new: the same checkpoint.
    assert_eq!(audit.signed_checkpoint().unwrap(), cp);
    drop(audit);
    let conn = schema::open_read_only(&s.state().join("warden.db")).unwrap();
    let seqs: Vec<u64> = store::checkpoints(&conn)
        .unwrap()
        .iter()
        .map(|c| c.seq)
        .collect();
    assert_eq!(seqs, vec![0, 4, 8, 10]);
    let key = warden_core::crypto::load_public_key(&s.state().join("keys/signing.pub")).unwrap();
    assert!(cp.verify(&key));
    assert!(!cp.host.is_empty());
}

#[test]
fn safety_events_go_to_the_jsonl_file() {
    let s = Scratch::new();
    let audit = Audit::open(&s.state(), &s.logs()).unwrap();
    audit.record(tick(0)).unwrap();
    let r = audit.record_safety(tick(1), safety()).unwrap();
    let mut not_object = Event::new("runaway_detected", serde_json::json!("forks"));
    not_object.agent = Some("a2".into());
    let r2 = audit.record_safety(not_object, safety()).unwrap();
    assert!(audit.safety_log_append_only(), "ext4 supports FS_APPEND_FL");
    drop(audit);

    let path = s.logs().join("safety_events.jsonl");
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o640);
    assert_eq!(meta.uid(), 0);
    let f = std::fs::File::open(&path).unwrap();
    assert!(warden_core::sys::fsattr::is_append_only(f.as_fd()).unwrap());
    // Append-only: no truncating open, even for root.
    assert!(std::fs::OpenOptions::new().write(true).open(&path).is_err());

    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let l = &lines[0];
    for k in [
        "timestamp",
        "event",
        "reason",
        "autonomy_state",
        "governance_state",
        "human_notified",
        "agent",
        "seq",
        "hash",
    ] {
        assert!(l.get(k).is_some(), "missing {k}: {l}");
    }
    assert_eq!(l["seq"], r.seq);
    assert_eq!(l["hash"], r.hash.as_str());
    assert_eq!(l["event"], "safety_halt");
    assert!(l["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(lines[1]["agent"], "a2");
    assert_eq!(lines[1]["seq"], r2.seq);

    // The chain entry carries the safety fields as well.
    let conn = schema::open_read_only(&s.state().join("warden.db")).unwrap();
    let e = store::entry(&conn, r2.seq).unwrap().unwrap();
    assert_eq!(e.data["value"], "forks");
    assert_eq!(e.data["safety"]["reason"], "test");
}

#[test]
fn witness_failures_are_recorded() {
    let s = Scratch::new();
    let audit = Audit::open_with(
        &s.state(),
        &s.logs(),
        AuditOptions {
            checkpoint_every: 0,
            witness_command: Some(vec!["/bin/false".into()]),
        },
    )
    .unwrap();
    audit.record(tick(0)).unwrap();
    let cp = audit.signed_checkpoint().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let db = s.state().join("warden.db");
    let failed = loop {
        let conn = schema::open_read_only(&db).unwrap();
        if let Some(e) = store::last_entries(&conn, 1)
            .unwrap()
            .into_iter()
            .find(|e| e.kind == "witness_failed")
        {
            break e;
        }
        assert!(Instant::now() < deadline, "no witness_failed event");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(failed.data["seq"], cp.seq);
    assert!(
        audit.healthy(),
        "a witness failure does not stop the writer"
    );
    drop(audit);
}

#[test]
fn witness_runs_are_bounded_in_time() {
    let cp = Checkpoint {
        seq: 1,
        hash: "00".repeat(32),
        timestamp: 0,
        host: "h".into(),
        machine_id: String::new(),
        key_id: "k".into(),
        signature: String::new(),
    };
    let started = Instant::now();
    let err = witness::run_once(
        &["sleep".into(), "30".into()],
        Duration::from_millis(200),
        &cp,
    )
    .unwrap_err();
    assert!(err.contains("did not finish"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(witness::run_once(&["/no/such/witness".into()], Duration::from_secs(1), &cp).is_err());
    // The checkpoint arrives on stdin as one JSON line.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seen");
    witness::run_once(
        &[
            "/bin/sh".into(),
            "-c".into(),
            format!("cat > '{}'", out.display()),
        ],
        Duration::from_secs(10),
        &cp,
    )
    .unwrap();
    let seen: Checkpoint =
        serde_json::from_str(std::fs::read_to_string(&out).unwrap().trim()).unwrap();
    assert_eq!(seen, cp);
}

#[test]
fn tail_and_show_read_the_database() {
    let s = Scratch::new();
    populate(&s, 5, 64);
    let tail = |n, json| {
        run(AuditCommand::Tail(TailArgs {
            n,
            follow: false,
            json,
            state_dir: s.state(),
        }))
    };
    assert_eq!(tail(3, false), 0);
    assert_eq!(tail(100, true), 0);
    let show = |seq, json| {
        run(AuditCommand::Show(ShowArgs {
            seq,
            json,
            state_dir: s.state(),
        }))
    };
    assert_eq!(show(2, false), 0);
    assert_eq!(show(7, true), 0);
    assert_eq!(show(99, false), 1);
    let missing = Scratch::new();
    assert_eq!(
        run(AuditCommand::Show(ShowArgs {
            seq: 1,
            json: false,
            state_dir: missing.state(),
        })),
        15
    );
}

/// #18: an evidence record the store refuses (here: larger than the writer
/// stores) is that caller's error alone; the writer stays healthy, the halt
/// entry and later entries are written, and the chain verifies.
#[test]
fn refused_evidence_does_not_poison_the_writer() {
    let s = Scratch::new();
    let audit = Audit::open(&s.state(), &s.logs()).unwrap();
    audit.record(tick(0)).unwrap();
    let huge = serde_json::json!({
        "pad": "\u{1}".repeat(warden_core::audit::writer::MAX_EVIDENCE_BYTES / 6 + 1)
    });
    let err = audit.store_evidence("h-big", &huge).unwrap_err();
    assert!(err.to_string().contains("not stored"), "{err}");
    drop(huge);
    assert!(
        audit.healthy(),
        "a refused evidence record must not poison the writer"
    );
    assert!(audit.failure().is_none());
    // The same batch path keeps working: a small evidence, a record, a checkpoint.
    record_halt(&audit, "h-after");
    audit.record(tick(1)).unwrap();
    audit.checkpoint().unwrap();
    verify_ok(&s.state());
}
