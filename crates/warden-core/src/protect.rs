//! Self-modification watch of the protected paths.
//!
//! [`Watch`] is [`FanWatch`] where the kernel offers fanotify (it names the
//! writer, so only an agent's change is a violation), else [`Protect`], the
//! inotify watch, which cannot tell who wrote: there any write, rename,
//! attribute change or delete of a protected path while the daemon runs is
//! a critical violation.
//!
//! inotify: each path is watched itself (modify, attributes, moved, deleted)
//! and through its directory (a new file renamed over it, it renamed away,
//! and writes to whatever file holds the name now). A replaced file is a new
//! inode: its own watch is re-armed at once (#18: writes to the new file
//! went unseen).

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

pub use crate::fanotify::{AgentCgroups, Change, FanWatch, Writer};

/// The watch in use.
pub enum Watch {
    Fanotify(FanWatch),
    /// fanotify is unavailable (the reason): inotify, unattributed.
    Inotify(Protect, String),
}

/// What the watch saw.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    /// fanotify: a change with its writer.
    Change(Change),
    /// inotify: a change by someone.
    Unattributed(Violation),
}

impl Watch {
    /// fanotify if the kernel has it, else inotify.
    pub fn new(paths: &[PathBuf], agents: AgentCgroups) -> std::io::Result<Watch> {
        match FanWatch::new(paths, agents) {
            Ok(f) => Ok(Watch::Fanotify(f)),
            Err(e) => {
                tracing::warn!("fanotify unavailable ({e}): protected paths watched with inotify; any change halts");
                Ok(Watch::Inotify(Protect::new(paths)?, e.to_string()))
            }
        }
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Watch::Fanotify(f) => f.fd(),
            Watch::Inotify(p, _) => p.fd(),
        }
    }

    pub fn read(&mut self) -> Vec<Finding> {
        match self {
            Watch::Fanotify(f) => f.read().into_iter().map(Finding::Change).collect(),
            Watch::Inotify(p, _) => p.read().into_iter().map(Finding::Unattributed).collect(),
        }
    }

    pub fn paths(&self) -> &[PathBuf] {
        match self {
            Watch::Fanotify(f) => &f.paths,
            Watch::Inotify(p, _) => &p.paths,
        }
    }

    /// For `status`: how changes are seen and attributed.
    pub fn describe(&self) -> serde_json::Value {
        match self {
            Watch::Fanotify(f) => serde_json::json!({
                "mechanism": "fanotify",
                "attribution": true,
                "permission_events": f.permission,
                "permission_error": f.permission_error,
                "paths": f.paths,
            }),
            Watch::Inotify(p, why) => serde_json::json!({
                "mechanism": "inotify",
                "attribution": false,
                "permission_events": false,
                "fanotify_error": why,
                "paths": p.paths,
                "note": "fanotify is unavailable: any change of a protected path halts, whoever made it",
            }),
        }
    }
}

pub struct Protect {
    inotify: Inotify,
    /// Watches on the files themselves.
    files: HashMap<WatchDescriptor, PathBuf>,
    /// Watches on their directories, with the names that matter in each.
    dirs: HashMap<WatchDescriptor, (PathBuf, Vec<OsString>)>,
    pub paths: Vec<PathBuf>,
}

/// What happened to which path.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub path: PathBuf,
    pub what: String,
}

/// Higher is more telling; one change raises several events (a delete is an
/// attribute change of the link count first).
fn rank(what: &str) -> u8 {
    match what {
        "deleted" | "replaced" | "renamed away" => 3,
        "written" => 2,
        "attributes changed" => 1,
        _ => 0,
    }
}

fn describe(m: EventMask) -> &'static str {
    if m.contains(EventMask::MODIFY) || m.contains(EventMask::CLOSE_WRITE) {
        "written"
    } else if m.contains(EventMask::ATTRIB) {
        "attributes changed"
    } else if m.contains(EventMask::MOVE_SELF) || m.contains(EventMask::MOVED_FROM) {
        "renamed away"
    } else if m.contains(EventMask::MOVED_TO) || m.contains(EventMask::CREATE) {
        "replaced"
    } else if m.contains(EventMask::DELETE_SELF) || m.contains(EventMask::DELETE) {
        "deleted"
    } else {
        "changed"
    }
}

