//! Signed resume authorizations.
//!
//! With `resume_key` configured, leaving SAFE MODE needs a statement signed
//! offline with the matching Ed25519 key (`warden authorize-resume`), bound to
//! this host, expiring, and usable once (its nonce is recorded durably).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::crypto::{self, KeyPair};

pub const KIND: &str = "warden-resume";

/// What the key holder signs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    pub kind: String,
    /// The host it is valid on (see [`host_id`]).
    pub host: String,
    pub reason: String,
    /// Random; each nonce is accepted once.
    pub nonce: String,
    pub issued_at_ms: u64,
    pub expires_at_ms: u64,
}

/// The file handed to `warden resume --authorization`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Authorization {
    pub statement: Statement,
    /// Hex Ed25519 signature over the canonical JSON of the statement.
    pub signature: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AuthzError {
    #[error("resume needs --authorization: this host requires a signed resume authorization (resume_key)")]
    Missing,
    #[error("authorization is malformed: {0}")]
    Malformed(String),
    #[error("authorization signature does not verify with the configured resume_key")]
    BadSignature,
    #[error("authorization is for host {got:?}, this host is {want:?}")]
    WrongHost { got: String, want: String },
    #[error("authorization expired {0} ago")]
    Expired(String),
    #[error("authorization is issued in the future (clock skew over 5 minutes)")]
    NotYetValid,
    #[error("authorization was already used (nonce {0})")]
    Reused(String),
    #[error("resume key {path}: {message}")]
    Key { path: String, message: String },
    #[error("cannot record the authorization's use: {0}")]
    Store(String),
}

/// What is signed: the canonical JSON of the statement.
pub fn canonical(st: &Statement) -> Vec<u8> {
    crypto::canonical_json(&serde_json::to_value(st).expect("statement serializes")).into_bytes()
}

/// This host's identity: /etc/machine-id, else the hostname.
pub fn host_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(crate::evidence::hostname)
}

fn key_err(path: &Path, message: impl std::fmt::Display) -> AuthzError {
    AuthzError::Key {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

pub fn load_public(path: &Path) -> Result<VerifyingKey, AuthzError> {
    crypto::load_public_key(path).map_err(|e| key_err(path, e))
}

/// The private key, refused if group or others can read it.
pub fn load_private(path: &Path) -> Result<KeyPair, AuthzError> {
    crypto::load_private_key(path).map_err(|e| key_err(path, e))
}

/// Writes a new key pair: `path` (private, 0600) and `path.pub`.
pub fn generate(path: &Path) -> Result<(), AuthzError> {
    use std::os::unix::fs::OpenOptionsExt;
    let key = SigningKey::generate(&mut rand_core::OsRng);
    let private = key
        .to_pkcs8_pem(Default::default())
        .map_err(|e| key_err(path, e))?;
    let public = crypto::public_pem(&key.verifying_key());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| key_err(path, e))?;
    f.write_all(private.as_bytes())
        .map_err(|e| key_err(path, e))?;
    let pubpath = pub_path(path);
    std::fs::write(&pubpath, public).map_err(|e| key_err(&pubpath, e))?;
    Ok(())
}

pub fn pub_path(path: &Path) -> std::path::PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".pub");
    p.into()
}

/// Makes and signs an authorization.
pub fn sign(
    key: &KeyPair,
    host: &str,
    reason: &str,
    valid_for: Duration,
    now_ms: u64,
) -> Authorization {
    let statement = Statement {
        kind: KIND.into(),
        host: host.into(),
        reason: reason.into(),
        nonce: crate::crypto::random_hex(16),
        issued_at_ms: now_ms,
        expires_at_ms: now_ms + valid_for.as_millis() as u64,
    };
    Authorization {
        signature: key.sign_hex(&canonical(&statement)),
        statement,
    }
}

