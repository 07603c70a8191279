//! Agent credentials that warden can revoke at once (kill level 1).
//!
//! `warden cred issue AGENT --kind api-key|oauth|service --name NAME` makes a
//! random 32-byte secret, prints it once as `wdn_<kind>_<64 hex digits>` and
//! stores only its SHA-256. Services the agent calls check the token with
//! `verify` (through the daemon); revoking makes it fail immediately. An
//! optional per-credential `revoke_command` tells an outside provider too.
//!
//! Storage: a JSON file, `state_dir/killswitch/credentials.json` (mode 0600),
//! rewritten atomically and durably on every change: `{"version":1,
//! "credentials":[...]}` ([`encode`]/[`decode`]). A file of its own rather
//! than a table in `warden.db`, so this module stays pure and testable without
//! the daemon's database; there are few credentials, so rewriting is cheap.
//!
//! The secret reaches the agent as a file in a per-agent tmpfs directory
//! ([`materialize`]), named after the credential, mode 0400, owned by the
//! agent's user; the daemon puts the directory's path in the agent's
//! environment as [`ENV_DIR`]. Since only digests are stored, a secret cannot
//! be written again after a daemon restart: reissue it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// Version of the persisted file.
pub const VERSION: u32 = 1;
/// The agent's environment variable naming its credentials directory.
pub const ENV_DIR: &str = "WARDEN_CREDENTIALS_DIR";
/// Bytes of randomness in a secret.
const SECRET_BYTES: usize = 32;
/// Hex digits of the digest that `list()` shows: enough to tell credentials
/// apart, too few to matter.
const DIGEST_SHOWN: usize = 8;
/// Stderr of a revoke command kept for the audit.
const STDERR_MAX: usize = 4096;

/// What a credential is for; shown in the token's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    ApiKey,
    Oauth,
    Service,
}

impl Kind {
    /// The `--kind` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ApiKey => "api-key",
            Kind::Oauth => "oauth",
            Kind::Service => "service",
        }
    }

    /// The tag in the token: no `_`, so the token splits unambiguously.
    fn tag(self) -> &'static str {
        match self {
            Kind::ApiKey => "apikey",
            Kind::Oauth => "oauth",
            Kind::Service => "service",
        }
    }

    fn from_tag(tag: &str) -> Option<Kind> {
        [Kind::ApiKey, Kind::Oauth, Kind::Service]
            .into_iter()
            .find(|k| k.tag() == tag)
    }
}

impl std::str::FromStr for Kind {
    type Err = CredError;
    fn from_str(s: &str) -> Result<Kind, CredError> {
        [Kind::ApiKey, Kind::Oauth, Kind::Service]
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| CredError::Invalid(format!("kind {s:?}: use api-key, oauth or service")))
    }
}

/// A secret token. Its `Debug` is redacted so it cannot leak through logs.
pub struct Secret(String);

impl Secret {
    /// The token, to print once or to [`materialize`].
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The stored record of a credential.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// `cred-` and 12 hex digits.
    pub id: String,
    pub agent: String,
    pub kind: Kind,
    /// The file name under the agent's credentials directory.
    pub name: String,
    /// Hex SHA-256 of the whole token: all that is kept of the secret.
    pub sha256: String,
    pub created_at_ms: u64,
    /// Set once, when revoked; a revoked credential never verifies again.
    pub revoked_at_ms: Option<u64>,
    /// Run at level 1 to revoke it at its provider too (argv, no shell).
    pub revoke_command: Option<Vec<String>>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The full digest is kept out of logs: it is what verify compares.
        self.info().fmt(f)
    }
}

impl Credential {
    /// The public view.
    pub fn info(&self) -> CredentialInfo {
        CredentialInfo {
            id: self.id.clone(),
            agent: self.agent.clone(),
            kind: self.kind,
            name: self.name.clone(),
            digest_prefix: self.sha256.chars().take(DIGEST_SHOWN).collect(),
            created_at_ms: self.created_at_ms,
            revoked_at_ms: self.revoked_at_ms,
            has_revoke_command: self.revoke_command.is_some(),
        }
    }
}

