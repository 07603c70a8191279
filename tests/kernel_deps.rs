//! The safety kernel's dependency graph stays small and checkable: this test
//! fails when `cargo tree -p warden-kernel` (normal dependencies) grows past
//! its allowed list. Adding a crate to the trusted core is a decision to make
//! here, in review, not by accident.

use std::collections::BTreeSet;

const ALLOWED: &[&str] = &["warden-kernel", "libc", "nix", "bitflags", "cfg-if"];

#[test]
fn kernel_links_only_libc_and_nix() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "tree",
            "-p",
            "warden-kernel",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert!(
        found.contains("warden-kernel") && found.contains("nix"),
        "{found:?}"
    );
    let extra: Vec<&String> = found
        .iter()
        .filter(|c| !ALLOWED.contains(&c.as_str()))
        .collect();
    assert!(
        extra.is_empty(),
        "the safety kernel gained dependencies {extra:?}; allowed: {ALLOWED:?}"
    );
}
