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
