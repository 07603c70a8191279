//! cgroup v1: one hierarchy per controller (or per co-mounted group such as
//! `cpu,cpuacct`). The same relative path is created in each hierarchy used.
//! Membership, killing and emptiness need directory walks here: v1 has no
//! `cgroup.events` and no `cgroup.kill`.

pub mod blkio;
pub mod cpu;
pub mod cpuacct;
pub mod freezer;
pub mod memory;
pub mod pids;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::{fs, procs, Cgroup, CgroupError, Controller, Limits, Result, Stats};

/// One mounted v1 hierarchy.
#[derive(Debug)]
pub struct Hierarchy {
    /// Its mount directory with symlinks resolved, e.g.
    /// `/sys/fs/cgroup/cpu,cpuacct`; also the dedup key for co-mounts.
    pub dir: PathBuf,
    /// The controllers warden uses that are mounted there.
    pub controllers: Vec<Controller>,
    /// Read-only (statvfs/access at detection, or EROFS seen later): such a
    /// hierarchy is left out of membership and its limits are unenforceable.
    read_only: AtomicBool,
}

impl Hierarchy {
    pub fn new(dir: PathBuf, controllers: Vec<Controller>, read_only: bool) -> Hierarchy {
        Hierarchy {
            dir,
            controllers,
            read_only: AtomicBool::new(read_only),
        }
    }

    pub fn read_only(&self) -> bool {
        self.read_only.load(Ordering::Relaxed)
    }

    pub fn set_read_only(&self) {
        self.read_only.store(true, Ordering::Relaxed);
    }

    pub fn has(&self, c: Controller) -> bool {
        self.controllers.contains(&c)
    }
}

/// The cgroup's directory in one hierarchy.
#[derive(Debug, Clone)]
struct V1Dir {
    /// What the hierarchy carries, to find the file of a controller.
    controllers: Vec<Controller>,
    /// `<mount>/<rel>`.
    dir: PathBuf,
}

/// One cgroup in every writable v1 hierarchy.
#[derive(Debug, Clone)]
pub struct V1Cgroup {
    /// Path relative to the mounts, e.g. `/warden/agents/web`.
    rel: String,
    /// One entry per writable hierarchy, the freezer's first: it is the one
    /// walked first when looking for members.
    dirs: Vec<V1Dir>,
}

impl V1Cgroup {
    pub fn new(hierarchies: &[Hierarchy], rel: &str) -> V1Cgroup {
        let mut dirs: Vec<V1Dir> = hierarchies
            .iter()
            .filter(|h| !h.read_only())
            .map(|h| V1Dir {
                controllers: h.controllers.clone(),
                dir: fs::join(&h.dir, rel),
            })
            .collect();
        dirs.sort_by_key(|d| !d.controllers.contains(&Controller::Freezer));
        V1Cgroup {
            rel: rel.to_owned(),
            dirs,
        }
    }

