//! The database file, its tables, and the migrations between versions.
//!
//! The schema version is `PRAGMA user_version`; `PRAGMA application_id`
//! marks the file as warden's. Each version step is a [`Migration`] with an
//! `up` and a `down` function, applied in its own transaction together with
//! the new `user_version`, so a crash leaves the file at one version or the
//! next. Adding a table for a new feature means writing one pair of
//! functions and appending one line to [`MIGRATIONS`].

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, Transaction};

/// File name of the database inside state_dir.
pub const DB_FILE: &str = "warden.db";
/// `PRAGMA application_id` of a warden database: "WARD".
pub const APPLICATION_ID: i32 = 0x5741_5244;

/// One step between two schema versions.
pub struct Migration {
    /// The version this step leads to (`up`) or from (`down`).
    pub version: u32,
    /// What the step does, for logs.
    pub name: &'static str,
    /// From `version - 1` to `version`.
    pub up: fn(&Transaction<'_>) -> rusqlite::Result<()>,
    /// From `version` back to `version - 1`.
    pub down: fn(&Transaction<'_>) -> rusqlite::Result<()>,
}

/// Every step, in order; `MIGRATIONS[i].version == i + 1`.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "agents, credentials, authorizations, audit_log, evidence, checkpoints, system_state",
        up: v1_up,
        down: v1_down,
    },
    Migration {
        version: 2,
        name: "web_tokens",
        up: v2_up,
        down: v2_down,
    },
];

/// `warden web`'s API tokens: only the SHA-256 of each secret is kept.
fn v2_up(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE web_tokens (
            name TEXT PRIMARY KEY,
            role TEXT NOT NULL,
            sha256 TEXT NOT NULL UNIQUE,
            created_at_ms INTEGER NOT NULL,
            created_by_uid INTEGER,
            expires_at_ms INTEGER,
            revoked_at_ms INTEGER
        );",
    )
}

fn v2_down(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch("DROP TABLE web_tokens;")
}

/// The schema version this build writes.
pub fn latest_version() -> u32 {
    MIGRATIONS.len() as u32
}

fn v1_up(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "
        CREATE TABLE agents (
            name        TEXT PRIMARY KEY,
            created_ms  INTEGER NOT NULL,
            config      TEXT
        );
        CREATE TABLE credentials (
            id          TEXT PRIMARY KEY,
            agent       TEXT,
            kind        TEXT NOT NULL,
            created_ms  INTEGER NOT NULL,
            data        TEXT NOT NULL
        );
        CREATE TABLE authorizations (
            id          TEXT PRIMARY KEY,
            kind        TEXT NOT NULL,
            created_ms  INTEGER NOT NULL,
            payload     TEXT NOT NULL,
            signature   TEXT NOT NULL
        );
        CREATE TABLE audit_log (
            seq         INTEGER PRIMARY KEY,
            timestamp   INTEGER NOT NULL,
            kind        TEXT NOT NULL,
            agent       TEXT,
            uid         INTEGER,
            data        TEXT NOT NULL,
            prev_hash   TEXT NOT NULL,
            hash        TEXT NOT NULL
        );
        CREATE INDEX audit_log_kind ON audit_log(kind);
        CREATE TABLE evidence (
            id          TEXT PRIMARY KEY,
            halt_id     TEXT NOT NULL,
            timestamp   INTEGER NOT NULL,
            sha256      TEXT NOT NULL,
            key_id      TEXT NOT NULL,
            signature   TEXT NOT NULL,
            data        TEXT NOT NULL
        );
        CREATE INDEX evidence_halt ON evidence(halt_id);
        CREATE TABLE checkpoints (
            seq         INTEGER PRIMARY KEY,
            hash        TEXT NOT NULL,
            timestamp   INTEGER NOT NULL,
            host        TEXT NOT NULL,
            machine_id  TEXT NOT NULL,
            key_id      TEXT NOT NULL,
            signature   TEXT NOT NULL
        );
        CREATE TABLE system_state (
            key         TEXT PRIMARY KEY,
            value       TEXT NOT NULL
        );
        -- Defence in depth against a bug elsewhere in the daemon: the chain,
        -- its checkpoints and the evidence are insert-only. (Whoever can
        -- drop a trigger can also edit the file; verify catches that.)
        CREATE TRIGGER audit_log_append_only_u BEFORE UPDATE ON audit_log
            BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
        CREATE TRIGGER audit_log_append_only_d BEFORE DELETE ON audit_log
            BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
        CREATE TRIGGER checkpoints_append_only_u BEFORE UPDATE ON checkpoints
            BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
        CREATE TRIGGER checkpoints_append_only_d BEFORE DELETE ON checkpoints
            BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
        CREATE TRIGGER evidence_append_only_u BEFORE UPDATE ON evidence
            BEGIN SELECT RAISE(ABORT, 'evidence is append-only'); END;
        CREATE TRIGGER evidence_append_only_d BEFORE DELETE ON evidence
            BEGIN SELECT RAISE(ABORT, 'evidence is append-only'); END;
        ",
    )
}