/// What `list()`, `verify()` and the CLI show: no secret, no full digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialInfo {
    pub id: String,
    pub agent: String,
    pub kind: Kind,
    pub name: String,
    /// The first 8 hex digits of the digest, to match a token to a record.
    pub digest_prefix: String,
    pub created_at_ms: u64,
    pub revoked_at_ms: Option<u64>,
    pub has_revoke_command: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CredError {
    #[error("invalid credential: {0}")]
    Invalid(String),
    #[error("agent {agent} already has an active credential named {name}")]
    Duplicate { agent: String, name: String },
    #[error("no credential {0}")]
    Unknown(String),
    #[error("failed to {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("not a warden credential token")]
    Malformed,
    #[error("unknown credential")]
    Unknown,
    #[error("credential {id} was revoked")]
    Revoked { id: String },
}

pub fn encode(creds: &[Credential]) -> Vec<u8> {
    super::encode_list(VERSION, "credentials", creds)
}

/// Parses [`encode`]'s output; any other version is refused.
pub fn decode(bytes: &[u8]) -> Result<Vec<Credential>, String> {
    let creds: Vec<Credential> = super::decode_list(bytes, VERSION, "credentials")?;
    for c in &creds {
        if hex_digest(&c.sha256).is_none() {
            return Err(format!("credential {} has a malformed digest", c.id));
        }
    }
    Ok(creds)
}

fn hex_digest(s: &str) -> Option<[u8; 32]> {
    warden_core::crypto::decode_hex_lower(s)?.try_into().ok()
}

/// Compares two digests in time independent of where they differ, so a
/// caller probing tokens learns nothing from the timing of a refusal.
pub fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    #[cfg(test)]
    tests::CT_CALLS.with(|c| c.set(c.get() + 1));
    a.ct_eq(b).into()
}

/// A name is a file name in the agent's directory: keep it plain.
fn check_name(name: &str) -> Result<(), CredError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(CredError::Invalid(format!(
            "name {name:?}: use 1-64 of A-Z a-z 0-9 . _ - (not starting with .)"
        )))
    }
}

/// The credentials of this host, backed by their file.
#[derive(Debug)]
pub struct CredentialStore {
    path: PathBuf,
    /// By id.
    creds: BTreeMap<String, Credential>,
}

impl CredentialStore {
    /// Loads `path`; a missing file is an empty store, a corrupt one an error
    /// (a guessed store could let a revoked credential verify again).
    pub fn open(path: &Path) -> Result<CredentialStore, CredError> {
        let creds = match std::fs::read(path) {
            Ok(b) => decode(&b).map_err(|message| CredError::Corrupt {
                path: path.into(),
                message,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(CredError::Io {
                    op: "read",
                    path: path.into(),
                    source,
                })
            }
        };
        Ok(CredentialStore {
            path: path.into(),
            creds: creds.into_iter().map(|c| (c.id.clone(), c)).collect(),
        })
    }

    /// Persists `next` and only then makes it the store's state.
    fn commit(&mut self, next: BTreeMap<String, Credential>) -> Result<(), CredError> {
        let io = |op, path: &Path| {
            let path = path.to_owned();
            move |source| CredError::Io { op, path, source }
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io("create directory", dir))?;
        }
        let all: Vec<Credential> = next.values().cloned().collect();
        super::write_durable(&self.path, &encode(&all), 0o600).map_err(io("write", &self.path))?;
        self.creds = next;
        Ok(())
    }

    /// Issues a credential; the returned secret exists nowhere else.
    pub fn issue(
        &mut self,
        agent: &str,
        kind: Kind,
        name: &str,
        revoke_command: Option<Vec<String>>,
        now_ms: u64,
    ) -> Result<(CredentialInfo, Secret), CredError> {
        check_name(name)?;
        if agent.is_empty() {
            return Err(CredError::Invalid("empty agent name".into()));
        }
        if revoke_command.as_ref().is_some_and(|c| c.is_empty()) {
            return Err(CredError::Invalid("empty revoke_command".into()));
        }
        if self
            .creds
            .values()
            .any(|c| c.agent == agent && c.name == name && c.revoked_at_ms.is_none())
        {
            return Err(CredError::Duplicate {
                agent: agent.into(),
                name: name.into(),
            });
        }
        let secret = Secret(format!(
            "wdn_{}_{}",
            kind.tag(),
            warden_core::crypto::random_hex(SECRET_BYTES)
        ));
        let cred = Credential {
            id: format!("cred-{}", warden_core::crypto::random_hex(6)),
            agent: agent.into(),
            kind,
            name: name.into(),
            sha256: warden_core::crypto::sha256_hex(secret.expose().as_bytes()),
            created_at_ms: now_ms,
            revoked_at_ms: None,
            revoke_command,
        };
        let info = cred.info();
        let mut next = self.creds.clone();
        next.insert(cred.id.clone(), cred);
        self.commit(next)?;
        Ok((info, secret))
    }

