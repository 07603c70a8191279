//! The agents' parent cgroups: freeze, thaw, kill, populated, members, for
//! any mix of cgroup2 parents (`--v2`) and v1 freezer parents
//! (`--v1-freezer`). Errors name the path and the data.
//!
//! Freezing uses cgroup2 where a v2 parent is given (a hybrid host's unified
//! mount freezes every task as well as v1 would) and the v1 freezer only when
//! there is no v2 parent: a SIGKILL to a v1-FROZEN task stays pending until
//! the thaw (measured, see DESIGN.md), so freezing both would block the
//! daemon's own kill (cgroup.kill) while the kernel waits for its `empty`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How deep the walk of a parent goes; agents' trees are shallow.
const MAX_DEPTH: usize = 16;

/// The parents the kernel guards.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    /// cgroup2 parents (cgroup.freeze, cgroup.kill, cgroup.events).
    pub v2: Vec<PathBuf>,
    /// v1 freezer parents (freezer.state, cgroup.procs below).
    pub v1: Vec<PathBuf>,
}

fn write(path: &Path, data: &str) -> Result<(), String> {
    std::fs::write(path, data)
        .map_err(|e| format!("failed to write {data} to {}: {e}", path.display()))
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("failed to read {}: {e}", path.display()))
}

/// `dir` and every directory below it (symlinks are not followed).
fn subtree(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    let mut depth = vec![0usize];
    while i < out.len() {
        if depth[i] < MAX_DEPTH {
            let rd = std::fs::read_dir(&out[i])
                .map_err(|e| format!("failed to list {}: {e}", out[i].display()))?;
            for ent in rd.flatten() {
                if ent.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(ent.path());
                    depth.push(depth[i] + 1);
                }
            }
        }
        i += 1;
    }
    Ok(out)
}

fn procs(dir: &Path) -> Result<Vec<i32>, String> {
    let p = dir.join("cgroup.procs");
    match std::fs::read_to_string(&p) {
        Ok(s) => Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        // Removed between the listing and the read: it had no members.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !dir.exists() => Ok(vec![]),
        Err(e) => Err(format!("failed to read {}: {e}", p.display())),
    }
}

fn subtree_pids(dirs: &[PathBuf], into: &mut BTreeSet<i32>) -> Result<(), String> {
    for d in dirs {
        for cg in subtree(d)? {
            into.extend(procs(&cg)?);
        }
    }
    Ok(())
}

/// SIGKILL to one member. Never 0, -1 or 1 (a garbled procs file must not
/// become kill(-1)), nor ourselves.
fn sigkill(pid: i32) -> Result<(), String> {
    if pid <= 1 || pid == std::process::id() as i32 {
        return Ok(());
    }
    match kill(Pid::from_raw(pid), Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(format!("failed to send SIGKILL to pid {pid}: {e}")),
    }
}

impl Tree {
    /// Freezes the parents (see the module doc for which). Returns errors.
    pub fn freeze(&self) -> Vec<String> {
        if self.v2.is_empty() {
            self.v1
                .iter()
                .filter_map(|d| write(&d.join("freezer.state"), "FROZEN").err())
                .collect()
        } else {
            self.v2
                .iter()
                .filter_map(|d| write(&d.join("cgroup.freeze"), "1").err())
                .collect()
        }
    }

    /// True when every parent that [`Tree::freeze`] writes reports frozen.
    pub fn frozen(&self) -> bool {
        if self.v2.is_empty() {
            self.v1
                .iter()
                .all(|d| read(&d.join("freezer.state")).is_ok_and(|s| s.trim() == "FROZEN"))
        } else {
            self.v2.iter().all(|d| events(d, "frozen") == Ok(true))
        }
    }

    /// Thaws the v2 parents and every v1 freezer cgroup below the v1
    /// parents (a v1 child frozen by itself stays frozen when only its
    /// parent thaws, and its members' pending SIGKILL with it).
    pub fn thaw(&self) -> Vec<String> {
        let mut errs: Vec<String> = self
            .v2
            .iter()
            .filter_map(|d| write(&d.join("cgroup.freeze"), "0").err())
            .collect();
        for d in &self.v1 {
            match subtree(d) {
                Ok(cgs) => errs.extend(
                    cgs.iter()
                        .filter_map(|c| write(&c.join("freezer.state"), "THAWED").err()),
                ),
                Err(e) => errs.push(e),
            }
        }
        errs
    }

