//! Root integration test of `warden_daemon::killswitch::credentials::materialize`:
//! secret files are 0400 and owned by the agent's user, who can read them
//! while another unprivileged user cannot. CI runs it as root; without root
//! it fails, it never skips. Everything lives in a temp dir removed on drop.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use warden_daemon::killswitch::credentials::{materialize, CredentialStore, Kind};

/// Runs `cat path` as `uid:gid`; true if it could read the file.
fn can_read_as(uid: u32, gid: u32, path: &std::path::Path) -> bool {
    Command::new("/bin/cat")
        .arg(path)
        .uid(uid)
        .gid(gid)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run cat")
        .success()
}

#[test]
fn materialize_writes_0400_files_owned_by_the_agent() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the killswitch_root tests need root (CI runs them as root)"
    );
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("a user named nobody");
    let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());

    let d = tempfile::tempdir().unwrap();
    // Traversable, not listable, so the agent's user can reach its directory.
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let mut store = CredentialStore::open(&d.path().join("credentials.json")).unwrap();
    let (a, sa) = store
        .issue("alpha", Kind::ApiKey, "openai", None, 1)
        .unwrap();
    let (b, sb) = store
        .issue("alpha", Kind::Oauth, "github", None, 1)
        .unwrap();

    let dir = d.path().join("alpha");
    std::fs::create_dir(&dir).unwrap();
    // What the daemon does with its tmpfs mount options (mode=0500,uid=,gid=).
    std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o500)).unwrap();

    materialize(&dir, uid, gid, &[(&a, &sa), (&b, &sb)]).unwrap();

    for (name, secret) in [("openai", &sa), ("github", &sb)] {
        let path = dir.join(name);
        let m = std::fs::symlink_metadata(&path).unwrap();
        assert!(m.file_type().is_file());
        assert_eq!(m.mode() & 0o7777, 0o400, "{name}");
        assert_eq!((m.uid(), m.gid()), (uid, gid), "{name}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), secret.expose());
        assert!(
            can_read_as(uid, gid, &path),
            "the agent's user reads {name}"
        );
        assert!(
            !can_read_as(uid - 1, gid - 1, &path),
            "another user cannot read {name}"
        );
    }
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "no temp file left: {names:?}");
}
