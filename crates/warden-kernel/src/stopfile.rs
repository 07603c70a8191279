//! The stop file: its presence halts everything.
//!
//! Two independent ways to see it, so that neither a lost inotify event nor
//! a stalled timer can hide it: inotify on its directory (IN_CREATE,
//! IN_MOVED_TO, IN_ATTRIB, IN_DELETE_SELF, IN_MOVE_SELF) and on the
//! directory's parent (the directory created, moved or deleted), and an
//! uncached lstat(2) on a 50 ms timer. Fail closed: any lstat answer but
//! ENOENT means present; a directory that is gone or is not a real directory
//! (replaced by a symlink) means present; a watch that cannot be re-armed
//! means present.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags as F, InitFlags, Inotify, WatchDescriptor};

/// The answer of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    /// The stop file is present, or cannot be proven absent.
    pub present: bool,
    /// Both inotify watches are in place.
    pub armed: bool,
}

/// The stop file and its watches.
#[derive(Debug)]
pub struct StopFile {
    /// The stop file.
    path: PathBuf,
    /// Its directory, watched for the file.
    dir: PathBuf,
    /// The directory's parent, watched for the directory.
    parent: PathBuf,
    /// The inotify instance (non-blocking), polled by the loop.
    ino: Inotify,
    /// Watches on `dir` and `parent` while armed.
    wds: Vec<WatchDescriptor>,
    /// The last (re)arm failed; say so once per failure, not every tick.
    said_unarmed: bool,
}

/// lstat: anything but ENOENT counts as there.
fn lstat_present(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(_) => true,
        Err(e) => e.kind() != io::ErrorKind::NotFound,
    }
}

/// lstat: a real directory (not a symlink to one).
fn real_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_dir())
}

impl StopFile {
    /// Creates the inotify instance and arms the watches. Only the inotify
    /// instance itself is fatal; a watch that cannot be armed is reported by
    /// [`StopFile::check`] as present.
    pub fn new(path: &Path) -> io::Result<StopFile> {
        let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        let parent = dir.parent().unwrap_or(Path::new("/")).to_path_buf();
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        let mut s = StopFile {
            path: path.to_path_buf(),
            dir,
            parent,
            ino,
            wds: Vec::new(),
            said_unarmed: false,
        };
        s.rearm();
        Ok(s)
    }

