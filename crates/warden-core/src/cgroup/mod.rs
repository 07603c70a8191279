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
//!
//! - [`detect`]: which layout, which hierarchies (statfs magic, else files),
//!   the root path.
//! - [`v2`]: a cgroup2 hierarchy (`cgroup.freeze`, `cgroup.kill`,
//!   `cgroup.events`), one file per controller, and `subtree_control`.
//! - [`v1`]: one hierarchy per controller, one file per controller.
//! - [`hybrid`]: limits from v1, freeze/kill/populated from `unified`.
//! - [`fs`]: every cgroupfs read and write; errors name the path and data.
//! - `procs`: the `cgroup.procs` walks v1 needs (and v2 before 5.14).
//!
//! Costs on the halt path: on v2 and hybrid, freeze, kill and populated are
//! one write or read each, whatever the number of agents; on v1, freeze is
//! one write, and kill, populated and thaw walk the subtree.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

pub mod detect;
pub mod fs;
pub mod hybrid;
mod procs;
pub mod v1;
pub mod v2;

#[cfg(test)]
mod mock;
#[cfg(test)]
mod tests;

use hybrid::HybridCgroup;
use v1::V1Cgroup;
use v2::V2Cgroup;

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
    /// Microseconds some task of the cgroup was runnable but waiting for a
    /// CPU (PSI `cpu.pressure` "some total"), so demand = usage + stall.
    #[serde(default)]
    pub cpu_stall_usec: Option<u64>,
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
    /// Total CPU time used, microseconds: one file read, for the monitors'
    /// cheap "did anything run since the last sample" check.
    fn cpu_usage_usec(&self) -> Result<Option<u64>> {
        Ok(self.stats()?.cpu_usage_usec)
    }
    /// The file that holds total CPU usage (v2 `cpu.stat`, in usec on its
    /// `usage_usec` line; v1 `cpuacct.usage`, in nsec), so a caller can keep
    /// it open and re-read it with one pread per sample.
    fn cpu_usage_file(&self) -> Option<PathBuf> {
        None
    }
    /// rmdir in every hierarchy, children first. Fails if populated.
    fn remove(&self) -> Result<()>;
}

/// A controller warden uses, by its v1 name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Controller {
    Memory,
    Pids,
    Cpu,
    Cpuacct,
    Freezer,
    Blkio,
}

impl Controller {
    pub fn v1_name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
            Controller::Cpuacct => "cpuacct",
            Controller::Freezer => "freezer",
            Controller::Blkio => "blkio",
        }
    }

    pub fn from_v1_name(name: &str) -> Option<Controller> {
        [
            Controller::Memory,
            Controller::Pids,
            Controller::Cpu,
            Controller::Cpuacct,
            Controller::Freezer,
            Controller::Blkio,
        ]
        .into_iter()
        .find(|c| c.v1_name() == name)
    }
}

/// CFS period for `cpu_max`: quota = cores × period.
pub(crate) const CPU_PERIOD_US: u64 = 100_000;

/// The CFS quota for `cores`, never below the kernel's 1 ms minimum.
pub(crate) fn quota_us(cores: f64) -> u64 {
    ((cores * CPU_PERIOD_US as f64).round() as u64).max(1000)
}

/// The limits asked for in `limits`, by config name and controller.
fn asked(limits: &Limits) -> Vec<(&'static str, Controller)> {
    let mut out = Vec::new();
    if limits.memory_max.is_some() {
        out.push(("memory_max", Controller::Memory));
    }
    if limits.pids_max.is_some() {
        out.push(("pids_max", Controller::Pids));
    }
    if limits.cpu_max.is_some() {
        out.push(("cpu_max", Controller::Cpu));
    }
    out
}

/// True for a name usable as an agent cgroup: 1 to 64 of `[A-Za-z0-9_.-]`,
/// not starting with a dot (no `.`, `..` or hidden names, no path).
pub fn valid_agent_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// An open CPU-usage file of one cgroup, re-read with a single `pread` at
/// offset 0 (cgroupfs regenerates the content on every read from 0).
#[derive(Debug)]
pub struct CpuCounter {
    file: std::fs::File,
    v1_nanos: bool,
}

