//! SAFE MODE: a latch on disk that keeps agents down after a hard halt, and a
//! running marker that reveals an unclean end (SIGKILL, crash, power loss).
//!
//! Both are written crash-safely: a temporary file, fsync, rename, fsync of the
//! directory (rename(2) is atomic; the directory fsync makes it durable).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why the host is in SAFE MODE.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Latch {
    pub version: u32,
    /// `stop_file`, `cli`, `signal`, `monitor`, `unclean_end`, ...
    pub trigger: String,
    pub reason: String,
    pub halt_id: Option<String>,
    pub set_at_ms: u64,
    /// Who caused it, when a person did.
    pub uid: Option<u32>,
}

impl Latch {
    pub fn new(trigger: &str, reason: &str, halt_id: Option<String>, uid: Option<u32>) -> Latch {
        Latch {
            version: 1,
            trigger: trigger.into(),
            reason: reason.into(),
            halt_id,
            set_at_ms: crate::clock::now_ms(),
            uid,
        }
    }
}

/// Writes `data` to `path` atomically and durably.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp: PathBuf = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("latch")
    ));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

fn remove_durable(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    std::fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

/// Sets the latch.
pub fn set(path: &Path, latch: &Latch) -> std::io::Result<()> {
    let data = serde_json::to_vec_pretty(latch).expect("latch serializes");
    write_atomic(path, &data)
}

/// Reads the latch. A latch that exists but cannot be read or parsed counts as
/// set (fail closed), with a reason that says so.
pub fn get(path: &Path) -> Option<Latch> {
    match std::fs::read(path) {
        Ok(b) => Some(serde_json::from_slice(&b).unwrap_or_else(|e| {
            Latch::new(
                "corrupt_latch",
                &format!(
                    "latch file {} is unreadable ({e}); staying in SAFE MODE",
                    path.display()
                ),
                None,
                None,
            )
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(Latch::new(
            "corrupt_latch",
            &format!(
                "cannot read latch file {}: {e}; staying in SAFE MODE",
                path.display()
            ),
            None,
            None,
        )),
    }
}

/// Clears the latch durably.
pub fn clear(path: &Path) -> std::io::Result<()> {
    remove_durable(path)
}

/// Marks the daemon as running. Returns true if the previous run did not end
/// cleanly (its marker is still there).
pub fn mark_running(marker: &Path) -> std::io::Result<bool> {
    let unclean = marker.exists();
    write_atomic(marker, format!("{}\n", std::process::id()).as_bytes())?;
    Ok(unclean)
}

/// Marks a clean end: every agent is down and the audit is closed.
pub fn mark_clean_exit(marker: &Path) -> std::io::Result<()> {
    remove_durable(marker)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latch_roundtrip_and_clear() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("safe-mode.latch");
        assert!(get(&p).is_none());
        let l = Latch::new("stop_file", "STOP touched", Some("h1".into()), Some(0));
        set(&p, &l).unwrap();
        assert_eq!(get(&p).unwrap(), l);
        clear(&p).unwrap();
        assert!(get(&p).is_none());
        clear(&p).unwrap();
    }

    #[test]
    fn corrupt_latch_fails_closed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("safe-mode.latch");
        std::fs::write(&p, b"{not json").unwrap();
        let l = get(&p).unwrap();
        assert_eq!(l.trigger, "corrupt_latch");
        assert!(l.reason.contains("unreadable"));
    }

    #[test]
    fn running_marker_detects_unclean_end() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("running");
        assert!(!mark_running(&m).unwrap());
        // Killed: marker stays.
        assert!(mark_running(&m).unwrap());
        mark_clean_exit(&m).unwrap();
        assert!(!mark_running(&m).unwrap());
    }
}
