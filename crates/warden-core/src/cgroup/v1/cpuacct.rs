//! v1 cpuacct controller: `cpuacct.usage`, nanoseconds, hierarchical.

use std::path::Path;

use crate::cgroup::{fs, Result};

pub fn usage_usec(dir: &Path) -> Result<Option<u64>> {
    Ok(fs::read_u64_opt(&dir.join("cpuacct.usage"))?.map(|ns| ns / 1000))
}
