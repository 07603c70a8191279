//! Case packs verify from the file alone, and any changed byte fails.

mod audit_common;

use audit_common::*;
use warden_cli::casepack::{run, CasepackCommand, ExportArgs, VerifyArgs};
use warden_core::audit::{Audit, AuditOptions};
use warden_core::casepack;
use warden_core::crypto::KeyPair;

fn export_to(s: &Scratch, halt_id: &str, out: &std::path::Path) -> i32 {
    run(CasepackCommand::Export(ExportArgs {
        halt_id: halt_id.into(),
        output: out.to_owned(),
        state_dir: s.state(),
    }))
}

fn verify_file(file: &std::path::Path, pubkey: Option<std::path::PathBuf>) -> i32 {
    run(CasepackCommand::Verify(VerifyArgs {
        file: file.to_owned(),
        pubkey,
    }))
}

#[test]
fn verifies_elsewhere_with_the_state_dir_gone() {
    let s = Scratch::new();
    let halt_id = populate(&s, 20, 8);
    let out = s.path().join("case.json");
    assert_eq!(export_to(&s, &halt_id, &out), 0);
    let trusted = s.path().join("trusted.pub");
    std::fs::copy(s.state().join("keys/signing.pub"), &trusted).unwrap();

    let elsewhere = Scratch::new();
    let moved = elsewhere.path().join("case.json");
    std::fs::copy(&out, &moved).unwrap();
    let moved_key = elsewhere.path().join("trusted.pub");
    std::fs::copy(&trusted, &moved_key).unwrap();
    drop(s);
    assert_eq!(verify_file(&moved, None), 0);
    assert_eq!(verify_file(&moved, Some(moved_key)), 0);

    // Another trusted key: refused.
    let other = elsewhere.path().join("other.pub");
    std::fs::write(&other, KeyPair::generate().public_pem()).unwrap();
    assert_eq!(verify_file(&moved, Some(other)), 14);
}

#[test]
fn slice_starts_at_the_previous_checkpoint_and_ends_at_the_covering_one() {
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
    for i in 0..21 {
        audit.record(tick(i)).unwrap();
    }
    record_halt(&audit, "h-mid");
    for i in 0..5 {
        audit.record(tick(i)).unwrap();
    }
    // A second halt without its checkpoint (the daemon died): the signed
    // head record covers it.
    let ev = evidence_json();
    let id = audit.store_evidence("h-late", &ev).unwrap();
    audit
        .record(warden_core::audit::Event::new(
            "halt",
            serde_json::json!({
                "halt_id": "h-late",
                "evidence_id": id,
                "evidence_sha256": warden_core::crypto::sha256_hex(warden_core::crypto::canonical_json(&ev).as_bytes()),
            }),
        ))
        .unwrap();
    drop(audit);

    let pack = casepack::export(&s.state(), "h-mid").unwrap();
    assert_eq!(pack.start.as_ref().unwrap().seq, 16);
    assert_eq!(pack.halt_seq, 23);
    assert_eq!(pack.end.seq, 23);
    assert_eq!(pack.entries.first().unwrap().seq, 17);
    casepack::verify_pack(&casepack::to_bytes(&pack), None).unwrap();

    let late = casepack::export(&s.state(), "h-late").unwrap();
    assert_eq!(late.start.as_ref().unwrap().seq, 24);
    assert_eq!(late.end.seq, late.halt_seq);
    casepack::verify_pack(&casepack::to_bytes(&late), None).unwrap();

    assert!(casepack::export(&s.state(), "no-such-halt").is_err());
}

#[test]
fn any_changed_byte_fails() {
    let s = Scratch::new();
    let halt_id = populate(&s, 3, 64);
    let pack = casepack::export(&s.state(), &halt_id).unwrap();
    let bytes = casepack::to_bytes(&pack);
    assert!(casepack::verify_pack(&bytes, None).is_ok());
    let started = std::time::Instant::now();
    // Every position changed one way, every third two more ways.
    for pos in 0..bytes.len() {
        let flips: &[u8] = if pos % 3 == 0 {
            &[0x01, 0x20, 0x80]
        } else {
            &[0x01]
        };
        for &flip in flips {
            let mut bad = bytes.clone();
            bad[pos] ^= flip;
            assert!(
                casepack::verify_pack(&bad, None).is_err(),
                "flipping {flip:#x} at byte {pos} ({:?}) went unnoticed",
                String::from_utf8_lossy(
                    &bytes[pos.saturating_sub(20)..(pos + 20).min(bytes.len())]
                )
            );
        }
    }
    // Inserted and removed bytes too.
    for pos in (0..bytes.len()).step_by(13) {
        let mut bad = bytes.clone();
        bad.insert(pos, b' ');
        assert!(
            casepack::verify_pack(&bad, None).is_err(),
            "space inserted at {pos}"
        );
        let mut bad = bytes.clone();
        bad.remove(pos);
        assert!(
            casepack::verify_pack(&bad, None).is_err(),
            "byte {pos} removed"
        );
    }
    eprintln!("{} bytes checked in {:?}", bytes.len(), started.elapsed());

    // And through the CLI: a few flipped files exit non-zero.
    let file = s.path().join("bad.json");
    for pos in [10, bytes.len() / 3, bytes.len() / 2, bytes.len() - 2] {
        let mut bad = bytes.clone();
        bad[pos] ^= 0x04;
        std::fs::write(&file, &bad).unwrap();
        assert_ne!(verify_file(&file, None), 0, "flip at {pos}");
    }
}

#[test]
fn semantic_changes_get_their_codes() {
    let s = Scratch::new();
    let halt_id = populate(&s, 5, 64);
    let pack = casepack::export(&s.state(), &halt_id).unwrap();
    let code = |p: &casepack::CasePack| {
        casepack::verify_pack(&casepack::to_bytes(p), None)
            .err()
            .map(|f| f.kind.exit_code())
    };
    assert_eq!(code(&pack), None);
    let mut p = pack.clone();
    p.evidence.data["processes"][0]["pid"] = serde_json::json!(1);
    assert_eq!(code(&p), Some(10));
    let mut p = pack.clone();
    p.entries.remove(2);
    assert_eq!(code(&p), Some(12));
    let mut p = pack.clone();
    p.public_key = hex::encode(KeyPair::generate().verifying_key().as_bytes());
    assert_eq!(code(&p), Some(14));
    let mut p = pack.clone();
    p.halt_id = "another".into();
    assert_eq!(code(&p), Some(10));
    assert_eq!(
        casepack::verify_pack(b"{\"format\":\"zip\"}\n", None)
            .unwrap_err()
            .kind
            .exit_code(),
        15
    );
}
