//! Hybrid hosts: limits and accounting from the v1 controller hierarchies,
//! freezing, killing and emptiness from the v2 `unified` mount. The unified
//! mount has no controllers enabled, but `cgroup.freeze`, `cgroup.kill` and
//! `cgroup.events` work in its child cgroups, and on v2 a frozen task dies
//! on SIGKILL (on the v1 freezer the kill would wait for the thaw).

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use super::v1::V1Cgroup;
use super::v2::V2Cgroup;
use super::{fs, procs, Cgroup, CgroupError, Result, Stats};

/// One cgroup in the unified mount and in every writable v1 hierarchy.
#[derive(Debug, Clone)]
pub struct HybridCgroup {
    /// Same relative path in the v1 hierarchies: membership, limits, stats.
    v1: V1Cgroup,
    /// Same relative path in `unified`: freeze, kill, populated.
    unified: V2Cgroup,
}

impl HybridCgroup {
    pub fn new(v1: V1Cgroup, unified: V2Cgroup) -> HybridCgroup {
        HybridCgroup { v1, unified }
    }

    pub fn v1(&self) -> &V1Cgroup {
        &self.v1
    }

    pub fn unified(&self) -> &V2Cgroup {
        &self.unified
    }

    fn all_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.unified.dir().to_owned()];
        dirs.extend(self.v1.all_dirs());
        dirs
    }
}

impl Cgroup for HybridCgroup {
    fn path(&self) -> &str {
        self.unified.path()
    }

    /// The unified fd first: once it is written, freeze and kill reach the child.
    fn join_fds(&self) -> Result<Vec<OwnedFd>> {
        let mut fds = self.unified.join_fds()?;
        fds.extend(self.v1.open_procs()?);
        Ok(fds)
    }

    fn add_pid(&self, pid: i32) -> Result<()> {
        self.unified.add_pid(pid)?;
        self.v1.add_pid(pid)
    }

    /// `cgroup.freeze` appeared in 5.2; before that, the v1 freezer.
    fn freeze(&self) -> Result<()> {
        match self.unified.write_freeze(true) {
            Err(e) if fs::is_missing(&e) && self.unified.dir().exists() => self.v1.freeze(),
            other => other,
        }
    }

    fn is_frozen(&self) -> Result<bool> {
        match self.unified.frozen_field()? {
            Some(frozen) => Ok(frozen),
            None => self.v1.is_frozen(),
        }
    }

    fn thaw(&self) -> Result<()> {
        match self.unified.write_freeze(false) {
            Err(e) if fs::is_missing(&e) && self.unified.dir().exists() => self.v1.thaw(),
            other => other,
        }
    }

    /// One write to the unified `cgroup.kill`. Before 5.14, SIGKILL to every
    /// member found in the unified and freezer hierarchies.
    fn kill(&self) -> Result<()> {
        match self.unified.write_kill() {
            Err(e) if fs::is_missing(&e) => procs::sigkill_subtrees(&self.all_dirs()),
            other => other,
        }
    }

    /// The unified side: it is what `kill` and `populated` act on, and warden
    /// writes every agent into it before exec. (Reading every v1 hierarchy as
    /// well cost a directory walk per hierarchy per agent on the halt path.)
    fn procs(&self) -> Result<Vec<i32>> {
        self.unified.procs()
    }

    fn populated(&self) -> Result<bool> {
        self.unified.populated()
    }

    fn events_file(&self) -> Option<PathBuf> {
        self.unified.events_file()
    }

    /// v1 counters, completed from the unified side (`cpu.stat` is there
    /// even without controllers).
    fn cpu_usage_usec(&self) -> Result<Option<u64>> {
        self.unified.cpu_usage_usec()
    }

    fn cpu_usage_file(&self) -> Option<PathBuf> {
        self.unified.cpu_usage_file()
    }

    fn stats(&self) -> Result<Stats> {
        let a = self.v1.v1_stats()?;
        let b = self.unified.stats()?;
        Ok(Stats {
            cpu_usage_usec: a.cpu_usage_usec.or(b.cpu_usage_usec),
            memory_current: a.memory_current.or(b.memory_current),
            pids_current: a.pids_current.or(b.pids_current),
            io_write_bytes: a.io_write_bytes.or(b.io_write_bytes),
            memory_events_max: a.memory_events_max.or(b.memory_events_max),
            pids_events_max: a.pids_events_max.or(b.pids_events_max),
            cpu_stall_usec: b.cpu_stall_usec,
        })
    }

    fn remove(&self) -> Result<()> {
        if self.populated()? || self.v1.populated()? {
            return Err(CgroupError::Other {
                path: PathBuf::from(self.path()),
                message: String::from("cannot remove: still populated"),
            });
        }
        let unified = self.unified.remove();
        let v1 = self.v1.remove();
        unified.and(v1)
    }
}
