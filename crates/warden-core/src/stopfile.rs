//! The stop file: its presence halts everything, and while it exists nothing
//! starts.
//!
//! Watched with inotify on its directory (created, moved in, attributes) and on
//! the directory's parent (the directory itself created, moved or replaced),
//! and checked again with an uncached `lstat` on every turn of the main loop.

use std::path::{Path, PathBuf};

use inotify::{Inotify, WatchDescriptor, WatchMask};

#[derive(Debug, thiserror::Error)]
pub enum StopFileError {
    #[error("cannot watch stop file directory {path}: {source}")]
    Watch {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The armed placeholder next to the stop file, `DIR/.NAME.armed` (for the
/// default, `/safety/.STOP.armed`). Its own presence means nothing; moving or
/// hard-linking it to the stop file's name halts like creating the stop
/// file, and needs no new inode, so it works on a filesystem whose inodes an
/// agent has used up (`touch STOP` fails there with ENOSPC).
pub fn placeholder_path(stop: &Path) -> PathBuf {
    let name = stop
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "STOP".into());
    stop.with_file_name(format!(".{name}.armed"))
}

/// Creates the placeholder (empty, 0600, owned by the caller: root) unless
/// it exists; returns whether it created it.
pub fn arm_placeholder(stop: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    let p = placeholder_path(stop);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&p)
    {
        Ok(f) => {
            f.sync_all()?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Is something at `path`? Any answer but "no such file" counts as yes (fail closed).
pub fn present(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

pub struct StopFile {
    path: PathBuf,
    dir: PathBuf,
    inotify: Inotify,
    dir_wd: Option<WatchDescriptor>,
    parent_wd: Option<WatchDescriptor>,
    /// False once the directory watch is lost and could not be re-added.
    pub watch_alive: bool,
}

impl StopFile {
    /// Creates the directory if missing (mode 0755) and starts watching.
    pub fn new(path: &Path) -> Result<StopFile, StopFileError> {
        let dir = path.parent().expect("validated").to_path_buf();
        let err = |source| StopFileError::Watch {
            path: dir.clone(),
            source,
        };
        if !dir.exists() {
            std::fs::create_dir_all(&dir).map_err(err)?;
        }
        let inotify = Inotify::init().map_err(err)?;
        let mut s = StopFile {
            path: path.to_path_buf(),
            dir: dir.clone(),
            inotify,
            dir_wd: None,
            parent_wd: None,
            watch_alive: false,
        };
        s.rewatch().map_err(err)?;
        Ok(s)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn rewatch(&mut self) -> std::io::Result<()> {
        if let Some(parent) = self.dir.parent() {
            if self.parent_wd.is_none() {
                self.parent_wd = Some(self.inotify.watches().add(
                    parent,
                    WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::ONLYDIR,
                )?);
            }
        }
        let wd = self.inotify.watches().add(
            &self.dir,
            WatchMask::CREATE
                | WatchMask::MOVED_TO
                | WatchMask::ATTRIB
                | WatchMask::DELETE_SELF
                | WatchMask::MOVE_SELF
                | WatchMask::ONLYDIR,
        )?;
        self.dir_wd = Some(wd);
        self.watch_alive = true;
        Ok(())
    }

    /// Re-creates the directory if it is gone and watches it again. Returns
    /// true when the watch is alive.
    pub fn repair(&mut self) -> bool {
        if self.watch_alive {
            return true;
        }
        if !self.dir.is_dir() {
            if let Err(e) = std::fs::create_dir_all(&self.dir) {
                tracing::error!(
                    "cannot re-create stop file directory {}: {e}",
                    self.dir.display()
                );
                return false;
            }
        }
        self.dir_wd = None;
        match self.rewatch() {
            Ok(()) => {
                tracing::warn!("stop file watch on {} restored", self.dir.display());
                true
            }
            Err(e) => {
                tracing::error!("cannot watch {}: {e}", self.dir.display());
                false
            }
        }
    }

    /// Uncached check.
    pub fn present(&self) -> bool {
        present(&self.path)
    }

    /// Drains pending inotify events and repairs the watch if its directory
    /// was removed or replaced. Returns true if the stop file is present.
    pub fn on_readable(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        let mut lost = false;
        while let Ok(events) = self.inotify.read_events(&mut buf) {
            let mut any = false;
            for e in events {
                any = true;
                if Some(&e.wd) == self.dir_wd.as_ref()
                    && (e.mask.contains(inotify::EventMask::IGNORED)
                        || e.mask.contains(inotify::EventMask::DELETE_SELF)
                        || e.mask.contains(inotify::EventMask::MOVE_SELF))
                {
                    lost = true;
                }
            }
            if !any {
                break;
            }
        }
        if lost || !self.dir.is_dir() || self.dir_wd.is_none() {
            self.dir_wd = None;
            self.watch_alive = false;
            if self.dir.is_dir() && self.rewatch().is_ok() {
                tracing::warn!(
                    "stop file directory {} was replaced; watch re-established",
                    self.dir.display()
                );
            } else {
                tracing::error!(
                    "stop file directory {} is gone; relying on the per-turn check",
                    self.dir.display()
                );
            }
        }
        self.present()
    }

    /// The inotify instance, for the event loop.
    pub fn inotify_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.inotify.as_fd()
    }
}
