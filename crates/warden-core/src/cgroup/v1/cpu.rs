//! v1 cpu controller: CFS bandwidth (`cpu.cfs_period_us`, `cpu.cfs_quota_us`).

use std::path::Path;

use crate::cgroup::{fs, quota_us, Result, CPU_PERIOD_US};

pub fn apply_max(dir: &Path, cores: f64) -> Result<()> {
    fs::write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
    fs::write(&dir.join("cpu.cfs_quota_us"), &quota_us(cores).to_string())
}
