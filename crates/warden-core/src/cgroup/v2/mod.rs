//! cgroup v2: one hierarchy, with `cgroup.freeze`, `cgroup.kill` and
//! `cgroup.events` in every non-root cgroup. Used alone on a pure v2 host,
//! and as the `unified` mount of a hybrid host (no controllers, but the core
//! files work there too).

pub mod controllers;
pub mod cpu;
pub mod io;
pub mod memory;
pub mod pids;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use super::{fs, procs, Cgroup, CgroupError, Controller, Limits, Result, Stats};

/// One cgroup in a v2 hierarchy.
#[derive(Debug, Clone)]
pub struct V2Cgroup {
    /// Path relative to the mount, e.g. `/warden/agents/web`.
    rel: String,
    /// Its directory under the mount.
    dir: PathBuf,
}

impl V2Cgroup {
    pub fn new(mount: &Path, rel: &str) -> V2Cgroup {
        V2Cgroup {
            rel: rel.to_owned(),
            dir: fs::join(mount, rel),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn events(&self) -> PathBuf {
        self.dir.join("cgroup.events")
    }

    /// Writes `cgroup.freeze`; `NotFound` (kernel < 5.2) is left to the caller.
    pub fn write_freeze(&self, on: bool) -> Result<()> {
        fs::write(&self.dir.join("cgroup.freeze"), if on { "1" } else { "0" })
    }

    /// The `frozen` field of `cgroup.events`; None before 5.2.
    pub fn frozen_field(&self) -> Result<Option<bool>> {
        Ok(fs::keyed(&fs::read(&self.events())?, "frozen").map(|v| v == 1))
    }

    /// Writes `cgroup.kill`; `NotFound` (kernel < 5.14) is left to the caller.
    pub fn write_kill(&self) -> Result<()> {
        fs::write(&self.dir.join("cgroup.kill"), "1")
    }

    /// Applies the limits on v2 files. The controllers must be enabled in the
    /// parent's `cgroup.subtree_control`.
    pub fn apply(&self, limits: &Limits, skip: &[&str]) -> Result<()> {
        if let (Some(bytes), false) = (limits.memory_max, skip.contains(&"memory_max")) {
            memory::apply_max(&self.dir, bytes)?;
        }
        if let (Some(n), false) = (limits.pids_max, skip.contains(&"pids_max")) {
            pids::apply_max(&self.dir, n)?;
        }
        if let (Some(cores), false) = (limits.cpu_max, skip.contains(&"cpu_max")) {
            cpu::apply_max(&self.dir, cores)?;
        }
        Ok(())
    }
}

impl Cgroup for V2Cgroup {
    fn path(&self) -> &str {
        &self.rel
    }

    fn join_fds(&self) -> Result<Vec<OwnedFd>> {
        Ok(vec![fs::open_write(&self.dir.join("cgroup.procs"))?])
    }

    fn add_pid(&self, pid: i32) -> Result<()> {
        fs::write(&self.dir.join("cgroup.procs"), &pid.to_string())
    }

    fn freeze(&self) -> Result<()> {
        self.write_freeze(true)
    }

    fn is_frozen(&self) -> Result<bool> {
        self.frozen_field()?.ok_or_else(|| CgroupError::Other {
            path: self.events(),
            message: String::from("no frozen field: this kernel has no v2 freezer (< 5.2)"),
        })
    }

    fn thaw(&self) -> Result<()> {
        self.write_freeze(false)
    }

    fn kill(&self) -> Result<()> {
        match self.write_kill() {
            // A cgroup that does not exist has no member left to kill.
            Err(e) if fs::is_missing(&e) && !self.dir.exists() => Ok(()),
            // Before 5.14: signal every member. Frozen members die too on v2.
            Err(e) if fs::is_missing(&e) => {
                procs::sigkill_subtrees(std::slice::from_ref(&self.dir))
            }
            other => other,
        }
    }

    fn procs(&self) -> Result<Vec<i32>> {
        procs::subtree_pids(std::slice::from_ref(&self.dir))
    }

    fn populated(&self) -> Result<bool> {
        match fs::read(&self.events()) {
            Ok(text) => fs::keyed(&text, "populated")
                .map(|v| v == 1)
                .ok_or_else(|| CgroupError::Other {
                    path: self.events(),
                    message: format!("no populated field in {text:?}"),
                }),
            Err(e) if fs::is_missing(&e) && !self.dir.exists() => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn events_file(&self) -> Option<PathBuf> {
        Some(self.events())
    }

    fn cpu_usage_usec(&self) -> Result<Option<u64>> {
        cpu::usage_usec(&self.dir)
    }

    fn cpu_usage_file(&self) -> Option<PathBuf> {
        Some(self.dir.join("cpu.stat"))
    }

    fn stats(&self) -> Result<Stats> {
        let pids_current = match pids::current(&self.dir)? {
            Some(n) => Some(n),
            None if self.dir.exists() => Some(self.procs()?.len() as u64),
            None => None,
        };
        Ok(Stats {
            cpu_usage_usec: cpu::usage_usec(&self.dir)?,
            memory_current: memory::current(&self.dir)?,
            pids_current,
            io_write_bytes: io::write_bytes(&self.dir)?,
            memory_events_max: memory::events_max(&self.dir)?,
            pids_events_max: pids::events_max(&self.dir)?,
            cpu_stall_usec: cpu::stall_usec(&self.dir)?,
        })
    }

    fn remove(&self) -> Result<()> {
        if !self.dir.exists() {
            return Ok(());
        }
        if self.populated()? {
            return Err(CgroupError::Other {
                path: self.dir.clone(),
                message: String::from("cannot remove: still populated"),
            });
        }
        for dir in fs::subtree(&self.dir)?.iter().rev() {
            fs::rmdir(dir)?;
        }
        Ok(())
    }
}

/// The v2 name of a controller warden limits.
pub fn controller_name(c: Controller) -> Option<&'static str> {
    match c {
        Controller::Memory => Some("memory"),
        Controller::Pids => Some("pids"),
        Controller::Cpu => Some("cpu"),
        _ => None,
    }
}

/// True when a child of `R/agents` can use controller `c`: enabled in
/// `R/agents/cgroup.subtree_control` once setup ran, else (before setup)
/// offered by the nearest existing cgroup on the way down to `R/agents`.
pub fn can_enforce(mount: &Path, agents: &Path, c: Controller) -> Result<bool> {
    let Some(name) = controller_name(c) else {
        return Ok(false);
    };
    if agents.exists() {
        return Ok(controllers::enabled(agents)?.iter().any(|e| e == name));
    }
    let nearest = agents
        .ancestors()
        .skip(1)
        .take_while(|p| p.starts_with(mount))
        .find(|p| p.exists());
    match nearest {
        Some(dir) => Ok(controllers::available(dir)?.iter().any(|a| a == name)),
        None => Ok(false),
    }
}

/// What setup did, so that teardown can undo it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SetupDone {
    /// The processes of `R` were moved into `R/supervisor`.
    pub moved: bool,
}

/// Creates `R` and `R/agents` and enables the controllers. When `R` is the
/// daemon's own (delegated) cgroup, its processes first move into
/// `R/supervisor`; otherwise warden owns the path down to `R` and enables
/// controllers on the way (best effort: an ancestor with processes refuses).
pub fn setup(mount: &Path, root: &str, r_is_own: bool) -> Result<SetupDone> {
    let r = fs::join(mount, root);
    let agents = r.join("agents");
    fs::mkdir_p(&r)?;
    let mut done = SetupDone::default();
    if r_is_own {
        let supervisor = r.join("supervisor");
        fs::mkdir_p(&supervisor)?;
        controllers::move_all(&r, &supervisor)?;
        done.moved = true;
    } else {
        for dir in controllers::ancestors(mount, &r) {
            for e in controllers::enable_wanted(&dir) {
                tracing::debug!("enabling controllers above warden's root: {e}");
            }
        }
    }
    fs::mkdir_p(&agents)?;
    for dir in [&r, &agents] {
        for e in controllers::enable_wanted(dir) {
            tracing::warn!("{e}");
        }
    }
    Ok(done)
}

/// Undoes `setup`: removes `R/agents` (fails if populated), then either moves
/// the processes of `R/supervisor` back into `R` (R stays: it is the daemon's
/// own) or removes `R` when it is empty.
pub fn teardown(mount: &Path, root: &str, done: SetupDone) -> Result<()> {
    let r = fs::join(mount, root);
    V2Cgroup::new(mount, &format!("{}/agents", root.trim_end_matches('/'))).remove()?;
    if done.moved {
        let supervisor = r.join("supervisor");
        for e in controllers::disable_all(&r) {
            tracing::warn!("{e}");
        }
        controllers::move_all(&supervisor, &r)?;
        fs::rmdir(&supervisor)
    } else {
        remove_if_empty(&r)
    }
}

/// rmdir that treats "still in use" as success: `R` may hold what is not ours.
pub fn remove_if_empty(dir: &Path) -> Result<()> {
    match fs::rmdir(dir) {
        Err(CgroupError::Remove { source, .. })
            if matches!(source.raw_os_error(), Some(libc::EBUSY | libc::ENOTEMPTY)) =>
        {
            Ok(())
        }
        other => other,
    }
}
