//! `safety_events.jsonl`: one canonical JSON object a line for every safety
//! event, written after the matching chain entry is committed and fsynced
//! before `record_safety` returns.
//!
//! The file is opened `O_APPEND`, mode 0640, owned by root when warden runs
//! as root, and marked append-only (`FS_APPEND_FL`) where the filesystem
//! has inode flags. Each line carries the `seq` and chain `hash` of its audit
//! entry, so the file doubles as a file of witnessed heads for
//! `warden audit verify --against`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::sys::fsattr;

/// File name inside log_dir.
pub const SAFETY_FILE: &str = "safety_events.jsonl";

/// The open file.
#[derive(Debug)]
pub struct SafetyLog {
    /// Opened O_APPEND.
    file: File,
    /// For error messages.
    path: PathBuf,
    /// Whether FS_APPEND_FL is set (reported by `Audit::status`-like logs).
    pub append_only: bool,
}

impl SafetyLog {
    pub fn open(log_dir: &Path) -> std::io::Result<SafetyLog> {
        if !log_dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(log_dir)?;
        }
        let path = log_dir.join(SAFETY_FILE);
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(&path)?;
        // An existing file keeps the owner and mode it was created with:
        // make them root and 0640. An append-only inode refuses chown and
        // chmod, so the flag is lifted for the fix (CAP_LINUX_IMMUTABLE).
        let meta = file.metadata()?;
        let want_root = nix::unistd::geteuid().is_root() && meta.uid() != 0;
        if want_root || meta.mode() & 0o7777 != 0o640 {
            if fsattr::is_append_only(file.as_fd()).unwrap_or(false) {
                fsattr::set_append_only(file.as_fd(), false)?;
            }
            if want_root {
                nix::unistd::fchown(file.as_raw_fd(), Some(nix::unistd::Uid::from_raw(0)), None)
                    .map_err(std::io::Error::from)?;
            }
            file.set_permissions(std::fs::Permissions::from_mode(0o640))?;
        }
        let append_only = match fsattr::set_append_only(file.as_fd(), true) {
            Ok(()) => true,
            Err(e) if fsattr::is_unsupported(&e) => {
                tracing::warn!(
                    target: "audit",
                    path = %path.display(),
                    "the filesystem does not support the append-only attribute ({e}); \
                     safety_events.jsonl is protected by its mode only"
                );
                false
            }
            Err(e) => {
                tracing::warn!(
                    target: "audit",
                    path = %path.display(),
                    "cannot set the append-only attribute ({e}); \
                     safety_events.jsonl is protected by its mode only"
                );
                false
            }
        };
        Ok(SafetyLog {
            file,
            path,
            append_only,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends whole lines and fsyncs them.
    pub fn append(&mut self, lines: &[String]) -> std::io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut buf = String::new();
        for line in lines {
            buf.push_str(line);
            buf.push('\n');
        }
        // One write: O_APPEND makes it land at the end in one piece.
        self.file.write_all(buf.as_bytes())?;
        self.file.sync_data()
    }
}