    /// The credential a token belongs to, if it is valid. Every stored
    /// digest is compared, in constant time, with no early exit.
    pub fn verify(&self, token: &str) -> Result<CredentialInfo, VerifyError> {
        let mut parts = token.splitn(3, '_');
        let well_formed = parts.next() == Some("wdn")
            && parts.next().and_then(Kind::from_tag).is_some()
            && parts
                .next()
                .is_some_and(|h| h.len() == 2 * SECRET_BYTES && hex_digest_ok(h));
        if !well_formed {
            return Err(VerifyError::Malformed);
        }
        let digest = warden_core::crypto::sha256(token.as_bytes());
        let mut found: Option<&Credential> = None;
        for c in self.creds.values() {
            let stored = hex_digest(&c.sha256).expect("digests are checked at load and issue");
            if digests_equal(&stored, &digest) {
                found = Some(c);
            }
        }
        match found {
            None => Err(VerifyError::Unknown),
            Some(c) if c.revoked_at_ms.is_some() => Err(VerifyError::Revoked { id: c.id.clone() }),
            Some(c) => Ok(c.info()),
        }
    }

    /// Revokes one credential, durably, before returning. Revoking a revoked
    /// one is a no-op that keeps the first time.
    pub fn revoke(&mut self, id: &str, now_ms: u64) -> Result<CredentialInfo, CredError> {
        let mut next = self.creds.clone();
        let c = next
            .get_mut(id)
            .ok_or_else(|| CredError::Unknown(id.into()))?;
        c.revoked_at_ms.get_or_insert(now_ms);
        let info = c.info();
        self.commit(next)?;
        Ok(info)
    }

    /// Revokes every active credential of `agent` in one durable write;
    /// returns those it revoked (with their revoke commands, for level 1).
    pub fn revoke_agent(&mut self, agent: &str, now_ms: u64) -> Result<Vec<Credential>, CredError> {
        let mut next = self.creds.clone();
        let mut revoked = Vec::new();
        for c in next.values_mut() {
            if c.agent == agent && c.revoked_at_ms.is_none() {
                c.revoked_at_ms = Some(now_ms);
                revoked.push(c.clone());
            }
        }
        if !revoked.is_empty() {
            self.commit(next)?;
        }
        Ok(revoked)
    }

    /// Every credential, public view.
    pub fn list(&self) -> Vec<CredentialInfo> {
        self.creds.values().map(Credential::info).collect()
    }
}

