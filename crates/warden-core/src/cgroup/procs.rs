//! Membership by walking `cgroup.procs`: what v1 has instead of
//! `cgroup.events` and `cgroup.kill`, and v2's fallback before 5.14.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{fs, CgroupError, Result};

/// Every pid in the subtrees rooted at `dirs`, deduplicated and sorted.
pub fn subtree_pids(dirs: &[PathBuf]) -> Result<Vec<i32>> {
    let mut pids = BTreeSet::new();
    for dir in dirs {
        for cg in fs::subtree(dir)? {
            pids.extend(fs::read_pids(&cg.join("cgroup.procs"))?);
        }
    }
    Ok(pids.into_iter().collect())
}

/// True as soon as one `cgroup.procs` in the subtrees lists a pid. Zombies
/// are not listed (measured on 6.18, v1 and v2), so reaped or not, a dead
/// task does not keep a cgroup populated.
pub fn any_pid(dirs: &[PathBuf]) -> Result<bool> {
    for dir in dirs {
        for cg in fs::subtree(dir)? {
            if !fs::read_pids(&cg.join("cgroup.procs"))?.is_empty() {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Upper bound on rereads: an unfrozen fork storm could otherwise keep us
/// here forever; the halt ladder freezes first and retries on its deadline.
const MAX_PASSES: usize = 64;

/// SIGKILL to every pid of every `cgroup.procs` in the subtrees, reread until
/// a pass finds no pid it has not signalled yet.
///
/// Pids are read, then signalled: on a frozen cgroup no member can exit in
/// between, so the pid cannot have been reused. Unfrozen, the window is the
/// usual one of kill(2) by pid.
pub fn sigkill_subtrees(dirs: &[PathBuf]) -> Result<()> {
    let mut signalled = BTreeSet::new();
    for _ in 0..MAX_PASSES {
        let fresh: Vec<i32> = subtree_pids(dirs)?
            .into_iter()
            .filter(|p| !signalled.contains(p))
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        for pid in fresh {
            sigkill(pid, dirs.first().map(PathBuf::as_path))?;
            signalled.insert(pid);
        }
    }
    Ok(())
}

/// SIGKILL to one member. Never 0, -1 or 1 (a garbled procs file must not
/// become kill(-1)), nor ourselves.
fn sigkill(pid: i32, cgroup: Option<&Path>) -> Result<()> {
    if pid <= 1 || pid == std::process::id() as i32 {
        return Ok(());
    }
    match kill(Pid::from_raw(pid), Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(CgroupError::Other {
            path: cgroup.map(Path::to_owned).unwrap_or_default(),
            message: format!("failed to send SIGKILL to pid {pid}: {e}"),
        }),
    }
}
