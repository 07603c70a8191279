//! Every cgroupfs read and write goes through these helpers, whose errors
//! name the path and the data.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use super::{CgroupError, Result};

/// Writes `data` to an existing cgroupfs file in one `write(2)`.
///
/// The file is never created: a missing interface file (e.g. `cgroup.kill`
/// before 5.14) must show up as `NotFound`, in a fake tree too.
pub fn write(path: &Path, data: &str) -> Result<()> {
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(data.as_bytes()))
        .map_err(|source| CgroupError::Write {
            path: path.to_owned(),
            data: data.to_owned(),
            source,
        })
}

pub fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_owned(),
        source,
    })
}

/// True when the error says the file or cgroup is not there (ENOENT, or
/// ENODEV for a cgroup removed while its file was open).
pub fn is_missing(err: &CgroupError) -> bool {
    let source = match err {
        CgroupError::Write { source, .. }
        | CgroupError::Read { source, .. }
        | CgroupError::Create { source, .. }
        | CgroupError::Remove { source, .. } => source,
        _ => return false,
    };
    source.kind() == ErrorKind::NotFound || source.raw_os_error() == Some(libc::ENODEV)
}

/// True when the error is EROFS (a read-only hierarchy, e.g. inside
/// systemd-nspawn on a hybrid host).
pub fn is_read_only_err(err: &CgroupError) -> bool {
    match err {
        CgroupError::Write { source, .. } | CgroupError::Create { source, .. } => {
            source.raw_os_error() == Some(libc::EROFS)
        }
        _ => false,
    }
}

/// Reads a file that may legitimately be absent (no such controller).
pub fn read_opt(path: &Path) -> Result<Option<String>> {
    match read(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads a single-number file; None when absent or "max".
pub fn read_u64_opt(path: &Path) -> Result<Option<u64>> {
    let Some(text) = read_opt(path)? else {
        return Ok(None);
    };
    let text = text.trim();
    if text == "max" {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| CgroupError::Other {
        path: path.to_owned(),
        message: format!("expected a number, found {text:?}"),
    })
}

/// The value of `key` in a flat-keyed file (`key value` lines, as in
/// `cgroup.events`, `cpu.stat`, `memory.events`).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut it = line.split_whitespace();
        (it.next() == Some(key))
            .then(|| it.next()?.parse().ok())
            .flatten()
    })
}

/// `keyed` on a file that may be absent.
pub fn read_keyed_opt(path: &Path, key: &str) -> Result<Option<u64>> {
    Ok(read_opt(path)?.and_then(|text| keyed(&text, key)))
}

/// The pids listed in a `cgroup.procs`; a cgroup removed meanwhile has none.
pub fn read_pids(procs: &Path) -> Result<Vec<i32>> {
    let Some(text) = read_opt(procs)? else {
        return Ok(Vec::new());
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim().parse().map_err(|_| CgroupError::Other {
                path: procs.to_owned(),
                message: format!("expected a pid, found {l:?}"),
            })
        })
        .collect()
}

/// Opens a `cgroup.procs` for writing. std opens with O_CLOEXEC, so the fd
/// never leaks into the exec'd agent.
pub fn open_write(path: &Path) -> Result<OwnedFd> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|source| CgroupError::Write {
            path: path.to_owned(),
            data: String::from("(open for writing)"),
            source,
        })
}

/// `mkdir -p`.
pub fn mkdir_p(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|source| CgroupError::Create {
        path: path.to_owned(),
        source,
    })
}

/// `rmdir`; a directory that is already gone is not an error.
pub fn rmdir(path: &Path) -> Result<()> {
    match std::fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CgroupError::Remove {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Child cgroups (directories) of `dir`, sorted; none if `dir` is gone.
pub fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CgroupError::Read {
                path: dir.to_owned(),
                source,
            })
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| CgroupError::Read {
            path: dir.to_owned(),
            source,
        })?;
        // kernfs fills d_type, so this costs no stat; symlinks are not cgroups.
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// `dir` and every cgroup below it, parents before children.
pub fn subtree(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = vec![dir.to_owned()];
    let mut i = 0;
    while i < out.len() {
        let children = subdirs(&out[i])?;
        out.extend(children);
        i += 1;
    }
    Ok(out)
}

/// True when `dir` cannot be written: a read-only mount (statvfs ST_RDONLY)
/// or no write access. A directory that does not exist is judged by its
/// nearest existing ancestor.
pub fn is_read_only(dir: &Path) -> bool {
    use nix::sys::statvfs::{statvfs, FsFlags};
    use nix::unistd::{access, AccessFlags};
    let Some(dir) = dir.ancestors().find(|p| p.exists()) else {
        return true;
    };
    if let Ok(st) = statvfs(dir) {
        if st.flags().contains(FsFlags::ST_RDONLY) {
            return true;
        }
    }
    access(dir, AccessFlags::W_OK).is_err()
}

/// Joins a cgroup path such as `/warden/agents` below a hierarchy's mount.
pub fn join(mount: &Path, rel: &str) -> PathBuf {
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() {
        mount.to_owned()
    } else {
        mount.join(rel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_finds_exact_key() {
        let text = "populated 1\nfrozen 0\n";
        assert_eq!(keyed(text, "populated"), Some(1));
        assert_eq!(keyed(text, "frozen"), Some(0));
        assert_eq!(keyed(text, "froze"), None);
        assert_eq!(keyed("max 7\nmax_x 9", "max"), Some(7));
    }

    #[test]
    fn write_never_creates_and_names_path_and_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cgroup.kill");
        let err = write(&path, "1").unwrap_err();
        assert!(is_missing(&err));
        assert!(!path.exists());
        let msg = err.to_string();
        assert!(
            msg.contains("cgroup.kill") && msg.contains("\"1\""),
            "{msg}"
        );
        std::fs::write(&path, "0\n").unwrap();
        write(&path, "1").unwrap();
        assert_eq!(read(&path).unwrap(), "1");
    }

    #[test]
    fn read_u64_handles_max_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pids.max");
        assert_eq!(read_u64_opt(&p).unwrap(), None);
        std::fs::write(&p, "max\n").unwrap();
        assert_eq!(read_u64_opt(&p).unwrap(), None);
        std::fs::write(&p, "42\n").unwrap();
        assert_eq!(read_u64_opt(&p).unwrap(), Some(42));
        std::fs::write(&p, "x\n").unwrap();
        assert!(read_u64_opt(&p).is_err());
    }

    #[test]
    fn subtree_lists_parents_first_and_rmdir_tolerates_missing() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        mkdir_p(&a.join("b/c")).unwrap();
        std::fs::write(a.join("cgroup.procs"), "").unwrap();
        let t = subtree(&a).unwrap();
        assert_eq!(t, vec![a.clone(), a.join("b"), a.join("b/c")]);
        rmdir(&dir.path().join("nope")).unwrap();
        assert_eq!(subtree(&dir.path().join("nope")).unwrap().len(), 1);
    }

    #[test]
    fn join_relative_paths() {
        let m = Path::new("/sys/fs/cgroup/memory");
        assert_eq!(join(m, "/"), m);
        assert_eq!(join(m, "/warden/agents"), m.join("warden/agents"));
    }
}
