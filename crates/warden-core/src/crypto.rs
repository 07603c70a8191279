//! Keys, signatures, hashes and the canonical JSON that every signed or
//! hashed record is serialized to.
//!
//! - The host key is an Ed25519 pair in `state_dir/keys/`: `signing.key`
//!   (PKCS#8 PEM, 0600, owned by the daemon's user) and `signing.pub`
//!   (SPKI PEM, 0644). It is generated on first start.
//! - A key id is the first 16 hex digits of SHA-256 of the 32 public key bytes.
//! - Canonical JSON: object keys sorted by their UTF-8 bytes at every depth,
//!   no whitespace, strings escaped the way serde_json escapes them (`"`, `\`
//!   and control characters; everything else is literal UTF-8), numbers as
//!   serde_json prints them (integers as integers; floats in the shortest form
//!   that reads back to the same f64, e.g. `1.0`, `0.1`, `1e+20`). serde_json's
//!   `float_roundtrip` feature is on so a parsed float is exactly the float
//!   that was printed, which keeps `canonical(parse(canonical(v)))` stable.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// File name of the private key inside the keys directory.
pub const PRIVATE_KEY_FILE: &str = "signing.key";
/// File name of the public key inside the keys directory.
pub const PUBLIC_KEY_FILE: &str = "signing.pub";

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("key file {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("failed to {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad signature encoding: {0}")]
    SignatureEncoding(String),
    #[error("bad public key: {0}")]
    PublicKey(String),
}

pub type Result<T> = std::result::Result<T, CryptoError>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CryptoError + 'a {
    move |source| CryptoError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The host's signing key pair.
#[derive(Clone)]
pub struct KeyPair {
    /// Signs checkpoints, heads, evidence and case packs.
    signing: SigningKey,
    /// Cached `key_id(signing.verifying_key())`.
    key_id: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    pub fn from_signing_key(signing: SigningKey) -> KeyPair {
        let key_id = key_id(&signing.verifying_key());
        KeyPair { signing, key_id }
    }

    /// A fresh random key pair (not stored anywhere).
    pub fn generate() -> KeyPair {
        KeyPair::from_signing_key(SigningKey::generate(&mut rand_core::OsRng))
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Hex Ed25519 signature of `msg`.
    pub fn sign_hex(&self, msg: &[u8]) -> String {
        hex::encode(self.signing.sign(msg).to_bytes())
    }

    pub fn public_pem(&self) -> String {
        public_pem(&self.verifying_key())
    }
}

/// First 16 hex digits of SHA-256 of the raw public key.
pub fn key_id(key: &VerifyingKey) -> String {
    let mut id = sha256_hex(key.as_bytes());
    id.truncate(16);
    id
}

pub fn public_pem(key: &VerifyingKey) -> String {
    key.to_public_key_pem(LineEnding::LF)
        .expect("an Ed25519 public key always encodes")
}

pub fn parse_public_pem(pem: &str) -> Result<VerifyingKey> {
    VerifyingKey::from_public_key_pem(pem.trim()).map_err(|e| CryptoError::PublicKey(e.to_string()))
}

/// Reads a public key PEM file (`--pubkey`).
pub fn load_public_key(path: &Path) -> Result<VerifyingKey> {
    let pem = fs::read_to_string(path).map_err(io_err("read", path))?;
    parse_public_pem(&pem).map_err(|e| CryptoError::Key {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// True when `sig_hex` is a valid signature of `msg` by `key`. Malformed
/// signatures are simply invalid.
///
/// Only lower-case hex is accepted and verification is strict (RFC 8032
/// canonical encodings only), so a signature has exactly one spelling: a
/// changed character of a signed file never still verifies.
pub fn verify_hex(key: &VerifyingKey, msg: &[u8], sig_hex: &str) -> bool {
    let Some(bytes) = decode_hex_lower(sig_hex) else {
        return false;
    };
    let Ok(sig) = Signature::from_slice(&bytes) else {
        return false;
    };
    key.verify_strict(msg, &sig).is_ok()
}

/// Decodes lower-case hex; `None` for anything else (including upper case).
pub fn decode_hex_lower(text: &str) -> Option<Vec<u8>> {
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    hex::decode(text).ok()
}

/// `n` random bytes from the OS, as lowercase hex (ids, nonces).
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    hex::encode(b)
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha256(data))
}

/// Canonical JSON text of `value` (see the module doc).
pub fn canonical_json(value: &serde_json::Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {
            out.push_str(&serde_json::to_string(value).expect("a scalar always serializes"))
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            // Sort explicitly: serde_json's map is only sorted while no crate
            // in the build enables its `preserve_order` feature.
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(key).expect("a string always serializes"));
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
    }
}

/// Loads the key pair from `keys_dir`, generating it on first use.
///
/// Refuses a private key that group or others can read or write, or that is
/// owned by another user: a leaked host key lets anyone forge checkpoints.
pub fn load_or_generate(keys_dir: &Path) -> Result<KeyPair> {
    let private = keys_dir.join(PRIVATE_KEY_FILE);
    let public = keys_dir.join(PUBLIC_KEY_FILE);
    if !keys_dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(keys_dir)
            .map_err(io_err("create directory", keys_dir))?;
        // The umask may have narrowed the mode, never widened it; set it exactly.
        fs::set_permissions(keys_dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err("chmod", keys_dir))?;
    }
    let pair = if private.exists() {
        load_private_key(&private)?
    } else {
        let pair = KeyPair::generate();
        let pem = pair
            .signing
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| CryptoError::Key {
                path: private.clone(),
                message: format!("cannot encode: {e}"),
            })?;
        write_atomic(&private, pem.as_bytes(), 0o600)?;
        pair
    };
    match fs::read_to_string(&public) {
        Ok(pem) => {
            let stored = parse_public_pem(&pem).map_err(|e| CryptoError::Key {
                path: public.clone(),
                message: e.to_string(),
            })?;
            if stored != pair.verifying_key() {
                return Err(CryptoError::Key {
                    path: public,
                    message: format!("does not match the private key {}", private.display()),
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_atomic(&public, pair.public_pem().as_bytes(), 0o644)?;
        }
        Err(e) => return Err(io_err("read", &public)(e)),
    }
    Ok(pair)
}

/// Reads `signing.key`, checking its owner and mode first.
pub fn load_private_key(path: &Path) -> Result<KeyPair> {
    let meta = fs::metadata(path).map_err(io_err("stat", path))?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CryptoError::Key {
            path: path.to_owned(),
            message: format!(
                "private key is accessible by group or others (mode {mode:04o}); \
                 refusing to use it: chmod 0600 it or generate a new key"
            ),
        });
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(CryptoError::Key {
            path: path.to_owned(),
            message: format!(
                "private key is owned by uid {} but warden runs as uid {euid}; refusing to use it",
                meta.uid()
            ),
        });
    }
    let pem = fs::read_to_string(path).map_err(io_err("read", path))?;
    let signing = SigningKey::from_pkcs8_pem(&pem).map_err(|e| CryptoError::Key {
        path: path.to_owned(),
        message: format!("not a PKCS#8 Ed25519 private key: {e}"),
    })?;
    Ok(KeyPair::from_signing_key(signing))
}

/// Writes `data` to `path` with `mode` so that `path` either does not exist
/// or holds the whole content, even across a crash: temp file, fsync,
/// rename, fsync of the directory.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err("chmod", &tmp))?;
    f.write_all(data).map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("fsync", &tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io_err("rename", path))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_sorts_keys_and_is_compact() {
        let v = json!({"b": 1, "a": {"d": [1, 2, {"z": null, "y": true}], "c": "x\"y\n"}});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":"x\"y\n","d":[1,2,{"y":true,"z":null}]},"b":1}"#
        );
    }

    #[test]
    fn canonical_round_trips_numbers() {
        let text = r#"{"a":0.1,"b":1.0,"c":1e20,"d":-0.0,"e":18446744073709551615,"f":-9223372036854775808,"g":2.2250738585072014e-308,"h":0.30000000000000004,"i":123456.789e3}"#;
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        let once = canonical_json(&v);
        let again = canonical_json(&serde_json::from_str(&once).unwrap());
        assert_eq!(once, again);
    }

    #[test]
    fn sign_and_verify() {
        let pair = KeyPair::generate();
        let sig = pair.sign_hex(b"hello");
        assert!(verify_hex(&pair.verifying_key(), b"hello", &sig));
        assert!(!verify_hex(&pair.verifying_key(), b"hellp", &sig));
        assert!(!verify_hex(&pair.verifying_key(), b"hello", "zz"));
        let other = KeyPair::generate();
        assert!(!verify_hex(&other.verifying_key(), b"hello", &sig));
        assert_eq!(pair.key_id().len(), 16);
        let back = parse_public_pem(&pair.public_pem()).unwrap();
        assert_eq!(back, pair.verifying_key());
    }

    #[test]
    fn generates_then_reloads_with_modes() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let a = load_or_generate(&keys).unwrap();
        let b = load_or_generate(&keys).unwrap();
        assert_eq!(a.key_id(), b.key_id());
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&keys), 0o700);
        assert_eq!(mode(&keys.join(PRIVATE_KEY_FILE)), 0o600);
        assert_eq!(mode(&keys.join(PUBLIC_KEY_FILE)), 0o644);
        fs::set_permissions(
            keys.join(PRIVATE_KEY_FILE),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let err = load_or_generate(&keys).unwrap_err().to_string();
        assert!(err.contains("group or others"), "{err}");
    }
}
