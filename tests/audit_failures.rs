//! Fail closed: when the disk cannot take the log any more, `record`
//! errors, `healthy()` turns false and stays false. Needs root (mounts and
//! inode flags); CI runs as root, so these never skip.

mod audit_common;

use std::io::Write;
use std::os::fd::AsFd;

use audit_common::*;
use warden_core::audit::{Audit, AuditError};
use warden_core::sys::fsattr;

fn assert_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests need root (mounts, inode flags); CI runs as root"
    );
}

fn assert_failed(audit: &Audit) {
    assert!(!audit.healthy());
    assert!(matches!(audit.record(tick(0)), Err(AuditError::Failed(_))));
    assert!(matches!(
        audit.record_safety(tick(0), safety()),
        Err(AuditError::Failed(_))
    ));
    assert!(audit.store_evidence("h", &serde_json::json!({})).is_err());
    assert!(audit.checkpoint().is_err());
    assert!(audit.failure().is_some());
}

#[test]
fn full_disk_fails_closed() {
    assert_root();
    let s = Scratch::new();
    let mnt = s.path().join("mnt");
    let _mount = MountGuard::tmpfs(&mnt, "4m");
    let state = mnt.join("state");
    let logs = mnt.join("log");
    {
        let audit = Audit::open(&state, &logs).unwrap();
        for i in 0..5 {
            audit.record(tick(i)).unwrap();
        }
        assert!(audit.healthy());
        // Fill the filesystem.
        let mut filler = std::fs::File::create(mnt.join("filler")).unwrap();
        let block = vec![0u8; 64 * 1024];
        while filler.write_all(&block).is_ok() {}
        let _ = filler.write_all(&block[..1]);
        let big = "x".repeat(8 * 1024);
        let mut failed = None;
        for i in 0..1000 {
            let mut ev = tick(i);
            ev.data = serde_json::json!({ "pad": big });
            if let Err(e) = audit.record(ev) {
                failed = Some(e);
                break;
            }
        }
        let err = failed.expect("record kept succeeding on a full disk");
        assert!(matches!(err, AuditError::Store { .. }), "{err}");
        assert_failed(&audit);
        // A clone shares the state.
        assert!(!audit.clone().healthy());
        drop(audit);
        std::fs::remove_file(mnt.join("filler")).unwrap();
    }
    // What was acknowledged is intact.
    let report = warden_core::audit::verify(&warden_core::audit::VerifyOptions {
        state_dir: state,
        ..Default::default()
    })
    .unwrap();
    assert!(report.entries >= 5);
}

#[test]
fn full_disk_for_the_safety_log_fails_closed() {
    assert_root();
    let s = Scratch::new();
    let mnt = s.path().join("mnt");
    let _mount = MountGuard::tmpfs(&mnt, "1m");
    let audit = Audit::open(&s.state(), &mnt).unwrap();
    audit.record_safety(tick(0), safety()).unwrap();
    let mut filler = std::fs::File::create(mnt.join("filler")).unwrap();
    let block = vec![0u8; 4096];
    while filler.write_all(&block).is_ok() {}
    let mut failed = None;
    for i in 0..200 {
        let mut safe = safety();
        safe.reason = "r".repeat(2048);
        if let Err(e) = audit.record_safety(tick(i), safe) {
            failed = Some(e);
            break;
        }
    }
    let err = failed.expect("record_safety kept succeeding on a full disk");
    assert!(matches!(err, AuditError::SafetyLog { .. }), "{err}");
    assert_failed(&audit);
    drop(audit);
    drop(filler);
    let _ = fsattr::clear_append_only_tree(&mnt);
}

#[test]
fn read_only_state_dir_is_refused() {
    assert_root();
    let s = Scratch::new();
    populate(&s, 3, 64);
    {
        let _ro = MountGuard::read_only_bind(&s.state());
        let err = Audit::open(&s.state(), &s.logs()).unwrap_err();
        assert!(
            matches!(err, AuditError::Store { .. } | AuditError::Key { .. }),
            "{err}"
        );
        // verify still works on a read-only copy.
        let report = warden_core::audit::verify(&warden_core::audit::VerifyOptions {
            state_dir: s.state(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(report.entries, 5);
    }
}

#[test]
fn read_only_log_dir_is_refused() {
    assert_root();
    let s = Scratch::new();
    populate(&s, 1, 64);
    // Clear the flag first: the mount below shows the same inode.
    fsattr::clear_append_only_tree(&s.logs()).unwrap();
    let _ro = MountGuard::read_only_bind(&s.logs());
    let err = Audit::open(&s.state(), &s.logs()).unwrap_err();
    assert!(matches!(err, AuditError::SafetyLog { .. }), "{err}");
}

/// Files that turn read-only under a running writer (as after the kernel
/// remounts a failing filesystem read-only): FS_IMMUTABLE_FL makes every
/// write to an already open descriptor fail with EPERM.
#[test]
fn database_turning_read_only_fails_closed() {
    assert_root();
    let s = Scratch::new();
    let audit = Audit::open(&s.state(), &s.logs()).unwrap();
    audit.record(tick(0)).unwrap();
    let wal = std::fs::File::open(s.state().join("warden.db-wal")).unwrap();
    let flags = fsattr::get_flags(wal.as_fd()).expect("inode flags on the test filesystem");
    fsattr::set_flags(wal.as_fd(), flags | fsattr::FS_IMMUTABLE_FL).unwrap();
    let result = audit.record(tick(1));
    fsattr::set_flags(wal.as_fd(), flags).unwrap();
    assert!(
        matches!(result, Err(AuditError::Store { .. })),
        "{result:?}"
    );
    assert_failed(&audit);
    drop(audit);
}

#[test]
fn safety_log_turning_read_only_fails_closed() {
    assert_root();
    let s = Scratch::new();
    let audit = Audit::open(&s.state(), &s.logs()).unwrap();
    assert!(audit.safety_log_append_only());
    audit.record_safety(tick(0), safety()).unwrap();
    let f = std::fs::File::open(s.logs().join("safety_events.jsonl")).unwrap();
    let flags = fsattr::get_flags(f.as_fd()).unwrap();
    fsattr::set_flags(f.as_fd(), flags | fsattr::FS_IMMUTABLE_FL).unwrap();
    let result = audit.record_safety(tick(1), safety());
    fsattr::set_flags(f.as_fd(), flags).unwrap();
    assert!(
        matches!(result, Err(AuditError::SafetyLog { .. })),
        "{result:?}"
    );
    assert_failed(&audit);
    drop(audit);
}
