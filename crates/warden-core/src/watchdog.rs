//! Proof of life: systemd's `WATCHDOG=1` and a hardware watchdog, pinged only
//! while every health check passes. If warden hangs or loses control, the
//! pings stop and the machine resets; it comes back in SAFE MODE.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::WatchdogConfig;

/// The health checks that gate every ping.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Health {
    /// The main loop turned within the last interval.
    pub main_loop: bool,
    /// The stop file directory is watched.
    pub stop_file_watch: bool,
    /// The audit writer is healthy.
    pub audit: bool,
    /// cgroupfs answered a read of the agents' cgroup.
    pub cgroupfs: bool,
    /// The self-modification watch is in place.
    pub protect_watch: bool,
    /// The safety kernel runs.
    pub kernel: bool,
}

impl Health {
    pub fn ok(&self) -> bool {
        self.main_loop
            && self.stop_file_watch
            && self.audit
            && self.cgroupfs
            && self.protect_watch
            && self.kernel
    }
    /// Names of the failing checks.
    pub fn failing(&self) -> Vec<&'static str> {
        let mut v = vec![];
        for (ok, name) in [
            (self.main_loop, "main_loop"),
            (self.stop_file_watch, "stop_file_watch"),
            (self.audit, "audit"),
            (self.cgroupfs, "cgroupfs"),
            (self.protect_watch, "protect_watch"),
            (self.kernel, "kernel"),
        ] {
            if !ok {
                v.push(name);
            }
        }
        v
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    #[error("cannot open watchdog {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set watchdog timeout on {path}: {source}")]
    Timeout { path: PathBuf, source: nix::Error },
}

/// A hardware watchdog device, or a stand-in file (tests) where the ioctls
/// answer ENOTTY and each ping is written as a byte instead.
#[derive(Debug)]
pub struct Hardware {
    file: Option<std::fs::File>,
    path: PathBuf,
    is_device: bool,
    nowayout: bool,
    pub pings: u64,
}

impl Hardware {
    pub fn open(cfg: &WatchdogConfig) -> Result<Hardware, WatchdogError> {
        let path = cfg.device.clone();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .append(!is_char_device(&path))
            .create(!path.exists())
            .open(&path)
            .map_err(|source| WatchdogError::Open {
                path: path.clone(),
                source,
            })?;
        let secs = cfg.timeout.0.as_secs().clamp(1, i32::MAX as u64) as i32;
        let is_device = match crate::sys::watchdog::set_timeout(&file, secs) {
            Ok(set) => {
                if set != secs {
                    tracing::warn!(
                        "watchdog {}: asked for {secs}s, driver set {set}s",
                        path.display()
                    );
                }
                true
            }
            Err(nix::Error::ENOTTY) | Err(nix::Error::EINVAL) if !is_char_device(&path) => false,
            Err(source) => return Err(WatchdogError::Timeout { path, source }),
        };
        Ok(Hardware {
            file: Some(file),
            path,
            is_device,
            nowayout: cfg.nowayout,
            pings: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn ping(&mut self) {
        let Some(f) = self.file.as_mut() else { return };
        let r = if self.is_device {
            crate::sys::watchdog::keepalive(f).map_err(std::io::Error::from)
        } else {
            f.write_all(b"k")
        };
        match r {
            Ok(()) => self.pings += 1,
            Err(e) => tracing::error!("watchdog {} ping failed: {e}", self.path.display()),
        }
    }

    /// Orderly exit: disarm with the magic close, unless `nowayout`.
    pub fn close_orderly(mut self) {
        if let Some(mut f) = self.file.take() {
            if !self.nowayout {
                let _ = f.write_all(b"V");
            }
        }
    }
}

impl Drop for Hardware {
    fn drop(&mut self) {
        // Closing without the magic character leaves the watchdog armed.
        self.file.take();
    }
}

fn is_char_device(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(p)
        .map(|m| m.file_type().is_char_device())
        .unwrap_or(false)
}

/// Both watchdogs, and when to ping next.
#[derive(Debug)]
pub struct Pinger {
    pub hardware: Option<Hardware>,
    /// systemd's WatchdogSec, halved.
    systemd: Option<Duration>,
    interval: Duration,
    next: Instant,
    /// Health at the last decision, for status.
    pub last: Health,
}

impl Pinger {
    pub fn new(hardware: Option<Hardware>, hw_interval: Option<Duration>) -> Pinger {
        let mut usec = 0;
        let systemd =
            sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2));
        let interval = [hw_interval, systemd]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(Duration::from_secs(1));
        Pinger {
            hardware,
            systemd,
            interval,
            next: Instant::now(),
            last: Health::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.hardware.is_some() || self.systemd.is_some()
    }

    pub fn next(&self) -> Instant {
        self.next
    }

    /// Pings both watchdogs if `health` is fully good and a ping is due.
    /// Returns true if it pinged.
    pub fn tick(&mut self, health: Health, now: Instant) -> bool {
        let ok = health.ok();
        if !ok && self.last.ok() {
            tracing::error!(
                "health check failing ({}): watchdog pings stopped",
                health.failing().join(", ")
            );
        }
        self.last = health;
        if now < self.next {
            return false;
        }
        self.next = now + self.interval;
        if !ok {
            return false;
        }
        if let Some(h) = self.hardware.as_mut() {
            h.ping();
        }
        if self.systemd.is_some() {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Health {
        Health {
            main_loop: true,
            stop_file_watch: true,
            audit: true,
            cgroupfs: true,
            protect_watch: true,
            kernel: true,
        }
    }

    #[test]
    fn stand_in_records_pings_and_magic_close() {
        let d = tempfile::tempdir().unwrap();
        let dev = d.path().join("watchdog");
        let cfg = WatchdogConfig {
            device: dev.clone(),
            timeout: crate::config::Dur(Duration::from_secs(30)),
            interval: None,
            nowayout: false,
        };
        let hw = Hardware::open(&cfg).unwrap();
        let mut p = Pinger::new(Some(hw), Some(Duration::from_millis(100)));
        let t0 = Instant::now();
        assert!(p.tick(healthy(), t0));
        assert!(!p.tick(healthy(), t0), "not due yet");
        assert!(p.tick(healthy(), t0 + Duration::from_millis(100)));
        p.hardware.take().unwrap().close_orderly();
        assert_eq!(std::fs::read(&dev).unwrap(), b"kkV");
    }

    #[test]
    fn each_failing_check_stops_pings() {
        let d = tempfile::tempdir().unwrap();
        let dev = d.path().join("watchdog");
        let cfg = WatchdogConfig {
            device: dev.clone(),
            timeout: crate::config::Dur(Duration::from_secs(30)),
            interval: None,
            nowayout: true,
        };
        let mut p = Pinger::new(
            Some(Hardware::open(&cfg).unwrap()),
            Some(Duration::from_millis(10)),
        );
        let mut t = Instant::now();
        for i in 0..5 {
            let mut h = healthy();
            match i {
                0 => h.main_loop = false,
                1 => h.stop_file_watch = false,
                2 => h.audit = false,
                3 => h.cgroupfs = false,
                _ => h.protect_watch = false,
            }
            assert!(
                !p.tick(h.clone(), t),
                "pinged with {:?} failing",
                h.failing()
            );
            t += Duration::from_millis(10);
        }
        assert!(p.tick(healthy(), t));
        // nowayout: no magic close.
        p.hardware.take().unwrap().close_orderly();
        assert_eq!(std::fs::read(&dev).unwrap(), b"k");
    }
}
