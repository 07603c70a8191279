//! cgroups: one interface over pure v2, hybrid (v1 controllers plus a v2
//! `unified` mount) and pure v1 hosts.
//!
//! Layout below warden's root path `R` (same relative path in every hierarchy):
//!
//! ```text
//! R/supervisor        the daemon itself (v2, when R is the daemon's own cgroup)
//! R/agents            parent of every agent: one write freezes or kills them all
//! R/agents/NAME       one agent
//! ```
//!
//! All paths hang off an injected mount point so unit tests run against a
//! temporary directory.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

pub mod fs;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("failed to write {data:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        data: String,
        source: std::io::Error,
    },
    #[error("failed to read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to create cgroup {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to remove cgroup {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no usable cgroup hierarchy under {0}")]
    NoHierarchy(PathBuf),
    #[error("cgroup {path}: {message}")]
    Other { path: PathBuf, message: String },
}

pub type Result<T> = std::result::Result<T, CgroupError>;

/// Which cgroup layout the host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    V2,
    Hybrid,
    V1,
}

/// Kernel-enforced limits for one agent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    pub memory_max: Option<u64>,
    pub pids_max: Option<u64>,
    /// Cores; 1.5 = 150 ms of CPU per 100 ms.
    pub cpu_max: Option<f64>,
}

/// Counters read from the kernel for one cgroup.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Total CPU time used, microseconds.
    pub cpu_usage_usec: Option<u64>,
    /// Current memory charge, bytes.
    pub memory_current: Option<u64>,
    /// Current number of tasks (pids controller), or counted from procs.
    pub pids_current: Option<u64>,
    /// Bytes written to block devices.
    pub io_write_bytes: Option<u64>,
    /// Times memory.max was hit (v2 memory.events max / v1 failcnt).
    pub memory_events_max: Option<u64>,
    /// Fork attempts refused by pids.max.
    pub pids_events_max: Option<u64>,
}

/// One cgroup (an agent's, or the parent of all agents) in every hierarchy
/// warden uses for it. Operations apply to the whole subtree.
pub trait Cgroup: Send + Sync + std::fmt::Debug {
    /// Path relative to the hierarchy mounts, e.g. `/warden/agents/web`.
    fn path(&self) -> &str;
    /// `cgroup.procs` of every hierarchy, opened for writing (O_CLOEXEC), so a
    /// forked child can join by writing "0" to each before exec.
    fn join_fds(&self) -> Result<Vec<OwnedFd>>;
    /// Moves `pid` into this cgroup in every hierarchy.
    fn add_pid(&self, pid: i32) -> Result<()>;
    /// Asks the kernel to freeze the subtree (returns before it is done).
    fn freeze(&self) -> Result<()>;
    /// True once every task of the subtree is frozen.
    fn is_frozen(&self) -> Result<bool>;
    fn thaw(&self) -> Result<()>;
    /// SIGKILL to every member of the subtree: `cgroup.kill` where present,
    /// else every pid of every `cgroup.procs`. Works on a frozen cgroup (v1:
    /// the kill is pending until `thaw`).
    fn kill(&self) -> Result<()>;
    /// Every pid in the subtree.
    fn procs(&self) -> Result<Vec<i32>>;
    /// True while any task is in the subtree.
    fn populated(&self) -> Result<bool>;
    /// A file whose change (inotify IN_MODIFY) signals a change of populated
    /// or frozen state (v2 `cgroup.events`); None where only polling works.
    fn events_file(&self) -> Option<PathBuf>;
    fn stats(&self) -> Result<Stats>;
    /// rmdir in every hierarchy, children first. Fails if populated.
    fn remove(&self) -> Result<()>;
}

/// Detects the layout and hands out cgroups under warden's root.
#[derive(Debug)]
pub struct Manager {
    _todo: (),
}

impl Manager {
    /// Detects hierarchies under `mount` (normally /sys/fs/cgroup). `root` is
    /// "auto" (the daemon's own v2 cgroup if it is not `/`, else `/warden`) or
    /// an absolute cgroup path.
    pub fn detect(_mount: &Path, _root: &str) -> Result<Manager> {
        unimplemented!()
    }
    pub fn layout(&self) -> Layout {
        unimplemented!()
    }
    /// warden's root path, e.g. `/warden`.
    pub fn root(&self) -> &str {
        unimplemented!()
    }
    /// Creates `R` and `R/agents`, moves the daemon into `R/supervisor` when
    /// `R` is its own v2 cgroup, and enables the controllers it can.
    pub fn setup(&self) -> Result<()> {
        unimplemented!()
    }
    /// The parent of all agents, `R/agents`.
    pub fn agents(&self) -> Box<dyn Cgroup> {
        unimplemented!()
    }
    /// `R/agents/NAME`, whether or not it exists.
    pub fn agent(&self, _name: &str) -> Box<dyn Cgroup> {
        unimplemented!()
    }
    /// Names of the limits in `limits` that this host cannot enforce (no such
    /// controller, or its hierarchy is read-only), e.g. `["memory_max"]`.
    pub fn unenforceable(&self, _limits: &Limits) -> Vec<&'static str> {
        unimplemented!()
    }
    /// Creates `R/agents/NAME` in every hierarchy and applies the enforceable limits.
    pub fn create_agent(&self, _name: &str, _limits: &Limits) -> Result<Box<dyn Cgroup>> {
        unimplemented!()
    }
    /// Names of agent cgroups that exist under `R/agents`.
    pub fn existing_agents(&self) -> Result<Vec<String>> {
        unimplemented!()
    }
    /// Removes `R/agents` and `R` if empty (and moves the daemon back out of
    /// `R/supervisor` when it moved itself in). Best effort at exit.
    pub fn teardown(&self) -> Result<()> {
        unimplemented!()
    }
}
