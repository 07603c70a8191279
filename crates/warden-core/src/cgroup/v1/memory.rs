//! v1 memory controller: `memory.limit_in_bytes`, `memory.memsw.limit_in_bytes`,
//! `memory.usage_in_bytes`, `memory.failcnt`.

use std::path::Path;

use crate::cgroup::{fs, Result};

pub fn apply_max(dir: &Path, bytes: u64) -> Result<()> {
    fs::write(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
    // memory+swap at the same value means no swap. It must be set after
    // limit_in_bytes (memsw >= limit is enforced). Absent without
    // swapaccount=1; best effort (Documentation/admin-guide/cgroup-v1/memory.rst).
    let memsw = dir.join("memory.memsw.limit_in_bytes");
    if memsw.exists() {
        if let Err(e) = fs::write(&memsw, &bytes.to_string()) {
            tracing::warn!("{e}");
        }
    }
    Ok(())
}

/// Hierarchical charge (use_hierarchy is always 1 since 5.x).
pub fn current(dir: &Path) -> Result<Option<u64>> {
    fs::read_u64_opt(&dir.join("memory.usage_in_bytes"))
}

/// Times this cgroup's limit was hit.
pub fn failcnt(dir: &Path) -> Result<Option<u64>> {
    fs::read_u64_opt(&dir.join("memory.failcnt"))
}

/// Asks for hierarchical accounting on kernels where it is optional; newer
/// kernels always have it and accept "1". Best effort.
pub fn use_hierarchy(dir: &Path) {
    let file = dir.join("memory.use_hierarchy");
    if file.exists() {
        if let Err(e) = fs::write(&file, "1") {
            tracing::debug!("{e}");
        }
    }
}