impl CpuCounter {
    pub fn open(cg: &dyn Cgroup) -> Option<CpuCounter> {
        let path = cg.cpu_usage_file()?;
        let v1_nanos = path.file_name().is_some_and(|n| n == "cpuacct.usage");
        std::fs::File::open(path)
            .ok()
            .map(|file| CpuCounter { file, v1_nanos })
    }

    /// Microseconds of CPU used so far.
    pub fn read(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 512];
        let n = self.file.read_at(&mut buf, 0).ok()?;
        let text = std::str::from_utf8(&buf[..n]).ok()?;
        if self.v1_nanos {
            return text.trim().parse::<u64>().ok().map(|ns| ns / 1000);
        }
        text.lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())
    }
}

/// Detects the layout and hands out cgroups under warden's root.
#[derive(Debug)]
pub struct Manager {
    /// The directory holding the hierarchies, normally /sys/fs/cgroup.
    mount: PathBuf,
    /// What `detect` found (or what the caller forced).
    layout: Layout,
    /// warden's root `R`, relative to every hierarchy, e.g. `/warden`.
    root: String,
    /// The cgroup2 mount in use: the mount itself on V2, `unified` on hybrid.
    v2: Option<PathBuf>,
    /// The v1 hierarchies in use (V1 and hybrid).
    v1: Vec<v1::Hierarchy>,
    /// The daemon's own v2 cgroup when the manager was made: if it is `R`,
    /// setup moves the daemon into `R/supervisor`.
    own_v2: Option<String>,
    /// setup moved the processes of `R` into `R/supervisor`; teardown moves
    /// them back.
    moved: AtomicBool,
}

/// One agent cgroup as its concrete type, for what the trait does not cover.
enum Concrete {
    V2(V2Cgroup),
    V1(V1Cgroup),
    Hybrid(HybridCgroup),
}

impl Concrete {
    fn boxed(self) -> Box<dyn Cgroup> {
        match self {
            Concrete::V2(c) => Box::new(c),
            Concrete::V1(c) => Box::new(c),
            Concrete::Hybrid(c) => Box::new(c),
        }
    }

    fn as_dyn(&self) -> &dyn Cgroup {
        match self {
            Concrete::V2(c) => c,
            Concrete::V1(c) => c,
            Concrete::Hybrid(c) => c,
        }
    }

    fn apply(&self, limits: &Limits, skip: &[&str]) -> Result<()> {
        match self {
            Concrete::V2(c) => c.apply(limits, skip),
            Concrete::V1(c) => c.apply(limits, skip),
            Concrete::Hybrid(c) => c.v1().apply(limits, skip),
        }
    }
}

impl Manager {
    /// Detects hierarchies under `mount` (normally /sys/fs/cgroup). `root` is
    /// "auto" (the daemon's own v2 cgroup if it is not `/`, else `/warden`) or
    /// an absolute cgroup path.
    pub fn detect(mount: &Path, root: &str) -> Result<Manager> {
        Manager::build(mount, root, None, own_from_proc().as_deref())
    }

    /// Like `detect`, but with the layout forced: V1 ignores a `unified`
    /// mount (to test pure-v1 behaviour on a hybrid host), V2 uses `unified`
    /// when `mount` is not itself a cgroup2 mount. Fails if the host lacks
    /// what the layout needs.
    pub fn with_layout(mount: &Path, root: &str, layout: Layout) -> Result<Manager> {
        Manager::build(mount, root, Some(layout), own_from_proc().as_deref())
    }

    /// Like `with_layout`, with the daemon's own v2 cgroup given instead of
    /// read from /proc/self/cgroup (None: not in a v2 hierarchy). For tests of
    /// the `R/supervisor` move, and for a caller that knows better.
    pub fn with_own_cgroup(
        mount: &Path,
        root: &str,
        layout: Option<Layout>,
        own_v2: Option<&str>,
    ) -> Result<Manager> {
        Manager::build(mount, root, layout, own_v2)
    }

