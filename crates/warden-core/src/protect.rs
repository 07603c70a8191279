//! Self-modification watch: any write, rename, attribute change or delete of
//! a protected path while the daemon runs is a critical violation.
//!
//! Each path is watched itself (modify, attributes, moved, deleted) and through
//! its directory (a new file renamed over it, or it renamed away).

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

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
                WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::MOVED_FROM | WatchMask::DELETE,
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
                    e.name
                        .filter(|n| names.iter().any(|x| x.as_os_str() == *n))
                        .map(|n| Violation {
                            path: dir.join(n),
                            what: describe(e.mask).into(),
                        })
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
        found
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
