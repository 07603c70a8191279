//! End-to-end: the .deb installed in a booted Debian bookworm container, the
//! halt levers driven through systemd (see tests/e2e/run.sh for the steps).
//!
//! Needs root and the tools from tests/e2e/deps.sh, like the rest of our root
//! tests in CI. It fails, never skips, when it cannot run: the script exits
//! non-zero on a missing tool, a non-root user or any failed check.

use std::process::Command;

#[test]
fn package_in_booted_systemd_container() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/run.sh");
    // Inherited stdout/stderr: the phases and their timings show up live in CI.
    let status = Command::new("bash")
        .arg(script)
        .status()
        .unwrap_or_else(|e| panic!("cannot run bash {script}: {e}"));
    assert!(
        status.success(),
        "{script} failed ({status}): its checks are printed above; the container's \
         console and journal are in target/e2e/last-run/"
    );
}