    fn build(
        mount: &Path,
        root: &str,
        layout: Option<Layout>,
        own_v2: Option<&str>,
    ) -> Result<Manager> {
        let found = detect::detect(mount, layout)?;
        let root = detect::resolve_root(root, own_v2)?;
        Ok(Manager {
            mount: mount.to_owned(),
            layout: found.layout,
            root,
            v2: found.v2,
            v1: found.v1,
            own_v2: own_v2.map(str::to_owned),
            moved: AtomicBool::new(false),
        })
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// warden's root path, e.g. `/warden`.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The directory the hierarchies were detected under.
    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// The mount directories of every hierarchy in use (the cgroup2 one
    /// first), e.g. for a health check or a leftover scan.
    pub fn hierarchy_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self.v2.iter().cloned().collect();
        dirs.extend(self.v1.iter().map(|h| h.dir.clone()));
        dirs
    }

    fn v2_mount(&self) -> &Path {
        // Invariant of detect: V2 and Hybrid always carry a cgroup2 mount.
        self.v2.as_deref().unwrap_or(&self.mount)
    }

    fn r_is_own(&self) -> bool {
        self.layout == Layout::V2 && self.own_v2.as_deref() == Some(self.root.as_str())
    }

    fn agents_rel(&self) -> String {
        format!("{}/agents", self.root)
    }

    fn concrete(&self, rel: &str) -> Concrete {
        match self.layout {
            Layout::V2 => Concrete::V2(V2Cgroup::new(self.v2_mount(), rel)),
            Layout::V1 => Concrete::V1(V1Cgroup::new(&self.v1, rel)),
            Layout::Hybrid => Concrete::Hybrid(HybridCgroup::new(
                V1Cgroup::new(&self.v1, rel),
                V2Cgroup::new(self.v2_mount(), rel),
            )),
        }
    }

