//! The SAFE MODE latch: the same file and JSON as the daemon's
//! (`src/safemode.rs` `Latch`), written crash-safely. The kernel only ever
//! creates it; an existing latch is never overwritten, so its original
//! trigger survives. Clearing it is the daemon's job on a human `resume`.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::report::json_str;

/// Is there a latch? Any answer but "no such file" counts as yes (fail closed).
pub fn exists(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(_) => true,
        Err(e) => e.kind() != io::ErrorKind::NotFound,
    }
}

/// The latch JSON, field for field as the daemon's serde writes it.
pub fn encode(trigger: &str, reason: &str, halt_id: Option<&str>, set_at_ms: u64) -> String {
    format!(
        "{{\"version\":1,\"trigger\":{},\"reason\":{},\"halt_id\":{},\"set_at_ms\":{set_at_ms},\"uid\":null}}\n",
        json_str(trigger),
        json_str(reason),
        halt_id.map_or_else(|| "null".to_string(), json_str),
    )
}

/// Writes the latch unless one exists. Returns true if it wrote.
pub fn set_if_absent(path: &Path, json: &str) -> io::Result<bool> {
    if exists(path) {
        return Ok(false);
    }
    write_atomic(path, json.as_bytes())?;
    Ok(true)
}

/// Writes `data` to `path` atomically and durably: a temporary file in the
/// same directory, fsync, rename(2) (atomic), fsync of the directory (makes
/// the rename durable).
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp: PathBuf = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let r = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latch_is_written_once_and_parses() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("safe-mode.latch");
        assert!(!exists(&p));
        let j = encode("stop_file", "a \"quoted\"\nreason", Some("h1"), 42);
        assert!(set_if_absent(&p, &j).unwrap());
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["trigger"], "stop_file");
        assert_eq!(v["reason"], "a \"quoted\"\nreason");
        assert_eq!(v["halt_id"], "h1");
        assert_eq!(v["set_at_ms"], 42);
        assert!(v["uid"].is_null());
        // Never overwritten.
        assert!(!set_if_absent(&p, &encode("daemon_died", "x", None, 1)).unwrap());
        assert!(std::fs::read_to_string(&p).unwrap().contains("stop_file"));
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