fn v1_down(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "
        DROP TABLE system_state;
        DROP TABLE checkpoints;
        DROP TABLE evidence;
        DROP TABLE audit_log;
        DROP TABLE authorizations;
        DROP TABLE credentials;
        DROP TABLE agents;
        ",
    )
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("{path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("{path}: schema version {found} is newer than this warden understands ({latest})")]
    TooNew {
        path: PathBuf,
        found: u32,
        latest: u32,
    },
    #[error("{path}: not a warden database (application_id {found:#x})")]
    NotWarden { path: PathBuf, found: i32 },
}

pub fn user_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

pub fn application_id(conn: &Connection) -> rusqlite::Result<i32> {
    conn.query_row("PRAGMA application_id", [], |r| r.get(0))
}

/// Brings the schema to `target` (up or down), one step per transaction.
pub fn migrate_to(conn: &mut Connection, target: u32) -> rusqlite::Result<()> {
    let mut current = user_version(conn)?;
    while current < target {
        let step = &MIGRATIONS[current as usize];
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        (step.up)(&tx)?;
        tx.pragma_update(None, "user_version", step.version)?;
        tx.commit()?;
        tracing::info!(target: "audit", version = step.version, name = step.name, "migrated database up");
        current = step.version;
    }
    while current > target {
        let step = &MIGRATIONS[current as usize - 1];
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        (step.down)(&tx)?;
        tx.pragma_update(None, "user_version", step.version - 1)?;
        tx.commit()?;
        tracing::info!(target: "audit", version = step.version - 1, name = step.name, "migrated database down");
        current = step.version - 1;
    }
    Ok(())
}

/// Opens (creating if needed) the database for the writer: WAL,
/// `synchronous=FULL`, migrated to the latest version.
///
/// FULL rather than NORMAL: in WAL mode NORMAL does not fsync the WAL at
/// commit, so an acknowledged event could vanish on power loss; FULL makes
/// every commit durable before `record` returns, and group commit makes the
/// fsync per batch rather than per event.
pub fn open_writer(path: &Path) -> Result<Connection, SchemaError> {
    let err = |source| SchemaError::Sqlite {
        path: path.to_owned(),
        source,
    };
    // Create the file 0600 ourselves: SQLite would use 0644 minus umask, and
    // the database holds credentials. Its -wal and -shm files copy its mode.
    if !path.exists() {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
    }
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    if conn
        .is_readonly(rusqlite::DatabaseName::Main)
        .map_err(err)?
    {
        return Err(err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY),
            Some("database opened read-only (read-only filesystem?)".into()),
        )));
    }
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(err)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(format!("cannot switch to WAL journal mode (got {mode})")),
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(err)?;
    let found_app = application_id(&conn).map_err(err)?;
    let found = user_version(&conn).map_err(err)?;
    if found_app != APPLICATION_ID && !(found_app == 0 && found == 0) {
        return Err(SchemaError::NotWarden {
            path: path.to_owned(),
            found: found_app,
        });
    }
    if found > latest_version() {
        return Err(SchemaError::TooNew {
            path: path.to_owned(),
            found,
            latest: latest_version(),
        });
    }
    if found_app == 0 {
        conn.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(err)?;
    }
    migrate_to(&mut conn, latest_version()).map_err(err)?;
    Ok(conn)
}

/// A read-only connection, and the private copy it reads when it needs one.
pub struct ReadOnlyDb {
    /// The connection (declared first: dropped before the copy).
    conn: Connection,
    /// Temporary directory holding a copy, removed on drop.
    copy: Option<PathBuf>,
}

