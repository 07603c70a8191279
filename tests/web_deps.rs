//! `warden web` is unprivileged and talks to the daemon only through the
//! control socket: its crate must not link the daemon's internals.

#[test]
fn warden_web_links_neither_core_nor_daemon() {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-p",
            "warden-web",
            "-e",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(tree.contains("warden-proto"), "{tree}");
    for forbidden in [
        "warden-core",
        "warden-daemon",
        "warden-cli",
        "rusqlite",
        "nix ",
    ] {
        assert!(
            !tree.lines().any(|l| l.starts_with(forbidden)),
            "warden-web depends on {forbidden}:\n{tree}"
        );
    }
}

/// `warden check-config` checks `[web]` with the web's own parser; the
/// daemon's parser accepts the table without knowing its keys.
#[test]
fn check_config_checks_the_web_table() {
    let dir = tempfile::tempdir().unwrap();
    let run = |text: &str| {
        let f = dir.path().join("w.toml");
        std::fs::write(&f, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
            .arg("check-config")
            .arg(&f)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = run("[web]\nlisten = \"127.0.0.1:9999\"\nuser = \"w\"\n");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("127.0.0.1:9999"), "{out}");
    let (code, out) = run("[web]\nlisten = \"127.0.0.1:9999\"\ntls_cert = \"/x\"\n");
    assert_eq!(code, Some(4), "{out}");
    assert!(out.contains("tls_cert"), "{out}");
}
