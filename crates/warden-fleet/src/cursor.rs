//! Where the fleet process has got to: the last etcd revision it handled and
//! the last halt epoch. Persisted (write, fsync, rename) in its state dir so
//! that a restart watches from where it stopped and cannot miss a halt.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error("cursor {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cursor {path}: {message}")]
    Bad { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cursor {
    pub v: u32,
    /// The last revision of `P/fleet/` handled; the watch resumes after it.
    pub revision: i64,
    /// The last halt epoch handled (halted, or seen and not targeted).
    pub epoch: u64,
    /// The last resume record audited.
    pub resumed: u64,
}

impl Cursor {
    /// The file of one node's cursor.
    pub fn path(state_dir: &Path, node: &str) -> PathBuf {
        state_dir.join(format!("cursor-{node}.json"))
    }

    /// Reads the cursor; a missing file is a first start.
    pub fn load(path: &Path) -> Result<Cursor, CursorError> {
        match std::fs::read(path) {
            Ok(b) => {
                let c: Cursor = serde_json::from_slice(&b).map_err(|e| CursorError::Bad {
                    path: path.into(),
                    message: e.to_string(),
                })?;
                if c.v != 1 {
                    return Err(CursorError::Bad {
                        path: path.into(),
                        message: format!("version {}, this build reads 1", c.v),
                    });
                }
                Ok(c)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Cursor {
                v: 1,
                ..Cursor::default()
            }),
            Err(source) => Err(CursorError::Io {
                path: path.into(),
                source,
            }),
        }
    }

    /// Atomic and durable: a crash leaves the old cursor or the new one.
    pub fn store(&self, path: &Path) -> Result<(), CursorError> {
        let io = |source| CursorError::Io {
            path: path.into(),
            source,
        };
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&serde_json::to_vec(self).expect("cursor serializes"))
            .map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_and_load() {
        let d = tempfile::tempdir().unwrap();
        let p = Cursor::path(d.path(), "n1");
        let c = Cursor::load(&p).unwrap();
        assert_eq!((c.v, c.revision, c.epoch), (1, 0, 0));
        let c = Cursor {
            v: 1,
            revision: 42,
            epoch: 3,
            resumed: 2,
        };
        c.store(&p).unwrap();
        assert_eq!(Cursor::load(&p).unwrap(), c);
        std::fs::write(&p, b"{\"v\":9,\"revision\":1,\"epoch\":1,\"resumed\":0}").unwrap();
        assert!(Cursor::load(&p).is_err());
    }
}