impl std::ops::Deref for ReadOnlyDb {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl Drop for ReadOnlyDb {
    fn drop(&mut self) {
        if let Some(dir) = self.copy.take() {
            // Close first: SQLite still has the copy's files open.
            let conn = std::mem::replace(
                &mut self.conn,
                Connection::open_in_memory().expect("an in-memory database opens"),
            );
            drop(conn);
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Opens the database read-only for `audit verify`, `tail`, `show` and
/// `casepack export`, without creating or changing any file beside it, in
/// one read transaction (a consistent snapshot) that lasts until drop.
///
/// - No `-wal` file (cleanly closed, or a copy of one): opened
///   `immutable=1`, so SQLite takes no locks and creates no `-shm`.
/// - `-wal` and `-shm` (a live daemon, or an unclean end): the WAL holds
///   committed entries, so it is opened `mode=ro`; SQLite reads the WAL
///   through the existing `-shm` index and writes neither.
/// - `-wal` without `-shm` (a copy taken without it): SQLite would create
///   a `-shm`, so the database and WAL are copied to a private temporary
///   directory (removed again on drop) and read there.
pub fn open_read_only(path: &Path) -> Result<ReadOnlyDb, SchemaError> {
    let err = |source| SchemaError::Sqlite {
        path: path.to_owned(),
        source,
    };
    if !path.is_file() {
        return Err(err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
            Some("no such database file".into()),
        )));
    }
    let side = |suffix: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    let (wal, shm) = (side("-wal"), side("-shm"));
    let (uri, copy) = if !wal.exists() {
        (format!("file:{}?mode=ro&immutable=1", uri_path(path)), None)
    } else if shm.exists() {
        (format!("file:{}?mode=ro", uri_path(path)), None)
    } else {
        let dir = private_copy(path, &wal).map_err(|e| {
            err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                Some(format!("cannot copy the database to read its WAL: {e}")),
            ))
        })?;
        let uri = format!("file:{}?mode=ro", uri_path(&dir.join(DB_FILE)));
        (uri, Some(dir))
    };
    let opened = Connection::open_with_flags(
        &uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    );
    let conn = match opened {
        Ok(c) => ReadOnlyDb { conn: c, copy },
        Err(e) => {
            if let Some(dir) = copy {
                let _ = std::fs::remove_dir_all(dir);
            }
            return Err(err(e));
        }
    };
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(err)?;
    let found_app = application_id(&conn).map_err(err)?;
    if found_app != APPLICATION_ID {
        return Err(SchemaError::NotWarden {
            path: path.to_owned(),
            found: found_app,
        });
    }
    let found = user_version(&conn).map_err(err)?;
    if found > latest_version() {
        return Err(SchemaError::TooNew {
            path: path.to_owned(),
            found,
            latest: latest_version(),
        });
    }
    // One read transaction for the connection's life: every query sees the
    // same snapshot, so a live writer committing meanwhile cannot make the
    // head record and the entries disagree.
    conn.execute_batch("BEGIN; SELECT count(*) FROM sqlite_master;")
        .map_err(err)?;
    Ok(conn)
}

/// Copies the database and its WAL into a new 0700 temporary directory.
fn private_copy(db: &Path, wal: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!("warden-verify-{}", crate::crypto::random_hex(8)));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let copied = std::fs::copy(db, dir.join(DB_FILE))
        .and_then(|_| std::fs::copy(wal, dir.join(format!("{DB_FILE}-wal"))));
    if let Err(e) = copied {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    Ok(dir)
}

/// Percent-encodes the characters that mean something in an SQLite URI.
fn uri_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for &b in path.as_os_str().as_bytes() {
        match b {
            b'%' | b'?' | b'#' | b'&' | b'=' | b'+' | b' ' | 0x80..=0xff | 0..=0x1f => {
                out.push_str(&format!("%{b:02X}"))
            }
            _ => out.push(b as char),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "{}", m.name);
        }
    }

    #[test]
    fn migrations_go_up_down_and_up_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let mut conn = open_writer(&path).unwrap();
        assert_eq!(user_version(&conn).unwrap(), latest_version());
        migrate_to(&mut conn, 0).unwrap();
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type='table'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 0);
        migrate_to(&mut conn, latest_version()).unwrap();
        for t in [
            "agents",
            "credentials",
            "authorizations",
            "audit_log",
            "evidence",
            "checkpoints",
            "system_state",
        ] {
            conn.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap();
        }
    }

    #[test]
    fn refuses_foreign_and_newer_databases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch("PRAGMA application_id = 7; CREATE TABLE t(x);")
                .unwrap();
        }
        assert!(matches!(
            open_writer(&path),
            Err(SchemaError::NotWarden { .. })
        ));
        assert!(matches!(
            open_read_only(&path),
            Err(SchemaError::NotWarden { .. })
        ));
        let path = dir.path().join(DB_FILE);
        {
            let c = open_writer(&path).unwrap();
            c.pragma_update(None, "user_version", latest_version() + 1)
                .unwrap();
        }
        assert!(matches!(
            open_writer(&path),
            Err(SchemaError::TooNew { .. })
        ));
    }

    #[test]
    fn uri_path_escapes() {
        assert_eq!(uri_path(Path::new("/a b/c?d#e%")), "/a%20b/c%3Fd%23e%25");
    }
}