/// Checks everything but single use.
pub fn check(
    a: &Authorization,
    key: &VerifyingKey,
    host: &str,
    now_ms: u64,
) -> Result<(), AuthzError> {
    if a.statement.kind != KIND {
        return Err(AuthzError::Malformed(format!(
            "kind is {:?}, expected {KIND:?}",
            a.statement.kind
        )));
    }
    if !crypto::verify_hex(key, &canonical(&a.statement), &a.signature) {
        return Err(AuthzError::BadSignature);
    }
    if a.statement.host != host {
        return Err(AuthzError::WrongHost {
            got: a.statement.host.clone(),
            want: host.into(),
        });
    }
    if now_ms >= a.statement.expires_at_ms {
        let ago = Duration::from_millis(now_ms - a.statement.expires_at_ms);
        return Err(AuthzError::Expired(
            humantime::format_duration(Duration::from_secs(ago.as_secs())).to_string(),
        ));
    }
    if a.statement.issued_at_ms > now_ms + 5 * 60 * 1000 {
        return Err(AuthzError::NotYetValid);
    }
    Ok(())
}

/// Parses a JSON value sent by the CLI.
pub fn parse(v: &serde_json::Value) -> Result<Authorization, AuthzError> {
    serde_json::from_value(v.clone()).map_err(|e| AuthzError::Malformed(e.to_string()))
}

/// Records the nonce durably; fails if it was used before.
pub fn consume(store: &Path, nonce: &str) -> Result<(), AuthzError> {
    let used = std::fs::read_to_string(store).unwrap_or_default();
    if used.lines().any(|l| l.trim() == nonce) {
        return Err(AuthzError::Reused(nonce.into()));
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(store)
        .map_err(|e| AuthzError::Store(e.to_string()))?;
    writeln!(f, "{nonce}").map_err(|e| AuthzError::Store(e.to_string()))?;
    f.sync_all().map_err(|e| AuthzError::Store(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, KeyPair, VerifyingKey) {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("resume.key");
        generate(&k).unwrap();
        let sk = load_private(&k).unwrap();
        let vk = load_public(&pub_path(&k)).unwrap();
        assert_eq!(sk.verifying_key(), vk);
        (d, sk, vk)
    }

    #[test]
    fn valid_once_then_reused() {
        let (d, sk, vk) = setup();
        let a = sign(&sk, "host-1", "checked", Duration::from_secs(600), 1_000);
        check(&a, &vk, "host-1", 2_000).unwrap();
        let store = d.path().join("used");
        consume(&store, &a.statement.nonce).unwrap();
        assert_eq!(
            consume(&store, &a.statement.nonce),
            Err(AuthzError::Reused(a.statement.nonce.clone()))
        );
    }

    #[test]
    fn refusals_name_the_reason() {
        let (_d, sk, vk) = setup();
        let a = sign(&sk, "host-1", "r", Duration::from_secs(60), 1_000);
        assert!(matches!(
            check(&a, &vk, "host-2", 2_000),
            Err(AuthzError::WrongHost { .. })
        ));
        assert!(matches!(
            check(&a, &vk, "host-1", 61_000),
            Err(AuthzError::Expired(_))
        ));
        assert_eq!(check(&a, &vk, "host-1", 0).err(), None);
        let other = KeyPair::generate();
        let forged = sign(&other, "host-1", "r", Duration::from_secs(60), 1_000);
        assert_eq!(
            check(&forged, &vk, "host-1", 2_000),
            Err(AuthzError::BadSignature)
        );
        let mut edited = a.clone();
        edited.statement.expires_at_ms += 1_000_000;
        assert_eq!(
            check(&edited, &vk, "host-1", 2_000),
            Err(AuthzError::BadSignature)
        );
        let future = sign(&sk, "host-1", "r", Duration::from_secs(60), 10_000_000);
        assert_eq!(
            check(&future, &vk, "host-1", 1_000),
            Err(AuthzError::NotYetValid)
        );
        assert!(matches!(
            parse(&serde_json::json!({"x": 1})),
            Err(AuthzError::Malformed(_))
        ));
    }

    #[test]
    fn private_key_mode_is_checked() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("k");
        generate(&k).unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_private(&k)
            .unwrap_err()
            .to_string()
            .contains("chmod 0600"));
    }
}
