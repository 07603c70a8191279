//! Which layout the host has, and which hierarchies warden uses.
//!
//! On a real system the filesystem magic (statfs) decides; a directory that
//! is not a cgroupfs (a fake tree in a temporary directory) is judged by its
//! files: `cgroup.controllers` only exists on v2, `cgroup.procs` on both.

use std::path::{Path, PathBuf};

use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC};

use super::v1::Hierarchy;
use super::{fs, CgroupError, Controller, Layout, Result};

/// What a directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    V2,
    V1,
    Neither,
}

pub fn kind(dir: &Path) -> Kind {
    if let Ok(st) = statfs(dir) {
        let t = st.filesystem_type();
        if t == CGROUP2_SUPER_MAGIC {
            return Kind::V2;
        }
        if t == CGROUP_SUPER_MAGIC {
            return Kind::V1;
        }
    }
    if dir.join("cgroup.controllers").is_file() {
        Kind::V2
    } else if dir.join("cgroup.procs").is_file() {
        Kind::V1
    } else {
        Kind::Neither
    }
}

/// The hierarchies found under a mount directory.
#[derive(Debug)]
pub struct Detected {
    pub layout: Layout,
    /// The cgroup2 mount used: the mount itself (pure v2) or `unified`.
    pub v2: Option<PathBuf>,
    /// The v1 hierarchies carrying a controller warden uses (not on V2).
    pub v1: Vec<Hierarchy>,
}

/// Detects the layout under `mount`, or checks that `forced` is possible
/// there (V1 ignores a `unified` mount; V2 uses `unified` on a hybrid host).
pub fn detect(mount: &Path, forced: Option<Layout>) -> Result<Detected> {
    let refuse = |message: String| CgroupError::Other {
        path: mount.to_owned(),
        message,
    };
    match kind(mount) {
        Kind::V2 => {
            return match forced {
                None | Some(Layout::V2) => Ok(Detected {
                    layout: Layout::V2,
                    v2: Some(mount.to_owned()),
                    v1: Vec::new(),
                }),
                Some(other) => Err(refuse(format!(
                    "is a pure cgroup2 mount; layout {other:?} is not possible"
                ))),
            };
        }
        Kind::V1 => {
            return Err(refuse(String::from(
                "is a single v1 hierarchy; give the directory that holds the hierarchies",
            )))
        }
        Kind::Neither => {}
    }
    let v1 = v1_hierarchies(mount)?;
    let unified = mount.join("unified");
    // A read-only unified mount cannot hold agents: then the host is v1 to us.
    let unified = (kind(&unified) == Kind::V2 && !fs::is_read_only(&unified)).then_some(unified);
    let layout = match (forced, v1.is_empty(), &unified) {
        (None, false, Some(_)) | (Some(Layout::Hybrid), false, Some(_)) => Layout::Hybrid,
        (None, false, None) | (Some(Layout::V1), false, _) => Layout::V1,
        (None, true, Some(_)) | (Some(Layout::V2), _, Some(_)) => Layout::V2,
        (None, true, None) => return Err(CgroupError::NoHierarchy(mount.to_owned())),
        (Some(l), _, _) => {
            return Err(refuse(format!(
                "layout {l:?} needs {}",
                match l {
                    Layout::V1 => "a v1 controller hierarchy",
                    Layout::V2 => "a writable cgroup2 mount",
                    Layout::Hybrid => "v1 controller hierarchies and a writable unified mount",
                }
            )))
        }
    };
    Ok(match layout {
        Layout::V2 => Detected {
            layout,
            v2: unified,
            v1: Vec::new(),
        },
        Layout::Hybrid => Detected {
            layout,
            v2: unified,
            v1,
        },
        Layout::V1 => Detected {
            layout,
            v2: None,
            v1,
        },
    })
}

/// The v1 hierarchies under `mount` that carry memory, pids, cpu, cpuacct,
/// freezer or blkio. A hierarchy is named by its controllers (`memory`,
/// `cpu,cpuacct`); symlinks such as `cpu -> cpu,cpuacct` are followed and
/// co-mounts counted once. Sorted by directory.
pub fn v1_hierarchies(mount: &Path) -> Result<Vec<Hierarchy>> {
    let entries = std::fs::read_dir(mount).map_err(|source| CgroupError::Read {
        path: mount.to_owned(),
        source,
    })?;
    let mut found: Vec<(PathBuf, Vec<Controller>)> = Vec::new();
    for entry in entries.flatten() {
        let Ok(dir) = std::fs::canonicalize(entry.path()) else {
            continue;
        };
        if !dir.is_dir() || found.iter().any(|(d, _)| *d == dir) || kind(&dir) != Kind::V1 {
            continue;
        }
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
        let controllers: Vec<Controller> = name
            .as_deref()
            .unwrap_or("")
            .split(',')
            .filter_map(Controller::from_v1_name)
            .collect();
        if !controllers.is_empty() {
            found.push((dir, controllers));
        }
    }
    found.sort();
    Ok(found
        .into_iter()
        .map(|(dir, controllers)| {
            let ro = fs::is_read_only(&dir);
            Hierarchy::new(dir, controllers, ro)
        })
        .collect())
}

/// The daemon's own cgroup2 path, from the `0::PATH` line of /proc/self/cgroup.
pub fn own_v2_cgroup(proc_self_cgroup: &str) -> Option<String> {
    proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().to_owned())
}

/// Resolves the configured root: "auto" is the daemon's own v2 cgroup if it
/// is not `/` (a daemon restarted inside its old `supervisor` leaf uses its
/// parent), else `/warden`. An explicit path must be absolute and clean.
pub fn resolve_root(root: &str, own: Option<&str>) -> Result<String> {
    if root == "auto" {
        return Ok(match own {
            Some(p) if p != "/" && !p.is_empty() => match p.strip_suffix("/supervisor") {
                Some(parent) if !parent.is_empty() => parent.to_owned(),
                _ => p.to_owned(),
            },
            _ => String::from("/warden"),
        });
    }
    let bad = |why: &str| CgroupError::Other {
        path: PathBuf::from(root),
        message: format!("invalid cgroup root: {why}"),
    };
    if !root.starts_with('/') {
        return Err(bad("not absolute and not \"auto\""));
    }
    let parts: Vec<&str> = root.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return Err(bad("the hierarchy's root cannot be warden's"));
    }
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(bad("\".\" or \"..\" in the path"));
    }
    Ok(format!("/{}", parts.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cgroup_from_proc() {
        let text = "12:memory:/x\n0::/system.slice/warden.service\n";
        assert_eq!(
            own_v2_cgroup(text).as_deref(),
            Some("/system.slice/warden.service")
        );
        assert_eq!(own_v2_cgroup("4:memory:/x\n"), None);
    }

    #[test]
    fn root_resolution() {
        let own = "/system.slice/warden.service";
        assert_eq!(resolve_root("auto", Some(own)).unwrap(), own);
        assert_eq!(resolve_root("auto", Some("/")).unwrap(), "/warden");
        assert_eq!(resolve_root("auto", None).unwrap(), "/warden");
        assert_eq!(
            resolve_root("auto", Some("/system.slice/warden.service/supervisor")).unwrap(),
            "/system.slice/warden.service"
        );
        assert_eq!(resolve_root("/a//b/", None).unwrap(), "/a/b");
        assert!(resolve_root("/", None).is_err());
        assert!(resolve_root("rel", None).is_err());
        assert!(resolve_root("/a/../b", None).is_err());
    }
}
