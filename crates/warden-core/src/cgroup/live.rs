//! Changing a running agent's kernel limits in place (`warden reload`):
//! `memory.max`, `pids.max`, `cpu.max` on v2; `memory.limit_in_bytes`
//! (and `memsw`), `pids.max`, `cpu.cfs_quota_us` on v1 and hybrid. A limit
//! removed from the config is set back to "no limit".

use std::path::{Path, PathBuf};

use super::{
    fs, quota_us, CgroupError, Controller, Layout, Limits, Manager, Result, CPU_PERIOD_US,
};

/// v1 has no "max" for memory: the largest page-aligned value means none.
const V1_MEMORY_UNLIMITED: &str = "-1";

impl Manager {
    /// Writes `new` into agent `name`'s existing cgroup, limit by limit, for
    /// the limits that differ from `old`. Lowering `memory_max` below what
    /// the agent holds: v2 reclaims and OOM-kills inside the cgroup; v1
    /// answers EBUSY, reported as an error (the caller restarts the agent).
    pub fn update_limits(
        &self,
        name: &str,
        old: &Limits,
        new: &Limits,
    ) -> Result<Vec<&'static str>> {
        let rel = format!("{}/{name}", self.agents_rel());
        let missing: Vec<&str> = self.unenforceable(new);
        if !missing.is_empty() {
            return Err(CgroupError::Other {
                path: PathBuf::from(&rel),
                message: format!("this host cannot enforce {}", missing.join(", ")),
            });
        }
        super::check_limits(new).map_err(|message| CgroupError::Other {
            path: PathBuf::from(&rel),
            message,
        })?;
        let mut done = Vec::new();
        if old.memory_max != new.memory_max {
            match self.layout {
                Layout::V2 => v2_memory(&self.v2_dir(&rel), new.memory_max)?,
                _ => v1_memory(&self.v1_dir(&rel, Controller::Memory)?, new.memory_max)?,
            }
            done.push("memory_max");
        }
        if old.pids_max != new.pids_max {
            let v = new.pids_max.map(|n| n.to_string()).unwrap_or("max".into());
            let dir = match self.layout {
                Layout::V2 => self.v2_dir(&rel),
                _ => self.v1_dir(&rel, Controller::Pids)?,
            };
            fs::write(&dir.join("pids.max"), &v)?;
            done.push("pids_max");
        }
        if old.cpu_max != new.cpu_max {
            match self.layout {
                Layout::V2 => {
                    let q = new
                        .cpu_max
                        .map(|c| quota_us(c).to_string())
                        .unwrap_or("max".into());
                    fs::write(
                        &self.v2_dir(&rel).join("cpu.max"),
                        &format!("{q} {CPU_PERIOD_US}"),
                    )?;
                }
                _ => {
                    let dir = self.v1_dir(&rel, Controller::Cpu)?;
                    let q = new
                        .cpu_max
                        .map(|c| quota_us(c).to_string())
                        .unwrap_or("-1".into());
                    fs::write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    fs::write(&dir.join("cpu.cfs_quota_us"), &q)?;
                }
            }
            done.push("cpu_max");
        }
        Ok(done)
    }

    fn v2_dir(&self, rel: &str) -> PathBuf {
        fs::join(self.v2_mount(), rel)
    }

    fn v1_dir(&self, rel: &str, c: Controller) -> Result<PathBuf> {
        self.v1
            .iter()
            .find(|h| h.has(c) && !h.read_only())
            .map(|h| fs::join(&h.dir, rel))
            .ok_or_else(|| CgroupError::Other {
                path: PathBuf::from(rel),
                message: format!("no writable v1 {} hierarchy", c.v1_name()),
            })
    }
}

fn v2_memory(dir: &Path, bytes: Option<u64>) -> Result<()> {
    let v = bytes.map(|b| b.to_string()).unwrap_or("max".into());
    fs::write(&dir.join("memory.max"), &v)
}

/// memsw >= limit is enforced at every write, so raising goes memsw first
/// and lowering limit first (Documentation/admin-guide/cgroup-v1/memory.rst).
fn v1_memory(dir: &Path, bytes: Option<u64>) -> Result<()> {
    let v = bytes
        .map(|b| b.to_string())
        .unwrap_or(V1_MEMORY_UNLIMITED.into());
    let limit = dir.join("memory.limit_in_bytes");
    let memsw = dir.join("memory.memsw.limit_in_bytes");
    let current = fs::read_u64_opt(&limit)?.unwrap_or(u64::MAX);
    let raising = bytes.is_none_or(|b| b >= current);
    if raising && memsw.exists() {
        fs::write(&memsw, &v)?;
    }
    fs::write(&limit, &v)?;
    if !raising && memsw.exists() {
        fs::write(&memsw, &v)?;
    }
    Ok(())
}
