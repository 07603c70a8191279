//! The hardware watchdog: pinged only when the machine says so (the daemon's
//! last `hb` healthy and fresh, the stop-file watch armed, cgroupfs
//! answering). If the kernel or the daemon hangs, the pings stop and the
//! machine resets; it comes back in SAFE MODE.

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// An open watchdog device, or a regular file standing in for one (tests).
#[derive(Debug)]
pub struct Watchdog {
    /// Opened once: closing /dev/watchdog without the magic 'V' does not
    /// stop it, but reopening races with other openers.
    file: std::fs::File,
    /// The path, for messages.
    path: PathBuf,
    /// A character device takes WDIOC_KEEPALIVE; a file takes a byte.
    is_device: bool,
    /// The last ping failed: say so once, not at every interval.
    failing: bool,
}

impl Watchdog {
    /// Opens the device (or creates the stand-in file).
    pub fn open(path: &Path) -> io::Result<Watchdog> {
        let is_device = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_char_device());
        let file = std::fs::OpenOptions::new()
            .write(true)
            .append(!is_device)
            .create(!is_device)
            .open(path)?;
        Ok(Watchdog {
            file,
            path: path.to_path_buf(),
            is_device,
            failing: false,
        })
    }

    /// One keepalive.
    pub fn ping(&mut self) {
        let r = if self.is_device {
            crate::sys::watchdog_keepalive(self.file.as_fd())
        } else {
            self.file.write_all(b"k")
        };
        match r {
            Ok(()) => self.failing = false,
            Err(e) if !self.failing => {
                self.failing = true;
                crate::log!("watchdog {} ping failed: {e}", self.path.display());
            }
            Err(_) => {}
        }
    }

    /// Orderly end (`clean`): the magic close 'V' disarms a driver without
    /// nowayout (with nowayout the machine resets after the timeout: that
    /// is the operator's choice).
    pub fn disarm(mut self) {
        if self.is_device {
            let _ = self.file.write_all(b"V");
        }
    }
}