fn hex_digest_ok(h: &str) -> bool {
    h.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Writes each secret to `dir/NAME`, mode 0400, owned by `uid:gid`. Each file
/// is made under a temporary name (O_EXCL, so it never follows a planted
/// symlink), chowned and chmodded, then renamed over any old one, so the
/// agent never sees a partial or wrongly owned file. Mounting the tmpfs (and
/// making `dir` 0500 for the agent) is the daemon's job.
pub fn materialize(
    dir: &Path,
    uid: u32,
    gid: u32,
    creds: &[(&CredentialInfo, &Secret)],
) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    for (info, secret) in creds {
        check_name(&info.name)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let path = dir.join(&info.name);
        let tmp = dir.join(format!(".{}.tmp", info.name));
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&tmp)?;
        let written = (|| {
            f.write_all(secret.expose().as_bytes())?;
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
            // The umask may have narrowed 0400 but never widened it; be exact.
            f.set_permissions(std::fs::Permissions::from_mode(0o400))?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written?;
    }
    Ok(())
}

/// Runs a provider's revoke command (argv, no shell) with stdin closed. On
/// timeout its whole process group is killed. `Err` carries the exit status or
/// the timeout, and the stderr (at most 4 KiB), for the audit.
pub fn run_revoke_command(cmd: &[String], timeout: Duration) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let (prog, args) = cmd.split_first().ok_or("empty revoke command")?;
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own group, so a timeout kills what it spawned as well.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    let mut stderr = child.stderr.take().expect("stderr is piped");
    // Drained on a thread so a chatty command cannot block on a full pipe.
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut stderr).take(STDERR_MAX as u64).read_to_end(&mut buf);
        // Keep draining past the cap so the command never blocks on us.
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        String::from_utf8_lossy(&buf).trim().to_string()
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                break Err(format!(
                    "timed out after {}",
                    humantime::format_duration(timeout)
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => break Err(format!("cannot wait for {prog}: {e}")),
        }
    };
    let err_text = reader.join().unwrap_or_default();
    let with_stderr = |msg: String| {
        if err_text.is_empty() {
            msg
        } else {
            format!("{msg}; stderr: {err_text}")
        }
    };
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(with_stderr(format!("{prog} failed: {s}"))),
        Err(e) => Err(with_stderr(e)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        pub(crate) static CT_CALLS: Cell<usize> = const { Cell::new(0) };
    }

    fn store() -> (tempfile::TempDir, CredentialStore, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("killswitch/credentials.json");
        let s = CredentialStore::open(&p).unwrap();
        (d, s, p)
    }

    #[test]
    fn verifies_until_revoked_and_survives_reload() {
        let (_d, mut s, p) = store();
        let (info, secret) = s.issue("alpha", Kind::ApiKey, "openai", None, 1).unwrap();
        let tok = secret.expose();
        assert!(tok.starts_with("wdn_apikey_"));
        assert_eq!(tok.len(), "wdn_apikey_".len() + 64);
        assert_eq!(s.verify(tok).unwrap(), info);
        let (other, other_secret) = s.issue("alpha", Kind::Oauth, "gh", None, 1).unwrap();

        let s2 = CredentialStore::open(&p).unwrap();
        assert_eq!(s2.verify(tok).unwrap().id, info.id);

        s.revoke(&info.id, 5).unwrap();
        assert_eq!(
            s.verify(tok),
            Err(VerifyError::Revoked {
                id: info.id.clone()
            })
        );
        assert_eq!(s.verify(other_secret.expose()).unwrap(), other);
        let s3 = CredentialStore::open(&p).unwrap();
        assert!(matches!(s3.verify(tok), Err(VerifyError::Revoked { .. })));

        let mut flipped = tok.to_string();
        let last = flipped.pop().unwrap();
        flipped.push(if last == '0' { '1' } else { '0' });
        assert_eq!(s.verify(&flipped), Err(VerifyError::Unknown));
        assert_eq!(s.verify("wdn_apikey_xyz"), Err(VerifyError::Malformed));
        assert_eq!(s.verify(""), Err(VerifyError::Malformed));
        assert_eq!(s.verify(&tok.to_uppercase()), Err(VerifyError::Malformed));
    }

    #[test]
    fn revoke_agent_is_immediate_and_returns_commands() {
        let (_d, mut s, p) = store();
        let cmd = vec!["/bin/true".to_string()];
        let (_, a) = s
            .issue("alpha", Kind::Service, "db", Some(cmd.clone()), 1)
            .unwrap();
        let (_, b) = s.issue("alpha", Kind::ApiKey, "api", None, 1).unwrap();
        let (_, c) = s.issue("beta", Kind::ApiKey, "api", None, 1).unwrap();
        assert!(matches!(
            s.issue("beta", Kind::ApiKey, "api", None, 1),
            Err(CredError::Duplicate { .. })
        ));
        let revoked = s.revoke_agent("alpha", 9).unwrap();
        assert_eq!(revoked.len(), 2);
        assert!(revoked
            .iter()
            .any(|c| c.revoke_command.as_ref() == Some(&cmd)));
        assert!(s.verify(a.expose()).is_err());
        assert!(s.verify(b.expose()).is_err());
        assert!(s.verify(c.expose()).is_ok());
        assert!(CredentialStore::open(&p)
            .unwrap()
            .verify(a.expose())
            .is_err());
        assert!(s.revoke_agent("alpha", 10).unwrap().is_empty());
        // The name is free again once revoked.
        s.issue("alpha", Kind::ApiKey, "api", None, 11).unwrap();
    }

    #[test]
    fn secrets_never_reach_the_file_list_or_debug() {
        let (_d, mut s, p) = store();
        let (info, secret) = s.issue("alpha", Kind::ApiKey, "k", None, 1).unwrap();
        let hex_part = secret.expose().rsplit('_').next().unwrap().to_string();
        let digest = warden_core::crypto::sha256_hex(secret.expose().as_bytes());
        let file = std::fs::read(&p).unwrap();
        let contains =
            |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
        assert!(!contains(&file, &hex_part));
        assert!(!contains(&file, secret.expose()));
        assert!(contains(&file, &digest), "the file holds the digest");
        let listed = format!(
            "{:?} {}",
            s.list(),
            serde_json::to_string(&s.list()).unwrap()
        );
        let debugged = format!("{s:?} {info:?} {secret:?}");
        for text in [listed, debugged] {
            assert!(!text.contains(&hex_part), "{text}");
            assert!(!text.contains(&digest), "{text}");
        }
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        assert_eq!(info.digest_prefix, digest[..8]);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn verify_compares_every_digest_in_constant_time() {
        let (_d, mut s, _p) = store();
        let mut secrets = Vec::new();
        for i in 0..5 {
            secrets.push(
                s.issue("alpha", Kind::ApiKey, &format!("k{i}"), None, 1)
                    .unwrap()
                    .1,
            );
        }
        for secret in [&secrets[0], &secrets[4]] {
            CT_CALLS.with(|c| c.set(0));
            s.verify(secret.expose()).unwrap();
            // No early exit: the first and the last match cost the same.
            assert_eq!(CT_CALLS.with(|c| c.get()), 5);
        }
        let a = [7u8; 32];
        let mut b = a;
        assert!(digests_equal(&a, &b));
        b[31] ^= 1;
        assert!(!digests_equal(&a, &b));
    }

    #[test]
    fn names_kinds_and_versions_are_checked() {
        let (_d, mut s, p) = store();
        for bad in ["", ".hidden", "a/b", "../x", &"x".repeat(65)] {
            assert!(
                matches!(
                    s.issue("a", Kind::ApiKey, bad, None, 1),
                    Err(CredError::Invalid(_))
                ),
                "{bad}"
            );
        }
        assert_eq!("api-key".parse::<Kind>().unwrap(), Kind::ApiKey);
        assert!("apikey".parse::<Kind>().is_err());
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"{\"version\":9,\"credentials\":[]}").unwrap();
        assert!(CredentialStore::open(&p)
            .unwrap_err()
            .to_string()
            .contains("unsupported version 9"));
    }

    #[test]
    fn materialize_writes_0400_files() {
        use std::os::unix::fs::MetadataExt;
        let (d, mut s, _p) = store();
        let (info, secret) = s.issue("alpha", Kind::ApiKey, "openai", None, 1).unwrap();
        let out = d.path().join("creds");
        std::fs::create_dir(&out).unwrap();
        let (uid, gid) = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        materialize(&out, uid, gid, &[(&info, &secret)]).unwrap();
        // Again, over the existing file.
        materialize(&out, uid, gid, &[(&info, &secret)]).unwrap();
        let m = std::fs::metadata(out.join("openai")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o400);
        assert_eq!(m.uid(), uid);
        assert_eq!(
            std::fs::read_to_string(out.join("openai")).unwrap(),
            secret.expose()
        );
        assert_eq!(
            std::fs::read_dir(&out).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn revoke_command_outcomes() {
        let sh = |s: &str| vec!["/bin/sh".to_string(), "-c".to_string(), s.to_string()];
        run_revoke_command(&sh("exit 0"), Duration::from_secs(5)).unwrap();
        let e =
            run_revoke_command(&sh("echo denied >&2; exit 3"), Duration::from_secs(5)).unwrap_err();
        assert!(
            e.contains("exit status: 3") && e.contains("stderr: denied"),
            "{e}"
        );
        let t0 = Instant::now();
        let e = run_revoke_command(
            &sh("echo slow >&2; sleep 30 & sleep 30"),
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(
            e.contains("timed out after 300ms") && e.contains("slow"),
            "{e}"
        );
        assert!(t0.elapsed() < Duration::from_secs(5));
        let e = run_revoke_command(&["/nonexistent/x".to_string()], Duration::from_secs(1))
            .unwrap_err();
        assert!(e.contains("cannot run"), "{e}");
        assert!(run_revoke_command(&[], Duration::from_secs(1)).is_err());
    }
}