    /// The descriptor the loop polls.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.ino.as_fd()
    }

    /// Drops the watches and adds them again. True when armed.
    fn rearm(&mut self) -> bool {
        for wd in self.wds.drain(..) {
            // EINVAL: the kernel already dropped it (IN_IGNORED).
            let _ = self.ino.rm_watch(wd);
        }
        let dir_mask = F::IN_CREATE
            | F::IN_MOVED_TO
            | F::IN_ATTRIB
            | F::IN_DELETE_SELF
            | F::IN_MOVE_SELF
            | F::IN_ONLYDIR
            | F::IN_DONT_FOLLOW;
        let parent_mask =
            F::IN_CREATE | F::IN_MOVED_TO | F::IN_MOVED_FROM | F::IN_DELETE | F::IN_ONLYDIR;
        let r = self.ino.add_watch(&self.parent, parent_mask).and_then(|p| {
            self.wds.push(p);
            // IN_DONT_FOLLOW | IN_ONLYDIR: a symlink in place of the
            // directory fails with ENOTDIR instead of being followed.
            self.ino.add_watch(&self.dir, dir_mask)
        });
        match r {
            Ok(wd) if real_dir(&self.dir) => {
                self.wds.push(wd);
                if self.said_unarmed {
                    crate::log!("stop file watch on {} re-armed", self.dir.display());
                }
                self.said_unarmed = false;
                true
            }
            r => {
                if let Ok(wd) = r {
                    self.wds.push(wd);
                }
                if !self.said_unarmed {
                    let why = r
                        .err()
                        .map_or("not a real directory".to_string(), |e| e.to_string());
                    crate::log!(
                        "cannot watch stop file directory {} ({why}): treating the stop file as present",
                        self.dir.display()
                    );
                }
                self.said_unarmed = true;
                false
            }
        }
    }

    /// Drains inotify. Re-arms on IN_Q_OVERFLOW, on a watch the kernel
    /// dropped, and whenever the parent reports a change (the directory may
    /// have been replaced). Then checks.
    pub fn on_readable(&mut self) -> Check {
        let mut rearm = false;
        loop {
            match self.ino.read_events() {
                Ok(evs) if !evs.is_empty() => {
                    for e in evs {
                        if e.mask.contains(F::IN_Q_OVERFLOW) {
                            crate::log!(
                                "inotify queue overflow: re-checking the stop file and re-arming"
                            );
                            rearm = true;
                        }
                        // Events of watches we removed ourselves (their
                        // IN_IGNORED) are not news: re-arming on them
                        // would loop forever.
                        let Some(i) = self.wds.iter().position(|w| *w == e.wd) else {
                            continue;
                        };
                        let dropped = e
                            .mask
                            .intersects(F::IN_IGNORED | F::IN_DELETE_SELF | F::IN_MOVE_SELF);
                        // On the parent, only our directory's own name matters.
                        let ours = i == 0 && e.name.as_deref() == self.dir.file_name();
                        rearm |= dropped || ours;
                    }
                }
                Ok(_) | Err(Errno::EAGAIN) => break,
                Err(e) => {
                    crate::log!("cannot read inotify events: {e}; re-arming");
                    rearm = true;
                    break;
                }
            }
        }
        if rearm {
            self.rearm();
        }
        self.check()
    }

    /// The uncached check (the timer's, and after every inotify wake-up).
    /// A watch that is not armed is re-armed first.
    pub fn check(&mut self) -> Check {
        let armed = self.wds.len() == 2 && real_dir(&self.dir) || self.rearm();
        let present = !real_dir(&self.dir) || lstat_present(&self.path);
        Check {
            present: present || !armed,
            armed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_absent_removed_symlinked() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("safety");
        std::fs::create_dir(&dir).unwrap();
        let stop = dir.join("STOP");
        let mut s = StopFile::new(&stop).unwrap();
        assert_eq!(
            s.check(),
            Check {
                present: false,
                armed: true
            }
        );
        std::fs::write(&stop, b"").unwrap();
        assert!(s.on_readable().present);
        std::fs::remove_file(&stop).unwrap();
        assert_eq!(
            s.on_readable(),
            Check {
                present: false,
                armed: true
            }
        );
        // Directory removed: present, unarmed.
        std::fs::remove_dir(&dir).unwrap();
        assert_eq!(
            s.on_readable(),
            Check {
                present: true,
                armed: false
            }
        );
        // Back again: absent, armed.
        std::fs::create_dir(&dir).unwrap();
        assert_eq!(
            s.check(),
            Check {
                present: false,
                armed: true
            }
        );
        // Replaced by a symlink to an empty directory: present.
        std::fs::remove_dir(&dir).unwrap();
        let other = d.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::os::unix::fs::symlink(&other, &dir).unwrap();
        assert!(s.on_readable().present);
        assert!(s.check().present);
        // Back to a real directory: re-arming settles (the IN_IGNORED of
        // our own rm_watch must not re-arm again, forever).
        std::fs::remove_file(&dir).unwrap();
        std::fs::create_dir(&dir).unwrap();
        assert_eq!(
            s.on_readable(),
            Check {
                present: false,
                armed: true
            }
        );
        s.on_readable();
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [PollFd::new(s.fd(), PollFlags::POLLIN)];
        assert_eq!(
            poll(&mut fds, PollTimeout::ZERO).unwrap(),
            0,
            "inotify keeps firing"
        );
    }

    #[test]
    fn missing_directory_at_start_is_present() {
        let d = tempfile::tempdir().unwrap();
        let mut s = StopFile::new(&d.path().join("nope/STOP")).unwrap();
        assert_eq!(
            s.check(),
            Check {
                present: true,
                armed: false
            }
        );
    }
}