    /// mkdir -p `rel` in every writable v1 hierarchy. EROFS marks the
    /// hierarchy read-only and skips it; returns the controllers lost so.
    fn v1_mkdir(&self, rel: &str) -> Result<Vec<Controller>> {
        let mut lost = Vec::new();
        for h in self.v1.iter().filter(|h| !h.read_only()) {
            match fs::mkdir_p(&fs::join(&h.dir, rel)) {
                Ok(()) => {}
                Err(e) if fs::is_read_only_err(&e) => {
                    tracing::warn!("{e}: treating {} as read-only", h.dir.display());
                    h.set_read_only();
                    lost.extend(h.controllers.iter().copied());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(lost)
    }

    /// Pure v1 can only freeze with a writable freezer hierarchy.
    fn require_v1_freezer(&self) -> Result<()> {
        if self.layout != Layout::V1 {
            return Ok(());
        }
        match self.v1.iter().find(|h| h.has(Controller::Freezer)) {
            Some(h) if !h.read_only() => Ok(()),
            Some(h) => Err(CgroupError::Other {
                path: h.dir.clone(),
                message: String::from(
                    "the v1 freezer hierarchy is read-only: agents could not be frozen",
                ),
            }),
            None => Err(CgroupError::Other {
                path: self.mount.clone(),
                message: String::from("no v1 freezer hierarchy: agents could not be frozen"),
            }),
        }
    }

    /// Creates `R` and `R/agents`, moves the daemon into `R/supervisor` when
    /// `R` is its own v2 cgroup, and enables the controllers it can.
    pub fn setup(&self) -> Result<()> {
        self.require_v1_freezer()?;
        match self.layout {
            Layout::V2 => {
                let done = v2::setup(self.v2_mount(), &self.root, self.r_is_own())?;
                self.moved.store(done.moved, Ordering::SeqCst);
            }
            Layout::V1 | Layout::Hybrid => {
                if self.layout == Layout::Hybrid {
                    fs::mkdir_p(&fs::join(self.v2_mount(), &self.agents_rel()))?;
                }
                self.v1_mkdir(&self.root)?;
                if let Some(h) = self
                    .v1
                    .iter()
                    .find(|h| h.has(Controller::Memory) && !h.read_only())
                {
                    v1::memory::use_hierarchy(&fs::join(&h.dir, &self.root));
                }
                self.v1_mkdir(&self.agents_rel())?;
                self.require_v1_freezer()?;
            }
        }
        Ok(())
    }

    /// The agents' parent directory where the safety kernel freezes and
    /// kills by itself: (the cgroup2 one, on v2 and hybrid; the v1 freezer's,
    /// on v1 and hybrid).
    pub fn kernel_dirs(&self) -> (Option<PathBuf>, Option<PathBuf>) {
        let rel = self.agents_rel();
        let v2 = match self.layout {
            Layout::V2 | Layout::Hybrid => Some(fs::join(self.v2_mount(), &rel)),
            Layout::V1 => None,
        };
        let v1 = match self.layout {
            Layout::V1 | Layout::Hybrid => self
                .v1
                .iter()
                .find(|h| h.has(Controller::Freezer) && !h.read_only())
                .map(|h| fs::join(&h.dir, &rel)),
            Layout::V2 => None,
        };
        (v2, v1)
    }

    /// The parent of all agents, `R/agents`.
    pub fn agents(&self) -> Box<dyn Cgroup> {
        self.concrete(&self.agents_rel()).boxed()
    }

    /// `R/agents/NAME`, whether or not it exists. An invalid name gives a
    /// cgroup whose every operation fails (never a path outside `R/agents`).
    pub fn agent(&self, name: &str) -> Box<dyn Cgroup> {
        let rel = format!("{}/{name}", self.agents_rel());
        if !valid_agent_name(name) {
            return Box::new(InvalidCgroup { rel });
        }
        self.concrete(&rel).boxed()
    }

    fn can_enforce(&self, c: Controller) -> bool {
        match self.layout {
            Layout::V2 => {
                let mount = self.v2_mount();
                let agents = fs::join(mount, &self.agents_rel());
                !fs::is_read_only(mount) && v2::can_enforce(mount, &agents, c).unwrap_or(false)
            }
            Layout::V1 | Layout::Hybrid => self.v1.iter().any(|h| h.has(c) && !h.read_only()),
        }
    }

    /// Names of the limits in `limits` that this host cannot enforce (no such
    /// controller, or its hierarchy is read-only), e.g. `["memory_max"]`.
    pub fn unenforceable(&self, limits: &Limits) -> Vec<&'static str> {
        asked(limits)
            .into_iter()
            .filter(|(_, c)| !self.can_enforce(*c))
            .map(|(name, _)| name)
            .collect()
    }

    /// Creates `R/agents/NAME` in every hierarchy and applies the enforceable limits.
    pub fn create_agent(&self, name: &str, limits: &Limits) -> Result<Box<dyn Cgroup>> {
        let rel = format!("{}/{name}", self.agents_rel());
        let invalid = |message: String| CgroupError::Other {
            path: PathBuf::from(&rel),
            message,
        };
        if !valid_agent_name(name) {
            return Err(invalid(format!("invalid agent name {name:?}")));
        }
        check_limits(limits).map_err(invalid)?;
        let skip = self.unenforceable(limits);
        match self.layout {
            Layout::V2 => fs::mkdir_p(&fs::join(self.v2_mount(), &rel))?,
            Layout::V1 | Layout::Hybrid => {
                if self.layout == Layout::Hybrid {
                    fs::mkdir_p(&fs::join(self.v2_mount(), &rel))?;
                }
                let lost = self.v1_mkdir(&rel)?;
                let broken: Vec<&str> = asked(limits)
                    .into_iter()
                    .filter(|(n, c)| !skip.contains(n) && lost.contains(c))
                    .map(|(n, _)| n)
                    .collect();
                let freezer = self.require_v1_freezer();
                if !broken.is_empty() || freezer.is_err() {
                    let err = freezer.err().unwrap_or_else(|| {
                        invalid(format!(
                            "hierarchy became read-only; cannot enforce {broken:?}"
                        ))
                    });
                    return Err(with_cleanup(
                        &rel,
                        err,
                        self.concrete(&rel).as_dyn().remove(),
                    ));
                }
            }
        }
        let cg = self.concrete(&rel);
        if let Err(e) = cg.apply(limits, &skip) {
            return Err(with_cleanup(&rel, e, cg.as_dyn().remove()));
        }
        Ok(cg.boxed())
    }

    /// Names of agent cgroups that exist under `R/agents`.
    pub fn existing_agents(&self) -> Result<Vec<String>> {
        let rel = self.agents_rel();
        let mut names = Vec::new();
        for dir in self.hierarchy_dirs() {
            for sub in fs::subdirs(&fs::join(&dir, &rel))? {
                if let Some(n) = sub.file_name() {
                    names.push(n.to_string_lossy().into_owned());
                }
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Removes `R/agents` and `R` if empty (and moves the daemon back out of
    /// `R/supervisor` when it moved itself in). Best effort at exit.
    pub fn teardown(&self) -> Result<()> {
        match self.layout {
            Layout::V2 => {
                let done = v2::SetupDone {
                    moved: self.moved.load(Ordering::SeqCst),
                };
                v2::teardown(self.v2_mount(), &self.root, done)?;
                self.moved.store(false, Ordering::SeqCst);
                Ok(())
            }
            Layout::V1 | Layout::Hybrid => {
                let agents = self.agents().remove();
                let mut rest = Ok(());
                let writable = self.v1.iter().filter(|h| !h.read_only()).map(|h| &h.dir);
                for dir in self.v2.iter().chain(writable) {
                    let r = v2::remove_if_empty(&fs::join(dir, &self.root));
                    rest = rest.and(r);
                }
                agents.and(rest)
            }
        }
    }
}

/// Refuses limits the kernel would misread.
fn check_limits(limits: &Limits) -> std::result::Result<(), String> {
    if limits.memory_max == Some(0) {
        return Err(String::from("memory_max must be above 0"));
    }
    if limits.pids_max == Some(0) {
        return Err(String::from("pids_max must be above 0"));
    }
    if let Some(c) = limits.cpu_max {
        if !c.is_finite() || c <= 0.0 {
            return Err(format!(
                "cpu_max must be a positive number of cores, not {c}"
            ));
        }
    }
    Ok(())
}

/// The error of a failed step, with the error of the cleanup after it if any.
fn with_cleanup(rel: &str, err: CgroupError, cleanup: Result<()>) -> CgroupError {
    match cleanup {
        Ok(()) => err,
        Err(c) => CgroupError::Other {
            path: PathBuf::from(rel),
            message: format!("{err}; then cleanup failed: {c}"),
        },
    }
}

/// The daemon's own v2 cgroup, if /proc says it has one.
fn own_from_proc() -> Option<String> {
    std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|t| detect::own_v2_cgroup(&t))
}

/// What `Manager::agent` returns for a name that is not a valid cgroup name.
#[derive(Debug)]
struct InvalidCgroup {
    /// The path asked for, for the error messages.
    rel: String,
}

impl InvalidCgroup {
    fn err<T>(&self) -> Result<T> {
        Err(CgroupError::Other {
            path: PathBuf::from(&self.rel),
            message: String::from("invalid agent name"),
        })
    }
}

impl Cgroup for InvalidCgroup {
    fn path(&self) -> &str {
        &self.rel
    }
    fn join_fds(&self) -> Result<Vec<OwnedFd>> {
        self.err()
    }
    fn add_pid(&self, _pid: i32) -> Result<()> {
        self.err()
    }
    fn freeze(&self) -> Result<()> {
        self.err()
    }
    fn is_frozen(&self) -> Result<bool> {
        self.err()
    }
    fn thaw(&self) -> Result<()> {
        self.err()
    }
    fn kill(&self) -> Result<()> {
        self.err()
    }
    fn procs(&self) -> Result<Vec<i32>> {
        self.err()
    }
    fn populated(&self) -> Result<bool> {
        self.err()
    }
    fn events_file(&self) -> Option<PathBuf> {
        None
    }
    fn stats(&self) -> Result<Stats> {
        self.err()
    }
    fn remove(&self) -> Result<()> {
        self.err()
    }
}