impl Protect {
    /// Watches every existing path in `paths` (missing ones are skipped with a warning).
    pub fn new(paths: &[PathBuf]) -> std::io::Result<Protect> {
        let inotify = Inotify::init()?;
        let mut p = Protect {
            inotify,
            files: HashMap::new(),
            dirs: HashMap::new(),
            paths: Vec::new(),
        };
        let mut by_dir: HashMap<PathBuf, Vec<OsString>> = HashMap::new();
        for path in paths {
            let path = match std::fs::canonicalize(path) {
                Ok(c) => c,
                Err(_) => {
                    tracing::warn!(
                        "protected path {} does not exist; not watched",
                        path.display()
                    );
                    continue;
                }
            };
            if p.paths.contains(&path) {
                continue;
            }
            let wd = p.inotify.watches().add(
                &path,
                WatchMask::MODIFY
                    | WatchMask::ATTRIB
                    | WatchMask::MOVE_SELF
                    | WatchMask::DELETE_SELF,
            )?;
            p.files.insert(wd, path.clone());
            if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
                by_dir
                    .entry(dir.to_path_buf())
                    .or_default()
                    .push(name.to_owned());
            }
            p.paths.push(path);
        }
        for (dir, names) in by_dir {
            let wd = p.inotify.watches().add(
                &dir,
                WatchMask::CREATE
                    | WatchMask::MOVED_TO
                    | WatchMask::MOVED_FROM
                    | WatchMask::DELETE
                    | WatchMask::MODIFY
                    | WatchMask::ATTRIB,
            )?;
            p.dirs.insert(wd, (dir, names));
        }
        Ok(p)
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.inotify.as_fd()
    }

    /// Drains events; returns the most telling violation seen.
    pub fn read(&mut self) -> Option<Violation> {
        let mut buf = [0u8; 4096];
        let mut found = None;
        let mut rearm: Vec<PathBuf> = Vec::new();
        while let Ok(events) = self.inotify.read_events(&mut buf) {
            let mut any = false;
            for e in events {
                any = true;
                if e.mask.contains(EventMask::IGNORED) {
                    continue;
                }
                let v = if let Some(path) = self.files.get(&e.wd) {
                    Some(Violation {
                        path: path.clone(),
                        what: describe(e.mask).into(),
                    })
                } else if let Some((dir, names)) = self.dirs.get(&e.wd) {
                    let v = e
                        .name
                        .filter(|n| names.iter().any(|x| x.as_os_str() == *n))
                        .map(|n| Violation {
                            path: dir.join(n),
                            what: describe(e.mask).into(),
                        });
                    if let Some(v) = &v {
                        if e.mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
                            rearm.push(v.path.clone());
                        }
                    }
                    v
                } else {
                    None
                };
                if let Some(v) = v {
                    if found
                        .as_ref()
                        .is_none_or(|f: &Violation| rank(&v.what) > rank(&f.what))
                    {
                        found = Some(v);
                    }
                }
            }
            if !any {
                break;
            }
        }
        for path in rearm {
            self.rearm(&path);
        }
        found
    }

    /// A new inode holds a protected name: watch it itself too.
    fn rearm(&mut self, path: &Path) {
        self.files.retain(|_, p| p != path);
        match self.inotify.watches().add(
            path,
            WatchMask::MODIFY | WatchMask::ATTRIB | WatchMask::MOVE_SELF | WatchMask::DELETE_SELF,
        ) {
            Ok(wd) => {
                self.files.insert(wd, path.to_path_buf());
            }
            Err(e) => tracing::warn!("cannot re-arm the watch on {}: {e}", path.display()),
        }
    }
}

/// The paths warden always protects: its binary, its config, its unit files.
pub fn default_paths(config: &Path) -> Vec<PathBuf> {
    let mut v = vec![];
    if let Ok(exe) = std::fs::read_link("/proc/self/exe") {
        v.push(exe);
    }
    v.push(config.to_path_buf());
    for unit in [
        "/lib/systemd/system/warden.service",
        "/usr/lib/systemd/system/warden.service",
        "/etc/systemd/system/warden.service",
    ] {
        if Path::new(unit).exists() {
            v.push(unit.into());
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_after_a_replace_are_seen() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("warden.toml");
        std::fs::write(&f, b"a").unwrap();
        let mut p = Protect::new(std::slice::from_ref(&f)).unwrap();
        let t = d.path().join("new");
        std::fs::write(&t, b"b").unwrap();
        std::fs::rename(&t, &f).unwrap();
        assert_eq!(p.read().unwrap().what, "replaced");
        assert_eq!(p.read(), None);
        std::fs::write(&f, b"c").unwrap();
        assert_eq!(p.read().unwrap().what, "written");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(p.read().unwrap().what, "attributes changed");
    }

    #[test]
    fn detects_write_chmod_rename_delete_and_replace() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("policy.toml");
        let other = d.path().join("other");
        type Act<'a> = Box<dyn Fn() + 'a>;
        let cases: Vec<(&str, Act)> = vec![
            ("written", Box::new(|| std::fs::write(&f, b"x").unwrap())),
            (
                "attributes changed",
                Box::new(|| {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap()
                }),
            ),
            (
                "renamed away",
                Box::new(|| std::fs::rename(&f, d.path().join("moved")).unwrap()),
            ),
            ("deleted", Box::new(|| std::fs::remove_file(&f).unwrap())),
            (
                "replaced",
                Box::new(|| {
                    let t = d.path().join("new");
                    std::fs::write(&t, b"evil").unwrap();
                    std::fs::rename(&t, &f).unwrap();
                }),
            ),
        ];
        for (want, act) in cases {
            std::fs::write(&f, b"ok").unwrap();
            let mut p = Protect::new(std::slice::from_ref(&f)).unwrap();
            // Unrelated files in the same directory are not violations.
            std::fs::write(&other, b"fine").unwrap();
            assert_eq!(p.read(), None, "{want}");
            act();
            let v = p.read().unwrap_or_else(|| panic!("{want}: nothing seen"));
            assert_eq!(v.what, want);
            assert_eq!(v.path.file_name(), f.file_name());
        }
    }
}
