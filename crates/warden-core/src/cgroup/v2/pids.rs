//! v2 pids controller: `pids.max`, `pids.current`, `pids.events`.

use std::path::Path;

use crate::cgroup::{fs, Result};

pub fn apply_max(dir: &Path, max: u64) -> Result<()> {
    fs::write(&dir.join("pids.max"), &max.to_string())
}

pub fn current(dir: &Path) -> Result<Option<u64>> {
    fs::read_u64_opt(&dir.join("pids.current"))
}

/// Forks refused because of `pids.max` of this cgroup or an ancestor.
pub fn events_max(dir: &Path) -> Result<Option<u64>> {
    fs::read_keyed_opt(&dir.join("pids.events"), "max")
}