    /// This cgroup's directory in the hierarchy carrying `c`.
    pub fn dir_of(&self, c: Controller) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|d| d.controllers.contains(&c))
            .map(|d| d.dir.as_path())
    }

    /// This cgroup's directory in every hierarchy, the freezer's first.
    pub fn all_dirs(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.dir.clone()).collect()
    }

    fn freezer_dir(&self) -> Result<&Path> {
        self.dir_of(Controller::Freezer)
            .ok_or_else(|| CgroupError::Other {
                path: PathBuf::from(&self.rel),
                message: String::from("no writable v1 freezer hierarchy"),
            })
    }

    /// Applies the limits not in `skip` in the hierarchies carrying them.
    pub fn apply(&self, limits: &Limits, skip: &[&str]) -> Result<()> {
        let missing = |c: Controller| CgroupError::Other {
            path: PathBuf::from(&self.rel),
            message: format!("no writable v1 {} hierarchy", c.v1_name()),
        };
        if let (Some(bytes), false) = (limits.memory_max, skip.contains(&"memory_max")) {
            let dir = self
                .dir_of(Controller::Memory)
                .ok_or(missing(Controller::Memory))?;
            memory::apply_max(dir, bytes)?;
        }
        if let (Some(n), false) = (limits.pids_max, skip.contains(&"pids_max")) {
            let dir = self
                .dir_of(Controller::Pids)
                .ok_or(missing(Controller::Pids))?;
            pids::apply_max(dir, n)?;
        }
        if let (Some(cores), false) = (limits.cpu_max, skip.contains(&"cpu_max")) {
            let dir = self
                .dir_of(Controller::Cpu)
                .ok_or(missing(Controller::Cpu))?;
            cpu::apply_max(dir, cores)?;
        }
        Ok(())
    }

    /// Counters from the v1 controllers; None where a hierarchy is missing.
    pub fn v1_stats(&self) -> Result<Stats> {
        let opt = |c: Controller| self.dir_of(c);
        let mut s = Stats::default();
        if let Some(d) = opt(Controller::Cpuacct) {
            s.cpu_usage_usec = cpuacct::usage_usec(d)?;
        }
        if let Some(d) = opt(Controller::Memory) {
            s.memory_current = memory::current(d)?;
            s.memory_events_max = memory::failcnt(d)?;
        }
        if let Some(d) = opt(Controller::Pids) {
            s.pids_current = pids::current(d)?;
            s.pids_events_max = pids::events_max(d)?;
        }
        if let Some(d) = opt(Controller::Blkio) {
            s.io_write_bytes = blkio::write_bytes(d)?;
        }
        Ok(s)
    }

    /// `cgroup.procs` of every writable hierarchy, opened for writing; none
    /// when every hierarchy is read-only (fine on hybrid, where unified holds
    /// the membership that matters).
    pub fn open_procs(&self) -> Result<Vec<OwnedFd>> {
        self.dirs
            .iter()
            .map(|d| fs::open_write(&d.dir.join("cgroup.procs")))
            .collect()
    }

    /// True when the cgroup exists in at least one hierarchy.
    pub fn exists(&self) -> bool {
        self.dirs.iter().any(|d| d.dir.exists())
    }
}

impl Cgroup for V1Cgroup {
    fn path(&self) -> &str {
        &self.rel
    }

    fn join_fds(&self) -> Result<Vec<OwnedFd>> {
        if self.dirs.is_empty() {
            return Err(CgroupError::Other {
                path: PathBuf::from(&self.rel),
                message: String::from("no writable v1 hierarchy to join"),
            });
        }
        self.open_procs()
    }

    fn add_pid(&self, pid: i32) -> Result<()> {
        for d in &self.dirs {
            fs::write(&d.dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    fn freeze(&self) -> Result<()> {
        freezer::freeze(self.freezer_dir()?)
    }

    fn is_frozen(&self) -> Result<bool> {
        freezer::is_frozen(self.freezer_dir()?)
    }

    /// THAWED in every cgroup of the subtree, parents first: a child frozen
    /// on its own (self_freezing) would stay frozen, and so would the
    /// pending SIGKILLs of its members.
    fn thaw(&self) -> Result<()> {
        let top = self.freezer_dir()?;
        for dir in fs::subtree(top)? {
            if let Err(e) = freezer::thaw(&dir) {
                // A child removed meanwhile is fine; the cgroup itself is not.
                if dir == top || !fs::is_missing(&e) {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn kill(&self) -> Result<()> {
        procs::sigkill_subtrees(&self.all_dirs())
    }

    fn procs(&self) -> Result<Vec<i32>> {
        procs::subtree_pids(&self.all_dirs())
    }

    fn populated(&self) -> Result<bool> {
        procs::any_pid(&self.all_dirs())
    }

    fn events_file(&self) -> Option<PathBuf> {
        None
    }

    fn cpu_usage_usec(&self) -> Result<Option<u64>> {
        match self.dir_of(Controller::Cpuacct) {
            Some(d) => cpuacct::usage_usec(d),
            None => Ok(None),
        }
    }

    fn cpu_usage_file(&self) -> Option<PathBuf> {
        self.dir_of(Controller::Cpuacct)
            .map(|d| d.join("cpuacct.usage"))
    }

    fn stats(&self) -> Result<Stats> {
        let mut s = self.v1_stats()?;
        if s.pids_current.is_none() && self.exists() {
            s.pids_current = Some(self.procs()?.len() as u64);
        }
        Ok(s)
    }

    fn remove(&self) -> Result<()> {
        if self.populated()? {
            return Err(CgroupError::Other {
                path: PathBuf::from(&self.rel),
                message: String::from("cannot remove: still populated"),
            });
        }
        for d in &self.dirs {
            for dir in fs::subtree(&d.dir)?.iter().rev() {
                fs::rmdir(dir)?;
            }
        }
        Ok(())
    }
}