    /// SIGKILL to every member: `cgroup.kill` on each v2 parent (kernel
    /// 5.14+; before that, kill(2) per pid), and kill(2) to every pid of
    /// every `cgroup.procs` under the v1 parents (the same tasks on a hybrid
    /// host: belt and braces). Pids are read while frozen, so none exits and
    /// is reused in between.
    pub fn kill(&self) -> Vec<String> {
        let mut errs = Vec::new();
        let mut by_pid = self.v1.clone();
        for d in &self.v2 {
            let k = d.join("cgroup.kill");
            if k.exists() {
                errs.extend(write(&k, "1").err());
            } else {
                by_pid.push(d.clone());
            }
        }
        let mut pids = BTreeSet::new();
        if let Err(e) = subtree_pids(&by_pid, &mut pids) {
            errs.push(e);
        }
        errs.extend(pids.into_iter().filter_map(|p| sigkill(p).err()));
        errs
    }

    /// Any member left? v2: `populated` of cgroup.events; v1: any pid in
    /// any cgroup.procs below. Err when cgroupfs does not answer.
    pub fn populated(&self) -> Result<bool, String> {
        for d in &self.v2 {
            if events(d, "populated")? {
                return Ok(true);
            }
        }
        for d in &self.v1 {
            for cg in subtree(d)? {
                if !procs(&cg)?.is_empty() {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Every member's pid, sorted, from every parent.
    pub fn pids(&self) -> Result<Vec<i32>, String> {
        let mut s = BTreeSet::new();
        subtree_pids(&self.v2, &mut s)?;
        subtree_pids(&self.v1, &mut s)?;
        Ok(s.into_iter().collect())
    }
}

/// A `KEY 0|1` line of `dir/cgroup.events`.
fn events(dir: &Path, key: &str) -> Result<bool, String> {
    let p = dir.join("cgroup.events");
    let s = read(&p)?;
    s.lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim() == "1"))
        .ok_or_else(|| format!("no {key} line in {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake cgroupfs in a temp dir: files only, no kernel behind them.
    fn fake() -> (tempfile::TempDir, Tree) {
        let d = tempfile::tempdir().unwrap();
        let v2 = d.path().join("v2");
        let v1 = d.path().join("v1");
        for (dir, files) in [
            (
                &v2,
                &[
                    ("cgroup.freeze", "0"),
                    ("cgroup.events", "populated 0\nfrozen 0\n"),
                    ("cgroup.procs", ""),
                ][..],
            ),
            (
                &v1,
                &[("freezer.state", "THAWED"), ("cgroup.procs", "")][..],
            ),
        ] {
            std::fs::create_dir_all(dir.join("agent.a")).unwrap();
            for (f, c) in files {
                std::fs::write(dir.join(f), c).unwrap();
                std::fs::write(dir.join("agent.a").join(f), c).unwrap();
            }
        }
        (
            d,
            Tree {
                v2: vec![v2],
                v1: vec![v1],
            },
        )
    }

    #[test]
    fn freeze_prefers_v2_and_thaw_reaches_v1_children() {
        let (_d, t) = fake();
        assert!(t.freeze().is_empty());
        assert_eq!(
            std::fs::read_to_string(t.v2[0].join("cgroup.freeze")).unwrap(),
            "1"
        );
        assert_eq!(
            std::fs::read_to_string(t.v1[0].join("freezer.state")).unwrap(),
            "THAWED"
        );
        std::fs::write(t.v1[0].join("agent.a/freezer.state"), "FROZEN").unwrap();
        assert!(t.thaw().is_empty());
        assert_eq!(
            std::fs::read_to_string(t.v2[0].join("cgroup.freeze")).unwrap(),
            "0"
        );
        assert_eq!(
            std::fs::read_to_string(t.v1[0].join("agent.a/freezer.state")).unwrap(),
            "THAWED"
        );
        let v1only = Tree {
            v2: vec![],
            v1: t.v1.clone(),
        };
        assert!(v1only.freeze().is_empty());
        assert_eq!(
            std::fs::read_to_string(t.v1[0].join("freezer.state")).unwrap(),
            "FROZEN"
        );
        assert!(v1only.frozen());
    }

    #[test]
    fn populated_reads_events_and_procs() {
        let (_d, t) = fake();
        assert_eq!(t.populated(), Ok(false));
        std::fs::write(t.v1[0].join("agent.a/cgroup.procs"), "4242\n").unwrap();
        assert_eq!(t.populated(), Ok(true));
        assert_eq!(t.pids(), Ok(vec![4242]));
        std::fs::write(t.v1[0].join("agent.a/cgroup.procs"), "").unwrap();
        std::fs::write(t.v2[0].join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        assert_eq!(t.populated(), Ok(true));
        assert!(t.frozen());
        let gone = Tree {
            v2: vec![PathBuf::from("/nonexistent/x")],
            v1: vec![],
        };
        assert!(gone
            .populated()
            .unwrap_err()
            .contains("/nonexistent/x/cgroup.events"));
    }
}
