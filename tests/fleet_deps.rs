//! The fleet bridge is unprivileged and knows the daemon only by its control
//! protocol: warden-fleet must never link warden-core or warden-daemon.

#[test]
fn warden_fleet_links_neither_core_nor_daemon() {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "warden-fleet",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree");
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(tree.contains("warden-proto"), "{tree}");
    for bad in [
        "warden-core",
        "warden-daemon",
        "warden-cli",
        "rusqlite",
        "caps",
    ] {
        assert!(
            !tree
                .lines()
                .any(|l| l.split_whitespace().next() == Some(bad)),
            "warden-fleet depends on {bad}:\n{tree}"
        );
    }
}
