//! Enabling controllers (`cgroup.subtree_control`) and the
//! no-internal-processes rule: a non-root v2 cgroup that enables a domain
//! controller for its children may not hold processes itself
//! (Documentation/admin-guide/cgroup-v2.rst, "No Internal Process Constraint").

use std::path::{Path, PathBuf};

use crate::cgroup::{fs, CgroupError, Result};

/// The controllers warden limits or reads on v2.
pub const WANTED: [&str; 4] = ["cpu", "io", "memory", "pids"];

/// Controller names in a space-separated file (`cgroup.controllers`,
/// `cgroup.subtree_control`); none when the file is absent.
pub fn list(path: &Path) -> Result<Vec<String>> {
    Ok(fs::read_opt(path)?
        .map(|t| t.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default())
}

/// Controllers `dir` may enable for its children.
pub fn available(dir: &Path) -> Result<Vec<String>> {
    list(&dir.join("cgroup.controllers"))
}

/// Controllers `dir` has enabled for its children.
pub fn enabled(dir: &Path) -> Result<Vec<String>> {
    list(&dir.join("cgroup.subtree_control"))
}

/// Enables in `dir` those of `WANTED` it may, one write each so that one
/// refusal does not hide the others. Returns the failures.
pub fn enable_wanted(dir: &Path) -> Vec<CgroupError> {
    let (avail, on) = match (available(dir), enabled(dir)) {
        (Ok(a), Ok(e)) => (a, e),
        (Err(e), _) | (_, Err(e)) => return vec![e],
    };
    WANTED
        .iter()
        .filter(|c| avail.iter().any(|a| a == *c) && !on.iter().any(|e| e == *c))
        .filter_map(|c| fs::write(&dir.join("cgroup.subtree_control"), &format!("+{c}")).err())
        .collect()
}

/// Disables every controller `dir` enabled for its children (children must
/// not use them any more), so that processes may live in `dir` again.
pub fn disable_all(dir: &Path) -> Vec<CgroupError> {
    match enabled(dir) {
        Ok(on) => on
            .iter()
            .filter_map(|c| fs::write(&dir.join("cgroup.subtree_control"), &format!("-{c}")).err())
            .collect(),
        Err(e) => vec![e],
    }
}

/// Moves every process of `from` into `to`, rereading until `from` is empty
/// (a process may fork while we move it).
pub fn move_all(from: &Path, to: &Path) -> Result<()> {
    for _ in 0..16 {
        let pids = fs::read_pids(&from.join("cgroup.procs"))?;
        if pids.is_empty() {
            return Ok(());
        }
        for pid in pids {
            match fs::write(&to.join("cgroup.procs"), &pid.to_string()) {
                Ok(()) => {}
                // Exited meanwhile.
                Err(CgroupError::Write { source, .. })
                    if source.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Err(CgroupError::Other {
        path: from.to_owned(),
        message: format!(
            "processes keep appearing; could not move them all to {}",
            to.display()
        ),
    })
}

/// Cgroups from the mount root down to `dir`'s parent, outermost first.
pub fn ancestors(mount: &Path, dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = dir
        .ancestors()
        .skip(1)
        .take_while(|p| p.starts_with(mount))
        .map(Path::to_owned)
        .collect();
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_stop_at_the_mount() {
        let m = Path::new("/sys/fs/cgroup");
        assert_eq!(
            ancestors(m, &m.join("a/b/c")),
            vec![m.to_owned(), m.join("a"), m.join("a/b")]
        );
        assert_eq!(ancestors(m, &m.join("a")), vec![m.to_owned()]);
    }
}
