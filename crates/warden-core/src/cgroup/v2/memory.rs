//! v2 memory controller: `memory.max`, `memory.swap.max`, `memory.current`,
//! `memory.events`.

use std::path::Path;

use crate::cgroup::{fs, Result};

pub fn apply_max(dir: &Path, bytes: u64) -> Result<()> {
    fs::write(&dir.join("memory.max"), &bytes.to_string())?;
    // Without this the limit only bounds RAM and the agent spills into swap.
    // Best effort: the file is absent when the kernel has no swap accounting.
    let swap = dir.join("memory.swap.max");
    if swap.exists() {
        if let Err(e) = fs::write(&swap, "0") {
            tracing::warn!("{e}");
        }
    }
    Ok(())
}

pub fn current(dir: &Path) -> Result<Option<u64>> {
    fs::read_u64_opt(&dir.join("memory.current"))
}

/// Times the cgroup hit `memory.max` (hierarchical `memory.events`).
pub fn events_max(dir: &Path) -> Result<Option<u64>> {
    fs::read_keyed_opt(&dir.join("memory.events"), "max")
}
