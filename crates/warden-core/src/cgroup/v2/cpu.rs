//! v2 cpu controller: `cpu.max`, and `cpu.stat`, which every v2 cgroup has
//! even without the controller (kernel Documentation/admin-guide/cgroup-v2.rst,
//! "cpu.stat ... reported whether the controller is enabled or not").

use std::path::Path;

use crate::cgroup::{fs, quota_us, Result, CPU_PERIOD_US};

pub fn apply_max(dir: &Path, cores: f64) -> Result<()> {
    fs::write(
        &dir.join("cpu.max"),
        &format!("{} {CPU_PERIOD_US}", quota_us(cores)),
    )
}

/// "some total=" of `cpu.pressure` (Documentation/accounting/psi.rst); None
/// where PSI is off.
pub fn stall_usec(dir: &Path) -> Result<Option<u64>> {
    let Some(text) = fs::read_opt(&dir.join("cpu.pressure"))? else {
        return Ok(None);
    };
    Ok(text
        .lines()
        .find(|l| l.starts_with("some "))
        .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("total=")))
        .and_then(|v| v.parse().ok()))
}

pub fn usage_usec(dir: &Path) -> Result<Option<u64>> {
    fs::read_keyed_opt(&dir.join("cpu.stat"), "usage_usec")
}
