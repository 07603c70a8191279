//! The host key: created with the right modes, refused when exposed.

mod audit_common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use audit_common::*;
use warden_cli::key::{run, KeyCommand, ShowArgs};
use warden_core::audit::Audit;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().mode() & 0o7777
}

#[test]
fn first_open_creates_keys_with_modes_and_owner() {
    let s = Scratch::new();
    let audit = Audit::open(&s.state(), &s.logs()).unwrap();
    let keys = s.state().join("keys");
    assert_eq!(mode(&keys), 0o700);
    assert_eq!(mode(&keys.join("signing.key")), 0o600);
    assert_eq!(mode(&keys.join("signing.pub")), 0o644);
    assert_eq!(
        std::fs::metadata(keys.join("signing.key")).unwrap().uid(),
        0
    );
    assert_eq!(mode(&s.state().join("warden.db")), 0o600);
    let pem = std::fs::read_to_string(keys.join("signing.key")).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
    let id = audit.key_id().to_string();
    drop(audit);
    // Reopening keeps the key.
    let audit = Audit::open(&s.state(), &s.logs()).unwrap();
    assert_eq!(audit.key_id(), id);
    drop(audit);
    assert_eq!(
        run(KeyCommand::Show(ShowArgs {
            state_dir: s.state()
        })),
        0
    );
}

#[test]
fn exposed_private_key_is_refused() {
    let s = Scratch::new();
    drop(Audit::open(&s.state(), &s.logs()).unwrap());
    let key = s.state().join("keys/signing.key");
    for m in [0o644, 0o640, 0o604, 0o660] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(m)).unwrap();
        let err = Audit::open(&s.state(), &s.logs()).unwrap_err().to_string();
        assert!(err.contains("group or others"), "{m:o}: {err}");
    }
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    drop(Audit::open(&s.state(), &s.logs()).unwrap());
}

#[test]
fn key_owned_by_another_user_is_refused() {
    let s = Scratch::new();
    drop(Audit::open(&s.state(), &s.logs()).unwrap());
    let key = s.state().join("keys/signing.key");
    nix::unistd::chown(&key, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let err = Audit::open(&s.state(), &s.logs()).unwrap_err().to_string();
    assert!(err.contains("owned by uid 65534"), "{err}");
}

#[test]
fn mismatched_public_key_is_refused() {
    let s = Scratch::new();
    drop(Audit::open(&s.state(), &s.logs()).unwrap());
    std::fs::write(
        s.state().join("keys/signing.pub"),
        warden_core::crypto::KeyPair::generate().public_pem(),
    )
    .unwrap();
    let err = Audit::open(&s.state(), &s.logs()).unwrap_err().to_string();
    assert!(err.contains("does not match"), "{err}");
}

#[test]
fn key_show_without_a_key_fails() {
    let s = Scratch::new();
    assert_eq!(
        run(KeyCommand::Show(ShowArgs {
            state_dir: s.state()
        })),
        1
    );
}

#[test]
fn a_regenerated_key_does_not_sign_an_old_log() {
    let s = Scratch::new();
    populate(&s, 2, 64);
    std::fs::remove_dir_all(s.state().join("keys")).unwrap();
    let err = Audit::open(&s.state(), &s.logs()).unwrap_err().to_string();
    assert!(
        err.contains("not the key this audit log was created with"),
        "{err}"
    );
}
